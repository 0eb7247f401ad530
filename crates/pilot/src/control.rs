//! The control socket: one JSON request per line, one JSON reply per line; `watch` turns the
//! connection into a stream of events.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::broadcast::error::RecvError;

use crate::protocol::{ErrorKind, Reply, Request, RequestLine, PROTOCOL_VERSION};
use crate::spec::ContainerState;
use crate::state::Shared;

/// How the control socket asks the supervisor to stop every container (signal, timeout).
pub(crate) type StopFn = std::rc::Rc<dyn Fn(Option<i32>, Option<u64>)>;
use crate::{attach, exec, ps};

/// Exec timeout when the request gives none.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one event line may take to reach a watcher.
const WATCH_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure, classified.
type Failure = (ErrorKind, String);

fn failure((kind, message): Failure) -> Reply {
    Reply::Error { kind, message }
}

fn invalid(message: String) -> Failure {
    (ErrorKind::Invalid, message)
}

pub(crate) async fn serve(stream: tokio::net::UnixStream, state: Shared, stop: StopFn) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let request = match serde_json::from_str::<RequestLine>(&line) {
            Ok(r) if r.v > PROTOCOL_VERSION => Err(Reply::error(
                ErrorKind::Version,
                format!(
                    "this Pilot speaks control protocol {PROTOCOL_VERSION}, the request {}",
                    r.v
                ),
            )),
            Ok(r) => Ok(r.request),
            Err(e) => Err(Reply::error(
                ErrorKind::BadRequest,
                format!("bad request: {e}"),
            )),
        };
        let reply = match request {
            Err(reply) => reply,
            Ok(Request::Watch) => {
                watch(lines.into_inner(), write, &state).await;
                return;
            }
            Ok(Request::Attach {
                container,
                command,
                user,
                env,
                rows,
                cols,
                tty,
            }) => {
                let session =
                    target(&state, container.as_deref()).and_then(|(pid, mut process, _)| {
                        if let Some(u) = user.as_deref() {
                            attach::apply_user(&mut process, u).map_err(invalid)?;
                        }
                        for kv in &env {
                            if let Some((k, v)) = kv.split_once('=') {
                                attach::set_env(&mut process.env, k, v);
                            }
                        }
                        Ok(attach::Session {
                            init_pid: pid,
                            process,
                            argv: if command.is_empty() {
                                vec!["/bin/sh".into()]
                            } else {
                                command
                            },
                            rows,
                            cols,
                        })
                    });
                let waiters = state.borrow().waiters.clone();
                let started = session.and_then(|s| {
                    if tty {
                        attach::start(&s, &waiters)
                            .map(attach::Started::Pty)
                            .map_err(invalid)
                    } else {
                        crate::exec::spawn(s.init_pid, &s.process, &s.argv, &waiters)
                            .map(|(spawned, exited)| attach::Started::Pipes(spawned, exited))
                            .map_err(|e| invalid(e.to_string()))
                    }
                });
                let (reply, started) = match started {
                    Ok(s) => (Reply::Ok, Some(s)),
                    Err(f) => (failure(f), None),
                };
                let sent = write.write_all(&reply.to_line()).await.is_ok();
                if let Some(started) = started {
                    // The reader keeps whatever the client sent after its request line.
                    match (sent, started) {
                        (true, attach::Started::Pty((master, pid, exited))) => {
                            attach::pump(lines.into_inner(), write, master, pid, exited).await
                        }
                        (true, attach::Started::Pipes(spawned, exited)) => {
                            attach::pump_pipes(lines.into_inner(), write, spawned, exited).await
                        }
                        (false, started) => {
                            let _ = kill(Pid::from_raw(started.pid()), Signal::SIGKILL);
                        }
                    }
                    return;
                }
                continue;
            }
            Ok(req) => handle(req, &state, &stop).await,
        };
        if write.write_all(&reply.to_line()).await.is_err() {
            return;
        }
    }
}

/// The container exec and console use when a request names none.
const DEFAULT_CONTAINER: &str = "app";

/// The running container a request names (without a name: the one called `app`, as on Fly,
/// else the first): its init pid, its process settings and the exec waiters.
fn target(
    state: &Shared,
    container: Option<&str>,
) -> Result<
    (
        i32,
        hangar_sandbox::container::ContainerProcess,
        crate::exec::Waiters,
    ),
    Failure,
