//! Listeners, authentication, the data-dir lock and graceful shutdown.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use nix::fcntl::{Flock, FlockArg};

use crate::error::ApiError;
use crate::routes::{self, AppState};

pub fn router(state: AppState, token: Arc<str>) -> Router {
    // The admin token, and in cluster mode the token the cluster's hosts forward requests with.
    let mut tokens = vec![token.to_string()];
    if state.is_cluster() {
        tokens.push(state.cluster_token().to_string());
    }
    let tokens: Arc<[String]> = tokens.into();
    let forward_state = state.clone();
    let health = state.clone();
    let metrics = state.metrics();
    let openapi: Arc<str> = crate::openapi::document(state.region(), state.is_cluster())
        .to_string()
        .into();
    let machine = "/v1/apps/{app_name}/machines/{machine_id}";
    let api = Router::new()
        .route("/v1/apps", get(routes::list_apps).post(routes::create_app))
        .route("/v1/platform/regions", get(routes::platform_regions))
        .route(
            "/v1/apps/{app_name}",
            get(routes::get_app).delete(routes::delete_app),
        )
        .route(
            "/v1/apps/{app_name}/machines",
            get(routes::list_machines).post(routes::create_machine),
        )
        .route(
            machine,
            get(routes::get_machine)
                .post(routes::update_machine)
                .delete(routes::destroy_machine),
        )
        .route(&format!("{machine}/start"), post(routes::start_machine))
        .route(&format!("{machine}/stop"), post(routes::stop_machine))
        .route(&format!("{machine}/restart"), post(routes::restart_machine))
        .route(&format!("{machine}/signal"), post(routes::signal_machine))
        .route(&format!("{machine}/suspend"), post(routes::suspend_machine))
        .route(&format!("{machine}/exec"), post(routes::exec_machine))
        .route(&format!("{machine}/ps"), get(routes::machine_ps))
        .route(
            &format!("{machine}/memory"),
            get(routes::get_memory).put(routes::set_memory),
        )
        .route(
            &format!("{machine}/memory/reclaim"),
            post(routes::reclaim_memory),
        )
        .route(&format!("{machine}/cordon"), post(routes::cordon_machine))
        .route(
            &format!("{machine}/uncordon"),
            post(routes::uncordon_machine),
        )
        .route(&format!("{machine}/wait"), get(routes::wait_machine))
        .route(&format!("{machine}/events"), get(routes::machine_events))
        .route(
            &format!("{machine}/versions"),
            get(routes::machine_versions),
        )
        .route(
            &format!("{machine}/lease"),
            get(routes::get_lease)
                .post(routes::acquire_lease)
                .delete(routes::release_lease),
        )
        .route(
            &format!("{machine}/metadata"),
            get(routes::get_metadata)
                .patch(routes::patch_metadata)
                .put(routes::put_metadata),
        )
        .route(
            &format!("{machine}/metadata/{{key}}"),
            get(routes::get_metadata_key)
                .post(routes::set_metadata_key)
                .delete(routes::delete_metadata_key),
        )
        .route(
            "/v1/apps/{app_name}/secrets",
            get(routes::list_secrets).post(routes::set_secrets),
        )
        .route(
            "/v1/apps/{app_name}/secrets/{secret_name}",
            get(routes::get_secret)
                .post(routes::set_secret)
                .delete(routes::delete_secret),
        )
        .route(
            "/v1/apps/{app_name}/ip_assignments",
            get(routes::list_ip_assignments).post(routes::assign_ip),
        )
        .route(
            "/v1/apps/{app_name}/ip_assignments/{ip}",
            axum::routing::delete(routes::release_ip),
        )
        .route(
            "/v1/apps/{app_name}/certificates",
            get(routes::list_certificates),
        )
        .route(
            "/v1/apps/{app_name}/certificates/custom",
            post(routes::import_certificate),
        )
        .route(
            "/v1/apps/{app_name}/certificates/acme",
            post(routes::acme_certificate),
        )
        .route(
            "/v1/apps/{app_name}/certificates/{hostname}",
            get(routes::get_certificate).delete(routes::delete_certificate),
        )
        .route(
            "/v1/apps/{app_name}/certificates/{hostname}/check",
            post(routes::check_certificate),
        )
        .route(
            "/v1/apps/{app_name}/certificates/{hostname}/custom",
            axum::routing::delete(routes::delete_custom_certificate),
        )
        .route(
            "/v1/apps/{app_name}/certificates/{hostname}/acme",
            axum::routing::delete(routes::delete_acme_certificate),
        )
        .route(
            "/v1/apps/{app_name}/volumes",
            get(routes::list_volumes).post(routes::create_volume),
        )
        .route(
            "/v1/apps/{app_name}/volumes/{volume_id}",
            get(routes::get_volume)
                .put(routes::update_volume)
                .delete(routes::destroy_volume),
        )
        .route(
            "/v1/apps/{app_name}/volumes/{volume_id}/extend",
            put(routes::extend_volume),
        )
        .route(
            "/v1/apps/{app_name}/volumes/{volume_id}/snapshots",
            get(routes::list_snapshots).post(routes::create_snapshot),
        )
        // Hangar's own endpoints live outside /v1, which stays Fly's.
        .route(
            "/hangar/v1/apps/{app_name}/logs",
            get(crate::logs::app_logs),
        )
        .route(
            "/hangar/v1/apps/{app_name}/machines/{machine_id}/schedule",
            get(crate::machine_views::get),
        )
        .route(
            "/hangar/v1/apps/{app_name}/machines/{machine_id}/stats",
            get(crate::machine_views::stats),
        )
        .route(
            "/hangar/v1/apps/{app_name}/services",
            get(crate::services::list),
        )
        .route(
            "/hangar/v1/images",
            get(crate::images::list).delete(crate::images::remove),
        )
        .route(
            "/hangar/v1/apps/{app_name}/machines/{machine_id}/console",
            post(crate::console::console),
        )
        .route(
            "/hangar/v1/apps/{app_name}/machines/{machine_id}/backhaul",
            post(crate::backhaul::serve),
        )
        .route(
            "/hangar/v1/apps/{app_name}/machines/{machine_id}/proxy-start",
            post(crate::backhaul::start),
        )
        .route("/hangar/v1/hosts", get(crate::hosts::list))
        .route("/hangar/v1/images/inspect", get(crate::images::inspect))
        .route("/hangar/v1/images/export", get(crate::images::export))
        .route("/hangar/v1/images/pull", post(crate::images::pull))
        .route("/hangar/v1/images/import", post(crate::images::import))
        .route("/hangar/v1/images/prune", post(crate::images::prune))
        .route_layer(middleware::from_fn_with_state(
            forward_state,
            crate::forward::to_owner,
        ))
        .route_layer(middleware::from_fn_with_state(tokens, require_token))
        .route_layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::track_requests,
        ))
        .with_state(state);
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi.to_string(),
                )
            }),
        )
        .route("/healthz", get(healthz).with_state(health))
        .merge(api)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(crate::extract::MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_id))
}

