//! One cgroup per machine, on cgroup v1 (one directory per controller) or v2 (one unified
//! directory). Written by hand rather than with libcgroups: the job is a dozen file writes, and
//! this host's hybrid layout (v1 controllers beside a v2 mount holding only hugetlb) must use the
//! v1 path even though a v2 mount exists.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no usable cgroup hierarchy under {0} (need cgroup v2, or v1 with memory, cpu and pids)"
    )]
    NoHierarchy(PathBuf),
    #[error("cgroup {0} still has processes after kill")]
    Busy(PathBuf),
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io("write", path))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io("read", path))
}

/// The value of `key` in a kernel file of `key value` lines (`memory.stat`, `cpu.stat`,
/// `memory.oom_control`, `memory.events`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Whether `dir` is a v1 cgroup's memory controller part (of a retired or pooled cgroup,
/// whose directories share one name across the controllers).
fn is_memory_part(dir: &Path) -> bool {
    dir.join("memory.oom_control").exists()
}

/// Which layout the host uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One directory per controller: `<root>/memory`, `<root>/cpu`, …
    V1 { root: PathBuf },
    /// A single unified tree at `<root>`.
    V2 { root: PathBuf },
}

/// v1 controllers a machine uses; `cpuacct`, `freezer` and `blkio` (IO accounting) are
/// optional.
const V1_REQUIRED: &[&str] = &["memory", "cpu", "pids"];
const V1_OPTIONAL: &[&str] = &["freezer", "cpuacct", "blkio"];

impl Hierarchy {
    /// Detects the layout under `root` (normally `/sys/fs/cgroup`). A pure v2 host has
    /// `cgroup.controllers` at the root; a hybrid host keeps its controllers on v1.
    pub fn detect(root: &Path) -> Result<Hierarchy> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Hierarchy::V2 {
                root: root.to_path_buf(),
            });
        }
        if V1_REQUIRED
            .iter()
            .all(|c| root.join(c).join("tasks").exists())
        {
            return Ok(Hierarchy::V1 {
                root: root.to_path_buf(),
            });
        }
        Err(CgroupError::NoHierarchy(root.to_path_buf()))
    }
}

/// Resource limits of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// CPU quota in whole CPUs (`guest.cpus`).
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Swap allowed on top of memory; 0 means none.
    pub swap_bytes: u64,
    pub pids: u64,
    /// Whole disks (`MAJ:MIN`) the machine's files live on. On v1, blkio counts a cgroup's IO
    /// only for devices with a throttle rule, so each gets one that never throttles.
    pub io_devices: Vec<String>,
}

/// A v1 throttle rate no disk reaches (bytes/s): the rule exists only to turn accounting on.
const UNTHROTTLED_BPS: u64 = 1 << 62;

const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct MachineCgroup {
    hierarchy: Hierarchy,
    /// Path below each hierarchy root, e.g. `hangar/0123456789abcd`.
    rel: PathBuf,
}

