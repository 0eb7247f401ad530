//! Export of a stored image as an OCI archive (an OCI image layout in a tar), the format
//! `skopeo`, `buildah` and `podman` read: what a build needs to start `FROM` an image that is
//! in Hangar's store but in no registry it can reach.

use std::io::Write;

use crate::oci::Manifest;
use crate::store::ImageStore;
use crate::{Digest, Error, Result};

/// The media type of an OCI manifest, for manifests that do not say theirs.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

impl ImageStore {
    /// Writes image `name` (a reference or digest) to `out` as an OCI archive whose index names
    /// it `ref_name` (what `oci-archive:PATH:REF` selects). Blobs were verified when they were
    /// stored; they are copied as they are.
    pub fn export_oci_archive(&self, name: &str, ref_name: &str, out: impl Write) -> Result<()> {
        let record = self.resolve(name)?;
        let manifest_bytes = self.read_blob(&record.manifest_digest)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(Error::json(format!("manifest {}", record.manifest_digest)))?;
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let mut blobs: Vec<Digest> = vec![
            record.manifest_digest.clone(),
            manifest.config.digest.clone(),
        ];
        blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        for d in &blobs {
            if !self.has_blob(d) {
                return Err(Error::format(
                    name.to_string(),
                    format!("blob {d} is not in the store, so the image cannot be exported"),
                ));
            }
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": media_type,
                "digest": record.manifest_digest.to_string(),
                "size": manifest_bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }],
        });
        let mut tar = tar::Builder::new(out);
        let io = |what: &'static str| Error::io(what, "the exported archive");
        let mut add = |path: &str, bytes: &[u8]| -> Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, bytes)
                .map_err(io("write the archive"))
        };
        add("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#)?;
        add(
            "index.json",
            &serde_json::to_vec(&index).unwrap_or_default(),
        )?;
        for d in &blobs {
            let path = format!("blobs/sha256/{}", d.hex());
            let file = self.blob_path(d);
            let mut f = std::fs::File::open(&file).map_err(Error::io("open blob", &file))?;
            tar.append_file(&path, &mut f)
                .map_err(io("write the archive"))?;
        }
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(io("finish the archive"))?;
        Ok(())
    }
}
