//! The cluster store: Hangar's [`Store`](hangar_store::Store) traits on PostgreSQL, for several
//! hosts sharing one Machines API. Every method is one transaction, as with SQLite; the
//! compare-and-swap rules (row versions, leases, unique names and addresses, one holder per
//! volume) are enforced by the database, so they hold across daemons, not just inside one.
//! It passes the same [`conformance`](hangar_store::conformance) checks as the SQLite backend.
//! Text is ordered by bytes (`COLLATE "C"`), as SQLite orders it, whatever the database's
//! locale.

mod schema;

use hangar_store::columns::{
    APP as APP_COLUMNS, CERTIFICATE as CERT_COLUMNS, MACHINE as MACHINE_COLUMNS,
    SNAPSHOT as SNAPSHOT_COLUMNS, VOLUME as VOLUME_COLUMNS,
};
use std::time::Duration;

use postgres::types::{FromSql, ToSql};
use postgres::{error::SqlState, GenericClient, NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;

use hangar_store::{
    AppRecord, AppStore, CertificateRecord, CertificateStore, EventRecord, EventStore, Expect,
    HostRecord, HostStore, IpAssignmentRecord, IpAssignmentStore, LeaseRecord, LeaseStore,
    MachineRecord, MachineStore, NetworkRecord, NetworkStore, ScheduleRecord, ScheduleStore,
    SecretRecord, SecretSet, SecretStore, SecretWrite, SnapshotRecord, StoreError, VersionRecord,
    VolumeRecord, VolumeStore,
};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// Connections a daemon keeps to the database.
const POOL_SIZE: u32 = 8;
/// How long a request waits for a connection (or the database) before it fails as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest any one statement may run (or wait for a lock).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);

pub struct PgStore {
    /// Always `Some` until dropped.
    pool: Option<Pool>,
}

impl Drop for PgStore {
    /// Closing a connection blocks on the client's own runtime, which panics on an async
    /// worker thread (a daemon that fails at start-up drops its store there): the pool is
    /// closed on a thread of its own.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host/db`, or libpq's `key=value`
    /// form; `host=/run/postgresql` for a unix socket) and applies pending migrations.
    pub fn connect(url: &str) -> Result<Self> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A partition that drops packets (no reset) must fail calls too, not hang them:
        // keepalives notice a dead peer, and no statement waits longer than this.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        if config.get_options().is_none() {
            config.options(&format!(
                "-c statement_timeout={}",
                STATEMENT_TIMEOUT.as_millis()
            ));
        }
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            .build(PostgresConnectionManager::new(config, NoTls))
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))?;
        let store = PgStore { pool: Some(pool) };
        let mut conn = store.conn()?;
        schema::migrate(&mut conn)?;
        drop(conn);
        Ok(store)
    }

    fn conn(&self) -> Result<Conn> {
        self.pool
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?
            .get()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))
    }
}

/// A PostgreSQL failure as a store error: a lost or refused connection (or a server shutting
/// down) is [`StoreError::Unavailable`], which callers may retry.
pub(crate) fn pg(e: postgres::Error) -> StoreError {
    // Serialization failures, deadlocks and lock timeouts: another transaction won; the
    // caller may retry, as after any conflict.
    if let Some(code) = e.code() {
        if [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
        ]
        .contains(code)
        {
            return StoreError::Conflict(format!("a concurrent write ({e})"));
        }
        if code == &SqlState::QUERY_CANCELED {
            return StoreError::Unavailable(format!("PostgreSQL: {e}"));
        }
    }
    let lost = e.is_closed()
        || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
        || e.code().is_some_and(|c| {
            let code = c.code();
            code.starts_with("08") || code.starts_with("57P")
        });
    if lost {
        StoreError::Unavailable(format!("PostgreSQL: {e}"))
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// The constraint a unique violation broke.
fn unique_violation(e: &postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (db.code() == &SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or(""))
}

fn foreign_key_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
}

fn get<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    r.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn u64_of(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
}

fn app_from_row(r: &Row) -> Result<AppRecord> {
    Ok(AppRecord {
        id: get(r, 0)?,
        name: get(r, 1)?,
        org_slug: get(r, 2)?,
        network: get(r, 3)?,
        internal_numeric_id: get(r, 4)?,
        created_at: get(r, 5)?,
        idempotency_key: get(r, 6)?,
        app_role: get(r, 7)?,
    })
}

fn machine_from_row(r: &Row) -> Result<MachineRecord> {
    let state: String = get(r, 3)?;
    let config: String = get(r, 10)?;
    let image_ref: Option<String> = get(r, 11)?;
    let image_digests: Option<String> = get(r, 12)?;
    Ok(MachineRecord {
        id: get(r, 0)?,
        app: get(r, 1)?,
        name: get(r, 2)?,
        state: state
            .parse()
            .map_err(|e: String| StoreError::Corrupt(format!("machine state: {e}")))?,
        region: get(r, 4)?,
        instance_id: get(r, 5)?,
        private_ip: get(r, 6)?,
        created_at: get(r, 7)?,
        updated_at: get(r, 8)?,
        cordoned: get(r, 9)?,
        config: from_json(&config)?,
        image_ref: image_ref.as_deref().map(from_json).transpose()?,
        image_digests: image_digests
            .as_deref()
            .map(from_json)
            .transpose()?
            .unwrap_or_default(),
        row_version: get(r, 13)?,
        host_id: get(r, 14)?,
        private_ipv4: get(r, 15)?,
        skip_secrets: get(r, 16)?,
    })
}

fn rows<T>(rows: Vec<Row>, each: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(each).collect()
}

/// A machine write's failure: a unique violation is its name's, or one of its private
/// addresses' (another live machine holds it).
fn machine_write_error(e: postgres::Error, m: &MachineRecord) -> StoreError {
    match unique_violation(&e) {
        Some(c) if c.contains("ipv") => {
            StoreError::AddressTaken(format!("{} / {}", m.private_ip, m.private_ipv4))
        }
        Some(_) => StoreError::MachineNameTaken(m.name.clone()),
        None => pg(e),
    }
}

fn insert_event(c: &mut impl GenericClient, e: &EventRecord) -> Result<()> {
    let request = e.request.as_ref().map(to_json).transpose()?;
    c.execute(
        "INSERT INTO machine_events (id, machine_id, type, status, source, timestamp, request) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &e.id,
            &e.machine_id,
            &e.kind,
            &e.status,
            &e.source,
            &e.timestamp,
            &request,
        ],
    )
    .map_err(pg)?;
    Ok(())
}

