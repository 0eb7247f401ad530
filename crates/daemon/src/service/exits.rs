//! What happens when a machine exits on its own: the exit policy (restart, stop,
//! auto_destroy), exit and container events, restart counts.

use super::*;

impl Hangar {
    /// Records a machine's exit and applies its restart policy (reference 5.3): `no` stops it
    /// (or destroys it with `auto_destroy`), `always` restarts it, `on-failure` restarts it on a
    /// non-zero exit up to `max_retries` (default 10) times within 5 minutes.
    pub async fn on_exit(&self, exit: MachineExit) {
        if let Err(e) = self.handle_exit(&exit).await {
            tracing::warn!(machine = %exit.machine_id, error = %e, "handling machine exit failed");
        }
    }

    pub(super) async fn handle_exit(&self, exit: &MachineExit) -> ServiceResult<()> {
        self.apply_exit(exit, false).await
    }

    /// The exit policy for `exit`; `reconciled` for an exit that happened while the daemon was
    /// down (found at start-up), which no runtime run is watching any more.
    pub(super) async fn apply_exit(
        &self,
        exit: &MachineExit,
        reconciled: bool,
    ) -> ServiceResult<()> {
        let m = self.load(&exit.app, &exit.machine_id).await?;
        let guard = self.handle(&m).lock.clone().lock_owned().await;
        let mut m = self.load(&exit.app, &exit.machine_id).await?;
        let current = if reconciled {
            matches!(m.state, MachineState::Started | MachineState::Suspended)
        } else {
            self.runtime.is_current_run(&m.id, exit.run)
        };
        if m.instance_id != exit.instance_id || m.state.is_terminal() || !current {
            return Ok(());
        }
        // A suspended machine can have exited just before it was frozen: that exit is its own,
        // not one a stop asked for.
        let requested_stop = !matches!(m.state, MachineState::Started | MachineState::Suspended);
        // The same policy as Pilot's for containers (hangar_policy), with the count of recent
        // restarts taken from the event log.
        let spec = m.spec().restart;
        if exit.oom_killed {
            self.metrics.oom_kills.inc();
        }
        let failed = exit.exit_code != 0 || exit.oom_killed;
        let restart_count = self.recent_restarts(&m.id).await?;
        let backoff = if requested_stop {
            None
        } else {
            hangar_policy::decide(&spec, failed, restart_count)
        };
        let restarting = backoff.is_some();
        let request = exit_request(exit, requested_stop, restarting, restart_count);
        if requested_stop {
            // The stop (or update, destroy) in progress owns the state; just log the exit.
            return self.record_exit(&m, exit, true, false, restart_count).await;
        }
        if let Some(backoff) = backoff {
            self.transition(
                &mut m,
                MachineState::Starting,
                "exit",
                Source::Platform,
                Some(request),
            )
            .await?;
            // A crash loop backs off (doubling to 2 s) so that max_retries spans long enough
            // for a transient cause to clear; the cap keeps a user's stop from waiting long.
            tokio::time::sleep(backoff).await;
            // A failed reboot leaves the machine `failed` with the reason; that is the outcome.
            if let Err(e) = self.boot(&mut m, "restart").await {
                tracing::warn!(machine = %m.id, error = %e, "automatic restart failed");
            }
            return Ok(());
        }
        self.transition(
            &mut m,
            MachineState::Stopped,
            "exit",
            Source::Platform,
            Some(request),
        )
        .await?;
        // The machine's resources go now; the logs stay until it is destroyed. A failure here
        // must not skip auto_destroy, which cleans up again.
        if let Err(e) = self.runtime.stop(&m, Signal::SIGKILL, Duration::ZERO).await {
            tracing::warn!(machine = %m.id, error = %e, "releasing an exited machine failed");
        }
        if m.spec().auto_destroy {
            drop(guard);
            self.destroy_locked(&exit.app, &exit.machine_id, None, false, true)
                .await?;
        }
        Ok(())
    }

    /// Appends an `exit` event without changing the machine's state.
    pub(super) async fn record_exit(
        &self,
        m: &MachineRecord,
        exit: &MachineExit,
        requested_stop: bool,
        restarting: bool,
        restart_count: usize,
    ) -> ServiceResult<()> {
        let request = exit_request(exit, requested_stop, restarting, restart_count);
        let event = Self::event(m, "exit", m.state, Source::Platform, Some(request));
        db(&self.store, move |s| s.append_event(&event)).await
    }

