//! Running Hangar as a host service: the install script stages the binary, unit and config;
//! the unit keeps machines alive across daemon restarts; the socket and token are shared with
//! the configured group; logs can be JSON.

mod common;

use common::*;

#[test]
fn the_install_script_stages_binary_unit_and_config() {
    let root = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("scripts/install")
        .env("DESTDIR", root.path())
        .env("HANGAR_BIN", hangar_bin())
        .output()
        .expect("scripts/install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/bin/hangar"), 0o755);
    assert_eq!(mode("usr/bin/hangar-pilot"), 0o755);
    assert_eq!(mode("var/lib/hangar"), 0o711);
    let unit =
        std::fs::read_to_string(root.path().join("lib/systemd/system/hangar.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/hangar daemon",
        "KillMode=process",
        "Delegate=yes",
        "Restart=on-failure",
        "After=network-online.target",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit");
    }
    // systemd itself reads the unit (offline: no systemd needs to run here) and finds nothing
    // wrong with it, its directives or its command.
    let staged_unit = root.path().join("hangar.service");
    std::fs::write(
        &staged_unit,
        unit.replace(
            "/usr/bin/hangar",
            &root.path().join("usr/bin/hangar").to_string_lossy(),
        ),
    )
    .unwrap();
    match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&staged_unit)
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("SKIPPED systemd-analyze verify of the unit: {e} (install systemd)"),
    }
    // The default config is one the daemon accepts (everything commented), and a user's edits
    // survive a reinstall.
    let config = root.path().join("etc/hangar/hangar.toml");
    // (A data dir under a plain file stops the daemon right after it read its config.)
    let blocker = root.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let check = std::process::Command::new(hangar_bin())
        .args(["daemon", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(blocker.join("data"))
        .env("HANGAR_RUNTIME", "none")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("failed to create data dir"),
        "the default config is valid: {err}"
    );
    std::fs::write(&config, "log_format = \"json\"\n").unwrap();
    let again = std::process::Command::new("scripts/install")
        .env("DESTDIR", root.path())
        .env("HANGAR_BIN", hangar_bin())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "log_format = \"json\"\n"
    );
}

#[tokio::test]
async fn the_socket_and_token_are_shared_with_the_group_and_logs_can_be_json() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut d = Daemon::start_with_flags(false, &["--socket-group", "root"]).await;
    let sock = std::fs::metadata(&d.socket).unwrap();
    assert_eq!((sock.gid(), sock.permissions().mode() & 0o777), (0, 0o660));
    let token = std::fs::metadata(d.data_dir.join("token")).unwrap();
    assert_eq!(
        (token.gid(), token.permissions().mode() & 0o777),
        (0, 0o640)
    );
    // JSON logs: every line one object.
    let j = Daemon::start_logging(false, &["--log-format", "json"]).await;
    j.create_app("logged").await;
    let m = j.create_machine("logged", serde_json::json!({})).await;
    j.destroy_machine("logged", m["id"].as_str().unwrap(), false)
        .await;
    let log = j.debug_log();
    assert!(
        log.lines()
            .any(|l| l.contains("machine state changed") && l.contains("\"app\":\"logged\"")),
        "lifecycle events are logged with the app and machine: {log}"
    );
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "{log}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    // A bad group is a clear start-up error.
    d.terminate();
    d.args
        .extend(["--socket-group".into(), "no-such-group-here".into()]);
    let err = d.restart_refused().await;
    assert!(err.contains("no-such-group-here"), "{err}");
}

/// `/metrics` parses with a Prometheus text-format parser and its counters move with requests
/// and machines.
#[tokio::test]
async fn metrics_parse_and_count_requests_and_transitions() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with_flags(false, &["--metrics-listen", &addr]).await;
    d.create_app("metered").await;
    let m = d.create_machine("metered", serde_json::json!({})).await;
    d.destroy_machine("metered", m["id"].as_str().unwrap(), false)
        .await;
    // A pull from the loopback registry: its layers' bytes are counted.
    let pulled = d
        .client
        .raw(
            hyper::Method::POST,
            &format!("/hangar/v1/images/pull?ref={}", common::test_image()),
            &[],
            None,
        )
        .await
        .unwrap();
    assert!(pulled.text().contains("\"done\""), "{}", pulled.text());
    let scrape = || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split_once("\r\n\r\n").unwrap().1.to_string()
    };
    let text = scrape().await;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, label: (&str, &str)| -> f64 {
        parsed
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(
        value("hangar_api_requests_total", ("route", "/v1/apps")) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            "hangar_api_requests_total",
            ("route", "/v1/apps/:app_name/machines/:machine_id")
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value("hangar_machine_transitions_total", ("to", "destroyed")) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("hangar_api_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(value("hangar_machines", ("state", "destroyed")) == 0.0);
    let bytes: f64 = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "hangar_image_pull_bytes_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(bytes > 100_000.0, "busybox's layer was fetched: {text}");
}

/// `hangar machine stats`: a busy machine shows its CPU share, memory, processes and disk IO.
#[tokio::test]
async fn machine_stats_read_the_machines_cgroup() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("busy").await;
    let id = d
        .launch(
            "busy",
            serde_json::json!({"config": {"image": test_image(),
                "init": {"exec": ["/bin/sh", "-c",
                    "dd if=/dev/zero of=/io bs=1M count=4 oflag=direct; while :; do :; done"]}}}),
        )
        .await;
    d.wait_state("busy", &id, "started").await;
    let out = d.cli(&["machine", "stats", &id, "-a", "busy", "--interval", "500ms"]);
    let text = cli_ok(&out);
    let share: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("CPU "))
        .and_then(|l| l.trim_start_matches([' ', '=']).split('%').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(share > 20.0, "a spinning shell uses the CPU: {text}");
    assert!(text.contains("MiB of 256 MiB"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&cli_ok(&d.cli(&[
        "machine",
        "stats",
        &id,
        "-a",
        "busy",
        "--json",
        "--interval",
        "100ms",
    ])))
    .unwrap();
    assert!(json["pids"].as_u64().unwrap() >= 1, "{json}");
    assert!(json["memory_bytes"].as_u64().unwrap() > 0, "{json}");
    assert!(
        json["io_write_bytes"].as_u64().unwrap() >= 4 << 20,
        "4 MiB written with O_DIRECT: {json}"
    );
    assert!(text.contains("Disk IO"), "{text}");
    d.post(
        &format!("/v1/apps/busy/machines/{id}/stop"),
        serde_json::json!({"signal": "SIGKILL"}),
    )
    .await;
    d.wait_state("busy", &id, "stopped").await;
    let err = cli_err(&d.cli(&["machine", "stats", &id, "-a", "busy"]));
    assert!(err.contains("not started"), "{err}");
    d.destroy_machine("busy", &id, true).await;
}
