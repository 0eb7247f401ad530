//! The on-disk image store under one root directory (the daemon passes `<data-dir>/images`):
//!
//! ```text
//! blobs/sha256/<hex>      content-addressed blobs (manifests, configs, compressed layers)
//! layers/<diffid hex>/    each layer unpacked once, shared by every image and container
//! layers/empty/           the lower layer of an image without layers
//! tmp/                    downloads and unpacks in progress; renamed into place when verified
//! index.json              images: manifest digest -> record (layers, references)
//! ```
//!
//! Every write lands in `tmp/` first and is renamed into place after verification, so a crash
//! leaves either nothing or a complete, verified object; `index.json` is replaced atomically
//! (write, fsync, rename, fsync dir) under an in-process mutex plus an `flock`, so concurrent
//! writers cannot lose each other's updates.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;
use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{Error, Result};
use crate::oci::{Compression, Manifest, MAX_DOCUMENT};
use crate::reference::Reference;
use crate::unpack::{self, Limits};

/// One image as recorded in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    /// Normalised references (`docker.io/library/nginx:latest`) that name this image.
    pub references: Vec<String>,
    /// Unix seconds when the image was first stored here.
    pub stored_at: u64,
    /// Sum of the (compressed) layer sizes.
    pub size: u64,
    pub os: String,
    pub architecture: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed, usually).
    pub digest: Digest,
    /// Digest of the uncompressed tar: names the unpacked directory.
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

/// An image with its parsed config, for `inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageDetails {
    #[serde(flatten)]
    pub record: ImageRecord,
    pub config: ImageConfig,
}

/// Parsed configs kept at most (a few hundred bytes to a few KiB each).
const CONFIGS_KEPT: usize = 256;

/// Which file `index.json` is: replaced whole at every change, so another inode (or, on a
/// filesystem that reuses one at once, another change time or size) means another index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexStamp {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl IndexStamp {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        IndexStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    #[serde(default)]
    images: BTreeMap<String, ImageRecord>,
}

/// References and digests that running or stopped machines use; the daemon builds it from its
/// machine configs. Images named here are never removed.
#[derive(Debug, Clone, Default)]
pub struct InUse {
    names: HashSet<String>,
}

