//! Launching one container process: a clone in new mount and pid namespaces that sets up the
//! container and execs its command, with stdout and stderr piped into its log file.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::logs::LogFile;
use crate::spec::ContainerSpec;

/// Where a container's output comes from.
pub enum Output {
    /// stdout and stderr pipes.
    Pipes(OwnedFd, OwnedFd),
    /// The master of the container's terminal (`tty: true`).
    Tty(OwnedFd),
}

/// A launched container: the pid of its init, its output, and the read end of the pipe on
/// which its init says how the workload ended.
pub struct Launched {
    pub pid: i32,
    pub output: Output,
    pub status: OwnedFd,
}

/// Clones a child in new mount and pid namespaces that becomes the container's PID 1 (the
/// init in front of the workload, see `hangar_sandbox::init`).
pub fn start_container(c: &ContainerSpec) -> Result<Launched, String> {
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (exec_r, exec_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let devnull = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    // With a terminal, the child opens it in the container's own devpts once that exists and
    // passes the master back over this socket.
    let tty_socket = if c.tty {
        Some(
            nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| format!("socketpair: {e}"))?,
        )
    } else {
        None
    };
    let process = c.process.clone();
    let child = Box::new(|| {
        let msg = match &tty_socket {
            Some((_, child_end)) => hangar_sandbox::container::exec_container_on_tty(
                &process,
                child_end.as_raw_fd(),
                status_w.as_raw_fd(),
                exec_w.as_raw_fd(),
            ),
            None => {
                for (src, dst) in [
                    (devnull.as_raw_fd(), 0),
                    (out_w.as_raw_fd(), 1),
                    (err_w.as_raw_fd(), 2),
                ] {
                    // SAFETY: dup2 onto the standard fds of this fresh child.
                    unsafe { libc::dup2(src, dst) };
                }
                hangar_sandbox::container::exec_container(
                    &process,
                    status_w.as_raw_fd(),
                    exec_w.as_raw_fd(),
                )
            }
        };
        // SAFETY: writing the failure to the parent through the pipe we own.
        unsafe { libc::write(exec_w.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        127
    });
    // SAFETY: Pilot is single-threaded, so the child (a copy of this process, no CLONE_VM) can
    // run ordinary Rust code until it execs.
    let pid = crate::clone_stack::with_stack(|stack| unsafe {
        nix::sched::clone(
            child,
            stack,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID,
            Some(libc::SIGCHLD),
        )
    })
    .map_err(|e| format!("clone: {e}"))?;
    drop((out_w, err_w, exec_w, status_w));
    // The exec pipe carries READY_TO_EXEC when the workload is about to exec, or why the
    // setup failed; it closes unread when every holder is gone.
    let mut exec_r = File::from(exec_r);
    let mut said = [0u8; 1];
    let first = loop {
        match exec_r.read(&mut said) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(1) => break Some(said[0]),
            _ => break None,
        }
    };
    match first {
        Some(hangar_sandbox::container::READY_TO_EXEC) => {}
        Some(byte) => {
            let mut failure = vec![byte];
            let _ = exec_r.read_to_end(&mut failure);
            return Err(String::from_utf8_lossy(&failure).into_owned());
        }
        // Every setup failure says why; silence is a setup killed on the way (a signal, the
        // OOM killer).
        None => return Err("the container's setup ended without a word (killed?)".into()),
    }
    let output = match tty_socket {
        Some((parent_end, child_end)) => {
            drop(child_end);
            Output::Tty(receive_fd(&parent_end)?)
        }
        None => Output::Pipes(out_r, err_r),
    };
    Ok(Launched {
        pid: pid.as_raw(),
        output,
        status: status_r,
    })
}

/// The terminal master the container child sent (it is there once READY_TO_EXEC came).
fn receive_fd(socket: &OwnedFd) -> Result<OwnedFd, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the container's terminal: {e}"))?;
    for cmsg in msg
        .cmsgs()
        .map_err(|e| format!("receiving the container's terminal: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err("the container did not send its terminal".into())
}

pub fn spawn_log_reader(
    fd: OwnedFd,
    stream: &'static str,
    path: PathBuf,
    max: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(async move {
        // After the I/O driver's next turn: a request waiting for the launch (the daemon's
        // `status_once_launched`) is answered before the log file is opened.
        tokio::task::yield_now().await;
        let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let mut log = match LogFile::open(path, max) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open log file");
                return;
            }
        };
        let mut reader = BufReader::new(rx);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    let _ = log.write_line(stream, text);
                }
            }
        }
    })
}
