//! The pre-forked spawner: a copy of `hangar daemon` forked before the daemon's first thread,
//! which forks the spawn helper for each machine start. Executing the helper afresh (a 40 MB
//! binary, ~2 ms of page faults and relocations, then a tokio child to reap) was the largest
//! part of a start; a fork of this small, single-threaded process costs a tenth of that. What
//! the helper does is unchanged ([`crate::plan::spawn_planned`]); `hangar sandbox-spawn`
//! stays for a daemon without a spawner (one embedded in tests, or whose spawner died).
//!
//! The spawner is named `hangar-spawner` (its `comm`, as `ps -o comm` shows).
//!
//! Protocol: the daemon sends one byte, the request's kind, with descriptors (SCM_RIGHTS) on
//! the control socket. `s` (spawn) comes with its end of a fresh stream socket for this request
//! and Pilot's spec (which becomes the helper's stdin, as with the executed helper); the daemon
//! writes the plan's JSON on the request socket and shuts down writing; the helper answers
//! `ok <pid>` or `err <message>` and exits. `r` (reap) comes with a socket on which the daemon
//! writes retired cgroup dirs (NUL-separated); a child of the spawner removes them
//! ([`crate::cgroup::reap_dead`], ~100 ms each on cgroup v1) and goes on if the daemon dies.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// The daemon's end of the control socket, once [`start`] forked the spawner.
static SPAWNER: OnceLock<Spawner> = OnceLock::new();

pub struct Spawner {
    control: OwnedFd,
    pid: i32,
}

/// The spawner of this process, if [`start`] made one.
pub fn get() -> Option<&'static Spawner> {
    SPAWNER.get()
}

/// Forks the spawner. Must be called while the process is still single-threaded (first thing
/// in `hangar daemon`); the fork shares the binary's pages, so it costs no exec.
pub fn start() -> std::io::Result<()> {
    let (daemon_end, spawner_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: the caller guarantees a single thread; the child runs only `serve`.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(daemon_end);
            serve(spawner_end);
            // SAFETY: leave without the daemon's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(spawner_end);
            let _ = SPAWNER.set(Spawner {
                control: daemon_end,
                pid: child.as_raw(),
            });
            Ok(())
        }
    }
}

/// The spawner's loop: a helper per request, until the daemon's end closes.
fn serve(control: OwnedFd) {
    // SAFETY: prctl and signal with constant arguments. The spawner goes with the daemon;
    // its helpers are reaped by the kernel (SIGCHLD ignored), which each helper undoes for
    // its own children.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"hangar-spawner".as_ptr(), 0, 0, 0);
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    loop {
        let (kind, fds) = match receive(&control) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        // A malformed request (only the daemon can send one) is dropped unanswered.
        let job: Box<dyn FnOnce() -> i32> = match (kind, <[OwnedFd; 2]>::try_from(fds)) {
            (SPAWN, Ok([request, spec])) => Box::new(move || helper(request, spec)),
            (REAP, Err(mut fds)) if fds.len() == 1 => {
                let dirs = fds.remove(0);
                Box::new(move || reaper(dirs))
            }
            _ => continue,
        };
        // SAFETY: this process is single-threaded; the child runs the job and exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(control);
                let code = job();
                // SAFETY: leave without unwinding into the spawner's loop.
                unsafe { libc::_exit(code) }
            }
            // The request's descriptors close here; a failed fork closes the request socket
            // unanswered, which the daemon reports.
            Ok(nix::unistd::ForkResult::Parent { .. }) | Err(_) => {}
        }
    }
}

/// Request kinds: the first byte of a request.
const SPAWN: u8 = b's';
const REAP: u8 = b'r';

/// One request's kind and descriptors, or `None` when the daemon is gone.
fn receive(control: &OwnedFd) -> nix::Result<Option<(u8, Vec<OwnedFd>)>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(
        control.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    if msg.bytes == 0 {
        return Ok(None);
    }
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel just installed these descriptors for us.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(Some((byte[0], received)))
}

