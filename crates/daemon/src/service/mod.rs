//! The machine service: apps, machines and their state machine, leases, metadata and `wait`.
//! HTTP handlers call into it; every transition is written to the store (with its event) before
//! the runtime is asked to act, and watchers are woken after each write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hangar_api::ids;
use hangar_api::{
    validate_config, CreateMachineRequest, ImageRef, MachineConfig, MachineState, Signal,
};
use hangar_store::{AppRecord, EventRecord, HostRecord, LeaseRecord, MachineRecord, Store};
use serde_json::json;
use tokio::sync::watch;

use crate::clock::{now_ms, now_secs, rfc3339_secs};

use crate::runtime::{Adoption, ExecSpec, MachineExit, Runtime};

mod apps;
mod certificates;
mod error;
mod exits;
mod hosts;
mod ips;
mod leases;
mod lifecycle;
mod machines;
mod metadata;
mod network;
mod other_hosts;
mod process;
mod proxy;
mod reconcile;
mod scheduler;
mod secrets;
mod volumes;
mod wait;

pub use hosts::{HostOffer, HostView, Owner, HEARTBEAT_INTERVAL};
pub use other_hosts::OTHER_HOSTS_REFRESH;

pub use error::{ServiceError, ServiceResult};
pub use scheduler::{ScheduleView, SCHEDULER_TICK};
use secrets::secrets_failure;
pub use secrets::{SecretValues, SecretView, SecretsConfig};
pub use volumes::{VolumeView, AUTO_EXTEND_INTERVAL};
pub use wait::WaitTarget;

pub const DEFAULT_ORG: &str = "personal";
pub use hangar_api::lifecycle::DEFAULT_STOP_TIMEOUT;
/// Longest a single `wait` call blocks (Fly's proxy limit).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_LEASE_TTL: i64 = 30;
const MAX_LEASE_TTL: i64 = 24 * 3600;
/// The owner recorded on leases; there is one admin identity until tokens get scopes.
const LEASE_OWNER: &str = "admin";

/// What `wait` watches: the latest state of a machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: MachineState,
    pub instance_id: String,
    pub event_id: Option<String>,
}

/// Per-machine coordination: mutations take `lock`, `wait` subscribes to `watch`.
struct MachineHandle {
    lock: Arc<tokio::sync::Mutex<()>>,
    watch: watch::Sender<Snapshot>,
}

/// Who caused an event (`user` for API calls, `flyd` for the platform itself).
#[derive(Debug, Clone, Copy)]
pub enum Source {
    User,
    Platform,
    /// The proxy's autostart and autostop.
    Proxy,
    /// The scheduler's fires (`schedule`).
    Scheduler,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::Platform => "flyd",
            Source::Proxy => "fly-proxy",
            Source::Scheduler => "scheduler",
        }
    }
}

/// The image store and how to pull into it.
pub struct Images {
    pub store: Arc<hangar_image::ImageStore>,
    pub pull: hangar_image::PullOptions,
}

/// What HTTP handlers hold.
pub type AppState = Arc<Hangar>;

