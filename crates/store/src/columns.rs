//! The columns each record is read from, in the order both backends' row mappers index them:
//! one list, so that the SQLite and PostgreSQL backends cannot drift apart.

pub const APP: &str =
    "id, name, org_slug, network, internal_numeric_id, created_at, idempotency_key, app_role";

pub const MACHINE: &str = "id, app, name, state, region, instance_id, private_ip, \
     created_at, updated_at, cordoned, config, image_ref, image_digests, row_version, host_id, \
     private_ipv4, skip_secrets";

pub const VOLUME: &str = "id, app, name, state, size_gb, region, zone, encrypted, fstype, \
     snapshot_retention, auto_backup_enabled, attached_machine_id, created_at, deleted_at, host_id";

pub const SNAPSHOT: &str =
    "id, volume_id, app, size, volume_size, status, retention_days, created_at";

pub const CERTIFICATE: &str = "hostname, app, fullchain, key_sealed, created_at, updated_at";
