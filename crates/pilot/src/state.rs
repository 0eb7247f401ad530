//! Pilot's state: each container (its spec, status, dependencies, checks, restart tracking)
//! and the machine-wide parts (watchers, exec waiters, the stop in progress). Only data and the
//! bookkeeping on it live here; what happens when (launch, exit, stop, checks) is the
//! supervisor's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use tokio::sync::{broadcast, Notify};
use tokio::task::AbortHandle;

use crate::exec::Waiters;
use crate::graph::DepView;
use crate::health::{self, CheckMachine, CheckState};
use crate::spec::Condition;
use crate::spec::{ContainerSpec, ContainerState, ContainerStatus, Event, EventKind};
use hangar_policy::RestartTracker;

/// Events buffered per watcher; a watcher that falls this far behind is dropped.
pub(crate) const WATCH_BUFFER: usize = 1024;

pub(crate) struct Container {
    pub(crate) spec: ContainerSpec,
    pub(crate) status: ContainerStatus,
    pub(crate) deps: Vec<(usize, Condition)>,
    /// Bumped at every launch; timers and checks of an older run see it and stop.
    pub(crate) run: u64,
    /// Where it is in its life; [`Container::set_phase`] keeps `status.state` in step.
    pub(crate) phase: Phase,
    /// How its runs ended so far.
    pub(crate) exits: Exits,
    pub(crate) tracker: RestartTracker,
    pub(crate) checks: Vec<CheckMachine>,
    pub(crate) gating: Vec<usize>,
    pub(crate) tasks: Vec<AbortHandle>,
    /// How the running workload ended, as its init reports it (see `hangar_sandbox::init`).
    pub(crate) status_pipe: Option<std::fs::File>,
}

/// Where a container is in its life. One value, so that no combination can contradict itself
/// (pending a restart and finished, running and never launched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not launched yet: waiting for its dependencies.
    Waiting,
    /// Its process runs. `liveness_stop`: a liveness check is stopping this run, so its exit
    /// counts as a failure.
    Running { liveness_stop: bool },
    /// It exited; its restart policy starts it again after a back-off.
    RestartPending,
    /// It exited and will not run again.
    Exited,
    /// It could not start, or a dependency it needs can never be satisfied.
    Failed,
}

impl Phase {
    /// The state the machine JSON reports (`containers[].state`).
    pub(crate) fn reported(self) -> ContainerState {
        match self {
            Phase::Waiting => ContainerState::Created,
            Phase::Running { .. } => ContainerState::Running,
            Phase::RestartPending | Phase::Exited => ContainerState::Exited,
            Phase::Failed => ContainerState::Failed,
        }
    }
}

/// How a container's runs ended so far: what `depends_on` conditions look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Exits {
    /// Some run exited 0.
    pub(crate) ever_clean: bool,
    /// How the last run ended (`None`: none ended yet).
    pub(crate) last_clean: Option<bool>,
}

impl Container {
    pub(crate) fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.status.state = phase.reported();
    }

    pub(crate) fn running(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
    }

    pub(crate) fn ready(&self) -> bool {
        self.running()
            && self.gating.iter().all(|&k| {
                self.checks
                    .get(k)
                    .is_some_and(|c| c.state == CheckState::Passing)
            })
    }

    pub(crate) fn view(&self) -> DepView {
        DepView {
            launched: self.run > 0,
            running: self.running(),
            ready: self.ready(),
            exited_ok: self.exits.ever_clean,
            exited_bad: self.exits.last_clean == Some(false),
            finished: matches!(self.phase, Phase::Exited | Phase::Failed),
            failed: self.phase == Phase::Failed,
        }
    }
}

/// Events kept for watchers that connect late.
const HISTORY_LEN: usize = 256;

pub(crate) struct State {
    pub(crate) log_dir: PathBuf,
    pub(crate) log_max: u64,
    pub(crate) containers: Vec<Container>,
    pub(crate) pids: HashMap<i32, usize>,
    pub(crate) stopping: bool,
    /// The `stops_machine` container whose exit ended the machine; its code is the machine's.
    pub(crate) ended_by: Option<usize>,
    pub(crate) events: broadcast::Sender<Event>,
    /// The most recent events, replayed to a new watcher so that what happened before it
    /// connected (containers that start at once) is not lost.
    pub(crate) history: RefCell<std::collections::VecDeque<Event>>,
    /// Woken at every change that may end Pilot or a stop wave.
    pub(crate) changed: Rc<Notify>,
    pub(crate) waiters: Waiters,
    /// The tasks copying container output into the logs (awaited before Pilot exits).
    pub(crate) log_readers: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) type Shared = Rc<RefCell<State>>;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn event(c: &Container, kind: EventKind) -> Event {
    Event {
        container: c.spec.name.clone(),
        kind,
        at: now_ms(),
        exit_code: None,
        signal: None,
        health: None,
        message: None,
        restart_count: c.status.restart_count,
    }
}

impl State {
    /// Broadcasts to the watchers; having none is fine.
    pub(crate) fn emit(&self, e: Event) {
        tracing::info!(container = %e.container, kind = ?e.kind, code = ?e.exit_code,
            signal = ?e.signal, health = ?e.health, message = ?e.message, "container event");
        {
            let mut history = self.history.borrow_mut();
            if history.len() == HISTORY_LEN {
                history.pop_front();
            }
            history.push_back(e.clone());
        }
        let _ = self.events.send(e);
    }

    pub(crate) fn fail(&mut self, i: usize, error: String) {
        let c = &mut self.containers[i];
        c.set_phase(Phase::Failed);
        c.status.error = Some(error.clone());
        let mut e = event(c, EventKind::Failed);
        e.message = Some(error);
        self.emit(e);
    }

    /// Recomputes a container's health from its checks; reports a change.
    pub(crate) fn update_health(&mut self, i: usize) {
        let c = &mut self.containers[i];
        // Machine-level checks are reported but are not the container's health.
        let own: Vec<_> = c
            .checks
            .iter()
            .zip(&c.spec.healthchecks)
            .filter(|(_, spec)| !spec.machine_level)
            .map(|(m, _)| m.state)
            .collect();
        if own.is_empty() {
            return;
        }
        let h = health::aggregate(own);
        let new = Some(h.as_str().to_string());
        if c.status.health != new {
            c.status.health = new;
            let mut e = event(c, EventKind::Health);
            e.health = Some(h.as_str().into());
            self.emit(e);
        }
    }
}
