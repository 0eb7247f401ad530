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
use axum::http::StatusCode;
use axum::response::Response;
use hyper_util::rt::TokioIo;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::forward::FromClusterPeer;
use crate::peers::BACKHAUL_PROTOCOL as PROTOCOL;
use crate::routes::AppState;
use hangar_proxy::upstream::Purpose;

/// The longest a woken machine is waited for to listen.
const MAX_PATIENCE: Duration = Duration::from_secs(60);
/// How long a machine this host woke for a backhaul gets to listen (the proxy's default).
const WOKEN_PATIENCE: Duration = Duration::from_secs(10);
/// How long a machine that should be listening gets to accept the connection.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);
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
    crate::upgrade::require(&req, PROTOCOL)?;
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
    let connect = hangar_proxy::upstream::connect((ip, port).into(), !patience.is_zero(), patience);
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
    Ok(crate::upgrade::switching(PROTOCOL))
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
