//! Safe extraction of one layer tar into its own directory.
//!
//! A layer is hostile until proven otherwise. Every entry is created relative to a directory fd
//! reached by walking the entry's parent components one at a time with `O_NOFOLLOW |
//! O_DIRECTORY`, so a symlink planted by an earlier entry (or a `..`) can never redirect a
//! later write outside the layer. Hardlink targets are resolved the same way. Device nodes are
//! refused; OCI whiteouts become overlayfs whiteouts (0:0 char devices, `trusted.overlay.opaque`).
//! The caller unpacks into a private temporary directory and renames it into place only on
//! success, so a refused layer leaves nothing behind.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use tar::EntryType;

use crate::error::{Error, Result};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Bounds that turn absurd headers into errors instead of disk or memory exhaustion.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single file.
    pub max_entry_size: u64,
    /// Largest sum of file sizes in one layer.
    pub max_total_size: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_size: 64 << 30,
            max_total_size: 512 << 30,
            max_entries: 10_000_000,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Extracts the (uncompressed) tar stream `reader` into `dest`, an existing empty directory.
/// `layer` names the layer in errors.
pub fn unpack(reader: impl Read, dest: &Path, layer: &str, limits: &Limits) -> Result<UnpackStats> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open layer dir", dest)(e.into()))?;
    let mut u = Unpacker {
        root,
        dest,
        layer,
        limits,
        stats: UnpackStats::default(),
        parent_cache: None,
        dir_times: Vec::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| u.io_err("read tar", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| u.io_err("read tar entry", e))?;
        u.entry(&mut entry)?;
    }
    u.finish()?;
    Ok(u.stats)
}

struct Unpacker<'a> {
    root: OwnedFd,
    dest: &'a Path,
    layer: &'a str,
    limits: &'a Limits,
    stats: UnpackStats,
    /// The last parent directory opened: tars list siblings together, so this saves most walks.
    parent_cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
    /// Directory mtimes are set at the end: creating children would change them.
    dir_times: Vec<(Vec<Vec<u8>>, Timespec)>,
}

