//! `hangar machine …` end to end: the real CLI binary against a real daemon.
//!
//! The daemon runs without a machine runtime (the harness's default), so flows that need a
//! running machine (exec, stopping a started machine, --shell) are not exercised here.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{hangar_bin, Daemon};
use serde_json::{json, Value};

struct Cli<'a> {
    d: &'a Daemon,
    cwd: tempfile::TempDir,
}

impl<'a> Cli<'a> {
    fn new(d: &'a Daemon) -> Self {
        Cli {
            d,
            cwd: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(hangar_bin())
            .args(args)
            .current_dir(self.cwd.path())
            .env(
                "HANGAR_API_URL",
                format!("unix://{}", self.d.socket.display()),
            )
            .env("HANGAR_API_TOKEN", &self.d.token)
            .env_remove("FLY_APP")
            .env_remove("HANGAR_APP")
            .stdin(Stdio::null())
            .output()
            .expect("run hangar")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "hangar {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and expects exit status 1 with a one-line error; returns that line.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(1),
            "hangar {args:?} should fail:\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        let line = stderr
            .lines()
            .find(|l| l.starts_with("Error: "))
            .unwrap_or_else(|| panic!("no error line in {stderr:?}"))
            .to_string();
        line
    }

    fn config(&self, app: &str, id: &str) -> Value {
        let out = self.ok(&["machine", "status", "-d", id, "-a", app]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status -d is not JSON ({e}): {out}"))
    }

    fn ids(&self, app: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .ok(&["machine", "list", "-q", "-a", app])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        ids.sort();
        ids
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.cwd.path().join(name), text).expect("write fixture");
    }

    fn path(&self, name: &str) -> String {
        self.cwd.path().join(name).display().to_string()
    }
}

/// A daemon without a machine runtime. The harness's `start()` is runtime-less; the variable
/// makes that hold whichever version of the harness is in the tree (the child inherits it).
async fn start_daemon() -> Daemon {
    std::env::set_var("HANGAR_RUNTIME", "none");
    Daemon::start().await
}

/// The value after `label` on a line of the run/create summary.
fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label:?} in {out}"))
}

#[tokio::test]
async fn create_status_update_clone_list_leases_destroy() {
    let d = start_daemon().await;
    d.create_app("cli-app").await;
    let cli = Cli::new(&d);
    cli.write("motd", "hello from a file\n");
    let motd = format!("/etc/motd={}", cli.path("motd"));

    let out = cli.ok(&[
        "machine",
        "create",
        "busybox",
        "sleep",
        "inf",
        "-a",
        "cli-app",
        "--name",
        "web-1",
        "-e",
        "A=1",
        "-p",
        "80/tcp:http",
        "-p",
        "443:80/tcp:http:tls",
        "--file-local",
        &motd,
        "--file-literal",
        "/etc/greeting=hi",
        "-m",
        "team=core",
        "--restart",
        "always",
    ]);
    assert!(out.contains("successfully created in app cli-app"), "{out}");
    let id = field(&out, "Machine ID:");
    assert_eq!(field(&out, "Name:"), "web-1");
    assert_eq!(field(&out, "State:"), "created");
    assert!(field(&out, "Private IP:").starts_with("fdaa:"), "{out}");

    let config = cli.config("cli-app", &id);
    assert_eq!(config["image"], "busybox");
    assert_eq!(config["env"], json!({"A": "1"}));
    assert_eq!(config["init"]["cmd"], json!(["sleep", "inf"]));
    assert_eq!(
        config["guest"],
        json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
    );
    assert_eq!(config["restart"]["policy"], "always");
    assert_eq!(config["metadata"]["team"], "core");
    assert_eq!(config["services"][0]["internal_port"], 80);
    assert_eq!(
        config["services"][0]["ports"],
        json!([{"port": 80, "handlers": ["http"]}, {"port": 443, "handlers": ["http", "tls"]}])
    );
    let files = config["files"].as_array().expect("files");
    assert_eq!(files[0]["guest_path"], "/etc/motd");
    assert_eq!(files[0]["raw_value"], "aGVsbG8gZnJvbSBhIGZpbGUK");
    assert_eq!(files[1]["raw_value"], "aGk=");

    // Update: a diff, then only the given flags change.
    let out = cli.ok(&[
        "machine",
        "update",
        &id,
        "-a",
        "cli-app",
        "-e",
        "B=2",
        "--vm-memory",
        "512",
        "--skip-start",
        "--yes",
    ]);
    assert!(out.contains("+    \"B\": \"2\""), "{out}");
    assert!(out.contains("-    \"memory_mb\": 256"), "{out}");
    assert!(out.contains("updated successfully"), "{out}");
    let updated = cli.config("cli-app", &id);
    assert_eq!(updated["env"], json!({"A": "1", "B": "2"}));
    assert_eq!(updated["guest"]["memory_mb"], 512);
    for kept in ["image", "init", "services", "files", "metadata", "restart"] {
        assert_eq!(updated[kept], config[kept], "{kept} changed");
    }
    // Nothing to change is not an error.
    let out = cli.ok(&["machine", "update", &id, "-a", "cli-app", "--yes"]);
    assert!(out.contains("No changes"), "{out}");
    // Without a terminal, --yes is required.
    let err = cli.fails(&[
        "machine",
        "update",
        &id,
        "-a",
        "cli-app",
        "-e",
        "C=3",
        "--skip-start",
    ]);
    assert!(err.contains("--yes"), "{err}");
    assert!(cli.config("cli-app", &id)["env"].get("C").is_none());

    // Clone: same config, new machine.
    let out = cli.ok(&[
        "machine",
        "clone",
        &id,
        "-a",
        "cli-app",
        "--name",
        "web-2",
        "--skip-start",
        "--clear-cmd",
    ]);
    assert!(out.contains("has been cloned to"), "{out}");
    let ids = cli.ids("cli-app");
    assert_eq!(ids.len(), 2, "{ids:?}");
    let clone_id = ids.iter().find(|m| **m != id).expect("clone id").clone();
    let cloned = cli.config("cli-app", &clone_id);
    assert_eq!(cloned["init"]["cmd"], json!([]));
    assert_eq!(cloned["env"], updated["env"]);
    assert_eq!(cloned["services"], updated["services"]);
    assert_eq!(cloned["guest"], updated["guest"]);

    // Leases: none, then one held through the API.
    let out = cli.ok(&["machine", "leases", "view", &id, "-a", "cli-app"]);
    assert!(out.contains("No lease"), "{out}");
    let lease = d
        .client
        .acquire_lease("cli-app", &id, 60, Some("held by the test"), None)
        .await
        .expect("lease");
    let out = cli.ok(&["machine", "leases", "view", &id, "-a", "cli-app"]);
    assert!(out.contains("held by the test"), "{out}");
    assert!(out.contains(&lease.data.nonce), "{out}");
    let err = cli.fails(&[
        "machine", "update", &id, "-a", "cli-app", "-e", "D=4", "--yes",
    ]);
    assert!(err.contains("leases clear"), "{err}");
    d.client
        .release_lease("cli-app", &id, &lease.data.nonce)
        .await
        .expect("release");

    // Without --app, a machine id names its app (as flyctl looks it up).
    let out = cli.ok(&["machine", "status", &clone_id]);
    assert!(out.contains(&clone_id), "{out}");
    let err = cli.fails(&["machine", "status", "0123456789abcd"]);
    assert!(err.contains("--app"), "{err}");

    // A created machine is not destroyed without --force (flyctl: only stopped or suspended).
    let err = cli.fails(&["machine", "destroy", &clone_id, "-a", "cli-app"]);
    assert!(err.contains("--force"), "{err}");

    // Destroy.
    let out = cli.ok(&["machine", "destroy", "--force", &clone_id, "-a", "cli-app"]);
    assert!(out.contains(&clone_id), "{out}");
    assert_eq!(cli.ids("cli-app"), vec![id.clone()]);

    // --image picks every active machine running that image.
    let out = cli.ok(&["machine", "create", "busybox:2", "-a", "cli-app"]);
    let other = field(&out, "Machine ID:");
    let out = cli.ok(&[
        "machine",
        "destroy",
        "--image",
        "busybox:2",
        "--force",
        "--yes",
        "-a",
        "cli-app",
    ]);
    assert!(
        out.contains(&format!("{other} has been destroyed")),
        "{out}"
    );
    assert_eq!(cli.ids("cli-app"), vec![id.clone()]);
    let out = cli.ok(&[
        "machine", "destroy", "--image", "nope:1", "--yes", "-a", "cli-app",
    ]);
    assert!(out.contains("No machine to destroy"), "{out}");
}

