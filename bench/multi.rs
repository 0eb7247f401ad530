//! Multi-container figures: time from create to all containers started for a 5-container chain
//! gated by tcp checks at a 1 s interval, and the CPU Pilot uses supervising 20 containers with
//! health checks. Prints figures; asserts nothing.
//!
//!     cargo build --release && cargo run --release --example bench_multi
//!
//! Needs root and the loopback registry with the fixtures (`scripts/registry start && push`).

#[path = "common.rs"]
mod common;

use common::{start_daemon, test_image as image};

use std::time::Duration;

use hangar_client::Client;
use serde_json::{json, Value};

fn server(name: &str, port: u16, depends: Option<&str>) -> Value {
    let mut c = json!({
        "name": name,
        "image": image(),
        "cmd": ["httpd", "-f", "-p", port.to_string(), "-h", "/"],
        "healthchecks": [{"name": "tcp", "tcp": {"port": port}, "interval": 1, "timeout": 1,
            "grace_period": 0, "success_threshold": 1, "failure_threshold": 3, "kind": "readiness"}],
    });
    if let Some(dep) = depends {
        c["depends_on"] = json!([{"name": dep, "condition": "healthy"}]);
    }
    c
}

async fn run(c: &Client, app: &str, containers: Vec<Value>) -> (String, Duration) {
    let config = json!({"containers": containers, "restart": {"policy": "no"}});
    common::create_started(c, app, config).await
}

#[tokio::main]
async fn main() {
    common::check_args(&[], "bench_multi: create to all containers started for a 5-container chain gated by checks, and Pilot's CPU supervising 20 containers");
    let d = start_daemon("multi").await;
    let c = &d.client;
    c.post("/v1/apps")
        .json(&json!({"name": "multi"}))
        .send_raw()
        .await
        .expect("app");
    // Warm the image cache.
    let (warm, _) = run(c, "multi", vec![server("w", 9999, None)]).await;
    let _ = c
        .delete(format!("/v1/apps/multi/machines/{warm}?force=true"))
        .send_raw()
        .await;

    println!("5-container chain, each gated on the previous one's tcp check (1 s interval):");
    let mut times = Vec::new();
    for round in 0..5 {
        let chain: Vec<Value> = (0..5u16)
            .map(|i| {
                let prev = (i > 0).then(|| format!("c{}", i - 1));
                server(&format!("c{i}"), 9000 + i, prev.as_deref())
            })
            .collect();
        let (id, t) = run(c, "multi", chain).await;
        println!(
            "  round {round}: create -> all 5 started in {:.0} ms",
            t.as_secs_f64() * 1e3
        );
        times.push(t);
        let _ = c
            .delete(format!("/v1/apps/multi/machines/{id}?force=true"))
            .send_raw()
            .await;
    }
    times.sort();
    println!(
        "  median: {:.0} ms",
        times[times.len() / 2].as_secs_f64() * 1e3
    );

    println!("\nPilot supervising 20 containers with tcp + http health checks every 1 s:");
    let containers: Vec<Value> = (0..20u16)
        .map(|i| {
            let port = 9100 + i;
            json!({
                "name": format!("s{i}"),
                "image": image(),
                "cmd": ["httpd", "-f", "-p", port.to_string(), "-h", "/"],
                "healthchecks": [
                    {"name": "tcp", "tcp": {"port": port}, "interval": 1, "timeout": 1, "kind": "readiness"},
                    {"name": "http", "http": {"port": port, "path": "/etc/hostname", "method": "GET"}, "interval": 1, "timeout": 1, "kind": "liveness"}
                ],
            })
        })
        .collect();
    let (id, t) = run(c, "multi", containers).await;
    println!("  create -> 20 started: {:.0} ms", t.as_secs_f64() * 1e3);
    let state: Value = std::fs::read(d.dir.join("data/machines").join(&id).join("runtime.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let pid = state["pid"].as_i64().expect("pilot pid");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(30);
    let before = common::cpu_seconds(&[pid as u32]);
    tokio::time::sleep(window).await;
    let used = common::cpu_seconds(&[pid as u32]) - before;
    println!(
        "  Pilot CPU over {}s: {:.2}% of one core ({:.2} s)",
        window.as_secs(),
        used / window.as_secs_f64() * 100.0,
        used
    );
    let m: Value = c
        .get(format!("/v1/apps/multi/machines/{id}"))
        .send()
        .await
        .expect("get");
    let passing = m["checks"]
        .as_array()
        .map_or(0, |c| c.iter().filter(|k| k["status"] == "passing").count());
    println!("  checks passing: {passing}/40");
    let _ = c
        .delete(format!("/v1/apps/multi/machines/{id}?force=true"))
        .send_raw()
        .await;
}
