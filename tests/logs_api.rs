//! The logs endpoint: tails from the end of big logs, follows new lines, names the container.

mod common;

use common::test_image as image;

use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};

#[tokio::test]
async fn test_tail_and_follow() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("logs").await;
    let script = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo \"line $i of many, padded to make the log a few hundred kilobytes long ........................................\"; done; echo done-writing; sleep 300";
    let r = d
        .post("/v1/apps/logs/machines", json!({"name": "chatty", "config": {"image": image(), "init": {"exec": ["/bin/sh", "-c", script]}}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = |body: String| -> Vec<Value> {
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let tail = loop {
        let r = d
            .client
            .get("/hangar/v1/apps/logs/logs")
            .query("tail", 5)
            .send_raw()
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let got = lines(r.text());
        if got.last().is_some_and(|l| l["message"] == "done-writing") {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the machine did not finish writing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(tail.len(), 5, "{tail:?}");
    assert!(
        tail[3]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 3000 "),
        "{tail:?}"
    );
    assert_eq!(tail[0]["container"], "app");
    assert_eq!(tail[0]["stream"], "stdout");

    // A bad instance is a 404; a bad tail a 400.
    let r = d
        .client
        .get("/hangar/v1/apps/logs/logs")
        .query("instance", "nope")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = d
        .client
        .get("/hangar/v1/apps/logs/logs")
        .query("tail", "-3")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 400);
}

/// `follow=true` streams lines as they are written, including those of a machine created after
/// the follower started.
#[tokio::test]
async fn test_follow_streams_new_lines() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("follow").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let client = d.client.clone();
    let follower = tokio::spawn(async move {
        let mut pending = Vec::new();
        let _ = client
            .get_streaming("/hangar/v1/apps/follow/logs?follow=true&tail=0", |chunk| {
                pending.extend_from_slice(chunk);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    if tx.send(serde_json::from_slice(&line).unwrap()).is_err() {
                        return false;
                    }
                }
                true
            })
            .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let script =
        "for i in 1 2 3 4 5; do echo tick $i; echo warn $i >&2; sleep 0.2; done; sleep 300";
    let r = d
        .post(
            "/v1/apps/follow/machines",
            json!({"config": {"image": image(), "init": {"exec": ["/bin/sh", "-c", script]}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !got.iter().any(|l: &Value| l["message"] == "warn 5") {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => got.push(line),
            _ => panic!("follow stopped or timed out; got {got:?}"),
        }
    }
    let ticks: Vec<&str> = got
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(ticks, ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5"]);
    assert!(got
        .iter()
        .all(|l| l["machine_id"] == id.as_str() && l["container"] == "app"));
    assert_eq!(got.iter().filter(|l| l["stream"] == "stderr").count(), 5);
    follower.abort();
}

/// A line that is not UTF-8 (`\xc3`, `\xff`) reads as U+FFFD and the lines after it still
/// come; a destroyed machine's logs stay readable (with `instance` too) for the retention time.
#[tokio::test]
async fn test_invalid_utf8_and_logs_after_destroy() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("bytes").await;
    let script = r"printf 'before\n'; printf 'bad \303 and \377 bytes\n'; printf 'after\n'";
    let id = d
        .launch(
            "bytes",
            json!({"config": {"image": image(), "restart": {"policy": "no"},
                "init": {"exec": ["/bin/sh", "-c", script]}}}),
        )
        .await;
    d.wait_state("bytes", &id, "stopped").await;
    let messages = |body: String| -> Vec<String> {
        body.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let logs = |instance: Option<String>| {
        let client = d.client.clone();
        async move {
            let mut req = client.get("/hangar/v1/apps/bytes/logs");
            if let Some(i) = instance {
                req = req.query("instance", i);
            }
            let r = req.send_raw().await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        }
    };
    let got = messages(logs(None).await);
    assert_eq!(
        got,
        vec!["before", "bad \u{fffd} and \u{fffd} bytes", "after"],
        "{got:?}"
    );

    d.destroy_machine("bytes", &id, false).await;
    assert_eq!(
        messages(logs(Some(id.clone())).await),
        got,
        "kept after destroy"
    );
    assert_eq!(messages(logs(None).await), got);
    // Archived by the release that follows the destroy's answer.
    let archived = d.data_dir.join("logs").join(&id);
    common::until(
        || archived.join("app.log").is_file(),
        "the destroyed machine's logs archived",
    )
    .await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.data_dir.join("logs"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the archive is root's alone");
}
