//! Calls to the cluster's other hosts: who this host is to them (the cluster token, its host
//! id, TLS under the cluster's CA), and the requests its proxy sends them (a connection to a
//! machine through its host: the backhaul, backhaul.rs; a start of a machine there). API
//! requests are forwarded by forward.rs with the same marks.

use std::time::Duration;

use axum::http::{header, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use hangar_proxy::upstream::{Backhaul, Purpose};

/// Set on requests from another host: the host that sent it. A request that carries it *and*
/// the cluster token is served where it lands; the header alone (from an API user) means
/// nothing.
pub const FORWARDED_BY: &str = "hangar-forwarded-by";

/// The `Upgrade` protocol name of a backhaul.
pub const BACKHAUL_PROTOCOL: &str = "hangar-backhaul";

/// How long the asking host waits for an answer beyond the machine's patience.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the asking host waits for a start (the owner waits up to a minute for started).
const START_TIMEOUT: Duration = Duration::from_secs(70);

/// How this host presents itself to another host's API.
#[derive(Clone)]
pub struct Peer {
    pub token: zeroize::Zeroizing<String>,
    pub host_id: String,
    pub tls: Option<crate::cluster_tls::ClusterTls>,
}

/// Sends `POST path` to the host at `api_addr` as `peer`; with `upgrade`, asks for that
/// protocol. Returns the response with its connection still driven.
async fn post(
    peer: &Peer,
    api_addr: &str,
    path: &str,
    upgrade: bool,
) -> std::io::Result<hyper::Response<hyper::body::Incoming>> {
    let mut req = hyper::Request::post(path);
    if upgrade {
        req = req
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, BACKHAUL_PROTOCOL);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(std::io::Error::other)?;
    peer.send(api_addr, req).await
}

impl Peer {
    /// Sends `req` (origin-form) to the host at `api_addr` as this host: its `Host`, the
    /// cluster token, and the mark that has it served where it lands, over the cluster's TLS.
    pub async fn send<B>(
        &self,
        api_addr: &str,
        mut req: hyper::Request<B>,
    ) -> std::io::Result<hyper::Response<hyper::body::Incoming>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let value = |v: &str| {
            header::HeaderValue::from_str(v)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let headers = req.headers_mut();
        headers.insert(header::HOST, value(api_addr)?);
        headers.insert(
            header::AUTHORIZATION,
            value(&format!("Bearer {}", self.token.as_str()))?,
        );
        headers.insert(FORWARDED_BY, value(&self.host_id)?);
        let tls = self
            .tls
            .as_ref()
            .ok_or_else(|| std::io::Error::other("cluster mode without TLS to the other hosts"))?;
        tls.send(api_addr, req).await
    }
}

/// The error a host answered with, as text.
async fn refusal(api_addr: &str, resp: hyper::Response<hyper::body::Incoming>) -> String {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    format!("host {api_addr} answered {status}: {message}")
}

fn machine_path(app: &str, id: &str, what: &str) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!("/hangar/v1/apps/{}/machines/{}/{what}", enc(app), enc(id))
}

/// Opens a connection to `target` through the host at `api_addr` that runs it.
pub async fn open(
    peer: &Peer,
    api_addr: &str,
    target: &Backhaul<'_>,
) -> std::io::Result<TokioIo<hyper::upgrade::Upgraded>> {
    let purpose = match target.purpose {
        Purpose::Traffic { autostart: true } => "traffic&autostart=true",
        Purpose::Traffic { autostart: false } => "traffic",
        Purpose::Check => "check",
    };
    let path = format!(
        "{}?port={}&wait_ms={}&purpose={purpose}",
        machine_path(target.app, target.id, "backhaul"),
        target.port,
        target.patience.as_millis()
    );
    // The host answers once it has connected to the machine (or woken it): never longer.
    let deadline = target.patience + ANSWER_TIMEOUT;
    let mut resp = tokio::time::timeout(deadline, post(peer, api_addr, &path, true))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("host {api_addr} did not answer within {deadline:?}"),
            )
        })??;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let kind = if resp.status() == StatusCode::BAD_GATEWAY {
            std::io::ErrorKind::ConnectionRefused
        } else {
            std::io::ErrorKind::Other
        };
        return Err(std::io::Error::new(kind, refusal(api_addr, resp).await));
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(std::io::Error::other)?;
    Ok(TokioIo::new(upgraded))
}

/// Has the host at `api_addr` start (or resume) its machine `id` for this host's proxy.
pub async fn start_remote(peer: &Peer, api_addr: &str, app: &str, id: &str) -> Result<(), String> {
    let path = machine_path(app, id, "proxy-start");
    let start = post(peer, api_addr, &path, false);
    let resp = tokio::time::timeout(START_TIMEOUT, start)
        .await
        .map_err(|_| {
            format!("host {api_addr} did not start machine {id} within {START_TIMEOUT:?}")
        })?
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        return Ok(());
    }
    Err(refusal(api_addr, resp).await)
}