/// `GET /healthz` for load balancers and service managers: 200 `ok` while the API serves and
/// the store answers, 503 with the reason otherwise. No token: it tells nothing about machines.
async fn healthz(State(h): State<AppState>) -> Response {
    match h.store_ok().await {
        Ok(()) => (axum::http::StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        )
            .into_response(),
    }
}

/// Accepts `Bearer <token>` and `FlyV1 <token>[,<token>…]` (fly-go sends FlyV1 for macaroons).
/// `tokens[0]` is the admin token; `tokens[1]`, in cluster mode, the cluster's (another host
/// forwarding a request), which marks the request as coming from a peer.
async fn require_token(
    State(tokens): State<Arc<[String]>>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let presented: Vec<&str> = match header.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => vec![rest.trim()],
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("flyv1") => {
            rest.split(',').map(str::trim).collect()
        }
        _ => Vec::new(),
    };
    let matches = |t: &String| {
        presented
            .iter()
            .any(|p| constant_time_eq(p.as_bytes(), t.as_bytes()))
    };
    // Another host's token counts only on a TLS connection from it (or the local socket,
    // which has no peer address): never one that crossed the network in the clear.
    let private = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::cluster_tls::Peer>>()
        .is_none_or(|c| c.0.tls);
    if private && tokens.iter().skip(1).any(matches) {
        req.extensions_mut().insert(crate::forward::FromClusterPeer);
        next.run(req).await
    } else if tokens.first().is_some_and(matches) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn request_id(req: Request, next: Next) -> Response {
    let id = hangar_api::ids::new_ulid();
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(hangar_api::REQUEST_ID_HEADER, v);
    }
    if res.status() == StatusCode::PAYLOAD_TOO_LARGE
        && res
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_none_or(|v| v != "application/json")
    {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            .into_response();
    }
    res
}

/// Holds the exclusive lock on the data dir for the daemon's lifetime.
pub struct DataDirLock {
    _lock: Flock<File>,
}

pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join("daemon.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            writeln!(lock, "{}", std::process::id())?;
            Ok(DataDirLock { _lock: lock })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!(
                "another hangar daemon (pid {}) is already running on {}",
                pid.trim(),
                data_dir.display()
            )
        }
        Err((_, e)) => Err(e).with_context(|| format!("failed to lock {}", path.display())),
    }
}

/// Reads the admin token, creating it (mode 0600) on first start.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<(String, bool)> {
    match fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("failed to create {}", tmp.display()))?;
        writeln!(f, "{token}")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok((token, true))
}
