//! Apps, authentication and daemon process behaviour against a real daemon.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{error_text, hangar_bin, Daemon};
use hangar_client::Auth;
use serde_json::{json, Value};

#[tokio::test]
async fn test_auth_required_with_fly_error_body() {
    let d = Daemon::start().await;
    for auth in [
        Auth::None,
        Auth::Header("Bearer wrong".into()),
        Auth::Header(format!("Basic {}", d.token)),
        Auth::Header("Bearer".into()),
    ] {
        let r = d
            .client
            .get("/v1/apps")
            .auth(auth.clone())
            .send_raw()
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(error_text(&r).contains("unauthorized"));
    }
    let r = d
        .client
        .get("/v1/apps")
        .auth(Auth::Header(format!("FlyV1 {}", d.token)))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "FlyV1 scheme: {}", r.text());
    let r = d
        .client
        .get("/v1/apps")
        .auth(Auth::Header(format!("FlyV1 fm2_other,{}", d.token)))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "FlyV1 with several macaroons");
    // The OpenAPI document needs no token.
    let r = d
        .client
        .get("/openapi.json")
        .auth(Auth::None)
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let doc: Value = r.json().unwrap();
    assert!(doc["paths"]["/v1/apps/{app_name}/machines/{machine_id}/wait"].is_object());
    // Every operation documents the refusals that can come before its handler, and every
    // schema it references exists.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for code in ["400", "401"] {
                assert!(
                    op["responses"][code].is_object(),
                    "{method} {path} lacks {code}"
                );
            }
        }
    }
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "missing schema {name}"
        );
    }
    assert!(r.headers.get("fly-request-id").is_some());
}