fn insert_version(c: &mut impl GenericClient, m: &MachineRecord) -> Result<()> {
    c.execute(
        "INSERT INTO machine_versions (machine_id, instance_id, config, created_at) \
         VALUES ($1, $2, $3, $4)",
        &[&m.id, &m.instance_id, &to_json(&m.config)?, &m.updated_at],
    )
    .map_err(pg)?;
    Ok(())
}

/// Locks the machine's row for the rest of the transaction: guarded writes and lease changes
/// of one machine then take turns, on every host. Whether it exists.
fn lock_machine(c: &mut impl GenericClient, machine_id: &str) -> Result<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM machines WHERE id = $1 FOR UPDATE",
        &[&machine_id],
    )
    .map_err(pg)?
    .is_some())
}

/// Refuses a user's write to a machine whose active lease (expiring after `now`) has another
/// nonce than `nonce`.
fn check_lease_on(
    c: &mut impl GenericClient,
    machine_id: &str,
    nonce: Option<&str>,
    now: i64,
) -> Result<()> {
    let held = c
        .query_opt(
            "SELECT nonce, owner, expires_at FROM leases WHERE machine_id = $1",
            &[&machine_id],
        )
        .map_err(pg)?;
    if let Some(row) = held {
        let (held_nonce, owner, expires_at): (String, String, i64) =
            (get(&row, 0)?, get(&row, 1)?, get(&row, 2)?);
        if expires_at > now && nonce != Some(held_nonce.as_str()) {
            return Err(StoreError::LeaseHeld { owner, expires_at });
        }
    }
    Ok(())
}

fn put_lease_on(c: &mut impl GenericClient, l: &LeaseRecord) -> Result<()> {
    c.execute(
        "INSERT INTO leases (machine_id, nonce, expires_at, owner, description, version) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (machine_id) DO UPDATE SET nonce = excluded.nonce, \
         expires_at = excluded.expires_at, owner = excluded.owner, \
         description = excluded.description, version = excluded.version",
        &[
            &l.machine_id,
            &l.nonce,
            &l.expires_at,
            &l.owner,
            &l.description,
            &l.version,
        ],
    )
    .map_err(|e| {
        if foreign_key_violation(&e) {
            StoreError::NotFound(format!("machine {}", l.machine_id))
        } else {
            pg(e)
        }
    })?;
    Ok(())
}

/// Every read is a round trip to the server: the blocking pool's.
impl hangar_store::Backend for PgStore {}

impl AppStore for PgStore {
    fn create_app(&self, app: &AppRecord) -> Result<AppRecord> {
        let row = self
            .conn()?
            .query_one(
                "INSERT INTO apps (id, name, org_slug, network, created_at, idempotency_key, \
                 app_role) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING internal_numeric_id",
                &[
                    &app.id,
                    &app.name,
                    &app.org_slug,
                    &app.network,
                    &app.created_at,
                    &app.idempotency_key,
                    &app.app_role,
                ],
            )
            .map_err(|e| match unique_violation(&e) {
                Some(_) => StoreError::AppNameTaken(app.name.clone()),
                None => pg(e),
            })?;
        let mut out = app.clone();
        out.internal_numeric_id = get(&row, 0)?;
        Ok(out)
    }

