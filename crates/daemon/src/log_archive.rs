//! Logs of destroyed machines. A machine's dir goes with it, but its logs are what a user reads
//! to learn why a `run --rm` job or a crashed machine ended, so destroy moves them (a rename on
//! the same filesystem) to `<data>/logs/<machine id>/`, a root-only directory, where the logs
//! API still finds them for the retention period (`hangar daemon --log-retention`, default 24 h).
//! A sweep removes what is older.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// The archive under the data dir that holds `machines_dir`.
pub fn archive_dir(machines_dir: &Path) -> PathBuf {
    machines_dir.parent().unwrap_or(machines_dir).join("logs")
}

/// Moves the logs dir `live` of machine `id` into the archive; with a zero `retention` the
/// logs are not kept. Best effort: a machine's teardown never fails over its logs.
pub fn archive(live: &Path, archive: &Path, id: &str, retention: Duration) {
    // The logs dir is in the machine's run dir, which its uid could write while it ran: a
    // link planted there is not followed (nor its target's time stamp set below).
    let is_dir = live.symlink_metadata().is_ok_and(|m| m.is_dir());
    if retention.is_zero() || !is_dir {
        return;
    }
    if let Err(e) = create_private_dir(archive) {
        tracing::warn!(dir = %archive.display(), "cannot create the log archive: {e}");
        return;
    }
    let target = archive.join(id);
    let _ = std::fs::remove_dir_all(&target);
    if let Err(e) = std::fs::rename(live, &target) {
        tracing::warn!(machine = %id, "cannot keep the logs of a destroyed machine: {e}");
        return;
    }
    // The retention clock starts at the destroy, not at the last line written.
    let _ = std::fs::File::open(&target).and_then(|f| f.set_modified(SystemTime::now()));
}

/// Removes archived logs older than `retention`.
pub fn prune(archive: &Path, retention: Duration) {
    let Ok(rd) = std::fs::read_dir(archive) else {
        return;
    };
    let now = SystemTime::now();
    for entry in rd.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > retention);
        if old {
            tracing::debug!(dir = %entry.path().display(), "removing expired logs");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn archived_logs_expire() {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("machines/m1/run/logs");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join("app.log"), "x\n").unwrap();
        let archive_dir = archive_dir(&t.path().join("machines"));
        archive(&live, &archive_dir, "m1", DAY);
        assert!(archive_dir.join("m1/app.log").is_file());
        assert!(!live.exists());
        prune(&archive_dir, DAY);
        assert!(archive_dir.join("m1").exists(), "young logs stay");
        let past = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(archive_dir.join("m1"))
            .unwrap()
            .set_modified(past)
            .unwrap();
        prune(&archive_dir, Duration::from_secs(60));
        assert!(!archive_dir.join("m1").exists(), "old logs go");
        // A zero retention keeps nothing.
        std::fs::create_dir_all(&live).unwrap();
        archive(&live, &archive_dir, "m2", Duration::ZERO);
        assert!(!archive_dir.join("m2").exists());
    }
}