pub struct Hangar {
    /// This host (the agent that owns the machines it creates).
    host_id: String,
    /// What the host can hold and what running machines reserve of it.
    capacity: crate::capacity::Ledger,
    store: Arc<dyn Store>,
    runtime: Arc<dyn Runtime>,
    handles: Mutex<HashMap<String, Arc<MachineHandle>>>,
    region: String,
    /// Lets background tasks (the launch after a create) hold the service without a cycle.
    me: Weak<Hangar>,
    images: Option<Images>,
    /// Per app: machine creates hold it shared, app deletion exclusively, so a machine cannot
    /// be created into an app being deleted (its row would vanish under a running sandbox).
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// This host's part of the 6PN addresses it allocates.
    net_host: u32,
    /// What the `.internal` resolver answers from; kept current by every machine write.
    directory: Arc<hangar_dns::Directory>,
    /// TLS to and from the cluster's other hosts (cluster mode with a `--listen` address).
    cluster_tls: std::sync::OnceLock<crate::cluster_tls::ClusterTls>,
    /// Machines' hosts, by (app, id), as [`Hangar::machine_owner`] found them.
    machine_hosts: Mutex<HashMap<(String, String), String>>,
    /// The other hosts' machines this host's resolver and proxy know (cluster mode), as last
    /// read from the store.
    from_other_hosts: Mutex<other_hosts::OtherHosts>,
    /// The edge proxy, told of every machine write like the directory.
    proxy: std::sync::OnceLock<Arc<hangar_proxy::Proxy>>,
    /// The key app secrets are sealed with, and who may read them back.
    secrets: SecretsConfig,
    /// Where volumes' images live (`None`: this daemon keeps no volumes).
    volumes: Option<hangar_volumes::VolumeDir>,
    /// Counters `/metrics` exports.
    metrics: Arc<crate::counters::DaemonMetrics>,
    /// The store is shared with other hosts (cluster mode): requests for their machines are
    /// forwarded to them.
    cluster: std::sync::atomic::AtomicBool,
    /// Heartbeats this host wrote in a row (reset by a failed one): another host is only
    /// judged silent once this host's own view of the store is fresh.
    heartbeats_in_a_row: std::sync::atomic::AtomicU32,
}

/// Runs a blocking store call off the async workers (SQLite commits fsync).
async fn db<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> hangar_store::Result<T> + Send + 'static,
) -> ServiceResult<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ServiceError::internal(format!("store task failed: {e}")))?
        .map_err(ServiceError::from)
}

/// [`db`] for a read: run right here when the store's reads are quick
/// ([`hangar_store::Backend::reads_are_quick`]), else on the blocking pool.
async fn db_read<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> hangar_store::Result<T> + Send + 'static,
) -> ServiceResult<T> {
    if store.reads_are_quick() {
        return f(store.as_ref()).map_err(ServiceError::from);
    }
    db(store, f).await
}

pub struct ListFilter {
    pub include_deleted: bool,
    pub region: Option<String>,
    pub states: Option<Vec<MachineState>>,
    pub metadata: Vec<(String, String)>,
}

/// 412 unless the machine is started (actions on its processes).
fn require_started(m: &MachineRecord) -> ServiceResult<()> {
    if m.state != MachineState::Started {
        return Err(ServiceError::precondition(format!(
            "machine is {}, not started",
            m.state
        )));
    }
    Ok(())
}

/// The smallest memory limit `PUT …/memory` sets: below it the machine's own init would not fit.
const MIN_MEMORY_LIMIT_MB: i64 = 32;

fn memory_response(limit: u64, usage: u64) -> hangar_api::MemoryResponse {
    let mb = |b: u64| i64::try_from(b >> 20).unwrap_or(i64::MAX);
    hangar_api::MemoryResponse {
        limit_mb: mb(limit),
        available_mb: mb(limit.saturating_sub(usage)),
    }
}

pub struct StopOptions {
    pub signal: Option<Signal>,
    pub timeout: Option<Duration>,
}