    fn get_app(&self, name: &str) -> Result<Option<AppRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE name = $1"),
                &[&name],
            )
            .map_err(pg)?
            .as_ref()
            .map(app_from_row)
            .transpose()
    }

    fn get_app_by_idempotency_key(&self, key: &str) -> Result<Option<AppRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE idempotency_key = $1"),
                &[&key],
            )
            .map_err(pg)?
            .as_ref()
            .map(app_from_row)
            .transpose()
    }

    fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>> {
        let found = self
            .conn()?
            .query(
                &format!(
                    "SELECT {APP_COLUMNS} FROM apps WHERE $1::text IS NULL OR org_slug = $1 \
                     ORDER BY name COLLATE \"C\""
                ),
                &[&org_slug],
            )
            .map_err(pg)?;
        rows(found, app_from_row)
    }

    fn delete_app(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn()?
            .execute("DELETE FROM apps WHERE name = $1", &[&name])
            .map_err(pg)?
            > 0)
    }

    fn count_machines(&self, app: &str) -> Result<i64> {
        let row = self
            .conn()?
            .query_one(
                "SELECT COUNT(*) FROM machines WHERE app = $1 AND state != 'destroyed'",
                &[&app],
            )
            .map_err(pg)?;
        get(&row, 0)
    }
}

impl MachineStore for PgStore {
    fn insert_machine(
        &self,
        m: &MachineRecord,
        event: &EventRecord,
        lease: Option<&LeaseRecord>,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        let image_ref = m.image_ref.as_ref().map(to_json).transpose()?;
        let params: [&(dyn ToSql + Sync); 17] = [
            &m.id,
            &m.app,
            &m.name,
            &m.state.as_str(),
            &m.region,
            &m.instance_id,
            &m.private_ip,
            &m.created_at,
            &m.updated_at,
            &m.cordoned,
            &to_json(&m.config)?,
            &image_ref,
            &to_json(&m.image_digests)?,
            &m.row_version,
            &m.host_id,
            &m.private_ipv4,
            &m.skip_secrets,
        ];
        tx.execute(
            &format!(
                "INSERT INTO machines ({MACHINE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
                 $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ),
            &params,
        )
        .map_err(|e| {
            if foreign_key_violation(&e) {
                StoreError::NotFound(format!("app {}", m.app))
            } else {
                machine_write_error(e, m)
            }
        })?;
        insert_version(&mut tx, m)?;
        insert_event(&mut tx, event)?;
        if let Some(l) = lease {
            put_lease_on(&mut tx, l)?;
        }
        tx.commit().map_err(pg)
    }

    fn update_machine(
        &self,
        m: &MachineRecord,
        expect: Expect<'_>,
        new_version: bool,
        event: Option<&EventRecord>,
    ) -> Result<i64> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        if expect.observed {
            // This transaction's commit does not wait for the WAL flush (see `Expect`).
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .map_err(pg)?;
        }
        if !lock_machine(&mut tx, &m.id)? {
            return Err(StoreError::NotFound(format!("machine {}", m.id)));
        }
        if let Some((nonce, now)) = expect.lease {
            check_lease_on(&mut tx, &m.id, nonce, now)?;
        }
        let image_ref = m.image_ref.as_ref().map(to_json).transpose()?;
        let config = to_json(&m.config)?;
        let next = expect.row_version + 1;
        let params: [&(dyn ToSql + Sync); 16] = [
            &m.id,
            &m.name,
            &m.state.as_str(),
            &m.region,
            &m.instance_id,
            &m.private_ip,
            &m.updated_at,
            &m.cordoned,
            &config,
            &image_ref,
            &to_json(&m.image_digests)?,
            &expect.row_version,
            &next,
            &m.host_id,
            &m.private_ipv4,
            &m.skip_secrets,
        ];
        let updated = tx
            .execute(
                "UPDATE machines SET name = $2, state = $3, region = $4, instance_id = $5, \
                 private_ip = $6, updated_at = $7, cordoned = $8, config = $9, image_ref = $10, \
                 image_digests = $11, row_version = $13, host_id = $14, private_ipv4 = $15, \
                 skip_secrets = $16 WHERE id = $1 AND row_version = $12",
                &params,
            )
            .map_err(|e| machine_write_error(e, m))?;
        if updated == 0 {
            return Err(StoreError::Conflict(format!("machine {}", m.id)));
        }
        if new_version {
            insert_version(&mut tx, m)?;
        } else {
            // Metadata changes rewrite the current version's config without making a new one.
            tx.execute(
                "UPDATE machine_versions SET config = $3 WHERE machine_id = $1 AND instance_id = $2",
                &[&m.id, &m.instance_id, &config],
            )
            .map_err(pg)?;
        }
        if let Some(e) = event {
            insert_event(&mut tx, e)?;
        }
        tx.commit().map_err(pg)?;
        Ok(next)
    }

    fn get_machine(&self, app: &str, id: &str) -> Result<Option<MachineRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE app = $1 AND id = $2"),
                &[&app, &id],
            )
            .map_err(pg)?
            .as_ref()
            .map(machine_from_row)
            .transpose()
    }

    fn list_machines(&self, app: &str, include_destroyed: bool) -> Result<Vec<MachineRecord>> {
        let found = self
            .conn()?
            .query(
                &format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines WHERE app = $1 \
                     AND ($2 OR state != 'destroyed') ORDER BY created_at, id COLLATE \"C\""
                ),
                &[&app, &include_destroyed],
            )
            .map_err(pg)?;
        rows(found, machine_from_row)
    }

    fn list_live_machines(&self) -> Result<Vec<MachineRecord>> {
        let found = self
            .conn()?
            .query(
                &format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines WHERE state != 'destroyed' \
                     ORDER BY created_at, id COLLATE \"C\""
                ),
                &[],
            )
            .map_err(pg)?;
        rows(found, machine_from_row)
    }

    fn list_machines_changed_since(&self, since_ms: i64) -> Result<Vec<MachineRecord>> {
        let found = self
            .conn()?
            .query(
                &format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines WHERE updated_at >= $1 \
                     ORDER BY updated_at, id COLLATE \"C\""
                ),
                &[&since_ms],
            )
            .map_err(pg)?;
        rows(found, machine_from_row)
    }

    fn list_versions(&self, machine_id: &str) -> Result<Vec<VersionRecord>> {
        let found = self
            .conn()?
            .query(
                "SELECT machine_id, instance_id, config, created_at FROM machine_versions \
                 WHERE machine_id = $1 ORDER BY seq",
                &[&machine_id],
            )
            .map_err(pg)?;
        rows(found, |r| {
            let config: String = get(r, 2)?;
            Ok(VersionRecord {
                machine_id: get(r, 0)?,
                instance_id: get(r, 1)?,
                config: from_json(&config)?,
                created_at: get(r, 3)?,
            })
        })
    }

    fn has_version(&self, machine_id: &str, instance_id: &str) -> Result<bool> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT 1 FROM machine_versions WHERE machine_id = $1 AND instance_id = $2",
                &[&machine_id, &instance_id],
            )
            .map_err(pg)?
            .is_some())
    }
}

