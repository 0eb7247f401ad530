//! Pulling an image into the store: resolve the manifest (choosing the host platform from an
//! index), fetch the config, then download missing layers concurrently, each verified into
//! `tmp/` and renamed into place, and unpacked on a blocking thread as soon as it is complete.

use std::io::Write;
use std::sync::Arc;

use futures_util::stream::{self, TryStreamExt};

use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{Compression, Document, Manifest};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::{RegistryOptions, RepoClient};
use crate::store::{ImageRecord, ImageStore};

/// Progress of a pull, for the CLI's bars. `done`/`total` are compressed bytes of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Resolved {
        manifest_digest: Digest,
        layers: Vec<(Digest, u64)>,
    },
    /// The layer was already in the store.
    LayerCached {
        digest: Digest,
        total: u64,
    },
    LayerBytes {
        digest: Digest,
        done: u64,
        total: u64,
    },
    LayerVerified {
        digest: Digest,
    },
    LayerUnpacked {
        digest: Digest,
    },
    Done {
        manifest_digest: Digest,
    },
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

#[derive(Clone)]
pub struct PullOptions {
    /// `false`: images come only from the store (`--pull never`, for hosts kept off registries).
    pub allowed: bool,
    pub registry: RegistryOptions,
    pub platform: Platform,
    /// Layers downloaded at once.
    pub concurrency: usize,
    pub progress: Option<ProgressFn>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            allowed: true,
            registry: RegistryOptions::default(),
            platform: Platform::host(),
            concurrency: 3,
            progress: None,
        }
    }
}

/// Pulls `reference` into `store` and records it under that reference.
pub async fn pull(
    store: &Arc<ImageStore>,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<ImageRecord> {
    let report = |p: Progress| {
        if let Some(f) = &opts.progress {
            f(p)
        }
    };
    if !opts.allowed {
        return Err(Error::PullsOff(reference.to_string()));
    }
    let client = Arc::new(RepoClient::new(reference, &opts.registry)?);
    let first = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (mut mdigest, mut mbytes, mut doc) = client.manifest(&first).await?;
    for _ in 0..4 {
        let Document::Index(index) = &doc else { break };
        let d = index
            .select(&opts.platform, &reference.to_string())?
            .digest
            .clone();
        (mdigest, mbytes, doc) = client.manifest(&d.to_string()).await?;
    }
    let Document::Manifest(manifest) = doc else {
        return Err(Error::format(
            reference.to_string(),
            "indexes nested too deeply",
        ));
    };
    manifest.validate(&format!("manifest {mdigest}"))?;
    let mut pins = vec![mdigest.clone(), manifest.config.digest.clone()];
    pins.extend(manifest.layers.iter().map(|l| l.digest.clone()));
    let _pin = store.pin(pins);
    report(Progress::Resolved {
        manifest_digest: mdigest.clone(),
        layers: manifest
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect(),
    });

    let config_bytes = if store.has_blob(&manifest.config.digest) {
        store.read_blob(&manifest.config.digest)?
    } else {
        let b = client.blob_bytes(&manifest.config.digest).await?;
        store.put_blob(
            &manifest.config.digest,
            Some(manifest.config.size),
            b.as_slice(),
            "config",
        )?;
        b
    };
    let config = ImageConfig::parse(&config_bytes, &format!("config {}", manifest.config.digest))?;
    if config.diff_ids.len() != manifest.layers.len() {
        return Err(Error::format(
            format!("image {reference}"),
            format!(
                "{} layers but {} diff ids",
                manifest.layers.len(),
                config.diff_ids.len()
            ),
        ));
    }
    let _pin_layers = store.pin(config.diff_ids.iter().cloned());

    let jobs = manifest
        .layers
        .iter()
        .cloned()
        .zip(config.diff_ids.iter().cloned());
    stream::iter(jobs.map(Ok))
        .try_for_each_concurrent(opts.concurrency.max(1), |(layer, diff_id)| {
            let client = client.clone();
            let store = store.clone();
            let progress = opts.progress.clone();
            async move { fetch_layer(&client, &store, &layer, &diff_id, progress).await }
        })
        .await?;

    store.put_blob(&mdigest, None, mbytes.as_slice(), "manifest")?;
    let store2 = store.clone();
    let (md, r) = (mdigest.clone(), reference.clone());
    let rec = tokio::task::spawn_blocking(move || store2.record_image(&md, Some(&r)))
        .await
        .map_err(|e| Error::format("pull", format!("record task failed: {e}")))??;
    report(Progress::Done {
        manifest_digest: mdigest,
    });
    Ok(rec)
}

async fn fetch_layer(
    client: &RepoClient,
    store: &Arc<ImageStore>,
    layer: &crate::oci::Descriptor,
    diff_id: &Digest,
    progress: Option<crate::pull::ProgressFn>,
) -> Result<()> {
    let report = |p: Progress| {
        if let Some(f) = &progress {
            f(p)
        }
    };
    if store.has_layer(diff_id) {
        report(Progress::LayerCached {
            digest: layer.digest.clone(),
            total: layer.size,
        });
        return Ok(());
    }
    if !store.has_blob(&layer.digest) {
        let mut w = store.blob_writer()?;
        let mut done = 0u64;
        let total = layer.size;
        // Writes to the page cache are quick enough to make from the async task; the CPU-heavy
        // part (decompress + unpack) runs on a blocking thread below.
        client
            .blob_stream(&layer.digest, |chunk| {
                done += chunk.len() as u64;
                if done > total {
                    return Err(Error::SizeMismatch {
                        what: format!("layer {}", layer.digest),
                        expected: total,
                        actual: done,
                    });
                }
                w.write_all(chunk)
                    .map_err(Error::io("write blob", store.root().join("tmp")))?;
                report(Progress::LayerBytes {
                    digest: layer.digest.clone(),
                    done,
                    total,
                });
                Ok(())
            })
            .await?;
        w.commit(
            &layer.digest,
            Some(total),
            &format!("layer {}", layer.digest),
        )?;
        report(Progress::LayerVerified {
            digest: layer.digest.clone(),
        });
    } else {
        report(Progress::LayerCached {
            digest: layer.digest.clone(),
            total: layer.size,
        });
    }
    let compression = Compression::from_media_type(&layer.media_type)?;
    let (s, d, id) = (store.clone(), layer.digest.clone(), diff_id.clone());
    tokio::task::spawn_blocking(move || s.ensure_layer(&d, &id, Some(compression)))
        .await
        .map_err(|e| Error::format("pull", format!("unpack task failed: {e}")))??;
    report(Progress::LayerUnpacked {
        digest: layer.digest.clone(),
    });
    Ok(())
}

/// Parses a manifest from store bytes (helper for callers that hold a digest).
pub fn stored_manifest(store: &ImageStore, digest: &Digest) -> Result<Manifest> {
    serde_json::from_slice(&store.read_blob(digest)?)
        .map_err(Error::json(format!("manifest {digest}")))
}
