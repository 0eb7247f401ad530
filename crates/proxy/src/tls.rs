//! The `tls` handler: terminates TLS at the edge, then serves HTTP (with `http`) or passes the
//! plaintext to the machine. The certificate is the one given to the daemon
//! (`--proxy-tls-cert`/`--proxy-tls-key`), else a self-signed one made for the app
//! (`<app>.<domain>` and `<app>`), kept for the daemon's life. With several apps on one port
//! the client's SNI picks the app.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::server::Acceptor;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::table::EdgePort;
use crate::Proxy;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {error}")]
    Read { path: String, error: String },
    #[error("{0}")]
    Config(String),
}

/// A certificate chain and its key.
pub struct CertKey {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertKey({} certificates)", self.chain.len())
    }
}

impl Clone for CertKey {
    fn clone(&self) -> Self {
        CertKey {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl CertKey {
    /// Reads a PEM chain and key (the daemon's `--proxy-tls-cert`/`--proxy-tls-key`).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<CertKey, TlsError> {
        let read = |p: &Path, e: String| TlsError::Read {
            path: p.display().to_string(),
            error: e,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| read(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(read(cert, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, e.to_string()))?;
        Ok(CertKey { chain, key })
    }

    /// A PEM chain and key given as text (an imported certificate), checked to cover
    /// `hostname` and to belong together.
    pub fn from_pem_for(hostname: &str, chain: &str, key: &str) -> Result<CertKey, TlsError> {
        let bad = |e: String| TlsError::Config(e);
        let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("fullchain: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(bad("fullchain: no certificate in it".into()));
        };
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| bad(format!("private_key: {e}")))?;
        let name = rustls_pki_types::ServerName::try_from(hostname.to_string())
            .map_err(|e| bad(format!("hostname {hostname:?}: {e}")))?;
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            bad(format!(
                "fullchain: the first certificate does not parse: {e}"
            ))
        })?;
        cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
            bad(format!(
                "fullchain: the certificate is not valid for {hostname}"
            ))
        })?;
        let ck = CertKey { chain, key };
        // rustls checks that the key is the certificate's own.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(ck.chain.clone(), ck.key.clone_key())
            .map_err(|e| bad(format!("private_key: {e}")))?;
        Ok(ck)
    }

    fn self_signed(names: Vec<String>) -> Result<CertKey, TlsError> {
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(CertKey {
            chain: vec![made.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into()),
        })
    }
}

/// The certificates in use: apps' custom hostnames', the given one, or each app's own
/// self-signed one.
#[derive(Default)]
pub struct Certificates {
    given: Option<CertKey>,
    made: Mutex<HashMap<String, CertKey>>,
    /// Custom hostname (lowercase) → (app, its certificate).
    custom: Mutex<HashMap<String, (String, CertKey)>>,
}

impl Certificates {
    pub fn new(given: Option<CertKey>) -> Certificates {
        Certificates {
            given,
            made: Mutex::new(HashMap::new()),
            custom: Mutex::new(HashMap::new()),
        }
    }

    /// Serves `cert` for `hostname`, which now routes to `app`.
    pub fn set_custom(&self, hostname: &str, app: &str, cert: CertKey) {
        self.custom
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hostname.to_ascii_lowercase(), (app.to_string(), cert));
    }

    pub fn remove_custom(&self, hostname: &str) {
        self.custom
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hostname.to_ascii_lowercase());
    }

    /// The app a custom hostname belongs to.
    pub fn app_of_hostname(&self, hostname: &str) -> Option<String> {
        self.custom
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hostname.to_ascii_lowercase())
            .map(|(app, _)| app.clone())
    }

    fn for_app(&self, app: &str, domain: &str, sni: Option<&str>) -> Result<CertKey, TlsError> {
        if let Some(name) = sni {
            let custom = self.custom.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((owner, cert)) = custom.get(&name.to_ascii_lowercase()) {
                if owner == app {
                    return Ok(cert.clone());
                }
            }
        }
        if let Some(given) = &self.given {
            return Ok(given.clone());
        }
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = made.get(app) {
            return Ok(c.clone());
        }
        let c = CertKey::self_signed(vec![format!("{app}.{domain}"), app.to_string()])?;
        made.insert(app.to_string(), c.clone());
        Ok(c)
    }
}

/// `tls_options` of an edge port: ALPN protocols and TLS versions.
fn server_config(
    cert: CertKey,
    edge: &EdgePort,
    options: Option<&serde_json::Value>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match options
        .and_then(|o| o.get("versions"))
        .and_then(|v| v.as_array())
    {
        Some(list) => list
            .iter()
            .filter_map(|v| match v.as_str() {
                Some("TLSv1.2") => Some(&rustls::version::TLS12),
                Some("TLSv1.3") => Some(&rustls::version::TLS13),
                _ => None,
            })
            .collect(),
        None => vec![&rustls::version::TLS12, &rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = match options
        .and_then(|o| o.get("alpn"))
        .and_then(|v| v.as_array())
    {
        Some(list) => list
            .iter()
            .filter_map(|v| v.as_str())
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        None if edge.http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        // What PostgreSQL 17's clients ask for (and require, with direct TLS).
        None if edge.pg_tls => vec![b"postgresql".to_vec()],
        None => Vec::new(),
    };
    Ok(config)
}

impl Proxy {
    pub(crate) async fn serve_tls(
        self: Arc<Self>,
        stream: TcpStream,
        local: SocketAddr,
        peer: SocketAddr,
        owner: Option<String>,
    ) {
        self.terminate_tls(stream, local, peer, owner, |e| e.tls)
            .await
    }

    /// Terminates TLS on a connection to an edge port that passes `edge` (`tls`, or `pg_tls`
    /// once PostgreSQL's request for it is answered) with the certificate of the app its
    /// server name (or the port) says, then serves what is inside by the port's other
    /// handlers.
    pub(crate) async fn terminate_tls(
        self: Arc<Self>,
        stream: TcpStream,
        local: SocketAddr,
        peer: SocketAddr,
        owner: Option<String>,
        edge: fn(&EdgePort) -> bool,
    ) {
        let port = local.port();
        let start = match LazyConfigAcceptor::new(Acceptor::default(), stream).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "proxy: not a TLS client hello");
                return;
            }
        };
        let sni = start.client_hello().server_name().map(str::to_string);
        let app = owner.or_else(|| self.app_for(port, sni.as_deref(), edge));
        let Some(app) = app else {
            tracing::info!(%peer, port, ?sni, "proxy: no app for this TLS name (PT05)");
            return;
        };
        let Some(candidate) = self
            .table()
            .candidates(port)
            .remove(&app)
            .and_then(|c| c.into_iter().next())
        else {
            return;
        };
        let config = self
            .certificates
            .for_app(&app, &self.config.domain, sni.as_deref())
            .and_then(|c| {
                server_config(c, candidate.edge(), candidate.edge().tls_options.as_ref())
            });
        let config = match config {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(%app, error = %e, "proxy: no TLS configuration (PT06)");
                return;
            }
        };
        let tls = match start.into_stream(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "proxy: TLS handshake failed");
                return;
            }
        };
        if candidate.edge().http {
            self.serve_http(tls, local, peer, Some(app)).await;
        } else {
            self.serve_tcp(tls, local, peer, Some(app)).await;
        }
    }
}