impl EventStore for PgStore {
    fn append_event(&self, event: &EventRecord) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .map_err(pg)?;
        insert_event(&mut tx, event)?;
        tx.commit().map_err(pg)
    }

    fn list_events(&self, machine_id: &str, limit: usize) -> Result<Vec<EventRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let found = self
            .conn()?
            .query(
                "SELECT id, machine_id, type, status, source, timestamp, request \
                 FROM machine_events WHERE machine_id = $1 ORDER BY seq DESC LIMIT $2",
                &[&machine_id, &limit],
            )
            .map_err(pg)?;
        rows(found, |r| {
            let request: Option<String> = get(r, 6)?;
            Ok(EventRecord {
                id: get(r, 0)?,
                machine_id: get(r, 1)?,
                kind: get(r, 2)?,
                status: get(r, 3)?,
                source: get(r, 4)?,
                timestamp: get(r, 5)?,
                request: request.as_deref().map(from_json).transpose()?,
            })
        })
    }
}

impl LeaseStore for PgStore {
    fn get_lease(&self, machine_id: &str) -> Result<Option<LeaseRecord>> {
        self.conn()?
            .query_opt(
                "SELECT machine_id, nonce, expires_at, owner, description, version FROM leases \
                 WHERE machine_id = $1",
                &[&machine_id],
            )
            .map_err(pg)?
            .map(|r| {
                Ok(LeaseRecord {
                    machine_id: get(&r, 0)?,
                    nonce: get(&r, 1)?,
                    expires_at: get(&r, 2)?,
                    owner: get(&r, 3)?,
                    description: get(&r, 4)?,
                    version: get(&r, 5)?,
                })
            })
            .transpose()
    }

    fn put_lease(&self, lease: &LeaseRecord) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        if !lock_machine(&mut tx, &lease.machine_id)? {
            return Err(StoreError::NotFound(format!(
                "machine {}",
                lease.machine_id
            )));
        }
        put_lease_on(&mut tx, lease)?;
        tx.commit().map_err(pg)
    }

    fn delete_lease(&self, machine_id: &str) -> Result<()> {
        self.conn()?
            .execute("DELETE FROM leases WHERE machine_id = $1", &[&machine_id])
            .map_err(pg)?;
        Ok(())
    }
}

fn network_record(c: &mut impl GenericClient, id: i64) -> Result<NetworkRecord> {
    let row = c
        .query_one("SELECT org_slug, name FROM networks WHERE id = $1", &[&id])
        .map_err(pg)?;
    let blocks = c
        .query(
            "SELECT block FROM ipv4_blocks WHERE network_id = $1 ORDER BY block",
            &[&id],
        )
        .map_err(pg)?;
    Ok(NetworkRecord {
        id: u32::try_from(id).map_err(|_| StoreError::Corrupt(format!("network id {id}")))?,
        org_slug: get(&row, 0)?,
        name: get(&row, 1)?,
        ipv4_blocks: rows(blocks, |r| get::<i64>(r, 0))?
            .into_iter()
            .filter_map(|b| u8::try_from(b).ok())
            .collect(),
    })
}

impl NetworkStore for PgStore {
    fn ensure_network(&self, org_slug: &str, name: &str, now: i64) -> Result<NetworkRecord> {
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO networks (org_slug, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (org_slug, name) DO NOTHING",
            &[&org_slug, &name, &now],
        )
        .map_err(pg)?;
        let row = conn
            .query_one(
                "SELECT id FROM networks WHERE org_slug = $1 AND name = $2",
                &[&org_slug, &name],
            )
            .map_err(pg)?;
        network_record(&mut *conn, get(&row, 0)?)
    }