impl InUse {
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = HashSet::new();
        for n in names {
            let n = n.as_ref();
            set.insert(n.to_string());
            if let Ok(r) = Reference::parse(n) {
                set.insert(r.to_string());
                if let Some(d) = &r.digest {
                    set.insert(d.clone());
                }
            }
        }
        InUse { names: set }
    }

    /// The first name under which `rec` is in use, if any.
    fn user_of(&self, rec: &ImageRecord) -> Option<String> {
        let d = rec.manifest_digest.to_string();
        if self.names.contains(&d) {
            return Some(d);
        }
        rec.references
            .iter()
            .find(|r| self.names.contains(*r))
            .cloned()
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RemoveReport {
    /// References removed from the image.
    pub untagged: Vec<String>,
    /// Set when the image itself was deleted (its last reference went, or it was named by digest).
    pub deleted: Option<Digest>,
    pub gc: GcReport,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct GcReport {
    pub images_removed: Vec<Digest>,
    pub blobs_removed: u64,
    pub layers_removed: u64,
    pub bytes_freed: u64,
}

pub struct ImageStore {
    root: PathBuf,
    index_lock: Mutex<()>,
    /// The index as last read, with the file's identity then: a start resolves its images
    /// three times, and reading and parsing the file each time cost more than a `stat`.
    index_cache: Mutex<Option<(IndexStamp, Arc<IndexFile>)>>,
    /// Parsed image configs by digest (a blob's content never changes).
    configs: Mutex<HashMap<Digest, ImageConfig>>,
    /// Blobs/layers an operation in progress relies on, so a concurrent GC keeps them.
    pins: Arc<Mutex<HashMap<Digest, usize>>>,
    limits: Limits,
}

/// Keeps digests out of GC until dropped.
pub struct Pin {
    pins: Arc<Mutex<HashMap<Digest, usize>>>,
    digests: Vec<Digest>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut p = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.digests {
            if let Some(n) = p.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    p.remove(d);
                }
            }
        }
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`. The root is 0700: layers hold files
    /// owned by real uid 0 (setuid binaries included) that host users must not reach.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in [
            root.clone(),
            root.join("blobs/sha256"),
            root.join("layers/empty"),
            root.join("tmp"),
        ] {
            fs::create_dir_all(&d).map_err(Error::io("create store dir", &d))?;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(Error::io("chmod store root", &root))?;
        Ok(ImageStore {
            root,
            index_lock: Mutex::new(()),
            index_cache: Mutex::default(),
            configs: Mutex::default(),
            pins: Arc::default(),
            limits: Limits::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn empty_layer_path(&self) -> PathBuf {
        self.root.join("layers/empty")
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    pub fn pin(&self, digests: impl IntoIterator<Item = Digest>) -> Pin {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut p = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        for d in &digests {
            *p.entry(d.clone()).or_default() += 1;
        }
        Pin {
            pins: self.pins.clone(),
            digests,
        }
    }

    fn pinned(&self) -> HashSet<Digest> {
        self.pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn tmp_path(&self, kind: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{kind}-{:016x}", rand::random::<u64>()))
    }

    /// Starts writing a blob; see [`BlobWriter::commit`].
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let path = self.tmp_path("blob");
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io("create temp blob", &path))?;
        Ok(BlobWriter {
            inner: Some(HashingWriter::new(file)),
            path,
            blobs: self.root.join("blobs/sha256"),
        })
    }

    /// Stores everything `reader` yields as the blob `expected` (verified; nothing kept on a
    /// mismatch). A blob already present is not rewritten.
    pub fn put_blob(
        &self,
        expected: &Digest,
        size: Option<u64>,
        reader: impl Read,
        what: &str,
    ) -> Result<PathBuf> {
        if self.has_blob(expected) {
            return Ok(self.blob_path(expected));
        }
        let mut w = self.blob_writer()?;
        let mut reader = reader;
        io::copy(&mut reader, &mut w).map_err(Error::io("write blob", &w.path))?;
        w.commit(expected, size, what)
    }

    /// Stores `bytes` under their own digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        self.put_blob(&d, Some(bytes.len() as u64), bytes, "blob")?;
        Ok(d)
    }

    /// Reads a small JSON blob (manifest, config) and checks it against its digest again.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(Error::io("open blob", &p))?;
        let mut buf = Vec::new();
        f.take(MAX_DOCUMENT + 1)
            .read_to_end(&mut buf)
            .map_err(Error::io("read blob", &p))?;
        if buf.len() as u64 > MAX_DOCUMENT {
            return Err(Error::format(d.to_string(), "document too large"));
        }
        d.verify(&Digest::of(&buf), &format!("stored blob {}", p.display()))?;
        Ok(buf)
    }

    /// Unpacks the layer blob `blob` into `layers/<diff_id>` unless already there. The
    /// uncompressed stream must hash to `diff_id`; a hostile or corrupt layer leaves nothing.
    pub fn ensure_layer(
        &self,
        blob: &Digest,
        diff_id: &Digest,
        compression: Option<Compression>,
    ) -> Result<PathBuf> {
        let dest = self.layer_path(diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let src = self.blob_path(blob);
        let file = File::open(&src).map_err(Error::io("open layer blob", &src))?;
        let tmp = self.tmp_path("layer");
        fs::create_dir(&tmp).map_err(Error::io("create temp layer dir", &tmp))?;
        let result = (|| {
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let compression = match compression {
                Some(c) => c,
                None => Compression::sniff(
                    reader
                        .fill_buf()
                        .map_err(Error::io("read layer blob", &src))?,
                ),
            };
            let started = std::time::Instant::now();
            let what = format!("layer {blob}");
            let decoded: Box<dyn Read> = match compression {
                Compression::None => Box::new(reader),
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(reader)
                        .map_err(Error::io("zstd", &src))?,
                ),
            };
            let mut hashing = HashingReader::new(decoded);
            let stats = unpack::unpack(&mut hashing, &tmp, &what, &self.limits)?;
            // Whatever follows the tar end (padding) is part of the diff id too.
            let (actual, _, _) = hashing.finish().map_err(|e| Error::Layer {
                layer: what.clone(),
                source: Box::new(Error::io("decompress layer", &src)(e)),
            })?;
            diff_id.verify(&actual, &format!("uncompressed {what} (diff id)"))?;
            tracing::debug!(layer = %blob, entries = stats.entries, bytes = stats.bytes, elapsed = ?started.elapsed(), "unpacked layer");
            Ok(())
        })();
        if let Err(e) = result {
            remove_tree(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &dest) {
            Ok(()) => {}
            // Another unpack of the same layer won the race: theirs is as good as ours.
            Err(_) if dest.is_dir() => remove_tree(&tmp),
            Err(e) => {
                remove_tree(&tmp);
                return Err(Error::io("move layer into place", &dest)(e));
            }
        }
        sync_dir(&self.root.join("layers"));
        Ok(dest)
    }

    fn with_index<T>(&self, f: impl FnOnce(&mut IndexFile) -> Result<(T, bool)>) -> Result<T> {
        let _g = self.index_lock.lock().unwrap_or_else(|e| e.into_inner());
        let lock_path = self.root.join("index.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("open index lock", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io("lock index", &lock_path)(e.into()))?;
        let mut index = self.load_index()?;
        let (out, dirty) = f(&mut index)?;
        if dirty {
            let path = self.root.join("index.json");
            let bytes = serde_json::to_vec_pretty(&index).map_err(Error::json("image index"))?;
            write_atomic(&path, &bytes)?;
        }
        Ok(out)
    }

    fn load_index(&self) -> Result<IndexFile> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(Error::json(format!("image index {}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(Error::io("read image index", &path)(e)),
        }
    }

    /// Records an image whose manifest, config and layers are all in the store, optionally
    /// under `reference` (moved from any image that had it, as `docker tag` does).
    pub fn record_image(
        &self,
        manifest_digest: &Digest,
        reference: Option<&Reference>,
    ) -> Result<ImageRecord> {
        let mbytes = self.read_blob(manifest_digest)?;
        let manifest: Manifest = serde_json::from_slice(&mbytes)
            .map_err(Error::json(format!("manifest {manifest_digest}")))?;
        let config = ImageConfig::parse(
            &self.read_blob(&manifest.config.digest)?,
            &format!("config {}", manifest.config.digest),
        )?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(Error::format(
                format!("image {manifest_digest}"),
                format!(
                    "{} layers but {} diff ids",
                    manifest.layers.len(),
                    config.diff_ids.len()
                ),
            ));
        }
        let layers: Vec<LayerRecord> = manifest
            .layers
            .iter()
            .zip(&config.diff_ids)
            .map(|(l, d)| LayerRecord {
                digest: l.digest.clone(),
                diff_id: d.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect();
        for l in &layers {
            if !self.has_layer(&l.diff_id) {
                return Err(Error::format(
                    format!("image {manifest_digest}"),
                    format!("layer {} is not unpacked", l.diff_id),
                ));
            }
        }
        let name = reference.map(|r| r.to_string());
        self.with_index(|idx| {
            if let Some(n) = &name {
                for rec in idx.images.values_mut() {
                    rec.references.retain(|r| r != n);
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let rec = idx
                .images
                .entry(manifest_digest.to_string())
                .or_insert_with(|| ImageRecord {
                    manifest_digest: manifest_digest.clone(),
                    config_digest: manifest.config.digest.clone(),
                    size: layers.iter().map(|l| l.size).sum(),
                    layers: layers.clone(),
                    references: Vec::new(),
                    stored_at: now,
                    os: config.os.clone(),
                    architecture: config.architecture.clone(),
                });
            if let Some(n) = &name {
                rec.references.push(n.clone());
                rec.references.sort();
            }
            Ok((rec.clone(), true))
        })
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let _g = self.index_lock.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.load_index()?.images.into_values().collect())
    }

    /// Finds an image by manifest digest (`sha256:…`, bare hex or a unique hex prefix of at
    /// least 12 characters) or by reference (normalised as Docker does).
    pub fn resolve(&self, name: &str) -> Result<ImageRecord> {
        let idx = self.cached_index()?;
        find(&idx, name)
            .cloned()
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    /// The index, read again only when `index.json` is another file than last time (it is
    /// replaced whole, by this process or another, never written in place).
    fn cached_index(&self) -> Result<Arc<IndexFile>> {
        let path = self.root.join("index.json");
        // Taken before the read: a file replaced in between is newer than its stamp, and read
        // again next time.
        let stamp = match fs::metadata(&path) {
            Ok(meta) => Some(IndexStamp::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("stat image index", &path)(e)),
        };
        if let Some(stamp) = stamp {
            let cache = self.index_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, index)) = cache.as_ref().filter(|(s, _)| *s == stamp) {
                return Ok(index.clone());
            }
        }
        let index = {
            let _g = self.index_lock.lock().unwrap_or_else(|e| e.into_inner());
            Arc::new(self.load_index()?)
        };
        if let Some(stamp) = stamp {
            *self.index_cache.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((stamp, index.clone()));
        }
        Ok(index)
    }

    pub fn inspect(&self, name: &str) -> Result<ImageDetails> {
        let record = self.resolve(name)?;
        let cached = self
            .configs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&record.config_digest)
            .cloned();
        let config = match cached {
            Some(config) => config,
            None => {
                let config = ImageConfig::parse(
                    &self.read_blob(&record.config_digest)?,
                    &format!("config {}", record.config_digest),
                )?;
                let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
                if configs.len() >= CONFIGS_KEPT {
                    configs.clear();
                }
                configs.insert(record.config_digest.clone(), config.clone());
                config
            }
        };
        Ok(ImageDetails { record, config })
    }

    /// The unpacked layer directories of an image, top layer first (overlay's lowerdir order).
    pub fn layer_dirs(&self, manifest_digest: &Digest) -> Result<Vec<PathBuf>> {
        let rec = self.resolve(&manifest_digest.to_string())?;
        let dirs: Vec<PathBuf> = rec
            .layers
            .iter()
            .rev()
            .map(|l| self.layer_path(&l.diff_id))
            .collect();
        if dirs.is_empty() {
            return Ok(vec![self.empty_layer_path()]);
        }
        Ok(dirs)
    }

    /// `docker rmi`: removing a reference untags it; the image goes with its last reference,
    /// or at once when named by digest. Refused while any machine uses the image. Blobs and
    /// layers nobody needs any more are collected.
    pub fn remove(&self, name: &str, in_use: &InUse) -> Result<RemoveReport> {
        let by_ref = Reference::parse(name)
            .ok()
            .filter(|r| r.digest.is_none() && !looks_like_digest(name))
            .map(|r| r.to_string());
        let mut report = self.with_index(|idx| {
            let rec = find(idx, name)
                .cloned()
                .ok_or_else(|| Error::NotFound(name.to_string()))?;
            let key = rec.manifest_digest.to_string();
            let mut report = RemoveReport::default();
            if let Some(r) = &by_ref {
                if rec.references.len() > 1 {
                    if in_use.names.contains(r) {
                        return Err(Error::InUse {
                            image: r.clone(),
                            users: vec![r.clone()],
                        });
                    }
                    if let Some(e) = idx.images.get_mut(&key) {
                        e.references.retain(|x| x != r);
                    }
                    report.untagged.push(r.clone());
                    return Ok((report, true));
                }
            }
            if let Some(user) = in_use.user_of(&rec) {
                return Err(Error::InUse {
                    image: name.to_string(),
                    users: vec![user],
                });
            }
            idx.images.remove(&key);
            report.untagged = rec.references.clone();
            report.deleted = Some(rec.manifest_digest.clone());
            Ok((report, true))
        })?;
        if report.deleted.is_some() {
            report.gc = self.gc()?;
        }
        Ok(report)
    }

    /// Removes images not in use: with `all`, every such image; otherwise only dangling ones
    /// (no reference left). Then collects unreferenced blobs, layers and stale temp files.
    pub fn prune(&self, in_use: &InUse, all: bool) -> Result<GcReport> {
        let removed = self.with_index(|idx| {
            let doomed: Vec<String> = idx
                .images
                .iter()
                .filter(|(_, r)| (all || r.references.is_empty()) && in_use.user_of(r).is_none())
                .map(|(k, _)| k.clone())
                .collect();
            let removed: Vec<Digest> = doomed
                .iter()
                .filter_map(|k| idx.images.remove(k).map(|r| r.manifest_digest))
                .collect();
            let dirty = !removed.is_empty();
            Ok((removed, dirty))
        })?;
        let mut report = self.gc()?;
        report.images_removed = removed;
        Ok(report)
    }

    /// Deletes blobs and layer dirs no recorded image references, except pinned ones (an
    /// operation in progress), and temp files when no operation is in progress.
    pub fn gc(&self) -> Result<GcReport> {
        let _g = self.index_lock.lock().unwrap_or_else(|e| e.into_inner());
        let idx = self.load_index()?;
        let mut keep_blobs: BTreeSet<String> = BTreeSet::new();
        let mut keep_layers: BTreeSet<String> = BTreeSet::new();
        for r in idx.images.values() {
            keep_blobs.insert(r.manifest_digest.hex().to_string());
            keep_blobs.insert(r.config_digest.hex().to_string());
            for l in &r.layers {
                keep_blobs.insert(l.digest.hex().to_string());
                keep_layers.insert(l.diff_id.hex().to_string());
            }
        }
        let pinned = self.pinned();
        for d in &pinned {
            keep_blobs.insert(d.hex().to_string());
            keep_layers.insert(d.hex().to_string());
        }
        keep_layers.insert("empty".into());
        let mut report = GcReport::default();
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(Error::io("list blobs", &blobs))? {
            let e = e.map_err(Error::io("list blobs", &blobs))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) {
                report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(Error::io("remove blob", e.path()))?;
                report.blobs_removed += 1;
            }
        }
        let layers = self.root.join("layers");
        for e in fs::read_dir(&layers).map_err(Error::io("list layers", &layers))? {
            let e = e.map_err(Error::io("list layers", &layers))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_layers.contains(&name) {
                // Rename first so a half-removed tree never looks like a complete layer.
                let doomed = self.tmp_path("gc");
                fs::rename(e.path(), &doomed).map_err(Error::io("remove layer", e.path()))?;
                remove_tree(&doomed);
                report.layers_removed += 1;
            }
        }
        if pinned.is_empty() {
            let tmp = self.root.join("tmp");
            for e in fs::read_dir(&tmp)
                .map_err(Error::io("list temp dir", &tmp))?
                .flatten()
            {
                remove_tree(&e.path());
            }
        }
        Ok(report)
    }
}

fn looks_like_digest(name: &str) -> bool {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    hex.len() >= 12
        && hex.len() <= 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn find<'a>(idx: &'a IndexFile, name: &str) -> Option<&'a ImageRecord> {
    if looks_like_digest(name) {
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let mut hits = idx
            .images
            .values()
            .filter(|r| r.manifest_digest.hex().starts_with(hex));
        if let (Some(r), None) = (hits.next(), hits.next()) {
            return Some(r);
        }
        if name.starts_with("sha256:") {
            return None;
        }
    }
    let r = Reference::parse(name).ok()?;
    if let Some(d) = &r.digest {
        return idx.images.get(d);
    }
    let n = r.to_string();
    idx.images.values().find(|rec| rec.references.contains(&n))
}

/// A blob being written to `tmp/`; dropped without `commit`, it is deleted.
pub struct BlobWriter {
    inner: Option<HashingWriter<File>>,
    path: PathBuf,
    blobs: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("blob writer already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter {
    /// Digest and size of what was written so far (for blobs that name themselves).
    pub fn digest_so_far(&self) -> (Digest, u64) {
        match &self.inner {
            Some(w) => w.peek(),
            None => (Digest::of(b""), 0),
        }
    }

    /// Verifies digest (and size, if known), fsyncs and renames into `blobs/`.
    pub fn commit(mut self, expected: &Digest, size: Option<u64>, what: &str) -> Result<PathBuf> {
        let w = self
            .inner
            .take()
            .ok_or_else(|| Error::format(what, "blob writer reused"))?;
        let (actual, n, file) = w.finish();
        let check = (|| {
            expected.verify(&actual, what)?;
            if let Some(s) = size {
                if s != n {
                    return Err(Error::SizeMismatch {
                        what: what.to_string(),
                        expected: s,
                        actual: n,
                    });
                }
            }
            file.sync_all()
                .map_err(Error::io("sync blob", &self.path))?;
            Ok(())
        })();
        drop(file);
        if let Err(e) = check {
            let _ = fs::remove_file(&self.path);
            return Err(e);
        }
        let dest = self.blobs.join(expected.hex());
        fs::rename(&self.path, &dest).map_err(Error::io("move blob into place", &dest))?;
        Ok(dest)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", path)(e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Best-effort removal of a temp tree we created (never follows symlinks).
pub(crate) fn remove_tree(p: &Path) {
    let res = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(_) => Ok(()),
    };
    if let Err(e) = res {
        tracing::warn!(path = %p.display(), "cannot remove temp data: {e}");
    }
}
