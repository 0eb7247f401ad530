//! Image management under `/hangar/v1/images` (Hangar's own prefix; `/v1` stays Fly's): list,
//! inspect, pull (NDJSON progress), import, export, remove and prune.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use hangar_image::{InUse, Progress, Reference};
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::service::{AppState, Images};

fn image_error(e: hangar_image::Error) -> ApiError {
    use hangar_image::Error as E;
    match e {
        E::NotFound(name) => ApiError::not_found(format!("image {name:?} not found")),
        E::Reference(r) => ApiError::bad_request(r.to_string()),
        E::InUse { image, users } => ApiError::conflict(format!(
            "image {image} is used by {}; destroy those machines first",
            users.join(", ")
        )),
        E::Registry { .. } | E::Auth { .. } | E::Http { .. } | E::NoMatchingPlatform { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())
        }
        // Problems with what the user handed us (an archive, a layout) are theirs to fix.
        E::Format { .. }
        | E::UnsupportedMediaType { .. }
        | E::Json { .. }
        | E::Layer { .. }
        | E::UnsafeEntry { .. }
        | E::DigestMismatch { .. }
        | E::SizeMismatch { .. } => ApiError::bad_request(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

fn images(h: &AppState) -> ApiResult<&Images> {
    h.images()
        .ok_or_else(|| ApiError::precondition("this daemon has no image store"))
}

/// `ref`: an image reference, or a manifest digest (`sha256:…` or a hex prefix of at least 12).
fn reference(q: &Query) -> ApiResult<String> {
    let name = q.get("ref").filter(|r| !r.is_empty()).ok_or_else(|| {
        ApiError::bad_request("the query parameter ref (an image reference) is required")
    })?;
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    let is_digest = hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_digest {
        Reference::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    Ok(name.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> hangar_image::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(image_error)
}

/// Every image reference or digest a machine (not destroyed) still uses.
async fn in_use(h: &AppState) -> ApiResult<InUse> {
    Ok(InUse::new(
        h.image_refs_in_use().await?.into_iter().map(|(r, _)| r),
    ))
}

pub async fn list(State(h): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let store = images(&h)?.store.clone();
    let list = blocking(move || store.list()).await?;
    Ok(Json(json!(list)))
}

pub async fn inspect(
    State(h): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let name = reference(&Query::parse(q.as_deref()))?;
    let store = images(&h)?.store.clone();
    let details = blocking(move || store.inspect(&name)).await?;
    Ok(Json(json!(details)))
}

/// `GET /hangar/v1/images/export?ref=NAME`: the image as an OCI archive (tar), streamed; its
/// index names it `image` (`oci-archive:FILE:image`). What a build uses to start `FROM` an
/// image that only this store has.
pub async fn export(State(h): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let name = reference(&Query::parse(q.as_deref()))?;
    let store = images(&h)?.store.clone();
    // Resolved first, so a missing image is a clean 404 rather than a cut-off stream.
    let n = name.clone();
    let s = store.clone();
    blocking(move || s.resolve(&n)).await?;
    let (reader, writer) = tokio::io::duplex(1 << 20);
    tokio::task::spawn_blocking(move || {
        let writer = tokio_util::io::SyncIoBridge::new(writer);
        if let Err(e) = store.export_oci_archive(&name, "image", writer) {
            tracing::warn!(image = %name, error = %e, "image export failed");
        }
    });
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

pub async fn remove(
    State(h): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let name = reference(&Query::parse(q.as_deref()))?;
    let users = h.image_refs_in_use().await?;
    let used = InUse::new(users.iter().map(|(r, _)| r.clone()));
    let store = images(&h)?.store.clone();
    let result = tokio::task::spawn_blocking(move || store.remove(&name, &used))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match result {
        Ok(report) => Ok(Json(json!(report))),
        // Name the machines, not the references they matched by.
        Err(hangar_image::Error::InUse { image, users: refs }) => {
            // The store reports normalised names; compare machines' references the same way.
            let matches = |r: &str| {
                refs.iter().any(|u| u == r)
                    || hangar_image::Reference::parse(r).is_ok_and(|p| {
                        refs.contains(&p.to_string())
                            || p.digest.as_ref().is_some_and(|d| refs.contains(d))
                    })
            };
            let mut machines: Vec<&str> = users
                .iter()
                .filter(|(r, _)| matches(r))
                .map(|(_, m)| m.as_str())
                .collect();
            machines.sort_unstable();
            machines.dedup();
            Err(ApiError::conflict(format!(
                "image {image} is used by machine(s) {}; destroy them first",
                machines.join(", ")
            )))
        }
        Err(e) => Err(image_error(e)),
    }
}

pub async fn prune(
    State(h): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let all = Query::parse(q.as_deref()).bool("all", false)?;
    let used = in_use(&h).await?;
    let store = images(&h)?.store.clone();
    let report = blocking(move || store.prune(&used, all)).await?;
    Ok(Json(json!(report)))
}

/// Imports the archive in the request body (a `docker save` or OCI archive, optionally gzip-
/// or zstd-compressed), streamed as it arrives. The daemon never opens a path the caller names:
/// it runs as root, and a caller must not import (or read back) what it could not read itself.
pub async fn import(
    State(h): State<AppState>,
    RawQuery(q): RawQuery,
    body: axum::body::Body,
) -> ApiResult<Json<serde_json::Value>> {
    let q = Query::parse(q.as_deref());
    if q.get("path").is_some() {
        return Err(ApiError::bad_request(
            "the daemon does not read files named by the caller; send the archive as the request \
             body (`hangar image import FILE` does)",
        ));
    }
    let tag = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(t) => Some(Reference::parse(t).map_err(|e| ApiError::bad_request(e.to_string()))?),
        None => None,
    };
    let store = images(&h)?.store.clone();
    let opts = hangar_image::ImportOptions {
        reference: tag,
        select: q
            .get("select")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        ..Default::default()
    };
    use futures_util::TryStreamExt;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let records =
        blocking(move || store.import_archive(reader, "the uploaded archive", &opts)).await?;
    Ok(Json(json!(records)))
}

/// Streams NDJSON progress: `{"event": …}` lines, then `{"done": digest}` or `{"error": …}`.
pub async fn pull(State(h): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let name = reference(&Query::parse(q.as_deref()))?;
    let r = Reference::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let imgs = images(&h)?;
    let store = imgs.store.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    if !imgs.pull.allowed {
        return Err(ApiError::precondition(
            hangar_image::Error::PullsOff(r.to_string()).to_string(),
        ));
    }
    let mut opts = imgs.pull.clone();
    let progress_tx = tx.clone();
    let counted = imgs.pull.progress.clone();
    opts.progress = Some(Arc::new(move |p: Progress| {
        if let Some(counted) = &counted {
            counted(p.clone());
        }
        let v = match p {
            Progress::Resolved {
                manifest_digest,
                layers,
            } => json!({"event": "resolved", "digest": manifest_digest.to_string(),
                "layers": layers.iter().map(|(d, s)| json!({"digest": d.to_string(), "size": s})).collect::<Vec<_>>()}),
            Progress::LayerCached { digest, total } => {
                json!({"event": "cached", "digest": digest.to_string(), "total": total})
            }
            Progress::LayerBytes {
                digest,
                done,
                total,
            } => {
                json!({"event": "bytes", "digest": digest.to_string(), "done": done, "total": total})
            }
            Progress::LayerVerified { digest } => {
                json!({"event": "verified", "digest": digest.to_string()})
            }
            Progress::LayerUnpacked { digest } => {
                json!({"event": "unpacked", "digest": digest.to_string()})
            }
            Progress::Done { manifest_digest } => {
                json!({"event": "stored", "digest": manifest_digest.to_string()})
            }
        };
        let _ = progress_tx.send(Bytes::from(format!("{v}\n")));
    }));
    let metrics = h.metrics();
    tokio::spawn(async move {
        let result = hangar_image::pull(&store, &r, &opts).await;
        metrics
            .image_pulls
            .get_or_create(&crate::counters::ResultLabels {
                result: if result.is_ok() { "ok" } else { "error" }.into(),
            })
            .inc();
        let line = match result {
            Ok(rec) => json!({"done": rec.manifest_digest.to_string(), "reference": r.to_string()}),
            Err(e) => json!({"error": e.to_string()}),
        };
        let _ = tx.send(Bytes::from(format!("{line}\n")));
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
