//! The embedded backend: one SQLite database in WAL mode with `synchronous=FULL`, so a commit
//! that returned is on disk even if the daemon is SIGKILLed right after.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use crate::columns::{
    APP as APP_COLUMNS, CERTIFICATE as CERT_COLUMNS, MACHINE as MACHINE_COLUMNS,
    SNAPSHOT as SNAPSHOT_COLUMNS, VOLUME as VOLUME_COLUMNS,
};
use crate::{
    AppRecord, AppStore, Backend, CertificateRecord, CertificateStore, EventRecord, EventStore,
    Expect, HostRecord, HostStore, IpAssignmentRecord, IpAssignmentStore, LeaseRecord, LeaseStore,
    MachineRecord, MachineStore, NetworkRecord, NetworkStore, Result, ScheduleRecord,
    ScheduleStore, SecretRecord, SecretSet, SecretStore, SecretWrite, SnapshotRecord, StoreError,
    VersionRecord, VolumeRecord, VolumeStore,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE apps (
    internal_numeric_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    org_slug TEXT NOT NULL,
    network TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    region TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    private_ip TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    cordoned INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL,
    image_ref TEXT
);
CREATE INDEX machines_by_app ON machines(app, created_at);
CREATE UNIQUE INDEX machines_live_name ON machines(app, name) WHERE state != 'destroyed';
CREATE TABLE machine_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    instance_id TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (machine_id, instance_id)
);
CREATE TABLE machine_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    request TEXT
);
CREATE INDEX machine_events_by_machine ON machine_events(machine_id, seq);
CREATE TABLE leases (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id) ON DELETE CASCADE,
    nonce TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    owner TEXT NOT NULL,
    description TEXT NOT NULL,
    version TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE apps ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX apps_idempotency_key ON apps(idempotency_key) WHERE idempotency_key IS NOT NULL;
"#,
    r#"
ALTER TABLE machines ADD COLUMN image_digests TEXT;
"#,
    r#"
ALTER TABLE apps ADD COLUMN app_role TEXT NOT NULL DEFAULT '';
"#,
    r#"
ALTER TABLE machines ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE machines ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
"#,
    r#"
ALTER TABLE machines ADD COLUMN private_ipv4 TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX machines_live_ipv6 ON machines(private_ip)
    WHERE state != 'destroyed' AND private_ip != '';
CREATE UNIQUE INDEX machines_live_ipv4 ON machines(private_ipv4)
    WHERE state != 'destroyed' AND private_ipv4 != '';
CREATE TABLE networks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_slug TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_slug, name)
);
CREATE TABLE ipv4_blocks (
    block INTEGER PRIMARY KEY,
    network_id INTEGER NOT NULL REFERENCES networks(id)
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE apps ADD COLUMN secrets_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE machines ADD COLUMN skip_secrets INTEGER NOT NULL DEFAULT 0;
CREATE TABLE app_secrets (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    sealed BLOB NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (app, name)
);
"#,
    r#"
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    size_gb INTEGER NOT NULL,
    region TEXT NOT NULL,
    zone TEXT NOT NULL,
    encrypted INTEGER NOT NULL,
    fstype TEXT NOT NULL,
    snapshot_retention INTEGER NOT NULL,
    auto_backup_enabled INTEGER NOT NULL,
    attached_machine_id TEXT,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER,
    host_id TEXT NOT NULL
);
CREATE INDEX volumes_by_app ON volumes(app, created_at);
CREATE TABLE volume_snapshots (
    id TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL,
    app TEXT NOT NULL,
    size INTEGER NOT NULL,
    volume_size INTEGER NOT NULL,
    status TEXT NOT NULL,
    retention_days INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX volume_snapshots_by_volume ON volume_snapshots(volume_id, created_at);
"#,
    r#"
CREATE TABLE machine_schedules (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id) ON DELETE CASCADE,
    anchor_at INTEGER NOT NULL,
    next_fire_at INTEGER NOT NULL,
    last_fire_at INTEGER,
    last_outcome TEXT
);
"#,
    r#"
CREATE TABLE certificates (
    hostname TEXT PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    fullchain TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX certificates_by_app ON certificates(app, hostname);
"#,
    r#"
CREATE TABLE ip_assignments (
    ip TEXT NOT NULL,
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    region TEXT NOT NULL,
    service_name TEXT NOT NULL,
    shared INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (ip, app)
);
CREATE UNIQUE INDEX ip_assignments_dedicated ON ip_assignments(ip) WHERE shared = 0;
"#,
    r#"
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_gb INTEGER NOT NULL,
    api_addr TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE hosts ADD COLUMN instance TEXT NOT NULL DEFAULT '';
"#,
];

/// Readers run in parallel with the writer under WAL; a few are enough for 2-core hosts.
const READERS: usize = 4;

