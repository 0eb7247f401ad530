//! Pilot's main loop: starts the containers as their dependencies allow, reaps children (Pilot
//! is PID 1), runs health checks, applies restart policies, turns SIGTERM into an orderly stop,
//! serves the control socket and exits when every container has ended for good.
//!
//! Everything runs on one thread (current_thread runtime + LocalSet): state is an
//! `Rc<RefCell<State>>`, and forking for containers and execs is safe.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, Notify};
use tokio::task::AbortHandle;

use crate::exec::{Ended, Waiters};
use crate::graph::{self, Decision, DepView};
use crate::health::{self, CheckMachine, CheckState};
use crate::spec::{
    CheckKind, CheckStatus, Condition, ContainerState, ContainerStatus, EventKind, PilotExit,
    PilotSpec, CONTROL_SOCKET, EXIT_FILE, LOG_DIR, SPEC_FILE,
};
use crate::state::{event, now_ms, Container, Exits, Phase, Shared, State, WATCH_BUFFER};
use crate::{checks, control, launch};
use hangar_policy::RestartTracker;

/// Runs Pilot for the machine in `dir`; returns the exit code for the process.
pub fn main(dir: &Path, spec_from_stdin: bool) -> anyhow::Result<i32> {
    // Built once here, not in each container Pilot forks.
    let _ = hangar_sandbox::seccomp::default_filters();
    main_prepared(Prepared::new()?, dir, spec_from_stdin)
}

/// Pilot's runtime, which a pooled Pilot makes before its claim (~0.2 ms of a start). Its
/// signal handlers come with the machine: a pooled Pilot still ends on SIGTERM.
pub struct Prepared {
    rt: tokio::runtime::Runtime,
}

impl Prepared {
    pub fn new() -> anyhow::Result<Prepared> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the runtime")?;
        Ok(Prepared { rt })
    }
}

/// [`main`] on a runtime made ahead.
pub fn main_prepared(ready: Prepared, dir: &Path, spec_from_stdin: bool) -> anyhow::Result<i32> {
    let local = tokio::task::LocalSet::new();
    local.block_on(&ready.rt, run(dir.to_path_buf(), spec_from_stdin))
}

/// With `from_stdin` (how the daemon runs Pilot) the spec arrives on stdin, a sealed memfd: it
/// holds env and file contents, secrets included, which must never sit on disk. Stdin then
/// becomes /dev/null, so nothing keeps the spec open. Without it, `pilot.json` in the machine
/// dir is read (Pilot run by hand while debugging).
fn read_spec(dir: &Path, from_stdin: bool) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    if !from_stdin {
        let path = dir.join(SPEC_FILE);
        return std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .context("reading the spec from stdin")?;
    let devnull = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    // SAFETY: dup2 onto fd 0, which this process owns; the old stdin is closed by it.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&devnull), 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("replacing stdin");
    }
    Ok(bytes)
}

