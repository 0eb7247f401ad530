//! Paths inside a machine's root filesystem, resolved inside it.
//!
//! A root filesystem belongs to the machine: its image, or a persisted rootfs the workload has
//! rearranged, may hold symlinks such as `var/lib/esc -> /` or an `/etc` that points elsewhere.
//! Joining a container path onto the host path of the rootfs and calling `open`/`mkdir`/`mount`
//! would follow those links against the host's `/`. Every lookup here is an `openat2` from a
//! descriptor of the root with `RESOLVE_IN_ROOT` (absolute links and `..` stop at the root, as
//! after a `chroot`) and `RESOLVE_NO_MAGICLINKS`; creation happens with `*at` calls on a
//! descriptor already resolved that way, and a file is never opened through a symlink. Mount
//! points are handed out as descriptors, so a mount lands on `/proc/self/fd/N`, the directory
//! that was resolved, and not on whatever a path names a moment later.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a path inside a root could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: &'static str },
}

fn io<'a>(path: &'a str, what: &'static str) -> impl FnOnce(Errno) -> InRootError + 'a {
    move |e| InRootError::Io {
        path: path.to_string(),
        what,
        source: e.into(),
    }
}

/// A directory tree addressed only through a descriptor of its root.
#[derive(Debug)]
pub struct InRoot {
    root: OwnedFd,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

impl InRoot {
    /// Opens `root` (a host path the caller controls) as the root of later lookups.
    pub fn open(root: &Path) -> Result<Self, InRootError> {
        let root = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io(&root.display().to_string(), "open root"))?;
        Ok(Self { root })
    }

    /// The root's descriptor (an `O_PATH` directory).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    fn lookup(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        let rel: &OsStr = if rel.is_empty() {
            OsStr::new(".")
        } else {
            OsStr::from_bytes(rel)
        };
        loop {
            match rustix::fs::openat2(
                &self.root,
                rel,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            ) {
                // The kernel asks for a retry when a rename raced the lookup.
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                other => return other,
            }
        }
    }

    /// The directory `path`, created (with `mode`, and any missing parents) if absent; returns
    /// an `O_PATH` descriptor of it. Existing symlinks on the way are followed inside the root.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<OwnedFd, InRootError> {
        let comps = components(path);
        let mut cur = self
            .lookup(b"", OFlags::PATH | OFlags::DIRECTORY)
            .map_err(io(path, "open root"))?;
        let mut prefix: Vec<u8> = Vec::new();
        for comp in comps {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(comp);
            let flags = OFlags::PATH | OFlags::DIRECTORY;
            cur = match self.lookup(&prefix, flags) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(
                        &cur,
                        OsStr::from_bytes(comp),
                        Mode::from_raw_mode(mode),
                    ) {
                        Ok(()) => {}
                        // A symlink whose target is missing (or a racing creator).
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(io(path, "create directory")(e)),
                    }
                    self.lookup(&prefix, flags).map_err(|e| match e {
                        Errno::NOENT => InRootError::Invalid {
                            path: path.to_string(),
                            reason: "a component is a symlink to a missing path",
                        },
                        e => io(path, "open directory")(e),
                    })?
                }
                Err(Errno::NOTDIR) => {
                    return Err(InRootError::Invalid {
                        path: path.to_string(),
                        reason: "a component is not a directory",
                    })
                }
                Err(e) => return Err(io(path, "open directory")(e)),
            };
        }
        Ok(cur)
    }

    /// Splits `path` into its parent (created if missing) and its final name, which must be a
    /// plain name.
    fn parent_and_name<'p>(&self, path: &'p str) -> Result<(OwnedFd, &'p OsStr), InRootError> {
        let comps = components(path);
        let Some((name, parents)) = comps.split_last() else {
            return Err(InRootError::Invalid {
                path: path.to_string(),
                reason: "names the root directory",
            });
        };
        if *name == b".." {
            return Err(InRootError::Invalid {
                path: path.to_string(),
                reason: "ends in ..",
            });
        }
        let parent = self.mkdir_all(&parents_str(parents), 0o755)?;
        Ok((parent, OsStr::from_bytes(name)))
    }

    /// Writes `content` to the regular file `path` with `mode`. A symlink, fifo, socket or
    /// device at `path` is replaced (never written through); a directory there is an error.
    pub fn write_file(&self, path: &str, content: &[u8], mode: u32) -> Result<(), InRootError> {
        let (parent, name) = self.parent_and_name(path)?;
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => {}
                FileType::Directory => {
                    return Err(InRootError::Invalid {
                        path: path.to_string(),
                        reason: "is a directory",
                    })
                }
                _ => rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                    .map_err(io(path, "replace"))?,
            },
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io(path, "stat")(e)),
        }
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::TRUNC
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o7777),
        )
        .map_err(io(path, "open for writing"))?;
        // Something swapped in between the check and the open: refuse rather than write it.
        let st = rustix::fs::fstat(&fd).map_err(io(path, "stat"))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(InRootError::Invalid {
                path: path.to_string(),
                reason: "is not a regular file",
            });
        }
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, content).map_err(|e| InRootError::Io {
            path: path.to_string(),
            what: "write",
            source: e,
        })?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777)).map_err(io(path, "chmod"))?;
        Ok(())
    }

    /// The content of the regular file `path` (at most `limit` bytes), or `None` when there is
    /// no such file. A symlink is followed inside the root; anything but a regular file reads
    /// as absent, so a fifo or device cannot block or feed the caller.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, InRootError> {
        let rel = rel_bytes(path);
        let fd = match self.lookup(&rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) | Err(Errno::XDEV) => {
                return Ok(None)
            }
            Err(e) => return Err(io(path, "open")(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(io(path, "stat"))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        let mut out = Vec::new();
        std::fs::File::from(fd)
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| InRootError::Io {
                path: path.to_string(),
                what: "read",
                source: e,
            })?;
        Ok(Some(out))
    }

    /// An `O_PATH` descriptor of the existing directory `path`.
    pub fn open_dir(&self, path: &str) -> Result<OwnedFd, InRootError> {
        self.lookup(&rel_bytes(path), OFlags::PATH | OFlags::DIRECTORY)
            .map_err(io(path, "open directory"))
    }

    /// A regular file at `path` to mount over (created empty if missing); its `O_PATH`
    /// descriptor.
    pub fn mount_point_file(&self, path: &str) -> Result<OwnedFd, InRootError> {
        let (parent, name) = self.parent_and_name(path)?;
        match rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(_) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io(path, "create mount point")(e)),
        }
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io(path, "open mount point"))?;
        let st = rustix::fs::fstat(&fd).map_err(io(path, "stat"))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(InRootError::Invalid {
                path: path.to_string(),
                reason: "is a symlink",
            });
        }
        Ok(fd)
    }
}

