//! Custom certificates (fly-go's flaps certificates API): an app imports a certificate and key
//! for one of its hostnames; the proxy serves it for that name (SNI) and routes the name to
//! the app. The key is sealed under the daemon's secrets key at rest.

use hangar_api::ImportCertificateRequest;
use hangar_proxy::tls::CertKey;
use hangar_store::CertificateRecord;

use super::*;

/// The associated-data "app" a certificate key is sealed under (keys and secrets never open
/// as each other).
fn key_scope(app: &str) -> String {
    format!("certificate-key:{app}")
}

impl Hangar {
    pub async fn import_certificate(
        &self,
        app: &str,
        req: ImportCertificateRequest,
    ) -> ServiceResult<CertificateRecord> {
        self.get_app(app).await?;
        let hostname = req.hostname.trim().to_ascii_lowercase();
        hangar_api::check_certificate_hostname(&hostname).map_err(ServiceError::bad_request)?;
        let cert = CertKey::from_pem_for(&hostname, &req.fullchain, &req.private_key)
            .map_err(|e| ServiceError::bad_request(e.to_string()))?;
        let now = now_ms();
        let record = CertificateRecord {
            hostname: hostname.clone(),
            app: app.to_string(),
            fullchain: req.fullchain.clone(),
            key_sealed: self.secrets_key().seal(
                &key_scope(app),
                &hostname,
                req.private_key.as_bytes(),
            ),
            created_at: now,
            updated_at: now,
        };
        let rec = record.clone();
        db(&self.store, move |s| s.put_certificate(&rec))
            .await
            .map_err(|e| match e {
                ServiceError::Conflict(_) => {
                    ServiceError::conflict(format!("hostname {hostname} belongs to another app"))
                }
                other => other,
            })?;
        if let Some(p) = self.proxy() {
            p.set_custom_certificate(&record.hostname, app, cert);
        }
        tracing::info!(app, hostname = %record.hostname, "custom certificate imported");
        Ok(record)
    }

    pub async fn list_certificates(&self, app: &str) -> ServiceResult<Vec<CertificateRecord>> {
        self.get_app(app).await?;
        let a = app.to_string();
        db(&self.store, move |s| s.list_certificates(Some(&a))).await
    }

    pub async fn get_certificate(
        &self,
        app: &str,
        hostname: &str,
    ) -> ServiceResult<CertificateRecord> {
        self.get_app(app).await?;
        let h = hostname.to_ascii_lowercase();
        db(&self.store, move |s| s.get_certificate(&h))
            .await?
            .filter(|c| c.app == app)
            .ok_or_else(|| {
                ServiceError::not_found(format!("no certificate for {hostname} in app {app}"))
            })
    }

    pub async fn delete_certificate(&self, app: &str, hostname: &str) -> ServiceResult<()> {
        let cert = self.get_certificate(app, hostname).await?;
        let h = cert.hostname.clone();
        db(&self.store, move |s| s.delete_certificate(&h)).await?;
        if let Some(p) = self.proxy() {
            p.remove_custom_certificate(&cert.hostname);
        }
        Ok(())
    }

    /// Hands every stored certificate to the proxy (start-up).
    pub async fn load_certificates(&self) -> ServiceResult<()> {
        let Some(proxy) = self.proxy().cloned() else {
            return Ok(());
        };
        for c in db(&self.store, |s| s.list_certificates(None)).await? {
            let key = self
                .secrets_key()
                .open(&key_scope(&c.app), &c.hostname, &c.key_sealed)
                .map_err(|e| ServiceError::internal(e.to_string()))?;
            let key = String::from_utf8_lossy(&key).into_owned();
            match CertKey::from_pem_for(&c.hostname, &c.fullchain, &key) {
                Ok(cert) => proxy.set_custom_certificate(&c.hostname, &c.app, cert),
                Err(e) => {
                    tracing::warn!(hostname = %c.hostname, error = %e, "stored certificate unusable")
                }
            }
        }
        Ok(())
    }
}
