//! Pilot's main loop: starts the containers, reaps children (Pilot is PID 1), forwards
//! termination signals as a stop, serves the control socket and exits when every container has
//! ended.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::logs::LogFile;
use crate::spec::{
    ContainerSpec, ContainerState, ContainerStatus, PilotSpec, Reply, Request, StatusReply,
    CONTROL_SOCKET, EXIT_FILE, LOG_DIR, SPEC_FILE,
};

/// Stack for the cloned container child; it only runs the setup code before exec.
const CHILD_STACK: usize = 1 << 20;

struct State {
    spec: PilotSpec,
    status: Vec<ContainerStatus>,
    pids: HashMap<i32, usize>,
    stopping: bool,
}

type Shared = Rc<RefCell<State>>;

/// Runs Pilot for the machine in `dir`; returns the exit code for the process.
pub fn main(dir: &Path) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(dir.to_path_buf()))
}

async fn run(dir: PathBuf) -> anyhow::Result<i32> {
    let spec_path = dir.join(SPEC_FILE);
    let spec: PilotSpec = serde_json::from_slice(
        &std::fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )
    .context("parsing the pilot spec")?;
    let log_dir = dir.join(LOG_DIR);
    std::fs::create_dir_all(&log_dir).context("creating the log dir")?;

    let mut sigchld = signal(SignalKind::child()).context("SIGCHLD handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let socket = dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).context("binding the control socket")?;

    let status = spec
        .containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            state: ContainerState::Created,
            pid: None,
            exit_code: None,
            signal: None,
            error: None,
            restart_count: 0,
            health: None,
            checks: Vec::new(),
        })
        .collect();
    let state: Shared = Rc::new(RefCell::new(State {
        spec: spec.clone(),
        status,
        pids: HashMap::new(),
        stopping: false,
    }));
    let exited = Rc::new(Notify::new());

    for (i, c) in spec.containers.iter().enumerate() {
        match start_container(c) {
            Ok((pid, out, err)) => {
                let mut s = state.borrow_mut();
                s.status[i].state = ContainerState::Running;
                s.status[i].pid = Some(pid);
                s.pids.insert(pid, i);
                drop(s);
                let log = log_dir.join(format!("{}.log", c.name));
                spawn_log_reader(out, "stdout", log.clone(), spec.log_max_bytes);
                spawn_log_reader(err, "stderr", log, spec.log_max_bytes);
                tracing::info!(container = %c.name, pid, "container started");
            }
            Err(e) => {
                tracing::error!(container = %c.name, error = %e, "container failed to start");
                let mut s = state.borrow_mut();
                s.status[i].state = ContainerState::Failed;
                s.status[i].error = Some(e);
                s.status[i].exit_code = Some(127);
            }
        }
    }

    loop {
        if all_done(&state) {
            break;
        }
        tokio::select! {
            _ = sigchld.recv() => {
                reap(&state);
                exited.notify_waiters();
            }
            _ = sigterm.recv() => spawn_stop(&state, &exited, None, None),
            _ = sigint.recv() => spawn_stop(&state, &exited, None, None),
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    tokio::task::spawn_local(serve(stream, state.clone(), exited.clone()));
                }
            }
        }
    }
    // Let the log readers drain what the containers wrote last.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s = state.borrow();
    let exit_path = dir.join(EXIT_FILE);
    std::fs::write(&exit_path, serde_json::to_vec(&s.status)?)
        .with_context(|| format!("writing {}", exit_path.display()))?;
    let _ = std::fs::remove_file(&socket);
    // The machine's exit code is its first container's (the `app` one for single-image machines).
    let first = s.status.first();
    Ok(match first {
        Some(c) => match (c.exit_code, c.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            _ => 0,
        },
        None => 0,
    })
}

fn all_done(state: &Shared) -> bool {
    state
        .borrow()
        .status
        .iter()
        .all(|c| matches!(c.state, ContainerState::Exited | ContainerState::Failed))
}

