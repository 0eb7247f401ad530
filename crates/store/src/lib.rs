//! Durable state of the daemon behind the [`Store`] traits (one per resource). [`SqliteStore`]
//! is the embedded backend (WAL, synchronous commits); a cluster backend implements the same
//! traits and must pass the same [`conformance`] checks.

pub mod columns;
pub mod conformance;
mod records;
mod sqlite;

pub use records::*;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("app name {0:?} is already taken")]
    AppNameTaken(String),
    #[error("machine name {0:?} is already in use in this app")]
    MachineNameTaken(String),
    /// Another live machine holds one of the private addresses (allocation raced).
    #[error("private address {0} is already in use")]
    AddressTaken(String),
    /// A guarded write found the row changed since it was read (another request won).
    #[error("{0} changed since it was read")]
    Conflict(String),
    /// A guarded write of a leased machine without the lease's nonce.
    #[error("lease currently held by {owner} (expires at {expires_at})")]
    LeaseHeld { owner: String, expires_at: i64 },
    #[error("{0} not found")]
    NotFound(String),
    /// The volume is bound to another machine.
    #[error("volume {volume} is attached to machine {machine}")]
    VolumeAttached { volume: String, machine: String },
    /// The backend cannot answer now (locked, unreachable); retrying may work.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Another backend's failure (PostgreSQL), with its message.
    #[error("database error: {0}")]
    Backend(String),
    #[error("corrupt record in the store: {0}")]
    Corrupt(String),
    #[error("failed to open the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store schema version {found} is newer than this hangar understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
}

/// The class of a store error, which is what callers decide on (HTTP status, retry) without
/// knowing the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    NotFound,
    Conflict,
    Unavailable,
    Internal,
}

impl StoreError {
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::NotFound(_) => ErrorClass::NotFound,
            StoreError::AppNameTaken(_)
            | StoreError::MachineNameTaken(_)
            | StoreError::AddressTaken(_)
            | StoreError::Conflict(_)
            | StoreError::VolumeAttached { .. }
            | StoreError::LeaseHeld { .. } => ErrorClass::Conflict,
            StoreError::Unavailable(_) => ErrorClass::Unavailable,
            StoreError::Sqlite(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) =>
            {
                ErrorClass::Unavailable
            }
            _ => ErrorClass::Internal,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a guarded machine write expects to still hold when it commits; checked in the same
/// transaction as the write, so two racing requests cannot both win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect<'a> {
    /// The row version the caller read (`MachineRecord::row_version`).
    pub row_version: i64,
    /// `Some(nonce)`: the write is a user's mutation and must hold the machine's lease if one
    /// is active at `now` (unix seconds); `None`: the platform's own write, leases do not apply.
    pub lease: Option<(Option<&'a str>, i64)>,
    /// The write records what the runtime observed of a machine coming up (`starting`,
    /// `started`), not what anyone asked for. It is committed without waiting for the disk:
    /// after a power loss no machine runs, and the state is read again from the machines
    /// themselves. It is durable as soon as any later commit is (both backends write a
    /// sequential log). Everything else waits for the disk.
    pub observed: bool,
}

impl Expect<'_> {
    /// A platform write of the row as read.
    pub fn version(row_version: i64) -> Expect<'static> {
        Expect {
            row_version,
            lease: None,
            observed: false,
        }
    }
}

/// Apps.
pub trait AppStore: Send + Sync {
    fn create_app(&self, app: &AppRecord) -> Result<AppRecord>;
    fn get_app(&self, name: &str) -> Result<Option<AppRecord>>;
    fn get_app_by_idempotency_key(&self, key: &str) -> Result<Option<AppRecord>>;
    fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>>;
    /// Deletes the app and every machine, version, event and lease of it.
    fn delete_app(&self, name: &str) -> Result<bool>;
    /// Machines of the app that are not destroyed.
    fn count_machines(&self, app: &str) -> Result<i64>;
}