pub struct SqliteStore {
    /// The write-ahead log, when SQLite is in WAL mode: syncing it makes every commit so far
    /// durable ([`MachineStore::sync`]).
    wal: Option<PathBuf>,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

/// The database holds every machine's config (env, file contents): it is readable by its owner
/// only. SQLite gives the `-wal` and `-shm` files the database's own mode, so making the file
/// 0600 before the first open covers them; existing ones are fixed too.
fn restrict_to_owner(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let open_err = |e: std::io::Error| StoreError::Open {
        path: path.display().to_string(),
        source: rusqlite::Error::InvalidPath(format!("{}: {e}", path.display()).into()),
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(open_err)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(open_err(e)),
        }
    }
    Ok(())
}

/// Room for every distinct statement of this file (about 70).
const STATEMENT_CACHE: usize = 128;

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Every statement is prepared once per connection and kept (`prepare_cached`): parsing
    // them again was ~7% of the daemon's CPU while creating machines.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        restrict_to_owner(path)?;
        let writer = open_conn(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mode: String = writer
            .prepare_cached("PRAGMA journal_mode=WAL")?
            .query_row([], |r| r.get(0))?;
        let wal = if mode.eq_ignore_ascii_case("wal") {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            Some(PathBuf::from(wal))
        } else {
            tracing::warn!(mode, "SQLite refused WAL mode; continuing with {mode}");
            None
        };
        migrate(&writer)?;
        let readers = (0..READERS)
            .map(|_| {
                open_conn(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map(Mutex::new)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            wal,
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied transaction (SQLite rolls
        // it back), so a poisoned lock is still safe to use.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            if let Ok(guard) = self.readers[(start + i) % self.readers.len()].try_lock() {
                return guard;
            }
        }
        self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let current: i64 = conn
        .prepare_cached("PRAGMA user_version")?
        .query_row([], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn app_from_row(r: &Row) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        org_slug: r.get(2)?,
        network: r.get(3)?,
        internal_numeric_id: r.get(4)?,
        created_at: r.get(5)?,
        idempotency_key: r.get(6)?,
        app_role: r.get(7)?,
    })
}

fn machine_from_row(r: &Row) -> rusqlite::Result<MachineRecord> {
    let state: String = r.get(3)?;
    let config: String = r.get(10)?;
    let image_ref: Option<String> = r.get(11)?;
    let image_digests: Option<String> = r.get(12)?;
    let row_version: i64 = r.get(13)?;
    let host_id: String = r.get(14)?;
    let private_ipv4: String = r.get(15)?;
    let skip_secrets: bool = r.get(16)?;
    Ok(MachineRecord {
        id: r.get(0)?,
        app: r.get(1)?,
        name: r.get(2)?,
        state: state.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        region: r.get(4)?,
        instance_id: r.get(5)?,
        private_ip: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        cordoned: r.get(9)?,
        config: from_json(&config)?,
        image_ref: image_ref.as_deref().map(from_json).transpose()?,
        image_digests: image_digests
            .as_deref()
            .map(from_json)
            .transpose()?
            .unwrap_or_default(),
        row_version,
        host_id,
        private_ipv4,
        skip_secrets,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// A write's result, with a unique-constraint failure turned into the "name taken" error.
fn or_taken(res: rusqlite::Result<usize>, taken: impl FnOnce() -> StoreError) -> Result<()> {
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(taken()),
        Err(e) => Err(e.into()),
    }
}

/// A machine write's result: a unique-constraint failure is its name's, or one of its private
/// addresses' (another machine holds it).
fn machine_write(res: rusqlite::Result<usize>, m: &MachineRecord) -> Result<()> {
    match res {
        Err(rusqlite::Error::SqliteFailure(f, Some(msg)))
            if is_unique_violation(&rusqlite::Error::SqliteFailure(f, None))
                && msg.contains("private_ip") =>
        {
            Err(StoreError::AddressTaken(format!(
                "{} / {}",
                m.private_ip, m.private_ipv4
            )))
        }
        other => or_taken(other, || StoreError::MachineNameTaken(m.name.clone())),
    }
}

fn insert_event(conn: &Connection, e: &EventRecord) -> Result<()> {
    let request = e.request.as_ref().map(to_json).transpose()?;
    conn.prepare_cached(
        "INSERT INTO machine_events (id, machine_id, type, status, source, timestamp, request) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        e.id,
        e.machine_id,
        e.kind,
        e.status,
        e.source,
        e.timestamp,
        request
    ])?;
    Ok(())
}

/// Runs `write` on the writer with `synchronous=NORMAL`: in WAL mode its commit does not wait
/// for an fsync, and the next FULL commit syncs the log with it in it (`Expect::observed`).
fn without_fsync<T>(
    conn: &mut Connection,
    write: impl FnOnce(&mut Connection) -> Result<T>,
) -> Result<T> {
    // Not cached: SQLite applies a PRAGMA when preparing it, and prepares it again each run.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let result = write(conn);
    conn.pragma_update(None, "synchronous", "FULL")?;
    result
}

/// [`MachineStore::update_machine`] on the writer connection.
fn update_machine_on(
    conn: &mut Connection,
    m: &MachineRecord,
    expect: Expect<'_>,
    new_version: bool,
    event: Option<&EventRecord>,
) -> Result<i64> {
    let tx = conn.transaction()?;
    if let Some((nonce, now)) = expect.lease {
        check_lease_on(&tx, &m.id, nonce, now)?;
    }
    let image_ref = m.image_ref.as_ref().map(to_json).transpose()?;
    let config = to_json(&m.config)?;
    let next = expect.row_version + 1;
    let res = tx
        .prepare_cached(
            "UPDATE machines SET name = ?2, state = ?3, region = ?4, instance_id = ?5, \
         private_ip = ?6, updated_at = ?7, cordoned = ?8, config = ?9, image_ref = ?10, \
         image_digests = ?11, row_version = ?13, host_id = ?14, private_ipv4 = ?15, \
         skip_secrets = ?16 \
         WHERE id = ?1 AND row_version = ?12",
        )?
        .execute(params![
            m.id,
            m.name,
            m.state.as_str(),
            m.region,
            m.instance_id,
            m.private_ip,
            m.updated_at,
            m.cordoned,
            config,
            image_ref,
            to_json(&m.image_digests)?,
            expect.row_version,
            next,
            m.host_id,
            m.private_ipv4,
            m.skip_secrets
        ]);
    if matches!(res, Ok(0)) {
        let exists: bool = tx
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM machines WHERE id = ?1)")?
            .query_row([&m.id], |r| r.get(0))?;
        return Err(if exists {
            StoreError::Conflict(format!("machine {}", m.id))
        } else {
            StoreError::NotFound(format!("machine {}", m.id))
        });
    }
    machine_write(res, m)?;
    if new_version {
        insert_version(&tx, m)?;
    } else {
        // Metadata changes rewrite the current version's config without making a new one.
        tx.prepare_cached(
            "UPDATE machine_versions SET config = ?3 WHERE machine_id = ?1 AND instance_id = ?2",
        )?
        .execute(params![m.id, m.instance_id, config])?;
    }
    if let Some(e) = event {
        insert_event(&tx, e)?;
    }
    tx.commit()?;
    Ok(next)
}

fn insert_version(conn: &Connection, m: &MachineRecord) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO machine_versions (machine_id, instance_id, config, created_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        m.id,
        m.instance_id,
        to_json(&m.config)?,
        m.updated_at
    ])?;
    Ok(())
}

