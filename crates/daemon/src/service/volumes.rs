//! Volumes (reference 1.6, milestone 2 §3): create (empty, a fork, a restored snapshot), list,
//! get, update, destroy, extend, snapshots, and binding a volume to the one machine that mounts
//! it.

use hangar_api::{CreateVolumeRequest, UpdateVolumeRequest};
use hangar_store::{SnapshotRecord, VolumeRecord};
use hangar_volumes::VolumeError;

use super::*;

/// The zone reported for this host's volumes.
const ZONE: &str = "local";

/// A volume with what can be measured of it now.
pub struct VolumeView {
    pub record: VolumeRecord,
    pub usage: Option<hangar_volumes::Usage>,
}

fn storage_error(e: VolumeError) -> ServiceError {
    match e {
        VolumeError::NoSpace(what) => ServiceError::InsufficientStorage(format!(
            "not enough space on this host's disk for {what}"
        )),
        other => ServiceError::internal(other.to_string()),
    }
}

fn check_retention(days: i64) -> ServiceResult<()> {
    if !(1..=60).contains(&days) {
        return Err(ServiceError::bad_request(format!(
            "snapshot_retention {days} is out of range (1 to 60 days)"
        )));
    }
    Ok(())
}

impl Hangar {
    fn volume_dir(&self) -> ServiceResult<&hangar_volumes::VolumeDir> {
        self.volumes
            .as_ref()
            .ok_or_else(|| ServiceError::precondition("this daemon keeps no volumes"))
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
    ) -> ServiceResult<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ServiceError::internal(format!("volume task failed: {e}")))?
            .map_err(storage_error)
    }

    pub async fn create_volume(
        &self,
        app: &str,
        req: CreateVolumeRequest,
    ) -> ServiceResult<VolumeView> {
        self.get_app(app).await?;
        let dir = self.volume_dir()?.clone();
        let name = req.name.trim().to_string();
        hangar_api::check_volume_name(&name)
            .map_err(|e| ServiceError::bad_request(format!("name: {e}")))?;
        if let Some(size) = req.size_gb {
            hangar_api::check_volume_size(size).map_err(ServiceError::bad_request)?;
        }
        let retention = req
            .snapshot_retention
            .unwrap_or(hangar_api::DEFAULT_SNAPSHOT_RETENTION);
        check_retention(retention)?;
        match req.fstype.as_deref() {
            None | Some("") | Some("ext4") => {}
            Some(other) => {
                return Err(ServiceError::bad_request(format!(
                    "fstype {other:?} is not supported by Hangar (ext4 only)"
                )))
            }
        }
        let region = match req.region.as_deref().filter(|r| !r.is_empty()) {
            Some(r) if r != self.region => {
                return Err(ServiceError::bad_request(format!(
                    "region {r:?}: this host is region {:?}",
                    self.region
                )))
            }
            _ => self.region.clone(),
        };
        let id = ids::new_volume_id();
        // Where the data comes from: a fork copies a volume, a restore a snapshot.
        let (source, min_size) = match (&req.source_volume_id, &req.snapshot_id) {
            (Some(_), Some(_)) => {
                return Err(ServiceError::bad_request(
                    "give source_volume_id (a fork) or snapshot_id (a restore), not both",
                ))
            }
            (Some(src), None) => {
                let src = self.live_volume(app, src, "source_volume_id").await?;
                (Some(Source::Volume(src.clone())), src.size_gb)
            }
            (None, Some(snap)) => {
                let s = self.snapshot_of_app(app, snap).await?;
                (Some(Source::Snapshot(s.clone())), s.volume_size)
            }
            (None, None) => (None, hangar_api::MIN_VOLUME_GB),
        };
        // A copy defaults to its source's size; a new volume to Fly's default.
        let default_size = match source {
            Some(_) => min_size,
            None => hangar_api::DEFAULT_VOLUME_GB,
        };
        let size_gb = req.size_gb.unwrap_or(default_size);
        if size_gb < min_size {
            return Err(ServiceError::bad_request(format!(
                "size_gb {size_gb} is smaller than the source's {min_size} GB"
            )));
        }
        self.check_disk(size_gb, None).await?;
        let size = size_gb as u64;
        match source {
            None => {
                let (d, i) = (dir.clone(), id.clone());
                Self::blocking(move || d.create(&i, size)).await?;
            }
            Some(Source::Snapshot(s)) => {
                let (d, i) = (dir.clone(), id.clone());
                let path = dir.snapshot(&s.id);
                Self::blocking(move || d.copy_from(&path, &i, size)).await?;
            }
            Some(Source::Volume(src)) => {
                let mountpoint = self.volume_mountpoint(&src);
                let (d, i) = (dir.clone(), id.clone());
                let path = dir.image(&src.id);
                Self::blocking(move || {
                    // A mounted source is frozen for the copy: the fork is one point in time.
                    let _frozen = mountpoint
                        .as_deref()
                        .map(hangar_volumes::freeze)
                        .transpose()?;
                    d.copy_from(&path, &i, size)
                })
                .await?;
            }
        }
        let record = VolumeRecord {
            id: id.clone(),
            app: app.to_string(),
            name,
            state: "created".into(),
            size_gb,
            region,
            zone: ZONE.into(),
            // Hangar does not encrypt volumes at rest (no dm-crypt here): it says so rather
            // than echo the request's `encrypted: true` (docs/decisions.md).
            encrypted: false,
            fstype: "ext4".into(),
            snapshot_retention: retention,
            auto_backup_enabled: req.auto_backup_enabled.unwrap_or(true),
            attached_machine_id: None,
            created_at: now_ms(),
            deleted_at: None,
            host_id: self.host_id.clone(),
        };
        let rec = record.clone();
        if let Err(e) = db(&self.store, move |s| s.insert_volume(&rec)).await {
            let _ = dir.remove(&id);
            return Err(e);
        }
        tracing::info!(app, volume = %id, size_gb, "volume created");
        Ok(VolumeView {
            record,
            usage: None,
        })
    }

    pub async fn list_volumes(&self, app: &str) -> ServiceResult<Vec<VolumeView>> {
        self.get_app(app).await?;
        let a = app.to_string();
        let records = db(&self.store, move |s| s.list_volumes(&a)).await?;
        Ok(records.into_iter().map(|r| self.view(r)).collect())
    }

    pub async fn get_volume(&self, app: &str, id: &str) -> ServiceResult<VolumeView> {
        let (a, i) = (app.to_string(), id.to_string());
        db(&self.store, move |s| s.get_volume(&a, &i))
            .await?
            .map(|r| self.view(r))
            .ok_or_else(|| ServiceError::not_found(format!("volume {id} not found")))
    }

    pub async fn update_volume(
        &self,
        app: &str,
        id: &str,
        req: UpdateVolumeRequest,
    ) -> ServiceResult<VolumeView> {
        let mut v = self.live_volume(app, id, "volume").await?;
        if let Some(days) = req.snapshot_retention {
            check_retention(days)?;
            v.snapshot_retention = days;
        }
        if let Some(on) = req.auto_backup_enabled {
            v.auto_backup_enabled = on;
        }
        let rec = v.clone();
        db(&self.store, move |s| s.update_volume(&rec)).await?;
        Ok(self.view(v))
    }

    /// Fly's soft delete: the volume is `pending_destroy` (still listed) and its data is gone.
    pub async fn destroy_volume(&self, app: &str, id: &str) -> ServiceResult<VolumeView> {
        let mut v = self.live_volume(app, id, "volume").await?;
        if let Some(m) = &v.attached_machine_id {
            return Err(ServiceError::precondition(format!(
                "volume is currently bound to machine: {m}"
            )));
        }
        v.state = "pending_destroy".into();
        v.deleted_at = Some(now_ms());
        let rec = v.clone();
        db(&self.store, move |s| s.update_volume(&rec)).await?;
        let (d, i) = (self.volume_dir()?.clone(), id.to_string());
        Self::blocking(move || d.remove(&i)).await?;
        tracing::info!(app, volume = %id, "volume destroyed");
        Ok(self.view(v))
    }

    /// Grows the volume (online when a machine has it mounted); returns it and whether the
    /// machine must restart to see the new size (only where the host refuses online resizes).
    pub async fn extend_volume(
        &self,
        app: &str,
        id: &str,
        size_gb: i64,
    ) -> ServiceResult<(VolumeView, bool)> {
        let mut v = self.live_volume(app, id, "volume").await?;
        hangar_api::check_volume_size(size_gb).map_err(ServiceError::bad_request)?;
        if size_gb <= v.size_gb {
            return Err(ServiceError::bad_request(format!(
                "size_gb {size_gb}: volumes only grow (volume {id} is {} GB)",
                v.size_gb
            )));
        }
        self.check_disk(size_gb, Some(&v)).await?;
        let mounted = self.volume_mountpoint(&v).is_some();
        let (d, i, size) = (self.volume_dir()?.clone(), id.to_string(), size_gb as u64);
        let grown_now = Self::blocking(move || {
            if mounted {
                d.grow_online(&i, size)
            } else {
                d.grow_offline(&i, size).map(|()| true)
            }
        })
        .await?;
        v.size_gb = size_gb;
        let rec = v.clone();
        db(&self.store, move |s| s.update_volume(&rec)).await?;
        tracing::info!(app, volume = %id, size_gb, online = mounted, grown_now, "volume extended");
        Ok((self.view(v), !grown_now))
    }

    pub async fn list_snapshots(&self, app: &str, id: &str) -> ServiceResult<Vec<SnapshotRecord>> {
        // Snapshots of a destroyed volume stay listable for their retention.
        let v = self.get_volume(app, id).await?.record;
        db(&self.store, move |s| s.list_snapshots(&v.id)).await
    }

    pub async fn create_snapshot(&self, app: &str, id: &str) -> ServiceResult<SnapshotRecord> {
        let v = self.live_volume(app, id, "volume").await?;
        let snap_id = ids::new_snapshot_id();
        let mountpoint = self.volume_mountpoint(&v);
        let (d, i, s) = (self.volume_dir()?.clone(), v.id.clone(), snap_id.clone());
        let size = Self::blocking(move || {
            let _frozen = mountpoint
                .as_deref()
                .map(hangar_volumes::freeze)
                .transpose()?;
            d.take_snapshot(&i, &s)
        })
        .await?;
        let record = SnapshotRecord {
            id: snap_id,
            volume_id: v.id.clone(),
            app: app.to_string(),
            size: size as i64,
            volume_size: v.size_gb,
            status: "created".into(),
            retention_days: v.snapshot_retention,
            created_at: now_ms(),
        };
        let rec = record.clone();
        if let Err(e) = db(&self.store, move |s| s.insert_snapshot(&rec)).await {
            let _ = self.volume_dir()?.remove_snapshot(&record.id);
            return Err(e);
        }
        Ok(record)
    }

    /// Every volume whose image lives on this host (in cluster mode the others' hosts sweep
    /// and admit theirs; on a single host every volume is its own).
    async fn own_volumes(&self) -> ServiceResult<Vec<VolumeRecord>> {
        let mut all = db(&self.store, |s| s.list_all_volumes()).await?;
        if self.is_cluster() {
            all.retain(|v| v.host_id == self.host_id);
        }
        Ok(all)
    }

    /// Disk admission: images are sparse, so the host's disk is promised rather than used; the
    /// sizes of all live volumes (with `size_gb` for the new or grown one) must fit the disk,
    /// or the request gets a 422 and nothing is made (a disk that runs out while a volume is
    /// made is a 507).
    async fn check_disk(&self, size_gb: i64, growing: Option<&VolumeRecord>) -> ServiceResult<()> {
        let dir = self.volume_dir()?.clone();
        let capacity = Self::blocking(move || dir.capacity()).await?;
        let all = self.own_volumes().await?;
        let promised: i64 = all
            .iter()
            .filter(|v| v.deleted_at.is_none() && Some(&v.id) != growing.map(|g| &g.id))
            .map(|v| v.size_gb)
            .sum();
        let capacity_gb = (capacity >> 30) as i64;
        if promised + size_gb > capacity_gb {
            return Err(ServiceError::DiskAdmission(format!(
                "insufficient storage: this host's volumes would need {} GB of its {capacity_gb} GB disk ({promised} GB promised already)",
                promised + size_gb
            )));
        }
        Ok(())
    }

    /// Deletes every volume of `app` and their snapshots, files and rows (the app's deletion).
    pub(super) async fn purge_app_volumes(&self, app: &str) -> ServiceResult<()> {
        let Some(dir) = self.volumes.clone() else {
            return Ok(());
        };
        let a = app.to_string();
        let volumes = db(&self.store, move |s| s.list_volumes(&a)).await?;
        for v in volumes {
            let id = v.id.clone();
            let snaps = db(&self.store, move |s| s.list_snapshots(&id)).await?;
            let (d, id) = (dir.clone(), v.id.clone());
            Self::blocking(move || {
                for s in &snaps {
                    d.remove_snapshot(&s.id)?;
                }
                d.remove(&id)
            })
            .await?;
            let id = v.id.clone();
            db(&self.store, move |s| s.purge_volume(&id)).await?;
        }
        Ok(())
    }

    /// Binds the volume a config mounts to machine `machine_id`: it must be one of `app`'s,
    /// not destroyed, and not bound to another machine (a 400 naming it).
    pub(super) async fn attach_volumes(
        &self,
        app: &str,
        machine_id: &str,
        config: &MachineConfig,
    ) -> ServiceResult<()> {
        for (i, m) in config.mounts.iter().flatten().enumerate() {
            let field = format!("config.mounts[{i}].volume");
            self.live_volume(app, &m.volume, &field).await?;
            let (v, mid) = (m.volume.clone(), machine_id.to_string());
            db(&self.store, move |s| s.attach_volume(&v, &mid))
                .await
                .map_err(|e| match e {
                    ServiceError::Conflict(msg) => {
                        ServiceError::bad_request(format!("{field}: {msg}"))
                    }
                    other => other,
                })?;
        }
        Ok(())
    }

    /// Releases the volumes of a config from `machine_id` (its destroy, a failed create).
    pub(super) async fn detach_volumes(&self, machine_id: &str, config: &MachineConfig) {
        for m in config.mounts.iter().flatten() {
            let (v, mid) = (m.volume.clone(), machine_id.to_string());
            if let Err(e) = db(&self.store, move |s| s.detach_volume(&v, &mid)).await {
                tracing::warn!(machine = machine_id, volume = %m.volume, error = %e, "detaching a volume failed");
            }
        }
    }

    /// The volume, unless it is missing or destroyed (a 404 naming `field`).
    async fn live_volume(&self, app: &str, id: &str, field: &str) -> ServiceResult<VolumeRecord> {
        let (a, i) = (app.to_string(), id.to_string());
        match db(&self.store, move |s| s.get_volume(&a, &i)).await? {
            Some(v) if v.deleted_at.is_none() => Ok(v),
            _ if field == "volume" => Err(ServiceError::not_found(format!(
                "volume {id} not found in app {app}"
            ))),
            _ => Err(ServiceError::bad_request(format!(
                "{field}: volume {id} not found in app {app}"
            ))),
        }
    }

    async fn snapshot_of_app(&self, app: &str, id: &str) -> ServiceResult<SnapshotRecord> {
        let i = id.to_string();
        match db(&self.store, move |s| s.get_snapshot(&i)).await? {
            Some(s) if s.app == app => Ok(s),
            _ => Err(ServiceError::bad_request(format!(
                "snapshot_id: snapshot {id} not found in app {app}"
            ))),
        }
    }

    /// Where the volume is mounted on the host now (its machine runs), if it is.
    fn volume_mountpoint(&self, v: &VolumeRecord) -> Option<std::path::PathBuf> {
        let machine = v.attached_machine_id.as_deref()?;
        self.runtime.volume_mountpoint(machine, &v.id)
    }

    fn view(&self, record: VolumeRecord) -> VolumeView {
        let usage = self
            .volume_mountpoint(&record)
            .and_then(|p| hangar_volumes::usage(&p).ok());
        VolumeView { record, usage }
    }
}

