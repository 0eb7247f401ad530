//! The typed view of a validated machine config: what the daemon and the runtime act on.
//!
//! The wire config ([`MachineConfig`]) keeps Fly's spellings (policy strings, `persist` words
//! or numbers, Go durations, deprecated fields) because clients send it back on update, so the
//! store keeps it as given. Everything that *acts* on a config reads it through this one
//! conversion instead of parsing those spellings again where it needs them.

use std::time::Duration;

use hangar_policy::RestartSpec;
use serde_json::Value;

use crate::lifecycle::DEFAULT_STOP_TIMEOUT;
use crate::{MachineConfig, MachineRestart, Signal};

/// Whether a machine's root filesystem survives a stop, and an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootfsPersistence {
    /// Every boot starts from the image (Fly's default).
    #[default]
    Never,
    /// Kept across stops and restarts; an update starts from the new image.
    Restart,
    /// Kept across stops, restarts and updates.
    Always,
}

impl RootfsPersistence {
    /// The writable layer outlives a stop.
    pub fn survives_stop(self) -> bool {
        self != RootfsPersistence::Never
    }
}

/// When the scheduler starts a machine (`schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

/// How a machine is stopped: the signal first, SIGKILL after the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSpec {
    pub signal: Signal,
    pub timeout: Duration,
}

/// What the machine's guest reserves on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSize {
    pub cpus: u32,
    /// `shared` CPUs (else `performance`).
    pub shared: bool,
    pub memory_mb: u64,
    /// Swap on top of memory (`init.swap_size_mb`), MB.
    pub swap_mb: u64,
}

/// A validated config, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    pub guest: GuestSize,
    pub restart: RestartSpec,
    pub stop: StopSpec,
    pub rootfs_persistence: RootfsPersistence,
    /// `rootfs.size_gb` when set (0 is unset, as flyctl's `--rootfs-size 0`).
    pub rootfs_size_gb: Option<u64>,
    pub schedule: Option<Schedule>,
    pub auto_destroy: bool,
}

impl MachineSpec {
    /// The typed view of `config` (validated by [`crate::validate_config`]; anything it would
    /// refuse reads as the default).
    pub fn from_config(config: &MachineConfig) -> Self {
        let guest = config.guest.clone().unwrap_or_default();
        MachineSpec {
            guest: GuestSize {
                cpus: guest.cpus.max(1) as u32,
                shared: guest.cpu_kind != "performance",
                memory_mb: guest.memory_mb.max(1) as u64,
                swap_mb: config.init.swap_size_mb.unwrap_or(0).max(0) as u64,
            },
            restart: restart_spec(config.restart.as_ref()),
            stop: stop_spec(config, None, None),
            rootfs_persistence: rootfs_persistence(config),
            rootfs_size_gb: config
                .rootfs
                .as_ref()
                .and_then(|r| r.size_gb)
                .filter(|gb| *gb > 0),
            schedule: match config.schedule.as_deref() {
                Some("hourly") => Some(Schedule::Hourly),
                Some("daily") => Some(Schedule::Daily),
                Some("weekly") => Some(Schedule::Weekly),
                Some("monthly") => Some(Schedule::Monthly),
                _ => None,
            },
            auto_destroy: config.auto_destroy,
        }
    }
}

/// A `restart` block (the machine's or a container's) as a policy; an empty policy is none.
pub fn restart_spec(restart: Option<&MachineRestart>) -> RestartSpec {
    RestartSpec::from_config(
        restart.map(|r| r.policy.as_str()).filter(|p| !p.is_empty()),
        restart.and_then(|r| r.max_retries),
    )
}

/// How to stop a machine of `config`, with a request's own `signal`/`timeout` first. A zero
/// timeout means "the default", as on Fly: fly-go always sends `"timeout":"0s"` (its
/// omitempty cannot drop a struct duration), and taking that as no grace at all would SIGKILL
/// every machine flyctl stops.
pub fn stop_spec(
    config: &MachineConfig,
    signal: Option<Signal>,
    timeout: Option<Duration>,
) -> StopSpec {
    let sc = config.stop_config.as_ref();
    StopSpec {
        signal: signal
            .or(sc.and_then(|s| s.signal))
            .unwrap_or(Signal::SIGINT),
        timeout: timeout
            .filter(|t| !t.is_zero())
            .or(sc
                .and_then(|s| s.timeout)
                .map(|d| d.as_duration())
                .filter(|t| !t.is_zero()))
            .unwrap_or(DEFAULT_STOP_TIMEOUT),
    }
}