/// Refuses a user's write to a machine whose active lease (expiring after `now`) has another
/// nonce than `nonce`.
fn check_lease_on(
    conn: &Connection,
    machine_id: &str,
    nonce: Option<&str>,
    now: i64,
) -> Result<()> {
    let held: Option<(String, String, i64)> = conn
        .prepare_cached("SELECT nonce, owner, expires_at FROM leases WHERE machine_id = ?1")?
        .query_row([machine_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match held {
        Some((held_nonce, owner, expires_at))
            if expires_at > now && nonce != Some(held_nonce.as_str()) =>
        {
            Err(StoreError::LeaseHeld { owner, expires_at })
        }
        _ => Ok(()),
    }
}

fn put_lease_on(conn: &Connection, l: &LeaseRecord) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO leases (machine_id, nonce, expires_at, owner, description, version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT(machine_id) DO UPDATE SET nonce = excluded.nonce, \
         expires_at = excluded.expires_at, owner = excluded.owner, \
         description = excluded.description, version = excluded.version",
    )?
    .execute(params![
        l.machine_id,
        l.nonce,
        l.expires_at,
        l.owner,
        l.description,
        l.version
    ])?;
    Ok(())
}

impl Backend for SqliteStore {
    /// WAL readers on their own connections: a commit's fsync never holds them up.
    fn reads_are_quick(&self) -> bool {
        true
    }
}

impl AppStore for SqliteStore {
    fn create_app(&self, app: &AppRecord) -> Result<AppRecord> {
        let conn = self.writer();
        let res = conn.prepare_cached("INSERT INTO apps (id, name, org_slug, network, created_at, idempotency_key, app_role) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(params![
                app.id,
                app.name,
                app.org_slug,
                app.network,
                app.created_at,
                app.idempotency_key,
                app.app_role
            ]);
        or_taken(res, || StoreError::AppNameTaken(app.name.clone()))?;
        let mut out = app.clone();
        out.internal_numeric_id = conn.last_insert_rowid();
        Ok(out)
    }

    fn get_app(&self, name: &str) -> Result<Option<AppRecord>> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps WHERE name = ?1"))?;
        Ok(stmt.query_row([name], app_from_row).optional()?)
    }

    fn get_app_by_idempotency_key(&self, key: &str) -> Result<Option<AppRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE idempotency_key = ?1"
        ))?;
        Ok(stmt.query_row([key], app_from_row).optional()?)
    }

    fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE ?1 IS NULL OR org_slug = ?1 ORDER BY name"
        ))?;
        let rows = stmt.query_map([org_slug], app_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_app(&self, name: &str) -> Result<bool> {
        let conn = self.writer();
        let mut stmt = conn.prepare_cached("DELETE FROM apps WHERE name = ?1")?;
        Ok(stmt.execute([name])? > 0)
    }

    fn count_machines(&self, app: &str) -> Result<i64> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT COUNT(*) FROM machines WHERE app = ?1 AND state != 'destroyed'",
        )?;
        Ok(stmt.query_row([app], |r| r.get(0))?)
    }
}

