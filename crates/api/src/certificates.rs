//! App certificates (fly-go's flaps certificates API): custom certificates an app imports for
//! its own hostnames, served by the proxy. ACME issuance needs the internet and is not served.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ImportCertificateRequest {
    #[serde(default)]
    #[schema(
        pattern = "^(\\*\\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
    )]
    pub hostname: String,
    /// PEM: the certificate, then its chain.
    #[serde(default)]
    pub fullchain: String,
    /// PEM.
    #[serde(default)]
    pub private_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertificateSummary {
    pub hostname: String,
    pub status: String,
    pub acme_dns_configured: bool,
    pub acme_alpn_configured: bool,
    pub acme_http_configured: bool,
    pub ownership_txt_configured: bool,
    pub configured: bool,
    pub acme_requested: bool,
    pub has_custom_certificate: bool,
    pub has_fly_certificate: bool,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListCertificatesResponse {
    pub certificates: Vec<CertificateSummary>,
    pub total_count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertificateDetail {
    /// `custom`.
    pub source: String,
    pub status: String,
    pub created_at: String,
    pub issued: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CertificateValidation {
    pub dns_configured: bool,
    pub alpn_configured: bool,
    pub http_configured: bool,
    pub ownership_txt_configured: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertificateDetailResponse {
    pub hostname: String,
    pub configured: bool,
    pub acme_requested: bool,
    pub status: String,
    pub certificates: Vec<CertificateDetail>,
    pub validation: CertificateValidation,
    #[schema(value_type = Object)]
    pub dns_requirements: serde_json::Value,
}

/// Why `hostname` is not a hostname a certificate can be imported for, if it is not: DNS
/// labels of letters, digits and dashes (a leading `*.` for a wildcard), at most 253.
pub fn check_certificate_hostname(hostname: &str) -> Result<(), String> {
    let name = hostname.strip_prefix("*.").unwrap_or(hostname);
    let ok = !name.is_empty()
        && hostname.len() <= 253
        && name.split('.').count() >= 2
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "hostname {hostname:?} is not a DNS name (such as www.example.com)"
        ))
    }
}
