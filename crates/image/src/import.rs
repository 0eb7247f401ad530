//! Imports for air-gapped hosts: `docker save` archives (legacy `<id>/layer.tar` layout and the
//! OCI-in-docker-save layout of Docker 25+), OCI archives (a tar of an OCI layout) and OCI
//! layout directories. Archives are read in one streaming pass: every blob goes straight into
//! the store through the same verified temp-file path as a pull, so a corrupt archive leaves
//! nothing behind. These functions block; the daemon runs them on a blocking thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use serde::Deserialize;

use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, Compression, Descriptor, Document, Index, Manifest, MAX_DOCUMENT};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::store::{ImageRecord, ImageStore};

/// Annotation naming an image in an OCI layout (skopeo writes the tag here).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and Docker write with the full reference.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Record the imported image under this reference (the archive must hold one image).
    pub reference: Option<Reference>,
    /// In an OCI layout with several images, import only the one whose
    /// `org.opencontainers.image.ref.name` is this.
    pub select: Option<String>,
    /// Platform chosen from multi-platform indexes.
    pub platform: Platform,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            reference: None,
            select: None,
            platform: Platform::host(),
        }
    }
}

impl ImageStore {
    /// Imports an archive file (docker save or OCI archive, optionally gzip/zstd-compressed)
    /// or an OCI layout directory. Returns the images recorded.
    pub fn import(&self, path: &Path, opts: &ImportOptions) -> Result<Vec<ImageRecord>> {
        let meta = std::fs::metadata(path).map_err(Error::io("import", path))?;
        if meta.is_dir() {
            self.import_oci_dir(path, opts)
        } else {
            let f = File::open(path).map_err(Error::io("open archive", path))?;
            self.import_archive(f, &path.display().to_string(), opts)
        }
    }

    /// Imports an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`).
    pub fn import_oci_dir(&self, dir: &Path, opts: &ImportOptions) -> Result<Vec<ImageRecord>> {
        let layout = dir.join("oci-layout");
        if !layout.is_file() {
            return Err(Error::format(
                dir.display().to_string(),
                "not an OCI layout (no oci-layout file)",
            ));
        }
        let index_path = dir.join("index.json");
        let index = read_small(&index_path)?;
        let fetch = |d: &Descriptor| -> Result<()> {
            let p = dir.join("blobs/sha256").join(d.digest.hex());
            if self.has_blob(&d.digest) {
                return Ok(());
            }
            let f = File::open(&p).map_err(Error::io("open layout blob", &p))?;
            self.put_blob(
                &d.digest,
                Some(d.size),
                f,
                &format!("blob {} in {}", d.digest, dir.display()),
            )?;
            Ok(())
        };
        self.import_oci_index(&index, &dir.display().to_string(), opts, &fetch)
    }

