//! Warm sandboxes: a few sandboxes made ahead of the machines that will use them (cgroup,
//! namespaces, uid range, Pilot started and waiting; `hangar_sandbox::warm`), so that a start
//! takes one over instead of building one: its cgroup renamed to the machine's, the machine's
//! root filesystems mounted into it, its veth, then its spec handed to Pilot. The pool refills
//! in the background after each take. Only cgroup v1 hosts pool (v2 cannot rename a cgroup),
//! and only machines whose mounts are all overlays (see [`poolable`]).
//!
//! A warm sandbox belongs to this daemon: its Pilot reads its claim from a socket whose
//! other end only the daemon holds, so it exits when the daemon goes. Its cgroup (`.warm-…`
//! beside the machines') and uid claim (named after it) are removed at shutdown, or by the
//! next start of a daemon ([`WarmPool::sweep`]).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_api::MachineConfig;
use hangar_sandbox::cgroup::{Hierarchy, MachineCgroup};
use hangar_sandbox::plan::SpawnPlan;
use hangar_sandbox::warm::{WarmSandbox, WARM_CGROUP_PREFIX};
use hangar_sandbox::SandboxSpec;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::launch::ask_helper;
use super::{failed, pids_limit, reap_cgroups, wait_pidfd, RuntimeError};
use crate::uid_slots::{Slots, UID_BASE_START, UID_RANGE};

/// The most sandboxes kept warm unless `--warm-sandboxes` says otherwise. The pool keeps
/// [`RESTING_SIZE`] while starts are rare and grows toward this during bursts (a deploy, a
/// sandbox platform's busy minute): a start that finds the pool empty builds its sandbox from
/// nothing (namespaces, cgroup, Pilot's exec: ~4 ms more here). ~0.4 MiB of host memory each
/// while they wait.
pub const DEFAULT_WARM_SANDBOXES: usize = 8;

/// What the pool keeps while starts are rare: enough for two starts at once.
const RESTING_SIZE: usize = 2;

/// The resting size of a pool of at most `target`.
fn resting_size(target: usize) -> usize {
    RESTING_SIZE.min(target)
}

/// How long no start may find the pool empty before its size halves (down to
/// [`RESTING_SIZE`]), and how often that is looked at.
const SHRINK_AFTER: Duration = Duration::from_secs(60);
const SHRINK_CHECK: Duration = Duration::from_secs(15);

/// A warm sandbox's limits until a machine takes it over and gets its own: Pilot waiting
/// needs little.
const WARM_MEMORY_MB: u64 = 64;

pub(super) struct PoolSetup {
    /// The most sandboxes kept ready.
    pub target: usize,
    /// Where warm Pilots' logs go (until a machine's log takes over).
    pub dir: PathBuf,
    pub hierarchy: Hierarchy,
    pub slots: Arc<Slots>,
    pub exe: PathBuf,
    pub pilot_exe: Option<PathBuf>,
    pub io_devices: Vec<String>,
    /// Machines get a veth: each sandbox is made with a spare one.
    pub network: bool,
    /// Where machine dirs are: each sandbox comes with one made ahead when `dir` is on the
    /// same filesystem (the take-over renames it there).
    pub machines_dir: PathBuf,
}

pub(super) struct WarmPool {
    setup: PoolSetup,
    /// Whether machine dirs are made ahead (`setup.dir` and the machines dir share a
    /// filesystem).
    dirs_ahead: bool,
    /// Part of its sandboxes' names: which uid-claims dir they were claimed in
    /// ([`crate::uid_slots::SlotClaims::place_tag`]).
    tag: String,
    ready: Mutex<Vec<Warm>>,
    /// How many to keep ready now: [`RESTING_SIZE`] (or the target, if smaller), doubled up to
    /// the target each time a start finds the pool empty, halved after [`SHRINK_AFTER`]
    /// without that.
    size: AtomicUsize,
    /// When a start last found the pool empty.
    last_miss: Mutex<Instant>,
    /// [`WarmPool::keep_size`] runs.
    sizing: AtomicBool,
    /// One refill at a time.
    filling: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// Starts in flight, and when the last one began or ended: the pool refills only once
    /// none is in flight, and, unless it is empty, none was for [`QUIET`].
    starts: Mutex<(usize, Instant)>,
}