/// [`MachineStore::insert_machine`] on the writer connection.
fn insert_machine_on(
    conn: &mut Connection,
    m: &MachineRecord,
    event: &EventRecord,
    lease: Option<&LeaseRecord>,
) -> Result<()> {
    let tx = conn.transaction()?;
    let image_ref = m.image_ref.as_ref().map(to_json).transpose()?;
    let res = tx
        .prepare_cached(&format!(
            "INSERT INTO machines ({MACHINE_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ))?
        .execute(params![
            m.id,
            m.app,
            m.name,
            m.state.as_str(),
            m.region,
            m.instance_id,
            m.private_ip,
            m.created_at,
            m.updated_at,
            m.cordoned,
            to_json(&m.config)?,
            image_ref,
            to_json(&m.image_digests)?,
            m.row_version,
            m.host_id,
            m.private_ipv4,
            m.skip_secrets
        ]);
    machine_write(res, m)?;
    insert_version(&tx, m)?;
    insert_event(&tx, event)?;
    if let Some(l) = lease {
        put_lease_on(&tx, l)?;
    }
    tx.commit()?;
    Ok(())
}

impl MachineStore for SqliteStore {
    fn insert_machine(
        &self,
        m: &MachineRecord,
        event: &EventRecord,
        lease: Option<&LeaseRecord>,
    ) -> Result<()> {
        insert_machine_on(&mut self.writer(), m, event, lease)
    }

    fn insert_machine_unsynced(
        &self,
        m: &MachineRecord,
        event: &EventRecord,
        lease: Option<&LeaseRecord>,
    ) -> Result<()> {
        let mut conn = self.writer();
        if self.wal.is_none() {
            return insert_machine_on(&mut conn, m, event, lease);
        }
        without_fsync(&mut conn, |c| insert_machine_on(c, m, event, lease))
    }

    /// Syncs the write-ahead log, which holds every commit not yet checkpointed (a
    /// checkpoint syncs the log first): what SQLite's own FULL commit does, later.
    fn sync(&self) -> Result<()> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let synced = std::fs::File::open(wal).and_then(|f| f.sync_data());
        match synced {
            Ok(()) => Ok(()),
            // No log: everything is in the database file, synced by the checkpoint.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Unavailable(format!(
                "syncing {}: {e}",
                wal.display()
            ))),
        }
    }

    fn update_machine(
        &self,
        m: &MachineRecord,
        expect: Expect<'_>,
        new_version: bool,
        event: Option<&EventRecord>,
    ) -> Result<i64> {
        let mut conn = self.writer();
        if !expect.observed {
            return update_machine_on(&mut conn, m, expect, new_version, event);
        }
        without_fsync(&mut conn, |c| {
            update_machine_on(c, m, expect, new_version, event)
        })
    }

    fn get_machine(&self, app: &str, id: &str) -> Result<Option<MachineRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE app = ?1 AND id = ?2"
        ))?;
        Ok(stmt.query_row([app, id], machine_from_row).optional()?)
    }

    fn list_machines(&self, app: &str, include_destroyed: bool) -> Result<Vec<MachineRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE app = ?1 \
             AND (?2 OR state != 'destroyed') ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![app, include_destroyed], machine_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn list_live_machines(&self) -> Result<Vec<MachineRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE state != 'destroyed' ORDER BY created_at"
        ))?;
        let rows = stmt.query_map([], machine_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn list_machines_changed_since(&self, since_ms: i64) -> Result<Vec<MachineRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE updated_at >= ?1 ORDER BY updated_at"
        ))?;
        let rows = stmt.query_map([since_ms], machine_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn list_versions(&self, machine_id: &str) -> Result<Vec<VersionRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT machine_id, instance_id, config, created_at FROM machine_versions \
             WHERE machine_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([machine_id], |r| {
            let config: String = r.get(2)?;
            Ok(VersionRecord {
                machine_id: r.get(0)?,
                instance_id: r.get(1)?,
                config: from_json(&config)?,
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn has_version(&self, machine_id: &str, instance_id: &str) -> Result<bool> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT 1 FROM machine_versions WHERE machine_id = ?1 AND instance_id = ?2",
        )?;
        Ok(stmt
            .query_row([machine_id, instance_id], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

impl EventStore for SqliteStore {
    fn append_event(&self, event: &EventRecord) -> Result<()> {
        without_fsync(&mut self.writer(), |c| insert_event(c, event))
    }

    fn list_events(&self, machine_id: &str, limit: usize) -> Result<Vec<EventRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT id, machine_id, type, status, source, timestamp, request FROM machine_events \
             WHERE machine_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![machine_id, limit as i64], |r| {
            let request: Option<String> = r.get(6)?;
            Ok(EventRecord {
                id: r.get(0)?,
                machine_id: r.get(1)?,
                kind: r.get(2)?,
                status: r.get(3)?,
                source: r.get(4)?,
                timestamp: r.get(5)?,
                request: request.as_deref().map(from_json).transpose()?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl LeaseStore for SqliteStore {
    fn get_lease(&self, machine_id: &str) -> Result<Option<LeaseRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT machine_id, nonce, expires_at, owner, description, version FROM leases \
                 WHERE machine_id = ?1",
        )?;
        Ok(stmt
            .query_row([machine_id], |r| {
                Ok(LeaseRecord {
                    machine_id: r.get(0)?,
                    nonce: r.get(1)?,
                    expires_at: r.get(2)?,
                    owner: r.get(3)?,
                    description: r.get(4)?,
                    version: r.get(5)?,
                })
            })
            .optional()?)
    }

    fn put_lease(&self, lease: &LeaseRecord) -> Result<()> {
        put_lease_on(&self.writer(), lease)
    }

    fn delete_lease(&self, machine_id: &str) -> Result<()> {
        self.writer()
            .prepare_cached("DELETE FROM leases WHERE machine_id = ?1")?
            .execute([machine_id])?;
        Ok(())
    }
}

impl NetworkStore for SqliteStore {
    fn ensure_network(&self, org_slug: &str, name: &str, now: i64) -> Result<NetworkRecord> {
        let conn = self.writer();
        let find = |conn: &Connection| {
            conn.prepare_cached("SELECT id FROM networks WHERE org_slug = ?1 AND name = ?2")?
                .query_row(params![org_slug, name], |r| r.get::<_, i64>(0))
                .optional()
        };
        // Looked up first: every machine create asks, and even an insert that does nothing
        // commits a page (the AUTOINCREMENT counter), with an fsync.
        let id = match find(&conn)? {
            Some(id) => id,
            None => {
                conn.prepare_cached(
                    "INSERT INTO networks (org_slug, name, created_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (org_slug, name) DO NOTHING",
                )?
                .execute(params![org_slug, name, now])?;
                find(&conn)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("network {org_slug}/{name} vanished"))
                })?
            }
        };
        network_record(&conn, id)
    }

    fn claim_ipv4_block(&self, network_id: u32, blocks: u32) -> Result<Option<u8>> {
        let conn = self.writer();
        let free: Option<i64> = conn
            .prepare_cached(
                "SELECT MIN(b) FROM (SELECT 0 AS b UNION ALL SELECT block + 1 FROM ipv4_blocks) \
             WHERE b NOT IN (SELECT block FROM ipv4_blocks)",
            )?
            .query_row([], |r| r.get(0))?;
        let Some(block) = free.filter(|b| *b < i64::from(blocks.min(256))) else {
            return Ok(None);
        };
        conn.prepare_cached("INSERT INTO ipv4_blocks (block, network_id) VALUES (?1, ?2)")?
            .execute(params![block, network_id])?;
        Ok(u8::try_from(block).ok())
    }

    fn list_networks(&self) -> Result<Vec<NetworkRecord>> {
        let conn = self.reader();
        let ids: Vec<i64> = conn
            .prepare_cached("SELECT id FROM networks ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.into_iter()
            .map(|id| network_record(&conn, id))
            .collect()
    }

    fn live_ipv4_addresses(&self, prefix: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT private_ipv4 FROM machines WHERE state != 'destroyed' \
             AND substr(private_ipv4, 1, length(?1)) = ?1",
        )?;
        let rows = stmt.query_map([prefix], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn setting_or_init(&self, key: &str, init: &str) -> Result<String> {
        let conn = self.writer();
        conn.prepare_cached(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![key, init])?;
        let mut stmt = conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")?;
        Ok(stmt.query_row([key], |r| r.get(0))?)
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")?;
        Ok(stmt.query_row([key], |r| r.get(0)).optional()?)
    }
}

impl SecretStore for SqliteStore {
    fn write_secrets(&self, app: &str, writes: &[SecretWrite], now: i64) -> Result<u64> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let bumped = tx
            .prepare_cached(
                "UPDATE apps SET secrets_version = secrets_version + 1 WHERE name = ?1",
            )?
            .execute([app])?;
        if bumped == 0 {
            return Err(StoreError::NotFound(format!("app {app}")));
        }
        let version: i64 = tx
            .prepare_cached("SELECT secrets_version FROM apps WHERE name = ?1")?
            .query_row([app], |r| r.get(0))?;
        for w in writes {
            match w {
                SecretWrite::Set {
                    name,
                    sealed,
                    digest,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO app_secrets \
                         (app, name, sealed, digest, created_at, updated_at, version) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) \
                         ON CONFLICT (app, name) DO UPDATE SET sealed = excluded.sealed, \
                         digest = excluded.digest, updated_at = excluded.updated_at, \
                         version = excluded.version",
                    )?
                    .execute(params![app, name, sealed, digest, now, version])?;
                }
                SecretWrite::Delete { name } => {
                    tx.prepare_cached("DELETE FROM app_secrets WHERE app = ?1 AND name = ?2")?
                        .execute(params![app, name])?;
                }
            }
        }
        tx.commit()?;
        u64::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("secrets version {version}")))
    }

    fn list_secrets(&self, app: &str) -> Result<SecretSet> {
        let conn = self.reader();
        let version: Option<i64> = conn
            .prepare_cached("SELECT secrets_version FROM apps WHERE name = ?1")?
            .query_row([app], |r| r.get(0))
            .optional()?;
        let Some(version) = version else {
            return Err(StoreError::NotFound(format!("app {app}")));
        };
        let mut stmt = conn.prepare_cached(
            "SELECT name, sealed, digest, created_at, updated_at, version FROM app_secrets \
             WHERE app = ?1 ORDER BY name",
        )?;
        let secrets = stmt
            .query_map([app], |r| {
                Ok(SecretRecord {
                    name: r.get(0)?,
                    sealed: r.get(1)?,
                    digest: r.get(2)?,
                    created_at: r.get(3)?,
                    updated_at: r.get(4)?,
                    version: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(SecretSet {
            version: u64::try_from(version).unwrap_or(0),
            secrets,
        })
    }
}

fn network_record(conn: &Connection, id: i64) -> Result<NetworkRecord> {
    let (org_slug, name) = conn
        .prepare_cached("SELECT org_slug, name FROM networks WHERE id = ?1")?
        .query_row([id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
    let blocks: Vec<i64> = conn
        .prepare_cached("SELECT block FROM ipv4_blocks WHERE network_id = ?1 ORDER BY block")?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(NetworkRecord {
        id: u32::try_from(id).map_err(|_| StoreError::Corrupt(format!("network id {id}")))?,
        org_slug,
        name,
        ipv4_blocks: blocks
            .into_iter()
            .filter_map(|b| u8::try_from(b).ok())
            .collect(),
    })
}

fn volume_from_row(r: &Row) -> rusqlite::Result<VolumeRecord> {
    Ok(VolumeRecord {
        id: r.get(0)?,
        app: r.get(1)?,
        name: r.get(2)?,
        state: r.get(3)?,
        size_gb: r.get(4)?,
        region: r.get(5)?,
        zone: r.get(6)?,
        encrypted: r.get(7)?,
        fstype: r.get(8)?,
        snapshot_retention: r.get(9)?,
        auto_backup_enabled: r.get(10)?,
        attached_machine_id: r.get(11)?,
        created_at: r.get(12)?,
        deleted_at: r.get(13)?,
        host_id: r.get(14)?,
    })
}

fn snapshot_from_row(r: &Row) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: r.get(0)?,
        volume_id: r.get(1)?,
        app: r.get(2)?,
        size: r.get(3)?,
        volume_size: r.get(4)?,
        status: r.get(5)?,
        retention_days: r.get(6)?,
        created_at: r.get(7)?,
    })
}

impl VolumeStore for SqliteStore {
    fn insert_volume(&self, v: &VolumeRecord) -> Result<()> {
        let conn = self.writer();
        conn.prepare_cached(&format!(
            "INSERT INTO volumes ({VOLUME_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ))?
        .execute(params![
            v.id,
            v.app,
            v.name,
            v.state,
            v.size_gb,
            v.region,
            v.zone,
            v.encrypted,
            v.fstype,
            v.snapshot_retention,
            v.auto_backup_enabled,
            v.attached_machine_id,
            v.created_at,
            v.deleted_at,
            v.host_id
        ])?;
        Ok(())
    }

    fn get_volume(&self, app: &str, id: &str) -> Result<Option<VolumeRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE app = ?1 AND id = ?2"
        ))?;
        Ok(stmt.query_row([app, id], volume_from_row).optional()?)
    }

    fn list_volumes(&self, app: &str) -> Result<Vec<VolumeRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE app = ?1 ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([app], volume_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn list_all_volumes(&self) -> Result<Vec<VolumeRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], volume_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn update_volume(&self, v: &VolumeRecord) -> Result<()> {
        let conn = self.writer();
        let n = conn
            .prepare_cached(
                "UPDATE volumes SET name = ?2, state = ?3, size_gb = ?4, snapshot_retention = ?5, \
             auto_backup_enabled = ?6, deleted_at = ?7 WHERE id = ?1",
            )?
            .execute(params![
                v.id,
                v.name,
                v.state,
                v.size_gb,
                v.snapshot_retention,
                v.auto_backup_enabled,
                v.deleted_at
            ])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("volume {}", v.id)));
        }
        Ok(())
    }

    fn attach_volume(&self, id: &str, machine_id: &str) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let row: Option<(Option<String>, Option<i64>)> = tx
            .prepare_cached("SELECT attached_machine_id, deleted_at FROM volumes WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match row {
            None | Some((_, Some(_))) => return Err(StoreError::NotFound(format!("volume {id}"))),
            Some((Some(holder), None)) if holder != machine_id => {
                return Err(StoreError::VolumeAttached {
                    volume: id.to_string(),
                    machine: holder,
                })
            }
            _ => {}
        }
        tx.prepare_cached("UPDATE volumes SET attached_machine_id = ?2 WHERE id = ?1")?
            .execute(params![id, machine_id])?;
        tx.commit()?;
        Ok(())
    }

    fn detach_volume(&self, id: &str, machine_id: &str) -> Result<()> {
        let conn = self.writer();
        conn.prepare_cached(
            "UPDATE volumes SET attached_machine_id = NULL \
             WHERE id = ?1 AND attached_machine_id = ?2",
        )?
        .execute(params![id, machine_id])?;
        Ok(())
    }

    fn purge_volume(&self, id: &str) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        tx.prepare_cached("DELETE FROM volume_snapshots WHERE volume_id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM volumes WHERE id = ?1")?
            .execute([id])?;
        tx.commit()?;
        Ok(())
    }

    fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let conn = self.writer();
        conn.prepare_cached(&format!(
            "INSERT INTO volume_snapshots ({SNAPSHOT_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))?
        .execute(params![
            s.id,
            s.volume_id,
            s.app,
            s.size,
            s.volume_size,
            s.status,
            s.retention_days,
            s.created_at
        ])?;
        Ok(())
    }

    fn list_snapshots(&self, volume_id: &str) -> Result<Vec<SnapshotRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE volume_id = ?1 \
             ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([volume_id], snapshot_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE id = ?1"
        ))?;
        Ok(stmt.query_row([id], snapshot_from_row).optional()?)
    }

    fn delete_snapshot(&self, id: &str) -> Result<()> {
        let conn = self.writer();
        conn.prepare_cached("DELETE FROM volume_snapshots WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }
}

impl ScheduleStore for SqliteStore {
    fn get_schedule(&self, machine_id: &str) -> Result<Option<ScheduleRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT machine_id, anchor_at, next_fire_at, last_fire_at, last_outcome \
             FROM machine_schedules WHERE machine_id = ?1",
        )?;
        Ok(stmt.query_row([machine_id], schedule_from_row).optional()?)
    }

    fn put_schedule(&self, s: &ScheduleRecord) -> Result<()> {
        let conn = self.writer();
        let res = conn
            .prepare_cached(
                "INSERT INTO machine_schedules \
             (machine_id, anchor_at, next_fire_at, last_fire_at, last_outcome) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (machine_id) DO UPDATE SET \
             anchor_at = excluded.anchor_at, next_fire_at = excluded.next_fire_at, \
             last_fire_at = excluded.last_fire_at, last_outcome = excluded.last_outcome",
            )?
            .execute(params![
                s.machine_id,
                s.anchor_at,
                s.next_fire_at,
                s.last_fire_at,
                s.last_outcome
            ]);
        match res {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
            {
                Err(StoreError::NotFound(format!("machine {}", s.machine_id)))
            }
            other => other.map(drop).map_err(Into::into),
        }
    }

    fn delete_schedule(&self, machine_id: &str) -> Result<()> {
        let conn = self.writer();
        conn.prepare_cached("DELETE FROM machine_schedules WHERE machine_id = ?1")?
            .execute([machine_id])?;
        Ok(())
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT machine_id, anchor_at, next_fire_at, last_fire_at, last_outcome \
             FROM machine_schedules ORDER BY next_fire_at",
        )?;
        let rows = stmt.query_map([], schedule_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn schedule_from_row(r: &Row) -> rusqlite::Result<ScheduleRecord> {
    Ok(ScheduleRecord {
        machine_id: r.get(0)?,
        anchor_at: r.get(1)?,
        next_fire_at: r.get(2)?,
        last_fire_at: r.get(3)?,
        last_outcome: r.get(4)?,
    })
}

fn certificate_from_row(r: &Row) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        hostname: r.get(0)?,
        app: r.get(1)?,
        fullchain: r.get(2)?,
        key_sealed: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

impl CertificateStore for SqliteStore {
    fn put_certificate(&self, c: &CertificateRecord) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let app_exists: bool = tx
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM apps WHERE name = ?1)")?
            .query_row([&c.app], |r| r.get(0))?;
        if !app_exists {
            return Err(StoreError::NotFound(format!("app {}", c.app)));
        }
        let owner: Option<String> = tx
            .prepare_cached("SELECT app FROM certificates WHERE hostname = ?1")?
            .query_row([&c.hostname], |r| r.get(0))
            .optional()?;
        if owner.as_deref().is_some_and(|o| o != c.app) {
            return Err(StoreError::Conflict(format!(
                "hostname {} (it belongs to another app)",
                c.hostname
            )));
        }
        tx.prepare_cached(&format!(
            "INSERT INTO certificates ({CERT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (hostname) DO UPDATE SET fullchain = excluded.fullchain, \
                 key_sealed = excluded.key_sealed, updated_at = excluded.updated_at"
        ))?
        .execute(params![
            c.hostname,
            c.app,
            c.fullchain,
            c.key_sealed,
            c.created_at,
            c.updated_at
        ])?;
        tx.commit()?;
        Ok(())
    }

    fn get_certificate(&self, hostname: &str) -> Result<Option<CertificateRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE hostname = ?1"
        ))?;
        Ok(stmt
            .query_row([hostname], certificate_from_row)
            .optional()?)
    }

    fn list_certificates(&self, app: Option<&str>) -> Result<Vec<CertificateRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE ?1 IS NULL OR app = ?1 \
             ORDER BY hostname"
        ))?;
        let rows = stmt.query_map([app], certificate_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_certificate(&self, hostname: &str) -> Result<bool> {
        let conn = self.writer();
        let mut stmt = conn.prepare_cached("DELETE FROM certificates WHERE hostname = ?1")?;
        Ok(stmt.execute([hostname])? > 0)
    }
}