    /// Records a container's start, exit, restart, failure or health change as a machine event
    /// (`container_<kind>`), without touching the machine's state.
    pub async fn on_container_event(&self, ev: crate::runtime::ContainerEvent) {
        let Ok(m) = self.load(&ev.app, &ev.machine_id).await else {
            return;
        };
        if m.instance_id != ev.instance_id {
            return;
        }
        let event = EventRecord {
            id: ids::new_ulid(),
            machine_id: m.id.clone(),
            kind: format!("container_{}", ev.kind),
            status: m.state.as_str().to_string(),
            source: Source::Platform.as_str().to_string(),
            timestamp: if ev.at > 0 { ev.at } else { now_ms() },
            request: Some(ev.detail),
        };
        if let Err(e) = db(&self.store, move |s| s.append_event(&event)).await {
            tracing::warn!(machine = %ev.machine_id, error = %e, "recording a container event failed");
        }
    }

    /// Automatic restarts of the machine within the policy's window, counted from its event log
    /// (exit events that restarted it), so the count survives a daemon restart.
    pub(super) async fn recent_restarts(&self, id: &str) -> ServiceResult<usize> {
        let mid = id.to_string();
        let events = db(&self.store, move |s| {
            s.list_events(&mid, RESTART_EVENTS_SCANNED)
        })
        .await?;
        let cutoff = now_ms() - hangar_policy::WINDOW.as_millis() as i64;
        Ok(count_restarts(&events, cutoff))
    }

    // ---- start-up ---------------------------------------------------------------------------
}

/// How many of a machine's latest events are scanned for its recent restarts: enough for the
/// largest useful `max_retries` among container events.
const RESTART_EVENTS_SCANNED: usize = 512;

/// Automatic restarts recorded in `events` (newest first) at or after `cutoff` (unix ms).
fn count_restarts(events: &[hangar_store::EventRecord], cutoff: i64) -> usize {
    events
        .iter()
        .take_while(|e| e.timestamp >= cutoff)
        .filter(|e| {
            // Automatic restarts only: a user's restart is a requested stop.
            e.kind == "exit"
                && e.request.as_ref().is_some_and(|r| {
                    r["exit_event"]["restarting"] == true
                        && r["exit_event"]["requested_stop"] != true
                })
        })
        .count()
}

/// The `request` of an `exit` event (reference 3.2).
fn exit_request(
    exit: &MachineExit,
    requested_stop: bool,
    restarting: bool,
    restart_count: usize,
) -> serde_json::Value {
    json!({
        "exit_event": {
            "exit_code": exit.exit_code,
            "guest_exit_code": exit.exit_code,
            "guest_signal": exit.signal.unwrap_or(-1),
            "signal": exit.signal.unwrap_or(-1),
            "oom_killed": exit.oom_killed,
            "requested_stop": requested_stop,
            "restarting": restarting,
            "exited_at": crate::clock::rfc3339_ms(exit.exited_at),
        },
        "restart_count": restart_count,
    })
}

#[cfg(test)]
mod restart_count_tests {
    use super::*;

    fn exit_event(ts: i64, restarting: bool) -> hangar_store::EventRecord {
        hangar_store::EventRecord {
            id: format!("e{ts}"),
            machine_id: "m".into(),
            kind: "exit".into(),
            status: "stopped".into(),
            source: "flyd".into(),
            timestamp: ts,
            request: Some(json!({"exit_event": {"restarting": restarting}})),
        }
    }

    #[test]
    fn counts_restarting_exits_within_the_window() {
        let mut other = exit_event(950, false);
        other.kind = "container_exited".into();
        let mut by_user = exit_event(990, true);
        by_user.request = Some(json!({"exit_event": {"restarting": true, "requested_stop": true}}));
        // Newest first, as the store lists them.
        let events = vec![
            exit_event(1000, true),
            by_user,
            other,
            exit_event(900, false),
            exit_event(800, true),
            exit_event(100, true),
        ];
        assert_eq!(count_restarts(&events, 500), 2);
        assert_eq!(count_restarts(&events, 0), 3);
        assert_eq!(count_restarts(&events, 2000), 0);
        assert_eq!(count_restarts(&[], 0), 0);
    }
}
