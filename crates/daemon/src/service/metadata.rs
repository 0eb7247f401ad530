//! Machine metadata edits (no new version).

use super::*;

impl Hangar {
    /// Applies metadata changes (`None` deletes) without creating a new version.
    pub async fn update_metadata(
        &self,
        app: &str,
        id: &str,
        changes: BTreeMap<String, Option<String>>,
        machine_version: Option<&str>,
        nonce: Option<&str>,
    ) -> ServiceResult<()> {
        for key in changes.keys() {
            check_metadata_key(key)?;
        }
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        if let Some(v) = machine_version.filter(|v| !v.is_empty()) {
            if v != m.instance_id {
                return Err(ServiceError::Precondition(format!(
                    "machine_version {v} is stale; the current version is {}",
                    m.instance_id
                )));
            }
        }
        let metadata = m.config.metadata.get_or_insert_with(BTreeMap::new);
        for (k, v) in changes {
            match v.filter(|v| !v.is_empty()) {
                Some(v) => {
                    metadata.insert(k, v);
                }
                None => {
                    metadata.remove(&k);
                }
            }
        }
        m.updated_at = now_ms();
        self.save(&mut m, false, None, Some(nonce)).await
    }

    // ---- leases -----------------------------------------------------------------------------
}