    fn claim_ipv4_block(&self, network_id: u32, blocks: u32) -> Result<Option<u8>> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        // One claim at a time across hosts: two must not both see the same block free.
        tx.batch_execute("LOCK TABLE ipv4_blocks IN SHARE ROW EXCLUSIVE MODE")
            .map_err(pg)?;
        let row = tx
            .query_one(
                "SELECT MIN(b) FROM (SELECT 0::bigint AS b UNION ALL \
                 SELECT block + 1 FROM ipv4_blocks) AS candidates \
                 WHERE b NOT IN (SELECT block FROM ipv4_blocks)",
                &[],
            )
            .map_err(pg)?;
        let free: Option<i64> = get(&row, 0)?;
        let Some(block) = free.filter(|b| *b < i64::from(blocks.min(256))) else {
            return Ok(None);
        };
        tx.execute(
            "INSERT INTO ipv4_blocks (block, network_id) VALUES ($1, $2)",
            &[&block, &i64::from(network_id)],
        )
        .map_err(pg)?;
        tx.commit().map_err(pg)?;
        Ok(u8::try_from(block).ok())
    }

    fn list_networks(&self) -> Result<Vec<NetworkRecord>> {
        let mut conn = self.conn()?;
        let ids = conn
            .query("SELECT id FROM networks ORDER BY id", &[])
            .map_err(pg)?;
        rows(ids, |r| get::<i64>(r, 0))?
            .into_iter()
            .map(|id| network_record(&mut *conn, id))
            .collect()
    }

    fn live_ipv4_addresses(&self, prefix: &str) -> Result<Vec<String>> {
        let found = self
            .conn()?
            .query(
                "SELECT private_ipv4 FROM machines WHERE state != 'destroyed' \
                 AND starts_with(private_ipv4, $1)",
                &[&prefix],
            )
            .map_err(pg)?;
        rows(found, |r| get(r, 0))
    }

    fn setting_or_init(&self, key: &str, init: &str) -> Result<String> {
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &init],
        )
        .map_err(pg)?;
        let row = conn
            .query_one("SELECT value FROM settings WHERE key = $1", &[&key])
            .map_err(pg)?;
        get(&row, 0)
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn()?
            .query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
            .map_err(pg)?
            .map(|r| get(&r, 0))
            .transpose()
    }
}

impl SecretStore for PgStore {
    fn write_secrets(&self, app: &str, writes: &[SecretWrite], now: i64) -> Result<u64> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        let Some(row) = tx
            .query_opt(
                "UPDATE apps SET secrets_version = secrets_version + 1 WHERE name = $1 \
                 RETURNING secrets_version",
                &[&app],
            )
            .map_err(pg)?
        else {
            return Err(StoreError::NotFound(format!("app {app}")));
        };
        let version: i64 = get(&row, 0)?;
        for w in writes {
            match w {
                SecretWrite::Set {
                    name,
                    sealed,
                    digest,
                } => {
                    tx.execute(
                        "INSERT INTO app_secrets \
                         (app, name, sealed, digest, created_at, updated_at, version) \
                         VALUES ($1, $2, $3, $4, $5, $5, $6) \
                         ON CONFLICT (app, name) DO UPDATE SET sealed = excluded.sealed, \
                         digest = excluded.digest, updated_at = excluded.updated_at, \
                         version = excluded.version",
                        &[&app, name, sealed, digest, &now, &version],
                    )
                    .map_err(pg)?;
                }
                SecretWrite::Delete { name } => {
                    tx.execute(
                        "DELETE FROM app_secrets WHERE app = $1 AND name = $2",
                        &[&app, name],
                    )
                    .map_err(pg)?;
                }
            }
        }
        tx.commit().map_err(pg)?;
        u64_of(version, "secrets version")
    }

    fn list_secrets(&self, app: &str) -> Result<SecretSet> {
        let mut conn = self.conn()?;
        let mut tx = conn
            .build_transaction()
            .read_only(true)
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .start()
            .map_err(pg)?;
        let Some(row) = tx
            .query_opt("SELECT secrets_version FROM apps WHERE name = $1", &[&app])
            .map_err(pg)?
        else {
            return Err(StoreError::NotFound(format!("app {app}")));
        };
        let version: i64 = get(&row, 0)?;
        let found = tx
            .query(
                "SELECT name, sealed, digest, created_at, updated_at, version FROM app_secrets \
                 WHERE app = $1 ORDER BY name COLLATE \"C\"",
                &[&app],
            )
            .map_err(pg)?;
        let secrets = rows(found, |r| {
            Ok(SecretRecord {
                name: get(r, 0)?,
                sealed: get(r, 1)?,
                digest: get(r, 2)?,
                created_at: get(r, 3)?,
                updated_at: get(r, 4)?,
                version: u64_of(get(r, 5)?, "secret version")?,
            })
        })?;
        tx.commit().map_err(pg)?;
        Ok(SecretSet {
            version: u64_of(version, "secrets version")?,
            secrets,
        })
    }
}