const DAY_MS: i64 = 24 * 3600 * 1000;
/// How long a destroyed volume stays listed (`pending_destroy`), as on Fly.
const SOFT_DELETE_MS: i64 = DAY_MS;

/// Snapshots past their retention at `now` (unix ms).
fn expired(snapshots: &[SnapshotRecord], now: i64) -> Vec<&SnapshotRecord> {
    snapshots
        .iter()
        .filter(|s| now - s.created_at > s.retention_days.max(1) * DAY_MS)
        .collect()
}

/// Whether a live volume with `auto_backup_enabled` is due its daily snapshot: a day after
/// its newest one (or after its creation when it has none).
fn backup_due(v: &VolumeRecord, snapshots: &[SnapshotRecord], now: i64) -> bool {
    let newest = snapshots
        .iter()
        .map(|s| s.created_at)
        .max()
        .unwrap_or(v.created_at);
    v.deleted_at.is_none() && v.auto_backup_enabled && now - newest >= DAY_MS
}

/// Whether a destroyed volume's row can go: a day after the destroy, once its snapshots
/// (listable by its id until they expire) are gone.
fn purgeable(v: &VolumeRecord, remaining_snapshots: usize, now: i64) -> bool {
    v.deleted_at
        .is_some_and(|at| now - at > SOFT_DELETE_MS && remaining_snapshots == 0)
}