async fn run(dir: PathBuf, spec_from_stdin: bool) -> anyhow::Result<i32> {
    let spec: PilotSpec = serde_json::from_slice(&read_spec(&dir, spec_from_stdin)?)
        .context("parsing the pilot spec")?;
    let log_dir = dir.join(LOG_DIR);
    std::fs::create_dir_all(&log_dir).context("creating the log dir")?;

    let mut sigchld = signal(SignalKind::child()).context("SIGCHLD handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let socket = dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).context("binding the control socket")?;

    let deps = graph::dependency_indices(&spec.containers);
    let containers = spec
        .containers
        .iter()
        .zip(deps)
        .map(|(c, deps)| Container {
            status: ContainerStatus {
                name: c.name.clone(),
                state: ContainerState::Created,
                pid: None,
                exit_code: None,
                signal: None,
                error: None,
                restart_count: 0,
                health: None,
                checks: c
                    .healthchecks
                    .iter()
                    .map(|h| CheckStatus {
                        name: h.name.clone(),
                        status: CheckState::Warning.as_str().into(),
                        output: String::new(),
                        updated_at: 0,
                        machine_level: h.machine_level,
                    })
                    .collect(),
            },
            deps,
            run: 0,
            phase: Phase::Waiting,
            exits: Exits::default(),
            tracker: RestartTracker::default(),
            checks: c.healthchecks.iter().map(CheckMachine::new).collect(),
            gating: health::gating(&c.healthchecks),
            tasks: Vec::new(),
            status_pipe: None,
            spec: c.clone(),
        })
        .collect();
    let state: Shared = Rc::new(RefCell::new(State {
        log_dir,
        log_max: spec.log_max_bytes,
        containers,
        pids: HashMap::new(),
        stopping: false,
        ended_by: None,
        events: broadcast::channel(WATCH_BUFFER).0,
        history: RefCell::new(std::collections::VecDeque::new()),
        changed: Rc::new(Notify::new()),
        waiters: Waiters::default(),
        log_readers: Vec::new(),
    }));

    reconcile(&state);
    let changed = state.borrow().changed.clone();
    loop {
        if all_done(&state) {
            break;
        }
        let notified = changed.notified();
        tokio::select! {
            _ = sigchld.recv() => reap(&state),
            _ = sigterm.recv() => spawn_stop(&state, None, None),
            _ = sigint.recv() => spawn_stop(&state, None, None),
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    let stop: control::StopFn = {
                        let state = state.clone();
                        Rc::new(move |signal, timeout_ms| spawn_stop(&state, signal, timeout_ms))
                    };
                    tokio::task::spawn_local(control::serve(stream, state.clone(), stop));
                }
            }
            _ = notified => {}
        }
    }
    // Let the log readers drain what the containers wrote last: they end at EOF, which comes
    // as soon as the workloads are gone (a background child holding a pipe gets 20 ms).
    let readers = std::mem::take(&mut state.borrow_mut().log_readers);
    let drained = tokio::time::Instant::now() + Duration::from_millis(20);
    let _ = tokio::time::timeout_at(drained, async {
        for r in readers {
            let _ = r.await;
        }
    })
    .await;
    // And the watchers (the daemon's event stream) send the last events: the broadcast
    // queue empties as they take them, then their writes get a turn.
    while !state.borrow().events.is_empty() && tokio::time::Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    let s = state.borrow();
    let statuses: Vec<ContainerStatus> = s.containers.iter().map(|c| c.status.clone()).collect();
    let exit = machine_exit(statuses, s.ended_by);
    let exit_path = dir.join(EXIT_FILE);
    std::fs::write(&exit_path, serde_json::to_vec(&exit)?)
        .with_context(|| format!("writing {}", exit_path.display()))?;
    let _ = std::fs::remove_file(&socket);
    Ok(exit.exit_code)
}

/// The machine's exit: that of the container that ended it (`processes`), of its only
/// container, or of the first container that did not end with 0.
fn machine_exit(containers: Vec<ContainerStatus>, ended_by: Option<usize>) -> PilotExit {
    let code = |c: &ContainerStatus| match (c.exit_code, c.signal, c.state) {
        (Some(code), _, _) => code,
        (None, Some(sig), _) => 128 + sig,
        (None, None, ContainerState::Failed) => 1,
        _ => 0,
    };
    let decider = ended_by
        .and_then(|i| containers.get(i))
        .or_else(|| containers.iter().find(|c| code(c) != 0))
        .or_else(|| containers.first());
    let (exit_code, signal) = decider.map_or((0, None), |c| (code(c), c.signal));
    PilotExit {
        containers,
        exit_code,
        signal,
    }
}

fn all_done(state: &Shared) -> bool {
    let s = state.borrow();
    s.pids.is_empty()
        && s.containers
            .iter()
            .all(|c| c.phase != Phase::RestartPending)
        && (s.stopping || s.containers.iter().all(|c| c.phase != Phase::Waiting))
}