    /// Imports a tar stream holding either a `docker save` archive or an OCI layout.
    pub fn import_archive(
        &self,
        reader: impl Read,
        what: &str,
        opts: &ImportOptions,
    ) -> Result<Vec<ImageRecord>> {
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let head = reader.fill_buf().map_err(Error::io("read archive", what))?;
        let decoded: Box<dyn Read> = match Compression::sniff(head) {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(reader)
                    .map_err(Error::io("zstd", what))?,
            ),
        };
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        // Archive path -> (digest, size) of the blob stored from it.
        let mut blobs: HashMap<String, (Digest, u64)> = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        let mut archive = tar::Archive::new(decoded);
        // The tar reader's messages quote the header bytes it could not parse; an archive's
        // content is never echoed into an error.
        let bad = |_: io::Error| {
            Error::format(
                what,
                "not a readable archive (a docker save or OCI archive, as tar, optionally gzip- \
                 or zstd-compressed; or it was cut short)",
            )
        };
        let mut pinned = Vec::new();
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    // docker save links identical layer.tar files between layer dirs.
                    if let Some(t) = entry.link_name_bytes() {
                        let t = String::from_utf8_lossy(&t).into_owned();
                        let target = if entry.header().entry_type() == tar::EntryType::Symlink {
                            let base = path.rsplit_once('/').map_or("", |(d, _)| d);
                            normalise(&format!("{base}/{t}"))
                        } else {
                            normalise(&t)
                        };
                        links.push((path, target));
                    }
                    continue;
                }
                _ => continue,
            }
            let name = path.rsplit('/').next().unwrap_or("");
            if matches!(
                path.as_str(),
                "manifest.json" | "index.json" | "oci-layout" | "repositories"
            ) || name == "json"
                || name == "VERSION"
            {
                if entry.size() > MAX_DOCUMENT {
                    return Err(Error::format(what, format!("{path} too large")));
                }
                let mut b = Vec::new();
                entry.read_to_end(&mut b).map_err(bad)?;
                files.insert(path, b);
                continue;
            }
            let mut w = self.blob_writer()?;
            io::copy(&mut entry, &mut w).map_err(bad)?;
            // Under blobs/sha256/<hex>, the name is the digest to verify; otherwise (legacy
            // layer.tar) the content names itself and the config's diff ids check it later.
            let claimed = path
                .strip_prefix("blobs/sha256/")
                .and_then(|h| Digest::parse(&format!("sha256:{h}")).ok());
            let (digest, size) = match claimed {
                Some(d) => {
                    let size = entry.size();
                    w.commit(&d, Some(size), &format!("{path} in {what}"))?;
                    (d, size)
                }
                None => {
                    let (d, n) = w.digest_so_far();
                    w.commit(&d, Some(n), &format!("{path} in {what}"))?;
                    (d, n)
                }
            };
            pinned.push(digest.clone());
            blobs.insert(path, (digest, size));
        }
        for (from, to) in links {
            if let Some(b) = blobs.get(&to).cloned() {
                blobs.insert(from, b);
            }
        }
        // Keep what we just stored from a concurrent GC until the images are recorded.
        let _pin = self.pin(pinned);
        if let Some(m) = files.get("manifest.json") {
            return self.import_docker_manifest(m, &blobs, what, opts);
        }
        if files.contains_key("oci-layout") {
            let index = files
                .get("index.json")
                .ok_or_else(|| Error::format(what, "OCI archive without index.json"))?;
            let fetch = |d: &Descriptor| -> Result<()> {
                if self.has_blob(&d.digest) {
                    Ok(())
                } else {
                    Err(Error::format(
                        what,
                        format!("blob {} missing from the archive", d.digest),
                    ))
                }
            };
            return self.import_oci_index(index, what, opts, &fetch);
        }
        Err(Error::format(
            what,
            "neither a docker save archive (manifest.json) nor an OCI archive (oci-layout)",
        ))
    }

    fn import_docker_manifest(
        &self,
        manifest_json: &[u8],
        blobs: &HashMap<String, (Digest, u64)>,
        what: &str,
        opts: &ImportOptions,
    ) -> Result<Vec<ImageRecord>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(manifest_json)
            .map_err(Error::json(format!("manifest.json in {what}")))?;
        if opts.reference.is_some() && entries.len() != 1 {
            return Err(Error::format(
                what,
                format!("holds {} images; a reference names only one", entries.len()),
            ));
        }
        let get = |p: &str| {
            blobs.get(&normalise(p)).cloned().ok_or_else(|| {
                Error::format(
                    what,
                    format!("{p} listed in manifest.json but not in the archive"),
                )
            })
        };
        let mut out = Vec::new();
        for e in entries {
            let (config_digest, config_size) = get(&e.config)?;
            let config_bytes = self.read_blob(&config_digest)?;
            let config =
                ImageConfig::parse(&config_bytes, &format!("config {} in {what}", e.config))?;
            if config.diff_ids.len() != e.layers.len() {
                return Err(Error::format(
                    what,
                    format!(
                        "{} layers but {} diff ids",
                        e.layers.len(),
                        config.diff_ids.len()
                    ),
                ));
            }
            let mut layers = Vec::new();
            for l in &e.layers {
                let (digest, size) = get(l)?;
                let mut head = [0u8; 4];
                let p = self.blob_path(&digest);
                let n = File::open(&p)
                    .and_then(|mut f| f.read(&mut head))
                    .map_err(Error::io("read layer", &p))?;
                let media_type = match Compression::sniff(&head[..n]) {
                    Compression::None => oci::OCI_LAYER_TAR,
                    Compression::Gzip => oci::OCI_LAYER_GZIP,
                    Compression::Zstd => oci::OCI_LAYER_ZSTD,
                };
                layers.push(Descriptor {
                    media_type: media_type.into(),
                    digest,
                    size,
                    platform: None,
                    annotations: None,
                });
            }
            // docker save has no manifest (legacy) or one we would have to find in the OCI
            // index; writing our own OCI manifest gives every image a manifest digest.
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(oci::OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: oci::OCI_CONFIG.into(),
                    digest: config_digest,
                    size: config_size,
                    platform: None,
                    annotations: None,
                },
                layers,
                annotations: None,
            };
            let bytes = serde_json::to_vec(&manifest).map_err(Error::json("manifest"))?;
            let mdigest = self.put_blob_bytes(&bytes)?;
            let _pin = self.pin([mdigest.clone()]);
            self.unpack_layers(&manifest, &config)?;
            let mut names: Vec<Reference> = match &opts.reference {
                Some(r) => vec![r.clone()],
                None => e
                    .repo_tags
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|t| Reference::parse(t).ok())
                    .collect(),
            };
            if names.is_empty() {
                out.push(self.record_image(&mdigest, None)?);
            }
            for (i, r) in names.drain(..).enumerate() {
                let rec = self.record_image(&mdigest, Some(&r))?;
                if i == 0 {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// Imports the images an OCI layout's `index.json` names; `fetch` makes a blob present.
    fn import_oci_index(
        &self,
        index_json: &[u8],
        what: &str,
        opts: &ImportOptions,
        fetch: &dyn Fn(&Descriptor) -> Result<()>,
    ) -> Result<Vec<ImageRecord>> {
        let index: Index = serde_json::from_slice(index_json)
            .map_err(Error::json(format!("index.json in {what}")))?;
        let ann = |d: &Descriptor, k: &str| d.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        let chosen: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| {
                opts.select
                    .as_ref()
                    .is_none_or(|s| ann(d, REF_NAME).as_ref() == Some(s))
            })
            .collect();
        if chosen.is_empty() {
            return Err(Error::NotFound(format!(
                "{} in {what}",
                opts.select.as_deref().unwrap_or("any image")
            )));
        }
        if opts.reference.is_some() && chosen.len() != 1 {
            return Err(Error::format(
                what,
                format!("holds {} images; pick one with a ref name", chosen.len()),
            ));
        }
        let mut out = Vec::new();
        for d in chosen {
            let name = match &opts.reference {
                Some(r) => Some(r.clone()),
                None => ann(d, CONTAINERD_NAME)
                    .or_else(|| ann(d, REF_NAME).filter(|n| n.contains('/')))
                    .and_then(|n| Reference::parse(&n).ok()),
            };
            let manifest_desc = self.resolve_platform(d, what, opts, fetch)?;
            out.push(self.install_manifest(&manifest_desc, name.as_ref(), fetch)?);
        }
        Ok(out)
    }

    /// Follows nested indexes down to the manifest for the wanted platform.
    fn resolve_platform(
        &self,
        d: &Descriptor,
        what: &str,
        opts: &ImportOptions,
        fetch: &dyn Fn(&Descriptor) -> Result<()>,
    ) -> Result<Descriptor> {
        let mut cur = d.clone();
        for _ in 0..4 {
            fetch(&cur)?;
            let bytes = self.read_blob(&cur.digest)?;
            match Document::parse(
                &bytes,
                Some(&cur.media_type),
                &format!("manifest {} in {what}", cur.digest),
            )? {
                Document::Manifest(_) => return Ok(cur),
                Document::Index(i) => cur = i.select(&opts.platform, what)?.clone(),
            }
        }
        Err(Error::format(what, "indexes nested too deeply"))
    }

    fn install_manifest(
        &self,
        d: &Descriptor,
        name: Option<&Reference>,
        fetch: &dyn Fn(&Descriptor) -> Result<()>,
    ) -> Result<ImageRecord> {
        let bytes = self.read_blob(&d.digest)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(Error::json(format!("manifest {}", d.digest)))?;
        manifest.validate(&format!("manifest {}", d.digest))?;
        let mut pins = vec![d.digest.clone(), manifest.config.digest.clone()];
        pins.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        let _pin = self.pin(pins);
        fetch(&manifest.config)?;
        let config = ImageConfig::parse(
            &self.read_blob(&manifest.config.digest)?,
            &format!("config {}", manifest.config.digest),
        )?;
        for l in &manifest.layers {
            fetch(l)?;
        }
        self.unpack_layers(&manifest, &config)?;
        self.record_image(&d.digest, name)
    }

    /// Unpacks every layer of an image whose blobs are all present.
    pub(crate) fn unpack_layers(&self, manifest: &Manifest, config: &ImageConfig) -> Result<()> {
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(Error::format(
                format!("config {}", manifest.config.digest),
                format!(
                    "{} layers but {} diff ids",
                    manifest.layers.len(),
                    config.diff_ids.len()
                ),
            ));
        }
        let _pin = self.pin(config.diff_ids.iter().cloned());
        for (l, diff_id) in manifest.layers.iter().zip(&config.diff_ids) {
            self.ensure_layer(
                &l.digest,
                diff_id,
                Compression::from_media_type(&l.media_type).ok(),
            )?;
        }
        Ok(())
    }
}

fn read_small(p: &Path) -> Result<Vec<u8>> {
    let f = File::open(p).map_err(Error::io("open", p))?;
    let mut b = Vec::new();
    f.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut b)
        .map_err(Error::io("read", p))?;
    if b.len() as u64 > MAX_DOCUMENT {
        return Err(Error::format(p.display().to_string(), "too large"));
    }
    Ok(b)
}

/// Archive paths as keys: no `./`, no leading or doubled `/`, `..` folded.
fn normalise(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}
