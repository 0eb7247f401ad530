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
use hangar_store::{AppRecord, EventRecord, LeaseRecord, MachineRecord, Store};
use serde_json::json;
use tokio::sync::watch;

use crate::clock::{now_ms, now_secs, rfc3339_secs};
use crate::error::{ApiError, ApiResult};
use crate::runtime::{Adoption, ExecSpec, MachineExit, Runtime};

pub const DEFAULT_ORG: &str = "personal";
/// Default stop timeout (fly.toml `kill_timeout`).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a single `wait` call blocks (Fly's proxy limit).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_LEASE_TTL: i64 = 30;
const DEFAULT_MAX_RETRIES: i64 = 10;
const RESTART_WINDOW: Duration = Duration::from_secs(300);
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
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::Platform => "flyd",
        }
    }
}

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
    /// Where each machine's dir (logs, Pilot's files) lives.
    machines_dir: std::path::PathBuf,
    images: Option<crate::images::Images>,
    /// Per app: machine creates hold it shared, app deletion exclusively, so a machine cannot
    /// be created into an app being deleted (its row would vanish under a running sandbox).
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

/// Runs a blocking store call off the async workers (SQLite commits fsync).
async fn db<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> hangar_store::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
        .map_err(ApiError::from)
}

pub struct ListFilter {
    pub include_deleted: bool,
    pub region: Option<String>,
    pub states: Option<Vec<MachineState>>,
    pub metadata: Vec<(String, String)>,
}

/// 412 unless the machine is started (actions on its processes).
fn require_started(m: &MachineRecord) -> ApiResult<()> {
    if m.state != MachineState::Started {
        return Err(ApiError::precondition(format!(
            "machine is {}, not started",
            m.state
        )));
    }
    Ok(())
}

