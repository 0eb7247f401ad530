//! Interactive sessions on a pty: the `attach` control request, and a pty for a container's
//! main process (`tty: true`).
//!
//! After the `{"ok":true}` reply the control connection carries frames both ways (see
//! [`crate::protocol::frame`]): data for the pty, resizes from the client, and one exit frame
//! from Pilot when the command has ended, after which Pilot closes the connection.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_sandbox::container::ContainerProcess;
use nix::pty::Winsize;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::exec::{Ended, Waiters};
use crate::logs::LogFile;
use crate::protocol::frame;

/// Input waiting for the pty beyond this stops reading the socket (backpressure).
const MAX_PENDING: usize = 64 * 1024;
/// After the command exits, how long output still in the pty may take to arrive.
const DRAIN: Duration = Duration::from_millis(100);

/// What the attach request asks for, resolved against the container.
pub struct Session {
    pub init_pid: i32,
    pub process: ContainerProcess,
    pub argv: Vec<String>,
    pub rows: u16,
    pub cols: u16,
}

/// A pty pair: the master stays with Pilot, the slave becomes the command's terminal.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_cloexec(fd: RawFd) -> Result<(), String> {
    nix::fcntl::fcntl(
        // SAFETY: fd is open for the duration of the call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map(drop)
    .map_err(|e| format!("fcntl: {e}"))
}

/// Opens a pty. Preferably on the container's own devpts instance (reached through its init's
/// root), so that `tty` and `/dev/pts` inside the container agree with the terminal; otherwise
/// on Pilot's.
pub fn open_pty(container_init: Option<i32>, rows: u16, cols: u16) -> Result<Pty, String> {
    if let Some(pid) = container_init {
        if let Ok(p) = open_in(
            &Path::new("/proc")
                .join(pid.to_string())
                .join("root/dev/pts/ptmx"),
        ) {
            set_size(p.master.as_raw_fd(), rows, cols)?;
            return Ok(p);
        }
    }
    let p = nix::pty::openpty(&winsize(rows, cols), None).map_err(|e| format!("openpty: {e}"))?;
    set_cloexec(p.master.as_raw_fd())?;
    set_cloexec(p.slave.as_raw_fd())?;
    Ok(Pty {
        master: p.master,
        slave: p.slave,
    })
}

fn open_in(ptmx: &PathBuf) -> std::io::Result<Pty> {
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ptmx)?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER returns a new fd for the slave, opened
    // through the master so no path lookup can be raced.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let slave = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Pty {
            master,
            slave: OwnedFd::from_raw_fd(slave),
        })
    }
}

