//! Commands run inside a running container (the `exec` request and exec health checks).
//!
//! Pilot points its children's pid namespace at the container's (`setns` on
//! `/proc/<init>/ns/pid` only affects children), clones the command, and points it back. The
//! child joins the container's mount namespace and takes the container's user, capabilities,
//! no_new_privs and seccomp filter before exec. The command is Pilot's own child, so Pilot's
//! `waitpid(-1)` reaps it and routes the status here through [`Waiters`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use hangar_sandbox::container::ContainerProcess;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::spec::ExecResult;

/// Output kept per stream; the rest is read and dropped so the command never blocks on a pipe.
const MAX_OUTPUT: usize = 1 << 20;
/// After the command exits, how long its leftover children may keep the pipes open.
const DRAIN: Duration = Duration::from_millis(200);
/// Exit code reported when the command was killed for running past its timeout (as timeout(1)).
pub const TIMEOUT_CODE: i32 = 124;

/// How a process ended: `(exit code, signal)`, one of them meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Exec children waiting for their exit status, by pid.
pub type Waiters = Rc<RefCell<HashMap<i32, oneshot::Sender<Ended>>>>;

pub struct Spawned {
    pub pid: i32,
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// Why a command did not start.
#[derive(Debug)]
pub enum SpawnError {
    /// Pilot could not set the child up (pipes, namespaces, clone).
    Setup(String),
    /// The command itself could not run in the container: a result of the command, with the
    /// exit code a shell gives it (127 not found, 126 not executable).
    Command { code: i32, message: String },
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Setup(m) | SpawnError::Command { message: m, .. } => f.write_str(m),
        }
    }
}

impl From<String> for SpawnError {
    fn from(m: String) -> Self {
        SpawnError::Setup(m)
    }
}

/// Starts `argv` inside the container whose init is `init_pid` and registers it in `waiters`.
/// Synchronous on purpose: nothing can reap the child before it is registered.
pub fn spawn(
    init_pid: i32,
    process: &ContainerProcess,
    argv: &[String],
    waiters: &Waiters,
) -> Result<(Spawned, oneshot::Receiver<Ended>), SpawnError> {
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let stdio = || {
        for (src, dst) in [
            (in_r.as_raw_fd(), 0),
            (out_w.as_raw_fd(), 1),
            (err_w.as_raw_fd(), 2),
        ] {
            // SAFETY: dup2 onto the standard fds of this fresh child.
            unsafe { libc::dup2(src, dst) };
        }
        Ok(())
    };
    let (pid, rx) = spawn_with(init_pid, process, argv, waiters, stdio)?;
    drop((in_r, out_w, err_w));
    Ok((
        Spawned {
            pid,
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
        },
        rx,
    ))
}

