//! Hangar under a real systemd: `systemctl restart hangar` leaves running machines running, and
//! the new daemon adopts them. systemd is not PID 1 on CI hosts, so the test boots one in a
//! container (`systemd-nspawn --boot`) made from Debian's own packages by mmdebstrap, installs
//! Hangar there with `scripts/install` (as on a host), and drives `systemctl` and the CLI inside
//! it. Machine networking is off in there: the container shares the host's network, which the
//! other tests' daemons use.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Bumped when the root filesystem's recipe changes (it is kept between runs).
const ROOTFS_VERSION: &str = "1";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Debian root filesystem with systemd, built once into target/.
fn rootfs() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/systemd-rootfs");
    let stamp = root.join(".hangar-systemd-rootfs");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(ROOTFS_VERSION) {
        return root;
    }
    let _ = std::fs::remove_dir_all(&root);
    let out = Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=minbase",
            "--mode=root",
            "--format=directory",
        ])
        .args(["--include=systemd,systemd-sysv,dbus"])
        .args(["--dpkgopt=path-exclude=/usr/share/doc/*"])
        .args(["--dpkgopt=path-exclude=/usr/share/man/*"])
        .arg("bookworm")
        .arg(&root)
        .output()
        .expect("run mmdebstrap");
    assert!(
        out.status.success(),
        "mmdebstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&stamp, ROOTFS_VERSION).unwrap();
    root
}

/// The booted container; powered off (or killed) when dropped.
struct Container {
    nspawn: Child,
    /// systemd, PID 1 inside, as the host numbers it.
    init: i32,
}

impl Container {
    fn boot(root: &Path, log: &Path) -> Container {
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(root)
            // No systemd on the host to register with or to take a scope from.
            .args(["--boot", "--register=no", "--keep-unit"])
            // The daemon manages namespaces, mounts and cgroups as on a host.
            .args(["--capability=all"])
            .arg(format!("--machine=hangar-test-{}", std::process::id()))
            .env("SYSTEMD_SECCOMP", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("run systemd-nspawn");
        let deadline = Instant::now() + Duration::from_secs(30);
        let init = loop {
            if let Some(pid) = descendant_named(nspawn.id() as i32, "systemd") {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "systemd did not start in the container: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let c = Container { nspawn, init };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, state) = c.sh("systemctl is-system-running");
            if state == "running" || state == "degraded" {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd did not finish booting: {state}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `script` with sh inside the container: (success, trimmed stdout + stderr).
    fn sh(&self, script: &str) -> (bool, String) {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.init.to_string())
            .args(["-a", "sh", "-c", script])
            .output()
            .expect("run nsenter");
        let mut text = String::from_utf8_lossy(&out.stdout).to_string();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text.trim().to_string())
    }

    fn must(&self, script: &str) -> String {
        let (ok, out) = self.sh(script);
        assert!(ok, "{script}: {out}");
        out
    }

    fn wait_active(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, state) = self.sh("systemctl is-active hangar");
            if state == "active" && self.sh("hangar apps list").0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hangar.service is {state}: {}",
                self.sh("journalctl -u hangar --no-pager -n 20").1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.sh("systemctl poweroff");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// (pid, parent pid, name) of every process on the host.
fn processes() -> Vec<(i32, i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.push((pid, ppid, name));
    }
    out
}

fn descendant_named(ancestor: i32, name: &str) -> Option<i32> {
    let all = processes();
    let mut frontier = vec![ancestor];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, n) in &all {
            if *ppid == p {
                if n == name {
                    return Some(*pid);
                }
                frontier.push(*pid);
            }
        }
    }
    None
}

/// The host pid of the Pilot of machine `id` (its command line names the machine's dir).
fn pilot_of(id: &str) -> Option<i32> {
    processes().into_iter().find_map(|(pid, _, _)| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains("pilot --machine-dir") && cmd.contains(id)).then_some(pid)
    })
}

#[test]
fn systemctl_restart_keeps_machines_running_and_adopted() {
    let missing: Vec<&str> = ["mmdebstrap", "systemd-nspawn", "nsenter"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED systemd service test: {} missing (apt install mmdebstrap systemd-container)",
            missing.join(", ")
        );
        return;
    }
    let root = rootfs();
    // A fresh install each run: the binary under test, the unit, the default config.
    for dir in ["var/lib/hangar", "etc/hangar", "run/hangar"] {
        let _ = std::fs::remove_dir_all(root.join(dir));
    }
    let out = Command::new("scripts/install")
        .env("DESTDIR", &root)
        .env("HANGAR_BIN", hangar_bin())
        .output()
        .expect("scripts/install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = root.join("etc/hangar/hangar.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("# network = true"), "{text}");
    std::fs::write(&config, text.replace("# network = true", "network = false")).unwrap();

    let log = tempfile::NamedTempFile::new().unwrap();
    let c = Container::boot(&root, log.path());
    // nspawn mounts the cgroup v1 controllers read-only; `Delegate=yes` gives a service on a
    // real host writable ones, so give them here. (On a pure cgroup v2 host nspawn's
    // /sys/fs/cgroup is the container's own, writable subtree already.)
    c.must("for d in /sys/fs/cgroup/*/; do mount -o remount,bind,rw \"$d\"; done");
    // What the package's postinst does.
    c.must("getent group hangar >/dev/null || groupadd --system hangar");
    c.must("systemctl enable --now hangar.service");
    c.wait_active();

    c.must("hangar apps create svc");
    c.must(&format!(
        "hangar machine run {} sleep inf -a svc",
        test_image()
    ));
    let list: serde_json::Value =
        serde_json::from_str(&c.must("hangar machine list -a svc --json")).unwrap();
    let id = list[0]["id"].as_str().expect("machine id").to_string();
    assert_eq!(list[0]["state"], "started", "{list}");
    let pilot = pilot_of(&id).expect("the machine's Pilot runs");
    let daemon_before = c.must("systemctl show -p MainPID --value hangar");

    // The restart: a new daemon, the same machine process, adopted.
    c.must("systemctl restart hangar");
    c.wait_active();
    let daemon_after = c.must("systemctl show -p MainPID --value hangar");
    eprintln!("machine {id}: Pilot {pilot}; daemon {daemon_before} -> {daemon_after}");
    assert_ne!(daemon_before, daemon_after, "the daemon was replaced");
    assert_eq!(pilot_of(&id), Some(pilot), "the machine kept running");
    let list: serde_json::Value =
        serde_json::from_str(&c.must("hangar machine list -a svc --json")).unwrap();
    assert_eq!(list[0]["state"], "started", "{list}");
    assert_eq!(
        c.must(&format!("hangar machine exec {id} 'echo adopted' -a svc")),
        "adopted"
    );

    // Torn down before the container goes: its shutdown would kill the machine's processes
    // with nobody left to clean up after them.
    c.must(&format!("hangar machine destroy {id} -a svc --force"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pilot_of(&id).is_some() {
        assert!(
            Instant::now() < deadline,
            "the destroyed machine's Pilot lingers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