#[tokio::test]
async fn test_token_file_is_private() {
    let d = Daemon::start().await;
    let meta = std::fs::metadata(d.data_dir.join("token")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // `hangar auth token` prints it.
    let out = std::process::Command::new(hangar_bin())
        .args(["auth", "token"])
        .env("HANGAR_DATA_DIR", &d.data_dir)
        .env_remove("HANGAR_API_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), d.token);
}

#[tokio::test]
async fn test_apps_crud() {
    let d = Daemon::start().await;
    let r = d
        .post("/v1/apps", json!({"name": "a1", "org_slug": "personal"}))
        .await;
    assert_eq!(r.status, 201);
    let created: Value = r.json().unwrap();
    assert_eq!(created["id"].as_str().unwrap().len(), 16);
    assert!(created["created_at"].as_i64().unwrap() > 1_600_000_000_000);

    // `app_name` is the older spelling; the org defaults to personal.
    let r = d.post("/v1/apps", json!({"app_name": "a2"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = d
        .post("/v1/apps", json!({"name": "other", "org_slug": "acme"}))
        .await;
    assert_eq!(r.status, 201);

    let r = d
        .post("/v1/apps", json!({"name": "a1", "org_slug": "personal"}))
        .await;
    assert_eq!(r.status, 422);
    let body: Value = r.json().unwrap();
    assert_eq!(body["status"], "name_taken");

    for bad in ["Upper", "with_underscore", "-dash", "", "a b"] {
        let r = d.post("/v1/apps", json!({"name": bad})).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
    }
    let r = d.post("/v1/apps", json!({"org_slug": "personal"})).await;
    assert_eq!(r.status, 400);
    let r = d
        .client
        .post("/v1/apps")
        .body(b"{not json".to_vec(), "application/json")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(error_text(&r).contains("invalid request body"));

    let r = d.get("/v1/apps/a1").await;
    assert_eq!(r.status, 200);
    let app: Value = r.json().unwrap();
    assert_eq!(app["name"], "a1");
    assert_eq!(app["organization"]["slug"], "personal");
    assert_eq!(app["machine_count"], 0);
    assert!(app["internal_numeric_id"].as_i64().unwrap() > 0);

    let r = d.get("/v1/apps/nope").await;
    assert_eq!(r.status, 404);

    let r = d.get("/v1/apps?org_slug=personal").await;
    let list: Value = r.json().unwrap();
    assert_eq!(list["total_apps"], 2);
    let names: Vec<_> = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a1", "a2"]);
    let list: Value = d.get("/v1/apps?org_slug=acme").await.json().unwrap();
    assert_eq!(list["total_apps"], 1);

    let r = d.delete("/v1/apps/a2").await;
    assert_eq!(r.status, 202);
    assert_eq!(d.get("/v1/apps/a2").await.status, 404);
    assert_eq!(d.delete("/v1/apps/a2").await.status, 404);
}

/// Machines that never started go with their app without `force` (reference 1.1); a running
/// one needing it is in tests/fly_compat.rs.
#[tokio::test]
async fn test_delete_app_takes_machines_that_never_started() {
    let d = Daemon::start().await;
    d.create_app("busy").await;
    let m = d.create_machine("busy", json!({})).await;
    let r = d.delete("/v1/apps/busy").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(d.get("/v1/apps/busy").await.status, 404);
    assert_eq!(
        d.get(&format!(
            "/v1/apps/busy/machines/{}",
            m["id"].as_str().unwrap()
        ))
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn test_unknown_routes_are_json_errors() {
    let d = Daemon::start().await;
    let r = d.get("/v1/nothing").await;
    assert_eq!(r.status, 404);
    error_text(&r);
    let r = d
        .client
        .put("/v1/apps")
        .json(&json!({}))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    error_text(&r);
}

#[tokio::test]
async fn test_second_daemon_on_same_data_dir_refuses() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // Machines reach their files through the data dir; the refused daemon must not change it.
    std::fs::set_permissions(&d.data_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let out = std::process::Command::new(hangar_bin())
        .args(["daemon", "--data-dir"])
        .arg(&d.data_dir)
        .arg("--socket")
        .arg(d.tmp.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(
        mode(&d.data_dir),
        0o711,
        "the refused daemon changed the data dir"
    );
    // The first daemon is unaffected.
    assert_eq!(d.get("/v1/apps").await.status, 200);
}

#[tokio::test]
async fn test_sigterm_shuts_down_cleanly() {
    let mut d = Daemon::start().await;
    let status = d.terminate();
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "socket removed on shutdown");
    // And it starts again on the same data dir.
    d.restart().await;
    assert_eq!(d.get("/v1/apps").await.status, 200);
}

#[tokio::test]
async fn test_tcp_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(hangar_bin())
        .args(["daemon", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("--socket")
        .arg(tmp.path().join("s.sock"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let client = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not listen on TCP"
        );
        if let Ok(t) = std::fs::read_to_string(tmp.path().join("data/token")) {
            let c = hangar_client::Client::new(
                hangar_client::Endpoint::Tcp {
                    host: "127.0.0.1".into(),
                    port,
                },
                Some(t.trim().to_string()),
            );
            if let Ok(r) = c.get("/v1/apps").send_raw().await {
                break (c, r);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(client.1.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn test_app_idempotency_key() {
    let d = Daemon::start().await;
    let r = d
        .post("/v1/apps", json!({"name": "idem", "idempotency_key": "k1"}))
        .await;
    assert_eq!(r.status, 201);
    let first: Value = r.json().unwrap();
    // The same key again (with the same name, or none) returns the first app.
    for body in [
        json!({"name": "idem", "idempotency_key": "k1"}),
        json!({"idempotency_key": "k1"}),
    ] {
        let r = d.post("/v1/apps", body).await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json::<Value>().unwrap()["id"], first["id"]);
    }
    // The same key with another name is refused, and creates nothing.
    let r = d
        .post(
            "/v1/apps",
            json!({"name": "other", "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(d.get("/v1/apps/other").await.status, 404);
}

/// `/healthz` answers without a token, for load balancers and service managers.
#[tokio::test]
async fn test_healthz_needs_no_token() {
    let d = Daemon::start().await;
    let anonymous =
        hangar_client::Client::new(hangar_client::Endpoint::Unix(d.socket.clone()), None);
    let r = anonymous.get("/healthz").send_raw().await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "ok");
    let r = anonymous.get("/v1/apps").send_raw().await.unwrap();
    assert_eq!(r.status, 401, "the API itself still needs the token");
}