/// Reaps every child that has exited; records container exits.
fn reap(state: &Shared) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => record_exit(state, pid.as_raw(), Some(code), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                record_exit(state, pid.as_raw(), None, Some(sig as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

fn record_exit(state: &Shared, pid: i32, code: Option<i32>, sig: Option<i32>) {
    let mut s = state.borrow_mut();
    let Some(i) = s.pids.remove(&pid) else {
        return;
    };
    let c = &mut s.status[i];
    c.state = ContainerState::Exited;
    c.exit_code = code;
    c.signal = sig;
    c.pid = None;
    tracing::info!(container = %c.name, ?code, ?sig, "container exited");
}

/// Clones a child in new mount and pid namespaces that becomes the container's PID 1.
fn start_container(c: &ContainerSpec) -> Result<(i32, OwnedFd, OwnedFd), String> {
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (exec_r, exec_w) = pipe()?;
    let devnull = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    let process = c.process.clone();
    let mut stack = vec![0u8; CHILD_STACK];
    let child = Box::new(|| {
        for (src, dst) in [
            (devnull.as_raw_fd(), 0),
            (out_w.as_raw_fd(), 1),
            (err_w.as_raw_fd(), 2),
        ] {
            // SAFETY: dup2 onto the standard fds of this fresh child.
            unsafe { libc::dup2(src, dst) };
        }
        let msg = hangar_sandbox::container::exec_container(&process);
        // SAFETY: writing the failure to the parent through the pipe we own.
        unsafe { libc::write(exec_w.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        127
    });
    // SAFETY: Pilot is single-threaded, so the child (a copy of this process, no CLONE_VM) can
    // run ordinary Rust code until it execs.
    let pid = unsafe {
        nix::sched::clone(
            child,
            &mut stack,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| format!("clone: {e}"))?;
    drop((out_w, err_w, exec_w));
    // The exec pipe closes on a successful exec; otherwise it carries the reason.
    let mut failure = String::new();
    let _ = File::from(exec_r).read_to_string(&mut failure);
    if !failure.is_empty() {
        return Err(failure);
    }
    Ok((pid.as_raw(), out_r, err_r))
}

fn spawn_log_reader(fd: OwnedFd, stream: &'static str, path: PathBuf, max: u64) {
    tokio::task::spawn_local(async move {
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
    });
}

fn spawn_stop(state: &Shared, exited: &Rc<Notify>, signal: Option<i32>, timeout_ms: Option<u64>) {
    if std::mem::replace(&mut state.borrow_mut().stopping, true) {
        return;
    }
    tokio::task::spawn_local(stop_all(state.clone(), exited.clone(), signal, timeout_ms));
}

/// Stops containers in reverse order, each with its signal, escalating to SIGKILL.
async fn stop_all(state: Shared, exited: Rc<Notify>, signal: Option<i32>, timeout_ms: Option<u64>) {
    let order: Vec<usize> = (0..state.borrow().status.len()).rev().collect();
    for i in order {
        let (pid, sig, timeout) = {
            let s = state.borrow();
            let spec = &s.spec.containers[i];
            (
                s.status[i].pid,
                signal.unwrap_or(spec.stop_signal),
                Duration::from_millis(timeout_ms.unwrap_or(spec.stop_timeout_ms)),
            )
        };
        let Some(pid) = pid else { continue };
        if let Ok(sig) = Signal::try_from(sig) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while state.borrow().status[i].pid.is_some() {
            let notified = exited.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // A container's PID 1 ignores signals it has no handler for; SIGKILL always works.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                exited.notified().await;
            }
        }
    }
}

async fn serve(stream: tokio::net::UnixStream, state: Shared, exited: Rc<Notify>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply {
                ok: false,
                error: Some(format!("bad request: {e}")),
                ..Default::default()
            },
            Ok(Request::Status) => Reply {
                ok: true,
                error: None,
                status: Some(StatusReply {
                    containers: state.borrow().status.clone(),
                }),
                ..Default::default()
            },
            Ok(Request::Stop { signal, timeout_ms }) => {
                spawn_stop(&state, &exited, signal, timeout_ms);
                Reply {
                    ok: true,
                    ..Default::default()
                }
            }
            Ok(Request::Signal { signal }) => {
                let pids: Vec<i32> = state.borrow().status.iter().filter_map(|c| c.pid).collect();
                let result = Signal::try_from(signal)
                    .map_err(|e| e.to_string())
                    .map(|sig| {
                        for pid in pids {
                            let _ = kill(Pid::from_raw(pid), sig);
                        }
                    });
                Reply {
                    ok: result.is_ok(),
                    error: result.err(),
                    ..Default::default()
                }
            }
            Ok(other) => Reply {
                ok: false,
                error: Some(format!("this pilot cannot handle {other:?} yet")),
                ..Default::default()
            },
        };
        let Ok(mut bytes) = serde_json::to_vec(&reply) else {
            return;
        };
        bytes.push(b'\n');
        if write.write_all(&bytes).await.is_err() {
            return;
        }
    }
}