impl Hangar {
    // One argument per part the service is assembled from (called once, in lib.rs).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        region: String,
        images: Option<Images>,
        capacity: crate::capacity::Ledger,
        host_id: String,
        secrets: SecretsConfig,
        volumes: Option<hangar_volumes::VolumeDir>,
        metrics: Arc<crate::counters::DaemonMetrics>,
        cluster: bool,
    ) -> hangar_store::Result<Arc<Self>> {
        let net_host = network::host_part(store.as_ref(), cluster.then_some(host_id.as_str()))?;
        Ok(Arc::new_cyclic(|me| Self {
            host_id,
            capacity,
            store,
            runtime,
            images,
            handles: Mutex::new(HashMap::new()),
            region,
            me: me.clone(),
            app_locks: Mutex::new(HashMap::new()),
            net_host,
            directory: Arc::new(hangar_dns::Directory::new()),
            from_other_hosts: Mutex::new(Default::default()),
            machine_hosts: Mutex::new(HashMap::new()),
            cluster_tls: std::sync::OnceLock::new(),
            proxy: std::sync::OnceLock::new(),
            cluster: std::sync::atomic::AtomicBool::new(cluster),
            heartbeats_in_a_row: std::sync::atomic::AtomicU32::new(0),
            secrets,
            volumes,
            metrics,
        }))
    }

    /// The regions machines can be placed in: this host's one, with room for how many
    /// `shared-cpu-1x` machines it still admits.
    pub fn regions(&self) -> Vec<(String, u64)> {
        let room = self.capacity.room_for(crate::capacity::Size {
            cpus: 1,
            shared: true,
            memory_mb: 256,
        });
        vec![(self.region.clone(), room)]
    }

    /// The daemon's counters (API requests, transitions, starts, OOM kills, pulls).
    pub fn metrics(&self) -> Arc<crate::counters::DaemonMetrics> {
        self.metrics.clone()
    }

    /// The machine runtime (for handlers that stream from it, such as logs).
    pub fn runtime(&self) -> Arc<dyn Runtime> {
        self.runtime.clone()
    }

    fn app_lock(&self, app: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.app_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_string())
            .or_default()
            .clone()
    }

    pub fn images(&self) -> Option<&Images> {
        self.images.as_ref()
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn handle(&self, m: &MachineRecord) -> Arc<MachineHandle> {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles
            .entry(m.id.clone())
            .or_insert_with(|| {
                Arc::new(MachineHandle {
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                    watch: watch::channel(Snapshot {
                        state: m.state,
                        instance_id: m.instance_id.clone(),
                        event_id: None,
                    })
                    .0,
                })
            })
            .clone()
    }

    // ---- apps -------------------------------------------------------------------------------

    /// Takes the machine's lock, then reads it again: what a mutation acts on is what the
    /// lock protects, not what was read before waiting for it.
    async fn lock_machine(
        &self,
        app: &str,
        id: &str,
    ) -> ServiceResult<(tokio::sync::OwnedMutexGuard<()>, MachineRecord)> {
        let m = self.get_machine(app, id, false).await?;
        // Only the host that runs a machine acts on it; requests reach it by forwarding.
        if self.is_cluster() && m.host_id != self.host_id {
            return Err(ServiceError::Unavailable(format!(
                "machine {id} runs on host {}, not this one ({}); send the request there",
                m.host_id, self.host_id
            )));
        }
        let guard = self.handle(&m).lock.clone().lock_owned().await;
        let m = self.get_machine(app, id, false).await?;
        Ok((guard, m))
    }

    /// [`lock_leased`](Self::lock_leased) for an action on a running machine's processes.
    async fn lock_started(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> ServiceResult<(tokio::sync::OwnedMutexGuard<()>, MachineRecord)> {
        let (guard, m) = self.lock_leased(app, id, nonce).await?;
        require_started(&m)?;
        Ok((guard, m))
    }

    /// [`lock_machine`](Self::lock_machine) for a mutation: also refuses a leased machine
    /// unless `nonce` is the lease's.
    async fn lock_leased(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> ServiceResult<(tokio::sync::OwnedMutexGuard<()>, MachineRecord)> {
        let (guard, m) = self.lock_machine(app, id).await?;
        self.check_lease(&m, nonce).await?;
        Ok((guard, m))
    }

    // ---- reading machines -------------------------------------------------------------------

    async fn load(&self, app: &str, id: &str) -> ServiceResult<MachineRecord> {
        let (a, i) = (app.to_string(), id.to_string());
        db_read(&self.store, move |s| s.get_machine(&a, &i))
            .await?
            .ok_or_else(ServiceError::machine_not_found)
    }

    fn event(
        m: &MachineRecord,
        kind: &str,
        status: MachineState,
        source: Source,
        request: Option<serde_json::Value>,
    ) -> EventRecord {
        EventRecord {
            id: ids::new_ulid(),
            machine_id: m.id.clone(),
            kind: kind.to_string(),
            status: status.as_str().to_string(),
            source: source.as_str().to_string(),
            timestamp: now_ms(),
            request,
        }
    }

    /// Tells the resolver and the proxy what the machine is now.
    fn publish(&self, m: &MachineRecord) {
        self.publish_to_directory(m);
        self.publish_to_proxy(m);
    }

    fn notify(&self, m: &MachineRecord, event_id: Option<String>) {
        self.publish(m);
        let handle = self.handle(m);
        handle.watch.send_replace(Snapshot {
            state: m.state,
            instance_id: m.instance_id.clone(),
            event_id,
        });
    }

    /// Moves `m` to `state`, recording an event of `kind` (durably, but for a machine coming
    /// up), then wakes waiters.
    async fn transition(
        &self,
        m: &mut MachineRecord,
        state: MachineState,
        kind: &str,
        source: Source,
        request: Option<serde_json::Value>,
    ) -> ServiceResult<()> {
        self.transition_with(m, state, kind, source, request, None)
            .await
    }

    /// [`transition`](Self::transition) for the first write of a user's mutation: the lease
    /// (`Some(nonce)`) is checked in the same store transaction as the write.
    async fn transition_with(
        &self,
        m: &mut MachineRecord,
        state: MachineState,
        kind: &str,
        source: Source,
        request: Option<serde_json::Value>,
        lease: Option<Option<&str>>,
    ) -> ServiceResult<()> {
        if !m.state.can_transition_to(state) {
            // Another request moved the machine first (or a bug asked for a jump the state
            // machine does not have): nothing is written.
            return Err(ServiceError::conflict(format!(
                "machine {} cannot go from {} to {state}",
                m.id, m.state
            )));
        }
        // Once a machine runs, its image is stored here: record the digest and labels.
        if state == MachineState::Started
            && m.image_ref.as_ref().is_none_or(|r| r.digest.is_empty())
        {
            self.refresh_image_ref(m).await;
        }
        let from = m.state;
        m.state = state;
        m.updated_at = now_ms();
        let event = Self::event(m, kind, state, source, request);
        let event_id = event.id.clone();
        // A machine coming up is not made durable by an fsync: after a power loss it does not
        // run whatever the store says (hangar_store::Expect::observed). Nor is one going: the
        // `destroyed` (or `failed`) write that follows `destroying` syncs it, and a machine
        // found `started` after a power loss runs nothing either. A request's lease is still
        // checked in the same transaction.
        let observed = matches!(
            state,
            MachineState::Starting | MachineState::Started | MachineState::Destroying
        );
        if let Err(e) = self.save_with(m, false, Some(event), lease, observed).await {
            m.state = from;
            // A reservation made for this transition (a start's admission) is given back.
            self.capacity.track(&m.id, from, guest_size(&m.config));
            return Err(e);
        }
        self.capacity.track(&m.id, state, guest_size(&m.config));
        tracing::info!(
            app = %m.app, machine = %m.id, from = %from, to = %state, event = kind,
            source = source.as_str(), "machine state changed"
        );
        self.metrics
            .transitions
            .get_or_create(&crate::counters::TransitionLabels {
                event: kind.to_string(),
                to: state.to_string(),
            })
            .inc();
        self.notify(m, Some(event_id));
        Ok(())
    }

    /// Writes `m` if nobody wrote it since it was read (the store compares row versions in the
    /// same transaction, and the lease when `lease` is `Some(nonce)`), then takes the new row
    /// version.
    async fn save(
        &self,
        m: &mut MachineRecord,
        new_version: bool,
        event: Option<EventRecord>,
        lease: Option<Option<&str>>,
    ) -> ServiceResult<()> {
        self.save_with(m, new_version, event, lease, false).await
    }

    /// [`save`](Self::save), `observed` as [`hangar_store::Expect::observed`].
    async fn save_with(
        &self,
        m: &mut MachineRecord,
        new_version: bool,
        event: Option<EventRecord>,
        lease: Option<Option<&str>>,
        observed: bool,
    ) -> ServiceResult<()> {
        let rec = m.clone();
        let lease = lease.map(|n| (n.map(str::to_string), now_secs()));
        let row_version = db(&self.store, move |s| {
            let expect = hangar_store::Expect {
                row_version: rec.row_version,
                lease: lease.as_ref().map(|(n, now)| (n.as_deref(), *now)),
                observed,
            };
            s.update_machine(&rec, expect, new_version, event.as_ref())
        })
        .await?;
        m.row_version = row_version;
        Ok(())
    }
}

/// Parts of a config this Hangar cannot run yet, refused when the config is written (create,
/// update), whether or not it launches, rather than failing the machine at its first boot.
fn check_supported(config: &MachineConfig) -> ServiceResult<()> {
    for c in crate::container_plan::container_configs(config) {
        for (volume, path) in &c.mounts {
            let scratch = config
                .volumes
                .iter()
                .flatten()
                .any(|v| &v.name == volume && v.temp_dir.is_some());
            if !scratch {
                return Err(ServiceError::bad_request(format!(
                    "container {:?} mounts volume {volume:?} at {path}: containers mount \
                     temp_dir volumes by name; a persistent volume goes in config.mounts",
                    c.name
                )));
            }
        }
    }
    Ok(())
}

/// Create/update request fields beyond the config that Hangar cannot honour are refused by
/// name, never dropped: `lsvd` (Fly's log-structured volume disks). (`min_secrets_version` and
/// `skip_secrets` are honoured: service::secrets.)
fn check_request_fields(lsvd: Option<bool>) -> ServiceResult<()> {
    if lsvd == Some(true) {
        return Err(ServiceError::bad_request(
            "lsvd: log-structured volume disks are not supported by Hangar",
        ));
    }
    Ok(())
}

/// A machine's guest size as the capacity ledger counts it.
fn guest_size(config: &MachineConfig) -> crate::capacity::Size {
    let g = hangar_api::spec::MachineSpec::from_config(config).guest;
    crate::capacity::Size {
        cpus: g.cpus,
        shared: g.shared,
        memory_mb: g.memory_mb,
    }
}

fn capacity_error(e: crate::capacity::CapacityError) -> ServiceError {
    ServiceError::Capacity(e.to_string())
}

fn lease_conflict(m: &MachineRecord, l: &LeaseRecord) -> ServiceError {
    ServiceError::conflict(format!(
        "machine {} lease currently held by {}, expires at {}",
        m.id,
        l.owner,
        rfc3339_secs(l.expires_at)
    ))
}

fn check_lease_ttl(ttl: i64) -> ServiceResult<i64> {
    if !(1..=MAX_LEASE_TTL).contains(&ttl) {
        return Err(ServiceError::bad_request(format!(
            "invalid lease ttl {ttl}: must be between 1 and {MAX_LEASE_TTL} seconds"
        )));
    }
    Ok(ttl)
}

fn check_region(r: &str) -> ServiceResult<()> {
    if r.len() > 32
        || !r
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ServiceError::bad_request(format!(
            "invalid region {r:?}: use lowercase letters and digits"
        )));
    }
    Ok(())
}