impl MachineCgroup {
    pub fn new(hierarchy: Hierarchy, rel: impl Into<PathBuf>) -> Self {
        Self {
            hierarchy,
            rel: rel.into(),
        }
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Every directory this cgroup occupies (one per v1 controller, one on v2).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => vec![root.join(&self.rel)],
            Hierarchy::V1 { root } => V1_REQUIRED
                .iter()
                .chain(V1_OPTIONAL)
                .map(|c| root.join(c))
                .filter(|d| d.exists())
                .map(|d| d.join(&self.rel))
                .collect(),
        }
    }

    fn v1(&self, controller: &str) -> Option<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V1 { root } => {
                let base = root.join(controller);
                base.exists().then(|| base.join(&self.rel))
            }
            Hierarchy::V2 { .. } => None,
        }
    }

    /// Creates the cgroup and applies `limits`.
    pub fn create(&self, limits: &Limits) -> Result<()> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => {
                // Controllers must be enabled in every ancestor's subtree_control.
                let mut dir = root.clone();
                for part in self.rel.iter() {
                    enable_v2_controllers(&dir)?;
                    dir.push(part);
                    mkdir(&dir)?;
                }
                let quota = u64::from(limits.cpus) * CPU_PERIOD_US;
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, &limits.swap_bytes.to_string())?;
                }
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
            Hierarchy::V1 { .. } => {
                let recycled = self.claim_free();
                if !recycled {
                    for dir in self.dirs() {
                        mkdir_all(&dir)?;
                    }
                }
                self.limit_v1(limits, recycled)?;
            }
        }
        Ok(())
    }

    /// Takes over `warm`, a cgroup made ahead for a warm sandbox, under this one's
    /// name (v1 renames a cgroup within its parent, processes and all), with `limits` for its
    /// machine. Fails if this cgroup exists, or on v2, which cannot rename cgroups.
    pub fn take_over(&self, warm: &MachineCgroup, limits: &Limits) -> Result<()> {
        if !matches!(self.hierarchy, Hierarchy::V1 { .. }) {
            return Err(CgroupError::Io {
                action: "take over",
                path: self.rel.clone(),
                source: std::io::Error::new(
                    ErrorKind::Unsupported,
                    "cgroup v2 cannot rename a cgroup",
                ),
            });
        }
        for (from, to) in warm.dirs().into_iter().zip(self.dirs()) {
            // rename(2) replaces an empty directory: a cgroup dir of this name must not be
            // taken over silently.
            if to.exists() {
                return Err(CgroupError::Io {
                    action: "take over",
                    path: to,
                    source: ErrorKind::AlreadyExists.into(),
                });
            }
            fs::rename(&from, &to).map_err(io("rename a warm cgroup to", &to))?;
        }
        // No counters to reset: the warm cgroup was new, or reset when it left the free pool;
        // what it counted since is its Pilot's, which is now the machine's.
        self.limit_v1(limits, true)
    }

    /// Writes a v1 cgroup's limits; `recycled` when the cgroup had others before.
    fn limit_v1(&self, limits: &Limits, recycled: bool) -> Result<()> {
        if let Some(cpu) = self.v1("cpu") {
            write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            let quota = u64::from(limits.cpus) * CPU_PERIOD_US;
            write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(mem) = self.v1("memory") {
            // memsw (memory + swap) exists only with swap accounting enabled. It may
            // never be below the memory limit: a recycled cgroup's old one goes first.
            let memsw = mem.join("memory.memsw.limit_in_bytes");
            if recycled && memsw.exists() {
                write(&memsw, "-1")?;
            }
            write(
                &mem.join("memory.limit_in_bytes"),
                &limits.memory_bytes.to_string(),
            )?;
            if memsw.exists() {
                let total = limits.memory_bytes.saturating_add(limits.swap_bytes);
                write(&memsw, &total.to_string())?;
            }
            let swappiness = mem.join("memory.swappiness");
            if swappiness.exists() {
                // A new cgroup inherits its parent's; a recycled one has its last
                // machine's. Best effort: some kernels refuse swappiness writes on
                // non-root cgroups.
                let value = match (limits.swap_bytes, mem.parent()) {
                    (0, _) => Some("0".to_string()),
                    (_, Some(parent)) if recycled => {
                        fs::read_to_string(parent.join("memory.swappiness")).ok()
                    }
                    _ => None,
                };
                if let Some(value) = value {
                    let _ = fs::write(&swappiness, value.trim());
                }
            }
        }
        if let Some(pids) = self.v1("pids") {
            write(&pids.join("pids.max"), &limits.pids.to_string())?;
        }
        if let Some(blkio) = self.v1("blkio") {
            for device in &limits.io_devices {
                for file in [
                    "blkio.throttle.read_bps_device",
                    "blkio.throttle.write_bps_device",
                ] {
                    // Accounting only: a device that refuses a rule leaves the
                    // machine's IO uncounted, not the machine unstarted.
                    if let Err(e) =
                        fs::write(blkio.join(file), format!("{device} {UNTHROTTLED_BPS}"))
                    {
                        tracing::debug!(%device, error = %e, "no IO accounting rule");
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes an emptied cgroup from the free pool ([`reap_dead`]) and renames it to this one
    /// in every v1 controller, ready for reuse; false when none could be taken (the caller
    /// makes new directories). Concurrent claims race on renaming the memory controller's
    /// directory, which only one wins; the winner alone moves the other controllers' ones.
    fn claim_free(&self) -> bool {
        let Some(memory) = self.v1("memory") else {
            return false;
        };
        let Some(parent) = memory.parent() else {
            return false;
        };
        let Ok(entries) = fs::read_dir(parent) else {
            return false;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(FREE_PREFIX) {
                continue;
            }
            match fs::rename(parent.join(&name), &memory) {
                Ok(()) => {}
                // Taken by a concurrent claim.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "no free cgroup taken");
                    return false;
                }
            }
            for dir in self.dirs() {
                if dir == memory {
                    continue;
                }
                let free = dir.with_file_name(&name);
                if fs::rename(&free, &dir).is_err() {
                    // The machine has this controller's directory already (or the entry lacks
                    // it): that one is used, and the entry's part goes rather than linger.
                    let _ = fs::remove_dir(&free);
                    let _ = fs::create_dir_all(&dir);
                }
            }
            self.reset_for_reuse();
            return true;
        }
        false
    }

    /// Readies a recycled v1 cgroup for its new machine: zeroes what it counted for its last
    /// one where the kernel allows (peak usage and limit hits, CPU time, IO; the OOM-kill count
    /// cannot be, so cgroups that saw one are never pooled) and thaws it. Best effort: a
    /// counter left is a figure, not a limit.
    fn reset_for_reuse(&self) {
        if let Some(mem) = self.v1("memory") {
            for file in [
                "memory.max_usage_in_bytes",
                "memory.failcnt",
                "memory.memsw.max_usage_in_bytes",
                "memory.memsw.failcnt",
            ] {
                let _ = fs::write(mem.join(file), "0");
            }
        }
        if let Some(cpuacct) = self.v1("cpuacct") {
            let _ = fs::write(cpuacct.join("cpuacct.usage"), "0");
        }
        // Defensive: a cgroup pooled while frozen would freeze the next machine's processes
        // as they join it.
        if let Some(freezer) = self.v1("freezer") {
            let _ = fs::write(freezer.join("freezer.state"), "THAWED");
        }
        if let Some(blkio) = self.v1("blkio") {
            let _ = fs::write(blkio.join("blkio.reset_stats"), "1");
        }
    }

    /// Moves `pid` (and, later, its children) into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process, which must have a single thread, into the cgroup (and what
    /// it forks later). On v1 it writes `0` to each controller's `tasks`: a thread moving
    /// itself is the one migration the kernel makes without taking the global
    /// `cgroup_threadgroup_rwsem` for writing, whose percpu-rwsem waits for an RCU grace period
    /// (5–16 ms here) while holding `cgroup_mutex`, which every other cgroup operation on the
    /// host (a destroy's rename, the next start's mkdir) then waits for. Measured: 0.5 ms
    /// against 5–16. v2 has no such file for a process that is not threaded: `cgroup.procs`.
    pub fn join_single_threaded(&self) -> Result<()> {
        // Other threads would stay behind, silently.
        debug_assert!(
            fs::read_dir("/proc/self/task").map_or(true, |d| d.count() == 1),
            "join_single_threaded called from a process with several threads"
        );
        match &self.hierarchy {
            Hierarchy::V1 { .. } => {
                for dir in self.dirs() {
                    write(&dir.join("tasks"), "0")?;
                }
                Ok(())
            }
            Hierarchy::V2 { .. } => self.add_process(std::process::id() as i32),
        }
    }

    /// Moves `pid` out of the cgroup, to the root of every hierarchy (the only place sure to
    /// take a process on v2). For the spawn helper, which joins the machine's cgroup so that
    /// what it forks starts there, before it kills the cgroup's processes: freezing a cgroup
    /// it is in would freeze the helper itself, for good.
    pub fn remove_process(&self, pid: i32) -> Result<()> {
        let roots: Vec<PathBuf> = match &self.hierarchy {
            Hierarchy::V2 { root } => vec![root.clone()],
            Hierarchy::V1 { root } => self
                .dirs()
                .iter()
                .filter_map(|d| d.strip_prefix(root).ok())
                .filter_map(|rel| rel.components().next())
                .map(|controller| root.join(controller))
                .collect(),
        };
        for dir in roots {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn procs(&self) -> Result<Vec<i32>> {
        let dir = match &self.hierarchy {
            Hierarchy::V2 { root } => root.join(&self.rel),
            Hierarchy::V1 { .. } => match self.v1("pids") {
                Some(d) => d,
                None => return Ok(Vec::new()),
            },
        };
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io("read", &dir)(e)),
        }
    }

    /// Freezes (`true`) or thaws every process of the machine, waiting until the kernel says so.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => {
                let dir = root.join(&self.rel);
                write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                wait_for(&dir.join("cgroup.events"), |s| s.lines().any(|l| l == want))
            }
            Hierarchy::V1 { .. } => {
                let Some(dir) = self.v1("freezer") else {
                    return Ok(());
                };
                let state = if frozen { "FROZEN" } else { "THAWED" };
                write(&dir.join("freezer.state"), state)?;
                wait_for(&dir.join("freezer.state"), |s| s.trim() == state)
            }
        }
    }

    /// The memory controller's dir of this cgroup.
    fn memory_dir(&self) -> Option<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => Some(root.join(&self.rel)),
            Hierarchy::V1 { .. } => self.v1("memory"),
        }
    }

    /// (limit, usage) of memory in bytes; `u64::MAX` for no limit.
    pub fn memory(&self) -> Result<(u64, u64)> {
        let Some(dir) = self.memory_dir() else {
            return Err(CgroupError::NoHierarchy(self.rel.clone()));
        };
        let (limit, usage) = match &self.hierarchy {
            Hierarchy::V2 { .. } => ("memory.max", "memory.current"),
            Hierarchy::V1 { .. } => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        };
        let number = |f: &str| -> Result<u64> {
            let path = dir.join(f);
            let text = read(&path)?;
            let text = text.trim();
            if text == "max" {
                return Ok(u64::MAX);
            }
            text.parse().map_err(|_| CgroupError::Io {
                action: "parse",
                path: path.clone(),
                source: std::io::Error::new(ErrorKind::InvalidData, text.to_string()),
            })
        };
        Ok((number(limit)?, number(usage)?))
    }

    /// CPU time the machine's processes have used, in nanoseconds (`cpu.stat` on v2,
    /// `cpuacct.usage` on v1; 0 where no accounting controller is mounted).
    pub fn cpu_usage_ns(&self) -> Result<u64> {
        let (file, v2) = match &self.hierarchy {
            Hierarchy::V2 { root } => (root.join(&self.rel).join("cpu.stat"), true),
            Hierarchy::V1 { .. } => match self.v1("cpuacct") {
                Some(d) => (d.join("cpuacct.usage"), false),
                None => return Ok(0),
            },
        };
        let text = read(&file)?;
        let parsed = if v2 {
            keyed(&text, "usage_usec").map(|us| us * 1000)
        } else {
            text.trim().parse().ok()
        };
        Ok(parsed.unwrap_or(0))
    }

    /// Bytes the machine's processes have read from and written to block devices since its
    /// start: (read, write). `io.stat` on v2, `blkio.throttle.io_service_bytes` on v1; zeros
    /// where no IO controller is mounted or enabled.
    /// `devices` (`MAJ:MIN`), when given, are the only ones counted: on v2 a write through a
    /// stacked device (LVM, a loop-backed volume) is charged at each layer.
    pub fn io_bytes(&self, devices: &[String]) -> Result<(u64, u64)> {
        let file = match &self.hierarchy {
            Hierarchy::V2 { root } => root.join(&self.rel).join("io.stat"),
            Hierarchy::V1 { .. } => match self.v1("blkio") {
                Some(d) => d.join("blkio.throttle.io_service_bytes"),
                None => return Ok((0, 0)),
            },
        };
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(io("read", &file)(e)),
        };
        let (mut read_bytes, mut written) = (0u64, 0u64);
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let device = words.next().unwrap_or_default();
            if !devices.is_empty() && !devices.iter().any(|d| d == device) {
                continue;
            }
            match &self.hierarchy {
                // `8:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0`
                Hierarchy::V2 { .. } => {
                    for (key, value) in words.filter_map(|w| w.split_once('=')) {
                        let value: u64 = value.parse().unwrap_or(0);
                        match key {
                            "rbytes" => read_bytes += value,
                            "wbytes" => written += value,
                            _ => {}
                        }
                    }
                }
                // `8:0 Read 4096` … `8:0 Total 4096`, then a last `Total N` line.
                Hierarchy::V1 { .. } => {
                    let value: u64 = words.nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                    match line.split_whitespace().nth(1) {
                        Some("Read") => read_bytes += value,
                        Some("Write") => written += value,
                        _ => {}
                    }
                }
            }
        }
        Ok((read_bytes, written))
    }

    /// Processes (tasks) in the machine now.
    pub fn pids_current(&self) -> Result<u64> {
        let file = match &self.hierarchy {
            Hierarchy::V2 { root } => root.join(&self.rel).join("pids.current"),
            Hierarchy::V1 { .. } => match self.v1("pids") {
                Some(d) => d.join("pids.current"),
                None => return Ok(0),
            },
        };
        Ok(read(&file)?.trim().parse().unwrap_or(0))
    }

    /// How long ago its (memory controller's) directory was made or last changed; `None` when
    /// it does not exist.
    pub fn age(&self) -> Option<std::time::Duration> {
        let modified = fs::metadata(self.memory_dir()?).ok()?.modified().ok()?;
        Some(modified.elapsed().unwrap_or_default())
    }

    /// Changes the memory limit of a running machine (the balloon), keeping its swap allowance.
    pub fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        let Some(dir) = self.memory_dir() else {
            return Err(CgroupError::NoHierarchy(self.rel.clone()));
        };
        match &self.hierarchy {
            Hierarchy::V2 { .. } => write(&dir.join("memory.max"), &bytes.to_string()),
            Hierarchy::V1 { .. } => {
                let limit = dir.join("memory.limit_in_bytes");
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if !memsw.exists() {
                    return write(&limit, &bytes.to_string());
                }
                // The kernel keeps memsw >= limit at every step: raise memsw first when
                // growing, lower the limit first when shrinking.
                let (old_limit, _) = self.memory()?;
                let old_total: u64 = read(&memsw)?.trim().parse().unwrap_or(u64::MAX);
                let swap = old_total.saturating_sub(old_limit);
                let total = bytes.saturating_add(swap);
                if bytes >= old_limit {
                    write(&memsw, &total.to_string())?;
                    write(&limit, &bytes.to_string())
                } else {
                    write(&limit, &bytes.to_string())?;
                    write(&memsw, &total.to_string())
                }
            }
        }
    }

    /// Asks the kernel to reclaim up to `bytes` of the machine's memory (page cache first);
    /// returns how much its usage went down. v2 has `memory.reclaim`; on v1 the limit is
    /// lowered for a moment to make the kernel reclaim, then put back.
    pub fn reclaim(&self, bytes: u64) -> Result<u64> {
        let Some(dir) = self.memory_dir() else {
            return Err(CgroupError::NoHierarchy(self.rel.clone()));
        };
        let (limit, before) = self.memory()?;
        match &self.hierarchy {
            Hierarchy::V2 { .. } => {
                // EAGAIN means less than asked could be reclaimed: not an error here.
                match fs::write(dir.join("memory.reclaim"), bytes.to_string()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                    Err(e) => return Err(io("write", &dir.join("memory.reclaim"))(e)),
                }
            }
            Hierarchy::V1 { .. } => {
                // Only page cache is asked for: the limit never goes below what the machine's
                // own (anonymous) memory needs, so nothing is OOM-killed in the moment it is low.
                let cache = fs::read_to_string(dir.join("memory.stat"))
                    .ok()
                    .and_then(|stat| keyed(&stat, "total_cache"))
                    .unwrap_or(0);
                let target = before.saturating_sub(bytes.min(cache)).max(1 << 20);
                if target < before {
                    let path = dir.join("memory.limit_in_bytes");
                    // EBUSY: the kernel could not get usage that low; what it freed counts.
                    let lowered = fs::write(&path, target.to_string());
                    // The limit goes back whatever happened; a failed restore is retried.
                    let mut restored = write(&path, &limit.to_string());
                    for _ in 0..3 {
                        if restored.is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        restored = write(&path, &limit.to_string());
                    }
                    restored?;
                    if let Err(e) = lowered {
                        if e.raw_os_error() != Some(libc::EBUSY) {
                            return Err(io("write", &path)(e));
                        }
                    }
                }
            }
        }
        let (_, after) = self.memory()?;
        Ok(before.saturating_sub(after))
    }

    /// How many times the kernel OOM-killed a process in this cgroup.
    pub fn oom_kills(&self) -> Result<u64> {
        let (file, key) = match &self.hierarchy {
            Hierarchy::V2 { root } => (root.join(&self.rel).join("memory.events"), "oom_kill"),
            Hierarchy::V1 { .. } => match self.v1("memory") {
                Some(d) => (d.join("memory.oom_control"), "oom_kill"),
                None => return Ok(0),
            },
        };
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("read", &file)(e)),
        };
        Ok(keyed(&text, key).unwrap_or(0))
    }

    /// Uncharges the page cache the machine's files left in its (now empty) memory cgroup.
    /// Otherwise the removed cgroup lingers in the kernel as a "dying" memcg for as long as
    /// those pages stay cached, and thousands of them make every later cgroup creation slower
    /// (measured here: create→started p50 9.9 ms with none, 13 ms with ~1,300). Best effort.
    fn release_page_cache(&self) {
        let Some(dir) = self.memory_dir() else {
            return;
        };
        let _ = match &self.hierarchy {
            Hierarchy::V1 { .. } => fs::write(dir.join("memory.force_empty"), "0"),
            // A reclaim request larger than anything charged empties the cgroup.
            Hierarchy::V2 { .. } => fs::write(dir.join("memory.reclaim"), u64::MAX.to_string()),
        };
    }

    /// Lifts the CPU quota, so that processes throttled with a SIGKILL pending (a fork bomb
    /// under its quota) get the CPU time they need to die. Best effort.
    fn lift_cpu_quota(&self) {
        let _ = match &self.hierarchy {
            Hierarchy::V2 { root } => fs::write(root.join(&self.rel).join("cpu.max"), "max"),
            Hierarchy::V1 { .. } => match self.v1("cpu") {
                Some(cpu) => fs::write(cpu.join("cpu.cfs_quota_us"), "-1"),
                None => Ok(()),
            },
        };
    }

    /// Kills every process in the cgroup and waits until it is empty. A workload that forks
    /// as fast as it is killed (a fork bomb) cannot outrun this: on v2 `cgroup.kill` kills the
    /// whole cgroup at once; on v1 the cgroup is frozen first, so that no process forks or
    /// escapes between listing and signalling, every process gets SIGKILL, and the thaw lets
    /// them all die together. The CPU quota is lifted first in both cases.
    pub fn kill_all(&self) -> Result<()> {
        self.lift_cpu_quota();
        if let Hierarchy::V2 { root } = &self.hierarchy {
            let kill = root.join(&self.rel).join("cgroup.kill");
            if kill.exists() {
                write(&kill, "1")?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Frozen, nothing can fork; signals to frozen tasks stay pending until the thaw.
            let _ = self.freeze_for_kill();
            let procs = self.procs()?;
            for &pid in &procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // A frozen process cannot die; thaw so the signals land.
            let _ = self.set_frozen(false);
            if procs.is_empty() && self.procs()?.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy(self.rel.clone()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Freezes without waiting long: a task stuck in the kernel may never reach the freezer,
    /// and the kill loop goes on either way.
    fn freeze_for_kill(&self) -> Result<()> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => write(&root.join(&self.rel).join("cgroup.freeze"), "1"),
            Hierarchy::V1 { .. } => {
                let Some(dir) = self.v1("freezer") else {
                    return Ok(());
                };
                write(&dir.join("freezer.state"), "FROZEN")?;
                let deadline = Instant::now() + Duration::from_millis(500);
                while read(&dir.join("freezer.state"))?.trim() != "FROZEN"
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(())
            }
        }
    }

    /// Kills everything in the cgroup, then moves its (now empty) directories aside under a
    /// `.dead-` name beside them, so that the slow part of removing them (uncharging the page
    /// cache the machine's files left, ~100 ms on v1) need not hold up a destroy, and a new
    /// cgroup of the same name can be made at once. Returns the directories left to
    /// [`reap_dead`]; on a hierarchy that cannot rename cgroups (v2) they are removed here.
    pub fn retire(&self) -> Result<Vec<PathBuf>> {
        self.kill_all()?;
        if matches!(self.hierarchy, Hierarchy::V2 { .. }) {
            self.remove_empty()?;
            return Ok(Vec::new());
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut dead = Vec::new();
        for dir in self.dirs() {
            let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let aside = dir.with_file_name(format!("{DEAD_PREFIX}{name}-{stamp}"));
            match fs::rename(&dir, &aside) {
                Ok(()) => dead.push(aside),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                // Not movable here: remove it the slow way now.
                Err(_) => reap_dead(std::slice::from_ref(&dir)),
            }
        }
        Ok(dead)
    }

    /// Removes the cgroup directories; missing ones are fine.
    pub fn destroy(&self) -> Result<()> {
        self.kill_all()?;
        self.remove_empty()
    }

    /// Removes the directories of the (already emptied) cgroup, page cache first.
    fn remove_empty(&self) -> Result<()> {
        self.release_page_cache();
        for dir in self.dirs() {
            match remove_dir_retrying(&dir) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(io("remove", &dir)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }
}

/// The name prefix of retired cgroup directories ([`MachineCgroup::retire`]).
pub const DEAD_PREFIX: &str = ".dead-";

/// The name prefix of emptied cgroups kept for reuse ([`reap_dead`]), followed by the time
/// stamp of their retirement (no machine's id: they belong to none).
pub const FREE_PREFIX: &str = ".free-";

/// How many emptied cgroups the free pool keeps; more are removed.
pub const FREE_POOL_MAX: usize = 64;

/// A pooled memory cgroup may still carry this much page cache (the shared image files that
/// live machines map and that cannot be uncharged); one carrying more is removed instead, so
/// that the next machine's memory limit is not taken up by it.
const FREE_MAX_CHARGED: u64 = 16 << 20;

/// Disposes of retired (empty) cgroup directories. The page cache left in each memory cgroup
/// is uncharged first. What can still not be uncharged is page cache that live machines map
/// (the image layers' files are shared, and charged to whoever read them first); removing such
/// a cgroup would leave it in the kernel as a "dying" memcg until those pages go, and
/// thousands of those slow every later cgroup creation (create→started p50 ~11 → 17–23 ms
/// measured here). So on v1, where cgroups can be renamed, a retired cgroup goes into a free
/// pool (`.free-` beside it, at most [`FREE_POOL_MAX`]) that [`MachineCgroup::create`] takes
/// from; others are removed. Best effort: what cannot be removed is found again by
/// [`dead_dirs`] at the next start-up.
pub fn reap_dead(dirs: &[PathBuf]) {
    // A retired cgroup's directories share one name across the v1 controllers.
    let mut by_name: Vec<(std::ffi::OsString, Vec<&PathBuf>)> = Vec::new();
    for dir in dirs {
        let Some(name) = dir.file_name() else {
            continue;
        };
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, group)) => group.push(dir),
            None => by_name.push((name.to_os_string(), vec![dir])),
        }
    }
    for (name, group) in by_name {
        // Only the memory controller has page cache to give back; the write is harmless
        // (ENOENT) elsewhere.
        for dir in &group {
            let _ = fs::write(dir.join("memory.force_empty"), "0");
        }
        // Pooled under the retirement's time stamp alone: a pooled cgroup is no machine's.
        let free = name
            .to_str()
            .and_then(|n| n.strip_prefix(DEAD_PREFIX))
            .and_then(|rest| rest.rsplit_once('-'))
            .map(|(_, stamp)| format!("{FREE_PREFIX}{stamp}"));
        if let Some(free) = free.filter(|_| poolable(&group)) {
            // The memory controller's part last: creates look for entries there, so they never
            // see one whose other parts are not moved yet.
            let mut group = group.clone();
            group.sort_by_key(|dir| is_memory_part(dir));
            let pooled = group
                .iter()
                .all(|dir| fs::rename(dir, dir.with_file_name(&free)).is_ok());
            if pooled {
                continue;
            }
            // A part that did not move is removed, with the parts that did.
            for dir in &group {
                let _ = remove_dir_retrying(&dir.with_file_name(&free));
            }
        }
        for dir in &group {
            let _ = remove_dir_retrying(dir);
        }
    }
}

/// Puts the calling process (a reaper) in the idle scheduling class: uncharging page cache is
/// CPU work done by the kernel in the writer's name (~100 ms per machine on v1), and it must
/// not slow the starts running beside it (a machine woken right after its stop took 31–49 ms
/// instead of ~20 while its own last boot was being reaped). Best effort.
pub fn yield_to_machines() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread with a valid parameter block.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "the cgroup reaper keeps its scheduling class"
        );
    }
}