/// Machines and their config versions.
pub trait MachineStore: Send + Sync {
    /// Inserts a new machine with its first version, first event and optional lease.
    fn insert_machine(
        &self,
        machine: &MachineRecord,
        event: &EventRecord,
        lease: Option<&LeaseRecord>,
    ) -> Result<()>;
    /// [`insert_machine`](Self::insert_machine) whose commit may not be on disk yet when it
    /// returns: every reader sees it at once, and it is durable once [`sync`](Self::sync)
    /// returns. A create uses it to start booting the machine while the disk catches up, and
    /// answers only after the sync. Backends whose commits are durable anyway keep the default.
    fn insert_machine_unsynced(
        &self,
        machine: &MachineRecord,
        event: &EventRecord,
        lease: Option<&LeaseRecord>,
    ) -> Result<()> {
        self.insert_machine(machine, event, lease)
    }
    /// Makes every commit so far durable (see
    /// [`insert_machine_unsynced`](Self::insert_machine_unsynced)).
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Rewrites the machine row if `expect` still holds (else [`StoreError::Conflict`] or
    /// [`StoreError::LeaseHeld`], and nothing is written); `new_version` records a new config
    /// version, `event` appends. Returns the row's new version.
    fn update_machine(
        &self,
        machine: &MachineRecord,
        expect: Expect<'_>,
        new_version: bool,
        event: Option<&EventRecord>,
    ) -> Result<i64>;
    fn get_machine(&self, app: &str, id: &str) -> Result<Option<MachineRecord>>;
    fn list_machines(&self, app: &str, include_destroyed: bool) -> Result<Vec<MachineRecord>>;
    /// Every machine not destroyed, across apps (start-up reconciliation).
    fn list_live_machines(&self) -> Result<Vec<MachineRecord>>;
    /// Every machine written at or after `since_ms` (its `updated_at`), destroyed ones too,
    /// across apps: what changed since a host last looked (cluster mode).
    fn list_machines_changed_since(&self, since_ms: i64) -> Result<Vec<MachineRecord>>;
    /// Oldest first.
    fn list_versions(&self, machine_id: &str) -> Result<Vec<VersionRecord>>;
    fn has_version(&self, machine_id: &str, instance_id: &str) -> Result<bool>;
}

/// Machine events.
pub trait EventStore: Send + Sync {
    /// Appends an event without touching the machine row (container events, which must not
    /// race the machine's own transitions). Such events are observations: committed without
    /// waiting for the disk, as [`Expect::observed`] writes are.
    fn append_event(&self, event: &EventRecord) -> Result<()>;
    /// Newest first.
    fn list_events(&self, machine_id: &str, limit: usize) -> Result<Vec<EventRecord>>;
}

/// Machine leases.
pub trait LeaseStore: Send + Sync {
    fn get_lease(&self, machine_id: &str) -> Result<Option<LeaseRecord>>;
    fn put_lease(&self, lease: &LeaseRecord) -> Result<()>;
    fn delete_lease(&self, machine_id: &str) -> Result<()>;
}

/// Private networks and the host's network settings.
pub trait NetworkStore: Send + Sync {
    /// The org's network `name`, created on first use with a new id (ids are never reused).
    fn ensure_network(&self, org_slug: &str, name: &str, now: i64) -> Result<NetworkRecord>;
    /// Gives the network the lowest IPv4 block below `blocks` that no network holds; `None`
    /// when every one is taken.
    fn claim_ipv4_block(&self, network_id: u32, blocks: u32) -> Result<Option<u8>>;
    fn list_networks(&self) -> Result<Vec<NetworkRecord>>;
    /// Private IPv4 addresses of live machines that start with `prefix` (`"172.19.3."`).
    fn live_ipv4_addresses(&self, prefix: &str) -> Result<Vec<String>>;
    /// A setting of this store, written once: the first caller's `init` stays.
    fn setting_or_init(&self, key: &str, init: &str) -> Result<String>;
    /// A setting, if it was ever written.
    fn setting(&self, key: &str) -> Result<Option<String>>;
}

/// App secrets (sealed values; the store never sees plaintext).
pub trait SecretStore: Send + Sync {
    /// Applies `writes` in one transaction and bumps the app's secrets version once; returns
    /// the new version. [`StoreError::NotFound`] when the app does not exist.
    fn write_secrets(&self, app: &str, writes: &[SecretWrite], now: i64) -> Result<u64>;
    /// The app's secrets and version (an app without secrets: version 0, none).
    fn list_secrets(&self, app: &str) -> Result<SecretSet>;
}

/// Volumes and their snapshots.
pub trait VolumeStore: Send + Sync {
    fn insert_volume(&self, volume: &VolumeRecord) -> Result<()>;
    fn get_volume(&self, app: &str, id: &str) -> Result<Option<VolumeRecord>>;
    /// Oldest first, destroyed (`pending_destroy`) ones included.
    fn list_volumes(&self, app: &str) -> Result<Vec<VolumeRecord>>;
    /// Every volume of every app, destroyed ones included (disk admission, sweeps).
    fn list_all_volumes(&self) -> Result<Vec<VolumeRecord>>;
    /// Rewrites everything but the attachment (which only attach/detach change).
    fn update_volume(&self, volume: &VolumeRecord) -> Result<()>;
    /// Binds the volume to `machine_id` unless another machine holds it
    /// ([`StoreError::VolumeAttached`]) or it is destroyed ([`StoreError::NotFound`]).
    fn attach_volume(&self, id: &str, machine_id: &str) -> Result<()>;
    /// Releases the volume if `machine_id` holds it.
    fn detach_volume(&self, id: &str, machine_id: &str) -> Result<()>;
    /// Removes the volume's row and its snapshots' rows.
    fn purge_volume(&self, id: &str) -> Result<()>;
    fn insert_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()>;
    /// Oldest first.
    fn list_snapshots(&self, volume_id: &str) -> Result<Vec<SnapshotRecord>>;
    fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>>;
    fn delete_snapshot(&self, id: &str) -> Result<()>;
}

/// The scheduler's record of each scheduled machine.
pub trait ScheduleStore: Send + Sync {
    fn get_schedule(&self, machine_id: &str) -> Result<Option<ScheduleRecord>>;
    fn put_schedule(&self, schedule: &ScheduleRecord) -> Result<()>;
    fn delete_schedule(&self, machine_id: &str) -> Result<()>;
    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>>;
}

/// Apps' custom certificates.
pub trait CertificateStore: Send + Sync {
    /// Adds or replaces the certificate of `hostname`; [`StoreError::Conflict`] when another
    /// app has the hostname, [`StoreError::NotFound`] when the app does not exist.
    fn put_certificate(&self, cert: &CertificateRecord) -> Result<()>;
    fn get_certificate(&self, hostname: &str) -> Result<Option<CertificateRecord>>;
    /// An app's, or every app's with `None`; by hostname.
    fn list_certificates(&self, app: Option<&str>) -> Result<Vec<CertificateRecord>>;
    /// Whether there was one.
    fn delete_certificate(&self, hostname: &str) -> Result<bool>;
}

/// Apps' IP assignments.
pub trait IpAssignmentStore: Send + Sync {
    /// Records the assignment; [`StoreError::Conflict`] when a dedicated address is taken,
    /// [`StoreError::NotFound`] when the app does not exist.
    fn insert_ip_assignment(&self, ip: &IpAssignmentRecord) -> Result<()>;
    /// An app's, or every app's with `None`.
    fn list_ip_assignments(&self, app: Option<&str>) -> Result<Vec<IpAssignmentRecord>>;
    /// Whether the app had it.
    fn delete_ip_assignment(&self, app: &str, ip: &str) -> Result<bool>;
}

/// The cluster's hosts.
pub trait HostStore: Send + Sync {
    /// Adds the host, or updates what it offers (keeping its first registration time).
    fn register_host(&self, host: &HostRecord) -> Result<()>;
    /// Records that the host is alive at `now`; [`StoreError::NotFound`] if it never registered.
    fn heartbeat(&self, host_id: &str, now: i64) -> Result<()>;
    /// By id.
    fn list_hosts(&self) -> Result<Vec<HostRecord>>;
}

/// What a backend is like, beside what it keeps.
pub trait Backend: Send + Sync {
    /// Whether reads answer in microseconds and never wait for a write or the network (an
    /// embedded database in WAL mode): a caller may then read on its async thread instead of
    /// handing the read to the blocking pool and back (~0.1–0.3 ms per read on a start's
    /// path).
    fn reads_are_quick(&self) -> bool {
        false
    }
}

/// Everything the daemon persists, one trait per resource (volumes, secrets, IP assignments
/// and hosts join as traits of their own). Each method is one transaction: when it returns
/// `Ok`, the write is durable. Synchronous on purpose (docs/decisions.md): callers run it on
/// the blocking pool.
pub trait Store:
    AppStore
    + MachineStore
    + EventStore
    + LeaseStore
    + NetworkStore
    + SecretStore
    + VolumeStore
    + ScheduleStore
    + CertificateStore
    + IpAssignmentStore
    + HostStore
    + Backend
    + 'static
{
}

impl<
        T: AppStore
            + MachineStore
            + EventStore
            + LeaseStore
            + NetworkStore
            + SecretStore
            + VolumeStore
            + ScheduleStore
            + CertificateStore
            + IpAssignmentStore
            + HostStore
            + Backend
            + 'static,
    > Store for T
{
}
