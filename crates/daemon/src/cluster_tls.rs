//! Cluster mode: TLS between hosts. Every host derives the same certificate authority from
//! the secrets key they all hold (an Ed25519 key from an HKDF seed: nothing more to
//! distribute), signs its own API certificate with it at start-up (for its `--listen`
//! address), and trusts only that CA when it calls another host. Both ends show their
//! certificate (mutual TLS). So the cluster token and what hosts forward to each other
//! (request bodies, the console, proxied traffic) never cross the network in the clear, and a
//! host is only believed to be one if it holds the key.
//!
//! The `--listen` port keeps serving plain HTTP to API users: the first byte of a connection
//! tells a TLS ClientHello (0x16) from an HTTP request. The cluster token is accepted only on
//! TLS connections (and on the local unix socket).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;

/// How long a client has to finish its TLS handshake (or send its first byte).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long another host has to accept a connection and finish the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The cluster's TLS: this host's server side, and the client side for calling other hosts.
#[derive(Clone)]
pub struct ClusterTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// PKCS#8 (RFC 8410) of an Ed25519 private key: a fixed prefix, then the 32-byte seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// The CA every host derives from the key: the same name and key everywhere.
fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Hangar cluster CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

impl ClusterTls {
    /// The cluster's CA from `ca_seed`, and a certificate for this host's API at `ip`.
    pub fn new(ca_seed: &[u8; 32], ip: IpAddr) -> anyhow::Result<ClusterTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_key = rcgen::KeyPair::try_from(ed25519_pkcs8(ca_seed).as_slice())
            .context("deriving the cluster CA key")?;
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params(), ca_key)
            .context("making the cluster CA certificate")?;
        let host_key = rcgen::KeyPair::generate().context("making this host's TLS key")?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ip.to_string());
        params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
        // The same certificate serves its API and identifies it when it calls another host.
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let host_cert = params
            .signed_by(&host_key, &ca)
            .context("signing this host's API certificate")?;

        let chain = vec![host_cert.der().clone(), ca.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(host_key.serialize_der()));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.der().to_vec()))
            .context("trusting the cluster CA")?;
        let roots = Arc::new(roots);
        // Only another host of the cluster speaks TLS to this port (users speak plain HTTP):
        // it must show a certificate from the cluster CA.
        let hosts_only = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .context("verifying the other hosts' certificates")?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_client_cert_verifier(hosts_only)
            .with_single_cert(chain.clone(), key.clone_key())
            .context("this host's API certificate")?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("this host's certificate as a client")?;
        Ok(ClusterTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// Connects to another host's API at `addr` over TLS, checking its certificate against the
    /// cluster CA.
    pub async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let socket: SocketAddr = addr.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("host API address {addr:?} is not ip:port"),
            )
        })?;
        let attempt = async {
            let tcp = TcpStream::connect(socket).await?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(self.client.clone())
                .connect(ServerName::IpAddress(socket.ip().into()), tcp)
                .await
        };
        tokio::time::timeout(timeout, attempt).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("host {addr} did not answer"),
            )
        })?
    }
}

impl ClusterTls {
    /// Sends `req` (origin-form, with its `Host`) to another host's API at `addr` over TLS, on
    /// a connection of its own driven on its own task (upgrades included: the console, the
    /// backhaul).
    pub async fn send<B>(
        &self,
        addr: &str,
        req: hyper::Request<B>,
    ) -> std::io::Result<hyper::Response<hyper::body::Incoming>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.connect(addr, CONNECT_TIMEOUT).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)
    }
}

/// A connection to the TCP API: plain (left: an API user) or TLS (right: another host).
pub type ApiConn = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// What the token check asks of a TCP connection: whether it is TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub tls: bool,
}

/// The TCP API's listener: connections are accepted, told apart (TLS or not) and handshaken
/// on their own tasks, and handed to the server ready.
pub struct ApiListener {
    ready: tokio::sync::mpsc::Receiver<(ApiConn, Peer)>,
}

