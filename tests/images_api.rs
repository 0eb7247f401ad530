//! The image management API and CLI against a real daemon and the loopback registry.

mod common;

use common::{error_text, registry, Daemon};
use serde_json::{json, Value};

#[tokio::test]
async fn test_pull_list_inspect_remove_prune() {
    let d = Daemon::start().await;
    let image = format!("{}/hangar/config:latest", registry());

    // Pull streams NDJSON progress and ends with the digest.
    let r = d
        .client
        .post("/hangar/v1/images/pull")
        .query("ref", &image)
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "resolved", "{lines:?}");
    let digest = lines.last().unwrap()["done"]
        .as_str()
        .expect("done line")
        .to_string();
    assert!(digest.starts_with("sha256:"));

    let list: Vec<Value> = d.get("/hangar/v1/images").await.json().unwrap();
    assert!(
        list.iter().any(|i| i["manifest_digest"] == digest.as_str()),
        "{list:?}"
    );
    let r = d
        .client
        .get("/hangar/v1/images/inspect")
        .query("ref", &image)
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let details: Value = r.json().unwrap();
    assert!(details["config"]["env"].as_array().is_some(), "{details}");

    // A malformed reference is a 400, an unknown one a 404.
    let r = d
        .client
        .get("/hangar/v1/images/inspect")
        .query("ref", "Not A Ref")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let r = d
        .client
        .get("/hangar/v1/images/inspect")
        .query("ref", "127.0.0.1:5000/none:x")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());

    // An image a machine uses cannot be removed.
    d.create_app("img").await;
    let m = d
        .create_machine("img", json!({"config": {"image": image}}))
        .await;
    let r = d
        .client
        .delete("/hangar/v1/images")
        .query("ref", &image)
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        error_text(&r).contains(&format!("img/{}", m["id"].as_str().unwrap())),
        "names the machine: {}",
        r.text()
    );
    let r = d
        .delete(&format!(
            "/v1/apps/img/machines/{}",
            m["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status, 200);
    let r = d
        .client
        .delete("/hangar/v1/images")
        .query("ref", &image)
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let list: Vec<Value> = d.get("/hangar/v1/images").await.json().unwrap();
    assert!(!list.iter().any(|i| i["manifest_digest"] == digest.as_str()));
    let r = d
        .client
        .post("/hangar/v1/images/prune")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn test_cli_pull_import_and_ls() {
    let d = Daemon::start().await;
    let image = format!("{}/hangar/layers:latest", registry());
    let out = d.cli(&["image", "pull", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Pulled"));

    // Import the fixtures' OCI layout dir (built by scripts/build-test-images) under a tag.
    let layout = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-images");
    assert!(
        layout.join("index.json").exists(),
        "no fixtures at {}: run scripts/build-test-images (.ci/run does)",
        layout.display()
    );
    {
        // A tag names one image: a layout with several needs a choice, and says so (a 400).
        let out = d.cli(&[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--tag",
            "localhost/x:1",
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("HTTP 400"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = d.cli(&[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--select",
            "busybox",
            "--tag",
            "localhost/imported:v1",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = d.cli(&["image", "ls"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.contains("hangar/layers:latest"), "{ls}");
    assert!(ls.contains("localhost/imported:v1"), "{ls}");
    let out = d.cli(&["image", "rm", "Not A Ref"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
}

/// The daemon runs as root: it must never open a path its caller names (that read
/// /etc/shadow and echoed it), and an upload that is not an archive is a 400 quoting none of it.
#[tokio::test]
async fn test_import_reads_only_what_the_caller_sends() {
    let d = Daemon::start().await;
    let r = d
        .client
        .post("/hangar/v1/images/import")
        .query("path", "/proc/self/environ")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        error_text(&r).contains("does not read files named by the caller"),
        "{}",
        r.text()
    );

    let secret = "root:$6$very-secret-hash-do-not-echo:19000:0:99999:7:::\n".repeat(20);
    let r = d
        .client
        .post_stream(
            "/hangar/v1/images/import",
            "application/x-tar",
            std::io::Cursor::new(secret.into_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let text = r.text();
    assert!(text.contains("not a readable archive"), "{text}");
    assert!(
        !text.contains("very-secret") && !text.contains("root:"),
        "echoed content: {text}"
    );

    // The CLI reads with the caller's rights and streams; a missing file is its own error.
    let out = d.cli(&["image", "import", "/nonexistent/archive.tar"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read /nonexistent/archive.tar"),
        "{err}"
    );
    let list: Vec<Value> = d.get("/hangar/v1/images").await.json().unwrap();
    assert!(list.is_empty(), "nothing was imported: {list:?}");
}

/// `--pull never`: machines run only images already in the store; a missing one is a clear 400
/// naming the policy, and the pull endpoint refuses up front.
#[tokio::test]
async fn a_daemon_that_never_pulls_runs_only_stored_images() {
    let d = Daemon::start_with_flags(true, &["--pull", "never"]).await;
    d.create_app("offline").await;
    let image = format!("{}/hangar/busybox:latest", registry());
    let r = d
        .post(
            "/v1/apps/offline/machines",
            json!({"config": {"image": image}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(error_text(&r).contains("--pull never"), "{}", r.text());
    assert_eq!(
        d.get("/v1/apps/offline/machines")
            .await
            .json::<Value>()
            .unwrap(),
        json!([]),
        "nothing half-made"
    );
    let r = d
        .client
        .raw(
            hyper::Method::POST,
            &format!("/hangar/v1/images/pull?ref={image}"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 412, "{}", r.text());
    // An imported image runs.
    let layout = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-images");
    let out = d.cli(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--select",
        "busybox",
        "--tag",
        "offline/busybox",
    ]);
    common::cli_ok(&out);
    let id = d
        .launch(
            "offline",
            json!({"config": {"image": "offline/busybox", "init": {"cmd": ["sleep", "60"]}}}),
        )
        .await;
    d.wait_state("offline", &id, "started").await;
    d.destroy_machine("offline", &id, true).await;
}