/// First delay between automatic restarts of a crash-looping machine.
const RESTART_BACKOFF: Duration = Duration::from_millis(250);

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
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        region: String,
        machines_dir: std::path::PathBuf,
        images: Option<crate::images::Images>,
        capacity: crate::capacity::Ledger,
        host_id: String,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            host_id,
            capacity,
            store,
            runtime,
            machines_dir,
            images,
            handles: Mutex::new(HashMap::new()),
            region,
            me: me.clone(),
            app_locks: Mutex::new(HashMap::new()),
        })
    }

    fn app_lock(&self, app: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.app_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_string())
            .or_default()
            .clone()
    }

    pub fn images(&self) -> Option<&crate::images::Images> {
        self.images.as_ref()
    }

    /// Image references and digests of every machine that is not destroyed.
    /// Every image reference or digest a live machine uses, with that machine (`app/id`).
    pub async fn image_refs_in_use(&self) -> ApiResult<Vec<(String, String)>> {
        let machines = db(&self.store, |s| s.list_live_machines()).await?;
        let mut refs = Vec::new();
        for m in machines {
            let user = format!("{}/{}", m.app, m.id);
            let mut add = |r: String| refs.push((r, user.clone()));
            if let Some(i) = m.config.image.clone().filter(|i| !i.is_empty()) {
                add(i);
            }
            for c in m.config.containers.iter().flatten() {
                add(c.image.clone());
            }
            if let Some(r) = m.image_ref.as_ref().filter(|r| !r.digest.is_empty()) {
                add(r.digest.clone());
            }
            for digest in m.image_digests.values() {
                add(digest.clone());
            }
        }
        Ok(refs)
    }

    pub fn machines_dir(&self) -> &std::path::Path {
        &self.machines_dir
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

    pub async fn create_app(
        &self,
        name: String,
        org: String,
        network: String,
        idempotency_key: Option<String>,
        app_role: String,
    ) -> ApiResult<AppRecord> {
        ids::check_app_name(&name).map_err(ApiError::bad_request)?;
        let app = AppRecord {
            id: ids::new_app_id(),
            name,
            org_slug: org,
            network,
            internal_numeric_id: 0,
            created_at: now_ms(),
            idempotency_key,
            app_role,
        };
        db(&self.store, move |s| s.create_app(&app)).await
    }

    pub async fn app_by_idempotency_key(&self, key: &str) -> ApiResult<Option<AppRecord>> {
        let k = key.to_string();
        db(&self.store, move |s| s.get_app_by_idempotency_key(&k)).await
    }

    pub async fn get_app(&self, name: &str) -> ApiResult<AppRecord> {
        let n = name.to_string();
        db(&self.store, move |s| s.get_app(&n))
            .await?
            .ok_or_else(|| ApiError::app_not_found(name))
    }

    pub async fn list_apps(&self, org: Option<String>) -> ApiResult<Vec<(AppRecord, i64)>> {
        db(&self.store, move |s| {
            let apps = s.list_apps(org.as_deref())?;
            apps.into_iter()
                .map(|a| {
                    let n = s.count_machines(&a.name)?;
                    Ok((a, n))
                })
                .collect()
        })
        .await
    }

    pub async fn count_machines(&self, app: &str) -> ApiResult<i64> {
        let a = app.to_string();
        db(&self.store, move |s| s.count_machines(&a)).await
    }

    /// Deletes an app; with `force`, destroys its machines first.
    pub async fn delete_app(&self, name: &str, force: bool) -> ApiResult<()> {
        let lock = self.app_lock(name);
        let _exclusive = lock.write().await;
        self.get_app(name).await?;
        let machines = self.list_machine_records(name, false).await?;
        // As on Fly (reference 1.1): machines that are stopped or never started go with the
        // app; only running ones need `force` (which stops them first).
        let running: Vec<&MachineRecord> = machines
            .iter()
            .filter(|m| m.state.may_be_running())
            .collect();
        if !running.is_empty() && !force {
            return Err(ApiError::precondition(format!(
                "app {name:?} still has {} running machine(s) ({}); stop them first or pass force=true",
                running.len(),
                running
                    .iter()
                    .map(|m| format!("{} {}", m.id, m.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for m in machines {
            self.destroy_locked(&m.app, &m.id, None, true, true).await?;
        }
        let n = name.to_string();
        db(&self.store, move |s| s.delete_app(&n)).await?;
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.retain(|_, h| h.watch.borrow().state != MachineState::Destroyed);
        drop(handles);
        self.app_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(())
    }

    /// Takes the machine's lock, then reads it again: what a mutation acts on is what the
    /// lock protects, not what was read before waiting for it.
    async fn lock_machine(
        &self,
        app: &str,
        id: &str,
    ) -> ApiResult<(tokio::sync::OwnedMutexGuard<()>, MachineRecord)> {
        let m = self.get_machine(app, id, false).await?;
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
    ) -> ApiResult<(tokio::sync::OwnedMutexGuard<()>, MachineRecord)> {
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
    ) -> ApiResult<(tokio::sync::OwnedMutexGuard<()>, MachineRecord)> {
        let (guard, m) = self.lock_machine(app, id).await?;
        self.check_lease(&m, nonce).await?;
        Ok((guard, m))
    }

    // ---- reading machines -------------------------------------------------------------------

    async fn load(&self, app: &str, id: &str) -> ApiResult<MachineRecord> {
        let (a, i) = (app.to_string(), id.to_string());
        db(&self.store, move |s| s.get_machine(&a, &i))
            .await?
            .ok_or_else(ApiError::machine_not_found)
    }

    /// A machine that is not destroyed; a destroyed one is `machine not found`.
    pub async fn get_machine(
        &self,
        app: &str,
        id: &str,
        include_deleted: bool,
    ) -> ApiResult<MachineRecord> {
        let m = self.load(app, id).await?;
        if m.state == MachineState::Destroyed && !include_deleted {
            return Err(ApiError::machine_not_found());
        }
        Ok(m)
    }

    async fn list_machine_records(
        &self,
        app: &str,
        include_deleted: bool,
    ) -> ApiResult<Vec<MachineRecord>> {
        let a = app.to_string();
        db(&self.store, move |s| s.list_machines(&a, include_deleted)).await
    }

    pub async fn list_machines(
        &self,
        app: &str,
        filter: ListFilter,
    ) -> ApiResult<Vec<MachineRecord>> {
        self.get_app(app).await?;
        let all = self
            .list_machine_records(app, filter.include_deleted)
            .await?;
        Ok(all
            .into_iter()
            .filter(|m| filter.region.as_deref().is_none_or(|r| m.region == r))
            .filter(|m| filter.states.as_ref().is_none_or(|s| s.contains(&m.state)))
            .filter(|m| {
                filter.metadata.iter().all(|(k, v)| {
                    m.config
                        .metadata
                        .as_ref()
                        .and_then(|md| md.get(k))
                        .is_some_and(|mv| mv == v)
                })
            })
            .collect())
    }

    pub async fn events(&self, machine_id: &str, limit: usize) -> ApiResult<Vec<EventRecord>> {
        let id = machine_id.to_string();
        db(&self.store, move |s| s.list_events(&id, limit)).await
    }

    pub async fn versions(
        &self,
        app: &str,
        id: &str,
    ) -> ApiResult<Vec<hangar_store::VersionRecord>> {
        let m = self.get_machine(app, id, false).await?;
        let mut versions = db(&self.store, move |s| s.list_versions(&m.id)).await?;
        versions.reverse();
        Ok(versions)
    }

    pub async fn active_lease(&self, machine_id: &str) -> ApiResult<Option<LeaseRecord>> {
        let id = machine_id.to_string();
        let lease = db(&self.store, move |s| s.get_lease(&id)).await?;
        Ok(lease.filter(|l| l.expires_at > now_secs()))
    }

    // ---- writes -----------------------------------------------------------------------------

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

    fn notify(&self, m: &MachineRecord, event_id: Option<String>) {
        let handle = self.handle(m);
        handle.watch.send_replace(Snapshot {
            state: m.state,
            instance_id: m.instance_id.clone(),
            event_id,
        });
    }

    /// Moves `m` to `state`, recording an event of `kind`, durably, then wakes waiters.
    async fn transition(
        &self,
        m: &mut MachineRecord,
        state: MachineState,
        kind: &str,
        source: Source,
        request: Option<serde_json::Value>,
    ) -> ApiResult<()> {
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
    ) -> ApiResult<()> {
        if !m.state.can_transition_to(state) {
            // Another request moved the machine first (or a bug asked for a jump the state
            // machine does not have): nothing is written.
            return Err(ApiError::conflict(format!(
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
        if let Err(e) = self.save(m, false, Some(event), lease).await {
            m.state = from;
            // A reservation made for this transition (a start's admission) is given back.
            self.capacity.track(&m.id, from, guest_size(&m.config));
            return Err(e);
        }
        self.capacity.track(&m.id, state, guest_size(&m.config));
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
    ) -> ApiResult<()> {
        let rec = m.clone();
        let lease = lease.map(|n| (n.map(str::to_string), now_secs()));
        let row_version = db(&self.store, move |s| {
            let expect = hangar_store::Expect {
                row_version: rec.row_version,
                lease: lease.as_ref().map(|(n, now)| (n.as_deref(), *now)),
            };
            s.update_machine(&rec, expect, new_version, event.as_ref())
        })
        .await?;
        m.row_version = row_version;
        Ok(())
    }

    /// Reserves the machine's size on this host, or Fly's capacity error (a 409).
    fn admit(&self, id: &str, config: &MachineConfig) -> ApiResult<()> {
        self.capacity
            .admit(id, guest_size(config))
            .map_err(capacity_error)
    }

    /// Whether the machine would be admitted now, without reserving anything.
    fn check_fits(&self, id: &str, config: &MachineConfig) -> ApiResult<()> {
        self.capacity
            .fits(id, guest_size(config))
            .map_err(capacity_error)
    }

    /// Boots the machine's current version and records `started`, or `failed` with the reason.
    async fn boot(&self, m: &mut MachineRecord, kind: &str) -> ApiResult<()> {
        use futures_util::FutureExt;
        // A version created without a launch pins its images at its first start.
        if crate::container_plan::container_configs(&m.config)
            .iter()
            .any(|c| !m.image_digests.contains_key(&c.image))
        {
            let pins = self.runtime.fetch_images(&m.config).await;
            let pins = self.or_fail(m, kind, pins).await?;
            m.image_digests = pins;
            self.save(m, false, None, None).await?;
        }
        // A bug in the runtime must leave the machine `failed`, not stuck in `starting`: the
        // panic becomes an error (and whatever it left behind is cleaned up by the next start
        // or the destroy).
        let started = std::panic::AssertUnwindSafe(self.runtime.start(m))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                tracing::error!(machine = %m.id, "starting the machine panicked: {what}");
                Err(crate::runtime::RuntimeError::Failed(format!(
                    "internal error while starting: {what}"
                )))
            });
        self.or_fail(m, kind, started).await?;
        self.transition(m, MachineState::Started, kind, Source::Platform, None)
            .await
    }

    /// A runtime failure in the middle of a transition leaves the machine `failed` (with the
    /// error in the event), never stuck in `stopping` or `destroying`.
    async fn or_fail<T>(
        &self,
        m: &mut MachineRecord,
        kind: &str,
        result: Result<T, crate::runtime::RuntimeError>,
    ) -> ApiResult<T> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let request = Some(json!({ "error": e.to_string() }));
                self.transition(m, MachineState::Failed, kind, Source::Platform, request)
                    .await?;
                Err(e.into())
            }
        }
    }

    /// Refuses a mutation of a leased machine unless `nonce` matches the lease.
    async fn check_lease(&self, m: &MachineRecord, nonce: Option<&str>) -> ApiResult<()> {
        if let Some(lease) = self.active_lease(&m.id).await? {
            if nonce != Some(lease.nonce.as_str()) {
                return Err(lease_conflict(m, &lease));
            }
        }
        Ok(())
    }

    pub async fn create_machine(
        &self,
        app: &str,
        req: CreateMachineRequest,
    ) -> ApiResult<(MachineRecord, Option<String>)> {
        // Looked up first so that unknown names never get a lock entry; again under the lock,
        // which a deletion may have waited for.
        self.get_app(app).await?;
        let lock = self.app_lock(app);
        let _shared = lock.read().await;
        let app_rec = self.get_app(app).await?;
        let mut config = req.config;
        validate_config(&mut config).map_err(|e| ApiError::bad_request(e.to_string()))?;
        check_supported(&config)?;
        check_request_fields(req.lsvd, req.min_secrets_version)?;
        if let Some(name) = &req.name {
            ids::check_machine_name(name).map_err(ApiError::bad_request)?;
        }
        let region = match req.region.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => {
                check_region(r)?;
                r.to_string()
            }
            None => self.region.clone(),
        };
        let lease_ttl = req.lease_ttl.map(check_lease_ttl).transpose()?;
        let mut image_digests = Default::default();
        let id = ids::new_machine_id();
        if !req.skip_launch {
            self.runtime.preflight(&config)?;
            self.check_fits(&id, &config)?;
            image_digests = self.runtime.fetch_images(&config).await?;
        }
        let now = now_ms();
        let instance_id = ids::new_ulid();
        let mut m = MachineRecord {
            id: id.clone(),
            app: app.to_string(),
            name: req.name.clone().unwrap_or_else(ids::new_machine_name),
            state: MachineState::Created,
            region,
            instance_id: instance_id.clone(),
            private_ip: private_ip(app_rec.internal_numeric_id),
            created_at: now,
            updated_at: now,
            cordoned: req.skip_service_registration,
            image_ref: image_ref(&config),
            image_digests,
            config,
            row_version: 0,
            host_id: self.host_id.clone(),
        };
        let lease = lease_ttl.map(|ttl| LeaseRecord {
            machine_id: id.clone(),
            nonce: ids::new_nonce(),
            expires_at: now_secs() + ttl,
            owner: LEASE_OWNER.to_string(),
            description: String::new(),
            version: instance_id.clone(),
        });
        self.refresh_image_ref(&mut m).await;
        let event = Self::event(&m, "launch", MachineState::Created, Source::User, None);
        // A generated name can collide; try a few before giving up.
        let mut attempts = 0;
        loop {
            let (rec, ev, l) = (m.clone(), event.clone(), lease.clone());
            match db(&self.store, move |s| {
                s.insert_machine(&rec, &ev, l.as_ref())
            })
            .await
            {
                Ok(()) => break,
                Err(e) if e.code == Some("name_taken") && req.name.is_none() && attempts < 5 => {
                    attempts += 1;
                    m.name = ids::new_machine_name();
                }
                Err(e) => return Err(e),
            }
        }
        self.notify(&m, Some(event.id.clone()));
        if !req.skip_launch {
            // Boot in the background, as Fly does: the response says `created`.
            let this = self.me.clone();
            let (app, id) = (m.app.clone(), m.id.clone());
            tokio::spawn(async move {
                if let Some(this) = this.upgrade() {
                    if let Err(e) = this.start_internal(&app, &id, Source::Platform, None).await {
                        tracing::warn!(machine = %id, error = %e.message, "launch failed");
                    }
                }
            });
        }
        Ok((m, lease.map(|l| l.nonce)))
    }

    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: CreateMachineRequest,
        nonce: Option<&str>,
    ) -> ApiResult<MachineRecord> {
        let mut config = req.config;
        validate_config(&mut config).map_err(|e| ApiError::bad_request(e.to_string()))?;
        check_supported(&config)?;
        check_request_fields(req.lsvd, req.min_secrets_version)?;
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        if let Some(v) = req.current_version.as_deref().filter(|v| !v.is_empty()) {
            if v != m.instance_id {
                return Err(ApiError::precondition(format!(
                    "machine version mismatch: current_version {v} is not the current version {}",
                    m.instance_id
                )));
            }
        }
        if !m.state.can_update() {
            return Err(ApiError::precondition(format!(
                "unable to update machine while it is {}",
                m.state
            )));
        }
        if let (Some(old), Some(new)) = (mount_volumes(&m.config), mount_volumes(&config)) {
            if old != new {
                return Err(ApiError::bad_request(
                    "config.mounts: volumes cannot be changed by an update (only a mount's path)",
                ));
            }
        }
        // Request fields besides the config: each takes effect or is refused, never dropped.
        if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty()) {
            if region != m.region {
                return Err(ApiError::bad_request(format!(
                    "region: a machine cannot move from {} to {region} by an update; create one there",
                    m.region
                )));
            }
        }
        if req.lease_ttl.is_some_and(|t| t != 0) {
            return Err(ApiError::bad_request(
                "lease_ttl: an update does not take a lease; acquire one with POST …/lease first",
            ));
        }
        let new_name = req.name.clone().filter(|n| !n.is_empty() && *n != m.name);
        if let Some(n) = &new_name {
            ids::check_machine_name(n).map_err(ApiError::bad_request)?;
        }
        // A suspended machine still holds its (frozen) sandbox: it is stopped like a running one.
        let was_running = matches!(m.state, MachineState::Started | MachineState::Suspended);
        let launch = !req.skip_launch;
        let mut image_digests = Default::default();
        if launch {
            self.runtime.preflight(&config)?;
            self.check_fits(&m.id, &config)?;
            image_digests = self.runtime.fetch_images(&config).await?;
        }
        let previous = m.state;
        let old_version = m.instance_id.clone();
        // Metadata belongs to the machine, not to a version; an update's config carries its own.
        m.config = config;
        m.image_ref = image_ref(&m.config);
        // A new version runs what its images are now (a skipped launch pins at its first start).
        m.image_digests = image_digests;
        if let Some(n) = new_name {
            m.name = n;
        }
        // As at create: the machine is kept out of service discovery (the proxy) while set.
        m.cordoned = req.skip_service_registration;
        m.instance_id = ids::new_ulid();
        m.state = MachineState::Replacing;
        m.updated_at = now_ms();
        let event = Self::event(
            &m,
            "update",
            MachineState::Replacing,
            Source::User,
            Some(json!({ "previous_version": old_version })),
        );
        let event_id = event.id.clone();
        self.save(&mut m, true, Some(event), Some(nonce)).await?;
        self.notify(&m, Some(event_id));

        if was_running {
            let old = MachineRecord {
                instance_id: old_version,
                ..m.clone()
            };
            let (signal, timeout) = stop_params(
                &old.config,
                &StopOptions {
                    signal: None,
                    timeout: None,
                },
            );
            let stopped = self.runtime.stop(&old, signal, timeout).await;
            self.or_fail(&mut m, "update", stopped).await?;
        }
        let final_state = match (launch, was_running) {
            (true, _) => MachineState::Started,
            (false, true) => MachineState::Stopped,
            (false, false) => previous,
        };
        if launch {
            let started = self.runtime.start(&m).await;
            self.or_fail(&mut m, "update", started).await?;
        }
        self.transition(&mut m, final_state, "update", Source::Platform, None)
            .await?;
        Ok(m)
    }

    pub async fn start(&self, app: &str, id: &str, nonce: Option<&str>) -> ApiResult<MachineState> {
        self.start_internal(app, id, Source::User, Some(nonce))
            .await
    }

    /// Starts (or resumes) a machine; returns the state it was in. A user start (`lease` is
    /// `Some`) checks the lease and the schedule under the machine's lock.
    async fn start_internal(
        &self,
        app: &str,
        id: &str,
        source: Source,
        lease: Option<Option<&str>>,
    ) -> ApiResult<MachineState> {
        if lease.is_some() {
            // A user start during a stop (or destroy, update, restart) is refused at once
            // rather than queued behind it and run afterwards.
            let now = self.get_machine(app, id, false).await?;
            if now.state.refuses_start_while_busy() {
                return Err(ApiError::precondition(format!(
                    "unable to start machine from state {}",
                    now.state
                )));
            }
        }
        let (_guard, mut m) = self.lock_machine(app, id).await?;
        if let Some(nonce) = lease {
            self.check_lease(&m, nonce).await?;
            if m.config.schedule.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::bad_request(
                    "machines with a schedule are started by the scheduler and cannot be started manually",
                ));
            }
        }
        let previous = m.state;
        match m.state {
            MachineState::Started => return Ok(previous),
            s if s.can_start() => {}
            other => {
                return Err(ApiError::precondition(format!(
                    "unable to start machine from state {other}"
                )))
            }
        }
        if m.state == MachineState::Suspended {
            // Resume: thaw the frozen machine; its memory was kept.
            let resume = Some(json!({"resume": true}));
            self.transition_with(
                &mut m,
                MachineState::Starting,
                "start",
                source,
                resume,
                lease,
            )
            .await?;
            return match self.runtime.set_frozen(&m, false).await {
                Ok(()) => {
                    self.transition(
                        &mut m,
                        MachineState::Started,
                        "start",
                        Source::Platform,
                        None,
                    )
                    .await?;
                    Ok(previous)
                }
                Err(e) => {
                    let error = Some(json!({"error": e.to_string()}));
                    self.transition(
                        &mut m,
                        MachineState::Failed,
                        "start",
                        Source::Platform,
                        error,
                    )
                    .await?;
                    Err(e.into())
                }
            };
        }
        self.runtime.preflight(&m.config)?;
        self.admit(&m.id, &m.config)?;
        self.transition_with(&mut m, MachineState::Starting, "start", source, None, lease)
            .await?;
        self.boot(&mut m, "start").await?;
        Ok(previous)
    }

    pub async fn stop(
        &self,
        app: &str,
        id: &str,
        opts: StopOptions,
        nonce: Option<&str>,
    ) -> ApiResult<()> {
        if let Some(sig) = opts.signal {
            if !sig.is_one_of(hangar_api::signal::STOP_SIGNALS) {
                return Err(ApiError::bad_request(format!(
                    "invalid stop signal {sig}; use one of {}",
                    hangar_api::signal::STOP_SIGNALS.join(", ")
                )));
            }
        }
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        match m.state {
            MachineState::Started => {
                let (signal, timeout) = stop_params(&m.config, &opts);
                self.transition_with(&mut m, MachineState::Stopping, "stop", Source::User, Some(json!({"signal": signal.name(), "timeout": hangar_api::GoDuration(timeout)})), Some(nonce)).await?;
                let stopped = self.runtime.stop(&m, signal, timeout).await;
                if let Some(exit) = self.or_fail(&mut m, "stop", stopped).await? {
                    let restarts = self.recent_restarts(&m.id).await?;
                    self.record_exit(&m, &exit, true, false, restarts).await?;
                }
                self.transition(
                    &mut m,
                    MachineState::Stopped,
                    "stop",
                    Source::Platform,
                    None,
                )
                .await?;
            }
            MachineState::Suspended => {
                // Stopping a suspended machine throws its snapshot away.
                let stopped = self.runtime.stop(&m, Signal::SIGKILL, Duration::ZERO).await;
                self.or_fail(&mut m, "stop", stopped).await?;
                self.transition_with(
                    &mut m,
                    MachineState::Stopped,
                    "stop",
                    Source::User,
                    None,
                    Some(nonce),
                )
                .await?;
            }
            // A failed machine is recovered by a stop (reference 3.1): whatever is left of it
            // goes, and it is `stopped`, ready to start again.
            MachineState::Failed => {
                if let Err(e) = self.runtime.stop(&m, Signal::SIGKILL, Duration::ZERO).await {
                    tracing::warn!(machine = %m.id, error = %e, "releasing a failed machine");
                }
                self.transition_with(
                    &mut m,
                    MachineState::Stopped,
                    "stop",
                    Source::User,
                    None,
                    Some(nonce),
                )
                .await?;
            }
            MachineState::Created | MachineState::Stopped => {}
            other => {
                return Err(ApiError::precondition(format!(
                    "unable to stop machine while it is {other}"
                )))
            }
        }
        Ok(())
    }

    /// Freezes a started machine's cgroup; `start` thaws it.
    pub async fn suspend(&self, app: &str, id: &str, nonce: Option<&str>) -> ApiResult<()> {
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        match m.state {
            MachineState::Suspended => return Ok(()),
            s if s.can_suspend() => {}
            other => {
                return Err(ApiError::precondition(format!(
                    "unable to suspend machine while it is {other}"
                )))
            }
        }
        self.transition_with(
            &mut m,
            MachineState::Suspending,
            "suspend",
            Source::User,
            None,
            Some(nonce),
        )
        .await?;
        match self.runtime.set_frozen(&m, true).await {
            Ok(()) => {
                self.transition(
                    &mut m,
                    MachineState::Suspended,
                    "suspend",
                    Source::Platform,
                    None,
                )
                .await
            }
            Err(e) => {
                // Freezing failed, so the machine still runs.
                self.transition(
                    &mut m,
                    MachineState::Started,
                    "suspend",
                    Source::Platform,
                    Some(json!({"error": e.to_string()})),
                )
                .await?;
                Err(e.into())
            }
        }
    }

    pub async fn signal(
        &self,
        app: &str,
        id: &str,
        signal: Signal,
        nonce: Option<&str>,
    ) -> ApiResult<()> {
        let (_guard, m) = self.lock_started(app, id, nonce).await?;
        self.runtime.signal(&m, signal).await?;
        Ok(())
    }

    /// Runs a command in a started machine.
    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        exec: ExecSpec,
        outside_containers: bool,
    ) -> ApiResult<hangar_api::ExecResponse> {
        let m = self.started(app, id).await?;
        // An image machine's one container is the machine; a multi-container machine has
        // nothing to run in outside its containers (Pilot's own view is not the guest's).
        if outside_containers && m.config.containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(ApiError::bad_request(
                "machine: commands run inside a container here; pass container (one of the \
                 machine's containers) instead",
            ));
        }
        Ok(self.runtime.exec(&m, exec).await?)
    }

    pub async fn ps(&self, app: &str, id: &str) -> ApiResult<Vec<hangar_api::ProcessStat>> {
        let m = self.started(app, id).await?;
        Ok(self.runtime.ps(&m).await?)
    }

    /// A started machine, for the actions that need its processes.
    async fn started(&self, app: &str, id: &str) -> ApiResult<MachineRecord> {
        let m = self.get_machine(app, id, false).await?;
        require_started(&m)?;
        Ok(m)
    }

    /// `GET …/memory`: the machine's memory limit and what is free under it, in MB.
    pub async fn memory(&self, app: &str, id: &str) -> ApiResult<hangar_api::MemoryResponse> {
        let m = self.started(app, id).await?;
        let (limit, usage) = self.runtime.memory(&m).await?;
        Ok(memory_response(limit, usage))
    }

    /// `PUT …/memory`: moves the balloon. The limit may not exceed the machine's memory
    /// (`max_memory_mb` when set, else `memory_mb`); it lasts until the machine next boots.
    pub async fn set_memory_limit(
        &self,
        app: &str,
        id: &str,
        limit_mb: i64,
        nonce: Option<&str>,
    ) -> ApiResult<hangar_api::MemoryResponse> {
        let (_guard, m) = self.lock_started(app, id, nonce).await?;
        let guest = m.config.guest.clone().unwrap_or_default();
        let ceiling = guest
            .max_memory_mb
            .filter(|&c| c > 0)
            .unwrap_or(guest.memory_mb);
        if limit_mb < MIN_MEMORY_LIMIT_MB || limit_mb > ceiling {
            return Err(ApiError::bad_request(format!(
                "limit_mb must be between {MIN_MEMORY_LIMIT_MB} and {ceiling} (the machine's memory)"
            )));
        }
        self.runtime
            .set_memory_limit(&m, (limit_mb as u64).saturating_mul(1 << 20))
            .await?;
        let (limit, usage) = self.runtime.memory(&m).await?;
        Ok(memory_response(limit, usage))
    }

    /// `POST …/memory/reclaim`: frees up to `amount_mb` of the machine's memory.
    pub async fn reclaim_memory(
        &self,
        app: &str,
        id: &str,
        amount_mb: i64,
        nonce: Option<&str>,
    ) -> ApiResult<hangar_api::ReclaimMemoryResponse> {
        let (_guard, m) = self.lock_started(app, id, nonce).await?;
        if amount_mb <= 0 || amount_mb > 1 << 20 {
            return Err(ApiError::bad_request(
                "amount_mb must be greater than zero (and at most 1048576)",
            ));
        }
        let freed = self
            .runtime
            .reclaim_memory(&m, (amount_mb as u64).saturating_mul(1 << 20))
            .await?;
        Ok(hangar_api::ReclaimMemoryResponse {
            actual_mb: (freed >> 20) as i64,
        })
    }

    /// Live container statuses of a started machine (for the machine JSON).
    pub async fn containers(
        &self,
        m: &MachineRecord,
    ) -> Option<Vec<crate::runtime::ContainerView>> {
        if m.state != MachineState::Started {
            return None;
        }
        self.runtime.containers(m).await
    }

    pub async fn restart(
        &self,
        app: &str,
        id: &str,
        opts: StopOptions,
        nonce: Option<&str>,
    ) -> ApiResult<()> {
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        if !m.state.can_restart() {
            return Err(ApiError::precondition(format!(
                "unable to restart machine: it is {}, not started",
                m.state
            )));
        }
        let (signal, timeout) = stop_params(&m.config, &opts);
        self.transition_with(
            &mut m,
            MachineState::Restarting,
            "restart",
            Source::User,
            None,
            Some(nonce),
        )
        .await?;
        let stopped = self.runtime.stop(&m, signal, timeout).await;
        if let Some(exit) = self.or_fail(&mut m, "restart", stopped).await? {
            let restarts = self.recent_restarts(&m.id).await?;
            self.record_exit(&m, &exit, true, true, restarts).await?;
        }
        self.boot(&mut m, "restart").await
    }

    pub async fn destroy(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> ApiResult<()> {
        self.destroy_locked(app, id, nonce, force, false).await
    }

    async fn destroy_locked(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
        force: bool,
        skip_lease: bool,
    ) -> ApiResult<()> {
        if force {
            // A stop in progress holds the machine's lock for up to its whole grace period;
            // a forced destroy does not wait that out: it kills the processes, which ends the
            // stop, and then takes the lock.
            let m = self.get_machine(app, id, false).await?;
            // A start waiting for its containers holds the lock as long (up to 30 s).
            let stopping = matches!(
                m.state,
                MachineState::Stopping
                    | MachineState::Restarting
                    | MachineState::Replacing
                    | MachineState::Starting
            );
            if stopping && (skip_lease || self.check_lease(&m, nonce).await.is_ok()) {
                if let Err(e) = self.runtime.signal(&m, Signal::SIGKILL).await {
                    tracing::debug!(machine = %m.id, "forced destroy: kill during stop: {e}");
                }
            }
        }
        let (_guard, mut m) = self.lock_machine(app, id).await?;
        if !skip_lease {
            self.check_lease(&m, nonce).await?;
        }
        let stoppable = m.state.can_destroy_without_force();
        if !stoppable && !force {
            return Err(ApiError::precondition(
                "unable to destroy machine, not currently stopped or suspended (use force=true)",
            ));
        }
        // The platform's own destroys (auto_destroy, app deletion) skip the lease.
        let lease = (!skip_lease).then_some(nonce);
        self.transition_with(
            &mut m,
            MachineState::Destroying,
            "destroy",
            Source::User,
            None,
            lease,
        )
        .await?;
        if !stoppable {
            let stopped = self.runtime.stop(&m, Signal::SIGKILL, Duration::ZERO).await;
            self.or_fail(&mut m, "destroy", stopped).await?;
        }
        let destroyed = self.runtime.destroy(&m).await;
        self.or_fail(&mut m, "destroy", destroyed).await?;
        let mid = m.id.clone();
        db(&self.store, move |s| s.delete_lease(&mid)).await?;
        self.transition(
            &mut m,
            MachineState::Destroyed,
            "destroy",
            Source::Platform,
            None,
        )
        .await?;
        // Waiters already woke; a later wait builds a fresh handle from the stored state.
        self.forget(&m.id);
        Ok(())
    }

    /// Drops the in-memory bookkeeping of a destroyed machine so churn does not grow it.
    fn forget(&self, id: &str) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub async fn set_cordoned(
        &self,
        app: &str,
        id: &str,
        cordoned: bool,
        nonce: Option<&str>,
    ) -> ApiResult<()> {
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        if m.cordoned != cordoned {
            m.cordoned = cordoned;
            m.updated_at = now_ms();
            self.save(&mut m, false, None, Some(nonce)).await?;
        }
        Ok(())
    }

    // ---- metadata ---------------------------------------------------------------------------

    /// Applies metadata changes (`None` deletes) without creating a new version.
    pub async fn update_metadata(
        &self,
        app: &str,
        id: &str,
        changes: BTreeMap<String, Option<String>>,
        machine_version: Option<&str>,
        nonce: Option<&str>,
    ) -> ApiResult<()> {
        for key in changes.keys() {
            check_metadata_key(key)?;
        }
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        if let Some(v) = machine_version.filter(|v| !v.is_empty()) {
            if v != m.instance_id {
                return Err(ApiError::new(
                    axum::http::StatusCode::PRECONDITION_FAILED,
                    format!(
                        "machine_version {v} is stale; the current version is {}",
                        m.instance_id
                    ),
                ));
            }
        }
        let metadata = m.config.metadata.get_or_insert_with(BTreeMap::new);
        for (k, v) in changes {
            match v.filter(|v| !v.is_empty()) {
                Some(v) => {
                    metadata.insert(k, v);
                }
                None => {
                    metadata.remove(&k);
                }
            }
        }
        m.updated_at = now_ms();
        self.save(&mut m, false, None, Some(nonce)).await
    }

    // ---- leases -----------------------------------------------------------------------------

    pub async fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Option<i64>,
        description: Option<String>,
        nonce: Option<&str>,
    ) -> ApiResult<LeaseRecord> {
        let ttl = check_lease_ttl(ttl.unwrap_or(DEFAULT_LEASE_TTL))?;
        let (_guard, m) = self.lock_machine(app, id).await?;
        let current = self.active_lease(&m.id).await?;
        let lease = match (current, nonce) {
            (Some(l), Some(n)) if l.nonce == n => LeaseRecord {
                expires_at: now_secs() + ttl,
                description: description.unwrap_or(l.description.clone()),
                ..l
            },
            (Some(l), _) => return Err(lease_conflict(&m, &l)),
            (None, _) => LeaseRecord {
                machine_id: m.id.clone(),
                nonce: ids::new_nonce(),
                expires_at: now_secs() + ttl,
                owner: LEASE_OWNER.to_string(),
                description: description.unwrap_or_default(),
                version: m.instance_id.clone(),
            },
        };
        let rec = lease.clone();
        db(&self.store, move |s| s.put_lease(&rec)).await?;
        Ok(lease)
    }

    pub async fn release_lease(&self, app: &str, id: &str, nonce: Option<&str>) -> ApiResult<()> {
        let Some(nonce) = nonce else {
            return Err(ApiError::bad_request(
                "releasing a lease needs its nonce in the fly-machine-lease-nonce header",
            ));
        };
        let (_guard, m) = self.lock_machine(app, id).await?;
        let Some(lease) = self.active_lease(&m.id).await? else {
            return Err(ApiError::not_found("lease not found"));
        };
        if lease.nonce != nonce {
            return Err(lease_conflict(&m, &lease));
        }
        let mid = m.id.clone();
        db(&self.store, move |s| s.delete_lease(&mid)).await
    }

    // ---- wait -------------------------------------------------------------------------------

    /// Blocks until the machine (or the given version of it) is in one of `targets`.
    pub async fn wait(
        &self,
        app: &str,
        id: &str,
        targets: &[WaitTarget],
        timeout: Duration,
        version: Option<&str>,
        after_event: Option<&str>,
    ) -> ApiResult<(Snapshot, String)> {
        let m = self.load(app, id).await?;
        if let Some(v) = version {
            if v != m.instance_id {
                let (mid, vv) = (m.id.clone(), v.to_string());
                if !db(&self.store, move |s| s.has_version(&mid, &vv)).await? {
                    return Err(ApiError::bad_request(format!(
                        "version {v} is not a version of machine {id}"
                    )));
                }
            }
        }
        let handle = self.handle(&m);
        let mut rx = handle.watch.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snap = rx.borrow_and_update().clone();
            let (state, reported_version) = match version {
                Some(v) if v != snap.instance_id => (MachineState::Replaced, v.to_string()),
                _ => (snap.state, snap.instance_id.clone()),
            };
            let recent_enough =
                after_event.is_none_or(|after| snap.event_id.as_deref().is_some_and(|e| e > after));
            if recent_enough && targets.iter().any(|t| t.matches(state)) {
                return Ok((Snapshot { state, ..snap }, reported_version));
            }
            // A failed machine only moves again when someone acts on it: waiting for another
            // state would just time out, so say why now.
            if state.is_terminal() || state == MachineState::Failed {
                let mut msg = format!("machine failed to reach desired state, currently {state}");
                if state == MachineState::Failed {
                    let events = self.events(&m.id, 5).await.unwrap_or_default();
                    if let Some(err) = events.iter().find_map(|e| {
                        e.request
                            .as_ref()?
                            .get("error")?
                            .as_str()
                            .map(str::to_string)
                    }) {
                        msg.push_str(&format!(": {err}"));
                    }
                }
                return Err(ApiError::bad_request(msg));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ApiError::internal("machine watch closed")),
                Err(_) => {
                    return Err(ApiError::new(
                        axum::http::StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "timed out waiting for machine to reach state {}; currently {state}",
                            targets
                                .iter()
                                .map(|t| t.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    ))
                }
            }
        }
    }

    // ---- exits and restart policy ----------------------------------------------------------

    /// Records a machine's exit and applies its restart policy (reference 5.3): `no` stops it
    /// (or destroys it with `auto_destroy`), `always` restarts it, `on-failure` restarts it on a
    /// non-zero exit up to `max_retries` (default 10) times within 5 minutes.
    pub async fn on_exit(&self, exit: MachineExit) {
        if let Err(e) = self.handle_exit(&exit).await {
            tracing::warn!(machine = %exit.machine_id, error = %e.message, "handling machine exit failed");
        }
    }

    async fn handle_exit(&self, exit: &MachineExit) -> ApiResult<()> {
        self.apply_exit(exit, false).await
    }

    /// The exit policy for `exit`; `reconciled` for an exit that happened while the daemon was
    /// down (found at start-up), which no runtime run is watching any more.
    async fn apply_exit(&self, exit: &MachineExit, reconciled: bool) -> ApiResult<()> {
        let m = self.load(&exit.app, &exit.machine_id).await?;
        let guard = self.handle(&m).lock.clone().lock_owned().await;
        let mut m = self.load(&exit.app, &exit.machine_id).await?;
        let current = if reconciled {
            matches!(m.state, MachineState::Started | MachineState::Suspended)
        } else {
            self.runtime.is_current_run(&m.id, exit.run)
        };
        if m.instance_id != exit.instance_id || m.state.is_terminal() || !current {
            return Ok(());
        }
        // A suspended machine can have exited just before it was frozen: that exit is its own,
        // not one a stop asked for.
        let requested_stop = !matches!(m.state, MachineState::Started | MachineState::Suspended);
        let policy = m
            .config
            .restart
            .as_ref()
            .map(|r| r.policy.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("on-failure")
            .to_string();
        let max_retries = m
            .config
            .restart
            .as_ref()
            .and_then(|r| r.max_retries)
            .unwrap_or(DEFAULT_MAX_RETRIES)
            .max(0) as usize;
        let failed = exit.exit_code != 0 || exit.oom_killed;
        let restart_count = self.recent_restarts(&m.id).await?;
        let restarting = !requested_stop
            && match policy.as_str() {
                "always" => true,
                "on-failure" => failed && restart_count < max_retries,
                _ => false,
            };
        let request = exit_request(exit, requested_stop, restarting, restart_count);
        if requested_stop {
            // The stop (or update, destroy) in progress owns the state; just log the exit.
            return self.record_exit(&m, exit, true, false, restart_count).await;
        }
        if restarting {
            self.transition(
                &mut m,
                MachineState::Starting,
                "exit",
                Source::Platform,
                Some(request),
            )
            .await?;
            // A crash loop backs off (0.25 s, 0.5 s, 1 s, then 2 s between attempts) so that
            // max_retries spans long enough for a transient cause to clear; the cap keeps a
            // user's stop from waiting long behind it.
            if restart_count > 0 {
                let exp = (restart_count - 1).min(3) as u32;
                tokio::time::sleep(RESTART_BACKOFF * 2u32.pow(exp)).await;
            }
            // A failed reboot leaves the machine `failed` with the reason; that is the outcome.
            if let Err(e) = self.boot(&mut m, "restart").await {
                tracing::warn!(machine = %m.id, error = %e.message, "automatic restart failed");
            }
            return Ok(());
        }
        self.transition(
            &mut m,
            MachineState::Stopped,
            "exit",
            Source::Platform,
            Some(request),
        )
        .await?;
        // The machine's resources go now; the logs stay until it is destroyed. A failure here
        // must not skip auto_destroy, which cleans up again.
        if let Err(e) = self.runtime.stop(&m, Signal::SIGKILL, Duration::ZERO).await {
            tracing::warn!(machine = %m.id, error = %e, "releasing an exited machine failed");
        }
        if m.config.auto_destroy {
            drop(guard);
            self.destroy_locked(&exit.app, &exit.machine_id, None, false, true)
                .await?;
        }
        Ok(())
    }

    /// Appends an `exit` event without changing the machine's state.
    async fn record_exit(
        &self,
        m: &MachineRecord,
        exit: &MachineExit,
        requested_stop: bool,
        restarting: bool,
        restart_count: usize,
    ) -> ApiResult<()> {
        let request = exit_request(exit, requested_stop, restarting, restart_count);
        let event = Self::event(m, "exit", m.state, Source::Platform, Some(request));
        db(&self.store, move |s| s.append_event(&event)).await
    }

    /// Records a container's start, exit, restart, failure or health change as a machine event
    /// (`container_<kind>`), without touching the machine's state.
    pub async fn on_container_event(&self, ev: crate::runtime::ContainerEvent) {
        let Ok(m) = self.load(&ev.app, &ev.machine_id).await else {
            return;
        };
        if m.instance_id != ev.instance_id {
            return;
        }
        let event = EventRecord {
            id: ids::new_ulid(),
            machine_id: m.id.clone(),
            kind: format!("container_{}", ev.kind),
            status: m.state.as_str().to_string(),
            source: Source::Platform.as_str().to_string(),
            timestamp: if ev.at > 0 { ev.at } else { now_ms() },
            request: Some(ev.detail),
        };
        if let Err(e) = db(&self.store, move |s| s.append_event(&event)).await {
            tracing::warn!(machine = %ev.machine_id, error = %e.message, "recording a container event failed");
        }
    }

    /// Fills `image_ref` with what the image resolved to here (digest, labels) once it is stored.
    async fn refresh_image_ref(&self, m: &mut MachineRecord) {
        let Some(image) = main_image(&m.config) else {
            return;
        };
        let pinned = m.image_digests.get(&image).cloned();
        if let Some(r) = self.runtime.image_ref(&image, pinned.as_deref()).await {
            m.image_ref = Some(r);
        }
    }

    /// Automatic restarts of the machine within [`RESTART_WINDOW`], counted from its event log
    /// (exit events that restarted it), so the count survives a daemon restart.
    async fn recent_restarts(&self, id: &str) -> ApiResult<usize> {
        let mid = id.to_string();
        let events = db(&self.store, move |s| {
            s.list_events(&mid, RESTART_EVENTS_SCANNED)
        })
        .await?;
        let cutoff = now_ms() - RESTART_WINDOW.as_millis() as i64;
        Ok(count_restarts(&events, cutoff))
    }

    // ---- start-up ---------------------------------------------------------------------------

    /// Settles machines the previous daemon left mid-transition (it may have been SIGKILLed).
    pub async fn reconcile(&self) -> ApiResult<()> {
        let machines = db(&self.store, |s| s.list_live_machines()).await?;
        let live: std::collections::HashSet<String> = machines
            .iter()
            .filter(|m| m.state != MachineState::Destroying)
            .map(|m| m.id.clone())
            .collect();
        self.runtime.sweep(&live).await;
        let mut exits = Vec::new();
        for m in machines {
            // One machine that cannot be settled must not keep the daemon from starting.
            match self.reconcile_one(&m).await {
                Ok(Some(exit)) => exits.push(exit),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(machine = %m.id, error = %e.message, "reconciling failed; marking the machine failed");
                    if let Ok((_guard, mut m)) = self.lock_machine(&m.app, &m.id).await {
                        let request = Some(json!({"error": e.message}));
                        let _ = self
                            .transition(
                                &mut m,
                                MachineState::Failed,
                                "reconcile",
                                Source::Platform,
                                request,
                            )
                            .await;
                    }
                }
            }
        }
        // The capacity ledger starts from what the machines hold after settling.
        for m in db(&self.store, |s| s.list_live_machines()).await? {
            self.capacity.track(&m.id, m.state, guest_size(&m.config));
        }
        // Exits that happened while the daemon was down get the same policy as any other
        // (restart, stop, auto_destroy), after start-up so that a backoff does not delay it.
        for exit in exits {
            let this = self.me.clone();
            tokio::spawn(async move {
                let Some(this) = this.upgrade() else { return };
                if let Err(e) = this.apply_exit(&exit, true).await {
                    tracing::warn!(machine = %exit.machine_id, error = %e.message, "applying an exit found at start-up failed");
                }
            });
        }
        Ok(())
    }

    /// Settles one machine the previous daemon left: re-adopts it if it runs, and finishes
    /// what was in flight (a destroy, a stop, a suspend) instead of guessing.
    /// Returns the exit of a machine that ended on its own meanwhile, for the exit policy.
    async fn reconcile_one(&self, m: &MachineRecord) -> ApiResult<Option<MachineExit>> {
        let (_guard, mut m) = self.lock_machine(&m.app, &m.id).await?;
        let (running, exit) = match self.runtime.adopt(&m).await {
            Adoption::Running => (true, None),
            Adoption::Gone(exit) => (false, exit),
        };
        if let (Some(exit), MachineState::Started | MachineState::Suspended) = (exit, m.state) {
            tracing::info!(machine = %m.id, code = exit.exit_code, "the machine exited while the daemon was down");
            return Ok(Some(exit));
        }
        let settled = match m.state {
            MachineState::Destroying => {
                self.runtime.destroy(&m).await?;
                let mid = m.id.clone();
                db(&self.store, move |s| s.delete_lease(&mid)).await?;
                Some((MachineState::Destroyed, "destroy"))
            }
            MachineState::Stopping if running => {
                let (signal, timeout) = stop_params(
                    &m.config,
                    &StopOptions {
                        signal: None,
                        timeout: None,
                    },
                );
                self.runtime.stop(&m, signal, timeout).await?;
                Some((MachineState::Stopped, "stop"))
            }
            MachineState::Suspending if running => {
                self.runtime.set_frozen(&m, true).await?;
                Some((MachineState::Suspended, "suspend"))
            }
            MachineState::Started | MachineState::Suspended if !running => {
                Some((MachineState::Stopped, "exit"))
            }
            s if s.is_transient() => Some(if running {
                (MachineState::Started, "start")
            } else {
                (MachineState::Stopped, "stop")
            }),
            _ => None,
        };
        if let Some((state, kind)) = settled {
            tracing::info!(machine = %m.id, from = %m.state, to = %state, "reconciled machine after restart");
            self.transition(
                &mut m,
                state,
                kind,
                Source::Platform,
                Some(json!({"reason": "reconciled after daemon restart"})),
            )
            .await?;
        }
        Ok(None)
    }
}

