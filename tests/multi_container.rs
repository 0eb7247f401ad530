//! Multi-container ordering seen from the API: a diamond-shaped dependency graph starts in
//! order (from the container events' timestamps), and a machine stop stops dependents first.

mod common;

use common::test_image as image;

use std::collections::HashMap;

use common::Daemon;
use serde_json::{json, Value};

fn c(name: &str, deps: &[&str]) -> Value {
    json!({
        "name": name,
        "image": image(),
        // sh as PID 1 ignores SIGINT/SIGTERM without a trap; trap them so stop order shows.
        "cmd": ["sh", "-c", "trap 'echo stopping; exit 0' INT TERM; while true; do sleep 0.1; done"],
        "depends_on": deps.iter().map(|d| json!({"name": d, "condition": "started"})).collect::<Vec<_>>(),
    })
}

/// Container name → timestamps (ms) of its events of `kind`.
async fn event_times(d: &Daemon, app: &str, id: &str, kind: &str) -> HashMap<String, i64> {
    let events: Vec<Value> = d
        .get(&format!("/v1/apps/{app}/machines/{id}/events?limit=50"))
        .await
        .json()
        .unwrap();
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .filter_map(|e| {
            Some((
                e["request"]["container"].as_str()?.to_string(),
                e["timestamp"].as_i64()?,
            ))
        })
        .collect()
}

#[tokio::test]
async fn test_diamond_start_order_and_reverse_stop() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("dia").await;
    // top -> (left, right) -> bottom
    let config = json!({"containers": [
        c("bottom", &["left", "right"]),
        c("left", &["top"]),
        c("right", &["top"]),
        c("top", &[]),
    ]});
    let id = d.launch("dia", json!({"config": config})).await;
    d.wait_state("dia", &id, "started").await;
    // Events arrive from Pilot's stream a moment after the state.
    let mut started = HashMap::new();
    for _ in 0..100 {
        started = event_times(&d, "dia", &id, "container_started").await;
        if started.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(started.len(), 4, "{started:?}");
    assert!(
        started["top"] <= started["left"] && started["top"] <= started["right"],
        "{started:?}"
    );
    assert!(
        started["left"] <= started["bottom"] && started["right"] <= started["bottom"],
        "{started:?}"
    );

    let r = d
        .post(
            &format!("/v1/apps/dia/machines/{id}/stop"),
            json!({"timeout": "5s"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("dia", &id, "stopped").await;
    let mut exited = HashMap::new();
    for _ in 0..100 {
        exited = event_times(&d, "dia", &id, "container_exited").await;
        if exited.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(exited.len(), 4, "{exited:?}");
    assert!(
        exited["bottom"] <= exited["left"] && exited["bottom"] <= exited["right"],
        "dependents stop first: {exited:?}"
    );
    assert!(
        exited["left"] <= exited["top"] && exited["right"] <= exited["top"],
        "{exited:?}"
    );
    let r = d.delete(&format!("/v1/apps/dia/machines/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Top-level `checks` of a multi-container machine run on its shared network and are reported
/// by name; a failing one gates no container.
#[tokio::test]
async fn test_top_level_checks_on_a_multi_container_machine() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("tlc").await;
    let config = json!({
        "containers": [
            {"name": "web", "image": image(),
             "cmd": ["sh", "-c", "mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 18090 -h /w"],
             "healthchecks": [{"name": "up", "tcp": {"port": 18090}, "interval": 1, "timeout": 1}]},
            {"name": "side", "image": image(), "cmd": ["sleep", "300"],
             "depends_on": [{"name": "web", "condition": "healthy"}]},
        ],
        "checks": {
            "page": {"type": "http", "port": 18090, "path": "/", "interval": "1s", "timeout": "1s"},
            "dead": {"type": "tcp", "port": 18091, "interval": "1s", "timeout": "1s"},
        },
    });
    let id = d.launch("tlc", json!({"config": config})).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let m = loop {
        let m: Value = d
            .get(&format!("/v1/apps/tlc/machines/{id}"))
            .await
            .json()
            .unwrap();
        let status = |name: &str| {
            m["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == name)
                .map(|c| c["status"].as_str().unwrap_or_default().to_string())
        };
        let side_running = m["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == "side" && c["state"] == "running");
        if status("page").as_deref() == Some("passing")
            && status("dead").as_deref() == Some("critical")
            && status("web:up").as_deref() == Some("passing")
            && side_running
        {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checks never settled: {m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let web = m["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web")
        .unwrap();
    assert_eq!(
        web["health"], "healthy",
        "the failing machine check is not web's: {m}"
    );
    // The list shows the same live checks and containers as the single GET.
    let list: Vec<Value> = d.get("/v1/apps/tlc/machines").await.json().unwrap();
    let listed = list.iter().find(|x| x["id"] == id.as_str()).unwrap();
    assert_eq!(
        listed["checks"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    assert_eq!(
        listed["containers"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    d.destroy_machine("tlc", &id, true).await;
}
