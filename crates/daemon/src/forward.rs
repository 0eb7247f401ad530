//! Cluster mode: one Machines API on every host. A request that acts on a machine another host
//! runs (start, stop, exec, logs, wait…) is forwarded to that host's API, which is the
//! authority for it; a create for another region goes to a host of that region. Hosts
//! authenticate to each other with the cluster token (derived from the secrets key they all
//! hold), and mark a forwarded request so it is never forwarded again. An owner whose
//! heartbeats stopped gets a fast, clear 503 instead of a hang (docs/cluster.md).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_store::HostRecord;

use crate::error::ApiError;
use crate::peers::FORWARDED_BY;
use crate::routes::AppState;
use crate::service::Owner;

/// Put on a request by the token check when it presented the cluster token (another host).
#[derive(Debug, Clone, Copy)]
pub struct FromClusterPeer;

/// What a path under `/v1/apps/{app}/machines` (or Hangar's `/hangar/v1/…`) names.
enum Target {
    Machine {
        app: String,
        id: String,
    },
    Volume {
        app: String,
        id: String,
    },
    /// A new machine or volume of the app: placed by its region, or by the volume it mounts or
    /// copies.
    Create {
        app: String,
    },
    Other,
}

fn target(method: &Method, path: &str, query: Option<&str>) -> Target {
    let rest = path
        .strip_prefix("/v1/apps/")
        .or_else(|| path.strip_prefix("/hangar/v1/apps/"));
    let Some(rest) = rest else {
        return Target::Other;
    };
    // Segments as the handlers see them (axum decodes them), so that `%30…` names the same
    // machine here as there.
    let decoded: Vec<String> = rest
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    // An app's logs for one machine (`?instance=ID`) are that machine's host's.
    if let [app, "logs"] = parts.as_slice() {
        let instance = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "instance")
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty());
        return match instance {
            Some(id) => Target::Machine {
                app: app.to_string(),
                id,
            },
            None => Target::Other,
        };
    }
    match parts.as_slice() {
        [app, "machines", id, ..] if !id.is_empty() => Target::Machine {
            app: app.to_string(),
            id: id.to_string(),
        },
        [app, "volumes", id, ..] if !id.is_empty() => Target::Volume {
            app: app.to_string(),
            id: id.to_string(),
        },
        [app, "machines" | "volumes"] if method == Method::POST && path.starts_with("/v1/") => {
            Target::Create {
                app: app.to_string(),
            }
        }
        _ => Target::Other,
    }
}

pub async fn to_owner(State(h): State<AppState>, req: Request, next: Next) -> Response {
    let forwarded = req.headers().contains_key(FORWARDED_BY)
        && req.extensions().get::<FromClusterPeer>().is_some();
    if !h.is_cluster() || forwarded {
        return next.run(req).await;
    }
    match target(req.method(), req.uri().path(), req.uri().query()) {
        Target::Other => next.run(req).await,
        Target::Machine { app, id } => match h.machine_owner(&app, &id).await {
            Ok(Owner::Local) => next.run(req).await,
            Ok(Owner::Host(host)) if !host.api_addr.is_empty() => forward(&h, &host, req).await,
            // Reading the machine itself is served from the store when its host cannot be
            // asked (with `host_status` unreachable when it is silent); acting on it fails fast.
            Ok(Owner::Host(_) | Owner::Unreachable(..))
                if req.method() == Method::GET && is_machine_resource(req.uri().path()) =>
            {
                next.run(req).await
            }
            owner => route(&h, owner, req, next, &format!("machine {id}")).await,
        },
        Target::Volume { app, id } => {
            let owner = h.volume_owner(&app, &id).await;
            route(&h, owner, req, next, &format!("volume {id}")).await
        }
        Target::Create { app } => {
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, crate::extract::MAX_BODY_BYTES).await {
                Ok(b) => b,
                Err(e) => {
                    return ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("reading the request body: {e}"),
                    )
                    .into_response()
                }
            };
            let body = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
            let req = Request::from_parts(parts, Body::from(bytes));
            let text =
                |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
            // A volume lives on one host: a machine that mounts it, a fork of it and a restore
            // of its snapshot go there.
            let volume = text(&body["config"]["mounts"][0]["volume"])
                .or_else(|| text(&body["source_volume_id"]));
            let owner = match (volume, text(&body["snapshot_id"])) {
                (Some(volume), _) => Some((h.volume_owner(&app, &volume).await, volume)),
                (None, Some(snap)) => Some((h.snapshot_owner(&app, &snap).await, snap)),
                (None, None) => None,
            };
            if let Some((owner, what)) = owner {
                return route(&h, owner, req, next, &format!("volume {what}")).await;
            }
            let Some(region) = text(&body["region"]) else {
                return next.run(req).await;
            };
            match h.placement(&region).await {
                Ok(Some(Owner::Local)) => next.run(req).await,
                Ok(Some(Owner::Host(host))) => forward(&h, &host, req).await,
                Ok(_) => no_room(&region),
                Err(e) => ApiError::from(e).into_response(),
            }
        }
    }
}

