//! The dependency graph, as pure decisions: whether a waiting container may start, must keep
//! waiting or can never start, and in which order a stop takes the containers down.

use crate::spec::{Condition, ContainerSpec};

/// What a dependent needs to know about one of its dependencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DepView {
    /// Its process was launched at least once.
    pub launched: bool,
    /// Running now (not waiting for a restart).
    pub running: bool,
    /// Running and its gating checks pass (`depends_on: healthy`).
    pub ready: bool,
    /// Some run of it exited with code 0.
    pub exited_ok: bool,
    /// The last run ended badly: a non-zero code or a signal.
    pub exited_bad: bool,
    /// It will never run again (ended for good, failed to start, or failed on a dependency).
    pub finished: bool,
    /// It is in state `failed` (could not start, or a dependency of its own failed).
    pub failed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Start,
    Wait,
    /// Can never start; the reason names the dependency.
    Fail(String),
}

/// Decides for a container still waiting to start, given `(dependency name, condition, view)`.
pub fn decide(deps: &[(&str, Condition, DepView)]) -> Decision {
    let mut all = true;
    for (name, cond, d) in deps {
        if d.failed {
            return Decision::Fail(format!("dependency {name} failed"));
        }
        let ok = match cond {
            Condition::Started => {
                if d.finished && d.exited_bad {
                    return Decision::Fail(format!("dependency {name} exited with an error"));
                }
                d.launched
            }
            Condition::Healthy => {
                if d.finished {
                    return Decision::Fail(format!(
                        "dependency {name} ended without becoming healthy"
                    ));
                }
                d.running && d.ready
            }
            Condition::ExitedSuccessfully => {
                if d.exited_ok {
                    true
                } else if d.exited_bad {
                    // An init container that fails is the dependent's failure, even when its
                    // own restart policy brings it back.
                    return Decision::Fail(format!("dependency {name} did not exit successfully"));
                } else if d.finished {
                    return Decision::Fail(format!("dependency {name} never exited successfully"));
                } else {
                    false
                }
            }
        };
        all &= ok;
    }
    if all {
        Decision::Start
    } else {
        Decision::Wait
    }
}

/// Indices of each container's dependencies, in the spec's order.
pub fn dependency_indices(specs: &[ContainerSpec]) -> Vec<Vec<(usize, Condition)>> {
    specs
        .iter()
        .map(|c| {
            c.depends_on
                .iter()
                .filter_map(|d| {
                    specs
                        .iter()
                        .position(|o| o.name == d.name)
                        .map(|i| (i, d.condition))
                })
                .collect()
        })
        .collect()
}

/// Stop waves: the first holds the containers nothing depends on; each next wave holds those
/// whose dependents are all in earlier waves. Dependents therefore stop before what they use.
/// The daemon rejects cycles; should one slip through, its members go into a last wave.
pub fn stop_waves(deps: &[Vec<(usize, Condition)>]) -> Vec<Vec<usize>> {
    let n = deps.len();
    let mut dependents = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for (d, _) in ds {
            if *d < n && *d != i {
                dependents[*d].push(i);
            }
        }
    }
    let mut placed = vec![false; n];
    let mut waves = Vec::new();
    let mut left = n;
    while left > 0 {
        let wave: Vec<usize> = (0..n)
            .filter(|&i| !placed[i] && dependents[i].iter().all(|&d| placed[d]))
            .collect();
        let wave = if wave.is_empty() {
            (0..n).filter(|&i| !placed[i]).collect()
        } else {
            wave
        };
        for &i in &wave {
            placed[i] = true;
        }
        left -= wave.len();
        waves.push(wave);
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> DepView {
        DepView::default()
    }

    #[test]
    fn test_no_dependencies_start_at_once() {
        assert_eq!(decide(&[]), Decision::Start);
    }

    #[test]
    fn test_started_waits_for_launch() {
        let waiting = view();
        assert_eq!(
            decide(&[("db", Condition::Started, waiting)]),
            Decision::Wait
        );
        let launched = DepView {
            launched: true,
            running: true,
            ..view()
        };
        assert_eq!(
            decide(&[("db", Condition::Started, launched)]),
            Decision::Start
        );
        // Launched and then ended cleanly for good still counts as started.
        let done = DepView {
            launched: true,
            exited_ok: true,
            finished: true,
            ..view()
        };
        assert_eq!(decide(&[("db", Condition::Started, done)]), Decision::Start);
    }

    #[test]
    fn test_healthy_waits_until_ready_and_fails_when_finished() {
        let unhealthy = DepView {
            launched: true,
            running: true,
            ..view()
        };
        assert_eq!(
            decide(&[("db", Condition::Healthy, unhealthy)]),
            Decision::Wait
        );
        let healthy = DepView {
            ready: true,
            ..unhealthy
        };
        assert_eq!(
            decide(&[("db", Condition::Healthy, healthy)]),
            Decision::Start
        );
        let restarting = DepView {
            launched: true,
            exited_bad: true,
            ..view()
        };
        assert_eq!(
            decide(&[("db", Condition::Healthy, restarting)]),
            Decision::Wait
        );
        let exhausted = DepView {
            finished: true,
            ..restarting
        };
        assert!(matches!(
            decide(&[("db", Condition::Healthy, exhausted)]),
            Decision::Fail(m) if m.contains("db")
        ));
    }

    #[test]
    fn test_exited_successfully() {
        let running = DepView {
            launched: true,
            running: true,
            ..view()
        };
        let cond = Condition::ExitedSuccessfully;
        assert_eq!(decide(&[("init", cond, running)]), Decision::Wait);
        let ok = DepView {
            launched: true,
            exited_ok: true,
            finished: true,
            ..view()
        };
        assert_eq!(decide(&[("init", cond, ok)]), Decision::Start);
        let bad = DepView {
            launched: true,
            exited_bad: true,
            ..view()
        };
        assert!(matches!(decide(&[("init", cond, bad)]), Decision::Fail(_)));
    }

    #[test]
    fn test_all_conditions_must_hold_and_failure_wins() {
        let ready = DepView {
            launched: true,
            running: true,
            ready: true,
            ..view()
        };
        let pending = view();
        assert_eq!(
            decide(&[
                ("a", Condition::Healthy, ready),
                ("b", Condition::Started, pending)
            ]),
            Decision::Wait
        );
        let failed = DepView {
            failed: true,
            finished: true,
            ..view()
        };
        assert!(matches!(
            decide(&[
                ("a", Condition::Started, pending),
                ("b", Condition::Started, failed)
            ]),
            Decision::Fail(m) if m.contains("b failed")
        ));
    }

    #[test]
    fn test_stop_waves_put_dependents_first() {
        // 0 <- 1 <- 2, and 3 depends on 0.
        let deps = vec![
            vec![],
            vec![(0, Condition::Started)],
            vec![(1, Condition::Healthy)],
            vec![(0, Condition::Started)],
        ];
        let waves = stop_waves(&deps);
        assert_eq!(waves, vec![vec![2, 3], vec![1], vec![0]]);
    }

    #[test]
    fn test_stop_waves_survive_a_cycle() {
        let deps = vec![
            vec![(1, Condition::Started)],
            vec![(0, Condition::Started)],
            vec![],
        ];
        let waves = stop_waves(&deps);
        assert_eq!(waves, vec![vec![2], vec![0, 1]]);
    }
}