impl ApiListener {
    pub fn new(tcp: TcpListener, tls: Option<ClusterTls>) -> std::io::Result<ApiListener> {
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // The server is gone (shut down): stop accepting, and free the port.
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, addr) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an API connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (conn_tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, classify(stream, tls)).await {
                        Ok(Ok(conn)) => {
                            let _ = conn_tx.send(conn).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "API connection dropped before its first request")
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "API connection timed out before its first request")
                        }
                    }
                });
            }
        });
        Ok(ApiListener { ready })
    }
}

/// Tells a TLS connection (first byte 0x16, a handshake record) from a plain one, and does
/// the handshake of the first.
async fn classify(stream: TcpStream, tls: Option<ClusterTls>) -> std::io::Result<(ApiConn, Peer)> {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok((Either::Left(stream), Peer { tls: false }));
    };
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 1 && first[0] == 0x16 {
        let stream = tokio_rustls::TlsAcceptor::from(tls.server.clone())
            .accept(stream)
            .await?;
        Ok((Either::Right(Box::new(stream)), Peer { tls: true }))
    } else {
        Ok((Either::Left(stream), Peer { tls: false }))
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = ApiConn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ends only with the listener; wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { tls: false })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ApiListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, ApiListener>) -> Self {
        *stream.remote_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one TLS handshake as `server`; returns whether the server side accepted it.
    async fn serve_once(server: &ClusterTls) -> (u16, tokio::sync::oneshot::Receiver<bool>) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let (done, accepted) = tokio::sync::oneshot::channel();
        let config = server.server.clone();
        tokio::spawn(async move {
            let (s, _) = tcp.accept().await.unwrap();
            let result = tokio_rustls::TlsAcceptor::from(config).accept(s).await;
            let _ = done.send(result.is_ok());
        });
        (port, accepted)
    }

    #[test]
    fn hosts_with_one_key_trust_each_other_and_no_one_else() {
        let a = ClusterTls::new(&[7; 32], "10.0.0.1".parse().unwrap()).unwrap();
        let b = ClusterTls::new(&[7; 32], "10.0.0.2".parse().unwrap()).unwrap();
        let other = ClusterTls::new(&[8; 32], "10.0.0.2".parse().unwrap()).unwrap();
        // The certificates name the hosts' addresses: connect as if to 10.0.0.2.
        let b_name = || ServerName::IpAddress("10.0.0.2".parse::<IpAddr>().unwrap().into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Two hosts of one key: both ends accept.
            let (port, accepted) = serve_once(&b).await;
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let done = tokio_rustls::TlsConnector::from(a.client.clone())
                .connect(b_name(), tcp)
                .await;
            assert!(done.is_ok(), "{done:?}");
            assert!(accepted.await.unwrap());

            // A host of another key is not believed.
            let (port, _) = serve_once(&other).await;
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let done = tokio_rustls::TlsConnector::from(a.client.clone())
                .connect(b_name(), tcp)
                .await;
            assert!(done.is_err(), "trusted a host of another key");

            // A client without a host's certificate is refused, even if it trusts the CA.
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut trust = rustls::RootCertStore::empty();
            let ca = rcgen::CertifiedIssuer::self_signed(
                ca_params(),
                rcgen::KeyPair::try_from(ed25519_pkcs8(&[7; 32]).as_slice()).unwrap(),
            )
            .unwrap();
            trust.add(CertificateDer::from(ca.der().to_vec())).unwrap();
            let anonymous = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(trust)
                .with_no_client_auth();
            let (port, accepted) = serve_once(&b).await;
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let _ = tokio_rustls::TlsConnector::from(Arc::new(anonymous))
                .connect(b_name(), tcp)
                .await;
            assert!(
                !accepted.await.unwrap(),
                "a client without a certificate got in"
            );
        });
    }
}