impl IpAssignmentStore for SqliteStore {
    fn insert_ip_assignment(&self, r: &IpAssignmentRecord) -> Result<()> {
        let conn = self.writer();
        let res = conn
            .prepare_cached(
                "INSERT INTO ip_assignments (ip, app, region, service_name, shared, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                r.ip,
                r.app,
                r.region,
                r.service_name,
                r.shared,
                r.created_at
            ]);
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
            {
                Err(StoreError::NotFound(format!("app {}", r.app)))
            }
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("address {}", r.ip)))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn list_ip_assignments(&self, app: Option<&str>) -> Result<Vec<IpAssignmentRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT ip, app, region, service_name, shared, created_at FROM ip_assignments \
             WHERE ?1 IS NULL OR app = ?1 ORDER BY created_at, ip",
        )?;
        let rows = stmt.query_map([app], |r| {
            Ok(IpAssignmentRecord {
                ip: r.get(0)?,
                app: r.get(1)?,
                region: r.get(2)?,
                service_name: r.get(3)?,
                shared: r.get(4)?,
                created_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_ip_assignment(&self, app: &str, ip: &str) -> Result<bool> {
        let conn = self.writer();
        let mut stmt =
            conn.prepare_cached("DELETE FROM ip_assignments WHERE app = ?1 AND ip = ?2")?;
        Ok(stmt.execute(params![app, ip])? > 0)
    }
}

impl HostStore for SqliteStore {
    fn register_host(&self, h: &HostRecord) -> Result<()> {
        self.writer().prepare_cached("INSERT INTO hosts (id, region, cpus, memory_mb, disk_gb, api_addr, registered_at, \
             heartbeat_at, instance) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (id) DO UPDATE \
             SET region = excluded.region, cpus = excluded.cpus, memory_mb = excluded.memory_mb, \
             disk_gb = excluded.disk_gb, api_addr = excluded.api_addr, \
             heartbeat_at = excluded.heartbeat_at, instance = excluded.instance")?.execute(params![
                h.id,
                h.region,
                h.cpus,
                h.memory_mb,
                h.disk_gb,
                h.api_addr,
                h.registered_at,
                h.heartbeat_at,
                h.instance
            ])?;
        Ok(())
    }

    fn heartbeat(&self, host_id: &str, now: i64) -> Result<()> {
        let n = self
            .writer()
            .prepare_cached("UPDATE hosts SET heartbeat_at = ?2 WHERE id = ?1")?
            .execute(params![host_id, now])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("host {host_id}")));
        }
        Ok(())
    }

    fn list_hosts(&self) -> Result<Vec<HostRecord>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT id, region, cpus, memory_mb, disk_gb, api_addr, registered_at, heartbeat_at, \
             instance FROM hosts ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(HostRecord {
                id: r.get(0)?,
                region: r.get(1)?,
                cpus: r.get(2)?,
                memory_mb: r.get(3)?,
                disk_gb: r.get(4)?,
                api_addr: r.get(5)?,
                registered_at: r.get(6)?,
                heartbeat_at: r.get(7)?,
                instance: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::conformance::app;

    #[test]
    fn test_sqlite_meets_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::conformance::run_all(&mut || {
            n += 1;
            Box::new(SqliteStore::open(&dir.path().join(format!("state-{n}.db"))).unwrap())
        });
    }

    #[test]
    fn test_observed_writes_skip_the_fsync_and_leave_the_rest_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        s.create_app(&app("a1")).unwrap();
        let m = crate::conformance::machine("a1", "00000000000001", "n1");
        s.insert_machine(&m, &crate::conformance::event("e1", &m.id, 1), None)
            .unwrap();
        let observed = Expect {
            row_version: m.row_version,
            lease: None,
            observed: true,
        };
        s.update_machine(&m, observed, false, None).unwrap();
        // FULL (2) again for every other write.
        let sync: i64 = s
            .writer()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
    }

    #[test]
    fn test_an_unsynced_insert_is_seen_at_once_and_synced_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        assert!(s.wal.as_ref().is_some_and(|w| w.ends_with("state.db-wal")));
        s.create_app(&app("a1")).unwrap();
        let m = crate::conformance::machine("a1", "00000000000001", "n1");
        s.insert_machine_unsynced(&m, &crate::conformance::event("e1", &m.id, 1), None)
            .unwrap();
        // Every reader sees it before the sync.
        assert!(s.get_machine("a1", &m.id).unwrap().is_some());
        s.sync().unwrap();
        let sync: i64 = s
            .writer()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL again for every other write");
        // Reopened (as after a restart), it is there.
        drop(s);
        let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        assert!(s.get_machine("a1", &m.id).unwrap().is_some());
    }

    #[test]
    fn test_migrates_an_older_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // A database as the first release left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO apps (id, name, org_slug, created_at) VALUES ('i', 'old', 'personal', 1)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_app("old").unwrap().unwrap().idempotency_key, None);
        let mut a = app("new");
        a.idempotency_key = Some("k".into());
        store.create_app(&a).unwrap();
        assert_eq!(
            store.get_app_by_idempotency_key("k").unwrap().unwrap().name,
            "new"
        );
    }

    #[test]
    fn test_reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.create_app(&app("keep")).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.get_app("keep").unwrap().is_some());
    }
}
