//! Persistent volumes on the host. A volume is one sparse ext4 image under the data dir: its
//! size is a hard limit (the filesystem cannot grow past it into the host's disk), it survives
//! daemon restarts and reboots as a plain file, and it is mounted (loop device, by util-linux
//! `mount -o loop`, autocleared with the last mount) only while a machine runs with it.
//! e2fsprogs makes and grows the filesystem; `cp --reflink=auto --sparse=always` copies it for
//! snapshots and forks (a reflink on filesystems that share blocks, a sparse copy elsewhere).

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {output}")]
    Tool { tool: String, output: String },
    /// The host's disk cannot hold it.
    #[error("not enough space on the host for {0}")]
    NoSpace(String),
}

pub type Result<T> = std::result::Result<T, VolumeError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |source| {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            VolumeError::NoSpace(what)
        } else {
            VolumeError::Io { what, source }
        }
    }
}

fn run(name: &str, args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = Command::new(hangar_sandbox::plan::system_tool(name))
        .args(args)
        .output()
        .map_err(io(format!("running {name}")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        if text.contains("No space left") {
            return Err(VolumeError::NoSpace(name.to_string()));
        }
        return Err(VolumeError::Tool {
            tool: name.to_string(),
            output: text.trim().to_string(),
        });
    }
    Ok(text)
}

const GIB: u64 = 1 << 30;

/// Where the volumes of one daemon live: `<dir>/<id>.img`, snapshots in `<dir>/snapshots/`.
#[derive(Debug, Clone)]
pub struct VolumeDir {
    dir: PathBuf,
}

/// What `statvfs` says of a mounted volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
}

impl Usage {
    pub fn bytes_total(&self) -> u64 {
        self.blocks * self.block_size
    }
    pub fn bytes_used(&self) -> u64 {
        self.blocks.saturating_sub(self.blocks_free) * self.block_size
    }
}