/// Parts of a config this Hangar cannot run yet, refused when the config is written (create,
/// update), whether or not it launches, rather than failing the machine at its first boot.
fn check_supported(config: &MachineConfig) -> ApiResult<()> {
    // Persistent volumes arrive with their own API; running without the one asked for would
    // silently lose the data meant for it.
    if let Some(m) = config.mounts.iter().flatten().next() {
        return Err(ApiError::bad_request(format!(
            "config.mounts: volume {} cannot be attached: this Hangar has no persistent \
             volumes yet (config.volumes with temp_dir works for scratch space)",
            m.volume
        )));
    }
    for c in crate::container_plan::container_configs(config) {
        if let Some(f) = c.files.iter().find(|f| f.secret_name.is_some()) {
            return Err(ApiError::bad_request(format!(
                "file {}: secret_name needs app secrets, which this Hangar does not have yet; \
                 use raw_value",
                f.guest_path
            )));
        }
        for (volume, path) in &c.mounts {
            let scratch = config
                .volumes
                .iter()
                .flatten()
                .any(|v| &v.name == volume && v.temp_dir.is_some());
            if !scratch {
                return Err(ApiError::bad_request(format!(
                    "container {:?} mounts volume {volume:?} at {path}: only temp_dir volumes \
                     can be mounted (this Hangar has no persistent volumes yet)",
                    c.name
                )));
            }
        }
    }
    Ok(())
}

