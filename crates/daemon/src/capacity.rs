//! Admission: a machine starts only if the host can hold it.
//!
//! The host's capacity is its CPUs and its memory (`MemTotal`), each multiplied by an
//! overcommit ratio (`hangar daemon --cpu-overcommit`, default 4; `--memory-overcommit`,
//! default 1.5: memory is the resource that cannot be taken back without an OOM kill). A
//! `performance` CPU counts as a whole core, a `shared` one as 1/16 of a core (Fly's baseline
//! share for shared vCPUs), so a 2-core host admits 128 `shared-cpu-1x` machines by CPU. A machine reserves its guest size from the moment it starts
//! until it is stopped, failed or destroyed; suspended machines keep their reservation, as on
//! Fly. One machine can never be larger than the host itself, whatever the ratios. A start that
//! does not fit is Fly's capacity error: HTTP 409, `status: insufficient_capacity`.
//!
//! The ledger lives in memory (rebuilt from the store at start-up), so admission costs one
//! mutex, not a query, on the create→started path.

use std::collections::HashMap;
use std::sync::Mutex;

use hangar_api::MachineState;

/// Default CPU overcommit.
pub const DEFAULT_CPU_OVERCOMMIT: f64 = 4.0;
/// A shared CPU's weight against a whole core, in thousandths.
const SHARED_CPU_MILLI: u64 = 1000 / 16;
/// Default memory overcommit.
pub const DEFAULT_MEMORY_OVERCOMMIT: f64 = 1.5;

/// What a host offers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostCapacity {
    pub cpus: u32,
    pub memory_mb: u64,
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
}

impl HostCapacity {
    /// This host's CPUs (the ones this process may run on) and memory.
    pub fn detect(cpu_overcommit: f64, memory_overcommit: f64) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(u64::MAX, |kb| kb / 1024);
        Self {
            cpus,
            memory_mb,
            cpu_overcommit,
            memory_overcommit,
        }
    }

    /// What may be reserved in all: thousandths of a core, and MB.
    fn limits(&self) -> (u64, u64) {
        let cpu = (f64::from(self.cpus) * self.cpu_overcommit * 1000.0).floor() as u64;
        let mem = (self.memory_mb as f64 * self.memory_overcommit).floor() as u64;
        (cpu, mem)
    }
}

/// What `sizes` reserve together: thousandths of a core, and MB.
fn used<'a>(sizes: impl Iterator<Item = &'a Size>) -> (u64, u64) {
    sizes.fold((0, 0), |(c, m), s| (c + s.cpu_milli(), m + s.memory_mb))
}

/// What one machine asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub cpus: u32,
    /// Shared CPUs weigh 1/16 of a core; performance ones a whole core.
    pub shared: bool,
    pub memory_mb: u64,
}

impl Size {
    /// Thousandths of a core this size reserves.
    fn cpu_milli(&self) -> u64 {
        let per = if self.shared { SHARED_CPU_MILLI } else { 1000 };
        u64::from(self.cpus) * per
    }
}

/// A start that does not fit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("aborted: could not reserve resource for machine: insufficient {resource} available to fulfill request ({detail})")]
pub struct CapacityError {
    pub resource: &'static str,
    pub detail: String,
}

/// Whether a machine in `state` holds its reservation.
pub fn reserves(state: MachineState) -> bool {
    use MachineState::*;
    matches!(
        state,
        Starting | Started | Stopping | Suspending | Suspended | Restarting | Updating | Replacing
    )
}

/// The host's capacity and what running machines reserve of it.
#[derive(Debug)]
pub struct Ledger {
    host: HostCapacity,
    reserved: Mutex<HashMap<String, Size>>,
}

impl Ledger {
    pub fn new(host: HostCapacity) -> Self {
        Self {
            host,
            reserved: Mutex::new(HashMap::new()),
        }
    }

    pub fn host(&self) -> HostCapacity {
        self.host
    }

    /// How many more machines of `size` the host admits now.
    pub fn room_for(&self, size: Size) -> u64 {
        let h = self.host;
        let reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let (used_milli, used_mb) = used(reserved.values());
        let (cpu_limit, mem_limit) = h.limits();
        let by_cpu = cpu_limit.saturating_sub(used_milli) / size.cpu_milli().max(1);
        let by_mem = mem_limit.saturating_sub(used_mb) / size.memory_mb.max(1);
        by_cpu.min(by_mem)
    }

    /// Reserves `cpus` and `memory_mb` for machine `id` (replacing what it held) if the host
    /// can hold it beside every other reservation.
    pub fn admit(&self, id: &str, size: Size) -> Result<(), CapacityError> {
        self.check(id, size, true)
    }

