//! Autostop: idle machines of services with `autostop` are stopped or suspended, one per app
//! per pass, never below `min_machines_running`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hangar_api::config::Autostop;

use crate::table::MachineView;
use crate::Proxy;

impl Proxy {
    /// Runs the autostop passes until the proxy is dropped.
    pub fn start_autostop(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        // A pass every quarter of the idle time (at most every 30 s, at least every 100 ms).
        let every = (self.config.autostop_after / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(this) = me.upgrade() else { return };
                this.autostop_pass().await;
            }
        });
    }

    /// One pass: per app, the longest-idle machine past the idle time goes, if the app keeps
    /// more started machines than its floor.
    pub async fn autostop_pass(&self) {
        let table = self.table();
        let mut by_app: BTreeMap<&str, Vec<&MachineView>> = BTreeMap::new();
        for m in table.machines().filter(|m| !m.services.is_empty()) {
            by_app.entry(&m.app).or_default().push(m);
        }
        for (app, machines) in by_app {
            let started: Vec<&&MachineView> = machines.iter().filter(|m| m.started).collect();
            let floor = machines
                .iter()
                .flat_map(|m| m.services.iter())
                .filter(|s| s.autostop != Autostop::Off)
                .map(|s| s.min_machines_running as usize)
                .max()
                .unwrap_or(0);
            if started.len() <= floor {
                continue;
            }
            // Another host's machines are its own to stop (it sees their load, this host's
            // traffic included).
            let idlest = started
                .iter()
                .filter(|m| m.via.is_none() && m.autostop() != Autostop::Off)
                .filter_map(|m| Some((self.load.idle_for(&m.id)?, m)))
                .filter(|(idle, _)| *idle >= self.config.autostop_after)
                .max_by_key(|(idle, _)| *idle);
            let Some((idle, m)) = idlest else {
                continue;
            };
            let suspend = m.autostop() == Autostop::Suspend;
            tracing::info!(%app, machine = %m.id, ?idle, suspend, "proxy: autostop of an idle machine");
            match self.controller.stop(app, &m.id, suspend).await {
                Ok(()) => {
                    self.metrics
                        .autostops
                        .get_or_create(&crate::metrics::Metrics::app(app))
                        .inc();
                }
                Err(e) => {
                    tracing::info!(%app, machine = %m.id, error = %e, "proxy: autostop failed")
                }
            }
        }
    }
}
