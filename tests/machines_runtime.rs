//! Machines that really run: sandbox, Pilot and the lifecycle, against a real daemon and
//! images pulled from the loopback test registry (`scripts/registry start && push`).

mod common;

use common::test_image as image;

use std::time::Duration;

use common::{error_text, until, Daemon};
use serde_json::{json, Value};

fn id(m: &Value) -> String {
    m["id"].as_str().unwrap().to_string()
}

/// Creates and launches a machine running `script` under `sh -c`.
async fn run(d: &Daemon, app: &str, script: &str, extra: Value) -> String {
    let mut body =
        json!({"config": {"image": image(), "init": {"exec": ["/bin/sh", "-c", script]}}});
    common::merge(&mut body, extra);
    let r = d.post(&format!("/v1/apps/{app}/machines"), body).await;
    assert_eq!(r.status, 200, "create: {}", r.text());
    id(&r.json::<Value>().unwrap())
}

async fn events(d: &Daemon, app: &str, id: &str) -> Vec<Value> {
    d.get(&format!("/v1/apps/{app}/machines/{id}/events?limit=50"))
        .await
        .json()
        .unwrap()
}

fn exits(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "exit").collect()
}

/// Creates a machine from a full request body; returns its id and JSON.
async fn create(d: &Daemon, app: &str, body: Value) -> (String, Value) {
    let r = d.post(&format!("/v1/apps/{app}/machines"), body).await;
    assert_eq!(r.status, 200, "create: {}", r.text());
    let m: Value = r.json().unwrap();
    (id(&m), m)
}