/// `rootfs.persist`, else the deprecated `guest.persist_rootfs` (a word, or 0–3: 0 none,
/// 1 never, 2 restart, 3 always).
fn rootfs_persistence(config: &MachineConfig) -> RootfsPersistence {
    let word = |w: &str| match w {
        "restart" => Some(RootfsPersistence::Restart),
        "always" => Some(RootfsPersistence::Always),
        "never" | "none" => Some(RootfsPersistence::Never),
        _ => None,
    };
    if let Some(p) = config
        .rootfs
        .as_ref()
        .and_then(|r| r.persist.as_deref())
        .and_then(word)
    {
        return p;
    }
    match config
        .guest
        .as_ref()
        .and_then(|g| g.persist_rootfs.as_ref())
    {
        Some(Value::String(s)) => word(s).unwrap_or_default(),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(2) => RootfsPersistence::Restart,
            Some(3) => RootfsPersistence::Always,
            _ => RootfsPersistence::Never,
        },
        _ => RootfsPersistence::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(config: Value) -> MachineSpec {
        let mut c: MachineConfig = serde_json::from_value(config).unwrap();
        crate::validate_config(&mut c).unwrap();
        MachineSpec::from_config(&c)
    }

    #[test]
    fn defaults() {
        let s = spec(json!({"image": "busybox"}));
        assert_eq!(s.restart, RestartSpec::from_config(None, None));
        assert_eq!(s.stop.signal, Signal::SIGINT);
        assert_eq!(s.stop.timeout, DEFAULT_STOP_TIMEOUT);
        assert_eq!(s.rootfs_persistence, RootfsPersistence::Never);
        assert_eq!(s.schedule, None);
        assert!(s.guest.shared && s.guest.cpus == 1 && s.guest.memory_mb == 256);
    }

    #[test]
    fn spellings_are_read_once_here() {
        let s = spec(json!({"image": "busybox",
            "restart": {"policy": "always"},
            "stop_config": {"signal": "SIGTERM", "timeout": "0s"},
            "rootfs": {"persist": "always", "size_gb": 2},
            "schedule": "daily",
            "guest": {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}}));
        assert_eq!(s.restart.policy, hangar_policy::RestartPolicy::Always);
        assert_eq!(s.stop.signal, Signal::SIGTERM);
        assert_eq!(s.stop.timeout, DEFAULT_STOP_TIMEOUT, "0s means the default");
        assert_eq!(s.rootfs_persistence, RootfsPersistence::Always);
        assert_eq!(s.rootfs_size_gb, Some(2));
        assert_eq!(s.schedule, Some(Schedule::Daily));
        assert!(!s.guest.shared);
    }

    #[test]
    fn the_deprecated_persist_rootfs_still_counts() {
        let s = spec(
            json!({"image": "busybox", "guest": {"cpus": 1, "memory_mb": 256, "persist_rootfs": 2}}),
        );
        assert_eq!(s.rootfs_persistence, RootfsPersistence::Restart);
        let s = spec(
            json!({"image": "busybox", "guest": {"cpus": 1, "memory_mb": 256, "persist_rootfs": "always"}}),
        );
        assert_eq!(s.rootfs_persistence, RootfsPersistence::Always);
    }

    #[test]
    fn a_request_overrides_the_stop_config() {
        let c: MachineConfig = serde_json::from_value(
            json!({"image": "b", "stop_config": {"signal": "SIGTERM", "timeout": "9s"}}),
        )
        .unwrap();
        let s = stop_spec(&c, Some(Signal::SIGKILL), Some(Duration::from_secs(1)));
        assert_eq!(
            (s.signal, s.timeout),
            (Signal::SIGKILL, Duration::from_secs(1))
        );
        let s = stop_spec(&c, None, Some(Duration::ZERO));
        assert_eq!(s.timeout, Duration::from_secs(9));
    }
}