/// Create/update request fields beyond the config that Hangar cannot honour are refused by
/// name, never dropped: `lsvd` (Fly's log-structured volume disks) and a `min_secrets_version`
/// this host has not reached (it has no app secrets yet: version 0). `skip_secrets` holds
/// trivially while there are none.
fn check_request_fields(lsvd: Option<bool>, min_secrets_version: Option<u64>) -> ApiResult<()> {
    if lsvd == Some(true) {
        return Err(ApiError::bad_request(
            "lsvd: log-structured volume disks are not supported by Hangar",
        ));
    }
    if let Some(v) = min_secrets_version.filter(|v| *v > 0) {
        return Err(ApiError::precondition(format!(
            "min_secrets_version: this host has app secrets up to version 0, not {v}"
        )));
    }
    Ok(())
}

/// A machine's guest size as the capacity ledger counts it.
fn guest_size(config: &MachineConfig) -> crate::capacity::Size {
    let g = config.guest.clone().unwrap_or_default();
    crate::capacity::Size {
        cpus: g.cpus.max(1) as u32,
        shared: g.cpu_kind != "performance",
        memory_mb: g.memory_mb.max(1) as u64,
    }
}

fn capacity_error(e: crate::capacity::CapacityError) -> ApiError {
    let mut err = ApiError::conflict(e.to_string());
    err.code = Some("insufficient_capacity");
    err
}

