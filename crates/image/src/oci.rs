//! The OCI / Docker schema 2 documents we read: manifests, indexes (manifest lists) and
//! descriptors. Written here rather than taken from `oci-spec` because we need to accept both
//! media type families leniently and keep unknown fields out of the way; these few structs are
//! all the protocol needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Foreign layers (Windows base images); never used by linux images, refused.
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// What the registry `Accept` header asks for.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest/index/config we read into memory: real ones are a few KiB.
pub const MAX_DOCUMENT: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// Layer compression, from the media type (or sniffed, for archives that do not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(mt: &str) -> Result<Self> {
        match mt {
            OCI_LAYER_TAR | DOCKER_LAYER_TAR => Ok(Compression::None),
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
            OCI_LAYER_ZSTD => Ok(Compression::Zstd),
            // Non-distributable variants are the same bytes.
            "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
            other => Err(Error::UnsupportedMediaType {
                what: "layer".into(),
                media_type: other.into(),
            }),
        }
    }

    /// Looks at the first bytes: docker save archives and some OCI layouts do not say.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A manifest-ish document as fetched: either one image or an index to choose from.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

impl Document {
    /// Parses by media type (header or the document's own field), falling back to shape:
    /// some registries serve `application/json`.
    pub fn parse(bytes: &[u8], content_type: Option<&str>, what: &str) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            media_type: Option<String>,
            #[serde(default)]
            manifests: Option<serde_json::Value>,
            #[serde(default)]
            schema_version: Option<u32>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(Error::json(what))?;
        if probe.schema_version == Some(1) {
            return Err(Error::UnsupportedMediaType {
                what: what.into(),
                media_type: "docker schema 1 manifest".into(),
            });
        }
        let mt = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .filter(|c| c.starts_with("application/vnd."))
            .or(probe.media_type);
        let is_index = match mt.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) if other.starts_with("application/vnd.") => {
                return Err(Error::UnsupportedMediaType {
                    what: what.into(),
                    media_type: other.into(),
                })
            }
            _ => probe.manifests.is_some(),
        };
        if is_index {
            Ok(Document::Index(
                serde_json::from_slice(bytes).map_err(Error::json(what))?,
            ))
        } else {
            Ok(Document::Manifest(
                serde_json::from_slice(bytes).map_err(Error::json(what))?,
            ))
        }
    }
}

impl Index {
    /// The entry for `want`, or an error listing what the index has.
    pub fn select(&self, want: &Platform, reference: &str) -> Result<&Descriptor> {
        self.manifests
            .iter()
            .filter(|d| d.media_type != OCI_INDEX && d.media_type != DOCKER_LIST)
            .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
            .ok_or_else(|| Error::NoMatchingPlatform {
                reference: reference.to_string(),
                wanted: want.to_string(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                    .collect(),
            })
    }
}

impl Manifest {
    /// Checks the layer media types up front, so a pull fails before downloading anything.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.schema_version != 2 {
            return Err(Error::format(what, "schemaVersion must be 2"));
        }
        for l in &self.layers {
            if l.media_type == DOCKER_LAYER_FOREIGN {
                return Err(Error::UnsupportedMediaType {
                    what: format!("{what} layer {}", l.digest),
                    media_type: l.media_type.clone(),
                });
            }
            Compression::from_media_type(&l.media_type)?;
        }
        Ok(())
    }
}