/// The magic path of an open descriptor, for calls (mount) that only take paths: the kernel
/// resolves it to the very object the descriptor holds.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The non-empty, non-`.` components of `path` (`..` kept: the kernel resolves it inside the
/// root).
fn components(path: &str) -> Vec<&[u8]> {
    path.as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

fn parents_str(parents: &[&[u8]]) -> String {
    parents
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn rel_bytes(path: &str) -> Vec<u8> {
    components(path).join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root with the escapes the hardening issue found: absolute, relative and chained links
    /// out of it, a `..` walk, and a dangling one.
    fn hostile_root() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // The same absolute path exists inside the root: that is where `abs` must lead.
        std::fs::create_dir_all(root.join(outside.strip_prefix("/").unwrap())).unwrap();
        symlink("/", root.join("var/lib/esc")).unwrap();
        symlink(&outside, root.join("abs")).unwrap();
        symlink("../../../../../../..", root.join("var/lib/up")).unwrap();
        symlink("up/tmp", root.join("var/lib/chain")).unwrap();
        symlink(outside.join("hosts"), root.join("etc/hosts")).unwrap();
        symlink("/missing/dir", root.join("dangling")).unwrap();
        (t, root, outside)
    }

    #[test]
    fn writes_stay_inside_the_root() {
        let (_t, root, outside) = hostile_root();
        let r = InRoot::open(&root).unwrap();
        r.write_file("/abs/x", b"1", 0o600).unwrap();
        assert_eq!(
            std::fs::read(root.join(outside.strip_prefix("/").unwrap()).join("x")).unwrap(),
            b"1"
        );
        assert!(
            !outside.join("x").exists(),
            "an absolute link led out of the root"
        );
        r.write_file("/var/lib/esc/tmp/somedir/x", b"2", 0o644)
            .unwrap();
        assert_eq!(std::fs::read(root.join("tmp/somedir/x")).unwrap(), b"2");
        r.write_file("var/lib/chain/y", b"3", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("tmp/y")).unwrap(), b"3");
        r.write_file("/../../../../z", b"4", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("z")).unwrap(), b"4");
        // The final component is replaced, never written through.
        r.write_file("/etc/hosts", b"5", 0o644).unwrap();
        assert!(!outside.join("hosts").exists());
        assert!(!std::fs::symlink_metadata(root.join("etc/hosts"))
            .unwrap()
            .is_symlink());
        let err = r.write_file("/dangling/x", b"6", 0o644).unwrap_err();
        assert!(err.to_string().contains("missing path"), "{err}");
        assert!(r.write_file("/", b"", 0o644).is_err());
        assert!(r.write_file("/etc", b"", 0o644).is_err());
        assert_eq!(
            std::fs::metadata(root.join("tmp/somedir/x"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
    }

    #[test]
    fn reads_stay_inside_the_root() {
        let (_t, root, outside) = hostile_root();
        std::fs::write(outside.join("hosts"), b"host secret").unwrap();
        std::fs::write(root.join("etc/passwd"), b"in root").unwrap();
        let r = InRoot::open(&root).unwrap();
        assert_eq!(r.read_file("/etc/hosts", 1024).unwrap(), None);
        assert_eq!(
            r.read_file("/var/lib/esc/etc/passwd", 1024)
                .unwrap()
                .unwrap(),
            b"in root"
        );
        assert_eq!(r.read_file("/etc/passwd", 3).unwrap().unwrap(), b"in ");
        assert_eq!(r.read_file("/etc", 10).unwrap(), None);
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert_eq!(
            r.read_file("/fifo", 10).unwrap(),
            None,
            "a fifo must not block"
        );
    }

    #[test]
    fn directories_are_created_inside_the_root() {
        let (_t, root, outside) = hostile_root();
        let r = InRoot::open(&root).unwrap();
        let fd = r.mkdir_all("/abs/data/sub", 0o755).unwrap();
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("data/sub")
            .is_dir());
        assert!(!outside.join("data").exists());
        let st = rustix::fs::fstat(&fd).unwrap();
        let want = std::fs::metadata(
            root.join(outside.strip_prefix("/").unwrap())
                .join("data/sub"),
        )
        .unwrap();
        assert_eq!(st.st_ino, std::os::unix::fs::MetadataExt::ino(&want));
        let f = r.mount_point_file("/var/lib/esc/dev/null").unwrap();
        assert!(rustix::fs::fstat(&f).is_ok());
        assert!(root.join("dev/null").is_file());
    }

    use std::os::unix::fs::PermissionsExt;
}