/// Starts every waiting container whose conditions hold and fails those that can never start,
/// until nothing changes (a failure or a start may decide others).
pub(crate) fn reconcile(state: &Shared) {
    loop {
        let decision = {
            let s = state.borrow();
            s.containers.iter().enumerate().find_map(|(i, c)| {
                if s.stopping || c.phase != Phase::Waiting {
                    return None;
                }
                let deps: Vec<(&str, Condition, DepView)> = c
                    .deps
                    .iter()
                    .map(|&(d, cond)| {
                        let dep = &s.containers[d];
                        (dep.spec.name.as_str(), cond, dep.view())
                    })
                    .collect();
                match graph::decide(&deps) {
                    Decision::Wait => None,
                    other => Some((i, other)),
                }
            })
        };
        match decision {
            None => break,
            Some((i, Decision::Fail(msg))) => state.borrow_mut().fail(i, msg),
            Some((i, _)) => launch_container(state, i),
        }
    }
    state.borrow().changed.notify_waiters();
}

/// Launches (or relaunches) container `i`: a new clone on the same rootfs, fresh checks.
fn launch_container(state: &Shared, i: usize) {
    let (spec, log_path, log_max) = {
        let s = state.borrow();
        let c = &s.containers[i];
        (
            c.spec.clone(),
            s.log_dir.join(format!("{}.log", c.spec.name)),
            s.log_max,
        )
    };
    match launch::start_container(&spec) {
        Ok(launch::Launched {
            pid,
            output,
            status,
        }) => {
            let run = {
                let mut s = state.borrow_mut();
                s.pids.insert(pid, i);
                let c = &mut s.containers[i];
                c.run += 1;
                c.set_phase(Phase::Running {
                    liveness_stop: false,
                });
                c.status.pid = Some(pid);
                c.status_pipe = Some(std::fs::File::from(status));
                c.status.exit_code = None;
                c.status.signal = None;
                c.checks = spec.healthchecks.iter().map(CheckMachine::new).collect();
                for st in &mut c.status.checks {
                    st.status = CheckState::Warning.as_str().into();
                    st.output = String::new();
                }
                let e = event(c, EventKind::Started);
                s.emit(e);
                s.update_health(i);
                s.containers[i].run
            };
            match output {
                launch::Output::Pipes(out, err) => {
                    let readers = [
                        launch::spawn_log_reader(out, "stdout", log_path.clone(), log_max),
                        launch::spawn_log_reader(err, "stderr", log_path, log_max),
                    ];
                    state.borrow_mut().log_readers.extend(readers);
                }
                launch::Output::Tty(master) => {
                    let reader = crate::attach::spawn_tty_log_reader(master, log_path, log_max);
                    state.borrow_mut().log_readers.push(reader);
                }
            }
            let tasks: Vec<AbortHandle> = (0..spec.healthchecks.len())
                .map(|k| {
                    let reporter = state.clone();
                    tokio::task::spawn_local(checks::run_check(
                        state.clone(),
                        i,
                        k,
                        move |pass, output| check_result(&reporter, i, k, run, pass, output),
                    ))
                    .abort_handle()
                })
                .collect();
            state.borrow_mut().containers[i].tasks = tasks;
        }
        Err(e) => {
            let mut s = state.borrow_mut();
            s.containers[i].status.exit_code = Some(127);
            s.fail(i, e);
            // A process of a `processes` machine that cannot start ends the machine, as an exit
            // would.
            let ends_machine = s.containers[i].spec.stops_machine && !s.stopping;
            if ends_machine {
                s.ended_by = Some(i);
            }
            drop(s);
            if ends_machine {
                spawn_stop(state, None, None);
            }
        }
    }
}

