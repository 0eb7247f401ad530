//! Choosing a machine for a request or connection: Fly's three load bands, autostart, and a
//! short queue when every machine is at its hard limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::table::{Candidate, CandidateRef};
use crate::Proxy;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Nothing serves this port (or host).
    #[error("no service for this address")]
    NoService,
    /// Nothing is started and nothing can be (Fly's PR01).
    #[error("no machines are available to serve this request (PR01)")]
    NoMachine,
    /// Every machine stayed at its hard limit for the queue's time.
    #[error("every machine is at its concurrency hard limit")]
    Overloaded,
    #[error("could not start machine {id}: {error} (PM07)")]
    StartFailed { id: String, error: String },
}

#[derive(Debug)]
struct MachineLoad {
    inflight: u32,
    /// Since when nothing has been in flight (while started).
    idle_since: Instant,
}

/// In-flight requests or connections per machine.
#[derive(Default)]
pub struct Load {
    machines: Arc<Mutex<HashMap<String, MachineLoad>>>,
}

/// Holds one unit of a machine's load until dropped.
pub struct LoadGuard {
    machines: Arc<Mutex<HashMap<String, MachineLoad>>>,
    id: String,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = machines.get_mut(&self.id) {
            l.inflight = l.inflight.saturating_sub(1);
            if l.inflight == 0 {
                l.idle_since = Instant::now();
            }
        }
    }
}

impl Load {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MachineLoad>> {
        self.machines.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn inflight(&self, id: &str) -> u32 {
        self.lock().get(id).map_or(0, |l| l.inflight)
    }

    /// How long the machine has had nothing in flight (`None` while it has).
    pub fn idle_for(&self, id: &str) -> Option<std::time::Duration> {
        match self.lock().get(id) {
            Some(l) if l.inflight > 0 => None,
            Some(l) => Some(l.idle_since.elapsed()),
            None => Some(std::time::Duration::ZERO),
        }
    }

    /// A machine that (re)starts is idle from now, not from before it stopped.
    pub fn state_changed(&self, id: &str, started: bool) {
        let mut machines = self.lock();
        let l = machines.entry(id.to_string()).or_insert(MachineLoad {
            inflight: 0,
            idle_since: Instant::now(),
        });
        if !started && l.inflight == 0 {
            l.idle_since = Instant::now();
        }
    }

    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Counts one more in flight on machine `id` until the guard is dropped (traffic another
    /// host's proxy brings counts too: this host's autostop watches it).
    pub fn hold(&self, id: &str) -> LoadGuard {
        self.take(id)
    }

    pub(crate) fn take(&self, id: &str) -> LoadGuard {
        let mut machines = self.lock();
        match machines.get_mut(id) {
            Some(l) => l.inflight += 1,
            None => {
                machines.insert(
                    id.to_string(),
                    MachineLoad {
                        inflight: 1,
                        idle_since: Instant::now(),
                    },
                );
            }
        }
        LoadGuard {
            machines: self.machines.clone(),
            id: id.to_string(),
        }
    }
}

/// The machine chosen, and whether it was started for this request (it may need a moment
/// before it listens).
pub struct Chosen {
    pub candidate: Candidate,
    pub woken: bool,
    pub guard: LoadGuard,
}

/// What a look at the table says to do for a request.
enum Step {
    Take(Candidate),
    /// Start (or resume) this machine of this app, then look again.
    Wake(String, String),
    /// Every machine is at its hard limit.
    Wait,
    NoService,
    NoMachine,
}

impl Proxy {
    /// Picks a machine of `app` serving `port`: the least loaded below its soft limit, else the
    /// least loaded below its hard limit; starts a stopped or suspended one when nothing
    /// started is below its soft limit (and autostart allows); waits for room when every
    /// machine is at its hard limit.
    pub async fn choose(&self, app: &str, port: u16) -> Result<Chosen, RouteError> {
        let deadline = Instant::now() + self.config.queue_timeout;
        let mut woken = false;
        loop {
            let changed = self.changed.notified();
            match self.with_table(|table| self.step(table, app, port)) {
                Step::Take(candidate) => {
                    let guard = self.load.take(&candidate.machine.id);
                    return Ok(Chosen {
                        candidate,
                        woken,
                        guard,
                    });
                }
                Step::Wake(app, id) => {
                    tracing::info!(%app, machine = %id, "proxy: starting a machine for a request");
                    self.start_machine(&app, &id)
                        .await
                        .map_err(|error| RouteError::StartFailed { id, error })?;
                    self.metrics
                        .autostarts
                        .get_or_create(&crate::metrics::Metrics::app(&app))
                        .inc();
                    woken = true;
                }
                Step::NoService => return Err(RouteError::NoService),
                Step::NoMachine => return Err(RouteError::NoMachine),
                Step::Wait => {
                    // Every machine at its hard limit: wait for one to free up, briefly.
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(RouteError::Overloaded);
                    }
                    let wait = (deadline - now).min(std::time::Duration::from_millis(50));
                    let _ = tokio::time::timeout(wait, changed).await;
                }
            }
        }
    }

    /// One look at `table` for a request to `app` on `port`.
    fn step(&self, table: &crate::table::Table, app: &str, port: u16) -> Step {
        let candidates: Vec<CandidateRef> = table.candidate_refs(port, app).collect();
        if candidates.is_empty() {
            return Step::NoService;
        }
        // The started machines that may take it: (index in `candidates`, load).
        let started: Vec<(usize, u32)> = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.machine.started && !c.machine.cordoned && c.machine.ipv4.is_some())
            .filter(|(_, c)| self.health.routable(&c.machine.id))
            .map(|(i, c)| (i, self.load.inflight(&c.machine.id)))
            .collect();
        // The least loaded of those in `band`, ties broken at random.
        let pick = |band: &dyn Fn(&CandidateRef, u32) -> bool| {
            let eligible = || started.iter().filter(|(i, l)| band(&candidates[*i], *l));
            let least = eligible().map(|(_, l)| *l).min()?;
            let ties = eligible().filter(|(_, l)| *l == least).count();
            eligible()
                .filter(|(_, l)| *l == least)
                .nth(rand::random_range(0..ties))
                .map(|(i, _)| *i)
        };
        if let Some(i) = pick(&|c, l| l < c.service().soft_limit) {
            return Step::Take(candidates[i].to_candidate());
        }
        // Nothing below its soft limit: wake a machine if one can be woken.
        let sleeper = candidates
            .iter()
            .filter(|c| c.service().autostart && !c.machine.cordoned)
            .filter(|c| matches!(c.machine.state.as_str(), "stopped" | "suspended"))
            // Suspended ones resume in milliseconds; then the lowest id, for determinism.
            .min_by_key(|c| (c.machine.state != "suspended", &c.machine.id));
        if let Some(s) = sleeper {
            return Step::Wake(s.machine.app.clone(), s.machine.id.clone());
        }
        if let Some(i) = pick(&|c, l| c.service().hard_limit.is_none_or(|h| l < h)) {
            return Step::Take(candidates[i].to_candidate());
        }
        if started.is_empty() {
            return Step::NoMachine;
        }
        Step::Wait
    }

    pub fn load(&self) -> &Load {
        &self.load
    }
}
