//! App secrets end to end: Fly's secrets API, values sealed at rest, delivery as env and as
//! files, scoping, `--stage` and `deploy`, restarts, and the key file's rules.

mod common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn exec(d: &Daemon, app: &str, id: &str, container: Option<&str>, script: &str) -> String {
    let mut body = json!({"command": ["/bin/sh", "-c", script], "timeout": 10});
    if let Some(c) = container {
        body["container"] = json!(c);
    }
    let r = d
        .post(&format!("/v1/apps/{app}/machines/{id}/exec"), body)
        .await;
    assert_eq!(r.status, 200, "exec: {}", r.text());
    let out: Value = r.json().unwrap();
    out["stdout"].as_str().unwrap_or_default().to_string()
}

/// Every file under `dir` (recursively, without following links) that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                if let Ok(bytes) = std::fs::read(e.path()) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(e.path());
                    }
                }
            }
        }
    }
    hits
}

const DB_URL: &str = "postgres://app:Sup3rS3cretDbPass@db.internal/app";
const FILE_CONTENT: &str = "tls-private-key-Kq9ZmXw2";

#[tokio::test]
async fn test_secrets_api_delivery_and_no_plaintext_at_rest() {
    let mut d = Daemon::start_logging(true, &[]).await;
    d.create_app("sec").await;
    let image = test_image();

    // Set three: a value, a file's base64 content, one that shadows an env var.
    let r = d
        .post(
            "/v1/apps/sec/secrets",
            json!({"values": {"DB_URL": DB_URL, "TLS_KEY": b64(FILE_CONTENT), "MODE": "from-secret"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let set: Value = r.json().unwrap();
    assert_eq!(set["version"], 1, "{set}");
    assert_eq!(set["Version"], 1, "{set}");
    assert_eq!(set["secrets"].as_array().unwrap().len(), 3, "{set}");
    assert!(!r.text().contains("Sup3rS3cret"), "{}", r.text());

    // Lists show names and digests, never values; show_secrets is refused by default.
    let r = d.get("/v1/apps/sec/secrets").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let list: Value = r.json().unwrap();
    let names: Vec<&str> = list["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["DB_URL", "MODE", "TLS_KEY"], "{list}");
    for s in list["secrets"].as_array().unwrap() {
        assert_eq!(s["digest"].as_str().unwrap().len(), 16, "{s}");
        assert!(s.get("value").is_none(), "{s}");
        assert!(s["created_at"].as_str().unwrap().ends_with('Z'), "{s}");
    }
    let r = d.get("/v1/apps/sec/secrets?show_secrets=true").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!r.text().contains("Sup3rS3cret"));
    // fly-go's `version`, and min_version, must have been reached.
    assert_eq!(d.get("/v1/apps/sec/secrets?version=1").await.status, 200);
    let r = d.get("/v1/apps/sec/secrets?min_version=9").await;
    assert_eq!(r.status, 412, "{}", r.text());

    // One by one: set (201), get, delete, and deleting a missing name still answers a version.
    let r = d
        .post("/v1/apps/sec/secrets/EXTRA", json!({"value": "x"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let one: Value = r.json().unwrap();
    assert_eq!(
        (one["name"].as_str(), one["version"].as_u64()),
        (Some("EXTRA"), Some(2))
    );
    let r = d.get("/v1/apps/sec/secrets/EXTRA").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.get("/v1/apps/sec/secrets/NOPE").await.status, 404);
    let r = d.delete("/v1/apps/sec/secrets/EXTRA").await;
    assert_eq!(r.json::<Value>().unwrap()["version"], 3, "{}", r.text());
    let r = d.delete("/v1/apps/sec/secrets/BogusDummySecret_ab12").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["version"], 4);
    // A null value deletes too.
    let r = d
        .post("/v1/apps/sec/secrets", json!({"values": {"GONE": "1"}}))
        .await;
    assert_eq!(r.json::<Value>().unwrap()["version"], 5);
    let r = d
        .post("/v1/apps/sec/secrets", json!({"values": {"GONE": null}}))
        .await;
    assert_eq!(r.json::<Value>().unwrap()["version"], 6);

    // Bad input: a 400 naming it, and nothing changes (the version stays).
    for (body, named) in [
        (json!({"values": {"1BAD": "x"}}), "1BAD"),
        (json!({"values": {"BAD-NAME": "x"}}), "BAD-NAME"),
        (json!({"values": {"BIG": "x".repeat(64 * 1024 + 1)}}), "BIG"),
        // A value becomes an environment variable, which cannot hold a NUL.
        (json!({"values": {"NUL": "a\u{0}b"}}), "NUL"),
        (json!({"values": {}}), "values"),
    ] {
        let r = d.post("/v1/apps/sec/secrets", body).await;
        assert_eq!(r.status, 400, "{named}: {}", r.text());
        assert!(error_text(&r).contains(named), "{named}: {}", r.text());
    }
    assert_eq!(
        d.post("/v1/apps/nosuch/secrets", json!({"values": {"A": "1"}}))
            .await
            .status,
        404
    );
    let r = d
        .post("/v1/apps/sec/secrets/EXTRA", json!({"value": "x"}))
        .await;
    assert_eq!(
        r.json::<Value>().unwrap()["version"],
        7,
        "only the good write counted"
    );

    // Machine configs that name missing or unusable secrets are refused, nothing made.
    d.post(
        "/v1/apps/sec/secrets",
        json!({"values": {"NOT_B64": "%%% not base64"}}),
    )
    .await;
    for (config, named) in [
        (
            json!({"image": image, "files": [{"guest_path": "/etc/x", "secret_name": "MISSING"}]}),
            "/etc/x",
        ),
        (
            json!({"image": image, "files": [{"guest_path": "/etc/y", "secret_name": "NOT_B64"}]}),
            "/etc/y",
        ),
        (
            json!({"containers": [{"name": "a", "image": image, "secrets": [{"env_var": "X", "name": "MISSING"}]}]}),
            "containers[0].secrets[0]",
        ),
    ] {
        let r = d
            .post("/v1/apps/sec/machines", json!({"config": config}))
            .await;
        assert_eq!(r.status, 400, "{named}: {}", r.text());
        assert!(error_text(&r).contains(named), "{named}: {}", r.text());
        assert!(
            !r.text().contains("not base64\""),
            "the value leaked: {}",
            r.text()
        );
    }
    let r = d
        .post(
            "/v1/apps/sec/machines",
            json!({"min_secrets_version": 99, "config": {"image": image}}),
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(
        error_text(&r).contains("min_secrets_version"),
        "{}",
        r.text()
    );
    let machines: Vec<Value> = d.get("/v1/apps/sec/machines").await.json().unwrap();
    assert!(machines.is_empty(), "{machines:?}");

    // Through the CLI as a user would: a file secret, an env var the secret overrides.
    let out = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        "sec",
        "--name",
        "web",
        "--detach",
        "--file-secret",
        "/etc/tls/key.pem=TLS_KEY",
        "-e",
        "MODE=from-env",
        "-e",
        "PLAIN=yes",
        "--",
        "/bin/sh",
        "-c",
        "sleep 600",
    ]);
    cli_ok(&out);
    let machines: Vec<Value> = d.get("/v1/apps/sec/machines").await.json().unwrap();
    let web = machines[0]["id"].as_str().unwrap().to_string();
    d.wait_state("sec", &web, "started").await;
    let seen = exec(
        &d,
        "sec",
        &web,
        None,
        "echo \"$DB_URL|$MODE|$PLAIN|${TLS_KEY:-no-env}\"; cat /etc/tls/key.pem",
    )
    .await;
    assert_eq!(
        seen,
        format!("{DB_URL}|from-secret|yes|no-env\n{FILE_CONTENT}")
    );

    // Scoping: a container's own `secrets` replace the app's; a process can ignore them.
    let scoped = d
        .launch(
            "sec",
            json!({"config": {"containers": [
                {"name": "only", "image": image, "exec": ["/bin/sh", "-c", "sleep 600"],
                 "secrets": [{"env_var": "DATABASE", "name": "DB_URL"}]},
                {"name": "all", "image": image, "exec": ["/bin/sh", "-c", "sleep 600"]}
            ]}}),
        )
        .await;
    d.wait_state("sec", &scoped, "started").await;
    let only = exec(
        &d,
        "sec",
        &scoped,
        Some("only"),
        "echo \"$DATABASE|${DB_URL:-unset}|${MODE:-unset}\"",
    )
    .await;
    assert_eq!(only, format!("{DB_URL}|unset|unset\n"));
    let all = exec(&d, "sec", &scoped, Some("all"), "echo \"$DB_URL|$MODE\"").await;
    assert_eq!(all, format!("{DB_URL}|from-secret\n"));
    let procs = d
        .launch(
            "sec",
            json!({"config": {"image": image, "processes": [
                {"exec": ["/bin/sh", "-c", "sleep 600"], "ignore_app_secrets": true}
            ]}}),
        )
        .await;
    d.wait_state("sec", &procs, "started").await;
    assert_eq!(
        exec(&d, "sec", &procs, None, "echo \"${DB_URL:-none}\"").await,
        "none\n"
    );
    d.destroy_machine("sec", &scoped, true).await;
    d.destroy_machine("sec", &procs, true).await;

    // --stage changes nothing running; `secrets deploy` brings it to the started machines.
    let rotated = "postgres://app:R0tatedPassw0rd@db.internal/app";
    cli_ok(&d.cli(&[
        "secrets",
        "set",
        "-a",
        "sec",
        &format!("DB_URL={rotated}"),
        "--stage",
    ]));
    assert_eq!(
        exec(&d, "sec", &web, None, "echo \"$DB_URL\"").await,
        format!("{DB_URL}\n")
    );
    let list = cli_ok(&d.cli(&["secrets", "list", "-a", "sec"]));
    assert!(
        !list.contains("Sup3rS3cret") && !list.contains("R0tated"),
        "{list}"
    );
    let db_line = list.lines().find(|l| l.starts_with("DB_URL")).unwrap();
    assert!(db_line.contains("Staged"), "{list}");
    let mode_line = list.lines().find(|l| l.starts_with("MODE")).unwrap();
    assert!(mode_line.contains("Deployed"), "{list}");
    cli_ok(&d.cli(&["secrets", "deploy", "-a", "sec"]));
    assert_eq!(
        exec(&d, "sec", &web, None, "echo \"$DB_URL\"").await,
        format!("{rotated}\n")
    );
    let list = cli_ok(&d.cli(&["secrets", "list", "-a", "sec", "--json"]));
    let rows: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert!(
        rows.iter()
            .all(|r| r["status"] == "Deployed" && r.get("value").is_none()),
        "{list}"
    );

    // Without --stage, set (value from stdin) and unset redeploy the started machine.
    let mut child = std::process::Command::new(hangar_bin())
        .args(["secrets", "set", "-a", "sec", "PIPED=-"])
        .env("HANGAR_API_URL", format!("unix://{}", d.socket.display()))
        .env("HANGAR_API_TOKEN", &d.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"piped-value\n")
            .unwrap();
    }
    cli_ok(&child.wait_with_output().unwrap());
    assert_eq!(
        exec(&d, "sec", &web, None, "echo \"$PIPED\"").await,
        "piped-value\n"
    );
    cli_ok(&d.cli(&["secrets", "unset", "-a", "sec", "PIPED", "NEVER_SET"]));
    assert_eq!(
        exec(&d, "sec", &web, None, "echo \"${PIPED:-gone}\"").await,
        "gone\n"
    );
    // The machine's status shows names only.
    let status = cli_ok(&d.cli(&["machine", "status", "-a", "sec", &web, "-d"]));
    assert!(
        !status.contains("Sup3rS3cret") && !status.contains(&b64(FILE_CONTENT)),
        "{status}"
    );

    // A full lifecycle later, nothing under the data dir or in the daemon's log holds a value
    // in plaintext (the file secret's own destination went with the machine).
    d.cli(&["machine", "stop", "-a", "sec", &web]);
    d.wait_state("sec", &web, "stopped").await;
    d.cli(&["machine", "start", "-a", "sec", &web]);
    d.wait_state("sec", &web, "started").await;
    d.destroy_machine("sec", &web, true).await;
    d.terminate();
    // The search does find what is there in plaintext (the admin token).
    assert!(!files_containing(&d.data_dir, d.token.as_bytes()).is_empty());
    for value in [
        DB_URL,
        rotated,
        FILE_CONTENT,
        &b64(FILE_CONTENT),
        "piped-value",
    ] {
        let hits = files_containing(&d.data_dir, value.as_bytes());
        assert!(hits.is_empty(), "{value:?} in plaintext at {hits:?}");
        assert!(
            !d.debug_log().contains(value),
            "{value:?} in the daemon's log"
        );
    }
    assert!(
        d.debug_log().contains("app secrets changed"),
        "the log is the daemon's"
    );
}

#[tokio::test]
async fn test_secrets_survive_restarts_and_need_their_key() {
    let mut d = Daemon::start_with_flags(false, &["--secrets-readable"]).await;
    d.create_app("keep").await;
    let r = d
        .post(
            "/v1/apps/keep/secrets",
            json!({"values": {"API_KEY": "k-123", "OTHER": "o"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before: Value = d.get("/v1/apps/keep/secrets").await.json().unwrap();
    let key = d.data_dir.join("secrets.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // SIGKILL and a restart keep them, with the same digests; values open with the key.
    d.kill9();
    d.restart().await;
    let after: Value = d.get("/v1/apps/keep/secrets").await.json().unwrap();
    assert_eq!(before, after);
    let shown: Value = d
        .get("/v1/apps/keep/secrets/API_KEY?show_secrets=true")
        .await
        .json()
        .unwrap();
    assert_eq!(shown["value"], "k-123", "{shown}");
    assert!(d
        .get("/v1/apps/keep/secrets?show_secrets=1")
        .await
        .text()
        .contains("k-123"));
    let r = d
        .post(
            "/v1/apps/keep/secrets",
            json!({"values": {"API_KEY": null}}),
        )
        .await;
    assert_eq!(r.json::<Value>().unwrap()["version"], 2);
    d.terminate();

    // A missing key file: refused, named, and no new key made in its place.
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = d.restart_refused().await;
    assert!(
        err.contains("secrets key file") && err.contains("missing"),
        "{err}"
    );
    assert!(!key.exists(), "a new key replaced the lost one");
    // Another key: refused too.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{}\n", "ab".repeat(32)).as_bytes()).unwrap();
    }
    let err = d.restart_refused().await;
    assert!(err.contains("sealed with key"), "{err}");
    // A key others can read: refused.
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, &saved).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = d.restart_refused().await;
    assert!(err.contains("chmod 600"), "{err}");
    // The right one, kept elsewhere and named by flag: everything is back.
    let elsewhere = d.tmp.path().join("vault.key");
    std::fs::rename(&key, &elsewhere).unwrap();
    std::fs::set_permissions(
        &elsewhere,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    d.args.extend([
        "--secrets-key-file".to_string(),
        elsewhere.display().to_string(),
    ]);
    d.restart().await;
    let shown: Value = d
        .get("/v1/apps/keep/secrets/OTHER?show_secrets=true")
        .await
        .json()
        .unwrap();
    assert_eq!(shown["value"], "o", "{shown}");
    assert!(!key.exists(), "no key was created at the default path");
    d.terminate();
    // A named key file that does not exist is an error, not a new key.
    let missing = d.tmp.path().join("nowhere.key");
    let n = d.args.len();
    d.args[n - 1] = missing.display().to_string();
    let err = d.restart_refused().await;
    assert!(err.contains("nowhere.key"), "{err}");
}