#[tokio::test]
async fn run_without_a_runtime_and_app_resolution() {
    let d = start_daemon().await;
    d.create_app("run-app").await;
    let cli = Cli::new(&d);

    let err = cli.fails(&["machine", "run", "busybox", "-a", "run-app"]);
    assert!(err.starts_with("Error: no machine runtime"), "{err}");
    assert!(cli.ids("run-app").is_empty());

    // An update of a machine that is not running changes it and leaves it down (as on Fly),
    // so it needs no runtime.
    let out = cli.ok(&["machine", "create", "busybox", "-a", "run-app"]);
    let id = field(&out, "Machine ID:");
    let out = cli.ok(&["machine", "update", &id, "-a", "run-app", "-e", "X=1", "-y"]);
    assert!(out.contains("updated successfully (created)"), "{out}");

    // No app anywhere, no terminal: the error names --app.
    let err = cli.fails(&["machine", "run", "busybox"]);
    assert!(err.contains("--app"), "{err}");
    // A named app that does not exist is not created without a terminal.
    let err = cli.fails(&["machine", "create", "busybox", "-a", "no-such-app"]);
    assert!(
        err.contains("no-such-app") && err.contains("does not exist"),
        "{err}"
    );
    // fly.toml supplies the app.
    cli.write("fly.toml", "app = \"run-app\"\n");
    let out = cli.ok(&["machine", "create", "busybox", "--rm"]);
    let id2 = field(&out, "Machine ID:");
    let config = cli.config("run-app", &id2);
    assert_eq!(config["auto_destroy"], true);
    assert_eq!(config["restart"], json!({"policy": "no"}));

    // Flag errors are one line naming the flag, before anything is sent.
    let err = cli.fails(&["machine", "run", "busybox", "-p", "8000-8010"]);
    assert!(err.contains("--port"), "{err}");
    let err = cli.fails(&["machine", "run", "busybox", "--vm-gpus", "1"]);
    assert!(
        err.contains("GPU machines are no longer supported"),
        "{err}"
    );
    // `.` builds the working directory's Dockerfile; without one, a one-line error.
    let err = cli.fails(&["machine", "run", "."]);
    assert!(err.contains("no Dockerfile"), "{err}");
    let err = cli.fails(&["machine", "run", "busybox", "--id", &id]);
    assert!(err.contains("hangar machine update"), "{err}");

    // Process commands need a started machine; the daemon says so.
    let err = cli.fails(&["machine", "exec", &id, "ls /", "-a", "run-app"]);
    assert!(
        err.contains("not started") || err.contains("runtime"),
        "{err}"
    );
    let err = cli.fails(&["machine", "kill", &id, "-a", "run-app"]);
    assert!(err.contains(&id), "{err}");
    assert!(Path::new(&cli.path("fly.toml")).exists());
}
