//! Volumes (reference 1.6, milestone 2 §3): the wire objects, defaults and rules.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Fly's limits on a volume's size.
pub const MIN_VOLUME_GB: i64 = 1;
pub const MAX_VOLUME_GB: i64 = 500;
/// The API's default size (flyctl's is 1).
pub const DEFAULT_VOLUME_GB: i64 = 3;
pub const DEFAULT_SNAPSHOT_RETENTION: i64 = 5;
/// The longest volume name accepted (Fly publishes none; 30 is what its UI allows).
pub const MAX_VOLUME_NAME: usize = 30;
/// States in which a volume is gone for its users (fly-go filters these out of lists).
pub const DESTROYED_VOLUME_STATES: &[&str] = &[
    "scheduling_destroy",
    "fork_cleanup",
    "waiting_for_detach",
    "pending_destroy",
    "destroying",
    "destroyed",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateVolumeRequest {
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_]{1,30}$")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 500)]
    pub size_gb: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_unique_zone: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_zone_app_wide: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 60)]
    pub snapshot_retention: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_backup_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^ext4$")]
    pub fstype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^vs_[a-z0-9]{16}$")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^vol_[a-z0-9]{16}$")]
    pub source_volume_id: Option<String>,
    /// Placement hints (a machine's guest and image); one host places everything here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub compute: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_image: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UpdateVolumeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 60)]
    pub snapshot_retention: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_backup_enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ExtendVolumeRequest {
    #[serde(default)]
    #[schema(minimum = 1, maximum = 500)]
    pub size_gb: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub state: String,
    pub size_gb: i64,
    pub region: String,
    pub zone: String,
    pub encrypted: bool,
    pub fstype: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub attached_machine_id: Option<String>,
    pub attached_alloc_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub snapshot_retention: i64,
    pub auto_backup_enabled: bool,
    pub host_status: String,
    pub host_dedication_id: String,
    /// Filesystem figures; present while the volume is mounted (measured with statvfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks_free: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks_avail: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_used: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExtendVolumeResponse {
    pub volume: Volume,
    pub needs_restart: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeSnapshot {
    pub id: String,
    /// Bytes.
    pub size: i64,
    /// GB of the volume when taken.
    pub volume_size: i64,
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
    pub status: String,
    pub retention_days: i64,
}

/// Why `name` is not a volume name, if it is not: letters, digits and underscores (Fly's rule),
/// up to [`MAX_VOLUME_NAME`].
pub fn check_volume_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a volume name is required".into());
    }
    if name.len() > MAX_VOLUME_NAME {
        return Err(format!(
            "volume name {name:?} is longer than {MAX_VOLUME_NAME} characters"
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid volume name {name:?}: use only letters, digits and underscores"
        ));
    }
    Ok(())
}

/// Why `size_gb` is not a volume size, if it is not.
pub fn check_volume_size(size_gb: i64) -> Result<(), String> {
    if !(MIN_VOLUME_GB..=MAX_VOLUME_GB).contains(&size_gb) {
        return Err(format!(
            "size_gb {size_gb} is out of range: volumes are {MIN_VOLUME_GB} to {MAX_VOLUME_GB} GB"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_extend_sizes() {
        let m = |t: Option<i64>, gb: Option<i64>, pct: Option<i64>, limit: Option<i64>| {
            crate::MachineMount {
                extend_threshold_percent: t,
                add_size_gb: gb,
                add_size_percent: pct,
                size_gb_limit: limit,
                ..Default::default()
            }
        };
        assert_eq!(m(Some(80), Some(2), None, None).auto_extend_to(3), Some(5));
        assert_eq!(
            m(Some(80), Some(2), None, Some(4)).auto_extend_to(3),
            Some(4)
        );
        assert_eq!(m(Some(80), Some(2), None, Some(3)).auto_extend_to(3), None);
        assert_eq!(
            m(Some(80), None, Some(50), None).auto_extend_to(10),
            Some(15)
        );
        assert_eq!(
            m(Some(80), None, Some(10), None).auto_extend_to(3),
            Some(4),
            "min 1 GB"
        );
        assert_eq!(m(None, Some(2), None, None).auto_extend_to(3), None);
    }

    #[test]
    fn names_and_sizes() {
        assert!(check_volume_name("data_1").is_ok());
        for bad in ["", "my-data", "a b", &"x".repeat(31)] {
            assert!(check_volume_name(bad).is_err(), "{bad}");
        }
        assert!(check_volume_size(1).is_ok() && check_volume_size(500).is_ok());
        assert!(check_volume_size(0).is_err() && check_volume_size(501).is_err());
    }
}