impl VolumeDir {
    /// Opens (creating) the volumes dir, root's only: images hold users' data.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("snapshots"))
            .map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", dir.display())))?;
        Ok(VolumeDir { dir })
    }

    /// Bytes the filesystem holding the volumes can hold in all.
    pub fn capacity(&self) -> Result<u64> {
        let st = rustix::fs::statvfs(&self.dir).map_err(|e| VolumeError::Io {
            what: format!("statvfs {}", self.dir.display()),
            source: e.into(),
        })?;
        Ok(st.f_blocks * st.f_frsize)
    }

    pub fn image(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    pub fn snapshot(&self, id: &str) -> PathBuf {
        self.dir.join("snapshots").join(format!("{id}.img"))
    }

    /// A new empty volume of `size_gb`: a sparse file with an ext4 filesystem whose root is
    /// uid 0 (the machine's root, through the idmapped mount). Nothing is left on failure.
    pub fn create(&self, id: &str, size_gb: u64) -> Result<()> {
        let image = self.image(id);
        // Never touches an existing image: only what this call created is removed on failure.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&image)
            .map_err(io(format!("creating {}", image.display())))?;
        let made = (|| {
            f.set_len(size_gb * GIB)
                .map_err(io(format!("sizing {}", image.display())))?;
            drop(f);
            // No reserved blocks: the volume is all the machine's. lazy_itable_init keeps the
            // file sparse (and creation fast).
            run(
                "mkfs.ext4",
                &[
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-m".as_ref(),
                    "0".as_ref(),
                    "-E".as_ref(),
                    "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1".as_ref(),
                    image.as_os_str(),
                ],
            )?;
            Ok(())
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&image);
        }
        made
    }

    /// A copy of `src` (an image path) as volume `id` (a fork or a restore), grown to `size_gb`
    /// when that is larger. Point in time only if `src` is not written meanwhile (see
    /// [`freeze`]).
    pub fn copy_from(&self, src: &Path, id: &str, size_gb: u64) -> Result<()> {
        let image = self.image(id);
        let made = (|| {
            copy_sparse(src, &image)?;
            self.grow_offline(id, size_gb)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&image);
        }
        made
    }

    /// Snapshot `snap_id` of volume `id`: a copy of its image.
    pub fn take_snapshot(&self, id: &str, snap_id: &str) -> Result<u64> {
        let dst = self.snapshot(snap_id);
        copy_sparse(&self.image(id), &dst)?;
        let size = std::fs::metadata(&dst)
            .map_err(io(format!("stat {}", dst.display())))?
            .len();
        Ok(size)
    }

    pub fn remove_snapshot(&self, snap_id: &str) -> Result<()> {
        remove_if_exists(&self.snapshot(snap_id))
    }

    /// Deletes the volume's image (its data is gone).
    pub fn remove(&self, id: &str) -> Result<()> {
        remove_if_exists(&self.grow_marker(id))?;
        remove_if_exists(&self.image(id))
    }

    pub fn exists(&self, id: &str) -> bool {
        self.image(id).is_file()
    }

    /// Grows an unmounted volume to `size_gb` (never shrinks).
    pub fn grow_offline(&self, id: &str, size_gb: u64) -> Result<()> {
        let image = self.image(id);
        if !self.set_size(&image, size_gb)? {
            return Ok(());
        }
        run("e2fsck", &["-f".as_ref(), "-p".as_ref(), image.as_os_str()])?;
        run("resize2fs", &[image.as_os_str()])?;
        Ok(())
    }

    /// Grows a mounted volume to `size_gb` while it is in use: the file, then the loop
    /// device's capacity, then the filesystem (ext4 grows online). Returns whether the
    /// filesystem grew now; `false` when the kernel refused the online resize (it needs
    /// CAP_SYS_RESOURCE): the device is bigger and [`fit_filesystem`](Self::fit_filesystem)
    /// grows the filesystem before its next mount.
    pub fn grow_online(&self, id: &str, size_gb: u64) -> Result<bool> {
        let image = self.image(id);
        self.set_size(&image, size_gb)?;
        let device = loop_device_of(&image)?.ok_or_else(|| VolumeError::Tool {
            tool: "losetup".into(),
            output: format!("{} is not attached to a loop device", image.display()),
        })?;
        run("losetup", &["-c".as_ref(), device.as_os_str()])?;
        match run("resize2fs", &[device.as_os_str()]) {
            Ok(_) => Ok(true),
            Err(VolumeError::Tool { output, .. }) if output.contains("Permission denied") => {
                tracing::info!(
                    volume = id,
                    "online resize refused; the filesystem grows at the next mount"
                );
                std::fs::write(self.grow_marker(id), b"")
                    .map_err(io(format!("marking {id} for a resize")))?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Grows an unmounted volume's filesystem to fill its image if it is smaller (an extend
    /// that could not resize online). Cheap when there is nothing to do.
    pub fn fit_filesystem(&self, id: &str) -> Result<()> {
        // Only an extend that could not finish leaves work here (marked by grow_online).
        let marker = self.grow_marker(id);
        if !marker.exists() {
            return Ok(());
        }
        let image = self.image(id);
        let len = std::fs::metadata(&image)
            .map_err(io(format!("stat {}", image.display())))?
            .len();
        let header = run("dumpe2fs", &["-h".as_ref(), image.as_os_str()])?;
        let field = |name: &str| {
            header
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(count), Some(size)) = (field("Block count:"), field("Block size:")) else {
            return Err(VolumeError::Tool {
                tool: "dumpe2fs".into(),
                output: format!("no block count in the header of {}", image.display()),
            });
        };
        if count * size < len {
            run("e2fsck", &["-f".as_ref(), "-p".as_ref(), image.as_os_str()])?;
            run("resize2fs", &[image.as_os_str()])?;
        }
        remove_if_exists(&marker)
    }

    fn grow_marker(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.grow"))
    }

    /// Sets the image's length to `size_gb` if that grows it; whether it did.
    fn set_size(&self, image: &Path, size_gb: u64) -> Result<bool> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(io(format!("opening {}", image.display())))?;
        let len = f
            .metadata()
            .map_err(io(format!("stat {}", image.display())))?
            .len();
        let want = size_gb * GIB;
        if want <= len {
            return Ok(false);
        }
        f.set_len(want)
            .map_err(io(format!("growing {}", image.display())))?;
        Ok(true)
    }
}

/// The loop device backing `image`, if one is.
pub fn loop_device_of(image: &Path) -> Result<Option<PathBuf>> {
    let out = run(
        "losetup",
        &[
            "-n".as_ref(),
            "-O".as_ref(),
            "NAME".as_ref(),
            "-j".as_ref(),
            image.as_os_str(),
        ],
    )?;
    Ok(out.lines().next().map(|l| PathBuf::from(l.trim())))
}

/// Usage of the filesystem mounted at `mountpoint`.
pub fn usage(mountpoint: &Path) -> Result<Usage> {
    let st = rustix::fs::statvfs(mountpoint).map_err(|e| VolumeError::Io {
        what: format!("statvfs {}", mountpoint.display()),
        source: e.into(),
    })?;
    Ok(Usage {
        block_size: st.f_frsize,
        blocks: st.f_blocks,
        blocks_free: st.f_bfree,
        blocks_avail: st.f_bavail,
    })
}

/// Freezes the filesystem mounted at `mountpoint` until the guard drops, so a copy of its
/// image is a consistent point in time (writers block meanwhile, they do not fail).
pub fn freeze(mountpoint: &Path) -> Result<Frozen> {
    let dir =
        std::fs::File::open(mountpoint).map_err(io(format!("opening {}", mountpoint.display())))?;
    // SAFETY: FIFREEZE takes no argument besides the fd of a directory on the filesystem.
    if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dir), FIFREEZE, 0) } != 0 {
        return Err(io(format!("freezing {}", mountpoint.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Frozen { dir })
}

const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// A frozen filesystem; thawed on drop.
pub struct Frozen {
    dir: std::fs::File,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as FIFREEZE.
        if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&self.dir), FITHAW, 0) } != 0 {
            tracing::error!(
                "thawing a volume failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn copy_sparse(src: &Path, dst: &Path) -> Result<()> {
    // Never over an existing image (and so never removing one below).
    if dst.exists() {
        return Err(io(format!("copying to {}", dst.display()))(
            std::io::ErrorKind::AlreadyExists.into(),
        ));
    }
    let made = run(
        "cp",
        &[
            "--reflink=auto".as_ref(),
            "--sparse=always".as_ref(),
            "--".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    );
    if made.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    made.map(drop)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_grow_copy_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VolumeDir::open(tmp.path().join("volumes")).unwrap();
        dir.create("vol_a", 1).unwrap();
        let meta = std::fs::metadata(dir.image("vol_a")).unwrap();
        assert_eq!(meta.len(), GIB);
        // Sparse: far less than a GiB is allocated.
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 << 20);
        assert!(dir.create("vol_a", 1).is_err(), "never overwritten");
        dir.grow_offline("vol_a", 2).unwrap();
        assert_eq!(
            std::fs::metadata(dir.image("vol_a")).unwrap().len(),
            2 * GIB
        );
        dir.copy_from(&dir.image("vol_a"), "vol_b", 3).unwrap();
        assert_eq!(
            std::fs::metadata(dir.image("vol_b")).unwrap().len(),
            3 * GIB
        );
        let size = dir.take_snapshot("vol_b", "vs_1").unwrap();
        assert_eq!(size, 3 * GIB);
        dir.remove_snapshot("vs_1").unwrap();
        dir.remove("vol_a").unwrap();
        dir.remove("vol_a").unwrap();
        assert!(!dir.exists("vol_a") && dir.exists("vol_b"));
    }
}
