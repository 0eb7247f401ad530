//! Hangar under a real systemd, installed as users install it: `scripts/install`, and the Debian
//! package (cargo-deb). `systemctl restart hangar` and a package upgrade leave running machines
//! running, and the new daemon adopts them. systemd is not PID 1 on CI hosts, so each test boots
//! one in a container (`systemd-nspawn --boot`) of a Debian root filesystem made from Debian's
//! own packages by mmdebstrap (kept in target/, never written: each boot gets a throw-away
//! overlay), and drives `systemctl`, `dpkg` and the CLI inside it. Machine networking is off in
//! there: the container shares the host's network, which the other tests' daemons use.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Bumped when the root filesystem's recipe changes (it is kept between runs).
const ROOTFS_VERSION: &str = "2";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Debian root filesystem with systemd, built once into target/ (under a lock: the tests
/// run at once).
fn rootfs() -> PathBuf {
    use std::os::fd::AsRawFd;
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let root = target.join("systemd-rootfs");
    let stamp = root.join(".hangar-systemd-rootfs");
    let lock = std::fs::File::create(target.join("systemd-rootfs.lock")).unwrap();
    // SAFETY: flock on an open file descriptor; released when `lock` is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(ROOTFS_VERSION) {
        return root;
    }
    let building = target.join("systemd-rootfs.tmp");
    let _ = std::fs::remove_dir_all(&building);
    let out = Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=minbase",
            "--mode=root",
            "--format=directory",
        ])
        // systemd, and what the package depends on.
        .args(["--include=systemd,systemd-sysv,dbus,e2fsprogs,nftables,iproute2"])
        .args(["--dpkgopt=path-exclude=/usr/share/doc/*"])
        .args(["--dpkgopt=path-exclude=/usr/share/man/*"])
        .arg("bookworm")
        .arg(&building)
        .output()
        .expect("run mmdebstrap");
    assert!(
        out.status.success(),
        "mmdebstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(building.join(".hangar-systemd-rootfs"), ROOTFS_VERSION).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&building, &root).unwrap();
    root
}

/// The booted container; powered off (or killed) when dropped.
struct Container {
    nspawn: Child,
    /// systemd, PID 1 inside, as the host numbers it.
    init: i32,
}

impl Container {
    /// Boots `root` with a throw-away overlay on top, the repository (scripts, the binary
    /// under test) visible read-only at its own path, and `data` as /var/lib/hangar (machine
    /// overlays need a real file system under them, not the root's overlay).
    fn boot(root: &Path, data: &Path, log: &Path) -> Container {
        let repo = env!("CARGO_MANIFEST_DIR");
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(root)
            .arg("--volatile=overlay")
            .arg(format!("--bind-ro={repo}:{repo}"))
            .arg(format!("--bind={}:/var/lib/hangar", data.display()))
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

/// The tools the tests need, or why they are skipped.
fn tools_missing(extra: &[&str]) -> bool {
    let missing: Vec<&str> = ["mmdebstrap", "systemd-nspawn", "nsenter"]
        .iter()
        .chain(extra)
        .copied()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED: {} missing (apt install mmdebstrap systemd-container; cargo install cargo-deb)",
            missing.join(", ")
        );
    }
    !missing.is_empty()
}

/// A booted container whose Hangar will run with machine networking off (a config written
/// before the install, which keeps an existing one).
fn container(data: &Path, log: &Path) -> Container {
    let c = Container::boot(&rootfs(), data, log);
    // nspawn mounts the cgroup v1 controllers read-only; `Delegate=yes` gives a service on a
    // real host writable ones, so give them here. (On a pure cgroup v2 host nspawn's
    // /sys/fs/cgroup is the container's own, writable subtree already.)
    c.must("for d in /sys/fs/cgroup/*/; do mount -o remount,bind,rw \"$d\"; done");
    c.must("mkdir -p /etc/hangar && printf 'network = false\\n' > /etc/hangar/hangar.toml");
    c
}

