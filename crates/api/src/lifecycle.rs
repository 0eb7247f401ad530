//! The machine state machine: which state may follow which, and which user actions a state
//! allows. One table, so that start, stop, suspend, restart, update, destroy and the daemon's
//! own settling (exits, reconcile) cannot disagree about it.

use crate::MachineState;
use MachineState::*;

/// Default grace period of a stop (fly.toml's `kill_timeout`) when neither the request nor
/// `stop_config` gives one.
pub const DEFAULT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl MachineState {
    /// Whether a machine in this state may move to `to`. Any state but a terminal one may
    /// fail or be destroyed.
    pub fn can_transition_to(self, to: MachineState) -> bool {
        if self.is_terminal() {
            return false;
        }
        if matches!(to, Failed | Destroying) {
            return true;
        }
        match self {
            Creating => matches!(to, Created),
            Created => matches!(to, Starting | Replacing),
            // A start that finds nothing running (reconcile) settles as stopped.
            Starting => matches!(to, Started | Stopped),
            // An exit restarts (starting) or stops it; the daemon's restart reconciles to stopped.
            Started => matches!(
                to,
                Stopping | Suspending | Restarting | Replacing | Starting | Stopped
            ),
            Stopping => matches!(to, Stopped),
            Stopped => matches!(to, Starting | Replacing),
            // A suspend that cannot freeze goes back to started.
            Suspending => matches!(to, Suspended | Started | Stopped),
            // Resume starts it; an exit just before the freeze, or a stop, ends it.
            Suspended => matches!(to, Starting | Stopped | Replacing),
            Restarting => matches!(to, Started | Stopped),
            // An update ends started, stopped, or as it was (created).
            Replacing => matches!(to, Started | Stopped | Created),
            Updating => matches!(to, Started | Stopped | Created),
            Destroying => matches!(to, Destroyed),
            Failed => matches!(to, Starting | Stopped | Replacing),
            LaunchFailed => matches!(to, Starting | Stopped | Replacing),
            Destroyed | Replaced | Migrated => false,
        }
    }

    /// A start (or the resume of a suspended machine) applies. A started machine's start is
    /// a no-op, not an error.
    pub fn can_start(self) -> bool {
        matches!(self, Created | Stopped | Suspended | Failed | LaunchFailed)
    }

    /// A stop applies: a running machine stops, a suspended or failed one is settled as
    /// stopped (the one way out of `failed` without a start).
    pub fn can_stop(self) -> bool {
        matches!(self, Started | Suspended | Failed)
    }

    pub fn can_suspend(self) -> bool {
        matches!(self, Started)
    }

    pub fn can_restart(self) -> bool {
        matches!(self, Started)
    }

    /// An update may replace this version (not while another transition is under way).
    pub fn can_update(self) -> bool {
        !self.is_transient() && !self.is_terminal()
    }

    /// A destroy needs no `force`: nothing of the machine runs.
    pub fn can_destroy_without_force(self) -> bool {
        matches!(self, Created | Stopped | Suspended | Failed | LaunchFailed)
    }

    /// The machine's processes may be running (or frozen): an app with such a machine needs
    /// `force` to be deleted.
    pub fn may_be_running(self) -> bool {
        !matches!(
            self,
            Created | Stopped | Failed | LaunchFailed | Destroyed | Replaced | Migrated
        )
    }

    /// A transition is under way; it settles into another state.
    pub fn is_transient(self) -> bool {
        !self.is_settled()
    }

    /// A user's start of a machine in this state is refused at once rather than queued behind
    /// the transition holding it (a stop, destroy, update or restart in progress).
    pub fn refuses_start_while_busy(self) -> bool {
        matches!(self, Stopping | Destroying | Replacing | Restarting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_action_leads_somewhere_the_table_allows() {
        for &s in MachineState::ALL {
            if s.can_start() && s != Suspended {
                assert!(s.can_transition_to(Starting), "{s} → starting");
            }
            if s == Suspended {
                assert!(s.can_transition_to(Starting), "resume");
            }
            if s.can_stop() && s == Started {
                assert!(s.can_transition_to(Stopping));
            }
            if s.can_stop() {
                assert!(
                    s.can_transition_to(Stopped) || s.can_transition_to(Stopping),
                    "{s}"
                );
            }
            if s.can_suspend() {
                assert!(s.can_transition_to(Suspending));
            }
            if s.can_restart() {
                assert!(s.can_transition_to(Restarting));
            }
            if s.can_update() {
                assert!(s.can_transition_to(Replacing), "{s} → replacing");
            }
            if !s.is_terminal() {
                assert!(s.can_transition_to(Destroying), "{s} → destroying");
                assert!(s.can_transition_to(Failed), "{s} → failed");
            }
        }
    }

    #[test]
    fn terminal_states_are_final() {
        for &to in MachineState::ALL {
            for from in [Destroyed, Replaced, Migrated] {
                assert!(!from.can_transition_to(to), "{from} → {to}");
            }
        }
    }

    #[test]
    fn the_usual_lives_of_a_machine() {
        let paths: &[&[MachineState]] = &[
            &[
                Created, Starting, Started, Stopping, Stopped, Starting, Started,
            ],
            &[Started, Suspending, Suspended, Starting, Started],
            &[Started, Restarting, Started],
            &[Started, Replacing, Started],
            &[Stopped, Replacing, Stopped],
            &[Created, Replacing, Created],
            &[Started, Starting, Started], // automatic restart after an exit
            &[Started, Stopped],           // an exit without a restart
            &[Failed, Stopped, Destroying, Destroyed],
        ];
        for path in paths {
            for w in path.windows(2) {
                assert!(
                    w[0].can_transition_to(w[1]),
                    "{} → {} in {path:?}",
                    w[0],
                    w[1]
                );
            }
        }
    }

    #[test]
    fn impossible_jumps_are_refused() {
        assert!(
            !Stopped.can_transition_to(Started),
            "must go through starting"
        );
        assert!(!Created.can_transition_to(Stopped));
        assert!(!Destroying.can_transition_to(Started));
        assert!(!Stopping.can_transition_to(Started));
        assert!(
            !Started.can_transition_to(Suspended),
            "must go through suspending"
        );
        assert!(!Stopped.can_stop() || Stopped.can_transition_to(Stopped));
    }

    #[test]
    fn actions_by_state() {
        assert!(Created.can_start() && Stopped.can_start() && Suspended.can_start());
        assert!(!Started.can_start() && !Stopping.can_start());
        assert!(Started.can_stop() && !Created.can_stop());
        assert!(Stopped.can_destroy_without_force() && !Started.can_destroy_without_force());
        assert!(!Stopping.can_update() && Stopped.can_update() && Started.can_update());
        assert!(Started.may_be_running() && Suspended.may_be_running());
        assert!(!Stopped.may_be_running() && !Created.may_be_running());
    }
}
