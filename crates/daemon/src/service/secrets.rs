//! App secrets (reference 1.7, milestone 2 §4): sealed under the daemon's key before they reach
//! the store, opened only to boot a machine (or for a `show_secrets` read where allowed), and
//! checked against the configs that name them.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use hangar_secrets::SecretsKey;
use hangar_store::{SecretRecord, SecretSet, SecretWrite};
use zeroize::Zeroizing;

pub use crate::runtime::SecretValues;

use super::*;
use crate::container_plan::secret_references;

/// The daemon's secrets key and what it lets callers do.
pub struct SecretsConfig {
    pub key: Arc<SecretsKey>,
    /// Whether `show_secrets=true` returns values. Off by default: as on Fly, the API writes
    /// into the vault and machines read from it; people do not read values back.
    pub readable: bool,
}

/// One secret as a read returns it: the record, and its value when asked for and allowed.
pub struct SecretView {
    pub record: SecretRecord,
    pub value: Option<Zeroizing<String>>,
}

impl Hangar {
    pub(super) fn secrets_key(&self) -> &SecretsKey {
        &self.secrets.key
    }

    /// The app's secrets; `min_version` a version the caller wrote (flyctl's `minvers`) that
    /// this store must have reached; `show` asks for values.
    pub async fn list_secrets(
        &self,
        app: &str,
        min_version: Option<u64>,
        show: bool,
    ) -> ServiceResult<(u64, Vec<SecretView>)> {
        if show && !self.secrets.readable {
            return Err(ServiceError::Forbidden(
                "show_secrets: secret values are write-only on this daemon (start it with \
                 --secrets-readable to let the admin token read them)"
                    .into(),
            ));
        }
        let set = self.secret_set(app).await?;
        check_min_version(&set, min_version)?;
        let views = set
            .secrets
            .into_iter()
            .map(|record| {
                let value = if show {
                    Some(self.open_secret(app, &record)?)
                } else {
                    None
                };
                Ok(SecretView { record, value })
            })
            .collect::<ServiceResult<_>>()?;
        Ok((set.version, views))
    }

    /// Sets (`Some`) and deletes (`None`) secrets of `app` in one write; returns the new version
    /// and the records of the names set.
    pub async fn write_secrets(
        &self,
        app: &str,
        values: BTreeMap<String, Option<String>>,
    ) -> ServiceResult<(u64, Vec<SecretRecord>)> {
        if values.is_empty() {
            return Err(ServiceError::bad_request(
                "values: give at least one secret (a null value deletes one)",
            ));
        }
        let before = self.secret_set(app).await?;
        let mut writes = Vec::with_capacity(values.len());
        let mut names_after: BTreeSet<&str> =
            before.secrets.iter().map(|s| s.name.as_str()).collect();
        for (name, value) in &values {
            hangar_api::check_secret_name(name)
                .map_err(|e| ServiceError::bad_request(format!("values.{name}: {e}")))?;
            match value {
                Some(v) => {
                    hangar_api::check_secret_value(name, v)
                        .map_err(|e| ServiceError::bad_request(format!("values.{name}: {e}")))?;
                    names_after.insert(name);
                    writes.push(SecretWrite::Set {
                        name: name.clone(),
                        sealed: self.secrets_key().seal(app, name, v.as_bytes()),
                        digest: self.secrets_key().digest(v.as_bytes()),
                    });
                }
                None => {
                    names_after.remove(name.as_str());
                    writes.push(SecretWrite::Delete { name: name.clone() });
                }
            }
        }
        if names_after.len() > hangar_api::MAX_SECRETS_PER_APP {
            return Err(ServiceError::bad_request(format!(
                "values: app {app} would hold {} secrets; the limit is {}",
                names_after.len(),
                hangar_api::MAX_SECRETS_PER_APP
            )));
        }
        let a = app.to_string();
        let now = now_ms();
        let version = db(&self.store, move |s| s.write_secrets(&a, &writes, now))
            .await
            .map_err(|e| match e {
                ServiceError::NotFound(_) => ServiceError::app_not_found(app),
                other => other,
            })?;
        let after = self.secret_set(app).await?;
        let set: Vec<SecretRecord> = after
            .secrets
            .into_iter()
            .filter(|s| values.get(&s.name).is_some_and(Option::is_some))
            .collect();
        tracing::info!(
            app,
            version,
            names = ?values.keys().collect::<Vec<_>>(),
            "app secrets changed"
        );
        Ok((version, set))
    }