fn volume_from_row(r: &Row) -> Result<VolumeRecord> {
    Ok(VolumeRecord {
        id: get(r, 0)?,
        app: get(r, 1)?,
        name: get(r, 2)?,
        state: get(r, 3)?,
        size_gb: get(r, 4)?,
        region: get(r, 5)?,
        zone: get(r, 6)?,
        encrypted: get(r, 7)?,
        fstype: get(r, 8)?,
        snapshot_retention: get(r, 9)?,
        auto_backup_enabled: get(r, 10)?,
        attached_machine_id: get(r, 11)?,
        created_at: get(r, 12)?,
        deleted_at: get(r, 13)?,
        host_id: get(r, 14)?,
    })
}

fn snapshot_from_row(r: &Row) -> Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: get(r, 0)?,
        volume_id: get(r, 1)?,
        app: get(r, 2)?,
        size: get(r, 3)?,
        volume_size: get(r, 4)?,
        status: get(r, 5)?,
        retention_days: get(r, 6)?,
        created_at: get(r, 7)?,
    })
}

impl VolumeStore for PgStore {
    fn insert_volume(&self, v: &VolumeRecord) -> Result<()> {
        let params: [&(dyn ToSql + Sync); 15] = [
            &v.id,
            &v.app,
            &v.name,
            &v.state,
            &v.size_gb,
            &v.region,
            &v.zone,
            &v.encrypted,
            &v.fstype,
            &v.snapshot_retention,
            &v.auto_backup_enabled,
            &v.attached_machine_id,
            &v.created_at,
            &v.deleted_at,
            &v.host_id,
        ];
        self.conn()?
            .execute(
                &format!(
                    "INSERT INTO volumes ({VOLUME_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
                     $8, $9, $10, $11, $12, $13, $14, $15)"
                ),
                &params,
            )
            .map_err(pg)?;
        Ok(())
    }

    fn get_volume(&self, app: &str, id: &str) -> Result<Option<VolumeRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE app = $1 AND id = $2"),
                &[&app, &id],
            )
            .map_err(pg)?
            .as_ref()
            .map(volume_from_row)
            .transpose()
    }

    fn list_volumes(&self, app: &str) -> Result<Vec<VolumeRecord>> {
        let found = self
            .conn()?
            .query(
                &format!(
                    "SELECT {VOLUME_COLUMNS} FROM volumes WHERE app = $1 ORDER BY created_at, id COLLATE \"C\""
                ),
                &[&app],
            )
            .map_err(pg)?;
        rows(found, volume_from_row)
    }

    fn list_all_volumes(&self) -> Result<Vec<VolumeRecord>> {
        let found = self
            .conn()?
            .query(
                &format!(
                    "SELECT {VOLUME_COLUMNS} FROM volumes ORDER BY created_at, id COLLATE \"C\""
                ),
                &[],
            )
            .map_err(pg)?;
        rows(found, volume_from_row)
    }

    fn update_volume(&self, v: &VolumeRecord) -> Result<()> {
        let n = self
            .conn()?
            .execute(
                "UPDATE volumes SET name = $2, state = $3, size_gb = $4, \
                 snapshot_retention = $5, auto_backup_enabled = $6, deleted_at = $7 \
                 WHERE id = $1",
                &[
                    &v.id,
                    &v.name,
                    &v.state,
                    &v.size_gb,
                    &v.snapshot_retention,
                    &v.auto_backup_enabled,
                    &v.deleted_at,
                ],
            )
            .map_err(pg)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("volume {}", v.id)));
        }
        Ok(())
    }

    fn attach_volume(&self, id: &str, machine_id: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        let row = tx
            .query_opt(
                "SELECT attached_machine_id, deleted_at FROM volumes WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .map_err(pg)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("volume {id}")));
        };
        let (holder, deleted_at): (Option<String>, Option<i64>) = (get(&row, 0)?, get(&row, 1)?);
        if deleted_at.is_some() {
            return Err(StoreError::NotFound(format!("volume {id}")));
        }
        if let Some(holder) = holder.filter(|h| h != machine_id) {
            return Err(StoreError::VolumeAttached {
                volume: id.to_string(),
                machine: holder,
            });
        }
        tx.execute(
            "UPDATE volumes SET attached_machine_id = $2 WHERE id = $1",
            &[&id, &machine_id],
        )
        .map_err(pg)?;
        tx.commit().map_err(pg)
    }

    fn detach_volume(&self, id: &str, machine_id: &str) -> Result<()> {
        self.conn()?
            .execute(
                "UPDATE volumes SET attached_machine_id = NULL \
                 WHERE id = $1 AND attached_machine_id = $2",
                &[&id, &machine_id],
            )
            .map_err(pg)?;
        Ok(())
    }

    fn purge_volume(&self, id: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        tx.execute("DELETE FROM volume_snapshots WHERE volume_id = $1", &[&id])
            .map_err(pg)?;
        tx.execute("DELETE FROM volumes WHERE id = $1", &[&id])
            .map_err(pg)?;
        tx.commit().map_err(pg)
    }

    fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.conn()?
            .execute(
                &format!(
                    "INSERT INTO volume_snapshots ({SNAPSHOT_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                ),
                &[
                    &s.id,
                    &s.volume_id,
                    &s.app,
                    &s.size,
                    &s.volume_size,
                    &s.status,
                    &s.retention_days,
                    &s.created_at,
                ],
            )
            .map_err(pg)?;
        Ok(())
    }

    fn list_snapshots(&self, volume_id: &str) -> Result<Vec<SnapshotRecord>> {
        let found = self
            .conn()?
            .query(
                &format!(
                    "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE volume_id = $1 \
                     ORDER BY created_at, id COLLATE \"C\""
                ),
                &[&volume_id],
            )
            .map_err(pg)?;
        rows(found, snapshot_from_row)
    }

    fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE id = $1"),
                &[&id],
            )
            .map_err(pg)?
            .as_ref()
            .map(snapshot_from_row)
            .transpose()
    }

    fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.conn()?
            .execute("DELETE FROM volume_snapshots WHERE id = $1", &[&id])
            .map_err(pg)?;
        Ok(())
    }
}