/// How many of a machine's latest events are scanned for its recent restarts: enough for the
/// largest useful `max_retries` among container events.
const RESTART_EVENTS_SCANNED: usize = 512;

/// Automatic restarts recorded in `events` (newest first) at or after `cutoff` (unix ms).
fn count_restarts(events: &[hangar_store::EventRecord], cutoff: i64) -> usize {
    events
        .iter()
        .take_while(|e| e.timestamp >= cutoff)
        .filter(|e| {
            // Automatic restarts only: a user's restart is a requested stop.
            e.kind == "exit"
                && e.request.as_ref().is_some_and(|r| {
                    r["exit_event"]["restarting"] == true
                        && r["exit_event"]["requested_stop"] != true
                })
        })
        .count()
}

/// The `request` of an `exit` event (reference 3.2).
fn exit_request(
    exit: &MachineExit,
    requested_stop: bool,
    restarting: bool,
    restart_count: usize,
) -> serde_json::Value {
    json!({
        "exit_event": {
            "exit_code": exit.exit_code,
            "guest_exit_code": exit.exit_code,
            "guest_signal": exit.signal.unwrap_or(-1),
            "signal": exit.signal.unwrap_or(-1),
            "oom_killed": exit.oom_killed,
            "requested_stop": requested_stop,
            "restarting": restarting,
            "exited_at": crate::clock::rfc3339_ms(exit.exited_at),
        },
        "restart_count": restart_count,
    })
}