> {
    let s = state.borrow();
    let c = match container {
        Some(name) => s.containers.iter().find(|c| c.spec.name == name),
        None => s
            .containers
            .iter()
            .find(|c| c.spec.name == DEFAULT_CONTAINER)
            .or(s.containers.first()),
    };
    match c {
        None => Err((
            ErrorKind::NoSuchContainer,
            format!(
                "no container {:?} in this machine",
                container.unwrap_or_default()
            ),
        )),
        Some(c) => match (c.status.state, c.status.pid) {
            (ContainerState::Running, Some(pid)) => {
                Ok((pid, c.spec.process.clone(), s.waiters.clone()))
            }
            _ => Err((
                ErrorKind::NotRunning,
                format!("container {} is not running", c.spec.name),
            )),
        },
    }
}

fn statuses(state: &Shared) -> Vec<crate::spec::ContainerStatus> {
    state
        .borrow()
        .containers
        .iter()
        .map(|c| c.status.clone())
        .collect()
}

async fn handle(req: Request, state: &Shared, stop: &StopFn) -> Reply {
    match req {
        Request::Status => Reply::Status {
            containers: statuses(state),
        },
        Request::StatusOnceLaunched { patient } => {
            // Subscribed before the first look, so no change in between goes unseen.
            let mut events = state.borrow().events.subscribe();
            loop {
                let containers = statuses(state);
                let launched = containers
                    .iter()
                    .all(|c| c.state != ContainerState::Created || patient.contains(&c.name));
                if launched || containers.iter().any(|c| c.error.is_some()) {
                    return Reply::Status { containers };
                }
                // Every launch and failure is an event; the timer is a safety net.
                tokio::select! {
                    got = events.recv() => {
                        if matches!(got, Err(RecvError::Closed)) {
                            return Reply::Status { containers };
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
        Request::Stop { signal, timeout_ms } => {
            stop(signal, timeout_ms);
            Reply::Ok
        }
        Request::Signal { signal } => {
            let pids: Vec<i32> = state
                .borrow()
                .containers
                .iter()
                .filter_map(|c| c.status.pid)
                .collect();
            match Signal::try_from(signal) {
                Ok(sig) => {
                    for pid in pids {
                        let _ = kill(Pid::from_raw(pid), sig);
                    }
                    Reply::Ok
                }
                Err(e) => Reply::error(ErrorKind::Invalid, e.to_string()),
            }
        }
        Request::Exec {
            container,
            command,
            stdin,
            timeout_ms,
        } => {
            let target = target(state, container.as_deref());
            let (pid, process, waiters) = match target {
                Ok(t) => t,
                Err(f) => return failure(f),
            };
            let timeout = timeout_ms
                .filter(|&t| t > 0)
                .map_or(DEFAULT_EXEC_TIMEOUT, Duration::from_millis);
            match exec::run(pid, &process, &command, stdin, timeout, &waiters).await {
                Ok(result) => Reply::Exec { result },
                Err(e) => Reply::error(ErrorKind::Invalid, e),
            }
        }
        Request::Ps => {
            let running: Vec<(String, i32, String)> = state
                .borrow()
                .containers
                .iter()
                .filter_map(|c| {
                    Some((
                        c.spec.name.clone(),
                        c.status.pid?,
                        c.spec.process.rootfs.to_string_lossy().into_owned(),
                    ))
                })
                .collect();
            Reply::Ps {
                processes: ps::list(Path::new("/proc"), &running),
            }
        }
        Request::Watch | Request::Attach { .. } => {
            Reply::error(ErrorKind::Failed, "handled by the connection")
        }
    }
}

/// Streams events until the client goes away or falls too far behind.
async fn watch(read: BufReader<OwnedReadHalf>, mut write: OwnedWriteHalf, state: &Shared) {
    // Subscribe and snapshot the history in one step (Pilot is single-threaded), so the
    // replay and the live stream neither overlap nor leave a gap.
    let (mut rx, replay) = {
        let s = state.borrow();
        let replay = s.history.borrow().clone();
        (s.events.subscribe(), replay)
    };
    for e in replay {
        let Ok(mut line) = serde_json::to_vec(&e) else {
            continue;
        };
        line.push(b'\n');
        match tokio::time::timeout(WATCH_WRITE_TIMEOUT, write.write_all(&line)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let mut read = read;
    let mut sink = Vec::new();
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(e) => {
                    let Ok(mut line) = serde_json::to_vec(&e) else { continue };
                    line.push(b'\n');
                    // A client that stops reading is dropped rather than kept forever.
                    match tokio::time::timeout(WATCH_WRITE_TIMEOUT, write.write_all(&line)).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "dropping a watcher that fell behind");
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            // Anything the client sends is ignored; end of stream means it went away.
            n = read.read_until(b'\n', &mut sink) => {
                sink.clear();
                if !matches!(n, Ok(m) if m > 0) {
                    return;
                }
            }
        }
    }
}