    /// What a machine of `app` boots with: every secret, opened.
    pub(super) async fn open_secrets(&self, app: &str) -> ServiceResult<SecretValues> {
        let set = self.secret_set(app).await?;
        let mut values = BTreeMap::new();
        for record in &set.secrets {
            values.insert(record.name.clone(), self.open_secret(app, record)?);
        }
        Ok(SecretValues::new(set.version, values))
    }

    /// Refuses a config whose secret references cannot be met now: a file or a container's
    /// `secrets` naming a secret the app does not have, or a file secret that is not base64.
    /// The error names the file or variable, never the value.
    pub(super) async fn check_secret_references(
        &self,
        app: &str,
        config: &MachineConfig,
    ) -> ServiceResult<()> {
        let refs = secret_references(config);
        if refs.files.is_empty() && refs.env.is_empty() {
            return Ok(());
        }
        // Only file secrets are opened (their content must be base64); the rest need a name.
        let set = self.secret_set(app).await?;
        let find = |name: &str| set.secrets.iter().find(|s| s.name == name);
        for (path, name) in &refs.files {
            let record = find(name).ok_or_else(|| {
                ServiceError::bad_request(format!(
                    "file {path}: app {app} has no secret named {name} (set it with `hangar secrets set {name}=...`)"
                ))
            })?;
            let value = self.open_secret(app, record)?;
            if hangar_api::BASE64.decode(value.trim()).is_err() {
                return Err(ServiceError::bad_request(format!(
                    "file {path}: secret {name} is not valid base64 (a file secret holds the file's content base64-encoded)"
                )));
            }
        }
        for (field, name) in &refs.env {
            if find(name).is_none() {
                return Err(ServiceError::bad_request(format!(
                    "{field}: app {app} has no secret named {name}"
                )));
            }
        }
        Ok(())
    }

    /// 4xx unless the app's secrets have reached `min` (`min_secrets_version` of a create or
    /// update).
    pub(super) async fn check_min_secrets_version(
        &self,
        app: &str,
        min: Option<u64>,
    ) -> ServiceResult<()> {
        if min.is_none_or(|v| v == 0) {
            return Ok(());
        }
        let set = self.secret_set(app).await?;
        check_min_version(&set, min).map_err(|e| match e {
            ServiceError::Precondition(m) => {
                ServiceError::Precondition(format!("min_secrets_version: {m}"))
            }
            other => other,
        })
    }

    async fn secret_set(&self, app: &str) -> ServiceResult<SecretSet> {
        let a = app.to_string();
        db_read(&self.store, move |s| s.list_secrets(&a))
            .await
            .map_err(|e| match e {
                ServiceError::NotFound(_) => ServiceError::app_not_found(app),
                other => other,
            })
    }

    fn open_secret(&self, app: &str, record: &SecretRecord) -> ServiceResult<Zeroizing<String>> {
        let bytes = self
            .secrets_key()
            .open(app, &record.name, &record.sealed)
            .map_err(|e| {
                tracing::error!(app, secret = %record.name, "{e}");
                ServiceError::internal(e.to_string())
            })?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| ServiceError::internal(format!("secret {} is not UTF-8", record.name)))
    }
}

/// A boot that cannot open the app's secrets fails the machine with the reason.
pub(super) fn secrets_failure(e: ServiceError) -> crate::runtime::RuntimeError {
    crate::runtime::RuntimeError::Failed(format!("reading the app's secrets: {e}"))
}

fn check_min_version(set: &SecretSet, min: Option<u64>) -> ServiceResult<()> {
    match min {
        Some(v) if v > set.version => Err(ServiceError::precondition(format!(
            "app secrets are at version {}, not yet {v}",
            set.version
        ))),
        _ => Ok(()),
    }
}