/// States `wait` accepts, `settled` meaning any non-transient state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WaitTarget {
    State(MachineState),
    Settled,
}

impl WaitTarget {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "settled" => Some(WaitTarget::Settled),
            "started" | "stopped" | "suspended" | "destroyed" | "failed" | "created" => {
                s.parse().ok().map(WaitTarget::State)
            }
            _ => None,
        }
    }

    fn matches(&self, state: MachineState) -> bool {
        match self {
            WaitTarget::State(s) => *s == state,
            WaitTarget::Settled => state.is_settled(),
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            WaitTarget::State(s) => s.as_str(),
            WaitTarget::Settled => "settled",
        }
    }
}

fn lease_conflict(m: &MachineRecord, l: &LeaseRecord) -> ApiError {
    ApiError::conflict(format!(
        "machine {} lease currently held by {}, expires at {}",
        m.id,
        l.owner,
        rfc3339_secs(l.expires_at)
    ))
}

fn check_lease_ttl(ttl: i64) -> ApiResult<i64> {
    if !(1..=MAX_LEASE_TTL).contains(&ttl) {
        return Err(ApiError::bad_request(format!(
            "invalid lease ttl {ttl}: must be between 1 and {MAX_LEASE_TTL} seconds"
        )));
    }
    Ok(ttl)
}

