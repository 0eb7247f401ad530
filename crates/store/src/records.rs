//! Rows as the store keeps them; the daemon turns them into API objects.

use hangar_api::{ImageRef, MachineConfig, MachineState};

#[derive(Debug, Clone, PartialEq)]
pub struct AppRecord {
    pub id: String,
    pub name: String,
    pub org_slug: String,
    pub network: String,
    /// Assigned by the store on insert.
    pub internal_numeric_id: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// `CreateAppRequest.idempotency_key`: a retry with it returns this app.
    pub idempotency_key: Option<String>,
    /// Fly's `app_role` (`app_role_id` at create), e.g. `postgres_cluster`; empty for none.
    pub app_role: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MachineRecord {
    pub id: String,
    pub app: String,
    pub name: String,
    pub state: MachineState,
    pub region: String,
    pub instance_id: String,
    pub private_ip: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    pub cordoned: bool,
    pub config: MachineConfig,
    pub image_ref: Option<ImageRef>,
    /// The manifest digest each image of the config (as written there) resolved to when this
    /// version was created or first started: the machine runs exactly these until it is
    /// updated, whatever its tags point at later.
    pub image_digests: std::collections::BTreeMap<String, String>,
    /// Bumped by every write; a guarded write ([`crate::Expect`]) must name the one it read.
    pub row_version: i64,
    /// The host whose agent owns (runs) the machine; one host today.
    pub host_id: String,
    /// The machine's private IPv4 (the proxy's path into it); empty for machines created
    /// before networking, which get one at their next start.
    pub private_ipv4: String,
    /// `skip_secrets` of its last create or update: the app's secrets are not put in its
    /// environment (secrets it names explicitly, as files or per container, still are).
    pub skip_secrets: bool,
}

impl MachineRecord {
    /// The typed view of the machine's config: what the daemon and the runtime act on.
    pub fn spec(&self) -> hangar_api::spec::MachineSpec {
        hangar_api::spec::MachineSpec::from_config(&self.config)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub machine_id: String,
    pub kind: String,
    pub status: String,
    pub source: String,
    /// Unix milliseconds.
    pub timestamp: i64,
    pub request: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    pub machine_id: String,
    pub instance_id: String,
    pub config: MachineConfig,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    pub machine_id: String,
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub owner: String,
    pub description: String,
    pub version: String,
}

/// An org's private network (`default`, or the `network` an app was created with).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRecord {
    /// The 32-bit network part of its 6PN /48.
    pub id: u32,
    pub org_slug: String,
    pub name: String,
    /// Its IPv4 blocks on this host (a /24 each), lowest first.
    pub ipv4_blocks: Vec<u8>,
}

/// One app secret as stored: sealed by the daemon (hangar-secrets), never plaintext.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretRecord {
    pub name: String,
    pub sealed: Vec<u8>,
    /// The keyed digest `list` shows.
    pub digest: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of its last set.
    pub updated_at: i64,
    /// The app's secrets version its last set produced.
    pub version: u64,
}

/// One change of an app's secrets.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretWrite {
    Set {
        name: String,
        sealed: Vec<u8>,
        digest: String,
    },
    /// Deleting a name the app does not have is not an error (flyctl's `secrets sync` relies
    /// on it to learn the current version).
    Delete { name: String },
}

/// An app's secrets at one version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecretSet {
    /// Bumped by every write, deletes of missing names included; 0 before the first.
    pub version: u64,
    /// By name.
    pub secrets: Vec<SecretRecord>,
}

/// A persistent volume (reference 1.6): a filesystem on one host that outlives machines.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRecord {
    pub id: String,
    pub app: String,
    pub name: String,
    /// Fly's volume states: `created`, `extending`, `restoring`, `hydrating`,
    /// `pending_destroy`…
    pub state: String,
    pub size_gb: i64,
    pub region: String,
    pub zone: String,
    pub encrypted: bool,
    pub fstype: String,
    pub snapshot_retention: i64,
    pub auto_backup_enabled: bool,
    /// The one machine it is bound to (from create until that machine is destroyed).
    pub attached_machine_id: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// When a user destroyed it (unix ms): kept `pending_destroy` for a while, then purged.
    pub deleted_at: Option<i64>,
    /// The host whose disk holds it.
    pub host_id: String,
}

/// A point-in-time copy of a volume.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: String,
    pub volume_id: String,
    pub app: String,
    /// Bytes of the copy.
    pub size: i64,
    /// The volume's size (GB) when it was taken.
    pub volume_size: i64,
    /// `waiting`, `running`, `created`.
    pub status: String,
    pub retention_days: i64,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Where a scheduled machine's schedule stands (the scheduler's own bookkeeping).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    pub machine_id: String,
    /// The schedule's origin (unix ms): fires fall at anchor + k·period + jitter.
    pub anchor_at: i64,
    /// The next fire (unix ms).
    pub next_fire_at: i64,
    pub last_fire_at: Option<i64>,
    /// `started`, `skipped: still running`, `failed: …`.
    pub last_outcome: Option<String>,
}

/// A custom certificate an app imported for one of its hostnames; the key is sealed by the
/// daemon (hangar-secrets), never plaintext.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateRecord {
    /// Lowercase; one app per hostname.
    pub hostname: String,
    pub app: String,
    /// PEM.
    pub fullchain: String,
    pub key_sealed: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// An address assigned to an app (Fly's IP assignments): a dedicated one from the pool the
/// daemon was given, or the shared one.
#[derive(Debug, Clone, PartialEq)]
pub struct IpAssignmentRecord {
    pub ip: String,
    pub app: String,
    pub region: String,
    pub service_name: String,
    pub shared: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A host of the cluster (one row on a single host): what it offers and when it last said it
/// was alive.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    /// `--host-id` (the host name by default).
    pub id: String,
    pub region: String,
    pub cpus: i64,
    pub memory_mb: i64,
    /// Disk the host's volumes may use.
    pub disk_gb: i64,
    /// Where other hosts reach its API (empty when it serves only its socket).
    pub api_addr: String,
    /// The daemon installation behind the id (kept in its data dir): two hosts given one id
    /// have different ones.
    pub instance: String,
    /// Unix milliseconds: first registration, and the last heartbeat.
    pub registered_at: i64,
    pub heartbeat_at: i64,
}
