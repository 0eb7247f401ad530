//! The `hangar machine` CLI against a daemon that really runs machines: run, exec, stop, start,
//! status -d, update --yes, clone and destroy, as a flyctl user would type them.

mod common;

use common::test_image as image;

use std::process::{Command, Output, Stdio};

use common::{hangar_bin, Daemon};
use serde_json::Value;

fn hangar(d: &Daemon, args: &[&str]) -> Output {
    Command::new(hangar_bin())
        .args(args)
        .env("HANGAR_API_URL", format!("unix://{}", d.socket.display()))
        .env("HANGAR_API_TOKEN", &d.token)
        .env_remove("FLY_APP")
        .env_remove("HANGAR_APP")
        .stdin(Stdio::null())
        .output()
        .expect("run hangar")
}

fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = hangar(d, args);
    assert!(
        out.status.success(),
        "hangar {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn machine_id(d: &Daemon, app: &str, name: &str) -> String {
    let list: Value =
        serde_json::from_str(&ok(d, &["machine", "list", "-a", app, "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["id"].as_str())
        .unwrap_or_else(|| panic!("no machine {name}"))
        .to_string()
}

#[tokio::test]
async fn test_machine_cli_flows_on_running_machines() {
    let d = Daemon::start_with_runtime().await;
    ok(&d, &["apps", "create", "clirt"]);
    let image = image();
    let out = ok(
        &d,
        &[
            "machine",
            "run",
            &image,
            "-a",
            "clirt",
            "--name",
            "web",
            "-e",
            "GREETING=hi",
            "--",
            "sleep",
            "inf",
        ],
    );
    assert!(out.contains("Machine started"), "{out}");
    let id = machine_id(&d, "clirt", "web");

    // exec runs in the machine with its environment, and passes the exit code on.
    let out = ok(
        &d,
        &[
            "machine",
            "exec",
            &id,
            "-a",
            "clirt",
            "sh -c 'echo $GREETING from $(hostname)'",
        ],
    );
    assert!(out.contains(&format!("hi from {id}")), "{out}");
    let failing = hangar(
        &d,
        &["machine", "exec", &id, "-a", "clirt", "sh -c 'exit 7'"],
    );
    assert_eq!(failing.status.code(), Some(7));

    ok(
        &d,
        &[
            "machine",
            "stop",
            &id,
            "-a",
            "clirt",
            "--timeout",
            "1",
            "-w",
            "30s",
        ],
    );
    let status = ok(&d, &["machine", "status", &id, "-a", "clirt"]);
    assert!(status.contains("stopped"), "{status}");
    ok(&d, &["machine", "start", &id, "-a", "clirt"]);
    ok(
        &d,
        &["machine", "wait", &id, "-a", "clirt", "--state", "started"],
    );

    // status -d prints the config; update --yes changes what is given and keeps the rest.
    let config: Value =
        serde_json::from_str(&ok(&d, &["machine", "status", &id, "-a", "clirt", "-d"])).unwrap();
    assert_eq!(config["env"]["GREETING"], "hi");
    ok(
        &d,
        &[
            "machine",
            "update",
            &id,
            "-a",
            "clirt",
            "-e",
            "GREETING=hello",
            "--yes",
        ],
    );
    let out = ok(
        &d,
        &[
            "machine",
            "exec",
            &id,
            "-a",
            "clirt",
            "sh -c 'echo $GREETING'",
        ],
    );
    assert!(
        out.contains("hello"),
        "the machine rebooted into the new version: {out}"
    );
    let config: Value =
        serde_json::from_str(&ok(&d, &["machine", "status", &id, "-a", "clirt", "-d"])).unwrap();
    assert_eq!(
        config["init"]["cmd"],
        serde_json::json!(["sleep", "inf"]),
        "update kept the command"
    );

    // clone copies the config into a new running machine.
    ok(
        &d,
        &["machine", "clone", &id, "-a", "clirt", "--name", "web-2"],
    );
    let clone = machine_id(&d, "clirt", "web-2");
    let out = ok(
        &d,
        &[
            "machine",
            "exec",
            &clone,
            "-a",
            "clirt",
            "sh -c 'echo $GREETING'",
        ],
    );
    assert!(out.contains("hello"), "{out}");

    // destroy refuses a started machine without --force.
    let refused = hangar(&d, &["machine", "destroy", &id, "-a", "clirt"]);
    assert!(!refused.status.success());
    ok(&d, &["machine", "destroy", &id, "-a", "clirt", "--force"]);
    ok(
        &d,
        &["machine", "destroy", &clone, "-a", "clirt", "--force"],
    );
    let left = ok(&d, &["machine", "list", "-a", "clirt", "-q"]);
    assert!(left.trim().is_empty(), "{left}");

    // Top-level checks run and `run` waits for them, like flyctl.
    let checks = r#"{"checks": {"web": {"type": "http", "port": 8080, "path": "/etc/hostname", "interval": "1s", "timeout": "1s"}}}"#;
    let out = ok(
        &d,
        &[
            "machine",
            "run",
            &image,
            "-a",
            "clirt",
            "--name",
            "checked",
            "--machine-config",
            checks,
            "--",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/",
        ],
    );
    assert!(out.contains("is healthy"), "{out}");
    let checked = machine_id(&d, "clirt", "checked");
    let status: Value = serde_json::from_str(&ok(
        &d,
        &["machine", "status", &checked, "-a", "clirt", "--json"],
    ))
    .unwrap();
    assert_eq!(status["checks"][0]["name"], "web", "{status}");
    assert_eq!(status["checks"][0]["status"], "passing", "{status}");
    ok(
        &d,
        &["machine", "destroy", &checked, "-a", "clirt", "--force"],
    );

    // run --rm in the foreground shows the output and exits with the machine's exit code.
    let out = hangar(
        &d,
        &[
            "machine",
            "run",
            &image,
            "-a",
            "clirt",
            "--rm",
            "--",
            "sh",
            "-c",
            "echo bye from the machine; exit 5",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("bye from the machine"), "{stdout}");
    let left = ok(&d, &["machine", "list", "-a", "clirt", "-q"]);
    assert!(left.trim().is_empty(), "--rm destroyed it: {left}");

    // An image that cannot be had fails the run itself: no machine is left behind.
    let missing = image.replace("hangar/busybox", "hangar/missing");
    let out = hangar(
        &d,
        &["machine", "run", &missing, "-a", "clirt", "--", "true"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hangar/missing"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Success"));
    // A --rm machine whose command cannot run is destroyed too.
    let out = hangar(
        &d,
        &[
            "machine",
            "run",
            &image,
            "-a",
            "clirt",
            "--rm",
            "--",
            "/no/such/command",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed to start"), "{err}");
    let left = ok(&d, &["machine", "list", "-a", "clirt", "-q"]);
    assert!(left.trim().is_empty(), "nothing left behind: {left}");
}