/// Runs a machine in app `svc`; returns its id and its Pilot's host pid.
fn run_machine(c: &Container) -> (String, i32) {
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
    (id, pilot)
}

/// After the daemon was replaced (`before` was its pid): the same machine process runs and
/// the new daemon serves it.
fn assert_adopted(c: &Container, id: &str, pilot: i32, before: &str) {
    let after = c.must("systemctl show -p MainPID --value hangar");
    assert_ne!(before, after, "the daemon was replaced");
    assert_eq!(pilot_of(id), Some(pilot), "the machine kept running");
    let list: serde_json::Value =
        serde_json::from_str(&c.must("hangar machine list -a svc --json")).unwrap();
    assert_eq!(list[0]["state"], "started", "{list}");
    assert_eq!(
        c.must(&format!("hangar machine exec {id} 'echo adopted' -a svc")),
        "adopted"
    );
}

/// Torn down before the container goes: its shutdown would kill the machine's processes with
/// nobody left to clean up after them.
fn destroy(c: &Container, id: &str) {
    c.must(&format!("hangar machine destroy {id} -a svc --force"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pilot_of(id).is_some() {
        assert!(
            Instant::now() < deadline,
            "the destroyed machine's Pilot lingers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scripts_install_then_systemctl_restart_keeps_machines_running() {
    if tools_missing(&[]) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let c = container(data.path(), log.path());
    // The README's install, on a host where systemd runs: it enables and starts the unit.
    c.must(&format!(
        "cd {} && HANGAR_BIN={} scripts/install",
        env!("CARGO_MANIFEST_DIR"),
        hangar_bin()
    ));
    c.wait_active();
    assert_eq!(c.must("systemctl is-enabled hangar"), "enabled");
    let (id, pilot) = run_machine(&c);
    let before = c.must("systemctl show -p MainPID --value hangar");
    c.must("systemctl restart hangar");
    c.wait_active();
    assert_adopted(&c, &id, pilot, &before);
    destroy(&c, &id);
}

#[test]
fn the_debian_package_installs_and_upgrades_with_machines_running() {
    if tools_missing(&["cargo-deb"]) {
        return;
    }
    // The package cargo-deb makes from the binary under test (the test profile's; a release
    // build is the same package with another binary).
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("hangar.deb");
    let out = Command::new("cargo")
        .args([
            "deb",
            "--profile",
            "dev",
            "--no-build",
            "--no-strip",
            "--fast",
        ])
        .arg("-o")
        .arg(&deb)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let c = container(data.path(), log.path());
    let deb = deb.display().to_string();
    // The deb is in a temporary dir the container cannot see: hand it over on stdin.
    let install = |what: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "nsenter -t {} -a sh -c 'cat > /tmp/hangar.deb && \
                 DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /tmp/hangar.deb' < {deb}",
                c.init
            ))
            .output()
            .expect("dpkg -i");
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install("install");
    // The package's maintainer scripts: the group, the unit enabled and started.
    c.must("getent group hangar");
    assert_eq!(c.must("systemctl is-enabled hangar"), "enabled");
    c.wait_active();
    assert_eq!(
        c.must("dpkg-query -W -f='${Status}' hangar"),
        "install ok installed"
    );
    let (id, pilot) = run_machine(&c);
    let before = c.must("systemctl show -p MainPID --value hangar");
    // An upgrade (the same package again runs the same maintainer scripts): the daemon is
    // restarted, the machine is not.
    install("upgrade");
    c.wait_active();
    assert_adopted(&c, &id, pilot, &before);
    destroy(&c, &id);
    // Removal stops the service and keeps the data (purge is the user's call).
    c.must("DEBIAN_FRONTEND=noninteractive dpkg -r hangar");
    assert_ne!(c.sh("systemctl is-active hangar").1, "active");
    c.must("test -d /var/lib/hangar");
}