/// The reaper: removes the retired cgroup dirs read from `dirs`. Returns its exit code.
fn reaper(dirs: OwnedFd) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let mut list = Vec::new();
    if UnixStream::from(dirs).read_to_end(&mut list).is_err() {
        return 1;
    }
    let dirs: Vec<std::path::PathBuf> = list
        .split(|b| *b == 0)
        .filter(|d| !d.is_empty())
        .map(|d| std::ffi::OsStr::from_bytes(d).into())
        .collect();
    crate::cgroup::yield_to_machines();
    crate::cgroup::reap_dead(&dirs);
    0
}

/// The helper: reads the plan, builds the sandbox and answers. Returns its exit code.
fn helper(request: OwnedFd, spec: OwnedFd) -> i32 {
    // SAFETY: restoring defaults in this fresh single-threaded child.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let mut request = UnixStream::from(request);
    // Pilot reads its spec from stdin, which it inherits from the helper.
    // SAFETY: dup2 onto fd 0 of this child; `spec` is closed after.
    if unsafe { libc::dup2(spec.as_raw_fd(), 0) } < 0 {
        let e = std::io::Error::last_os_error();
        let _ = request.write_all(format!("err hand over the spec: {e}").as_bytes());
        return 1;
    }
    drop(spec);
    answer(request, crate::plan::spawn_planned)
}

/// Reads a helper's plan from `request`, runs `job` on it and answers `ok <pid>` or
/// `err <message>` ([`parse_answer`]). Returns the helper's exit code.
fn answer<E: std::fmt::Display>(
    mut request: UnixStream,
    job: impl FnOnce(&[u8]) -> Result<i32, E>,
) -> i32 {
    let mut plan = Vec::new();
    let answer = match request.read_to_end(&mut plan) {
        Ok(_) => match job(&plan) {
            Ok(pid) => format!("ok {pid}"),
            Err(e) => format!("err {e}"),
        },
        Err(e) => format!("err reading the plan: {e}"),
    };
    let _ = request.write_all(answer.as_bytes());
    0
}

impl Spawner {
    /// The spawner's pid: a child of the daemon, which reaps it if it dies.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Starts a helper for `plan` (a [`crate::plan::SpawnPlan`]'s JSON) with `spec` as its
    /// stdin; returns the socket on which to send the plan and read the answer
    /// ([`parse_answer`]).
    pub fn request(&self, spec: &OwnedFd) -> std::io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        self.send(SPAWN, &[theirs.as_raw_fd(), spec.as_raw_fd()])?;
        Ok(ours)
    }

    /// Has a child of the spawner remove retired cgroup dirs (in the background: this returns
    /// once the spawner has the list).
    pub fn reap(&self, dirs: &[std::path::PathBuf]) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let (mut ours, theirs) = UnixStream::pair()?;
        let mut list = Vec::new();
        for d in dirs {
            list.extend_from_slice(d.as_os_str().as_bytes());
            list.push(0);
        }
        self.send(REAP, &[theirs.as_raw_fd()])?;
        // A socket buffer holds far more than a machine's few dirs: this does not block.
        ours.write_all(&list)
    }

    fn send(&self, kind: u8, fds: &[RawFd]) -> std::io::Result<()> {
        let iov = [IoSlice::new(std::slice::from_ref(&kind))];
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }
}

/// The helper's answer: Pilot's pid, or why the sandbox could not be built.
pub fn parse_answer(answer: &[u8]) -> Result<i32, String> {
    let text = String::from_utf8_lossy(answer);
    match text.split_once(' ') {
        Some(("ok", pid)) => pid
            .trim()
            .parse()
            .map_err(|_| format!("the spawn helper reported a bad pid {pid:?}")),
        Some(("err", e)) => Err(e.to_string()),
        _ if text.is_empty() => Err("the spawn helper ended without an answer".into()),
        _ => Err(format!("unexpected answer from the spawn helper: {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer(b"ok 42"), Ok(42));
        assert_eq!(parse_answer(b"err no cgroup"), Err("no cgroup".into()));
        assert!(parse_answer(b"").unwrap_err().contains("without an answer"));
        assert!(parse_answer(b"ok x").unwrap_err().contains("bad pid"));
        assert!(parse_answer(b"hello").unwrap_err().contains("unexpected"));
    }
}
