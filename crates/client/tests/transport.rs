//! The client against a tiny axum server on a unix socket: auth header, error mapping, raw
//! responses, query strings and the connection-failure message.

use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use hangar_client::{Auth, Client, ClientError, Endpoint, Method, WaitOptions};
use serde_json::{json, Value};

fn router() -> Router {
    Router::new()
        .route(
            "/v1/echo",
            get(|headers: HeaderMap, RawQuery(q): RawQuery| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let nonce = headers
                    .get("fly-machine-lease-nonce")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                Json(json!({"auth": auth, "query": q, "nonce": nonce}))
            })
            .post(|Json(body): Json<Value>| async move { (StatusCode::CREATED, Json(body)) }),
        )
        .route(
            "/v1/apps/{app}/machines/{id}",
            get(|Path((_app, _id)): Path<(String, String)>| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error": "machine not found"})),
                )
            }),
        )
        .route(
            "/v1/apps/{app}/machines/{id}/wait",
            get(|RawQuery(q): RawQuery| async move {
                assert_eq!(
                    q.as_deref(),
                    Some("state=started&state=stopped&timeout=5&version=01ABC")
                );
                (
                    StatusCode::REQUEST_TIMEOUT,
                    Json(json!({"error": "deadline exceeded"})),
                )
            }),
        )
        .route(
            "/v1/apps/{app}/machines/{id}/lease",
            post(|| async { StatusCode::NO_CONTENT }).delete(|| async { StatusCode::OK }),
        )
}

async fn serve() -> (tempfile::TempDir, Endpoint) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router()).await.unwrap();
    });
    (dir, Endpoint::Unix(sock))
}

#[tokio::test]
async fn sends_bearer_token_and_queries() {
    let (_dir, endpoint) = serve().await;
    let client = Client::new(endpoint, Some("sekret".into()));
    let v: Value = client
        .get("/v1/echo")
        .query("org_slug", "per sonal")
        .lease_nonce(Some("abc123"))
        .send()
        .await
        .unwrap();
    assert_eq!(v["auth"], "Bearer sekret");
    assert_eq!(v["query"], "org_slug=per%20sonal");
    assert_eq!(v["nonce"], "abc123");

    // Absent and custom Authorization headers, for auth conformance tests.
    let v: Value = client
        .get("/v1/echo")
        .auth(Auth::None)
        .send()
        .await
        .unwrap();
    assert_eq!(v["auth"], Value::Null);
    let raw = client
        .raw(
            Method::GET,
            "/v1/echo",
            &[("Authorization", "Bearer other")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(raw.status, 200);
    assert_eq!(raw.json::<Value>().unwrap()["auth"], "Bearer other");
}

#[tokio::test]
async fn posts_json_and_reads_raw() {
    let (_dir, endpoint) = serve().await;
    let client = Client::new(endpoint, None);
    let raw = client
        .post("/v1/echo")
        .json(&json!({"name": "x"}))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(raw.status, 201);
    assert_eq!(raw.json::<Value>().unwrap(), json!({"name": "x"}));
}

#[tokio::test]
async fn maps_errors() {
    let (_dir, endpoint) = serve().await;
    let client = Client::new(endpoint, None);
    let err = client
        .get_machine("app", "0123456789abcd")
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.to_string(), "machine not found (HTTP 404)");

    let err = client
        .wait_machine(
            "app",
            "0123456789abcd",
            &WaitOptions {
                states: vec!["started".into(), "stopped".into()],
                timeout_secs: Some(5),
                version: Some("01ABC".into()),
                from_event_id: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(408));

    // Bodies that don't matter are not decoded.
    client
        .release_lease("app", "0123456789abcd", "nonce")
        .await
        .unwrap();
    // Bodies that do matter must decode.
    let err = client
        .acquire_lease("app", "0123456789abcd", 120, Some("test"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
}

#[tokio::test]
async fn connection_failure_says_how_to_start_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(Endpoint::Unix(dir.path().join("missing.sock")), None);
    let err = client.list_apps("personal").await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot reach the Hangar daemon at unix://"),
        "{msg}"
    );
    assert!(msg.contains("start it with `hangar daemon`"), "{msg}");
    assert!(!msg.contains('\n'));
}
