//! Durable state of the daemon behind the [`Store`] trait. [`SqliteStore`] is the embedded
//! backend (WAL, synchronous commits); a cluster backend can implement the same trait later.

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
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the daemon persists. Each method is one transaction: when it returns `Ok`, the
/// write is durable.
pub trait Store: Send + Sync + 'static {
    fn create_app(&self, app: &AppRecord) -> Result<AppRecord>;
    fn get_app(&self, name: &str) -> Result<Option<AppRecord>>;
    fn get_app_by_idempotency_key(&self, key: &str) -> Result<Option<AppRecord>>;
    fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>>;
    /// Deletes the app and every machine, version, event and lease of it.
    fn delete_app(&self, name: &str) -> Result<bool>;
    /// Machines of the app that are not destroyed.
    fn count_machines(&self, app: &str) -> Result<i64>;

    /// Inserts a new machine with its first version, first event and optional lease.
    fn insert_machine(
        &self,
        machine: &MachineRecord,
        event: &EventRecord,
        lease: Option<&LeaseRecord>,
    ) -> Result<()>;
    /// Rewrites the machine row; `new_version` records a new config version, `event` appends.
    fn update_machine(
        &self,
        machine: &MachineRecord,
        new_version: bool,
        event: Option<&EventRecord>,
    ) -> Result<()>;
    fn get_machine(&self, app: &str, id: &str) -> Result<Option<MachineRecord>>;
    fn list_machines(&self, app: &str, include_destroyed: bool) -> Result<Vec<MachineRecord>>;
    /// Every machine not destroyed, across apps (start-up reconciliation).
    fn list_live_machines(&self) -> Result<Vec<MachineRecord>>;

    /// Appends an event without touching the machine row (container events, which must not
    /// race the machine's own transitions).
    fn append_event(&self, event: &EventRecord) -> Result<()>;
    /// Newest first.
    fn list_events(&self, machine_id: &str, limit: usize) -> Result<Vec<EventRecord>>;
    /// Oldest first.
    fn list_versions(&self, machine_id: &str) -> Result<Vec<VersionRecord>>;
    fn has_version(&self, machine_id: &str, instance_id: &str) -> Result<bool>;

    fn get_lease(&self, machine_id: &str) -> Result<Option<LeaseRecord>>;
    fn put_lease(&self, lease: &LeaseRecord) -> Result<()>;
    fn delete_lease(&self, machine_id: &str) -> Result<()>;
}