    /// Whether [`admit`](Self::admit) would succeed now; reserves nothing.
    pub fn fits(&self, id: &str, size: Size) -> Result<(), CapacityError> {
        self.check(id, size, false)
    }

    fn check(&self, id: &str, size: Size, reserve: bool) -> Result<(), CapacityError> {
        let h = self.host;
        let Size {
            cpus, memory_mb, ..
        } = size;
        if cpus > h.cpus {
            return Err(CapacityError {
                resource: "CPUs",
                detail: format!("the machine asks for {cpus} CPUs; this host has {}", h.cpus),
            });
        }
        if memory_mb > h.memory_mb {
            return Err(CapacityError {
                resource: "memory",
                detail: format!(
                    "the machine asks for {memory_mb} MB; this host has {} MB",
                    h.memory_mb
                ),
            });
        }
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let others = reserved.iter().filter(|(k, _)| k.as_str() != id);
        let (used_milli, used_mb) = used(others.map(|(_, s)| s));
        let (cpu_limit, mem_limit) = h.limits();
        if used_milli + size.cpu_milli() > cpu_limit {
            let cores = |m: u64| m as f64 / 1000.0;
            return Err(CapacityError {
                resource: "CPUs",
                detail: format!(
                    "{:.2} of {:.2} cores ({} × overcommit {}) are reserved; the machine asks for {:.2}",
                    cores(used_milli),
                    cores(cpu_limit),
                    h.cpus,
                    h.cpu_overcommit,
                    cores(size.cpu_milli())
                ),
            });
        }
        if used_mb + memory_mb > mem_limit {
            return Err(CapacityError {
                resource: "memory",
                detail: format!(
                    "{used_mb} of {mem_limit} MB ({} MB × overcommit {}) are reserved; the machine asks for {memory_mb} MB",
                    h.memory_mb, h.memory_overcommit
                ),
            });
        }
        if reserve {
            reserved.insert(id.to_string(), size);
        }
        Ok(())
    }

    /// Records what machine `id` holds in `state` (a reservation, or none).
    pub fn track(&self, id: &str, state: MachineState, size: Size) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        if reserves(state) {
            reserved.insert(id.to_string(), size);
        } else {
            reserved.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        Ledger::new(HostCapacity {
            cpus: 2,
            memory_mb: 1000,
            cpu_overcommit: 2.0,
            memory_overcommit: 1.5,
        })
    }

    fn perf(cpus: u32, memory_mb: u64) -> Size {
        Size {
            cpus,
            shared: false,
            memory_mb,
        }
    }

    #[test]
    fn a_machine_larger_than_the_host_never_fits() {
        let l = ledger();
        let e = l.admit("big", perf(16, 500)).unwrap_err();
        assert_eq!(e.resource, "CPUs");
        assert!(
            e.to_string()
                .starts_with("aborted: could not reserve resource for machine: insufficient CPUs"),
            "{e}"
        );
        assert_eq!(
            l.admit("big", perf(1, 1001)).unwrap_err().resource,
            "memory"
        );
    }

    #[test]
    fn reservations_add_up_to_the_overcommitted_capacity() {
        let l = ledger();
        l.admit("a", perf(2, 700)).unwrap();
        assert_eq!(l.admit("b", perf(2, 900)).unwrap_err().resource, "memory");
        l.admit("b", perf(2, 800)).unwrap(); // 4 cores of 4, 1500 MB of 1500
        assert_eq!(l.admit("c", perf(1, 1)).unwrap_err().resource, "CPUs");
        assert!(
            l.fits("b", perf(2, 800)).is_ok(),
            "its own share does not count"
        );
        // A stopped machine gives its share back.
        l.track("a", MachineState::Stopped, perf(2, 700));
        l.admit("c", perf(1, 600)).unwrap();
        // A suspended one keeps it.
        l.track("c", MachineState::Suspended, perf(1, 600));
        assert_eq!(l.admit("d", perf(1, 200)).unwrap_err().resource, "memory");
    }

    #[test]
    fn shared_cpus_weigh_a_sixteenth() {
        let l = Ledger::new(HostCapacity {
            cpus: 1,
            memory_mb: 1 << 20,
            cpu_overcommit: 1.0,
            memory_overcommit: 1.0,
        });
        let shared = Size {
            cpus: 1,
            shared: true,
            memory_mb: 1,
        };
        for i in 0..16 {
            l.admit(&format!("m{i}"), shared).unwrap();
        }
        assert_eq!(l.admit("m16", shared).unwrap_err().resource, "CPUs");
    }
}
