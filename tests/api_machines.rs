//! Machines, leases, metadata, wait and durability against a real daemon.

mod common;

use std::time::{Duration, Instant};

use common::{error_text, Daemon};
use serde_json::{json, Value};

fn id(m: &Value) -> String {
    m["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn test_create_shapes() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m = d
        .create_machine(
            "a1",
            json!({"config": {"image": "docker.io/library/nginx:latest", "env": {"A": "1"}}}),
        )
        .await;
    let mid = id(&m);
    assert_eq!(mid.len(), 14);
    assert!(mid.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(m["state"], "created");
    assert_eq!(m["instance_id"].as_str().unwrap().len(), 26);
    assert!(m["private_ip"].as_str().unwrap().starts_with("fdaa:"));
    let name = m["name"].as_str().unwrap();
    let parts: Vec<_> = name.split('-').collect();
    assert_eq!(parts.len(), 3, "{name}");
    assert_eq!(parts[2].len(), 4);
    assert!(m["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(m["events"][0]["type"], "launch");
    assert_eq!(m["events"][0]["status"], "created");
    assert_eq!(m["events"][0]["source"], "user");
    assert!(m["events"][0]["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(m["cordoned"], false);
    assert_eq!(m["host_status"], "ok");
    assert_eq!(
        m["config"]["guest"],
        json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
    );
    assert_eq!(m["image_ref"]["repository"], "library/nginx");
    assert_eq!(m["image_ref"]["tag"], "latest");
    assert!(m.get("nonce").is_none());

    let got: Value = d
        .get(&format!("/v1/apps/a1/machines/{mid}"))
        .await
        .json()
        .unwrap();
    assert_eq!(got["config"], m["config"]);
    assert_eq!(
        d.get("/v1/apps/a1/machines/00000000000000").await.status,
        404
    );
    assert_eq!(
        error_text(&d.get("/v1/apps/a1/machines/00000000000000").await),
        "machine not found"
    );
    assert_eq!(
        d.post(
            "/v1/apps/missing/machines",
            json!({"config": {"image": "busybox"}})
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn test_create_without_runtime_is_refused_and_changes_nothing() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let r = d
        .post(
            "/v1/apps/a1/machines",
            json!({"config": {"image": "busybox"}}),
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(error_text(&r).contains("no machine runtime"));
    let list: Vec<Value> = d.get("/v1/apps/a1/machines").await.json().unwrap();
    assert!(list.is_empty(), "no half-created machine: {list:?}");
}

#[tokio::test]
async fn test_config_round_trip_and_validation_errors() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m = d
        .create_machine(
            "a1",
            json!({"config": {
                "image": "nginx",
                "size": "performance-2x",
                "future_field": {"x": [1, 2]},
                "init": {"exec": ["/bin/sleep", "inf"], "new_init_knob": true},
                "stop_config": {"timeout": 30000000000u64, "signal": 15},
                "checks": {"web": {"type": "http", "port": 80, "interval": 15000000000u64, "timeout": "10s", "path": "/"}},
                "services": [
                    {"protocol": "tcp", "internal_port": 80, "autostop": "stop", "ports": [{"port": 80, "handlers": ["http"]}]},
                    {"protocol": "tcp", "internal_port": 81, "autostop": "suspend", "ports": [{"port": 81}]},
                    {"protocol": "tcp", "internal_port": 82, "autostop": "off", "ports": [{"port": 82}]}
                ]
            }}),
        )
        .await;
    let c = &m["config"];
    assert_eq!(
        c["guest"],
        json!({"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096})
    );
    assert_eq!(c["future_field"], json!({"x": [1, 2]}));
    assert_eq!(c["init"]["new_init_knob"], true);
    assert_eq!(
        c["stop_config"],
        json!({"timeout": "30s", "signal": "SIGTERM"})
    );
    assert_eq!(c["checks"]["web"]["interval"], "15s");
    assert_eq!(c["services"][0]["autostop"], true);
    assert_eq!(c["services"][1]["autostop"], "suspend");
    assert_eq!(c["services"][2]["autostop"], false);

    let cases = [
        (json!({}), "config.image"),
        (
            json!({"image": "nginx", "guest": {"cpu_kind": "shared", "cpus": 3, "memory_mb": 300}}),
            "config.guest.cpus",
        ),
        (
            json!({"image": "nginx", "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 300}}),
            "config.guest.memory_mb",
        ),
        (
            json!({"image": "nginx", "restart": {"policy": "sometimes"}}),
            "config.restart.policy",
        ),
        (
            json!({"image": "nginx", "schedule": "every-5m"}),
            "config.schedule",
        ),
        (
            json!({"image": "nginx", "files": [{"guest_path": "rel/path", "raw_value": "aGk="}]}),
            "guest_path",
        ),
        (
            json!({"image": "nginx", "files": [{"guest_path": "/x"}]}),
            "config.files[0]",
        ),
        (
            json!({"image": "nginx", "files": [{"guest_path": "/x", "raw_value": "!!!"}]}),
            "raw_value",
        ),
        (
            json!({"image": "nginx", "services": [{"protocol": "tcp", "internal_port": 80, "autostop": "sometimes"}]}),
            "autostop",
        ),
        (
            json!({"image": "nginx", "stop_config": {"signal": "SIGFOO"}}),
            "signal",
        ),
        (
            json!({"image": "nginx", "checks": {"c": {"type": "tcp", "port": 80, "interval": "-5s"}}}),
            "interval",
        ),
        (json!({"image": "Not A Ref"}), "config.image"),
        (
            json!({"containers": [{"name": "a", "image": "busybox", "depends_on": [{"name": "b", "condition": "started"}]}]}),
            "unknown container",
        ),
    ];
    for (config, needle) in cases {
        let r = d
            .post(
                "/v1/apps/a1/machines",
                json!({"skip_launch": true, "config": config}),
            )
            .await;
        assert_eq!(r.status, 400, "{config}: {}", r.text());
        let e = error_text(&r);
        assert!(
            e.contains(needle),
            "{config}: error {e:?} should mention {needle:?}"
        );
    }
    let list: Vec<Value> = d.get("/v1/apps/a1/machines").await.json().unwrap();
    assert_eq!(list.len(), 1, "rejected configs created nothing");
}

#[tokio::test]
async fn test_names_unique_per_app() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    d.create_app("a2").await;
    d.create_machine("a1", json!({"name": "web"})).await;
    let r = d
        .post(
            "/v1/apps/a1/machines",
            json!({"name": "web", "skip_launch": true, "config": {"image": "busybox"}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(error_text(&r).contains("already exists for app"));
    d.create_machine("a2", json!({"name": "web"})).await;
    let r = d
        .post(
            "/v1/apps/a1/machines",
            json!({"name": "bad name!", "skip_launch": true, "config": {"image": "busybox"}}),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn test_list_filters() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m1 = d
        .create_machine(
            "a1",
            json!({"region": "ord", "config": {"metadata": {"role": "db"}}}),
        )
        .await;
    let m2 = d.create_machine("a1", json!({"region": "syd"})).await;
    let ids = |r: Vec<Value>| r.iter().map(id).collect::<Vec<_>>();
    let all: Vec<Value> = d.get("/v1/apps/a1/machines").await.json().unwrap();
    assert_eq!(ids(all), [id(&m1), id(&m2)]);
    let r: Vec<Value> = d
        .get("/v1/apps/a1/machines?region=ord")
        .await
        .json()
        .unwrap();
    assert_eq!(ids(r), [id(&m1)]);
    let r: Vec<Value> = d
        .get("/v1/apps/a1/machines?metadata.role=db")
        .await
        .json()
        .unwrap();
    assert_eq!(ids(r), [id(&m1)]);
    let r: Vec<Value> = d
        .get("/v1/apps/a1/machines?metadata.role=web")
        .await
        .json()
        .unwrap();
    assert!(r.is_empty());
    let r: Vec<Value> = d
        .get("/v1/apps/a1/machines?state=created,stopped")
        .await
        .json()
        .unwrap();
    assert_eq!(r.len(), 2);
    let r: Vec<Value> = d
        .get("/v1/apps/a1/machines?state=started")
        .await
        .json()
        .unwrap();
    assert!(r.is_empty());
    assert_eq!(d.get("/v1/apps/a1/machines?state=bogus").await.status, 400);
    assert_eq!(
        d.get("/v1/apps/a1/machines?summary=maybe").await.status,
        400
    );
    let r: Vec<Value> = d
        .get("/v1/apps/a1/machines?summary=true")
        .await
        .json()
        .unwrap();
    for omitted in ["config", "events", "checks", "host_status", "nonce"] {
        assert!(
            r[0].get(omitted).is_none(),
            "summary has {omitted}: {}",
            r[0]
        );
    }
    assert_eq!(r[0]["state"], "created");
    // A path that does not decode is a 400 with Fly's error body.
    let r = d.get("/v1/apps/%FF/machines").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(common::error_text(&r).contains("path"), "{}", r.text());

    let r = d.delete(&format!("/v1/apps/a1/machines/{}", id(&m2))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json::<Value>().unwrap(), json!({"ok": true}));
    let r: Vec<Value> = d.get("/v1/apps/a1/machines").await.json().unwrap();
    assert_eq!(ids(r), [id(&m1)]);
    let r: Vec<Value> = d
        .get("/v1/apps/a1/machines?include_deleted=true")
        .await
        .json()
        .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[1]["state"], "destroyed");
    assert_eq!(
        d.get(&format!("/v1/apps/a1/machines/{}", id(&m2)))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn test_update_versions_and_replaced_wait() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m = d
        .create_machine(
            "a1",
            json!({"region": "ord", "config": {"image": "nginx:1.26"}}),
        )
        .await;
    let mid = id(&m);
    let v1 = m["instance_id"].as_str().unwrap().to_string();
    let path = format!("/v1/apps/a1/machines/{mid}");

    let r = d.post(&path, json!({"current_version": "01HEPA330HZ37A78TK080NAK1M", "skip_launch": true, "config": {"image": "nginx:1.27"}})).await;
    assert_eq!(r.status, 412, "stale current_version: {}", r.text());

    // A machine does not move region by an update: said, not silently ignored.
    let r = d.post(&path, json!({"current_version": v1, "skip_launch": true, "region": "syd", "config": {"image": "nginx:1.27"}})).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = d.post(&path, json!({"current_version": v1, "skip_launch": true, "region": "ord", "config": {"image": "nginx:1.27"}})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m2: Value = r.json().unwrap();
    let v2 = m2["instance_id"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert_eq!(m2["region"], "ord");
    assert_eq!(m2["state"], "created");
    assert_eq!(m2["config"]["image"], "nginx:1.27");
    let kinds: Vec<_> = m2["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "update");

    let versions: Vec<Value> = d.get(&format!("{path}/versions")).await.json().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], v2.as_str());
    assert_eq!(versions[1]["user_config"]["image"], "nginx:1.26");

    let r = d
        .get(&format!("{path}/wait?state=settled&version={v1}&timeout=1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["state"], "replaced");
    let r = d
        .get(&format!("{path}/wait?state=started&version={v1}&timeout=1"))
        .await;
    assert_eq!(r.status, 400);
    assert!(error_text(&r).contains("currently replaced"));
    let r = d
        .get(&format!(
            "{path}/wait?state=created&instance_id={v2}&timeout=1"
        ))
        .await;
    assert_eq!(r.status, 200);
    // from_event_id: only a transition after that event counts.
    let newest: Vec<Value> = d
        .get(&format!("{path}/events?limit=1"))
        .await
        .json()
        .unwrap();
    let e = newest[0]["id"].as_str().unwrap().to_string();
    let r = d
        .get(&format!(
            "{path}/wait?state=created&from_event_id={e}&timeout=1"
        ))
        .await;
    assert_eq!(r.status, 408, "{}", r.text());
    let r = d
        .get(&format!("{path}/wait?state=created&from_event_id=bogus"))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    let r = d
        .post(
            &path,
            json!({"skip_launch": true, "config": {"image": "nginx", "guest": {"cpus": 3}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    let after: Value = d.get(&path).await.json().unwrap();
    assert_eq!(
        after["instance_id"],
        v2.as_str(),
        "failed updates change nothing"
    );
    // A machine that was not running gets the new version and stays down, as on Fly, even
    // without skip_launch (so no runtime is needed here).
    let r = d
        .post(
            &path,
            json!({"skip_launch": false, "config": {"image": "nginx"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after: Value = d.get(&path).await.json().unwrap();
    assert_eq!(after["state"], "created", "{after}");
    assert_ne!(after["instance_id"], v2.as_str());
}

#[tokio::test]
async fn test_lease_lifecycle_and_enforcement() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m = d.create_machine("a1", json!({})).await;
    let path = format!("/v1/apps/a1/machines/{}", id(&m));
    let lease_path = format!("{path}/lease");

    assert_eq!(d.get(&lease_path).await.status, 404);
    assert_eq!(error_text(&d.get(&lease_path).await), "lease not found");
    let r = d
        .post(&lease_path, json!({"ttl": 60, "description": "deploy"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let lease: Value = r.json().unwrap();
    assert_eq!(lease["status"], "success");
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_string();
    assert_eq!(nonce.len(), 12);
    assert_eq!(lease["data"]["version"], m["instance_id"]);
    assert_eq!(lease["data"]["description"], "deploy");
    let expires = lease["data"]["expires_at"].as_i64().unwrap();

    let r = d.post(&lease_path, json!({"ttl": 60})).await;
    assert_eq!(r.status, 409);
    assert!(error_text(&r).contains("lease currently held by"));

    // Refresh with the nonce extends the lease.
    let r = d
        .client
        .post(&lease_path)
        .query("ttl", 600)
        .lease_nonce(Some(&nonce))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let refreshed: Value = r.json().unwrap();
    assert_eq!(refreshed["data"]["nonce"], nonce.as_str());
    assert!(refreshed["data"]["expires_at"].as_i64().unwrap() > expires);

    // Every mutation without the nonce is refused; nothing changes.
    let update = json!({"skip_launch": true, "config": {"image": "nginx"}});
    let no_nonce = [
        d.client.post(&path).json(&update).send_raw().await.unwrap(),
        d.client
            .post(format!("{path}/cordon"))
            .send_raw()
            .await
            .unwrap(),
        d.client
            .post(format!("{path}/uncordon"))
            .send_raw()
            .await
            .unwrap(),
        d.client
            .post(format!("{path}/start"))
            .send_raw()
            .await
            .unwrap(),
        d.client
            .post(format!("{path}/stop"))
            .send_raw()
            .await
            .unwrap(),
        d.client
            .post(format!("{path}/metadata/k"))
            .json(&json!({"value": "v"}))
            .send_raw()
            .await
            .unwrap(),
        d.client.delete(&path).send_raw().await.unwrap(),
        d.client
            .post(&path)
            .json(&update)
            .lease_nonce(Some("000000000000"))
            .send_raw()
            .await
            .unwrap(),
    ];
    for r in no_nonce {
        assert_eq!(r.status, 409, "{}", r.text());
    }
    let still: Value = d.get(&path).await.json().unwrap();
    assert_eq!(still["instance_id"], m["instance_id"]);
    assert_eq!(still["cordoned"], false);

    // With the nonce they go through.
    let r = d
        .client
        .post(format!("{path}/cordon"))
        .lease_nonce(Some(&nonce))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = d
        .client
        .post(&path)
        .json(&update)
        .lease_nonce(Some(&nonce))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d
        .client
        .post(format!("{path}/start"))
        .lease_nonce(Some(&nonce))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(
        r.status,
        412,
        "start is refused for want of a runtime, not the lease: {}",
        r.text()
    );

    let leased: Value = d
        .get(&format!("{path}?include_leases=true"))
        .await
        .json()
        .unwrap();
    assert_eq!(leased["lease"]["description"], "deploy");

    assert_eq!(
        d.delete(&lease_path).await.status,
        400,
        "release needs the nonce"
    );
    let r = d
        .client
        .delete(&lease_path)
        .lease_nonce(Some("ffffffffffff"))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    let r = d
        .client
        .delete(&lease_path)
        .lease_nonce(Some(&nonce))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"status": "success", "data": {"ok": true}})
    );
    assert_eq!(d.get(&lease_path).await.status, 404);
    assert_eq!(
        d.client
            .post(format!("{path}/uncordon"))
            .send_raw()
            .await
            .unwrap()
            .status,
        200
    );

    for bad in [json!({"ttl": 0}), json!({"ttl": -5}), json!({"ttl": "x"})] {
        assert_eq!(d.post(&lease_path, bad.clone()).await.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn test_create_with_lease_ttl_and_start_needs_nonce() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m = d
        .create_machine("a1", json!({"name": "w1", "region": "ord", "lease_ttl": 30, "config": {"image": "alpine", "init": {"exec": ["/bin/sleep", "inf"]}}}))
        .await;
    let nonce = m["nonce"].as_str().expect("nonce on create with lease_ttl");
    let path = format!("/v1/apps/a1/machines/{}", id(&m));
    let r = d
        .client
        .post(format!("{path}/start"))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    let r = d
        .client
        .post(format!("{path}/start"))
        .lease_nonce(Some(nonce))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    assert!(error_text(&r).contains("no machine runtime"));
    let after: Value = d.get(&path).await.json().unwrap();
    assert_eq!(after["state"], "created", "a refused start changes nothing");
}

#[tokio::test]
async fn test_metadata() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m = d.create_machine("a1", json!({})).await;
    let path = format!("/v1/apps/a1/machines/{}", id(&m));
    let r = d
        .post(
            &format!("{path}/metadata/role"),
            json!({"value": "primary"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let md: Value = d.get(&format!("{path}/metadata")).await.json().unwrap();
    assert_eq!(md, json!({"role": "primary"}));
    let got: Value = d
        .get(&format!("{path}/metadata/role"))
        .await
        .json()
        .unwrap();
    assert_eq!(got, json!({"value": "primary"}));
    assert_eq!(d.get(&format!("{path}/metadata/none")).await.status, 404);
    let r = d.post(&format!("{path}/metadata/role"), json!({})).await;
    assert_eq!(r.status, 400, "a value is required: {}", r.text());
    let after: Value = d.get(&path).await.json().unwrap();
    assert_eq!(
        after["instance_id"], m["instance_id"],
        "metadata makes no new version"
    );
    let versions: Vec<Value> = d.get(&format!("{path}/versions")).await.json().unwrap();
    assert_eq!(versions.len(), 1);

    let r = d
        .client
        .patch(format!("{path}/metadata"))
        .json(&json!({"metadata": {"role": null, "tier": "a"}, "machine_version": "01HEPA330HZ37A78TK080NAK1M"}))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    let r = d
        .client
        .patch(format!("{path}/metadata"))
        .json(
            &json!({"metadata": {"role": null, "tier": "a"}, "machine_version": m["instance_id"]}),
        )
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let md: Value = d.get(&format!("{path}/metadata")).await.json().unwrap();
    assert_eq!(md, json!({"tier": "a"}));
    let r: Vec<Value> = d
        .get("/v1/apps/a1/machines?metadata.tier=a")
        .await
        .json()
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(d.delete(&format!("{path}/metadata/tier")).await.status, 204);
    let md: Value = d.get(&format!("{path}/metadata")).await.json().unwrap();
    assert_eq!(md, json!({}));
}

#[tokio::test]
async fn test_wait_timeouts_errors_and_wakeups() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m = d.create_machine("a1", json!({})).await;
    let path = format!("/v1/apps/a1/machines/{}", id(&m));

    let r = d
        .get(&format!("{path}/wait?state=started,stopped&timeout=1"))
        .await;
    assert_eq!(r.status, 408, "{}", r.text());
    let r = d.get(&format!("{path}/wait?state=bogus")).await;
    assert_eq!(r.status, 400);
    let r = d.get(&format!("{path}/wait?state=settled")).await;
    assert_eq!(r.status, 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["state"], "created");
    assert_eq!(body["version"], m["instance_id"]);
    // Repeated state parameters, as fly-go sends them.
    let r = d
        .get(&format!(
            "{path}/wait?state=stopped&state=created&timeout=1"
        ))
        .await;
    assert_eq!(r.status, 200);
    // A timeout above 60 s is clamped, not refused.
    let r = d
        .get(&format!("{path}/wait?state=created&timeout=3600"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(d.get(&format!("{path}/wait?timeout=abc")).await.status, 400);

    // A waiter wakes on the transition itself.
    let client = d.client.clone();
    let wpath = format!("{path}/wait?state=destroyed&timeout=60");
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let r = client.get(wpath).send_raw().await.unwrap();
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    assert_eq!(d.delete(&path).await.status, 200);
    let (r, elapsed) = waiter.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["state"], "destroyed");
    assert!(elapsed < Duration::from_secs(60), "woke before its timeout");
    // Waiting on a destroyed machine for another state fails at once.
    let r = d
        .get(&format!("{path}/wait?state=started&timeout=30"))
        .await;
    assert_eq!(r.status, 400);
    assert!(error_text(&r).contains("machine failed to reach desired state"));
}

#[tokio::test]
async fn test_events_cordon_stop_and_destroy() {
    let d = Daemon::start().await;
    d.create_app("a1").await;
    let m = d.create_machine("a1", json!({})).await;
    let path = format!("/v1/apps/a1/machines/{}", id(&m));
    assert_eq!(
        d.post(&format!("{path}/cordon"), json!(null)).await.status,
        200
    );
    let got: Value = d.get(&path).await.json().unwrap();
    assert_eq!(got["cordoned"], true);
    assert_eq!(
        d.post(&format!("{path}/uncordon"), json!(null))
            .await
            .status,
        200
    );
    let got: Value = d.get(&path).await.json().unwrap();
    assert_eq!(got["cordoned"], false);

    // Stopping a machine that never ran is a no-op; a bad signal is a 400.
    assert_eq!(
        d.post(
            &format!("{path}/stop"),
            json!({"signal": "SIGTERM", "timeout": "30s"})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        d.post(&format!("{path}/stop"), json!({"signal": "SIGFOO"}))
            .await
            .status,
        400
    );
    assert_eq!(
        d.post(&format!("{path}/stop"), json!({"signal": "SIGSEGV"}))
            .await
            .status,
        400
    );
    assert_eq!(
        d.client
            .post(format!("{path}/restart"))
            .send_raw()
            .await
            .unwrap()
            .status,
        412
    );
    assert_eq!(
        d.client
            .post(format!("{path}/restart"))
            .query("signal", "SIGFOO")
            .send_raw()
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        d.post(&format!("{path}/signal"), json!({"signal": 9}))
            .await
            .status,
        412
    );
    assert_eq!(
        d.post(&format!("{path}/signal"), json!({"signal": "SIGWHAT"}))
            .await
            .status,
        400
    );
    assert_eq!(
        d.post(&format!("{path}/exec"), json!({"command": ["true"]}))
            .await
            .status,
        412
    );
    assert_eq!(d.post(&format!("{path}/exec"), json!({})).await.status, 400);
    assert_eq!(
        d.client
            .post(format!("{path}/suspend"))
            .send_raw()
            .await
            .unwrap()
            .status,
        412
    );

    // A scheduled machine cannot be started by hand.
    let s = d
        .create_machine(
            "a1",
            json!({"config": {"image": "alpine", "schedule": "daily"}}),
        )
        .await;
    let r = d
        .client
        .post(format!("/v1/apps/a1/machines/{}/start", id(&s)))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(error_text(&r).contains("schedule"));

    assert_eq!(d.delete(&format!("{path}?kill=false")).await.status, 200);
    let events: Vec<Value> = d
        .get(&format!("{path}/events?limit=2"))
        .await
        .json()
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "destroy");
    assert_eq!(events[0]["status"], "destroyed");
    assert_eq!(events[1]["status"], "destroying");
    let all: Vec<Value> = d.get(&format!("{path}/events")).await.json().unwrap();
    assert_eq!(all.last().unwrap()["type"], "launch");
    assert_eq!(d.get(&format!("{path}/events?limit=x")).await.status, 400);
    assert_eq!(d.delete(&path).await.status, 404);
}

#[tokio::test]
async fn test_sigkill_keeps_every_acknowledged_write() {
    let mut d = Daemon::start().await;
    let mut apps = Vec::new();
    let mut machines = Vec::new();
    for round in 0..5 {
        let app = format!("k{round}");
        d.create_app(&app).await;
        apps.push(app.clone());
        let m = d
            .create_machine(
                &app,
                json!({"config": {"metadata": {"round": round.to_string()}}}),
            )
            .await;
        let path = format!("/v1/apps/{app}/machines/{}", id(&m));
        assert_eq!(
            d.post(&format!("{path}/metadata/acked"), json!({"value": "yes"}))
                .await
                .status,
            204
        );
        let r = d.post(&format!("{path}/lease"), json!({"ttl": 3600})).await;
        assert_eq!(r.status, 201);
        machines.push((app, m, r.json::<Value>().unwrap()["data"]["nonce"].clone()));
        // Kill right after the acknowledgement, then come back.
        d.kill9();
        d.restart().await;
    }
    for (app, m, nonce) in &machines {
        let path = format!("/v1/apps/{app}/machines/{}", id(m));
        let got: Value = d.get(&path).await.json().unwrap();
        assert_eq!(got["instance_id"], m["instance_id"]);
        assert_eq!(got["config"]["metadata"]["acked"], "yes");
        let lease: Value = d.get(&format!("{path}/lease")).await.json().unwrap();
        assert_eq!(&lease["data"]["nonce"], nonce);
    }
    let list: Value = d.get("/v1/apps").await.json().unwrap();
    assert_eq!(list["total_apps"], 5);
}
