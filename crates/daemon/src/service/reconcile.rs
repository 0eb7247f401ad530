//! Start-up: settling what the previous daemon left (re-adopt, finish transitions, apply
//! exits that happened while it was down).

use super::*;

impl Hangar {
    /// Settles machines the previous daemon left mid-transition (it may have been SIGKILLed).
    pub async fn reconcile(&self) -> ServiceResult<()> {
        let machines = self.live_machines().await?;
        let live: std::collections::HashSet<String> = machines
            .iter()
            .filter(|m| m.state != MachineState::Destroying)
            .map(|m| m.id.clone())
            .collect();
        self.runtime.sweep(&live).await;
        let mut exits = Vec::new();
        for m in machines {
            // One machine that cannot be settled must not keep the daemon from starting.
            match self.reconcile_one(&m).await {
                Ok(Some(exit)) => exits.push(exit),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(machine = %m.id, error = %e, "reconciling failed; marking the machine failed");
                    if let Ok((_guard, mut m)) = self.lock_machine(&m.app, &m.id).await {
                        let request = Some(json!({"error": e.to_string()}));
                        let _ = self
                            .transition(
                                &mut m,
                                MachineState::Failed,
                                "reconcile",
                                Source::Platform,
                                request,
                            )
                            .await;
                    }
                }
            }
        }
        self.runtime.settled().await;
        // The capacity ledger and the resolver start from the machines as settled.
        for m in self.live_machines().await? {
            self.capacity.track(&m.id, m.state, guest_size(&m.config));
            self.publish(&m);
        }
        // Exits that happened while the daemon was down get the same policy as any other
        // (restart, stop, auto_destroy), after start-up so that a backoff does not delay it.
        for exit in exits {
            let this = self.me.clone();
            tokio::spawn(async move {
                let Some(this) = this.upgrade() else { return };
                if let Err(e) = this.apply_exit(&exit, true).await {
                    tracing::warn!(machine = %exit.machine_id, error = %e, "applying an exit found at start-up failed");
                }
            });
        }
        Ok(())
    }

    /// Settles one machine the previous daemon left: re-adopts it if it runs, and finishes
    /// what was in flight (a destroy, a stop, a suspend) instead of guessing.
    /// Returns the exit of a machine that ended on its own meanwhile, for the exit policy.
    pub(super) async fn reconcile_one(
        &self,
        m: &MachineRecord,
    ) -> ServiceResult<Option<MachineExit>> {
        let (_guard, mut m) = self.lock_machine(&m.app, &m.id).await?;
        let (running, exit) = match self.runtime.adopt(&m).await {
            Adoption::Running => (true, None),
            Adoption::Gone(exit) => (false, exit),
        };
        if let (Some(exit), MachineState::Started | MachineState::Suspended) = (exit, m.state) {
            tracing::info!(machine = %m.id, code = exit.exit_code, "the machine exited while the daemon was down");
            return Ok(Some(exit));
        }
        let settled = match m.state {
            MachineState::Destroying => {
                self.runtime.destroy(&m).await?;
                let mid = m.id.clone();
                db(&self.store, move |s| s.delete_lease(&mid)).await?;
                Some((MachineState::Destroyed, "destroy"))
            }
            MachineState::Stopping if running => {
                let (signal, timeout) = stop_params(
                    &m.config,
                    &StopOptions {
                        signal: None,
                        timeout: None,
                    },
                );
                self.runtime.stop(&m, signal, timeout).await?;
                Some((MachineState::Stopped, "stop"))
            }
            MachineState::Suspending if running => {
                self.runtime.set_frozen(&m, true).await?;
                Some((MachineState::Suspended, "suspend"))
            }
            MachineState::Started | MachineState::Suspended if !running => {
                Some((MachineState::Stopped, "exit"))
            }
            s if s.is_transient() => Some(if running {
                (MachineState::Started, "start")
            } else {
                (MachineState::Stopped, "stop")
            }),
            _ => None,
        };
        if let Some((state, kind)) = settled {
            tracing::info!(machine = %m.id, from = %m.state, to = %state, "reconciled machine after restart");
            self.transition(
                &mut m,
                state,
                kind,
                Source::Platform,
                Some(json!({"reason": "reconciled after daemon restart"})),
            )
            .await?;
        }
        Ok(None)
    }
}
