//! Host-wide claims on machine uid ranges.
//!
//! Each machine's root maps to its own range of 65,536 host uids, picked by slot number. Two
//! daemons on one host (two data dirs, or tests running side by side) must never hand out the
//! same range, or one machine's root would own the other's files. A slot is claimed by
//! creating `/run/hangar/uid-slots/<slot>` with `O_EXCL`, holding the claiming daemon's data dir
//! and the machine's id; it is released by its owner only. Claims outlive a daemon restart
//! (machines do too) and go with a reboot (`/run` is a tmpfs; so do the machines).
//!
//! A daemon whose data dir was removed (a test's, a benchmark's) cannot release its claims;
//! they are swept at a daemon's start once no process on the host runs with a uid of their
//! range (its machines may outlive the directory). A daemon still running on a removed data
//! dir can lose a claim it made but has not used yet; such a daemon is broken anyway.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Machine uid ranges start here, 65,536 ids each, far above ordinary users.
pub const UID_BASE_START: u32 = 1 << 20;
pub const UID_RANGE: u32 = 65536;
pub const MAX_SLOTS: u32 = 4096;

/// Where claims live.
pub const DEFAULT_DIR: &str = "/run/hangar/uid-slots";

#[derive(Debug)]
pub struct SlotClaims {
    dir: PathBuf,
    /// This daemon's data dir (canonical), written into its claims.
    owner: String,
}

impl SlotClaims {
    pub fn open(dir: &Path, data_dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let owner = std::fs::canonicalize(data_dir)?.display().to_string();
        Ok(Self {
            dir: dir.to_path_buf(),
            owner,
        })
    }

    /// Removes the claims of daemons whose data dir is gone, unless a process of the host still
    /// runs with a uid of the claimed range. Returns how many went.
    pub fn sweep_abandoned(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let abandoned: Vec<(u32, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let slot: u32 = e.file_name().to_str()?.parse().ok()?;
                let text = std::fs::read_to_string(e.path()).ok()?;
                let (owner, _) = text.split_once('\n')?;
                (!Path::new(owner).exists()).then(|| (slot, e.path()))
            })
            .collect();
        if abandoned.is_empty() {
            return 0;
        }
        let busy = slots_in_use();
        abandoned
            .into_iter()
            .filter(|(slot, _)| !busy.contains(slot))
            .filter(|(_, path)| std::fs::remove_file(path).is_ok())
            .count()
    }

    fn content(&self, machine: &str) -> String {
        format!("{}\n{machine}\n", self.owner)
    }

    fn path(&self, slot: u32) -> PathBuf {
        self.dir.join(slot.to_string())
    }

    /// Claims `slot` for `machine`; false when another claim holds it. A claim this daemon
    /// already holds for the same machine counts as claimed.
    pub fn claim(&self, slot: u32, machine: &str) -> std::io::Result<bool> {
        let path = self.path(slot);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(self.content(machine).as_bytes())?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(std::fs::read_to_string(&path).is_ok_and(|c| c == self.content(machine)))
            }
            Err(e) => Err(e),
        }
    }

    /// Releases `slot` if `machine` of this daemon holds it.
    pub fn release(&self, slot: u32, machine: &str) {
        let path = self.path(slot);
        if std::fs::read_to_string(&path).is_ok_and(|c| c == self.content(machine)) {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// This daemon's claims: (slot, machine).
    pub fn owned(&self) -> Vec<(u32, String)> {
        self.all()
            .into_iter()
            .filter(|(_, owner, _)| *owner == self.owner)
            .map(|(slot, _, machine)| (slot, machine))
            .collect()
    }

    /// Hands `slot`, claimed by this daemon for `from`, to `to` (a warm sandbox's range to
    /// the machine that takes it over); false when `from` does not hold it.
    pub fn transfer(&self, slot: u32, from: &str, to: &str) -> std::io::Result<bool> {
        let path = self.path(slot);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(self.content(from).as_str()) {
            return Ok(false);
        }
        // Written aside and renamed over, so the claim never reads half-written.
        let temp = self.dir.join(format!(".{slot}.{to}"));
        std::fs::write(&temp, self.content(to))?;
        std::fs::rename(&temp, &path)?;
        Ok(true)
    }

    /// Names the place claims are kept, as seen from here: daemons that see the same claims
    /// dir get the same tag, daemons in another container (with its own `/run`) another one.
    /// What one daemon may conclude from the absence of a claim holds only for the same tag.
    pub fn place_tag(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        let (dev, ino) = std::fs::metadata(&self.dir)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or_default();
        format!("{:08x}", (ino as u32) ^ (dev as u32).rotate_left(16))
    }

    /// Every claim on the host: (slot, owner's data dir, machine).
    pub fn all(&self) -> Vec<(u32, String, String)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let slot: u32 = e.file_name().to_str()?.parse().ok()?;
                let text = std::fs::read_to_string(e.path()).ok()?;
                let (owner, machine) = text.split_once('\n')?;
                Some((slot, owner.to_string(), machine.trim_end().to_string()))
            })
            .collect()
    }
}

/// The uid-range slots this daemon uses, each with its holder (a machine, or a pooled
/// sandbox), claimed host-wide through [`SlotClaims`].
#[derive(Debug)]
pub struct Slots {
    pub claims: SlotClaims,
    held: std::sync::Mutex<std::collections::BTreeMap<u32, String>>,
    /// Slots another daemon held when this one last tried them.
    foreign: std::sync::Mutex<std::collections::HashSet<u32>>,
}