fn set_size(fd: RawFd, rows: u16, cols: u16) -> Result<(), String> {
    let ws = winsize(rows, cols);
    // SAFETY: TIOCSWINSZ reads a winsize struct we own.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Child-side setup: a new session with `slave` as its controlling terminal and standard fds.
/// Runs in the freshly cloned child before it execs.
pub fn become_session_leader(slave: RawFd) -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // SAFETY: plain ioctl/dup2 on fds of this fresh child.
    unsafe {
        if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
            return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
        }
        for dst in 0..3 {
            if libc::dup2(slave, dst) < 0 {
                return Err(format!("dup2: {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// `user`, `uid`, `user:group` or `uid:gid`, looked up in the container's /etc/passwd and
/// /etc/group (read through its root filesystem); sets uid, gid, HOME, USER and LOGNAME.
pub fn apply_user(process: &mut ContainerProcess, spec: &str) -> Result<(), String> {
    if spec.is_empty() {
        return Ok(());
    }
    // The rootfs is the machine's: its /etc/passwd may be a symlink, resolved inside it.
    let root = hangar_sandbox::in_root::InRoot::open(&process.rootfs)
        .map_err(|e| format!("unable to find user: {e}"))?;
    let read = |f: &str| {
        root.read_file(f, hangar_sandbox::user::MAX_DB_BYTES)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let hangar_sandbox::user::User {
        uid,
        gid,
        name,
        home,
        groups,
    } = hangar_sandbox::user::lookup(spec, &read("etc/passwd"), &read("etc/group"))
        .map_err(|e| format!("unable to find user: {e}"))?;
    process.uid = uid;
    process.gid = gid;
    process.additional_gids = groups;
    for (k, v) in [("HOME", home), ("USER", name.clone()), ("LOGNAME", name)] {
        set_env(&mut process.env, k, &v);
    }
    Ok(())
}

pub fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    env.retain(|e| !e.starts_with(&prefix));
    env.push(format!("{key}={value}"));
}

/// Starts the session's command on a new pty; returns the master and the exit receiver.
pub fn start(
    s: &Session,
    waiters: &Waiters,
) -> Result<(OwnedFd, i32, tokio::sync::oneshot::Receiver<Ended>), String> {
    let pty = open_pty(Some(s.init_pid), s.rows, s.cols)?;
    let slave = pty.slave.as_raw_fd();
    let (pid, rx) = crate::exec::spawn_with(s.init_pid, &s.process, &s.argv, waiters, || {
        become_session_leader(slave)
    })
    .map_err(|e| e.to_string())?;
    // Only the command may keep the slave open: its exit must read as EIO on the master.
    drop(pty.slave);
    Ok((pty.master, pid, rx))
}

fn nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// A started attach session: on a pty, or (`tty: false`) on pipes.
pub enum Started {
    Pty((OwnedFd, i32, tokio::sync::oneshot::Receiver<Ended>)),
    Pipes(crate::exec::Spawned, tokio::sync::oneshot::Receiver<Ended>),
}

impl Started {
    pub fn pid(&self) -> i32 {
        match self {
            Started::Pty((_, pid, _)) => *pid,
            Started::Pipes(s, _) => s.pid,
        }
    }
}

/// Decoded frames from the client, read by their own task so that the pump's `select!` only
/// waits on cancel-safe futures.
enum Incoming {
    Data(Vec<u8>),
    Resize(u16, u16),
    Eof,
}

async fn read_frames<R: AsyncRead + Unpin>(mut r: R, tx: mpsc::Sender<Incoming>) {
    loop {
        let mut head = [0u8; frame::HEADER];
        if r.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > frame::MAX_PAYLOAD {
            return;
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let msg = match head[0] {
            frame::DATA => Incoming::Data(body),
            frame::RESIZE if len >= 4 => Incoming::Resize(
                u16::from_be_bytes([body[0], body[1]]),
                u16::from_be_bytes([body[2], body[3]]),
            ),
            frame::EOF => Incoming::Eof,
            // Unknown frames are skipped so that newer clients can add some.
            _ => continue,
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

async fn send_frame(w: &mut OwnedWriteHalf, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(frame::HEADER + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await
}

fn exit_code(e: Option<Ended>) -> i32 {
    match e {
        Some(Ended { code: Some(c), .. }) => c,
        Some(Ended {
            signal: Some(s), ..
        }) => 128 + s,
        _ => -1,
    }
}

/// Moves bytes between the connection and the pty master until the command exits (then sends
/// its exit frame) or the client goes away (then hangs up the session).
pub async fn pump<R: AsyncRead + Unpin + 'static>(
    read: R,
    mut write: OwnedWriteHalf,
    master: OwnedFd,
    pid: i32,
    mut exited: tokio::sync::oneshot::Receiver<Ended>,
) {
    let hang_up = || {
        // The session leader is the command; its process group gets the hangup as with a
        // closed terminal.
        let _ = kill(Pid::from_raw(-pid), Signal::SIGHUP);
        let _ = kill(Pid::from_raw(pid), Signal::SIGHUP);
    };
    if let Err(e) = nonblocking(&master) {
        tracing::warn!(error = %e, "pty master");
        hang_up();
        return;
    }
    // SAFETY: an OwnedFd keeps its descriptor open and unchanged for as long as it lives.
    let master = match unsafe { AsyncFd::register(master) } {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "registering the pty master");
            hang_up();
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel(16);
    let reader = tokio::task::spawn_local(read_frames(read, tx));
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut master_open = true;
    let ended = loop {
        tokio::select! {
            r = master.readable(), if master_open => {
                let Ok(mut guard) = r else { master_open = false; continue };
                match guard.try_io(|fd| read_fd(fd.get_ref().as_raw_fd(), &mut buf)) {
                    Err(_would_block) => {}
                    Ok(Ok(n)) if n > 0 => {
                        if send_frame(&mut write, frame::DATA, &buf[..n]).await.is_err() {
                            break None;
                        }
                    }
                    // EIO: every slave fd is closed; the exit status follows.
                    Ok(_) => master_open = false,
                }
            }
            w = master.writable(), if !pending.is_empty() => {
                let Ok(mut guard) = w else { pending.clear(); continue };
                match guard.try_io(|fd| write_fd(fd.get_ref().as_raw_fd(), &pending)) {
                    Err(_would_block) => {}
                    Ok(Ok(n)) => { pending.drain(..n); }
                    Ok(Err(_)) => pending.clear(),
                }
            }
            m = rx.recv(), if pending.len() < MAX_PENDING => match m {
                Some(Incoming::Data(d)) => pending.extend_from_slice(&d),
                Some(Incoming::Resize(rows, cols)) => {
                    // The kernel sends SIGWINCH to the foreground process group.
                    let _ = set_size(master.get_ref().as_raw_fd(), rows, cols);
                }
                // A pty has no end of input of its own; the client sends none with one.
                Some(Incoming::Eof) => {}
                None => break None,
            },
            e = &mut exited => break Some(e.ok()),
        }
    };
    reader.abort();
    match ended {
        Some(e) => {
            // What the command wrote last may still sit in the pty.
            let deadline = tokio::time::Instant::now() + DRAIN;
            while master_open {
                let Ok(Ok(mut guard)) = tokio::time::timeout_at(deadline, master.readable()).await
                else {
                    break;
                };
                match guard.try_io(|fd| read_fd(fd.get_ref().as_raw_fd(), &mut buf)) {
                    Err(_would_block) => {}
                    Ok(Ok(n)) if n > 0 => {
                        if send_frame(&mut write, frame::DATA, &buf[..n])
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => master_open = false,
                }
            }
            let code = exit_code(e);
            let _ = send_frame(&mut write, frame::EXIT, &code.to_be_bytes()).await;
            let _ = write.shutdown().await;
        }
        None => {
            hang_up();
            // Keep the waiter alive so the reaper routes the status here, not to a container.
            tokio::task::spawn_local(async move {
                let _ = exited.await;
            });
        }
    }
}

/// [`pump`] without a pty: data frames feed the command's stdin until an EOF frame closes it,
/// its stdout and stderr come back as data frames, then the exit frame. A client that goes
/// away kills the command (nothing would read its output).
pub async fn pump_pipes<R: AsyncRead + Unpin + 'static>(
    read: R,
    mut write: OwnedWriteHalf,
    spawned: crate::exec::Spawned,
    mut exited: tokio::sync::oneshot::Receiver<Ended>,
) {
    let crate::exec::Spawned {
        pid,
        stdin,
        stdout,
        stderr,
    } = spawned;
    let (tx, mut rx) = mpsc::channel(16);
    let reader = tokio::task::spawn_local(read_frames(read, tx));
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    let mut outputs = Vec::new();
    for fd in [stdout, stderr] {
        let out_tx = out_tx.clone();
        outputs.push(tokio::task::spawn_local(async move {
            let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = rx.read(&mut buf).await {
                if n == 0 || out_tx.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(out_tx);
    // Input is written by its own task, so a command that does not read its stdin while it
    // fills its stdout cannot stall the output; the bounded channel is the backpressure.
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::task::spawn_local(async move {
        let Ok(mut w) = tokio::net::unix::pipe::Sender::from_owned_fd(stdin) else {
            return;
        };
        while let Some(d) = in_rx.recv().await {
            // A command that stopped reading closed its input; drop what comes.
            if w.write_all(&d).await.is_err() {
                return;
            }
        }
        // Channel closed: the client's EOF (or the end of the session) closes the pipe.
    });
    let mut input = Some(in_tx);
    let mut outputs_open = true;
    let ended = loop {
        tokio::select! {
            out = out_rx.recv(), if outputs_open => match out {
                Some(d) => {
                    if send_frame(&mut write, frame::DATA, &d).await.is_err() {
                        break None;
                    }
                }
                None => outputs_open = false,
            },
            m = rx.recv(), if input.as_ref().is_none_or(|i| i.capacity() > 0) => match m {
                Some(Incoming::Data(d)) => {
                    if let Some(i) = input.as_ref() {
                        let _ = i.try_send(d);
                    }
                }
                Some(Incoming::Eof) => input = None,
                Some(Incoming::Resize(..)) => {}
                None => break None,
            },
            e = &mut exited => break Some(e.ok()),
        }
    };
    reader.abort();
    match ended {
        Some(e) => {
            // Output still in the pipes (background children may hold them open: not long).
            let deadline = tokio::time::Instant::now() + DRAIN;
            if outputs_open {
                while let Ok(Some(d)) = tokio::time::timeout_at(deadline, out_rx.recv()).await {
                    if send_frame(&mut write, frame::DATA, &d).await.is_err() {
                        break;
                    }
                }
            }
            for o in outputs {
                o.abort();
            }
            writer.abort();
            let code = exit_code(e);
            let _ = send_frame(&mut write, frame::EXIT, &code.to_be_bytes()).await;
            let _ = write.shutdown().await;
        }
        None => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            for o in outputs {
                o.abort();
            }
            writer.abort();
            tokio::task::spawn_local(async move {
                let _ = exited.await;
            });
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a buffer we own.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: writing from a buffer we own.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Copies a container's terminal output into its log, one line at a time (the pty turns
/// `\n` into `\r\n`; the `\r` is dropped). Ends when the terminal closes.
pub fn spawn_tty_log_reader(
    master: OwnedFd,
    path: PathBuf,
    max: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(async move {
        let mut log = match LogFile::open(path, max) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open log file");
                return;
            }
        };
        if nonblocking(&master).is_err() {
            return;
        }
        // SAFETY: an OwnedFd keeps its descriptor open and unchanged for as long as it lives.
        let Ok(master) = (unsafe { AsyncFd::register(master) }) else {
            return;
        };
        let mut buf = vec![0u8; 16 * 1024];
        let mut line: Vec<u8> = Vec::new();
        let flush = |line: &mut Vec<u8>, log: &mut LogFile| {
            let text = line.strip_suffix(b"\r").unwrap_or(line);
            let _ = log.write_line("stdout", text);
            line.clear();
        };
        loop {
            let Ok(mut guard) = master.readable().await else {
                break;
            };
            match guard.try_io(|fd| read_fd(fd.get_ref().as_raw_fd(), &mut buf)) {
                Err(_would_block) => continue,
                Ok(Ok(n)) if n > 0 => {
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            flush(&mut line, &mut log);
                        } else {
                            line.push(b);
                        }
                    }
                }
                Ok(_) => break,
            }
        }
        if !line.is_empty() {
            flush(&mut line, &mut log);
        }
    })
}