fn check_region(r: &str) -> ApiResult<()> {
    if r.len() > 32
        || !r
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ApiError::bad_request(format!(
            "invalid region {r:?}: use lowercase letters and digits"
        )));
    }
    Ok(())
}

fn check_metadata_key(k: &str) -> ApiResult<()> {
    if k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(format!("invalid metadata key {k:?}")));
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
    let sc = config.stop_config.as_ref();
    let signal = opts
        .signal
        .or(sc.and_then(|s| s.signal))
        .unwrap_or(Signal::SIGINT);
    // A zero timeout means "the default", as on Fly: fly-go always sends `"timeout":"0s"`
    // (its omitempty cannot drop a struct duration), and taking that as no grace at all would
    // SIGKILL every machine flyctl stops.
    let timeout = opts
        .timeout
        .filter(|t| !t.is_zero())
        .or(sc
            .and_then(|s| s.timeout)
            .map(|d| d.as_duration())
            .filter(|t| !t.is_zero()))
        .unwrap_or(DEFAULT_STOP_TIMEOUT);
    (signal, timeout)
}

/// A 6PN-style private address: `fdaa:0:<network>:a7b:<host>:<machine>:<machine>:2`. The
/// networking milestone replaces this with addresses that are actually routed.
fn private_ip(app_numeric_id: i64) -> String {
    let machine: u32 = rand::random();
    format!(
        "fdaa:0:{:x}:a7b:1:{:x}:{:x}:2",
        app_numeric_id & 0xffff,
        machine >> 16,
        machine & 0xffff
    )
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

#[cfg(test)]
mod restart_count_tests {
    use super::*;

    fn exit_event(ts: i64, restarting: bool) -> hangar_store::EventRecord {
        hangar_store::EventRecord {
            id: format!("e{ts}"),
            machine_id: "m".into(),
            kind: "exit".into(),
            status: "stopped".into(),
            source: "flyd".into(),
            timestamp: ts,
            request: Some(json!({"exit_event": {"restarting": restarting}})),
        }
    }

    #[test]
    fn counts_restarting_exits_within_the_window() {
        let mut other = exit_event(950, false);
        other.kind = "container_exited".into();
        let mut by_user = exit_event(990, true);
        by_user.request = Some(json!({"exit_event": {"restarting": true, "requested_stop": true}}));
        // Newest first, as the store lists them.
        let events = vec![
            exit_event(1000, true),
            by_user,
            other,
            exit_event(900, false),
            exit_event(800, true),
            exit_event(100, true),
        ];
        assert_eq!(count_restarts(&events, 500), 2);
        assert_eq!(count_restarts(&events, 0), 3);
        assert_eq!(count_restarts(&events, 2000), 0);
        assert_eq!(count_restarts(&[], 0), 0);
    }
}