/// How long starts must have been quiet before a pool that still holds a sandbox refills: a
/// sandbox is never made while a start runs (it would share the CPUs and the kernel's mount
/// lock with the start it is meant to speed up), and one that is not needed yet waits for a
/// lull, while an empty pool refills in any gap between starts (see [`WarmPool::quiet`]).
/// Measured A/B (docs/decisions.md, "Refill once starts are quiet"): 25 ms made a sandbox
/// platform's create, exec, destroy loop miss the pool (10.6 ms create→started, 5 ms 7.3 ms);
/// refilling an empty pool at once took back-to-back creates from 12.7 to 10.9 ms.
const QUIET: Duration = Duration::from_millis(5);

/// A sandbox of the pool.
pub(super) struct Warm {
    /// Its cgroup's (and uid claim's) name, `.warm-…`.
    pub name: String,
    pub slot: u32,
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The daemon's end of Pilot's stdin, on which its claim goes.
    pub socket: OwnedFd,
    log: PathBuf,
    /// The host end of its spare veth (`eth0` inside), with networking: the host veth of
    /// the machine that takes it over.
    pub spare_veth: Option<String>,
    /// A machine dir made ahead for its uid range ([`make_machine_dir`]), which a machine
    /// created into this sandbox takes by a rename.
    pub machine_dir: Option<PathBuf>,
}

/// The container dir a machine dir made ahead holds: that of a machine's first container
/// when it has no `containers` of its own (crate::container_plan).
pub(super) const MADE_AHEAD_CONTAINER: &str = "app";

/// A new machine's dir, made ahead for the uid range starting at `uid_base`, as a start
/// would make it (`launch`, `prepare_rootfs`): only root and the machine's root group may
/// enter it; the run dir with Pilot's log dir, and the first container's writable layer
/// (upper, work) and root filesystem mount point. Made while no start runs, it spares the
/// start a dozen metadata writes (~1 ms on a host whose ext4 takes 60–90 µs a `mkdir`).
fn make_machine_dir(path: &Path, uid_base: u32) -> std::io::Result<()> {
    std::fs::create_dir(path)?;
    let run = path.join(super::RUN_DIR);
    std::fs::create_dir_all(run.join(hangar_pilot::spec::LOG_DIR))?;
    super::host::chown_tree_nofollow(&run, uid_base)?;
    let container = path.join("containers").join(MADE_AHEAD_CONTAINER);
    std::fs::create_dir_all(&container)?;
    for d in ["upper", "work", "rootfs"] {
        std::fs::create_dir(container.join(d))?;
    }
    let upper = container.join("upper");
    std::os::unix::fs::lchown(&upper, Some(uid_base), Some(uid_base))?;
    super::host::restrict_machine_dir(path, uid_base)
}

/// Whether a machine with `config` can take over a warm sandbox: its mounts must all be
/// overlays, since loop-mounted disks (a sized root filesystem, disk or memory volumes,
/// persistent volumes) are found and unmounted in the host's mount namespace.
pub(super) fn poolable(config: &MachineConfig) -> bool {
    // A claim carries a bounded number of root filesystems (one per container at most).
    crate::container_plan::container_configs(config).len() <= hangar_pilot::pooled::CLAIM_MOUNTS_MAX
        && config.mounts.as_ref().is_none_or(Vec::is_empty)
        && super::rootfs_size_gb(config).is_none()
        && config.volumes.iter().flatten().all(|v| {
            v.temp_dir.as_ref().is_none_or(|t| {
                t.storage_type.as_deref() != Some("memory") && t.size_mb.is_none_or(|s| s <= 0)
            })
        })
}