/// Metadata from the header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl<'a> Unpacker<'a> {
    fn unsafe_entry(&self, entry: &[u8], reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn io_err(&self, what: &str, e: io::Error) -> Error {
        Error::Layer {
            layer: self.layer.to_string(),
            source: Box::new(Error::Io {
                context: "unpack",
                path: self.dest.to_path_buf(),
                source: io::Error::new(e.kind(), format!("{what}: {e}")),
            }),
        }
    }

    fn entry_err(&self, entry: &[u8], what: &str, e: impl Into<io::Error>) -> Error {
        let e: io::Error = e.into();
        self.io_err(&format!("{} ({what})", String::from_utf8_lossy(entry)), e)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(self.unsafe_entry(b"", "too many entries"));
        }
        let raw_path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        // The tar crate reads a base-256 size from its last 8 bytes only; a field whose value
        // does not fit in 64 bits would silently become something else.
        let raw_size = &entry.header().as_old().size;
        if raw_size[0] & 0x80 != 0
            && (raw_size[0] != 0x80 || raw_size[1..4].iter().any(|&b| b != 0))
        {
            return Err(self.unsafe_entry(&raw_path, "size field out of range"));
        }
        let size = entry.size();
        if size > self.limits.max_entry_size {
            return Err(self.unsafe_entry(&raw_path, format!("absurd size {size}")));
        }
        self.stats.bytes = self.stats.bytes.saturating_add(size);
        if self.stats.bytes > self.limits.max_total_size {
            return Err(self.unsafe_entry(&raw_path, "layer larger than the limit"));
        }
        let comps = self.components(&raw_path)?;
        let meta = self.meta(entry, &raw_path)?;

        let Some((name, parents)) = comps.split_last() else {
            // The layer root itself (`./`): only metadata applies.
            if kind != EntryType::Directory {
                return Err(self.unsafe_entry(&raw_path, "non-directory at the layer root"));
            }
            self.apply_meta_at(
                &self.root.try_clone_fd(self.dest)?,
                OsStr::new("."),
                &meta,
                &raw_path,
                true,
            )?;
            self.dir_times.push((Vec::new(), meta.mtime));
            return Ok(());
        };

        // Whiteouts: `.wh..wh..opq` marks the parent opaque; `.wh.x` hides `x` from lower layers.
        if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            let parent = self.parent(parents, &raw_path)?;
            if name.as_slice() == OPAQUE_MARKER.as_bytes() {
                rustix::fs::fsetxattr(&parent, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(|e| self.entry_err(&raw_path, "set opaque", e))?;
                return Ok(());
            }
            let hidden = &name[WHITEOUT_PREFIX.len()..];
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other `.wh..wh.` names are aufs bookkeeping (hardlink dirs); nothing to hide.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.unsafe_entry(&raw_path, "invalid whiteout name"));
            }
            let hidden = OsStr::from_bytes(hidden);
            self.clear(&parent, hidden, false, &raw_path, parents)?;
            self.whiteout(&parent, hidden, &meta, &raw_path)?;
            return Ok(());
        }

        let parent = self.parent(parents, &raw_path)?;
        let name_os = OsStr::from_bytes(name);
        match kind {
            EntryType::Directory => {
                let exists_as_dir = self.clear(&parent, name_os, true, &raw_path, parents)?;
                if !exists_as_dir {
                    rustix::fs::mkdirat(&parent, name_os, Mode::from_raw_mode(0o700))
                        .map_err(|e| self.entry_err(&raw_path, "mkdir", e))?;
                }
                self.apply_meta_at(&parent, name_os, &meta, &raw_path, true)?;
                self.dir_times.push((comps.clone(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&parent, name_os, false, &raw_path, parents)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name_os,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.entry_err(&raw_path, "create", e))?;
                let mut file = File::from(fd);
                let n = io::copy(entry, &mut file)
                    .map_err(|e| self.entry_err(&raw_path, "write", e))?;
                if n != size {
                    return Err(
                        self.unsafe_entry(&raw_path, format!("truncated: {n} of {size} bytes"))
                    );
                }
                self.apply_meta_at(&parent, name_os, &meta, &raw_path, false)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw_path, "symlink without target"))?
                    .into_owned();
                if target.is_empty() || target.len() > 4096 {
                    return Err(self.unsafe_entry(&raw_path, "bad symlink target length"));
                }
                self.clear(&parent, name_os, false, &raw_path, parents)?;
                // The target is stored verbatim: it is only ever resolved inside the machine's
                // root at run time, and unpacking never follows symlinks.
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name_os)
                    .map_err(|e| self.entry_err(&raw_path, "symlink", e))?;
                self.apply_meta_at(&parent, name_os, &meta, &raw_path, false)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw_path, "hardlink without target"))?
                    .into_owned();
                let tcomps = self.components(&target).map_err(|_| {
                    self.unsafe_entry(&raw_path, "hardlink target escapes the layer")
                })?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(self.unsafe_entry(&raw_path, "hardlink to the layer root"));
                };
                let tparent = self.walk(tparents, false).map_err(|_| {
                    self.unsafe_entry(
                        &raw_path,
                        "hardlink target outside the layer or through a symlink",
                    )
                })?;
                let st = rustix::fs::statat(
                    &tparent,
                    OsStr::from_bytes(tname),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|_| self.unsafe_entry(&raw_path, "hardlink target not in this layer"))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(self.unsafe_entry(&raw_path, "hardlink to a directory"));
                }
                if tcomps == comps {
                    return Ok(());
                }
                self.clear(&parent, name_os, false, &raw_path, parents)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                rustix::fs::linkat(
                    &tparent,
                    OsStr::from_bytes(tname),
                    &parent,
                    name_os,
                    AtFlags::empty(),
                )
                .map_err(|e| self.entry_err(&raw_path, "hardlink", e))?;
            }
            EntryType::Fifo => {
                self.clear(&parent, name_os, false, &raw_path, parents)?;
                rustix::fs::mknodat(
                    &parent,
                    name_os,
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(|e| self.entry_err(&raw_path, "mkfifo", e))?;
                self.apply_meta_at(&parent, name_os, &meta, &raw_path, false)?;
            }
            EntryType::Char => {
                let (maj, min) = (
                    entry.header().device_major().ok().flatten(),
                    entry.header().device_minor().ok().flatten(),
                );
                // A 0:0 char device is already an overlay whiteout. A real device node (images
                // built by debootstrap or mmdebstrap carry /dev/console, /dev/null…) is skipped,
                // as rootless runtimes do: a machine's /dev is a fresh tmpfs, and a device node
                // from an image is nothing a machine may have.
                if maj != Some(0) || min != Some(0) {
                    tracing::info!(entry = %String::from_utf8_lossy(&raw_path), "skipping a character device in an image layer");
                    return Ok(());
                }
                self.clear(&parent, name_os, false, &raw_path, parents)?;
                self.whiteout(&parent, name_os, &meta, &raw_path)?;
            }
            EntryType::Block => {
                tracing::info!(entry = %String::from_utf8_lossy(&raw_path), "skipping a block device in an image layer");
            }
            other => {
                return Err(
                    self.unsafe_entry(&raw_path, format!("unsupported entry type {other:?}"))
                )
            }
        }
        Ok(())
    }

    /// Splits a tar path into components, refusing anything that could leave the layer.
    /// Leading `/` is dropped as Docker does: the walk below is always relative to the layer.
    fn components(&self, raw: &[u8]) -> Result<Vec<Vec<u8>>> {
        if raw.len() > 4096 {
            return Err(self.unsafe_entry(raw, "path too long"));
        }
        let mut out = Vec::new();
        for c in raw.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(self.unsafe_entry(raw, "path contains `..`")),
                c if c.len() > 255 => return Err(self.unsafe_entry(raw, "name too long")),
                c if c.contains(&0) => return Err(self.unsafe_entry(raw, "NUL in path")),
                c => out.push(c.to_vec()),
            }
        }
        Ok(out)
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta> {
        let h = entry.header();
        let bad = |what: &str| self.unsafe_entry(raw, format!("bad {what} field"));
        let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
        let mut uid = h.uid().map_err(|_| bad("uid"))?;
        let mut gid = h.gid().map_err(|_| bad("gid"))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(h.mtime().map_err(|_| bad("mtime"))?)
                .map_err(|_| bad("mtime"))?,
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| self.entry_err(raw, "pax", e))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| self.entry_err(raw, "pax", e))?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                };
                match key {
                    "uid" => uid = num().ok_or_else(|| bad("pax uid"))?,
                    "gid" => gid = num().ok_or_else(|| bad("pax gid"))?,
                    "mtime" => {
                        if let Some(t) = std::str::from_utf8(value).ok().and_then(parse_pax_time) {
                            mtime = t;
                        }
                    }
                    k if k.starts_with("SCHILY.xattr.") => {
                        let name = &k["SCHILY.xattr.".len()..];
                        // Overlay's own xattrs in a layer could forge redirects or metacopy
                        // files pointing anywhere in the lower stack; they are ours to set.
                        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
                        {
                            tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(raw), xattr = name, "ignoring overlay xattr in layer");
                            continue;
                        }
                        xattrs.push((name.to_string(), value.to_vec()));
                    }
                    _ => {}
                }
            }
        }
        // -1 means "unchanged" to chown; anything past 32 bits cannot be a real id.
        let id = |v: u64, what: &str| -> Result<u32> {
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| self.unsafe_entry(raw, format!("{what} {v} out of range")))
        };
        Ok(Meta {
            mode,
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mtime,
            xattrs,
        })
    }

    /// An fd for the directory `parents` (relative to the layer root), creating missing
    /// directories (0755, root-owned, as Docker does for implied parents).
    fn parent(&mut self, parents: &[Vec<u8>], raw: &[u8]) -> Result<OwnedFd> {
        if let Some((p, fd)) = &self.parent_cache {
            if p.as_slice() == parents {
                return fd.try_clone_fd(self.dest);
            }
        }
        let fd = self.walk(parents, true).map_err(|e| match e {
            WalkError::NotDir => self.unsafe_entry(raw, "parent is a symlink or not a directory"),
            WalkError::Io(e) => self.entry_err(raw, "open parent", e),
        })?;
        self.parent_cache = Some((parents.to_vec(), fd.try_clone_fd(self.dest)?));
        Ok(fd)
    }

    /// Walks `comps` from the layer root one component at a time, never following a symlink.
    fn walk(&self, comps: &[Vec<u8>], create: bool) -> Result<OwnedFd, WalkError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut cur =
            rustix::fs::openat(&self.root, ".", flags, Mode::empty()).map_err(WalkError::from)?;
        for c in comps {
            let c = OsStr::from_bytes(c);
            let next = match rustix::fs::openat(&cur, c, flags, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) if create => {
                    rustix::fs::mkdirat(&cur, c, Mode::from_raw_mode(0o755))
                        .map_err(WalkError::from)?;
                    rustix::fs::openat(&cur, c, flags, Mode::empty())
                }
                other => other,
            };
            cur = next.map_err(|e| match e {
                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => WalkError::NotDir,
                e => WalkError::from(e),
            })?;
        }
        Ok(cur)
    }

    /// Makes room for a new entry `name` in `parent`. Returns true if a directory is there and
    /// `keep_dir` asked to keep it (a directory entry repeated or implied earlier).
    fn clear(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        keep_dir: bool,
        raw: &[u8],
        parents: &[Vec<u8>],
    ) -> Result<bool> {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.entry_err(raw, "stat", e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(true);
            }
            // Replacing a directory by a file: remove the whole tree. The path is inside our
            // private temp dir and every parent was just checked not to be a symlink;
            // remove_dir_all itself never follows symlinks.
            let mut path: PathBuf = self.dest.to_path_buf();
            for p in parents {
                path.push(OsStr::from_bytes(p));
            }
            path.push(name);
            std::fs::remove_dir_all(&path)
                .map_err(|e| self.entry_err(raw, "replace directory", e))?;
            self.parent_cache = None;
            self.dir_times.retain(|(c, _)| {
                !(c.len() > parents.len()
                    && c[..parents.len()] == *parents
                    && c[parents.len()] == name.as_bytes())
            });
        } else {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|e| self.entry_err(raw, "replace", e))?;
        }
        Ok(false)
    }

    fn whiteout(&self, parent: &OwnedFd, name: &OsStr, meta: &Meta, raw: &[u8]) -> Result<()> {
        rustix::fs::mknodat(parent, name, FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(|e| self.entry_err(raw, "create whiteout", e))?;
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        rustix::fs::utimensat(parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.entry_err(raw, "set times", e))?;
        Ok(())
    }

    /// Ownership, then mode (chown clears setuid bits), then xattrs (chown clears
    /// security.capability), then times.
    fn apply_meta_at(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        raw: &[u8],
        is_dir: bool,
    ) -> Result<()> {
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            nofollow,
        )
        .map_err(|e| self.entry_err(raw, "chown", e))?;
        let st = rustix::fs::statat(parent, name, nofollow)
            .map_err(|e| self.entry_err(raw, "stat", e))?;
        let is_link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
        if !is_link {
            // Not a symlink (checked just above in our private tree), so following is moot.
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| self.entry_err(raw, "chmod", e))?;
        }
        if !meta.xattrs.is_empty() {
            let proc_path = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(parent));
            let mut p = proc_path.into_bytes();
            if name != OsStr::new(".") {
                p.extend_from_slice(name.as_bytes());
            }
            let p = OsStr::from_bytes(&p);
            for (k, v) in &meta.xattrs {
                if let Err(e) = rustix::fs::lsetxattr(p, k.as_str(), v, XattrFlags::empty()) {
                    // user.* xattrs cannot exist on symlinks; some filesystems lack a namespace.
                    if is_link || e == rustix::io::Errno::NOTSUP {
                        tracing::debug!(layer = self.layer, xattr = %k, "xattr not kept: {e}");
                        continue;
                    }
                    return Err(self.entry_err(raw, "set xattr", e));
                }
            }
        }
        if !is_dir {
            let times = Timestamps {
                last_access: meta.mtime,
                last_modification: meta.mtime,
            };
            rustix::fs::utimensat(parent, name, &times, nofollow)
                .map_err(|e| self.entry_err(raw, "set times", e))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.parent_cache = None;
        // Deepest first, so setting a child's time does not disturb its parent's afterwards.
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (comps, t) in times {
            let ts = Timestamps {
                last_access: t,
                last_modification: t,
            };
            let res = match comps.split_last() {
                None => rustix::fs::utimensat(&self.root, ".", &ts, AtFlags::empty()),
                Some((name, parents)) => match self.walk(parents, false) {
                    Ok(p) => rustix::fs::utimensat(
                        &p,
                        OsStr::from_bytes(name),
                        &ts,
                        AtFlags::SYMLINK_NOFOLLOW,
                    ),
                    // Removed again by a later entry (replaced by a file): nothing to do.
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = res {
                if e != rustix::io::Errno::NOENT {
                    return Err(self.io_err("set directory times", e.into()));
                }
            }
        }
        Ok(())
    }
}

enum WalkError {
    NotDir,
    Io(io::Error),
}

impl From<rustix::io::Errno> for WalkError {
    fn from(e: rustix::io::Errno) -> Self {
        WalkError::Io(e.into())
    }
}

trait TryCloneFd {
    fn try_clone_fd(&self, dest: &Path) -> Result<OwnedFd>;
}

impl TryCloneFd for OwnedFd {
    fn try_clone_fd(&self, dest: &Path) -> Result<OwnedFd> {
        self.as_fd()
            .try_clone_to_owned()
            .map_err(Error::io("dup fd", dest))
    }
}

/// PAX times are decimal seconds with an optional fraction (`1700000000.123456789`).
fn parse_pax_time(s: &str) -> Option<Timespec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let tv_nsec: i64 = digits.parse().ok()?;
    Some(Timespec {
        tv_sec,
        tv_nsec: if tv_sec < 0 { -tv_nsec } else { tv_nsec }.clamp(0, 999_999_999),
    })
}
