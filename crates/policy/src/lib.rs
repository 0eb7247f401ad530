//! The one restart policy of Hangar, for machines (applied by the daemon, which counts restarts
//! from the machine's event log so the count survives a daemon restart) and for containers
//! (applied by Pilot, which counts them in memory for the life of the machine's run): the
//! decision, the `max_retries` budget over a sliding five-minute window, and the back-off.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `max_retries` counts the restarts within this window.
pub const WINDOW: Duration = Duration::from_secs(300);
/// `max_retries` when the config gives none (Fly's default).
pub const DEFAULT_MAX_RETRIES: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    No,
    Always,
    OnFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// For `on_failure`: restarts allowed within [`WINDOW`].
    pub max_retries: u32,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::No,
            max_retries: 0,
        }
    }
}

impl RestartSpec {
    /// From a config's `restart` (`policy` as Fly spells it, `max_retries`): `no`, `always`,
    /// anything else (or nothing) `on-failure`, with `max_retries` default 10.
    pub fn from_config(policy: Option<&str>, max_retries: Option<i64>) -> Self {
        let policy = match policy {
            Some("no") => RestartPolicy::No,
            Some("always") => RestartPolicy::Always,
            _ => RestartPolicy::OnFailure,
        };
        RestartSpec {
            policy,
            max_retries: max_retries.map_or(DEFAULT_MAX_RETRIES, |n| {
                n.clamp(0, i64::from(u32::MAX)) as u32
            }),
        }
    }
}

/// Whether a run that just ended restarts, given the restarts already made within
/// [`WINDOW`]; `failed` is a non-zero exit, a signal, an OOM kill or a stop by a liveness
/// check. `Some(back-off)` to wait before the next run: doubling from 100 ms up to 2 s, so a
/// crash loop does not spin while a single crash comes back almost at once.
pub fn decide(spec: &RestartSpec, failed: bool, recent_restarts: usize) -> Option<Duration> {
    let restart = match spec.policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => {
            failed && (recent_restarts as u64) < u64::from(spec.max_retries)
        }
    };
    restart.then(|| {
        let shift = recent_restarts.min(16) as u32;
        FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
    })
}

/// Restarts within the window, counted in memory (Pilot's containers).
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    /// When each restart within the window happened, oldest first.
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    /// [`decide`] with this tracker's count; records the restart when it returns `Some`.
    pub fn decide(&mut self, spec: &RestartSpec, failed: bool, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        let backoff = decide(spec, failed, self.recent.len())?;
        self.recent.push_back(now);
        Some(backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: RestartPolicy, max_retries: u32) -> RestartSpec {
        RestartSpec {
            policy,
            max_retries,
        }
    }

    #[test]
    fn no_never_restarts() {
        assert_eq!(decide(&spec(RestartPolicy::No, 5), true, 0), None);
    }

    #[test]
    fn always_restarts_clean_exits_with_growing_backoff() {
        let s = spec(RestartPolicy::Always, 0);
        let b: Vec<Duration> = (0..8).filter_map(|n| decide(&s, false, n)).collect();
        assert_eq!(b.len(), 8);
        assert_eq!(b[0], Duration::from_millis(100));
        assert_eq!(b[1], Duration::from_millis(200));
        assert_eq!(b[7], MAX_BACKOFF);
    }

    #[test]
    fn on_failure_spends_max_retries() {
        let s = spec(RestartPolicy::OnFailure, 2);
        assert_eq!(decide(&s, false, 0), None, "a clean exit is not a failure");
        assert!(decide(&s, true, 0).is_some());
        assert!(decide(&s, true, 1).is_some());
        assert_eq!(decide(&s, true, 2), None);
        assert_eq!(decide(&spec(RestartPolicy::OnFailure, 0), true, 0), None);
    }

    #[test]
    fn the_tracker_forgets_restarts_outside_the_window() {
        let mut t = RestartTracker::default();
        let s = spec(RestartPolicy::OnFailure, 2);
        let start = Instant::now();
        assert!(t.decide(&s, true, start).is_some());
        assert!(t
            .decide(&s, true, start + Duration::from_secs(10))
            .is_some());
        assert_eq!(t.decide(&s, true, start + Duration::from_secs(20)), None);
        assert!(t.decide(&s, true, start + WINDOW).is_some());
        assert_eq!(t.decide(&s, true, start + WINDOW), None);
    }

    #[test]
    fn config_spellings() {
        assert_eq!(
            RestartSpec::from_config(None, None),
            spec(RestartPolicy::OnFailure, DEFAULT_MAX_RETRIES)
        );
        assert_eq!(
            RestartSpec::from_config(Some("no"), Some(3)).policy,
            RestartPolicy::No
        );
        assert_eq!(
            RestartSpec::from_config(Some("always"), Some(-1)),
            spec(RestartPolicy::Always, 0)
        );
        assert_eq!(
            RestartSpec::from_config(Some("on-failure"), Some(4)),
            spec(RestartPolicy::OnFailure, 4)
        );
    }
}