fn check_metadata_key(k: &str) -> ServiceResult<()> {
    if k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_control()) {
        return Err(ServiceError::bad_request(format!(
            "invalid metadata key {k:?}"
        )));
    }
    Ok(())
}

fn mount_volumes(c: &MachineConfig) -> Option<Vec<String>> {
    c.mounts
        .as_ref()
        .map(|ms| ms.iter().map(|m| m.volume.clone()).collect())
}

/// The signal and timeout to stop with: the request's, else `stop_config`'s, else SIGINT/5 s.
pub fn stop_params(config: &MachineConfig, opts: &StopOptions) -> (Signal, Duration) {
    let s = hangar_api::spec::stop_spec(config, opts.signal, opts.timeout);
    (s.signal, s.timeout)
}

/// The image a machine is known by: `image`, else the `app` container's, else the first's.
fn main_image(config: &MachineConfig) -> Option<String> {
    config.image.clone().filter(|i| !i.is_empty()).or_else(|| {
        let containers = config.containers.as_ref()?;
        containers
            .iter()
            .find(|c| c.name == "app")
            .or(containers.first())
            .map(|c| c.image.clone())
    })
}

fn image_ref(config: &MachineConfig) -> Option<ImageRef> {
    let image = main_image(config)?;
    let r = hangar_image::Reference::parse(&image).ok()?;
    Some(ImageRef {
        registry: r.registry,
        repository: r.repository,
        tag: r.tag.unwrap_or_default(),
        digest: r.digest.unwrap_or_default(),
        labels: BTreeMap::new(),
    })
}
