//! A hostile or careless workload against a real daemon: symlinks that point out of the rootfs,
//! signals and zombies under the container's init, fork bombs. Each test here failed on the
//! main branch before the hardening issue (#20).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{registry, test_image, until, Daemon};
use serde_json::{json, Value};

fn escape_image() -> String {
    format!("{}/hangar/escape:latest", registry())
}

fn log(d: &Daemon, id: &str, container: &str) -> String {
    std::fs::read_to_string(
        d.data_dir
            .join("machines")
            .join(id)
            .join(format!("run/logs/{container}.log")),
    )
    .unwrap_or_default()
}

async fn until_logged(d: &Daemon, id: &str, container: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = log(d, id, container);
        if text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} never logged: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A unique directory name under the host's /tmp that nothing may create.
fn host_marker(tag: &str) -> std::path::PathBuf {
    let p = Path::new("/tmp").join(format!("hangar-escape-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[tokio::test]
async fn test_files_and_mounts_never_follow_image_symlinks_to_the_host() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("esc").await;
    let via_root = host_marker("root");
    let via_up = host_marker("up");
    let via_chain = host_marker("chain");
    let via_vol = host_marker("vol");
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let _ = std::fs::remove_file("/tmp/hangar-escape-hosts");
    let _ = std::fs::remove_file("/tmp/hangar-escape-resolv");
    let script = format!(
        "cat /tmp/{r}/x /tmp/{u}/y /tmp/{c}/z; echo; \
         test -d /tmp/{v}/vol && echo vol-inside; \
         test -L /etc/hosts && echo hosts-link || echo hosts-file; \
         grep -q fly-local-6pn /etc/hosts && echo hosts-ok; echo done",
        r = name(&via_root),
        u = name(&via_up),
        c = name(&via_chain),
        v = name(&via_vol),
    );
    let files = json!([
        {"guest_path": format!("/var/lib/esc/tmp/{}/x", name(&via_root)), "raw_value": b64("X")},
        {"guest_path": format!("/var/lib/up/tmp/{}/y", name(&via_up)), "raw_value": b64("Y")},
        {"guest_path": format!("/var/lib/chain/{}/z", name(&via_chain)), "raw_value": b64("Z")},
    ]);
    let id = d.launch(
        "esc",
        json!({"config": {
            "volumes": [{"name": "scratch", "temp_dir": {}}],
            "containers": [{
                "name": "app",
                "image": escape_image(),
                "cmd": ["/bin/sh", "-c", format!("{script}; sleep 300")],
                "files": files,
                "mounts": [{"name": "scratch", "path": format!("/var/lib/esc/tmp/{}/vol", name(&via_vol))}],
            }]
        }}),
    )
    .await;
    d.wait_state("esc", &id, "started").await;
    let out = until_logged(&d, &id, "app", "done").await;
    assert!(out.contains("XYZ"), "files land inside the rootfs: {out}");
    assert!(out.contains("vol-inside"), "{out}");
    assert!(
        out.contains("hosts-file") && out.contains("hosts-ok"),
        "{out}"
    );
    for p in [&via_root, &via_up, &via_chain, &via_vol] {
        assert!(!p.exists(), "{} was created on the host", p.display());
    }
    for f in ["/tmp/hangar-escape-hosts", "/tmp/hangar-escape-resolv"] {
        assert!(!Path::new(f).exists(), "{f} was written on the host");
    }
    d.destroy_machine("esc", &id, true).await;
}

/// A workload rearranges its persisted rootfs so that `/data` and `/etc` point at host
/// directories; the next start places files and /etc/hosts inside the machine or refuses.
#[tokio::test]
async fn test_persisted_rootfs_symlinks_are_resolved_inside_the_machine() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("persist").await;
    let host_dir = host_marker("persist");
    std::fs::create_dir_all(&host_dir).unwrap();
    let script = format!(
        "if [ -e /armed ]; then echo second-boot; sleep 300; fi; \
         touch /armed; rm -rf /data; ln -s {h} /data; \
         mkdir -p /etc2 && cp -a /etc/. /etc2/ && rm -rf /etc && ln -s {h} /etc; echo armed",
        h = host_dir.display()
    );
    let id = d
        .launch(
            "persist",
            json!({"config": {
                "image": test_image(),
                "rootfs": {"persist": "always"},
                "restart": {"policy": "no"},
                "init": {"exec": ["/bin/sh", "-c", script]},
                "files": [{"guest_path": "/data/x", "raw_value": b64("planted")}],
            }}),
        )
        .await;
    until_logged(&d, &id, "app", "armed").await;
    d.wait_state("persist", &id, "stopped").await;
    // The second boot finds /data and /etc pointing at a path that does not exist inside the
    // machine: it fails to start, and nothing reaches the host directory.
    let r = d
        .client
        .post(format!("/v1/apps/persist/machines/{id}/start"))
        .send_raw()
        .await
        .unwrap();
    let entries: Vec<_> = std::fs::read_dir(&host_dir).unwrap().collect();
    assert!(
        entries.is_empty(),
        "the host dir got {entries:?} (start answered {} {})",
        r.status,
        r.text()
    );
    let _ = std::fs::remove_dir_all(&host_dir);
    d.destroy_machine("persist", &id, true).await;
}

#[tokio::test]
async fn test_user_lookup_never_reads_a_host_passwd_through_a_symlink() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("pw").await;
    // What the image's /etc/passwd symlink names on the host: it must never be read.
    std::fs::write(
        "/tmp/hangar-escape-passwd",
        "app:x:4242:4242:host:/host-secret-home:/bin/sh\n",
    )
    .unwrap();
    let r = d
        .post(
            "/v1/apps/pw/machines",
            json!({"config": {"containers": [{
                "name": "app",
                "image": format!("{}/hangar/passwd-link:latest", registry()),
                "cmd": ["/bin/sh", "-c", "id; echo HOME=$HOME; sleep 300"],
                "user": "app"
            }]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The launch runs after the answer; it must fail (user app is not in the image).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m: Value = d
            .get(&format!("/v1/apps/pw/machines/{id}"))
            .await
            .json()
            .unwrap();
        if !matches!(m["state"].as_str(), Some("created" | "starting")) {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = std::fs::remove_file("/tmp/hangar-escape-passwd");
    assert_eq!(m["state"], "failed", "{m}");
    let text = m.to_string() + &log(&d, &id, "app");
    assert!(
        !text.contains("4242") && !text.contains("host-secret-home"),
        "{text}"
    );
    assert!(text.contains("user \\\"app\\\" not found"), "{text}");
    d.destroy_machine("pw", &id, true).await;
}

#[tokio::test]
async fn test_init_reaps_zombies_forwards_signals_and_reports_signal_deaths() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("init").await;
    // Orphans are reparented to the container's init, which reaps them.
    let zombies = d.launch(
        "init",
        json!({"config": {
            "image": test_image(),
            "init": {"exec": ["/bin/sh", "-c",
                "(for i in 1 2 3 4 5; do sleep 0.1 & done; exec sleep 0.3) & sleep 1.5; \
                 echo zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l); sleep 300"]},
        }}),
    )
    .await;
    let out = until_logged(&d, &zombies, "app", "zombies=").await;
    assert!(out.contains("zombies=0"), "{out}");

    // `kill -TERM 1` reaches the workload as for any process.
    let term = d
        .launch(
            "init",
            json!({"config": {
                "image": test_image(),
                "restart": {"policy": "no"},
                "init": {"exec": ["/bin/sh", "-c",
                    "trap 'echo got-term; exit 3' TERM; kill -TERM 1; sleep 5 & wait"]},
            }}),
        )
        .await;
    d.wait_state("init", &term, "stopped").await;
    assert!(log(&d, &term, "app").contains("got-term"));
    let ex = d.exit_events("init", &term).await;
    assert_eq!(ex[0]["request"]["exit_event"]["exit_code"], 3, "{ex:?}");

    // A workload that kills itself with SIGKILL died of a signal; it did not exit 0.
    let killed = d
        .launch(
            "init",
            json!({"config": {
                "image": test_image(),
                "restart": {"policy": "no"},
                "init": {"exec": ["/bin/sh", "-c", "sleep 0.2; kill -9 $$"]},
            }}),
        )
        .await;
    d.wait_state("init", &killed, "stopped").await;
    let ex = d.exit_events("init", &killed).await;
    let exit = &ex[0]["request"]["exit_event"];
    assert_eq!(exit["exit_code"], 137, "{ex:?}");
    assert_eq!(exit["signal"], 9, "{ex:?}");
    for id in [zombies, term, killed] {
        d.destroy_machine("init", &id, true).await;
    }
}

#[tokio::test]
async fn test_a_fork_bomb_is_contained_and_destroyable() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("bomb").await;
    let id = d
        .launch(
            "bomb",
            json!({"config": {
                "image": test_image(),
                "restart": {"policy": "no"},
                "init": {"exec": ["/bin/sh", "-c", "b() { b | b & }; b; sleep 30"]},
            }}),
        )
        .await;
    d.wait_state("bomb", &id, "started").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = d
        .delete(&format!("/v1/apps/bomb/machines/{id}?force=true"))
        .await;
    assert_eq!(r.status, 200, "destroy: {}", r.text());
    let r = d.get(&format!("/v1/apps/bomb/machines/{id}")).await;
    assert_eq!(r.status, 404, "destroyed machines are gone: {}", r.text());
    // The cgroup (and with it every process of the bomb) goes right after the answer.
    let cgroups = ["/sys/fs/cgroup/pids/hangar", "/sys/fs/cgroup/hangar"];
    until(
        || {
            cgroups
                .iter()
                .all(|root| !Path::new(root).join(&id).exists())
        },
        "the bomb's cgroup removed",
    )
    .await;
}

/// A machine whose workload exits while the daemon is down gets its restart policy when the
/// daemon comes back, with the exit code Pilot reported; restart counts survive the restart.
#[tokio::test]
async fn test_exit_while_the_daemon_is_down_gets_the_restart_policy() {
    let mut d = Daemon::start_with_runtime().await;
    d.create_app("down").await;
    let id = d
        .launch(
            "down",
            json!({"config": {
                "image": test_image(),
                "restart": {"policy": "always"},
                "init": {"exec": ["/bin/sh", "-c", "echo boot; sleep 1; exit 1"]},
            }}),
        )
        .await;
    d.wait_state("down", &id, "started").await;
    d.kill9();
    // The workload exits (code 1) while nobody watches; Pilot writes its exit report.
    let report = d.data_dir.join("machines").join(&id).join("run/exit.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !report.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the machine never exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        let ex = d.exit_events("down", &id).await;
        if let Some(e) = ex.first() {
            break e.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no exit recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exit["request"]["exit_event"]["exit_code"], 1, "{exit}");
    assert_eq!(exit["request"]["exit_event"]["restarting"], true, "{exit}");
    // Restarted: a second boot logs again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while log(&d, &id, "app").matches("boot").count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never restarted: {}",
            log(&d, &id, "app")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next exit's count includes the restart recorded before (from the event log).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ex = d.exit_events("down", &id).await;
        if ex.len() >= 2 {
            assert_eq!(ex[0]["request"]["restart_count"], 1, "{ex:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ex:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.destroy_machine("down", &id, true).await;
}

/// A machine runs the image digest it was created with until it is updated, even when its
/// tag is re-imported with other content; the old image stays in use and out of prune.
#[tokio::test]
async fn test_machines_run_their_pinned_digest_until_updated() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("pin").await;
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-images");
    assert!(
        layout.join("index.json").exists(),
        "run scripts/build-test-images first (.ci/run does)"
    );
    let import = |select: &str| {
        let out = d.cli(&[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--select",
            select,
            "--tag",
            "localhost/moving:1",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // busybox has no /data; hangar/layers does.
    import("busybox");
    let id = d.launch(
        "pin",
        json!({"config": {
            "image": "localhost/moving:1",
            "init": {"exec": ["/bin/sh", "-c", "test -d /data && echo content=layers || echo content=busybox; sleep 300"]},
        }}),
    )
    .await;
    d.wait_state("pin", &id, "started").await;
    until_logged(&d, &id, "app", "content=busybox").await;
    let m: Value = d
        .get(&format!("/v1/apps/pin/machines/{id}"))
        .await
        .json()
        .unwrap();
    let pinned = m["image_ref"]["digest"].as_str().unwrap().to_string();
    assert!(pinned.starts_with("sha256:"), "{m}");

    import("layers");
    let out = d.cli(&["image", "prune", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = d
        .client
        .post(format!("/v1/apps/pin/machines/{id}/restart"))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("pin", &id, "started").await;
    let text = until_logged(&d, &id, "app", "content=").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = log(&d, &id, "app").to_string() + &text;
    assert!(
        !text.contains("content=layers"),
        "ran the re-imported tag: {text}"
    );
    let m: Value = d
        .get(&format!("/v1/apps/pin/machines/{id}"))
        .await
        .json()
        .unwrap();
    assert_eq!(m["image_ref"]["digest"], pinned.as_str(), "{m}");

    // An update takes what the tag names now.
    let r = d
        .post(
            &format!("/v1/apps/pin/machines/{id}"),
            json!({"config": {
                "image": "localhost/moving:1",
                "init": {"exec": ["/bin/sh", "-c", "test -d /data && echo content=layers || echo content=busybox; sleep 300"]},
            }}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    until_logged(&d, &id, "app", "content=layers").await;
    let m: Value = d
        .get(&format!("/v1/apps/pin/machines/{id}"))
        .await
        .json()
        .unwrap();
    assert_ne!(m["image_ref"]["digest"], pinned.as_str(), "{m}");
    d.destroy_machine("pin", &id, true).await;
}

/// A machine larger than the host is refused with Fly's capacity error, and nothing is created.
#[tokio::test]
async fn test_admission_refuses_what_the_host_cannot_hold() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("cap").await;
    let r = d
        .post(
            "/v1/apps/cap/machines",
            json!({"config": {
                "image": test_image(),
                "guest": {"cpu_kind": "performance", "cpus": 128, "memory_mb": 262144},
            }}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let body: Value = r.json().unwrap();
    assert_eq!(body["status"], "insufficient_capacity", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("aborted: could not reserve resource for machine: insufficient CPUs"),
        "{body}"
    );
    let list: Vec<Value> = d.get("/v1/apps/cap/machines").await.json().unwrap();
    assert!(list.is_empty(), "{list:?}");

    // A running machine updated to a size the host cannot hold (the update would relaunch it):
    // refused, unchanged. (A stopped one takes the new size and stays stopped; its next start
    // is what admission refuses.)
    let id = d
        .launch(
            "cap",
            json!({"config": {"image": test_image(), "init": {"exec": ["sleep", "600"]}}}),
        )
        .await;
    d.wait_state("cap", &id, "started").await;
    let m: Value = d
        .get(&format!("/v1/apps/cap/machines/{id}"))
        .await
        .json()
        .unwrap();
    let id = id.as_str();
    let r = d
        .post(
            &format!("/v1/apps/cap/machines/{id}"),
            json!({"config": {"image": test_image(), "guest": {"cpu_kind": "performance", "cpus": 128, "memory_mb": 262144}}}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let got: Value = d
        .get(&format!("/v1/apps/cap/machines/{id}"))
        .await
        .json()
        .unwrap();
    assert_eq!(got["instance_id"], m["instance_id"], "unchanged: {got}");
    d.destroy_machine("cap", id, true).await;
}

/// `rootfs.size_gb` bounds what the machine can write to its root filesystem, and the disk
/// behind it (a loop-mounted image) goes with the machine.
#[tokio::test]
async fn test_rootfs_size_is_enforced() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("size").await;
    let id = d
        .launch(
            "size",
            json!({"config": {
                "image": test_image(),
                "rootfs": {"size_gb": 1},
                "init": {"exec": ["/bin/sh", "-c",
                    "head -c 1300000000 /dev/zero > /big; echo wrote=$?; \
                     echo size=$(stat -c %s /big); sleep 300"]},
            }}),
        )
        .await;
    d.wait_state("size", &id, "started").await;
    let out = until_logged(&d, &id, "app", "size=").await;
    let size: u64 = out
        .split("size=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        size < 1_100_000_000,
        "wrote {size} bytes past a 1 GB rootfs: {out}"
    );
    assert!(!out.contains("wrote=0"), "the write must fail: {out}");
    d.destroy_machine("size", &id, true).await;
    let loops = || {
        std::process::Command::new("losetup")
            .arg("-a")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    until(
        || !loops().contains(&id),
        "the machine's loop device detached",
    )
    .await;
}

/// Two daemons on one host hand out different uid ranges (claimed host-wide).
#[tokio::test]
async fn test_two_daemons_never_share_a_uid_range() {
    let a = Daemon::start_with_runtime().await;
    let b = Daemon::start_with_runtime().await;
    let mut uids = Vec::new();
    for d in [&a, &b] {
        d.create_app("uids").await;
        let id = d
            .launch(
                "uids",
                json!({"config": {"image": test_image(), "init": {"exec": ["/bin/sleep", "inf"]}}}),
            )
            .await;
        d.wait_state("uids", &id, "started").await;
        // The machine root's host uid: the owner of its Pilot's run dir while it runs.
        let run = d.data_dir.join("machines").join(&id).join("run");
        uids.push(std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata(&run).unwrap(),
        ));
    }
    assert_ne!(
        uids[0], uids[1],
        "both machines' roots are host uid {}",
        uids[0]
    );
}

/// Files under /proc, /sys and /dev would vanish under the kernel's mounts: a 400. A secret the
/// app does not have and unmountable volumes are refused when written, not at the first boot.
#[tokio::test]
async fn test_unplaceable_files_and_unsupported_sources_are_refused_at_create() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("refuse").await;
    for path in ["/proc/x", "/sys/kernel/y", "/dev/z"] {
        let r = d
            .post(
                "/v1/apps/refuse/machines",
                json!({"config": {"image": test_image(),
                    "files": [{"guest_path": path, "raw_value": b64("x")}]}}),
            )
            .await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains("guest_path"), "{}", r.text());
    }
    for body in [
        json!({"skip_launch": true, "config": {"image": test_image(),
            "files": [{"guest_path": "/etc/x", "secret_name": "DB_URL"}]}}),
        json!({"skip_launch": true, "config": {
            "volumes": [{"name": "data"}],
            "containers": [{"name": "app", "image": test_image(), "mounts": [{"name": "data", "path": "/data"}]}]}}),
    ] {
        let r = d.post("/v1/apps/refuse/machines", body).await;
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let list: Vec<Value> = d.get("/v1/apps/refuse/machines").await.json().unwrap();
    assert!(list.is_empty(), "{list:?}");
}

/// What one machine holds (env, file contents, its writable layer) and the state database are
/// not readable by an unprivileged host user who guesses the paths.
#[tokio::test]
async fn test_an_unprivileged_user_cannot_read_machine_secrets() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("priv").await;
    let id = d.launch(
        "priv",
        json!({"config": {
            "image": test_image(),
            "env": {"SECRET_TOKEN": "s3cr3t-env"},
            "files": [{"guest_path": "/etc/app/secret.txt", "raw_value": b64("s3cr3t-file"), "mode": 420}],
            "init": {"exec": ["/bin/sh", "-c", "echo s3cr3t-written > /written; sleep 300"]},
        }}),
    )
    .await;
    d.wait_state("priv", &id, "started").await;
    until_logged(&d, &id, "app", "").await;
    let machine = d.data_dir.join("machines").join(&id);
    let candidates = [
        d.data_dir.join("state.db"),
        d.data_dir.join("state.db-wal"),
        machine.join("run/pilot.json"),
        machine.join("containers/app/upper/etc/app/secret.txt"),
        machine.join("containers/app/upper/written"),
        machine.join("containers/app/rootfs/etc/app/secret.txt"),
        machine.join("run/logs/app.log"),
    ];
    // Root can read them (so the paths are right)...
    assert!(
        candidates.iter().any(|p| std::fs::read(p).is_ok()),
        "{candidates:?}"
    );
    for path in &candidates {
        // ...nobody cannot.
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(path)
            .output()
            .expect("setpriv (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && !text.contains("s3cr3t"),
            "an unprivileged user read {}: {text}",
            path.display()
        );
    }
    d.destroy_machine("priv", &id, true).await;
}

/// Destroy answers before the slow part of removing a cgroup (a helper finishes it): under
/// repeated concurrent create/destroy, nothing of any machine is left once the helpers are
/// done, neither processes, mounts, cgroups (live or retired) nor machine dirs.
#[tokio::test]
async fn test_churn_of_create_and_destroy_leaves_nothing() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("churn").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let mut round = Vec::new();
        for _ in 0..3 {
            round.push(
                d.launch(
                    "churn",
                    json!({"config": {"image": test_image(), "init": {"exec": ["/bin/sh", "-c", "head -c 4000000 /dev/zero > /tmp/f; sleep 300"]}}}),
                )
                .await,
            );
        }
        for id in &round {
            d.wait_state("churn", id, "started").await;
        }
        let destroys = round.iter().map(|id| {
            let client = d.client.clone();
            let id = id.clone();
            async move {
                client
                    .delete(format!("/v1/apps/churn/machines/{id}"))
                    .query("force", "true")
                    .send_raw()
                    .await
                    .unwrap()
                    .status
            }
        });
        for status in futures_join(destroys).await {
            assert_eq!(status, 200);
        }
        ids.extend(round);
    }
    let leftovers = || {
        let mut left = Vec::new();
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            for ctrl in ["", "memory", "cpu", "pids", "freezer", "cpuacct"] {
                let dir = Path::new(root).join(ctrl).join("hangar");
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if ids.iter().any(|id| name.contains(id.as_str())) {
                        left.push(e.path().display().to_string());
                    }
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let data = d.data_dir.display().to_string();
        left.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&data))
                .map(str::to_string),
        );
        for id in &ids {
            if d.data_dir.join("machines").join(id).exists() {
                left.push(format!("machine dir {id}"));
            }
        }
        left
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = leftovers();
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the futures concurrently (a join_all without another dependency).
async fn futures_join<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