/// Serves the request here, forwards it to its owner, or says why the owner cannot be reached
/// (`what` names the machine or volume).
async fn route(
    h: &AppState,
    owner: crate::service::ServiceResult<Owner>,
    req: Request,
    next: Next,
    what: &str,
) -> Response {
    match owner {
        Ok(Owner::Local) => next.run(req).await,
        Ok(Owner::Host(host)) => forward(h, &host, req).await,
        Ok(Owner::Unreachable(host, silent_ms)) => unreachable(&host, silent_ms, what),
        Ok(Owner::Unregistered(host)) => unregistered(&host, what),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `/v1/apps/{app}/machines/{id}` itself.
fn is_machine_resource(path: &str) -> bool {
    path.strip_prefix("/v1/apps/")
        .is_some_and(|rest| rest.split('/').count() == 3)
}

/// Fly's answer for a region with no room: 409 `insufficient_capacity`.
fn no_room(region: &str) -> Response {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("insufficient capacity: no live host of region {region} can take the machine"),
    )
    .with_code("insufficient_capacity")
    .into_response()
}

fn unreachable(host: &HostRecord, silent_ms: i64, what: &str) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{what} is on host {} ({}), which is unreachable: no heartbeat for {}s. Its \
             machines and volumes are not moved; requests for them work again when it returns",
            host.id,
            host.region,
            silent_ms / 1000
        ),
    )
    .into_response()
}

fn unregistered(host: &str, what: &str) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{what} is on host {host}, which is not registered in the store"),
    )
    .into_response()
}

async fn forward(h: &AppState, host: &HostRecord, req: Request) -> Response {
    if host.api_addr.is_empty() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "host {} serves no TCP API (start it with --listen) so requests for its \
                 machines cannot reach it",
                host.id
            ),
        )
        .into_response();
    }
    // An upgrade (the console) is forwarded as one: after the owner's 101 the two upgraded
    // connections are joined byte for byte.
    let mut req = req;
    let client_side = req
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(e) => return ApiError::internal(format!("forwarded path: {e}")).into_response(),
    };
    // Hop-by-hop headers are this connection's, not the next one's (but for the upgrade
    // being asked for).
    for hop in [header::TE, header::TRAILER, header::PROXY_AUTHORIZATION] {
        parts.headers.remove(hop);
    }
    if client_side.is_none() {
        parts.headers.remove(header::CONNECTION);
    }
    match h
        .peer()
        .send(&host.api_addr, Request::from_parts(parts, body))
        .await
    {
        Ok(mut resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let owner_side = hyper::upgrade::on(&mut resp);
            let owner = host.id.clone();
            if let Some(client_side) = client_side {
                tokio::spawn(async move {
                    match tokio::try_join!(client_side, owner_side) {
                        Ok((c, o)) => {
                            let (mut c, mut o) = (
                                hyper_util::rt::TokioIo::new(c),
                                hyper_util::rt::TokioIo::new(o),
                            );
                            let _ = tokio::io::copy_bidirectional(&mut c, &mut o).await;
                        }
                        Err(e) => {
                            tracing::debug!(host = %owner, error = %e, "forwarded upgrade failed")
                        }
                    }
                });
            }
            resp.map(Body::new).into_response()
        }
        Ok(resp) => resp.map(Body::new).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("host {} ({}) did not answer: {e}", host.id, host.api_addr),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_paths_are_recognised() {
        let m = |method: Method, p: &str| match target(&method, p, Some("instance=m9")) {
            Target::Machine { app, id } => format!("{app}/{id}"),
            Target::Volume { app, id } => format!("volume {app}/{id}"),
            Target::Create { app } => format!("create in {app}"),
            Target::Other => "other".into(),
        };
        assert_eq!(m(Method::GET, "/v1/apps/a/machines/m1"), "a/m1");
        assert_eq!(m(Method::POST, "/v1/apps/a/machines/m1/stop"), "a/m1");
        assert_eq!(
            m(Method::GET, "/hangar/v1/apps/a/machines/m1/stats"),
            "a/m1"
        );
        assert_eq!(m(Method::POST, "/v1/apps/a/machines"), "create in a");
        assert_eq!(m(Method::POST, "/v1/apps/a/volumes"), "create in a");
        assert_eq!(
            m(Method::PUT, "/v1/apps/a/volumes/v1/extend"),
            "volume a/v1"
        );
        assert_eq!(m(Method::GET, "/v1/apps/a/machines"), "other");
        assert_eq!(m(Method::GET, "/v1/apps/a"), "other");
        assert_eq!(m(Method::GET, "/v1/apps/a/machines/"), "other");
        assert_eq!(m(Method::GET, "/v1/apps/a/machines/%6d1/stop"), "a/m1");
        assert_eq!(m(Method::GET, "/hangar/v1/apps/a/logs"), "a/m9");
    }
}
