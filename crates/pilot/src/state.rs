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
    pub(crate) launched: bool,
    pub(crate) exited_ok: bool,
    pub(crate) exited_bad: bool,
    /// Will never run again.
    pub(crate) finished: bool,
    pub(crate) restart_pending: bool,
    /// A liveness check is stopping this run: its exit counts as a failure.
    pub(crate) liveness_stop: bool,
    pub(crate) tracker: RestartTracker,
    pub(crate) checks: Vec<CheckMachine>,
    pub(crate) gating: Vec<usize>,
    pub(crate) tasks: Vec<AbortHandle>,
    /// How the running workload ended, as its init reports it (see `hangar_sandbox::init`).
    pub(crate) status_pipe: Option<std::fs::File>,
}

impl Container {
    pub(crate) fn running(&self) -> bool {
        self.status.state == ContainerState::Running
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
            launched: self.launched,
            running: self.running(),
            ready: self.ready(),
            exited_ok: self.exited_ok,
            exited_bad: self.exited_bad,
            finished: self.finished,
            failed: self.status.state == ContainerState::Failed,
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
        c.status.state = ContainerState::Failed;
        c.status.error = Some(error.clone());
        c.finished = true;
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