/// Whether a retired v1 cgroup (one directory per controller) goes into the free pool: its
/// memory controller's part carries little page cache, never saw an OOM kill (a count no
/// write resets), and the pool has room.
fn poolable(group: &[&PathBuf]) -> bool {
    let Some(memory) = group.iter().find(|d| is_memory_part(d)) else {
        return false;
    };
    let charged = fs::read_to_string(memory.join("memory.usage_in_bytes"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let oom_kills = fs::read_to_string(memory.join("memory.oom_control"))
        .ok()
        .and_then(|s| keyed(&s, "oom_kill"));
    let Some(parent) = memory.parent() else {
        return false;
    };
    let pooled = fs::read_dir(parent).map_or(usize::MAX, |entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(FREE_PREFIX))
            .count()
    });
    charged.is_some_and(|c| c <= FREE_MAX_CHARGED) && oom_kills == Some(0) && pooled < FREE_POOL_MAX
}

/// Removes an empty cgroup directory, retrying for a while on EBUSY: exiting processes can
/// keep it busy for a moment.
fn remove_dir_retrying(dir: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// Retired cgroup directories under `parent` (e.g. `hangar`) in every hierarchy, and the parts
/// of pool entries whose memory controller's part is gone (a crash between renames): removed
/// by [`reap_dead`].
pub fn dead_dirs(hierarchy: &Hierarchy, parent: &Path) -> Vec<PathBuf> {
    let bases: Vec<PathBuf> = match hierarchy {
        Hierarchy::V2 { root } => vec![root.join(parent)],
        Hierarchy::V1 { root } => V1_REQUIRED
            .iter()
            .chain(V1_OPTIONAL)
            .map(|c| root.join(c).join(parent))
            .collect(),
    };
    let names = |base: &Path, prefix: &str| -> Vec<(String, PathBuf)> {
        fs::read_dir(base)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .filter(|(name, _)| name.starts_with(prefix))
            .collect()
    };
    let pooled: Vec<String> = match hierarchy {
        Hierarchy::V1 { root } => names(&root.join("memory").join(parent), FREE_PREFIX)
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
        Hierarchy::V2 { .. } => Vec::new(),
    };
    let mut out = Vec::new();
    for base in bases {
        out.extend(names(&base, DEAD_PREFIX).into_iter().map(|(_, path)| path));
        if matches!(hierarchy, Hierarchy::V1 { .. }) {
            out.extend(
                names(&base, FREE_PREFIX)
                    .into_iter()
                    .filter(|(name, _)| !pooled.contains(name))
                    .map(|(_, path)| path),
            );
        }
    }
    out
}

/// The whole disk (`MAJ:MIN`) holding `path`'s filesystem: the partition's parent when the
/// filesystem is on a partition. `None` for filesystems on no block device (tmpfs, overlay).
pub fn whole_disk_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    if major == 0 {
        return None;
    }
    let sys = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let disk = if sys.join("partition").exists() {
        sys.parent()?.to_path_buf()
    } else {
        sys
    };
    Some(
        fs::read_to_string(disk.join("dev"))
            .ok()?
            .trim()
            .to_string(),
    )
}

