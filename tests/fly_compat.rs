//! What fly-go's `flaps` client (flyctl's) and fly-admin send must mean what it means on Fly.
//! The bodies and query strings below are the exact ones those clients produce.

mod common;

use std::time::{Duration, Instant};

use common::{error_text, test_image, Daemon};
use serde_json::{json, Value};

async fn started(d: &Daemon, app: &str, script: &str) -> String {
    let r = d
        .post(
            &format!("/v1/apps/{app}/machines"),
            json!({"config": {"image": test_image(), "restart": {"policy": "no"},
                "init": {"exec": ["/bin/sh", "-c", script]}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.wait_state(app, &id, "started").await;
    id
}

async fn last_exit(d: &Daemon, app: &str, id: &str) -> Value {
    d.exit_events(app, id)
        .await
        .into_iter()
        .next()
        .expect("an exit event")["request"]["exit_event"]
        .clone()
}

/// A process that needs a moment to shut down after SIGINT (as a database does).
const SLOW_SHUTDOWN: &str =
    "trap 'sleep 1.5; echo clean; exit 0' INT; echo ready; while true; do sleep 0.1; done";

/// fly-go always sends `"timeout":"0s"`: it means the default grace period, not none.
#[tokio::test]
async fn stop_with_a_zero_timeout_waits_for_the_handler() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("stop0").await;
    let id = started(&d, "stop0", SLOW_SHUTDOWN).await;
    let t0 = Instant::now();
    let r = d
        .client
        .raw(
            hyper::Method::POST,
            &format!("/v1/apps/stop0/machines/{id}/stop"),
            &[],
            Some(format!(r#"{{"id":"{id}","timeout":"0s"}}"#).into_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("stop0", &id, "stopped").await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "stopped before the handler ended"
    );
    let exit = last_exit(&d, "stop0", &id).await;
    assert_eq!(exit["exit_code"], 0, "killed instead of stopped: {exit}");
}

/// flaps sends restart parameters in the query, fly-admin in the body; both count, and
/// `force_stop` kills without a grace period.
#[tokio::test]
async fn restart_takes_its_parameters_from_the_query_or_the_body() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("rst").await;
    let id = started(&d, "rst", SLOW_SHUTDOWN).await;
    let restart = |query: &'static str, body: Option<Value>| {
        let client = d.client.clone();
        let id = id.clone();
        async move {
            let r = client
                .raw(
                    hyper::Method::POST,
                    &format!("/v1/apps/rst/machines/{id}/restart{query}"),
                    &[],
                    body.map(|b| b.to_string().into_bytes()),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    // Body (fly-admin): SIGTERM, which the script does not trap, ends it at once.
    let t0 = Instant::now();
    restart(
        "",
        Some(json!({"signal": "SIGTERM", "timeout": 30_000_000_000u64})),
    )
    .await;
    d.wait_state("rst", &id, "started").await;
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "the body's signal was ignored"
    );
    let exit = last_exit(&d, "rst", &id).await;
    assert_eq!(exit["signal"], 15, "{exit}");

    // Query (flaps): force_stop kills without waiting for the handler.
    let t0 = Instant::now();
    restart("?force_stop=true", None).await;
    d.wait_state("rst", &id, "started").await;
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "force_stop waited"
    );
    let exit = last_exit(&d, "rst", &id).await;
    assert_eq!(exit["signal"], 9, "{exit}");

    // flaps' plain restart (force_stop=false, no timeout): the default grace period.
    let t0 = Instant::now();
    restart("?force_stop=false", None).await;
    d.wait_state("rst", &id, "started").await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(last_exit(&d, "rst", &id).await["exit_code"], 0);
    d.destroy_machine("rst", &id, true).await;
}

/// Request fields beyond the config either take effect or are refused by name.
#[tokio::test]
async fn request_fields_are_honoured_or_refused() {
    let d = Daemon::start().await;
    d.create_app("fields").await;
    let base = json!({"image": "busybox"});
    for (field, value) in [("lsvd", json!(true)), ("min_secrets_version", json!(3))] {
        let mut body = json!({"skip_launch": true, "config": base});
        body[field] = value;
        let r = d.post("/v1/apps/fields/machines", body).await;
        assert!(r.status.is_client_error(), "{field}: {}", r.text());
        assert!(error_text(&r).contains(field), "{field}: {}", r.text());
    }
    let m = d.create_machine("fields", json!({"name": "before"})).await;
    let id = m["id"].as_str().unwrap();
    let path = format!("/v1/apps/fields/machines/{id}");
    // name: renames; skip_service_registration: cordons.
    let r = d
        .post(
            &path,
            json!({"skip_launch": true, "name": "after", "skip_service_registration": true, "config": base}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got: Value = d.get(&path).await.json().unwrap();
    assert_eq!(got["name"], "after", "{got}");
    assert_eq!(got["cordoned"], true, "{got}");
    // region elsewhere and lease_ttl are refused by name.
    for (field, value) in [("region", json!("ams")), ("lease_ttl", json!(30))] {
        let mut body = json!({"skip_launch": true, "config": base});
        body[field] = value;
        let r = d.post(&path, body).await;
        assert_eq!(r.status, 400, "{field}: {}", r.text());
        assert!(error_text(&r).contains(field), "{}", r.text());
    }
    // A name another machine has is a conflict, and changes nothing.
    d.create_machine("fields", json!({"name": "taken"})).await;
    let r = d
        .post(
            &path,
            json!({"skip_launch": true, "name": "taken", "config": base}),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.text());
    let got: Value = d.get(&path).await.json().unwrap();
    assert_eq!(got["name"], "after");
}

/// `app_role_id` at create is the app's `app_role`, and lists filter by it.
#[tokio::test]
async fn app_roles_are_kept_and_filtered() {
    let d = Daemon::start().await;
    let r = d
        .post(
            "/v1/apps",
            json!({"name": "pg", "org_slug": "personal", "app_role_id": "postgres_cluster"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    d.create_app("plain").await;
    let got: Value = d.get("/v1/apps/pg").await.json().unwrap();
    assert_eq!(got["app_role"], "postgres_cluster", "{got}");
    let list: Value = d
        .get("/v1/apps?org_slug=personal&app_role=postgres_cluster")
        .await
        .json()
        .unwrap();
    let names: Vec<&str> = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pg"], "{list}");
}

/// An app whose machines are all stopped or never started is deleted without `force`, with
/// them (fly-admin's deleteApp never sends force).
#[tokio::test]
async fn deleting_an_app_of_stopped_machines_needs_no_force() {
    let d = Daemon::start().await;
    d.create_app("gone").await;
    d.create_machine("gone", json!({})).await;
    let r = d.delete("/v1/apps/gone").await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(d.get("/v1/apps/gone").await.status, 404);
}

/// A running machine keeps its app from being deleted without `force`; `force` stops it.
#[tokio::test]
async fn deleting_an_app_with_a_running_machine_needs_force() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("busy").await;
    let id = started(&d, "busy", "sleep 300").await;
    let r = d.delete("/v1/apps/busy").await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(
        error_text(&r).contains("force") && error_text(&r).contains(&id),
        "{}",
        r.text()
    );
    let r = d.delete("/v1/apps/busy?force=true").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(d.get("/v1/apps/busy").await.status, 404);
}

/// Endpoints of Fly's API that Hangar does not serve say so, distinct from a missing app.
#[tokio::test]
async fn unserved_endpoints_are_501_not_404() {
    let d = Daemon::start().await;
    d.create_app("x").await;
    for path in [
        "/v1/apps/x/secretkeys",
        "/v1/postgres/abc",
        "/v1/platform/placements",
    ] {
        let r = d.get(path).await;
        assert_eq!(r.status, 501, "{path}: {}", r.text());
        assert!(
            error_text(&r).starts_with("not supported by Hangar"),
            "{}",
            r.text()
        );
    }
    let r = d.get("/v1/apps/x/nonsense").await;
    assert_eq!(r.status, 404, "{}", r.text());
}

/// flaps' GetRegions: `{"Regions": [fly.Region], "Nearest": code}`, this host's region.
#[tokio::test]
async fn platform_regions_name_this_hosts_region() {
    let d = Daemon::start().await;
    let r = d.get("/v1/platform/regions").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json().unwrap();
    assert_eq!(v["Nearest"], "local", "{v}");
    assert_eq!(v["Regions"][0]["code"], "local", "{v}");
    assert!(v["Regions"][0]["capacity"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(d.get("/v1/platform/placements").await.status, 501);
}