impl Slots {
    pub fn new(claims: SlotClaims) -> Self {
        Self {
            claims,
            held: Default::default(),
            foreign: Default::default(),
        }
    }

    /// A free slot, claimed host-wide for `holder`; `None` when the host has none left.
    pub fn alloc(&self, holder: &str) -> std::io::Result<Option<u32>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut foreign = self.foreign.lock().unwrap_or_else(|e| e.into_inner());
        // Slots another daemon held when last tried are skipped without a look; when nothing
        // else is free, they are tried again (their claims may have gone meanwhile).
        for second_look in [false, true] {
            if second_look {
                foreign.clear();
            }
            for slot in 0..MAX_SLOTS {
                if held.contains_key(&slot) || foreign.contains(&slot) {
                    continue;
                }
                if self.claims.claim(slot, holder)? {
                    held.insert(slot, holder.to_string());
                    return Ok(Some(slot));
                }
                foreign.insert(slot);
            }
        }
        Ok(None)
    }

    /// Frees `slot` if `holder` still holds it (freeing twice never frees another's).
    pub fn free(&self, slot: u32, holder: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(&slot).is_some_and(|h| h == holder) {
            held.remove(&slot);
            self.claims.release(slot, holder);
        }
    }

    /// Records `slot` as held by `holder` (a machine found running at start-up).
    pub fn hold(&self, slot: u32, holder: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, holder.to_string());
    }

    /// Hands `slot` from `from` to `to`, here and host-wide; false when `from` did not hold it.
    pub fn transfer(&self, slot: u32, from: &str, to: &str) -> std::io::Result<bool> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(&slot).is_none_or(|h| h != from) || !self.claims.transfer(slot, from, to)? {
            return Ok(false);
        }
        held.insert(slot, to.to_string());
        Ok(true)
    }
}

/// The slots whose uid range some process of the host runs with (any of its uids).
fn slots_in_use() -> std::collections::HashSet<u32> {
    let mut busy = std::collections::HashSet::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return busy;
    };
    for e in rd.flatten() {
        if !e
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .into_iter()
            .flat_map(str::split_whitespace)
            .filter_map(|u| u.parse::<u32>().ok());
        busy.extend(uids.filter_map(slot_of_uid));
    }
    busy
}

/// The slot whose range holds host uid `uid`.
fn slot_of_uid(uid: u32) -> Option<u32> {
    let slot = uid.checked_sub(UID_BASE_START)? / UID_RANGE;
    (slot < MAX_SLOTS).then_some(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_daemons_never_share_a_slot() {
        let t = tempfile::tempdir().unwrap();
        let (a_dir, b_dir) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(&a_dir).unwrap();
        std::fs::create_dir_all(&b_dir).unwrap();
        let claims = t.path().join("slots");
        let a = SlotClaims::open(&claims, &a_dir).unwrap();
        let b = SlotClaims::open(&claims, &b_dir).unwrap();
        assert!(a.claim(0, "m1").unwrap());
        assert!(a.claim(0, "m1").unwrap(), "its own claim again");
        assert!(!b.transfer(0, "m1", "x").unwrap(), "not b's to hand on");
        assert!(a.transfer(0, "m1", "m0").unwrap());
        assert!(a.transfer(0, "m0", "m1").unwrap());
        assert!(!a.transfer(0, "m0", "m1").unwrap(), "m0 holds it no more");
        assert!(!b.claim(0, "m2").unwrap(), "held by the other daemon");
        assert!(b.claim(1, "m2").unwrap());
        b.release(0, "m2"); // not b's: nothing happens
        assert!(!b.claim(0, "m2").unwrap());
        assert_eq!(a.owned(), vec![(0, "m1".to_string())]);
        a.release(0, "m1");
        assert!(b.claim(0, "m3").unwrap());
    }

    #[test]
    fn daemons_sharing_a_claims_dir_share_its_tag() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let a = SlotClaims::open(&t.path().join("slots"), &data).unwrap();
        let b = SlotClaims::open(&t.path().join("slots"), &data).unwrap();
        let elsewhere = SlotClaims::open(&t.path().join("other"), &data).unwrap();
        assert_eq!(a.place_tag(), b.place_tag());
        assert_ne!(a.place_tag(), elsewhere.place_tag());
        assert_eq!(a.place_tag().len(), 8);
    }

    #[test]
    fn claims_of_a_removed_data_dir_are_swept_unless_in_use() {
        let t = tempfile::tempdir().unwrap();
        let (gone_dir, live_dir) = (t.path().join("gone"), t.path().join("live"));
        std::fs::create_dir_all(&gone_dir).unwrap();
        std::fs::create_dir_all(&live_dir).unwrap();
        let claims = t.path().join("slots");
        let gone = SlotClaims::open(&claims, &gone_dir).unwrap();
        let live = SlotClaims::open(&claims, &live_dir).unwrap();
        // Slot 4095's range is far above any uid a process of this host runs with.
        assert!(gone.claim(MAX_SLOTS - 1, "m1").unwrap());
        assert!(live.claim(MAX_SLOTS - 2, "m2").unwrap());
        assert_eq!(live.sweep_abandoned(), 0, "the owner's dir still exists");
        std::fs::remove_dir_all(&gone_dir).unwrap();
        assert_eq!(live.sweep_abandoned(), 1);
        assert!(live.claim(MAX_SLOTS - 1, "m3").unwrap(), "free again");
        assert_eq!(live.owned().len(), 2);
        assert_eq!(slot_of_uid(UID_BASE_START + 3 * UID_RANGE + 7), Some(3));
        assert_eq!(slot_of_uid(1000), None);
    }
}