/// Reaps every child that has exited: exec children go to their waiters, containers to
/// [`on_exit`]; anything else (a failed exec child) is just reaped.
fn reap(state: &Shared) {
    loop {
        let (pid, ended) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (
                pid.as_raw(),
                Ended {
                    code: Some(code),
                    signal: None,
                },
            ),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (
                pid.as_raw(),
                Ended {
                    code: None,
                    signal: Some(sig as i32),
                },
            ),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        };
        let waiters = state.borrow().waiters.clone();
        let waiter = waiters.borrow_mut().remove(&pid);
        if let Some(tx) = waiter {
            let _ = tx.send(ended);
            continue;
        }
        let index = state.borrow_mut().pids.remove(&pid);
        if let Some(i) = index {
            let pipe = state.borrow_mut().containers[i].status_pipe.take();
            on_exit(state, i, workload_end(pipe, ended));
        }
    }
    reconcile(state);
}

/// How the workload ended: what its init reported, or (when the init itself was killed, by a
/// stop's SIGKILL) the init's own end.
fn workload_end(pipe: Option<std::fs::File>, init_end: Ended) -> Ended {
    use std::io::Read;
    let mut buf = [0u8; hangar_sandbox::init::STATUS_LEN];
    let reported = pipe.and_then(|mut p| {
        p.read_exact(&mut buf).ok()?;
        hangar_sandbox::init::decode_status(&buf)
    });
    match reported {
        Some((code, signal)) => Ended { code, signal },
        None => init_end,
    }
}

/// Records a container's exit and decides on a restart.
fn on_exit(state: &Shared, i: usize, ended: Ended) {
    let mut s = state.borrow_mut();
    let stopping = s.stopping;
    let c = &mut s.containers[i];
    for t in c.tasks.drain(..) {
        t.abort();
    }
    let liveness_stop = matches!(
        c.phase,
        Phase::Running {
            liveness_stop: true
        }
    );
    c.status.pid = None;
    c.status.exit_code = ended.code;
    c.status.signal = ended.signal;
    let clean = ended.code == Some(0);
    c.exits.ever_clean |= clean;
    c.exits.last_clean = Some(clean);
    let failed = !clean || liveness_stop;
    let mut e = event(c, EventKind::Exited);
    e.exit_code = ended.code;
    e.signal = ended.signal;
    let backoff = if stopping {
        None
    } else {
        c.tracker.decide(&c.spec.restart, failed, Instant::now())
    };
    match backoff {
        None => c.set_phase(Phase::Exited),
        Some(_) => {
            c.set_phase(Phase::RestartPending);
            c.status.restart_count += 1;
        }
    }
    let restarting = backoff.map(|_| event(c, EventKind::Restarting));
    let run = c.run;
    let ends_machine = backoff.is_none() && c.spec.stops_machine && !stopping;
    s.emit(e);
    if let Some(r) = restarting {
        s.emit(r);
    }
    if ends_machine {
        s.ended_by = Some(i);
    }
    drop(s);
    if let Some(delay) = backoff {
        tokio::task::spawn_local(restart_after(state.clone(), i, run, delay));
    }
    if ends_machine {
        // `processes` semantics: the machine stops when any of its processes exits.
        spawn_stop(state, None, None);
    }
}

async fn restart_after(state: Shared, i: usize, run: u64, delay: Duration) {
    tokio::time::sleep(delay).await;
    {
        let mut s = state.borrow_mut();
        let c = &mut s.containers[i];
        if c.run != run || c.phase != Phase::RestartPending {
            return;
        }
        if s.stopping {
            s.containers[i].set_phase(Phase::Exited);
            s.changed.notify_waiters();
            return;
        }
    }
    launch_container(&state, i);
    reconcile(&state);
}