/// How often mounted volumes with auto-extend are measured.
pub const AUTO_EXTEND_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl Hangar {
    /// Auto-extend (reference 2.6): each started machine's volume whose mount has
    /// `extend_threshold_percent` and is at least that full grows by its increment, up to
    /// `size_gb_limit`. A volume whose last extend waits for a restart (the filesystem is
    /// still smaller than the volume) is left alone, so it is not grown again and again.
    pub async fn auto_extend_volumes(&self) -> ServiceResult<()> {
        let machines = self.live_machines().await?;
        for m in machines.iter().filter(|m| m.state == MachineState::Started) {
            for mount in m.config.mounts.iter().flatten() {
                let Some(threshold) = mount.extend_threshold_percent else {
                    continue;
                };
                let Some(path) = self.runtime.volume_mountpoint(&m.id, &mount.volume) else {
                    continue;
                };
                let Ok(usage) = hangar_volumes::usage(&path) else {
                    continue;
                };
                let v = match self.get_volume(&m.app, &mount.volume).await {
                    Ok(v) => v.record,
                    Err(_) => continue,
                };
                let size_bytes = (v.size_gb as u64) << 30;
                let pending_restart = usage.bytes_total() < size_bytes / 10 * 9;
                let used_pct = usage.bytes_used() * 100 / usage.bytes_total().max(1);
                if pending_restart || used_pct < threshold as u64 {
                    continue;
                }
                let Some(to) = mount.auto_extend_to(v.size_gb) else {
                    continue;
                };
                match self.extend_volume(&m.app, &v.id, to).await {
                    Ok((_, needs_restart)) => tracing::info!(
                        machine = %m.id, volume = %v.id, used_pct, from = v.size_gb, to,
                        needs_restart, "volume auto-extended"
                    ),
                    Err(e) => {
                        tracing::warn!(machine = %m.id, volume = %v.id, error = %e, "auto-extend failed")
                    }
                }
            }
        }
        Ok(())
    }

    /// The periodic volume chores: expired snapshots removed, daily snapshots of volumes with
    /// `auto_backup_enabled`, destroyed volumes' rows purged after a day.
    pub async fn sweep_volumes(&self) -> ServiceResult<()> {
        let Some(dir) = self.volumes.clone() else {
            return Ok(());
        };
        let now = now_ms();
        for v in self.own_volumes().await? {
            let id = v.id.clone();
            let snaps = db(&self.store, move |s| s.list_snapshots(&id)).await?;
            let gone: Vec<String> = expired(&snaps, now).iter().map(|s| s.id.clone()).collect();
            for snap in &gone {
                let (d, sid) = (dir.clone(), snap.clone());
                Self::blocking(move || d.remove_snapshot(&sid)).await?;
                let sid = snap.clone();
                db(&self.store, move |s| s.delete_snapshot(&sid)).await?;
                tracing::info!(volume = %v.id, snapshot = %snap, "snapshot expired");
            }
            if backup_due(&v, &snaps, now) {
                match self.create_snapshot(&v.app, &v.id).await {
                    Ok(s) => tracing::info!(volume = %v.id, snapshot = %s.id, "daily snapshot"),
                    Err(e) => tracing::warn!(volume = %v.id, error = %e, "daily snapshot failed"),
                }
            }
            if purgeable(&v, snaps.len() - gone.len(), now) {
                let id = v.id.clone();
                db(&self.store, move |s| s.purge_volume(&id)).await?;
                tracing::info!(volume = %v.id, "destroyed volume purged");
            }
        }
        Ok(())
    }
}

