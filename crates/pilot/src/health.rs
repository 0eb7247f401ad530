//! Health check thresholds as pure state machines: each probe result moves a check between
//! `warning` (not decided yet), `passing` and `critical`; a container's health follows its checks.

use crate::spec::{CheckKind, HealthcheckSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    /// In its grace period or not decided by the thresholds yet.
    Warning,
    Passing,
    Critical,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Warning => "warning",
            CheckState::Passing => "passing",
            CheckState::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// One check's consecutive-result counters.
#[derive(Debug, Clone)]
pub struct CheckMachine {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    pub state: CheckState,
}

impl CheckMachine {
    pub fn new(spec: &HealthcheckSpec) -> Self {
        CheckMachine {
            success_threshold: spec.success_threshold.max(1),
            failure_threshold: spec.failure_threshold.max(1),
            successes: 0,
            failures: 0,
            state: CheckState::Warning,
        }
    }

    /// Feeds one probe result; returns whether the check's state changed.
    pub fn record(&mut self, pass: bool) -> bool {
        let before = self.state;
        if pass {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.success_threshold {
                self.state = CheckState::Passing;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.failure_threshold {
                self.state = CheckState::Critical;
            }
        }
        self.state != before
    }
}

/// A container's health from its checks: healthy when all pass, unhealthy when any is critical.
pub fn aggregate(states: impl IntoIterator<Item = CheckState>) -> Health {
    let mut all_passing = true;
    for s in states {
        match s {
            CheckState::Critical => return Health::Unhealthy,
            CheckState::Warning => all_passing = false,
            CheckState::Passing => {}
        }
    }
    if all_passing {
        Health::Healthy
    } else {
        Health::Starting
    }
}

/// Which checks gate `depends_on: healthy`: the readiness ones, or all when there are none.
pub fn gating(specs: &[HealthcheckSpec]) -> Vec<usize> {
    // Machine-level checks never gate.
    let own = || specs.iter().enumerate().filter(|(_, c)| !c.machine_level);
    let readiness: Vec<usize> = own()
        .filter(|(_, c)| c.kind == CheckKind::Readiness)
        .map(|(i, _)| i)
        .collect();
    if readiness.is_empty() {
        own().map(|(i, _)| i).collect()
    } else {
        readiness
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Probe;

    fn spec(kind: CheckKind, success: u32, failure: u32) -> HealthcheckSpec {
        HealthcheckSpec {
            name: "c".into(),
            kind,
            stop_when_unhealthy: false,
            interval_ms: 1000,
            timeout_ms: 1000,
            grace_period_ms: 0,
            success_threshold: success,
            failure_threshold: failure,
            probe: Probe::Tcp { port: 1 },
            machine_level: false,
        }
    }

    #[test]
    fn test_thresholds_need_consecutive_results() {
        let mut m = CheckMachine::new(&spec(CheckKind::Readiness, 2, 3));
        assert_eq!(m.state, CheckState::Warning);
        assert!(!m.record(true));
        assert!(!m.record(false), "a failure resets the success streak");
        assert!(!m.record(true));
        assert!(m.record(true));
        assert_eq!(m.state, CheckState::Passing);
        // Two failures are below the threshold: still passing.
        assert!(!m.record(false));
        assert!(!m.record(false));
        assert!(!m.record(true));
        assert!(!m.record(false));
        assert!(!m.record(false));
        assert!(m.record(false));
        assert_eq!(m.state, CheckState::Critical);
        assert!(!m.record(true));
        assert!(m.record(true));
        assert_eq!(m.state, CheckState::Passing);
    }

    #[test]
    fn test_zero_thresholds_behave_as_one() {
        let mut m = CheckMachine::new(&spec(CheckKind::Readiness, 0, 0));
        assert!(m.record(false));
        assert_eq!(m.state, CheckState::Critical);
        assert!(m.record(true));
        assert_eq!(m.state, CheckState::Passing);
    }

    #[test]
    fn test_aggregate() {
        use CheckState::*;
        assert_eq!(aggregate([Passing, Passing]), Health::Healthy);
        assert_eq!(aggregate([Passing, Warning]), Health::Starting);
        assert_eq!(aggregate([Warning, Critical]), Health::Unhealthy);
        assert_eq!(aggregate([]), Health::Healthy);
    }

    #[test]
    fn test_gating_prefers_readiness() {
        let specs = vec![
            spec(CheckKind::Liveness, 1, 1),
            spec(CheckKind::Readiness, 1, 1),
        ];
        assert_eq!(gating(&specs), vec![1]);
        let only_liveness = vec![spec(CheckKind::Liveness, 1, 1)];
        assert_eq!(gating(&only_liveness), vec![0]);
    }
}