/// Feeds one probe result of check `k` of container `i` (run `run`); returns false when the
/// run is over and the check should stop.
pub(crate) fn check_result(
    state: &Shared,
    i: usize,
    k: usize,
    run: u64,
    pass: bool,
    output: String,
) -> bool {
    let stop = {
        let mut s = state.borrow_mut();
        let stopping = s.stopping;
        let c = &mut s.containers[i];
        if c.run != run || !c.running() || stopping {
            return false;
        }
        let changed = c.checks[k].record(pass);
        let st = c.checks[k].state;
        if let Some(status) = c.status.checks.get_mut(k) {
            status.status = st.as_str().into();
            status.output = output;
            status.updated_at = now_ms();
        }
        let spec = &c.spec.healthchecks[k];
        let stop = changed
            && st == CheckState::Critical
            && spec.kind == CheckKind::Liveness
            && spec.stop_when_unhealthy
            && c.phase
                == Phase::Running {
                    liveness_stop: false,
                };
        if stop {
            c.set_phase(Phase::Running {
                liveness_stop: true,
            });
        }
        s.update_health(i);
        stop.then(|| {
            let c = &s.containers[i];
            (c.status.pid, c.spec.stop_signal, c.spec.stop_timeout_ms)
        })
    };
    if let Some((Some(pid), sig, timeout)) = stop {
        tracing::warn!(
            container = i,
            "liveness check failed: stopping the container"
        );
        tokio::task::spawn_local(stop_one(
            state.clone(),
            i,
            pid,
            sig,
            Duration::from_millis(timeout),
        ));
    }
    // A health change may let dependents start.
    reconcile(state);
    true
}

/// Sends `sig` to container `i`'s init, then SIGKILL if it is still there after `timeout`.
async fn stop_one(state: Shared, i: usize, pid: i32, sig: i32, timeout: Duration) {
    let changed = state.borrow().changed.clone();
    let alive = |s: &Shared| s.borrow().containers[i].status.pid == Some(pid);
    // The container's init forwards the signal to the workload, which reacts as any process
    // would (a process without a handler for it ends at once).
    if let Ok(sig) = Signal::try_from(sig) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while alive(&state) {
        let notified = changed.notified();
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            // The grace period is over; SIGKILL to the init ends the whole container.
            if alive(&state) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            return;
        }
    }
}

pub(crate) fn spawn_stop(state: &Shared, signal: Option<i32>, timeout_ms: Option<u64>) {
    {
        let mut s = state.borrow_mut();
        if std::mem::replace(&mut s.stopping, true) {
            return;
        }
        // No restarts during a stop; containers still waiting never start.
        for c in &mut s.containers {
            if c.phase == Phase::RestartPending {
                c.set_phase(Phase::Exited);
            }
        }
        s.changed.notify_waiters();
    }
    tokio::task::spawn_local(stop_all(state.clone(), signal, timeout_ms));
}

/// Stops the containers wave by wave, dependents before what they depend on; within a wave
/// in parallel, each with its own signal and timeout (or the request's), then SIGKILL.
async fn stop_all(state: Shared, signal: Option<i32>, timeout_ms: Option<u64>) {
    let waves = {
        let s = state.borrow();
        let deps: Vec<Vec<(usize, Condition)>> =
            s.containers.iter().map(|c| c.deps.clone()).collect();
        graph::stop_waves(&deps)
    };
    for wave in waves {
        let stops: Vec<_> = {
            let s = state.borrow();
            wave.iter()
                .filter_map(|&i| {
                    let c = &s.containers[i];
                    let pid = c.status.pid?;
                    let sig = signal.unwrap_or(c.spec.stop_signal);
                    let timeout =
                        Duration::from_millis(timeout_ms.unwrap_or(c.spec.stop_timeout_ms));
                    Some(tokio::task::spawn_local(stop_one(
                        state.clone(),
                        i,
                        pid,
                        sig,
                        timeout,
                    )))
                })
                .collect()
        };
        for s in stops {
            let _ = s.await;
        }
        // stop_one returns after SIGKILL without waiting; wait for the wave's exits.
        let changed = state.borrow().changed.clone();
        loop {
            let notified = changed.notified();
            let left = {
                let s = state.borrow();
                wave.iter().any(|&i| s.containers[i].status.pid.is_some())
            };
            if !left {
                break;
            }
            notified.await;
        }
    }
}