fn enable_v2_controllers(dir: &Path) -> Result<()> {
    let control = dir.join("cgroup.subtree_control");
    let available = read(&dir.join("cgroup.controllers"))?;
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    let missing = |c: &str| {
        available.split_whitespace().any(|a| a == c) && !enabled.split_whitespace().any(|e| e == c)
    };
    let wanted: Vec<String> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| missing(c))
        .map(|c| format!("+{c}"))
        .collect();
    if !wanted.is_empty() {
        write(&control, &wanted.join(" "))?;
    }
    // IO accounting only (`machine stats`): a kernel that refuses it leaves IO uncounted, not
    // machines unstarted.
    if missing("io") {
        if let Err(e) = fs::write(&control, "+io") {
            tracing::debug!(error = %e, "the io controller could not be enabled");
        }
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("create", dir)(e)),
    }
}

fn mkdir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io("create", dir))
}

fn wait_for(file: &Path, done: impl Fn(&str) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = read(file)?;
        if done(&s) || Instant::now() > deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Turns on `favordynmods` on every cgroup2 mount of the host (the whole of a pure v2 host,
/// or the `unified` tree of a hybrid one), keeping the options it has. The kernel then keeps
/// the lock that moving a task between cgroups takes in its fast-writer state: the first move
/// no longer waits for an RCU grace period (~10 ms on a 2-core host; the lock is shared with
/// v1 controllers, but on v1 the spawn helper moves itself without it, see
/// [`MachineCgroup::join_single_threaded`]), at the cost of slightly dearer forks and exits
/// host-wide. The kernel keeps it until the next boot. Returns the mounts changed.
pub fn favor_dynmods() -> std::io::Result<Vec<PathBuf>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut changed = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, target, fstype, options, ..] = fields.as_slice() else {
            continue;
        };
        if *fstype != "cgroup2" || options.split(',').any(|o| o == "favordynmods") {
            continue;
        }
        // The cgroup2-specific options stay; generic ones (rw, relatime…) are the mount's.
        let keep: Vec<&str> = options
            .split(',')
            .filter(|o| {
                matches!(
                    *o,
                    "nsdelegate"
                        | "memory_localevents"
                        | "memory_recursiveprot"
                        | "memory_hugetlb_accounting"
                )
            })
            .chain(std::iter::once("favordynmods"))
            .collect();
        let target = PathBuf::from(target.replace("\\040", " "));
        nix::mount::mount(
            None::<&str>,
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT,
            Some(keep.join(",").as_str()),
        )
        .map_err(|e| std::io::Error::other(format!("remount {}: {e}", target.display())))?;
        changed.push(target);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a cgroup v2 root; the kernel's files become plain files.
    fn fake_v2() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    #[test]
    fn test_detect_v2_and_v1() {
        let v2 = fake_v2();
        assert_eq!(
            Hierarchy::detect(v2.path()).unwrap(),
            Hierarchy::V2 {
                root: v2.path().to_path_buf()
            }
        );
        let v1 = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "pids"] {
            fs::create_dir(v1.path().join(c)).unwrap();
            fs::write(v1.path().join(c).join("tasks"), "").unwrap();
        }
        assert!(matches!(
            Hierarchy::detect(v1.path()).unwrap(),
            Hierarchy::V1 { .. }
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(Hierarchy::detect(empty.path()).is_err());
    }

    #[test]
    fn test_v2_memory_balloon() {
        let root = fake_v2();
        let machine = root.path().join("hangar/m2");
        fs::create_dir_all(&machine).unwrap();
        fs::write(machine.join("memory.max"), "268435456\n").unwrap();
        fs::write(machine.join("memory.current"), "1048576\n").unwrap();
        let cg = MachineCgroup::new(
            Hierarchy::V2 {
                root: root.path().to_path_buf(),
            },
            "hangar/m2",
        );
        assert_eq!(cg.memory().unwrap(), (256 << 20, 1 << 20));
        cg.set_memory_limit(128 << 20).unwrap();
        assert_eq!(cg.memory().unwrap().0, 128 << 20);
        fs::write(machine.join("memory.max"), "max\n").unwrap();
        assert_eq!(cg.memory().unwrap().0, u64::MAX);
        // A fake cgroup frees nothing, but the request reaches memory.reclaim.
        assert_eq!(cg.reclaim(4096).unwrap(), 0);
        assert_eq!(
            fs::read_to_string(machine.join("memory.reclaim")).unwrap(),
            "4096"
        );
    }

    #[test]
    fn test_v2_limits_written() {
        let root = fake_v2();
        // The kernel creates interface files in a new cgroup; emulate that for the parent.
        let hangar = root.path().join("hangar");
        fs::create_dir(&hangar).unwrap();
        fs::write(hangar.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(hangar.join("cgroup.subtree_control"), "").unwrap();
        let machine = hangar.join("m1");
        fs::create_dir(&machine).unwrap();
        fs::write(machine.join("memory.swap.max"), "max").unwrap();
        let cg = MachineCgroup::new(
            Hierarchy::V2 {
                root: root.path().to_path_buf(),
            },
            "hangar/m1",
        );
        cg.create(&Limits {
            cpus: 2,
            memory_bytes: 256 << 20,
            swap_bytes: 0,
            pids: 4096,
            io_devices: Vec::new(),
        })
        .unwrap();
        let r = |f: &str| fs::read_to_string(machine.join(f)).unwrap();
        assert_eq!(r("cpu.max"), "200000 100000");
        assert_eq!(r("memory.max"), (256u64 << 20).to_string());
        assert_eq!(r("memory.swap.max"), "0");
        assert_eq!(r("pids.max"), "4096");
        // A plain file keeps only the last write: cpu, memory and pids went first, then io on
        // its own (a kernel may refuse it without failing the machine).
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+io"
        );
        cg.add_process(42).unwrap();
        assert_eq!(r("cgroup.procs"), "42");
        fs::write(
            machine.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 1);
        fs::write(machine.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        cg.set_frozen(true).unwrap();
        assert_eq!(r("cgroup.freeze"), "1");
        assert_eq!(
            cg.io_bytes(&[]).unwrap(),
            (0, 0),
            "no io.stat: nothing counted"
        );
        fs::write(
            machine.join("io.stat"),
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
             7:3 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n",
        )
        .unwrap();
        assert_eq!(cg.io_bytes(&[]).unwrap(), (4097, 8194));
        assert_eq!(cg.io_bytes(&["254:0".into()]).unwrap(), (4096, 8192));
    }

    #[test]
    fn test_v1_io_bytes_sum_reads_and_writes() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "pids", "blkio"] {
            fs::create_dir_all(root.path().join(c).join("hangar/m")).unwrap();
            fs::write(root.path().join(c).join("tasks"), "").unwrap();
        }
        let cg = MachineCgroup::new(Hierarchy::detect(root.path()).unwrap(), "hangar/m");
        fs::write(
            root.path()
                .join("blkio/hangar/m/blkio.throttle.io_service_bytes"),
            "254:0 Read 4096\n254:0 Write 4284416\n254:0 Sync 4284416\n254:0 Async 0\n\
             254:0 Discard 0\n254:0 Total 4288512\nTotal 4288512\n",
        )
        .unwrap();
        assert_eq!(cg.io_bytes(&[]).unwrap(), (4096, 4284416));
    }

    /// A v1 layout whose machine `m` was retired: each controller holds `.dead-m-1` with the
    /// kernel files the pool decision reads.
    fn fake_v1_retired(usage: u64, oom_kills: u64) -> (tempfile::TempDir, Vec<PathBuf>) {
        let root = tempfile::tempdir().unwrap();
        let mut dead = Vec::new();
        for c in ["memory", "cpu", "pids"] {
            let dir = root.path().join(c).join("hangar/.dead-m-1");
            fs::create_dir_all(&dir).unwrap();
            fs::write(root.path().join(c).join("tasks"), "").unwrap();
            dead.push(dir);
        }
        let memory = root.path().join("memory/hangar/.dead-m-1");
        fs::write(memory.join("memory.usage_in_bytes"), format!("{usage}\n")).unwrap();
        fs::write(
            memory.join("memory.oom_control"),
            format!("oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kills}\n"),
        )
        .unwrap();
        (root, dead)
    }

    #[test]
    fn test_v1_retired_cgroups_are_pooled_and_reused() {
        let (root, dead) = fake_v1_retired(1 << 20, 0);
        reap_dead(&dead);
        for c in ["memory", "cpu", "pids"] {
            let hangar = root.path().join(c).join("hangar");
            assert!(hangar.join(".free-1").is_dir(), "{c}: pooled");
            assert!(!hangar.join(".dead-m-1").exists(), "{c}: moved");
        }
        // The next machine's cgroup is the pooled one, under its own name in every
        // controller, with its limits written and its counters reset.
        let cg = MachineCgroup::new(Hierarchy::detect(root.path()).unwrap(), "hangar/n");
        let pooled = root.path().join("memory/hangar/.free-1");
        fs::write(pooled.join("memory.max_usage_in_bytes"), "999").unwrap();
        let memory = root.path().join("memory/hangar/n");
        cg.create(&Limits {
            cpus: 1,
            memory_bytes: 256 << 20,
            swap_bytes: 0,
            pids: 100,
            io_devices: Vec::new(),
        })
        .unwrap_or_else(|_| panic!("create"));
        for c in ["memory", "cpu", "pids"] {
            let hangar = root.path().join(c).join("hangar");
            assert!(hangar.join("n").is_dir(), "{c}: claimed");
            assert!(!hangar.join(".free-1").exists(), "{c}: out of the pool");
        }
        assert!(
            memory.join("memory.oom_control").exists(),
            "the same directory"
        );
        assert_eq!(
            fs::read_to_string(memory.join("memory.max_usage_in_bytes")).unwrap(),
            "0"
        );
        assert_eq!(
            fs::read_to_string(memory.join("memory.limit_in_bytes")).unwrap(),
            (256u64 << 20).to_string()
        );
    }

    #[test]
    fn test_v1_cgroups_that_saw_an_oom_or_hold_much_cache_are_not_pooled() {
        for (usage, oom_kills) in [(1 << 20, 1), (FREE_MAX_CHARGED + 1, 0)] {
            let (root, dead) = fake_v1_retired(usage, oom_kills);
            reap_dead(&dead);
            // (A real cgroup directory would be removed; a fake one with files stays.)
            let hangar = root.path().join("memory/hangar");
            assert!(!hangar.join(".free-1").exists(), "{usage} {oom_kills}");
        }
    }

    #[test]
    fn test_v1_pool_entries_without_their_memory_part_are_dead() {
        let (root, dead) = fake_v1_retired(0, 0);
        reap_dead(&dead);
        // An entry whose memory part is gone (a crash between renames) in cpu and pids.
        for c in ["cpu", "pids"] {
            fs::create_dir_all(root.path().join(c).join("hangar/.free-2")).unwrap();
        }
        let hierarchy = Hierarchy::detect(root.path()).unwrap();
        let mut found = dead_dirs(&hierarchy, Path::new("hangar"));
        found.sort();
        assert_eq!(
            found,
            vec![
                root.path().join("cpu/hangar/.free-2"),
                root.path().join("pids/hangar/.free-2")
            ]
        );
    }

    #[test]
    fn test_v1_a_process_leaves_for_each_hierarchys_root() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "pids"] {
            fs::create_dir_all(root.path().join(c).join("hangar/m")).unwrap();
            fs::write(root.path().join(c).join("tasks"), "").unwrap();
        }
        let cg = MachineCgroup::new(Hierarchy::detect(root.path()).unwrap(), "hangar/m");
        cg.remove_process(42).unwrap();
        for c in ["memory", "cpu", "pids"] {
            let procs = fs::read_to_string(root.path().join(c).join("cgroup.procs")).unwrap();
            assert_eq!(procs, "42", "{c}");
        }
    }

    /// On the host's real hierarchy: a forked (single-threaded) child joins a new cgroup
    /// itself, in every controller, and what it forks next starts there.
    #[test]
    fn test_a_single_threaded_process_joins_a_real_cgroup_itself() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making cgroups needs root");
            return;
        }
        let hierarchy = Hierarchy::detect(Path::new("/sys/fs/cgroup")).expect("a cgroup hierarchy");
        let v2 = matches!(hierarchy, Hierarchy::V2 { .. });
        let rel = format!("hangar-test-join-{}", std::process::id());
        /// Removes the test's cgroup however the test ends.
        struct Removed(MachineCgroup);
        impl Drop for Removed {
            fn drop(&mut self) {
                let _ = self.0.destroy();
            }
        }
        let cg = Removed(MachineCgroup::new(hierarchy, &rel));
        let made = cg.0.create(&Limits {
            cpus: 1,
            memory_bytes: 64 << 20,
            swap_bytes: 0,
            pids: 16,
            io_devices: Vec::new(),
        });
        if let Err(e) = &made {
            if matches!(e, CgroupError::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EROFS | libc::EACCES | libc::EBUSY)))
            {
                eprintln!("skipped: this host's cgroups cannot be written here: {e}");
                return;
            }
        }
        made.expect("create a cgroup");
        let (ready_r, ready_w) = nix::unistd::pipe().expect("pipe");
        // SAFETY: the child does file IO, forks and exits with _exit; it never returns into
        // the test harness, and an alarm ends it if anything hangs.
        let child = match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                unsafe { libc::alarm(10) };
                let joined = cg.0.join_single_threaded().is_ok();
                // A grandchild starts in the cgroup without moving; it waits until it has been
                // looked at (this child closes the pipe's last writer).
                let grandchild_in = match unsafe { nix::unistd::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => {
                        drop(ready_w);
                        let mut b = [0u8; 1];
                        let _ = nix::unistd::read(&ready_r, &mut b);
                        unsafe { libc::_exit(0) }
                    }
                    Ok(nix::unistd::ForkResult::Parent { child }) => {
                        let lines =
                            fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap_or_default();
                        drop(ready_w);
                        let _ = nix::sys::wait::waitpid(child, None);
                        lines
                    }
                    Err(_) => String::new(),
                };
                let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                // The lines of every controller a machine uses (v1), or the unified one (v2).
                let everywhere = |lines: &str| {
                    let relevant: Vec<&str> = lines
                        .lines()
                        .filter(|l| {
                            let controllers = l.split(':').nth(1).unwrap_or("");
                            controllers
                                .split(',')
                                .any(|c| V1_REQUIRED.contains(&c) || V1_OPTIONAL.contains(&c))
                                || (v2 && l.starts_with("0::"))
                        })
                        .collect();
                    !relevant.is_empty() && relevant.iter().all(|l| l.ends_with(&format!("/{rel}")))
                };
                let ok = joined && everywhere(&own) && everywhere(&grandchild_in);
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        drop((ready_r, ready_w));
        let status = nix::sys::wait::waitpid(child, None).expect("wait");
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(child, 0),
            "the child was not in {rel} in every controller"
        );
    }
}