impl WarmPool {
    /// A pool when `setup.target` asks for one and this host can have it (cgroup v1, the
    /// pre-forked spawner); `None` otherwise.
    pub fn new(setup: PoolSetup) -> std::io::Result<Option<Arc<Self>>> {
        if setup.target == 0
            || !matches!(setup.hierarchy, Hierarchy::V1 { .. })
            || hangar_sandbox::spawner::get().is_none()
        {
            return Ok(None);
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&setup.dir)?;
        }
        // Machine dirs are made here ahead, and their files would otherwise all go to this
        // dir's block group (see `mark_top_dir`).
        super::host::mark_top_dir(&setup.dir);
        let dirs_ahead = {
            use std::os::unix::fs::MetadataExt;
            let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
            dev(&setup.dir).is_some_and(|d| Some(d) == dev(&setup.machines_dir))
        };
        let resting = resting_size(setup.target);
        Ok(Some(Arc::new(Self {
            dirs_ahead,
            tag: setup.slots.claims.place_tag(),
            setup,
            ready: Mutex::new(Vec::new()),
            size: AtomicUsize::new(resting),
            last_miss: Mutex::new(Instant::now()),
            sizing: AtomicBool::new(false),
            filling: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            starts: Mutex::new((0, Instant::now())),
        })))
    }

    fn cgroup(&self, name: &str) -> MachineCgroup {
        MachineCgroup::new(self.setup.hierarchy.clone(), cgroup_path(name))
    }

    /// A warm sandbox, if one is ready: the one made first, so that none waits for ever (one
    /// broken while it waited is found at its turn, not only once the pool drains). The pool
    /// refills once the start has ended ([`StartInFlight`]): a sandbox made meanwhile would
    /// compete for the CPUs and the kernel's mount lock with the start it is meant to speed up.
    /// A start that finds the pool empty makes it grow ([`WarmPool::size`]).
    fn take(&self) -> Option<Warm> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.is_empty() {
            drop(ready);
            self.missed();
            return None;
        }
        Some(ready.remove(0))
    }

    /// A start found the pool empty: keep twice as many ready (up to the target).
    fn missed(&self) {
        *self.last_miss.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let target = self.setup.target;
        let _ = self
            .size
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_mul(2).min(target))
            });
    }

    /// How many sandboxes the pool keeps ready now.
    fn size(&self) -> usize {
        self.size.load(Ordering::Acquire)
    }

    /// Halves the pool's size (down to [`RESTING_SIZE`]) each time no start found it empty for
    /// [`SHRINK_AFTER`], letting the surplus go (the newest first), until the pool closes.
    /// Once per pool (later calls do nothing).
    pub fn keep_size(self: &Arc<Self>) {
        if self.sizing.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SHRINK_CHECK).await;
                let Some(pool) = pool.upgrade() else { return };
                if pool.closed.load(Ordering::Acquire) {
                    return;
                }
                pool.shrink_if_unmissed().await;
            }
        });
    }

    /// Halves the size if no start found the pool empty for [`SHRINK_AFTER`], and lets the
    /// sandboxes beyond it go.
    async fn shrink_if_unmissed(&self) {
        let idle = self
            .last_miss
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if idle < SHRINK_AFTER {
            return;
        }
        let resting = resting_size(self.setup.target);
        // From the size read, so that a miss meanwhile is not overwritten.
        let halved = self
            .size
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > resting).then(|| (n / 2).max(resting))
            });
        if halved.is_err() {
            return;
        }
        *self.last_miss.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let surplus: Vec<Warm> = {
            // Not while a refill runs (it may be making one more); the lock is let go before
            // the discards, which take a while, so refills are not missed.
            let _one_at_a_time = self.filling.lock().await;
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            let keep = ready.len().min(self.size());
            ready.split_off(keep)
        };
        for warm in surplus {
            self.discard(warm, true).await;
        }
    }

    /// A start begins; the returned guard says when it ends.
    pub fn start_begins(self: &Arc<Self>) -> StartInFlight {
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        *starts = (starts.0 + 1, Instant::now());
        StartInFlight(self.clone())
    }

    /// Waits until no start is in flight and, unless the pool is empty, none was for
    /// [`QUIET`]: an empty pool refills as soon as the CPUs are free of starts, since the next
    /// start would otherwise build its sandbox from nothing.
    async fn quiet(&self) {
        loop {
            let (in_flight, since) = *self.starts.lock().unwrap_or_else(|e| e.into_inner());
            let waited = since.elapsed();
            let empty = self
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            if in_flight == 0 && (empty || waited >= QUIET) {
                return;
            }
            tokio::time::sleep(QUIET.saturating_sub(waited).max(Duration::from_millis(1))).await;
        }
    }

    /// A ready sandbox whose Pilot still runs (one killed while it waited, by the OOM killer
    /// or by hand, is let go).
    pub async fn take_alive(&self) -> Option<Warm> {
        loop {
            let warm = self.take()?;
            if warm.alive() {
                return Some(warm);
            }
            tracing::warn!(sandbox = %warm.name, "a warm sandbox's Pilot ended while it waited");
            self.discard(warm, true).await;
        }
    }

    /// Makes and hands out no more warm sandboxes (those ready go at shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Makes sandboxes until the pool is full, in the background.
    pub fn fill(self: &Arc<Self>) {
        let pool = self.clone();
        tokio::spawn(async move {
            let Ok(_one_at_a_time) = pool.filling.try_lock() else {
                return;
            };
            while !pool.closed.load(Ordering::Acquire)
                && pool.ready.lock().unwrap_or_else(|e| e.into_inner()).len() < pool.size()
            {
                pool.quiet().await;
                match pool.make().await {
                    Ok(warm) => {
                        if pool.closed.load(Ordering::Acquire) {
                            pool.discard(warm, true).await;
                            return;
                        }
                        pool.ready
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(warm);
                    }
                    Err(Made::SpawnerGone(e)) => {
                        // Starts execute their helpers from now on, without the pool.
                        tracing::warn!(error = %e, "no more warm sandboxes: the spawner is gone");
                        pool.close();
                        return;
                    }
                    Err(Made::Failed(e)) => {
                        // Starts build their own sandboxes meanwhile; the next one tries again.
                        tracing::warn!(error = %e, "making a warm sandbox failed");
                        return;
                    }
                }
            }
        });
    }

    /// Builds one warm sandbox through the spawner.
    async fn make(&self) -> Result<Warm, Made> {
        let name = format!(
            "{WARM_CGROUP_PREFIX}{}-{:012x}",
            self.tag,
            rand::random::<u64>() >> 16
        );
        let slot = self
            .setup
            .slots
            .alloc(&name)
            .map_err(|e| Made::Failed(failed(format!("claiming a uid range: {e}"))))?
            .ok_or_else(|| Made::Failed(failed("no free uid range for a warm sandbox")))?;
        let made = self.spawn(&name, slot).await;
        match made {
            Ok(warm) => Ok(self.with_machine_dir(warm).await),
            Err(e) => {
                self.setup.slots.free(slot, &name);
                let _ = std::fs::remove_file(self.log_path(&name));
                Err(e)
            }
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.setup.dir.join(format!("{name}.log"))
    }

    /// `warm` with a machine dir made ahead for its uid range, when this pool makes them and
    /// making it works (otherwise its machine makes its dir itself).
    async fn with_machine_dir(&self, mut warm: Warm) -> Warm {
        if !self.dirs_ahead {
            return warm;
        }
        let dir = self.setup.dir.join(format!("{}.dir", warm.name));
        let uid_base = UID_BASE_START + warm.slot * UID_RANGE;
        let made = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || make_machine_dir(&dir, uid_base)).await
        };
        match made {
            Ok(Ok(())) => warm.machine_dir = Some(dir),
            outcome => {
                tracing::debug!(?outcome, "making a machine dir ahead failed");
                remove_machine_dir(dir).await;
            }
        }
        warm
    }

    async fn spawn(&self, name: &str, slot: u32) -> Result<Warm, Made> {
        let spawner = hangar_sandbox::spawner::get()
            .ok_or_else(|| Made::SpawnerGone(failed("no spawner")))?;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Made::Failed(failed(format!("a warm sandbox's socket: {e}"))))?;
        let log = self.log_path(name);
        // Named as a machine's host veth is (`hgv` and 12 hex digits, the name's last: 15
        // bytes, the most a device name may have), so that the machine taking it over keeps
        // the name: renaming a device waits for an RCU grace period (0.3–0.7 ms traced).
        let spare_veth = self
            .setup
            .network
            .then(|| format!("hgv{}", &name[name.len().saturating_sub(12)..]));
        let plan = SpawnPlan {
            sandbox: SandboxSpec {
                machine_id: name.to_string(),
                machine_dir: self.setup.dir.clone(),
                uid_base: UID_BASE_START + slot * UID_RANGE,
                uid_count: UID_RANGE,
                cgroup_root: PathBuf::from("/sys/fs/cgroup"),
                cgroup_path: PathBuf::from(cgroup_path(name)),
                cpus: 1,
                memory_bytes: WARM_MEMORY_MB << 20,
                swap_bytes: 0,
                pids: pids_limit(WARM_MEMORY_MB),
                hostname: "localhost".into(),
                // Room in the argument area for the title Pilot takes when claimed.
                pilot_args: vec![
                    "pilot".into(),
                    hangar_pilot::pooled::POOLED_FLAG.into(),
                    " ".repeat(hangar_pilot::pooled::TITLE_ROOM),
                ],
                pilot_exe: self.setup.pilot_exe.clone(),
                pilot_log: log.clone(),
                net: None,
                io_devices: self.setup.io_devices.clone(),
                spare_veth: spare_veth.clone(),
                idle: true,
            },
            mounts: Vec::new(),
            volume_mounts: Vec::new(),
        };
        let socket = spawner
            .request(&theirs)
            .map_err(|e| Made::SpawnerGone(failed(format!("asking the spawner: {e}"))))?;
        drop(theirs);
        let pid = match ask_helper(socket, &plan).await {
            Ok(pid) => pid,
            Err(e) => {
                // The helper removed what it made; its cgroup may linger if it died.
                let cgroup = self.cgroup(name);
                let exe = self.setup.exe.clone();
                let _ = tokio::task::spawn_blocking(move || retire(&cgroup, &exe)).await;
                return Err(Made::Failed(e));
            }
        };
        let pidfd =
            super::pidfd_open(pid).map_err(|e| Made::Failed(failed(format!("pidfd_open: {e}"))))?;
        Ok(Warm {
            name: name.to_string(),
            slot,
            pid,
            pidfd,
            socket: ours,
            log,
            spare_veth,
            machine_dir: None,
        })
    }

    /// Lets a warm sandbox go: Pilot sees its socket close and exits, its cgroup (still
    /// pooled, if a take-over did not rename it) is emptied and removed, Pilot is reaped.
    /// `free_slot` unless a machine holds its slot now.
    pub async fn discard(&self, warm: Warm, free_slot: bool) {
        let Warm {
            name,
            slot,
            pidfd,
            socket,
            log,
            machine_dir,
            ..
        } = warm;
        drop(socket);
        if let Some(dir) = machine_dir {
            remove_machine_dir(dir).await;
        }
        let cgroup = self.cgroup(&name);
        let exe = self.setup.exe.clone();
        let _ = tokio::task::spawn_blocking(move || retire(&cgroup, &exe)).await;
        // Killed with its cgroup, or gone already; reaped here (the daemon is its reaper).
        let _ = tokio::time::timeout(Duration::from_secs(10), wait_pidfd(pidfd)).await;
        if free_slot {
            self.setup.slots.free(slot, &name);
        }
        let _ = std::fs::remove_file(log);
    }

    /// Empties the pool for good (daemon shutdown).
    pub async fn shut_down(&self) {
        self.closed.store(true, Ordering::Release);
        // A refill in flight finishes (and discards what it made) first.
        let _one_at_a_time = self.filling.lock().await;
        let warm: Vec<Warm> =
            std::mem::take(&mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()));
        for w in warm {
            self.discard(w, true).await;
        }
    }

    /// At start-up, before the pool fills: removes the warm cgroups nobody claims (this
    /// daemon's earlier run's: their Pilots end with it, and the runtime's sweep just released
    /// their uid claims; or a daemon's whose data dir went), with the earlier run's Pilot logs.
    /// Other daemons' pools stay: a claim is made before its cgroup and released after it.
    ///
    /// "Nobody claims" is known only of sandboxes claimed in the same claims dir (same tag):
    /// a daemon in another container, with its own `/run`, claims where this one cannot see,
    /// and makes each cgroup a moment before its Pilot enters it. So others' are removed only
    /// once empty for long ([`FOREIGN_GRACE`]: their daemon, or its container, is gone).
    /// Emptiness is `pids.current`, which counts the processes of every pid namespace
    /// (`cgroup.procs` lists only those this daemon's namespace can see).
    pub async fn sweep(&self) {
        let _no_refill = self.filling.lock().await;
        let ready: Vec<String> = self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|w| w.name.clone())
            .collect();
        let ours = format!("{WARM_CGROUP_PREFIX}{}-", self.tag);
        let ready_names = ready.clone();
        let claimed: Vec<String> = self
            .setup
            .slots
            .claims
            .all()
            .into_iter()
            .map(|(_, _, holder)| holder)
            .collect();
        let hierarchy = self.setup.hierarchy.clone();
        let exe = self.setup.exe.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for name in warm_cgroups(&hierarchy) {
                if ready.contains(&name) || claimed.contains(&name) {
                    continue;
                }
                let cgroup = MachineCgroup::new(hierarchy.clone(), cgroup_path(&name));
                let abandoned = if name.starts_with(&ours) {
                    // A sandbox another daemon is taking over (its claim already names the
                    // machine) is renamed away within milliseconds; what is still here after
                    // a second is an earlier run's, whose Pilot (idle class, maybe starved on
                    // a busy host) has not yet seen its daemon go: killed with the cgroup.
                    still_there(&cgroup, Duration::from_secs(1))
                } else {
                    empty(&cgroup) && cgroup.age().is_some_and(|age| age >= FOREIGN_GRACE)
                };
                if abandoned {
                    retire(&cgroup, &exe);
                }
            }
        })
        .await;
        // The earlier run's Pilot logs and machine dirs made ahead (not those of sandboxes
        // ready now, were there any).
        let (dir, ready) = (self.setup.dir.clone(), ready_names);
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                return;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let sandbox = name
                    .strip_suffix(".log")
                    .or_else(|| name.strip_suffix(".dir"));
                if sandbox.is_some_and(|s| ready.iter().any(|r| r == s)) {
                    continue;
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(e.path());
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        })
        .await;
    }
}

