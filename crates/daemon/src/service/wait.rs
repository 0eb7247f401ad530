//! `wait`: block until a machine reaches a state (reference 3).

use super::*;

impl Hangar {
    /// Blocks until the machine (or the given version of it) is in one of `targets`.
    pub async fn wait(
        &self,
        app: &str,
        id: &str,
        targets: &[WaitTarget],
        timeout: Duration,
        version: Option<&str>,
        after_event: Option<&str>,
    ) -> ServiceResult<(Snapshot, String)> {
        let m = self.load(app, id).await?;
        if let Some(v) = version {
            if v != m.instance_id {
                let (mid, vv) = (m.id.clone(), v.to_string());
                if !db(&self.store, move |s| s.has_version(&mid, &vv)).await? {
                    return Err(ServiceError::bad_request(format!(
                        "version {v} is not a version of machine {id}"
                    )));
                }
            }
        }
        let handle = self.handle(&m);
        let mut rx = handle.watch.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snap = rx.borrow_and_update().clone();
            let (state, reported_version) = match version {
                Some(v) if v != snap.instance_id => (MachineState::Replaced, v.to_string()),
                _ => (snap.state, snap.instance_id.clone()),
            };
            let recent_enough =
                after_event.is_none_or(|after| snap.event_id.as_deref().is_some_and(|e| e > after));
            if recent_enough && targets.iter().any(|t| t.matches(state)) {
                return Ok((Snapshot { state, ..snap }, reported_version));
            }
            // A failed machine only moves again when someone acts on it: waiting for another
            // state would just time out, so say why now.
            if state.is_terminal() || state == MachineState::Failed {
                let mut msg = format!("machine failed to reach desired state, currently {state}");
                if state == MachineState::Failed {
                    let events = self.events(&m.id, 5).await.unwrap_or_default();
                    if let Some(err) = events.iter().find_map(|e| {
                        e.request
                            .as_ref()?
                            .get("error")?
                            .as_str()
                            .map(str::to_string)
                    }) {
                        msg.push_str(&format!(": {err}"));
                    }
                }
                return Err(ServiceError::bad_request(msg));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ServiceError::internal("machine watch closed")),
                Err(_) => {
                    return Err(ServiceError::Timeout(format!(
                        "timed out waiting for machine to reach state {}; currently {state}",
                        targets
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    )))
                }
            }
        }
    }

    // ---- exits and restart policy ----------------------------------------------------------
}

/// States `wait` accepts, `settled` meaning any non-transient state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WaitTarget {
    State(MachineState),
    Settled,
}

impl WaitTarget {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "settled" => Some(WaitTarget::Settled),
            "started" | "stopped" | "suspended" | "destroyed" | "failed" | "created" => {
                s.parse().ok().map(WaitTarget::State)
            }
            _ => None,
        }
    }

    fn matches(&self, state: MachineState) -> bool {
        match self {
            WaitTarget::State(s) => *s == state,
            WaitTarget::Settled => state.is_settled(),
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            WaitTarget::State(s) => s.as_str(),
            WaitTarget::Settled => "settled",
        }
    }
}