/// Polls until the machine is `stopping` (`wait` does not take transient states).
async fn until_stopping(d: &Daemon, app: &str, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got: Value = d
            .get(&format!("/v1/apps/{app}/machines/{id}"))
            .await
            .json()
            .unwrap();
        if got["state"] == "stopping" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never stopping: {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the machine's app log contains `needle`.
async fn until_logged(d: &Daemon, id: &str, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !log(d, id).contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} never logged: {}",
            log(d, id)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log(d: &Daemon, id: &str) -> String {
    std::fs::read_to_string(
        d.data_dir
            .join("machines")
            .join(id)
            .join("run/logs/app.log"),
    )
    .unwrap_or_default()
}

#[tokio::test]
async fn test_exit_codes_and_restart_policies() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("rp").await;

    let no = run(
        &d,
        "rp",
        "exit 3",
        json!({"config": {"restart": {"policy": "no"}}}),
    )
    .await;
    let on_failure = run(
        &d,
        "rp",
        "exit 3",
        json!({"config": {"restart": {"policy": "on-failure", "max_retries": 2}}}),
    )
    .await;
    let ok_exit = run(
        &d,
        "rp",
        "exit 0",
        json!({"config": {"restart": {"policy": "on-failure"}}}),
    )
    .await;
    let destroy = run(
        &d,
        "rp",
        "exit 0",
        json!({"config": {"restart": {"policy": "no"}, "auto_destroy": true}}),
    )
    .await;

    d.wait_state("rp", &no, "stopped").await;
    let ev = events(&d, "rp", &no).await;
    let ex = exits(&ev);
    assert_eq!(ex.len(), 1, "{ev:?}");
    assert_eq!(ex[0]["request"]["exit_event"]["exit_code"], 3);
    assert_eq!(ex[0]["request"]["exit_event"]["restarting"], false);
    assert_eq!(ex[0]["request"]["exit_event"]["requested_stop"], false);

    // on-failure with max_retries 2: the first run plus two restarts, then it stays stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = events(&d, "rp", &on_failure).await;
        if exits(&ev).len() >= 3 {
            let m: Value = d
                .get(&format!("/v1/apps/rp/machines/{on_failure}"))
                .await
                .json()
                .unwrap();
            if m["state"] == "stopped" {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "on-failure did not settle: {ev:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ev = events(&d, "rp", &on_failure).await;
    let ex = exits(&ev);
    assert_eq!(ex.len(), 3, "{ev:?}");
    assert!(ex
        .iter()
        .all(|e| e["request"]["exit_event"]["exit_code"] == 3));
    assert_eq!(
        ex[0]["request"]["exit_event"]["restarting"], false,
        "the latest exit is final"
    );
    assert_eq!(ex[1]["request"]["exit_event"]["restarting"], true);

    d.wait_state("rp", &ok_exit, "stopped").await;
    assert_eq!(
        exits(&events(&d, "rp", &ok_exit).await).len(),
        1,
        "exit 0 is not a failure"
    );

    d.wait_state("rp", &destroy, "destroyed").await;

    // `always` restarts even after a clean exit.
    let always = run(
        &d,
        "rp",
        "sleep 0.2; exit 0",
        json!({"config": {"restart": {"policy": "always"}}}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while exits(&events(&d, "rp", &always).await).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "always did not restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = d
        .delete(&format!("/v1/apps/rp/machines/{always}?force=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A program the kernel refuses to execute (here not executable) is found only by the
/// `execve`, after the container counted as started (as on Fly, and as with runc): it is the
/// workload's exit, code 126 as a shell gives it, with the reason in the machine's log.
#[tokio::test]
async fn test_a_program_that_cannot_execute_exits_126_with_its_reason_logged() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("nx").await;
    let (id, _) = create(
        &d,
        "nx",
        json!({"config": {"image": image(), "init": {"exec": ["/etc/passwd"]},
               "restart": {"policy": "no"}}}),
    )
    .await;
    d.wait_state("nx", &id, "stopped").await;
    let ev = events(&d, "nx", &id).await;
    let ex = exits(&ev);
    assert_eq!(ex.len(), 1, "{ev:?}");
    assert_eq!(ex[0]["request"]["exit_event"]["exit_code"], 126, "{ev:?}");
    until_logged(&d, &id, "exec /etc/passwd: Permission denied").await;
}

#[tokio::test]
async fn test_lifecycle_stop_escalation_suspend_resume() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("lc").await;
    // The counter writes a number every 50 ms; it ignores SIGINT (and the SIGUSR1 sent below),
    // so stop escalates.
    let m = run(&d, "lc", "trap '' INT TERM USR1; i=0; while true; do i=$((i+1)); echo $i > /tmp/count; echo tick $i; sleep 0.05; done", json!({"config": {"stop_config": {"timeout": "1s"}}})).await;
    let path = format!("/v1/apps/lc/machines/{m}");
    d.wait_state("lc", &m, "started").await;

    // Suspend freezes the counter; start resumes it.
    let r = d
        .client
        .post(format!("{path}/suspend"))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("lc", &m, "suspended").await;
    let before = log(&d, &m).lines().count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        log(&d, &m).lines().count(),
        before,
        "a suspended machine does not advance"
    );
    let r = d
        .client
        .post(format!("{path}/start"))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["previous_state"], "suspended");
    d.wait_state("lc", &m, "started").await;
    until(
        || log(&d, &m).lines().count() > before,
        "resumed machine advances",
    )
    .await;

    let r = d
        .post(&format!("{path}/signal"), json!({"signal": "SIGUSR1"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let started = std::time::Instant::now();
    let r = d.post(&format!("{path}/stop"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("lc", &m, "stopped").await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "SIGINT was ignored, SIGKILL came after the 1s timeout"
    );
    let ev = events(&d, "lc", &m).await;
    let ex = exits(&ev);
    assert_eq!(ex[0]["request"]["exit_event"]["requested_stop"], true);
    assert_eq!(ex[0]["request"]["exit_event"]["signal"], 9);

    // Start again from stopped, restart in place, then destroy needs force while started.
    let r = d
        .client
        .post(format!("{path}/start"))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("lc", &m, "started").await;
    let r = d
        .client
        .post(format!("{path}/restart"))
        .query("timeout", "1s")
        .query("signal", "SIGKILL")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("lc", &m, "started").await;
    let r = d.delete(&path).await;
    assert_eq!(r.status, 412);
    assert!(error_text(&r).contains("not currently stopped"));
    let r = d
        .client
        .delete(&path)
        .query("kill", "true")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    d.wait_state("lc", &m, "destroyed").await;
    let dir = d.data_dir.join("machines").join(&m);
    until(|| !dir.exists(), "machine dir removed").await;
}

#[tokio::test]
async fn test_isolation_env_files_and_limits() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("iso").await;
    let script = r#"
echo "uid=$(id -u)"
echo "hostname=$(hostname)"
echo "pid1=$(tr '\0' ' ' < /proc/1/cmdline | sed 's/ *$//') self=$$"
echo "app=$FLY_APP_NAME machine=$FLY_MACHINE_ID region=$FLY_REGION mem=$FLY_VM_MEMORY_MB custom=$CUSTOM"
echo "file=$(cat /etc/hello.txt) mode=$(stat -c %a /etc/hello.txt)"
ls /work >/dev/null 2>&1 && echo "host=visible" || echo "host=hidden"
mount -t tmpfs none /mnt 2>/dev/null && echo "mount=allowed" || echo "mount=denied"
echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo "procsys=writable" || echo "procsys=readonly"
cat /proc/kcore >/dev/null 2>&1; echo "kcore=$(wc -c < /proc/kcore)"
echo junk > /tmp/m.ko; echo "insmod=$(busybox insmod /tmp/m.ko 2>&1)"
echo h > /proc/sysrq-trigger 2>/dev/null && echo "sysrq=writable" || echo "sysrq=denied"
echo "caps=$(grep CapEff /proc/self/status)"
echo "nnp=$(grep NoNewPrivs /proc/self/status | tr -d ' \t')"
echo "seccomp=$(grep '^Seccomp:' /proc/self/status | tr -d ' \t')"
ls /dev | tr '\n' ' '; echo
echo "lo=$(cat /sys/class/net/lo/operstate 2>/dev/null)"
echo "uidmap=$(head -n1 /proc/self/uid_map | tr -s ' ' ':')"
echo "modules=$(grep -c . /proc/modules 2>/dev/null)"
echo x > /sys/kernel/profiling 2>/dev/null && echo "sys=writable" || echo "sys=readonly"
echo "checks=$((40+2))"
sleep 300
"#;
    let m = run(
        &d,
        "iso",
        script,
        json!({"config": {
            "env": {"CUSTOM": "yes"},
            "guest": {"cpus": 2, "memory_mb": 512},
            "files": [{"guest_path": "/etc/hello.txt", "raw_value": "aGVsbG8K", "mode": 420}]
        }}),
    )
    .await;
    d.wait_state("iso", &m, "started").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !log(&d, &m).contains("checks=42") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "script did not finish: {}",
            log(&d, &m)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = log(&d, &m);
    assert!(out.contains("uid=0"), "{out}");
    assert!(out.contains(&format!("hostname={m}")), "{out}");
    assert!(
        out.contains("pid1=hangar init self=2"),
        "the container's init is PID 1, its command PID 2: {out}"
    );
    assert!(
        out.contains(&format!(
            "app=iso machine={m} region=local mem=512 custom=yes"
        )),
        "{out}"
    );
    assert!(out.contains("file=hello mode=644"), "{out}");
    assert!(out.contains("host=hidden"), "{out}");
    assert!(out.contains("mount=denied"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("insmod=") && l.contains("Operation not permitted")),
        "loading a kernel module is refused: {out}"
    );
    assert!(out.contains("sysrq=denied"), "{out}");
    assert!(out.contains("procsys=readonly"), "{out}");
    assert!(
        out.contains("kcore=0") || !std::path::Path::new("/proc/kcore").exists(),
        "{out}"
    );
    assert!(
        out.contains("CapEff:\t00000000a80425fb"),
        "Docker's default capabilities: {out}"
    );
    assert!(out.contains("nnp=NoNewPrivs:1"), "{out}");
    assert!(out.contains("seccomp=Seccomp:2"), "{out}");
    // Root in the machine is an unprivileged host uid (its range starts at 2^20).
    let uidmap = out
        .lines()
        .filter_map(|l| l.split(" stdout uidmap=").nth(1))
        .next_back()
        .unwrap_or_default();
    let base: u64 = uidmap
        .trim_matches(':')
        .split(':')
        .nth(1)
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    assert!(
        base >= 1 << 20,
        "machine root maps to host uid {base}: {uidmap}"
    );
    assert!(out.contains("sys=readonly"), "{out}");
    assert!(
        out.contains("lo=unknown") || out.contains("lo=up"),
        "loopback up: {out}"
    );
    assert!(
        !out.contains("sda") && !out.contains("kmsg"),
        "minimal /dev: {out}"
    );

    // The machine's root is an unprivileged host uid, and its limits are in its cgroup.
    let pid: i32 =
        std::fs::read_to_string(d.data_dir.join("machines").join(&m).join("runtime.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["pid"].as_i64())
            .unwrap() as i32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        !uid_line.contains("\t0\t"),
        "pilot is not host root: {uid_line}"
    );
    let cg = cgroup_dir(&m);
    match cg {
        CgroupFiles::V1 { memory, cpu } => {
            assert_eq!(
                std::fs::read_to_string(memory.join("memory.limit_in_bytes"))
                    .unwrap()
                    .trim(),
                (512u64 << 20).to_string()
            );
            assert_eq!(
                std::fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
                    .unwrap()
                    .trim(),
                "200000"
            );
        }
        CgroupFiles::V2(dir) => {
            assert_eq!(
                std::fs::read_to_string(dir.join("memory.max"))
                    .unwrap()
                    .trim(),
                (512u64 << 20).to_string()
            );
            assert_eq!(
                std::fs::read_to_string(dir.join("cpu.max")).unwrap().trim(),
                "200000 100000"
            );
        }
    }
    // Once running, the machine records what its image resolved to.
    let got: Value = d
        .get(&format!("/v1/apps/iso/machines/{m}"))
        .await
        .json()
        .unwrap();
    assert!(
        got["image_ref"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{got}"
    );
    assert_eq!(got["image_ref"]["repository"], "hangar/busybox");

    // An update reboots a running machine into the new version.
    let v1 = got["instance_id"].as_str().unwrap().to_string();
    let mut config = got["config"].clone();
    config["env"]["CUSTOM"] = json!("updated");
    config["init"]["exec"] = json!([
        "/bin/sh",
        "-c",
        "echo custom=$CUSTOM version=$FLY_MACHINE_VERSION; sleep 300"
    ]);
    let r = d
        .post(
            &format!("/v1/apps/iso/machines/{m}"),
            json!({"config": config, "current_version": v1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v2 = r.json::<Value>().unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);
    d.wait_state("iso", &m, "started").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !log(&d, &m).contains(&format!("custom=updated version={v2}")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new version did not run: {}",
            log(&d, &m)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.destroy_machine("iso", &m, true).await;
}

enum CgroupFiles {
    V1 {
        memory: std::path::PathBuf,
        cpu: std::path::PathBuf,
    },
    V2(std::path::PathBuf),
}

fn cgroup_dir(id: &str) -> CgroupFiles {
    let root = std::path::Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        CgroupFiles::V2(root.join("hangar").join(id))
    } else {
        CgroupFiles::V1 {
            memory: root.join("memory/hangar").join(id),
            cpu: root.join("cpu/hangar").join(id),
        }
    }
}

#[tokio::test]
async fn test_oom_is_reported() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("oom").await;
    // /dev/zero has no newline, so tail keeps everything it reads: far beyond 256 MB.
    let m = run(
        &d,
        "oom",
        "head -c 1000m /dev/zero | tail > /dev/null",
        json!({"config": {"restart": {"policy": "no"}}}),
    )
    .await;
    d.wait_state("oom", &m, "stopped").await;
    let ev = events(&d, "oom", &m).await;
    let ex = exits(&ev);
    assert_eq!(ex[0]["request"]["exit_event"]["oom_killed"], true, "{ev:?}");
    // The logs say so too, as a line from the platform.
    let r = d
        .client
        .get("/hangar/v1/apps/oom/logs")
        .query("instance", &m)
        .send_raw()
        .await
        .unwrap();
    let text = r.text();
    assert!(
        text.contains("\"container\":\"hangar\"") && text.contains("Out of memory"),
        "{text}"
    );
    // And `machine status` names it.
    let out = d.cli(&["machine", "status", &m, "-a", "oom"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("Last exit: out of memory"), "{status}");
}

#[tokio::test]
async fn test_machines_survive_daemon_sigkill() {
    let mut d = Daemon::start_with_runtime().await;
    d.create_app("surv").await;
    let m = run(
        &d,
        "surv",
        "while true; do echo alive; sleep 0.1; done",
        json!({}),
    )
    .await;
    d.wait_state("surv", &m, "started").await;
    // This one exits while the daemon is down; the restart must record how.
    let gone = run(
        &d,
        "surv",
        "sleep 0.3; echo bye; exit 3",
        json!({"config": {"restart": {"policy": "no"}}}),
    )
    .await;
    d.wait_state("surv", &gone, "started").await;
    d.kill9();
    let before = log(&d, &m).lines().count();
    until(
        || log(&d, &m).lines().count() > before,
        "the machine keeps running without the daemon",
    )
    .await;
    d.restart().await;
    let got: Value = d
        .get(&format!("/v1/apps/surv/machines/{m}"))
        .await
        .json()
        .unwrap();
    assert_eq!(got["state"], "started", "re-adopted");
    let got = d.wait_state("surv", &gone, "stopped").await;
    let evs = events(&d, "surv", &gone).await;
    let exit = evs.iter().find(|e| e["type"] == "exit");
    assert_eq!(
        exit.map(|e| &e["request"]["exit_event"]["exit_code"]),
        Some(&json!(3)),
        "the exit while the daemon was down is recorded: {got} {evs:?}"
    );
    let r = d.delete(&format!("/v1/apps/surv/machines/{gone}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d
        .post(
            &format!("/v1/apps/surv/machines/{m}/stop"),
            json!({"signal": "SIGKILL", "timeout": "1s"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("surv", &m, "stopped").await;
    let r = d.delete(&format!("/v1/apps/surv/machines/{m}")).await;
    assert_eq!(r.status, 200);
}

/// Mounts under this daemon's data dir, and processes carrying the test's marker.
fn count_host_state(data_dir: &std::path::Path) -> (usize, usize) {
    let dir = data_dir.display().to_string();
    // Mount points under the data dir, in the host's mount namespace or in any other (a warm
    // sandbox's root filesystems are mounted in the machine's namespace only).
    let mut namespaces = std::collections::HashSet::new();
    let mut points = std::collections::HashSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(ns) = std::fs::read_link(e.path().join("ns/mnt")) else {
            continue;
        };
        if !namespaces.insert(ns) {
            continue;
        }
        let info = std::fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        points.extend(
            info.lines()
                .filter(|l| l.contains(&dir))
                .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string)),
        );
    }
    (points.len(), procs_named("hangar-leak-check"))
}

/// Processes on the host whose command line contains `marker`.
fn procs_named(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cmdline")).is_ok_and(|c| c.contains(marker))
        })
        .count()
}

/// The machines (by id) whose dirs have mounts in each mount namespace on the host.
fn machines_by_namespace(
    data_dir: &std::path::Path,
) -> std::collections::HashMap<String, std::collections::BTreeSet<String>> {
    let machines = format!("{}/machines/", data_dir.display());
    let mut by_ns = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(ns) = std::fs::read_link(e.path().join("ns/mnt")) else {
            continue;
        };
        let info = std::fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        let ids: std::collections::BTreeSet<String> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter_map(|point| point.strip_prefix(&machines))
            .filter_map(|rest| rest.split('/').next())
            .map(str::to_string)
            .collect();
        by_ns
            .entry(ns.display().to_string())
            .or_insert_with(std::collections::BTreeSet::new)
            .extend(ids);
    }
    by_ns
}

fn cgroup_exists(id: &str) -> bool {
    match cgroup_dir(id) {
        CgroupFiles::V1 { memory, cpu } => memory.exists() || cpu.exists(),
        CgroupFiles::V2(d) => d.exists(),
    }
}

/// A destroy answers before its machine's release is done: a daemon stopped right after still
/// finishes the release (shutdown waits for it), and one killed right after leaves the rest to
/// its next start, which also keeps the machine's logs as a destroy does.
#[tokio::test]
async fn test_releases_outlive_neither_shutdown_nor_a_crash() {
    let mut d = Daemon::start_with_runtime().await;
    d.create_app("rel").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let script = "echo hello-release; exec sh -c 'sleep 300; true' hangar-release-check";
        ids.push(run(&d, "rel", script, json!({})).await);
    }
    for m in &ids {
        d.wait_state("rel", m, "started").await;
        until_logged(&d, m, "hello-release").await;
    }
    let machines = d.data_dir.join("machines");
    let gone = |m: &String| !cgroup_exists(m) && !machines.join(m).exists();
    // Destroyed, then the daemon killed at once: the next start finishes the releases.
    for m in &ids[..2] {
        d.destroy_machine("rel", m, true).await;
    }
    d.kill9();
    d.restart().await;
    until(
        || ids[..2].iter().all(gone),
        "releases finished at start-up",
    )
    .await;
    for m in &ids[..2] {
        let kept = d.data_dir.join("logs").join(m).join("app.log");
        let text = std::fs::read_to_string(&kept).unwrap_or_default();
        assert!(text.contains("hello-release"), "{m}'s logs kept: {text:?}");
    }
    // Destroyed, then the daemon stopped at once: it stops only once they are released.
    for m in &ids[2..] {
        d.destroy_machine("rel", m, true).await;
    }
    assert!(d.terminate().success());
    for m in &ids[2..] {
        assert!(gone(m), "{m} released before the daemon stopped");
    }
    let (mounts, _) = count_host_state(&d.data_dir);
    assert_eq!(mounts, 0, "mounts left behind");
    assert_eq!(
        procs_named("hangar-release-check"),
        0,
        "processes left behind"
    );
}

#[tokio::test]
async fn test_destroying_machines_leaves_nothing_behind() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("leak").await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            run(
                &d,
                "leak",
                "exec sh -c 'sleep 300; true' hangar-leak-check",
                json!({}),
            )
            .await,
        );
    }
    for m in &ids {
        d.wait_state("leak", m, "started").await;
    }
    // `started` means the workload was forked; its exec (the name counted) may follow.
    let data_dir = d.data_dir.clone();
    until(
        || {
            let (mounts, procs) = count_host_state(&data_dir);
            mounts >= 50 && procs >= 50
        },
        "50 machines' mounts and processes while running",
    )
    .await;
    assert!(ids.iter().all(|m| cgroup_exists(m)));
    // Each root filesystem is mounted in its machine's namespace only: not in the host's,
    // where every sandbox made later would copy it (and hold it until that one ended).
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = d.data_dir.display().to_string();
    assert!(
        !host_mounts.contains(&dir),
        "machines' mounts in the host's namespace"
    );
    for (ns, machines) in machines_by_namespace(&d.data_dir) {
        assert!(machines.len() <= 1, "{ns} holds mounts of {machines:?}");
    }
    for m in &ids {
        let r = d
            .delete(&format!("/v1/apps/leak/machines/{m}?force=true"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A destroy answers once every process of the machine is killed; the processes end and
    // the rest is released right after the answer.
    until(
        || count_host_state(&data_dir).1 == 0,
        "destroyed machines' processes gone",
    )
    .await;
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = d.data_dir.display().to_string();
    assert!(
        !host_mounts.contains(&dir),
        "mounts left behind in the host's namespace"
    );
    // Copies of a machine's mounts that other machines' namespaces took while it ran are
    // detached when its dirs go (moved aside, removed within a second or two).
    until(
        || count_host_state(&data_dir).0 == 0,
        "no namespace keeps a destroyed machine's mounts",
    )
    .await;
    until(
        || ids.iter().all(|m| !cgroup_exists(m)),
        "destroyed machines' cgroups removed",
    )
    .await;
    let machines = d.data_dir.join("machines");
    until(
        || {
            std::fs::read_dir(&machines)
                .unwrap()
                .flatten()
                .all(|e| e.file_name().to_string_lossy().starts_with(".trash-"))
        },
        "machine dirs moved aside",
    )
    .await;
    until(
        || {
            std::fs::read_dir(machines.join(".trash-bin"))
                .map(|rd| rd.count() == 0)
                .unwrap_or(true)
        },
        "machine dirs removed",
    )
    .await;
}

/// A container's `user` brings its supplementary groups from the image's /etc/group (as Docker
/// does), for the main process and for exec sessions alike.
#[tokio::test]
async fn test_container_user_and_supplementary_groups() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("users").await;
    let body = json!({"config": {"containers": [{
        "name": "app", "image": image(), "user": "app",
        "exec": ["/bin/sh", "-c", "echo main=$(id -u):$(id -g):$(id -G | tr ' ' ,) home=$HOME version=$V region=$R; exec sleep 300"],
        "env_from": [{"env_var": "V", "field_ref": "version"}, {"env_var": "R", "field_ref": "region"}],
    }]}});
    let (m, created) = create(&d, "users", body).await;
    let version = created["instance_id"].as_str().unwrap().to_string();
    d.wait_state("users", &m, "started").await;
    until_logged(&d, &m, "main=").await;
    let out = log(&d, &m);
    assert!(
        out.contains(&format!(
            "main=1000:1000:1000,50 home=/home/app version={version} region=local"
        )),
        "{out}"
    );
    let r = d
        .post(
            &format!("/v1/apps/users/machines/{m}/exec"),
            json!({"command": ["id", "-G"], "container": "app"}),
        )
        .await;
    assert_eq!(r.status, 200, "exec: {}", r.text());
    let got: Value = r.json().unwrap();
    assert_eq!(got["stdout"].as_str().unwrap().trim(), "1000 50", "{got}");
    d.destroy_machine("users", &m, true).await;
}

/// `processes` (reference 2.8): each process runs from the machine's image in one shared root
/// filesystem with its own command and env (`env_from` projections included), and the machine
/// stops, with that process's exit code, as soon as one of them exits.
#[tokio::test]
async fn test_processes_share_rootfs_and_end_the_machine() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("procs").await;
    let main = "echo main role=$ROLE id=$MY_ID; echo hi > /tmp/shared; \
                while [ ! -e /tmp/seen ]; do sleep 0.05; done; exit 3";
    let side = "while [ ! -e /tmp/shared ]; do sleep 0.05; done; \
                echo side saw=$(cat /tmp/shared) app=$MY_APP role=$ROLE; touch /tmp/seen; exec sleep 300";
    let body = json!({"config": {
        "image": image(),
        "restart": {"policy": "no"},
        // `sleep` as PID 1 ignores the stop signal; do not wait 5 s for the SIGKILL.
        "stop_config": {"timeout": "1s"},
        "processes": [
            {"exec": ["/bin/sh", "-c", main], "env": {"ROLE": "main"},
             "env_from": [{"env_var": "MY_ID", "field_ref": "id"}]},
            {"exec": ["/bin/sh", "-c", side],
             "env_from": [{"env_var": "MY_APP", "field_ref": "app_name"}]},
        ],
    }});
    let (m, _) = create(&d, "procs", body).await;
    d.wait_state("procs", &m, "stopped").await;
    let exit = events(&d, "procs", &m).await;
    let exits = exits(&exit);
    assert_eq!(
        exits
            .first()
            .map(|e| &e["request"]["exit_event"]["exit_code"]),
        Some(&json!(3)),
        "{exits:?}"
    );
    let logs = d.data_dir.join("machines").join(&m).join("run/logs");
    let main_log = std::fs::read_to_string(logs.join("app.log")).unwrap_or_default();
    let side_log = std::fs::read_to_string(logs.join("app-2.log")).unwrap_or_default();
    assert!(
        main_log.contains(&format!("main role=main id={m}")),
        "{main_log}"
    );
    assert!(
        side_log.contains("side saw=hi app=procs role="),
        "the second process sees the first one's files, has its own env: {side_log}"
    );
    d.destroy_machine("procs", &m, false).await;

    // The code is that of the process that ended the machine, even when it is not the first
    // and the first then stops cleanly.
    let body = json!({"config": {
        "image": image(),
        "restart": {"policy": "no"},
        "processes": [
            {"exec": ["/bin/sh", "-c", "trap 'exit 0' INT TERM; while true; do sleep 0.05; done"]},
            {"exec": ["/bin/sh", "-c", "sleep 0.3; exit 4"]},
        ],
    }});
    let (m, _) = create(&d, "procs", body).await;
    d.wait_state("procs", &m, "stopped").await;
    let evs = events(&d, "procs", &m).await;
    assert_eq!(
        evs.iter()
            .find(|e| e["type"] == "exit")
            .map(|e| &e["request"]["exit_event"]["exit_code"]),
        Some(&json!(4)),
        "{evs:?}"
    );
    d.destroy_machine("procs", &m, false).await;
}

/// `dns` shapes the machine's host name, /etc/hosts and /etc/resolv.conf.
#[tokio::test]
async fn test_dns_config() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("dns").await;
    let body = json!({"config": {
        "image": image(),
        "init": {"exec": ["sleep", "300"]},
        "dns": {"nameservers": ["10.0.0.2", "fd00::53"], "searches": ["corp.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}],
                "hostname": "web-1", "hostname_fqdn": "web-1.corp.example"},
    }});
    let (m, _) = create(&d, "dns", body).await;
    d.wait_state("dns", &m, "started").await;
    let r = d
        .post(
            &format!("/v1/apps/dns/machines/{m}/exec"),
            json!({"command": ["sh", "-c", "hostname; cat /etc/hostname /etc/resolv.conf; grep 127.0.1.1 /etc/hosts"]}),
        )
        .await;
    assert_eq!(r.status, 200, "exec: {}", r.text());
    let out: Value = r.json().unwrap();
    assert_eq!(
        out["stdout"].as_str().unwrap(),
        "web-1\nweb-1\nnameserver 10.0.0.2\nnameserver fd00::53\nsearch corp.example\n\
         options ndots:2 rotate\n127.0.1.1\tweb-1.corp.example web-1\n",
        "{out}"
    );
    // A file naming a secret the app does not have: refused at create, nothing made.
    let r = d
        .post(
            "/v1/apps/dns/machines",
            json!({"config": {"image": image(),
                "files": [{"guest_path": "/etc/token", "secret_name": "TOKEN"}]}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(error_text(&r).contains("/etc/token"), "{}", r.text());
    let list: Vec<Value> = d.get("/v1/apps/dns/machines").await.json().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    // And a persistent volume, which this daemon does not have yet.
    let r = d
        .post(
            "/v1/apps/dns/machines",
            json!({"config": {"image": image(), "mounts": [{"volume": "vol_123456789", "path": "/data"}]}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(error_text(&r).contains("vol_123456789"), "{}", r.text());
    // So is an image that cannot be pulled, and an update to one leaves the machine as it was.
    let missing = image().replace("hangar/busybox", "hangar/missing");
    let r = d
        .post(
            "/v1/apps/dns/machines",
            json!({"config": {"image": missing}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let list: Vec<Value> = d.get("/v1/apps/dns/machines").await.json().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let current: Value = d
        .get(&format!("/v1/apps/dns/machines/{m}"))
        .await
        .json()
        .unwrap();
    let mut config = current["config"].clone();
    config["image"] = json!(missing);
    let r = d
        .post(
            &format!("/v1/apps/dns/machines/{m}"),
            json!({"config": config}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let after: Value = d
        .get(&format!("/v1/apps/dns/machines/{m}"))
        .await
        .json()
        .unwrap();
    assert_eq!(after["state"], "started");
    assert_eq!(after["instance_id"], current["instance_id"]);
    d.destroy_machine("dns", &m, true).await;
}

/// A stop waiting out a long grace period does not hold a forced destroy back, and a stop
/// timeout beyond 24 h is refused.
#[tokio::test]
async fn test_forced_destroy_preempts_a_long_stop() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("preempt").await;
    // A PID 1 that ignores the stop signal gets its whole grace period.
    let m = run(
        &d,
        "preempt",
        "trap '' INT TERM; while true; do sleep 0.1; done",
        json!({}),
    )
    .await;
    d.wait_state("preempt", &m, "started").await;
    let r = d
        .post(
            &format!("/v1/apps/preempt/machines/{m}/stop"),
            json!({"timeout": "2000000h"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let client = d.client.clone();
    let path = format!("/v1/apps/preempt/machines/{m}/stop");
    let stop = tokio::spawn(async move {
        client
            .post(path)
            .json(&json!({"timeout": "1h"}))
            .send_raw()
            .await
    });
    until_stopping(&d, "preempt", &m).await;
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        d.client
            .delete(format!("/v1/apps/preempt/machines/{m}"))
            .query("force", "true")
            .send_raw(),
    )
    .await
    .expect("the forced destroy waited for the stop's grace period")
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let stopped = stop.await.unwrap().unwrap();
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    let r = d
        .get(&format!(
            "/v1/apps/preempt/machines/{m}?include_deleted=true"
        ))
        .await;
    assert_eq!(r.json::<Value>().unwrap()["state"], "destroyed");
}

/// The memory endpoints move a running machine's memory limit (its cgroup) and reclaim page
/// cache; a stopped machine or an out-of-range limit is refused.
#[tokio::test]
async fn test_memory_balloon_endpoints() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("mem").await;
    // 48 MiB of page cache from a file on the machine's disk, then idle.
    let m = run(
        &d,
        "mem",
        "dd if=/dev/zero of=/cache bs=1M count=48 2>/dev/null; cat /cache >/dev/null; echo filled; exec sleep 300",
        json!({"config": {"guest": {"cpus": 1, "memory_mb": 512}}}),
    )
    .await;
    d.wait_state("mem", &m, "started").await;
    let path = format!("/v1/apps/mem/machines/{m}/memory");
    let got: Value = d.get(&path).await.json().unwrap();
    assert_eq!(got["limit_mb"], 512, "{got}");
    assert!(got["available_mb"].as_i64().unwrap() <= 512, "{got}");

    let r = d
        .client
        .put(&path)
        .json(&json!({"limit_mb": 384}))
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["limit_mb"], 384);
    let limit_file = match cgroup_dir(&m) {
        CgroupFiles::V1 { memory, .. } => memory.join("memory.limit_in_bytes"),
        CgroupFiles::V2(dir) => dir.join("memory.max"),
    };
    assert_eq!(
        std::fs::read_to_string(&limit_file).unwrap().trim(),
        (384u64 << 20).to_string()
    );
    for bad in [
        json!({"limit_mb": 1024}),
        json!({"limit_mb": 0}),
        json!({"limit_mb": "x"}),
    ] {
        let r = d.client.put(&path).json(&bad).send_raw().await.unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }

    until_logged(&d, &m, "filled").await;
    let r = d
        .post(&format!("{path}/reclaim"), json!({"amount_mb": 40}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let freed = r.json::<Value>().unwrap()["actual_mb"].as_i64().unwrap();
    assert!(freed > 0, "reclaimed {freed} MB");
    assert_eq!(
        std::fs::read_to_string(&limit_file).unwrap().trim(),
        (384u64 << 20).to_string(),
        "reclaim leaves the limit as it was"
    );
    let r = d
        .post(&format!("{path}/reclaim"), json!({"amount_mb": -1}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    let r = d
        .post(
            &format!("/v1/apps/mem/machines/{m}/stop"),
            json!({"timeout": "1s"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("mem", &m, "stopped").await;
    assert_eq!(d.get(&path).await.status, 412);
    d.destroy_machine("mem", &m, false).await;
}

/// A container whose entrypoint has no handler for the stop signal stops at once, as it would
/// anywhere but as a namespace's PID 1 (where the kernel drops such signals): no waiting out a
/// long stop timeout.
#[tokio::test]
async fn test_stop_without_a_handler_does_not_wait_for_the_timeout() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("nohandler").await;
    let m = run(
        &d,
        "nohandler",
        "exec sleep 300",
        json!({"config": {"stop_config": {"timeout": "1h"}}}),
    )
    .await;
    d.wait_state("nohandler", &m, "started").await;
    // Stop once `sleep` is PID 1 (before its exec, the shell may still hold a handler).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ps: Vec<Value> = d
            .get(&format!("/v1/apps/nohandler/machines/{m}/ps"))
            .await
            .json()
            .unwrap_or_default();
        if ps
            .iter()
            .any(|p| p["pid"] != Value::Null && p["command"] == "sleep 300")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sleep never ran: {ps:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = format!("/v1/apps/nohandler/machines/{m}/stop");
    let stop = d.post(&path, json!({}));
    let r = tokio::time::timeout(Duration::from_secs(30), stop)
        .await
        .expect("the stop waited for the 1 h timeout");
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("nohandler", &m, "stopped").await;
    d.destroy_machine("nohandler", &m, false).await;
}

/// A failed machine is recovered by a stop; a start during a stop is refused, not queued.
#[tokio::test]
async fn test_stop_recovers_failed_and_start_during_stop_is_refused() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("rec").await;
    let (m, _) = create(
        &d,
        "rec",
        json!({"config": {"image": image(), "init": {"exec": ["/no/such/command"]}}}),
    )
    .await;
    d.wait_state("rec", &m, "failed").await;
    let r = d
        .post(&format!("/v1/apps/rec/machines/{m}/stop"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got: Value = d
        .get(&format!("/v1/apps/rec/machines/{m}"))
        .await
        .json()
        .unwrap();
    assert_eq!(got["state"], "stopped", "{got}");
    d.destroy_machine("rec", &m, false).await;

    let m = run(
        &d,
        "rec",
        "trap '' INT TERM; while true; do sleep 0.1; done",
        json!({"config": {"stop_config": {"timeout": "3s"}}}),
    )
    .await;
    d.wait_state("rec", &m, "started").await;
    let client = d.client.clone();
    let path = format!("/v1/apps/rec/machines/{m}/stop");
    let stop = tokio::spawn(async move { client.post(path).json(&json!({})).send_raw().await });
    until_stopping(&d, "rec", &m).await;
    let r = d
        .post(&format!("/v1/apps/rec/machines/{m}/start"), json!({}))
        .await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(stop.await.unwrap().unwrap().status, 200);
    d.wait_state("rec", &m, "stopped").await;
    d.destroy_machine("rec", &m, false).await;
}

/// A `temp_dir` volume on disk with a `size_mb` is a filesystem of that size: writing past it
/// fails instead of filling the host's disk, and nothing (mount, loop device) outlives the
/// machine.
#[tokio::test]
async fn test_sized_disk_volume_is_enforced_and_released() {
    let d = Daemon::start_with_runtime().await;
    d.create_app("vol").await;
    let script = "dd if=/dev/zero of=/scratch/big bs=1M count=40 2>/dev/null && echo wrote=all || echo wrote=partial; \
                  echo size=$(stat -c %s /scratch/big); exec sleep 300";
    let (m, _) = create(
        &d,
        "vol",
        json!({"config": {
            "volumes": [{"name": "scratch", "temp_dir": {"storage_type": "disk", "size_mb": 16}}],
            "containers": [{"name": "app", "image": image(),
                "exec": ["/bin/sh", "-c", script],
                "mounts": [{"name": "scratch", "path": "/scratch"}]}],
        }}),
    )
    .await;
    d.wait_state("vol", &m, "started").await;
    until_logged(&d, &m, "size=").await;
    let out = log(&d, &m);
    assert!(
        out.contains("wrote=partial"),
        "the 16 MB volume took 40 MB: {out}"
    );
    let size: u64 = out
        .lines()
        .find_map(|l| l.split("size=").nth(1))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX);
    assert!(size <= 16 << 20, "{size} bytes in a 16 MB volume: {out}");
    // The image's path as losetup shows it follows the machine dir when it is moved aside to be
    // removed: matched by data dir and file name.
    let data_dir = d.data_dir.display().to_string();
    let loops = || {
        std::process::Command::new("losetup")
            .arg("-a")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.contains(&data_dir) && l.contains("/volumes/.scratch.ext4"))
            })
            .unwrap_or(false)
    };
    assert!(loops(), "the volume is a loop-mounted image");
    d.destroy_machine("vol", &m, true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while loops() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loop device outlived the machine"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&m), "{mounts}");
}

/// The daemon's children named `hangar-spawner` (its pre-forked spawner).
fn spawners(daemon_pid: u32) -> Vec<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{daemon_pid}/task/{daemon_pid}/children"))
            .unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "hangar-spawner")
        })
        .collect()
}

/// The `/proc` entry of the Pilot of machine `id` (its command line names the machine's run
/// dir, warm-started or not).
fn pilot_proc(id: &str) -> std::fs::DirEntry {
    let dir = format!("/machines/{id}/run");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("hangar\0pilot\0--machine-dir\0") && c.contains(&dir)
            })
        })
        .unwrap_or_else(|| panic!("no Pilot runs machine {id}"))
}

/// The executable of the Pilot of machine `id`.
fn pilot_exe(id: &str) -> std::path::PathBuf {
    std::fs::read_link(pilot_proc(id).path().join("exe")).expect("Pilot's executable")
}

/// Machines start through the daemon's pre-forked spawner, with Pilot's own small binary; if
/// the spawner dies, through an executed helper instead; and the spawner goes when the daemon
/// does.
#[tokio::test]
async fn test_machines_start_without_the_spawner_and_it_goes_with_the_daemon() {
    let mut d = Daemon::start_with_runtime().await;
    d.create_app("spawn").await;
    let daemon_pid = d.child.as_ref().expect("daemon running").id();
    until(|| spawners(daemon_pid).len() == 1, "one spawner").await;
    let found = spawners(daemon_pid);
    let first = run(&d, "spawn", "sleep 300", json!({})).await;
    d.wait_state("spawn", &first, "started").await;
    assert_eq!(
        pilot_exe(&first).file_name().and_then(|n| n.to_str()),
        Some("hangar-pilot")
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(found[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the spawner");
    until(|| spawners(daemon_pid).is_empty(), "the spawner is gone").await;
    let second = run(&d, "spawn", "sleep 300", json!({})).await;
    d.wait_state("spawn", &second, "started").await;
    for m in [&first, &second] {
        let r = d
            .delete(&format!("/v1/apps/spawn/machines/{m}?force=true"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // A new daemon has a new spawner, which dies with it.
    d.kill9();
    d.restart().await;
    let daemon_pid = d.child.as_ref().expect("daemon running").id();
    // The spawner names itself once it runs, which a loaded host may delay.
    until(
        || spawners(daemon_pid).len() == 1,
        "one spawner after the restart",
    )
    .await;
    let found = spawners(daemon_pid);
    d.kill9();
    let spawner = std::path::PathBuf::from(format!("/proc/{}", found[0]));
    until(|| !spawner.exists(), "the spawner goes with the daemon").await;
    d.restart().await;
}

/// Pilots of `daemon_pid` still waiting in a warm sandbox (made ahead of their machine).
fn warm_pilots(daemon_pid: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{daemon_pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.starts_with(b"hangar\0pilot\0--pooled\0"))
                }),
        );
    }
    found.sort();
    found
}

/// The host pid of the Pilot of machine `id`.
fn pilot_pid(id: &str) -> i32 {
    pilot_proc(id)
        .file_name()
        .to_str()
        .and_then(|p| p.parse().ok())
        .expect("a pid")
}

/// How many host-wide uid-range claims `holder` has (a claim names its daemon's data dir, then
/// its holder).
fn uid_claims_of(holder: &str) -> usize {
    std::fs::read_dir("/run/hangar/uid-slots")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|c| c.lines().nth(1) == Some(holder))
        })
        .count()
}

/// The names in `dir` that `keep` accepts (none if `dir` cannot be read).
fn dir_names(dir: impl AsRef<std::path::Path>, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| keep(n))
        .collect()
}

fn warm_cgroups() -> Vec<String> {
    dir_names("/sys/fs/cgroup/memory/hangar", |n| n.starts_with(".warm-"))
}

/// Warm sandboxes (cgroup v1 hosts): a start takes over a sandbox made ahead, Pilot and all,
/// with the machine's own cgroup, hostname, network and root filesystem, mounted in the
/// machine's namespace only; the pool refills; a take-over that fails falls back to building
/// the sandbox; a machine with a memory volume builds its own;
/// the sandboxes go with a SIGKILLed daemon and what they leave is swept at its next start.
#[tokio::test]
async fn test_warm_sandboxes_are_taken_over_and_go_with_the_daemon() {
    /// The machine dirs made ahead for the daemon's warm sandboxes.
    fn made_ahead_dirs(d: &Daemon) -> Vec<String> {
        dir_names(d.data_dir.join("warm"), |n| n.ends_with(".dir"))
    }
    if !std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        eprintln!("skipped: warm sandboxes need cgroup v1 (v2 cannot rename a cgroup)");
        return;
    }
    let mut d = Daemon::start_with_runtime().await;
    d.create_app("warm").await;
    let daemon_pid = d.child.as_ref().expect("daemon running").id();
    until(|| warm_pilots(daemon_pid).len() == 2, "two warm sandboxes").await;
    until(
        || made_ahead_dirs(&d).len() == 2,
        "a machine dir made ahead per warm sandbox",
    )
    .await;
    let inode = |p: &std::path::Path| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"))
    };
    let ahead: Vec<u64> = made_ahead_dirs(&d)
        .iter()
        .map(|n| inode(&d.data_dir.join("warm").join(n)))
        .collect();
    let warm = warm_pilots(daemon_pid);

    let m = run(&d, "warm", "sleep 300", json!({})).await;
    d.wait_state("warm", &m, "started").await;
    let pilot = pilot_pid(&m);
    assert!(
        warm.contains(&pilot),
        "Pilot {pilot} was not made ahead: {warm:?}"
    );
    assert!(cgroup_exists(&m), "the machine's cgroup has its name");
    let cgroup = std::fs::read_to_string(format!("/proc/{pilot}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("hangar/{m}")), "{cgroup}");
    let (_, stdout, _) = d
        .sh(
            "warm",
            &m,
            "hostname; cat /proc/self/cgroup | grep memory; ls /",
        )
        .await;
    assert!(stdout.starts_with(&format!("{m}\n")), "{stdout}");
    assert!(
        stdout.contains(":memory:/\n"),
        "its own cgroup namespace: {stdout}"
    );
    assert!(stdout.contains("bin"), "its image: {stdout}");
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(&format!("/machines/{m}/")),
        "a warm sandbox's root filesystem is mounted in the machine only"
    );
    until(|| warm_pilots(daemon_pid).len() == 2, "the pool refills").await;
    // Each warm sandbox comes with a machine dir made ahead, which its machine takes.
    until(
        || made_ahead_dirs(&d).len() == 2,
        "a machine dir made ahead per warm sandbox",
    )
    .await;
    let machine_dir = d.data_dir.join("machines").join(&m);
    assert!(
        ahead.contains(&inode(&machine_dir)),
        "the machine took a dir made ahead"
    );
    assert!(machine_dir.join("run/logs/app.log").exists());
    assert!(machine_dir.join("containers/app/upper").is_dir());

    // A warm sandbox whose Pilot was killed while it waited is let go; the start goes on.
    let killed = warm_pilots(daemon_pid);
    for &p in &killed {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill a warm Pilot");
    }
    // Dead (a zombie, or reaped) before the start looks: one still exiting (idle class, busy
    // host) would be taken, fail its take-over, and the start would not find the pool empty.
    until(
        || {
            killed.iter().all(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |stat| {
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, r)| r.starts_with('Z'))
                })
            })
        },
        "the killed warm Pilots are dead",
    )
    .await;
    let after_kill = run(&d, "warm", "sleep 300", json!({})).await;
    d.wait_state("warm", &after_kill, "started").await;
    // That start found the pool empty and built its own sandbox: the pool doubles.
    until(
        || warm_pilots(daemon_pid).len() == 4,
        "the pool refills again, grown to four",
    )
    .await;

    // A take-over that fails half-way (here one controller's cgroup removed under the
    // sandbox, as another daemon's sweep once did) lets the sandbox go, and the start builds
    // its own: the machine starts all the same.
    let broken = warm_pilots(daemon_pid);
    let mut broken_cgroups = Vec::new();
    for p in &broken {
        let cgroup = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap();
        let name = cgroup
            .lines()
            .find(|l| l.contains(":pids:"))
            .and_then(|l| l.rsplit('/').next())
            .expect("a warm Pilot's pids cgroup")
            .to_string();
        std::fs::write("/sys/fs/cgroup/pids/hangar/cgroup.procs", p.to_string())
            .expect("move a warm Pilot out of its pids cgroup");
        std::fs::remove_dir(format!("/sys/fs/cgroup/pids/hangar/{name}"))
            .expect("remove a warm Pilot's pids cgroup");
        broken_cgroups.push(name);
    }
    // Four starts at once take them all (the pool refills only once starts are quiet).
    assert_eq!(broken.len(), 4, "{broken:?}");
    let (a, b, c, e) = tokio::join!(
        run(&d, "warm", "sleep 300", json!({})),
        run(&d, "warm", "sleep 300", json!({})),
        run(&d, "warm", "sleep 300", json!({})),
        run(&d, "warm", "sleep 300", json!({}))
    );
    for m in [a, b, c, e] {
        d.wait_state("warm", &m, "started").await;
        let pilot = pilot_pid(&m);
        assert!(
            !broken.contains(&pilot),
            "Pilot {pilot} is a broken warm one"
        );
        let cgroup = std::fs::read_to_string(format!("/proc/{pilot}/cgroup")).unwrap();
        assert!(
            cgroup.contains(&format!(":pids:/hangar/{m}")),
            "its own pids cgroup: {cgroup}"
        );
        let (_, stdout, _) = d.sh("warm", &m, "hostname").await;
        assert_eq!(stdout.trim(), m);
        assert_eq!(uid_claims_of(&m), 1, "one uid range for the machine");
    }
    until(
        || {
            let now = warm_pilots(daemon_pid);
            now.len() == 4 && !now.iter().any(|p| broken.contains(p))
        },
        "the pool refills after failed take-overs",
    )
    .await;
    for p in &broken {
        until(
            || !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "a broken warm Pilot ends",
        )
        .await;
    }
    // In every controller (a take-over renames them one by one).
    until(
        || {
            let controllers = std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten();
            !controllers
                .flat_map(|c| {
                    broken_cgroups
                        .iter()
                        .map(move |n| c.path().join("hangar").join(n))
                })
                .any(|dir| dir.exists())
        },
        "the broken warm sandboxes' cgroups go",
    )
    .await;
    for name in &broken_cgroups {
        assert_eq!(uid_claims_of(name), 0, "{name} holds no uid range");
    }

    // Memory volumes are mounted by the host side of a start: no warm sandbox for those.
    let before = warm_pilots(daemon_pid);
    let (vol, _) = create(
        &d,
        "warm",
        json!({"config": {
            "volumes": [{"name": "scratch", "temp_dir": {"storage_type": "memory", "size_mb": 8}}],
            "containers": [{"name": "app", "image": image(),
                "exec": ["sleep", "300"],
                "mounts": [{"name": "scratch", "path": "/scratch"}]}],
        }}),
    )
    .await;
    d.wait_state("warm", &vol, "started").await;
    assert!(!before.contains(&pilot_pid(&vol)));

    // Gone with a SIGKILLed daemon (their socket closes), swept at its next start.
    let left = warm_pilots(daemon_pid);
    // This daemon's warm cgroups (other tests' daemons have theirs).
    let names: Vec<String> = left
        .iter()
        .filter_map(|p| {
            let cgroup = std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok()?;
            let memory = cgroup.lines().find(|l| l.contains(":memory:"))?;
            Some(memory.rsplit('/').next()?.to_string())
        })
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with(".warm-")), "{names:?}");
    let dirs_left = made_ahead_dirs(&d);
    assert_eq!(dirs_left.len(), 4, "{dirs_left:?}");
    // Another claims dir's (a daemon in a container with its own /run, whose claims and
    // processes this daemon cannot see), empty as a sandbox is a moment before its Pilot
    // enters: not this daemon's to remove.
    let foreign = format!(".warm-elsewhere-{:012x}", std::process::id());
    let foreign_dirs: Vec<String> = ["memory", "cpu", "pids"]
        .iter()
        .map(|c| format!("/sys/fs/cgroup/{c}/hangar/{foreign}"))
        .collect();
    for dir in &foreign_dirs {
        std::fs::create_dir(dir).expect("make a foreign warm cgroup");
    }
    d.kill9();
    until(
        || {
            left.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        },
        "the warm Pilots end with their daemon",
    )
    .await;
    d.restart().await;
    let daemon_pid = d.child.as_ref().expect("daemon running").id();
    until(|| warm_pilots(daemon_pid).len() == 2, "a new pool").await;
    let now = warm_cgroups();
    assert!(
        names.iter().all(|n| !now.contains(n)),
        "the previous run's warm cgroups were swept: {names:?} {now:?}"
    );
    assert!(now.contains(&foreign), "{now:?}");
    let dirs_now = made_ahead_dirs(&d);
    assert!(
        dirs_left.iter().all(|n| !dirs_now.contains(n)),
        "the previous run's machine dirs made ahead were swept: {dirs_left:?} {dirs_now:?}"
    );
    for dir in &foreign_dirs {
        std::fs::remove_dir(dir).expect("remove the foreign warm cgroup");
    }
    for id in [&m, &vol, &after_kill] {
        d.destroy_machine("warm", id, true).await;
    }
}