enum Source {
    Volume(VolumeRecord),
    Snapshot(SnapshotRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(created_at: i64, deleted_at: Option<i64>, backups: bool) -> VolumeRecord {
        let mut v = hangar_store::conformance::volume("a", "vol_1");
        v.created_at = created_at;
        v.deleted_at = deleted_at;
        v.auto_backup_enabled = backups;
        v
    }

    fn snap(id: &str, created_at: i64, retention_days: i64) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            volume_id: "vol_1".into(),
            app: "a".into(),
            size: 1,
            volume_size: 1,
            status: "created".into(),
            retention_days,
            created_at,
        }
    }

    #[test]
    fn snapshots_expire_after_their_retention() {
        let snaps = [snap("old", 0, 5), snap("new", 4 * DAY_MS, 5)];
        let now = 5 * DAY_MS + 1;
        let gone: Vec<&str> = expired(&snaps, now).iter().map(|s| s.id.as_str()).collect();
        assert_eq!(gone, ["old"]);
    }

    #[test]
    fn daily_backups_only_when_enabled_live_and_due() {
        let now = 10 * DAY_MS;
        assert!(backup_due(&vol(0, None, true), &[], now));
        assert!(!backup_due(&vol(0, None, false), &[], now));
        assert!(!backup_due(&vol(0, Some(1), true), &[], now));
        assert!(!backup_due(
            &vol(0, None, true),
            &[snap("s", now - 3_600_000, 5)],
            now
        ));
        assert!(backup_due(
            &vol(0, None, true),
            &[snap("s", now - DAY_MS, 5)],
            now
        ));
        assert!(!backup_due(&vol(now - 1000, None, true), &[], now));
    }

    #[test]
    fn destroyed_volumes_purge_after_a_day_without_snapshots() {
        let now = 3 * DAY_MS;
        assert!(purgeable(&vol(0, Some(DAY_MS), true), 0, now));
        assert!(!purgeable(&vol(0, Some(DAY_MS), true), 1, now));
        assert!(!purgeable(&vol(0, Some(now - 1000), true), 0, now));
        assert!(!purgeable(&vol(0, None, true), 0, now));
    }
}
