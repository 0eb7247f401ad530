//! Cluster mode: how one host's proxy reaches the machines another host runs (Fly calls this
//! the backhaul). The proxy that took the client's connection asks the machine's host, over
//! that host's API with the cluster token, for a connection to one of the machine's ports:
//! `POST /hangar/v1/apps/{app}/machines/{id}/backhaul?port=N` with `Connection: Upgrade`,
//! `Upgrade: hangar-backhaul`. The host connects to the machine's private IPv4 first (so a
//! machine that does not listen is an ordinary error), then answers 101 and joins the two
//! connections byte for byte. What the proxy speaks on it (HTTP with Fly's headers, PROXY
//! protocol, raw TCP) is the proxy's business, as on its own host.
//!
//! The connection counts as load on the machine's host (its autostop sees the traffic other
//! hosts bring), unless it is a service check (`purpose=check`). A stopped or suspended
//! machine is woken by its own host for another host's proxy:
//! `POST /hangar/v1/apps/{app}/machines/{id}/proxy-start`, answered once it is started; a
//! backhaul with `autostart=true` does the same when it finds the machine asleep (the asking
//! proxy's view of it may be a moment old). Both endpoints answer only the cluster's hosts
//! (the cluster token).

use std::time::Duration;

use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::forward::{FromClusterPeer, FORWARDED_BY};
use crate::routes::AppState;
use hangar_proxy::upstream::Purpose;

/// The `Upgrade` protocol name.
pub const PROTOCOL: &str = "hangar-backhaul";
/// The longest a woken machine is waited for to listen.
const MAX_PATIENCE: Duration = Duration::from_secs(60);
/// How long a machine this host woke for a backhaul gets to listen (the proxy's default).
const WOKEN_PATIENCE: Duration = Duration::from_secs(10);
/// How long a machine that should be listening gets to accept the connection.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);
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

/// The machine port a backhaul connects to.
pub struct Target<'a> {
    pub app: &'a str,
    pub id: &'a str,
    pub port: u16,
    /// How long a woken machine gets to listen (zero: it should already).
    pub patience: Duration,
    pub purpose: Purpose,
}

fn only_peers(req: &Request) -> ApiResult<()> {
    if req.extensions().get::<FromClusterPeer>().is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the cluster's hosts may use this endpoint",
        ));
    }
    Ok(())
}

/// `POST …/backhaul`: a connection to one of this host's machines for another host's proxy.
pub async fn serve(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    mut req: Request,
) -> ApiResult<Response> {
    only_peers(&req)?;
    if !crate::console::wants_upgrade(&req, PROTOCOL) {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            format!("this endpoint needs Connection: Upgrade and Upgrade: {PROTOCOL}"),
        ));
    }
    let q = Query::parse(raw.as_deref());
    let port = match q.int("port")? {
        Some(p) if (1..=i64::from(u16::MAX)).contains(&p) => p as u16,
        _ => return Err(ApiError::bad_request("port must be between 1 and 65535")),
    };
    let patience = match q.int("wait_ms")? {
        None => Duration::ZERO,
        Some(ms) if ms >= 0 => Duration::from_millis(ms as u64).min(MAX_PATIENCE),
        Some(_) => return Err(ApiError::bad_request("wait_ms must not be negative")),
    };
    let purpose = match q.get("purpose") {
        None | Some("traffic") => Purpose::Traffic {
            autostart: q.bool("autostart", false)?,
        },
        Some("check") => Purpose::Check,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "purpose must be traffic or check, not {other:?}"
            )))
        }
    };
    let (ip, patience) = match started_here(&h, &app, &id) {
        Some(ip) => (ip, patience),
        None => machine_to_connect(&h, &app, &id, patience, purpose).await?,
    };
    let refused = |e: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("machine {id} refused the connection to port {port}: {e}"),
        )
    };
    let connect = hangar_proxy::tcp::connect((ip, port).into(), !patience.is_zero(), patience);
    let mut machine = tokio::time::timeout(patience.max(CONNECT_PATIENCE), connect)
        .await
        .map_err(|_| refused("timed out".into()))?
        .map_err(|e| refused(e.to_string()))?;
    let load = match purpose {
        Purpose::Traffic { .. } => h.proxy().map(|p| p.load().hold(&id)),
        Purpose::Check => None,
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _load = load;
        match upgrade.await {
            Ok(upgraded) => {
                let mut peer = TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut peer, &mut machine).await;
            }
            Err(e) => tracing::debug!(error = %e, "backhaul upgrade failed"),
        }
    });
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    res.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    Ok(res)
}

/// A started machine of this host, as this host's proxy table has it (written with every
/// change of the machine): its private IPv4, without a store read per connection.
fn started_here(h: &AppState, app: &str, id: &str) -> Option<std::net::Ipv4Addr> {
    let table = h.proxy()?.table();
    let m = table.get(id)?;
    (m.app == app && m.via.is_none() && m.started)
        .then_some(m.ipv4)
        .flatten()
}

/// The machine's address and how long it gets to listen, from the store: it is not started
/// here as far as the proxy knows (asleep, another host's, or unknown). A machine asleep is
/// started for traffic that allows it.
async fn machine_to_connect(
    h: &AppState,
    app: &str,
    id: &str,
    patience: Duration,
    purpose: Purpose,
) -> ApiResult<(std::net::Ipv4Addr, Duration)> {
    let mut m = h.get_machine(app, id, false).await?;
    // Only the host that runs it can connect to it (a stale view on the asking host).
    if h.is_cluster() && m.host_id != h.host_id() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("machine {id} runs on host {}, not this one", m.host_id),
        ));
    }
    let mut patience = patience;
    let asleep = matches!(
        m.state,
        hangar_api::MachineState::Stopped | hangar_api::MachineState::Suspended
    );
    if asleep && purpose == (Purpose::Traffic { autostart: true }) {
        tracing::info!(%app, machine = %id, "starting a machine for another host's proxy");
        h.start_for_proxy(app, id).await?;
        m = h.get_machine(app, id, false).await?;
        patience = patience.max(WOKEN_PATIENCE);
    }
    if m.state != hangar_api::MachineState::Started {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("machine {id} is {}, not started", m.state),
        ));
    }
    let ip = m.private_ipv4.parse().map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("machine {id} has no private address"),
        )
    })?;
    Ok((ip, patience))
}

/// `POST …/proxy-start`: starts (or resumes) one of this host's machines for another host's
/// proxy; answers once it is started.
pub async fn start(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    req: Request,
) -> ApiResult<StatusCode> {
    only_peers(&req)?;
    h.start_for_proxy(&app, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends `POST path` to the host at `api_addr` as `peer`; with `upgrade`, asks for that
/// protocol. Returns the response with its connection still driven.
async fn post(
    peer: &Peer,
    api_addr: &str,
    path: &str,
    upgrade: bool,
) -> std::io::Result<hyper::Response<hyper::body::Incoming>> {
    let mut req = hyper::Request::post(path)
        .header(header::HOST, api_addr)
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", peer.token.as_str()),
        )
        // Served where it lands: the host that runs the machine.
        .header(FORWARDED_BY, &peer.host_id);
    if upgrade {
        req = req
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, PROTOCOL);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(std::io::Error::other)?;
    let tls = peer
        .tls
        .as_ref()
        .ok_or_else(|| std::io::Error::other("cluster mode without TLS to the other hosts"))?;
    tls.send(api_addr, req).await
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
    target: &Target<'_>,
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