/// A start in flight ([`WarmPool::start_begins`]).
pub(super) struct StartInFlight(Arc<WarmPool>);

impl Drop for StartInFlight {
    /// The start ended (started, failed or unwound): the pool refills behind it.
    fn drop(&mut self) {
        {
            let mut starts = self.0.starts.lock().unwrap_or_else(|e| e.into_inner());
            *starts = (starts.0.saturating_sub(1), Instant::now());
        }
        self.0.fill();
    }
}

/// Removes a machine dir made ahead that no machine took (it holds empty dirs only).
pub(super) async fn remove_machine_dir(dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

/// Why a warm sandbox was not made.
enum Made {
    /// The spawner died: no more can be made.
    SpawnerGone(RuntimeError),
    Failed(RuntimeError),
}

/// How long another claims dir's warm cgroup must have been there, empty, before a daemon
/// removes it.
const FOREIGN_GRACE: Duration = Duration::from_secs(600);

fn cgroup_path(name: &str) -> String {
    format!("hangar/{name}")
}

/// Kills what runs in a cgroup, moves it aside and has it removed (as a machine's).
fn retire(cgroup: &MachineCgroup, exe: &Path) {
    if !cgroup.exists() {
        return;
    }
    match cgroup.retire() {
        Ok(dead) => reap_cgroups(exe, dead),
        Err(e) => tracing::warn!(error = %e, "removing a warm sandbox's cgroup failed"),
    }
}

/// Whether nothing runs in `cgroup` (in any pid namespace: `pids.current`).
fn empty(cgroup: &MachineCgroup) -> bool {
    cgroup.pids_current().is_ok_and(|n| n == 0)
}

/// Whether `cgroup` still exists once empty, or after `wait` (false once it is gone).
fn still_there(cgroup: &MachineCgroup, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if !cgroup.exists() {
            return false;
        }
        if empty(cgroup) || Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The names of the warm cgroups on the host (any daemon's).
fn warm_cgroups(hierarchy: &Hierarchy) -> Vec<String> {
    let parent = match hierarchy {
        Hierarchy::V1 { root } => root.join("memory").join("hangar"),
        Hierarchy::V2 { root } => root.join("hangar"),
    };
    std::fs::read_dir(parent)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(WARM_CGROUP_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

impl Warm {
    /// Whether its Pilot still runs.
    fn alive(&self) -> bool {
        hangar_sandbox::warm::alive(&self.pidfd)
    }

    /// What the take-over's steps are told about this sandbox.
    pub fn sandbox(&self) -> WarmSandbox {
        WarmSandbox {
            pid: self.pid,
            cgroup_path: PathBuf::from(cgroup_path(&self.name)),
            spare_veth: self.spare_veth.clone(),
        }
    }

    /// Hands Pilot its machine (the claim, with its spec, its log and its root filesystems;
    /// Pilot's log until now, its own file, goes) and waits until Pilot has done the
    /// sandbox's part of the take-over.
    pub async fn claim(
        &self,
        claim: &hangar_pilot::pooled::Claim,
        spec: &OwnedFd,
        log: &std::fs::File,
        mounts: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), String> {
        hangar_pilot::pooled::send_claim(
            self.socket.as_fd(),
            claim,
            spec.as_fd(),
            log.as_fd(),
            mounts,
        )
        .map_err(|e| format!("sending the claim: {e}"))?;
        let answer = tokio::time::timeout(CLAIM_TIMEOUT, self.answer())
            .await
            .map_err(|_| {
                format!(
                    "Pilot did not answer its claim within {}s",
                    CLAIM_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("reading Pilot's answer to its claim: {e}"))?;
        hangar_pilot::pooled::read_answer(&answer)?;
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }

    /// The next message on Pilot's socket (empty if Pilot is gone).
    async fn answer(&self) -> std::io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        // SAFETY: the AsyncFd owns this dup of the socket and closes it when it goes.
        let socket = unsafe { tokio::io::unix::AsyncFd::register(self.socket.try_clone()?) }?;
        loop {
            let mut ready = socket.readable().await?;
            let mut buf = [0u8; 4096];
            let received = ready.try_io(|fd| {
                nix::sys::socket::recv(
                    fd.as_raw_fd(),
                    &mut buf,
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                )
                .map_err(std::io::Error::from)
            });
            if let Ok(n) = received {
                return Ok(buf[..n?].to_vec());
            }
        }
    }
}

/// How long Pilot may take to attach its root filesystems when claimed (a fraction of a
/// millisecond; a wedged kernel call fails the start instead of hanging it).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> MachineConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_machines_with_overlay_mounts_alone_take_warm_sandboxes() {
        let image = "127.0.0.1:5000/hangar/busybox:latest";
        assert!(poolable(&config(serde_json::json!({"image": image}))));
        // A temp_dir on the machine's disk without a size is a plain dir of the machine dir.
        assert!(poolable(&config(serde_json::json!({
            "image": image,
            "volumes": [{"name": "scratch", "temp_dir": {}}],
        }))));
        for unpoolable in [
            serde_json::json!({"image": image, "mounts": [{"volume": "vol_1", "path": "/data"}]}),
            serde_json::json!({"image": image, "rootfs": {"size_gb": 2}}),
            serde_json::json!({"image": image,
                "volumes": [{"name": "m", "temp_dir": {"storage_type": "memory"}}]}),
            serde_json::json!({"image": image,
                "volumes": [{"name": "d", "temp_dir": {"storage_type": "disk", "size_mb": 16}}]}),
        ] {
            assert!(!poolable(&config(unpoolable.clone())), "{unpoolable}");
        }
    }
}
