//! Per-container restart decisions: the policy, the `max_retries` budget counted over a sliding
//! five-minute window, and the back-off before the next run.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::spec::{RestartPolicy, RestartSpec};

/// `max_retries` counts the restarts within this window.
pub const WINDOW: Duration = Duration::from_secs(300);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    /// When each restart within the window happened, oldest first.
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    /// Decides whether a run that just ended restarts. `failed` is a non-zero exit, a signal or
    /// a stop by a liveness check. Records the restart when it returns `Some(back-off)`.
    pub fn decide(&mut self, spec: &RestartSpec, failed: bool, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        let restart = match spec.policy {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => {
                failed && (self.recent.len() as u64) < spec.max_retries as u64
            }
        };
        if !restart {
            return None;
        }
        // Doubling from 100 ms keeps a crash loop from spinning while a single crash comes
        // back almost at once.
        let shift = self.recent.len().min(16) as u32;
        let backoff = FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF);
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
    fn test_no_never_restarts() {
        let mut t = RestartTracker::default();
        assert_eq!(
            t.decide(&spec(RestartPolicy::No, 5), true, Instant::now()),
            None
        );
    }

    #[test]
    fn test_always_restarts_clean_exits_with_growing_backoff() {
        let mut t = RestartTracker::default();
        let s = spec(RestartPolicy::Always, 0);
        let now = Instant::now();
        let b: Vec<Duration> = (0..8).filter_map(|_| t.decide(&s, false, now)).collect();
        assert_eq!(b.len(), 8);
        assert_eq!(b[0], Duration::from_millis(100));
        assert_eq!(b[1], Duration::from_millis(200));
        assert_eq!(b[7], MAX_BACKOFF);
    }

    #[test]
    fn test_on_failure_counts_retries_within_the_window() {
        let mut t = RestartTracker::default();
        let s = spec(RestartPolicy::OnFailure, 2);
        let start = Instant::now();
        assert_eq!(
            t.decide(&s, false, start),
            None,
            "a clean exit is not a failure"
        );
        assert!(t.decide(&s, true, start).is_some());
        assert!(t
            .decide(&s, true, start + Duration::from_secs(10))
            .is_some());
        assert_eq!(t.decide(&s, true, start + Duration::from_secs(20)), None);
        // Once the first restart leaves the window, one more is allowed.
        assert!(t.decide(&s, true, start + WINDOW).is_some());
        assert_eq!(t.decide(&s, true, start + WINDOW), None);
    }

    #[test]
    fn test_on_failure_with_zero_retries() {
        let mut t = RestartTracker::default();
        assert_eq!(
            t.decide(&spec(RestartPolicy::OnFailure, 0), true, Instant::now()),
            None
        );
    }
}