/// Clones a child into the container's pid namespace that runs `child_setup` (its standard
/// fds, session…), then joins the container and execs `argv`. Returns its pid once the exec
/// succeeded; the exit status arrives on the receiver.
pub fn spawn_with(
    init_pid: i32,
    process: &ContainerProcess,
    argv: &[String],
    waiters: &Waiters,
    child_setup: impl Fn() -> Result<(), String>,
) -> Result<(i32, oneshot::Receiver<Ended>), SpawnError> {
    if argv.is_empty() {
        return Err(SpawnError::Setup("no command given".into()));
    }
    let open = |what: &str| {
        File::open(format!("/proc/{init_pid}/ns/{what}"))
            .map_err(|e| format!("opening the container's {what} namespace: {e}"))
    };
    let pid_ns = open("pid")?;
    let mnt_ns = open("mnt")?;
    let own_pid_ns = File::open("/proc/self/ns/pid")
        .map_err(|e| format!("opening pilot's pid namespace: {e}"))?;
    let (fail_r, fail_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let process = process.clone();
    let argv = argv.to_vec();
    let child = Box::new(|| {
        // The parent reads the failure with its kind first: `S` setup, else the command's
        // exit code (3 digits) then the message.
        use hangar_sandbox::container::ExecFailure;
        let msg = match child_setup() {
            Ok(()) => {
                match hangar_sandbox::container::exec_in_container(mnt_ns.as_fd(), &process, &argv)
                {
                    ExecFailure::Setup(m) => format!("S{m}"),
                    ExecFailure::Program { code, message } => format!("{code:03}{message}"),
                }
            }
            Err(e) => format!("S{e}"),
        };
        // SAFETY: writing the failure to the parent through the pipe we own.
        unsafe { libc::write(fail_w.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        127
    });
    nix::sched::setns(pid_ns.as_fd(), CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("entering the container's pid namespace: {e}"))?;
    // SAFETY: Pilot is single-threaded, so the child (a copy of this process, no CLONE_VM) can
    // run ordinary Rust code until it execs.
    let cloned = crate::clone_stack::with_stack(|stack| unsafe {
        nix::sched::clone(child, stack, CloneFlags::empty(), Some(libc::SIGCHLD))
    });
    // Containers started later must get fresh pid namespaces under Pilot's own, never under
    // this container's: going back is not optional.
    if let Err(e) = nix::sched::setns(own_pid_ns.as_fd(), CloneFlags::CLONE_NEWPID) {
        tracing::error!(error = %e, "cannot return to pilot's pid namespace");
        return Err(format!("returning to pilot's pid namespace: {e}").into());
    }
    let pid = cloned.map_err(|e| format!("clone: {e}"))?.as_raw();
    let (tx, rx) = oneshot::channel();
    waiters.borrow_mut().insert(pid, tx);
    drop(fail_w);
    // The failure pipe closes on a successful exec; otherwise it carries the reason.
    let mut failure = String::new();
    let _ = File::from(fail_r).read_to_string(&mut failure);
    if !failure.is_empty() {
        // The child exits 127 at once; the reaper still finds it registered and drops the status.
        return Err(match failure.split_at_checked(3) {
            Some((code, message)) if code.bytes().all(|b| b.is_ascii_digit()) => {
                SpawnError::Command {
                    code: code.parse().unwrap_or(127),
                    message: message.to_string(),
                }
            }
            _ => SpawnError::Setup(failure.strip_prefix('S').unwrap_or(&failure).to_string()),
        });
    }
    Ok((pid, rx))
}

/// Feeds `stdin`, collects the output and waits for the exit, killing the command at `timeout`.
pub async fn collect(
    s: Spawned,
    stdin: Option<String>,
    timeout: Duration,
    exited: oneshot::Receiver<Ended>,
) -> ExecResult {
    let input = stdin.unwrap_or_default().into_bytes();
    let writer = tokio::task::spawn_local(async move {
        if let Ok(mut tx) = tokio::net::unix::pipe::Sender::from_owned_fd(s.stdin) {
            // A command that does not read its input closes the pipe; that is fine.
            let _ = tx.write_all(&input).await;
        }
    });
    let out = Rc::new(RefCell::new(Captured::default()));
    let err = Rc::new(RefCell::new(Captured::default()));
    let readers = [
        tokio::task::spawn_local(drain(s.stdout, out.clone())),
        tokio::task::spawn_local(drain(s.stderr, err.clone())),
    ];
    let (ended, timed_out) = match tokio::time::timeout(timeout, exited).await {
        Ok(r) => (r.ok(), false),
        Err(_) => {
            let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
            (None, true)
        }
    };
    let aborts = readers.each_ref().map(|r| r.abort_handle());
    // Background children of the command may keep the pipes open; do not wait for them long.
    let _ = tokio::time::timeout(DRAIN, async {
        for r in readers {
            let _ = r.await;
        }
    })
    .await;
    for a in aborts {
        a.abort();
    }
    writer.abort();
    let text = |b: &Rc<RefCell<Captured>>| String::from_utf8_lossy(&b.borrow().bytes).into_owned();
    let (exit_code, exit_signal) = if timed_out {
        (TIMEOUT_CODE, Signal::SIGKILL as i32)
    } else {
        match ended {
            Some(Ended {
                code: Some(code), ..
            }) => (code, 0),
            Some(Ended {
                signal: Some(sig), ..
            }) => (128 + sig, sig),
            _ => (-1, 0),
        }
    };
    let (stdout_truncated, stderr_truncated) = (out.borrow().dropped, err.borrow().dropped);
    ExecResult {
        exit_code,
        exit_signal,
        stdout: text(&out),
        stderr: text(&err),
        stdout_truncated,
        stderr_truncated,
    }
}

/// Output kept of one stream (up to `MAX_OUTPUT`), and whether more was dropped.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: bool,
}

async fn drain(fd: OwnedFd, into: Rc<RefCell<Captured>>) {
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut c = into.borrow_mut();
                let room = MAX_OUTPUT.saturating_sub(c.bytes.len());
                c.dropped |= n > room;
                c.bytes.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// Runs a command in a container and waits for its result.
pub async fn run(
    init_pid: i32,
    process: &ContainerProcess,
    argv: &[String],
    stdin: Option<String>,
    timeout: Duration,
    waiters: &Waiters,
) -> Result<ExecResult, String> {
    match spawn(init_pid, process, argv, waiters) {
        Ok((spawned, exited)) => Ok(collect(spawned, stdin, timeout, exited).await),
        // A command that cannot run answers as a shell does: 127 or 126, and why on stderr.
        Err(SpawnError::Command { code, message }) => Ok(ExecResult {
            exit_code: code,
            exit_signal: 0,
            stdout: String::new(),
            stderr: format!("{message}\n"),
            stdout_truncated: false,
            stderr_truncated: false,
        }),
        Err(SpawnError::Setup(why)) => Err(why),
    }
}