fn schedule_from_row(r: &Row) -> Result<ScheduleRecord> {
    Ok(ScheduleRecord {
        machine_id: get(r, 0)?,
        anchor_at: get(r, 1)?,
        next_fire_at: get(r, 2)?,
        last_fire_at: get(r, 3)?,
        last_outcome: get(r, 4)?,
    })
}

impl ScheduleStore for PgStore {
    fn get_schedule(&self, machine_id: &str) -> Result<Option<ScheduleRecord>> {
        self.conn()?
            .query_opt(
                "SELECT machine_id, anchor_at, next_fire_at, last_fire_at, last_outcome \
                 FROM machine_schedules WHERE machine_id = $1",
                &[&machine_id],
            )
            .map_err(pg)?
            .as_ref()
            .map(schedule_from_row)
            .transpose()
    }

    fn put_schedule(&self, s: &ScheduleRecord) -> Result<()> {
        self.conn()?
            .execute(
                "INSERT INTO machine_schedules \
                 (machine_id, anchor_at, next_fire_at, last_fire_at, last_outcome) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (machine_id) DO UPDATE SET \
                 anchor_at = excluded.anchor_at, next_fire_at = excluded.next_fire_at, \
                 last_fire_at = excluded.last_fire_at, last_outcome = excluded.last_outcome",
                &[
                    &s.machine_id,
                    &s.anchor_at,
                    &s.next_fire_at,
                    &s.last_fire_at,
                    &s.last_outcome,
                ],
            )
            .map_err(|e| {
                if foreign_key_violation(&e) {
                    StoreError::NotFound(format!("machine {}", s.machine_id))
                } else {
                    pg(e)
                }
            })?;
        Ok(())
    }

    fn delete_schedule(&self, machine_id: &str) -> Result<()> {
        self.conn()?
            .execute(
                "DELETE FROM machine_schedules WHERE machine_id = $1",
                &[&machine_id],
            )
            .map_err(pg)?;
        Ok(())
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let found = self
            .conn()?
            .query(
                "SELECT machine_id, anchor_at, next_fire_at, last_fire_at, last_outcome \
                 FROM machine_schedules ORDER BY next_fire_at",
                &[],
            )
            .map_err(pg)?;
        rows(found, schedule_from_row)
    }
}

fn certificate_from_row(r: &Row) -> Result<CertificateRecord> {
    Ok(CertificateRecord {
        hostname: get(r, 0)?,
        app: get(r, 1)?,
        fullchain: get(r, 2)?,
        key_sealed: get(r, 3)?,
        created_at: get(r, 4)?,
        updated_at: get(r, 5)?,
    })
}

impl CertificateStore for PgStore {
    fn put_certificate(&self, c: &CertificateRecord) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(pg)?;
        let app_exists = tx
            .query_opt("SELECT 1 FROM apps WHERE name = $1", &[&c.app])
            .map_err(pg)?
            .is_some();
        if !app_exists {
            return Err(StoreError::NotFound(format!("app {}", c.app)));
        }
        let taken = || {
            StoreError::Conflict(format!(
                "hostname {} (it belongs to another app)",
                c.hostname
            ))
        };
        let owner = tx
            .query_opt(
                "SELECT app FROM certificates WHERE hostname = $1 FOR UPDATE",
                &[&c.hostname],
            )
            .map_err(pg)?
            .map(|r| get::<String>(&r, 0))
            .transpose()?;
        if owner.is_some_and(|o| o != c.app) {
            return Err(taken());
        }
        tx.execute(
            &format!(
                "INSERT INTO certificates ({CERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (hostname) DO UPDATE SET fullchain = excluded.fullchain, \
                 key_sealed = excluded.key_sealed, updated_at = excluded.updated_at \
                 WHERE certificates.app = excluded.app"
            ),
            &[
                &c.hostname,
                &c.app,
                &c.fullchain,
                &c.key_sealed,
                &c.created_at,
                &c.updated_at,
            ],
        )
        .map_err(|e| match unique_violation(&e) {
            Some(_) => taken(),
            None if foreign_key_violation(&e) => StoreError::NotFound(format!("app {}", c.app)),
            None => pg(e),
        })?;
        tx.commit().map_err(pg)
    }

    fn get_certificate(&self, hostname: &str) -> Result<Option<CertificateRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE hostname = $1"),
                &[&hostname],
            )
            .map_err(pg)?
            .as_ref()
            .map(certificate_from_row)
            .transpose()
    }

    fn list_certificates(&self, app: Option<&str>) -> Result<Vec<CertificateRecord>> {
        let found = self
            .conn()?
            .query(
                &format!(
                    "SELECT {CERT_COLUMNS} FROM certificates WHERE $1::text IS NULL OR app = $1 \
                     ORDER BY hostname COLLATE \"C\""
                ),
                &[&app],
            )
            .map_err(pg)?;
        rows(found, certificate_from_row)
    }

    fn delete_certificate(&self, hostname: &str) -> Result<bool> {
        Ok(self
            .conn()?
            .execute("DELETE FROM certificates WHERE hostname = $1", &[&hostname])
            .map_err(pg)?
            > 0)
    }
}

impl IpAssignmentStore for PgStore {
    fn insert_ip_assignment(&self, r: &IpAssignmentRecord) -> Result<()> {
        self.conn()?
            .execute(
                "INSERT INTO ip_assignments (ip, app, region, service_name, shared, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &r.ip,
                    &r.app,
                    &r.region,
                    &r.service_name,
                    &r.shared,
                    &r.created_at,
                ],
            )
            .map_err(|e| {
                if foreign_key_violation(&e) {
                    StoreError::NotFound(format!("app {}", r.app))
                } else if unique_violation(&e).is_some() {
                    StoreError::Conflict(format!("address {}", r.ip))
                } else {
                    pg(e)
                }
            })?;
        Ok(())
    }

    fn list_ip_assignments(&self, app: Option<&str>) -> Result<Vec<IpAssignmentRecord>> {
        let found = self
            .conn()?
            .query(
                "SELECT ip, app, region, service_name, shared, created_at FROM ip_assignments \
                 WHERE $1::text IS NULL OR app = $1 ORDER BY created_at, ip COLLATE \"C\"",
                &[&app],
            )
            .map_err(pg)?;
        rows(found, |r| {
            Ok(IpAssignmentRecord {
                ip: get(r, 0)?,
                app: get(r, 1)?,
                region: get(r, 2)?,
                service_name: get(r, 3)?,
                shared: get(r, 4)?,
                created_at: get(r, 5)?,
            })
        })
    }

    fn delete_ip_assignment(&self, app: &str, ip: &str) -> Result<bool> {
        Ok(self
            .conn()?
            .execute(
                "DELETE FROM ip_assignments WHERE app = $1 AND ip = $2",
                &[&app, &ip],
            )
            .map_err(pg)?
            > 0)
    }
}

impl HostStore for PgStore {
    fn register_host(&self, h: &HostRecord) -> Result<()> {
        self.conn()?
            .execute(
                "INSERT INTO hosts (id, region, cpus, memory_mb, disk_gb, api_addr, \
                 registered_at, heartbeat_at, instance) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (id) DO UPDATE SET region = excluded.region, cpus = excluded.cpus, \
                 memory_mb = excluded.memory_mb, disk_gb = excluded.disk_gb, \
                 api_addr = excluded.api_addr, heartbeat_at = excluded.heartbeat_at, \
                 instance = excluded.instance",
                &[
                    &h.id,
                    &h.region,
                    &h.cpus,
                    &h.memory_mb,
                    &h.disk_gb,
                    &h.api_addr,
                    &h.registered_at,
                    &h.heartbeat_at,
                    &h.instance,
                ],
            )
            .map_err(pg)?;
        Ok(())
    }

    fn heartbeat(&self, host_id: &str, now: i64) -> Result<()> {
        let n = self
            .conn()?
            .execute(
                "UPDATE hosts SET heartbeat_at = $2 WHERE id = $1",
                &[&host_id, &now],
            )
            .map_err(pg)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("host {host_id}")));
        }
        Ok(())
    }

    fn list_hosts(&self) -> Result<Vec<HostRecord>> {
        let found = self
            .conn()?
            .query(
                "SELECT id, region, cpus, memory_mb, disk_gb, api_addr, registered_at, \
                 heartbeat_at, instance FROM hosts ORDER BY id COLLATE \"C\"",
                &[],
            )
            .map_err(pg)?;
        rows(found, |r| {
            Ok(HostRecord {
                id: get(r, 0)?,
                region: get(r, 1)?,
                cpus: get(r, 2)?,
                memory_mb: get(r, 3)?,
                disk_gb: get(r, 4)?,
                api_addr: get(r, 5)?,
                registered_at: get(r, 6)?,
                heartbeat_at: get(r, 7)?,
                instance: get(r, 8)?,
            })
        })
    }
}
