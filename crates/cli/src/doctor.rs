//! `hangar doctor`: what this host has and lacks for running machines, each check with what to
//! do about a failure. Needs no daemon; reads the host as the daemon would.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "Examples:\n  sudo hangar doctor\n  hangar doctor --data-dir ./data")]
pub struct DoctorArgs {
    /// The daemon's data dir, checked for the permissions machines need
    #[arg(long, value_name = "DIR", env = "HANGAR_DATA_DIR", default_value = hangar_daemon::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// One finding: a required check failing makes the host unusable; an optional one loses a
/// feature.
struct Check {
    name: &'static str,
    ok: bool,
    required: bool,
    detail: String,
}

pub fn run(args: DoctorArgs) -> Result<()> {
    let checks = checks(&args.data_dir);
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut failed = 0;
    for c in &checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        println!("{mark}  {:width$}  {}", c.name, c.detail);
        if !c.ok && c.required {
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} required check(s) failed: machines cannot run on this host");
    }
    Ok(())
}

/// What the daemon checks before it starts machines: the required checks that fail, as
/// `name: detail` lines (the data dir's own check is the runtime's, which also fixes modes).
pub fn startup_failures(data_dir: &Path) -> Vec<String> {
    checks(data_dir)
        .into_iter()
        .filter(|c| c.required && !c.ok && c.name != "data dir")
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect()
}

fn checks(data_dir: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    out.push(Check {
        name: "root",
        ok: root,
        required: true,
        detail: if root {
            "running as root".into()
        } else {
            "the daemon builds namespaces, cgroups and mounts: run it as root".into()
        },
    });
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = kernel_version(&release);
    out.push(Check {
        name: "kernel",
        ok: version >= (6, 13),
        required: true,
        detail: format!(
            "{release}: overlay layers are passed as idmapped mount fds (Linux 6.13 or later)"
        ),
    });
    let hierarchy = hangar_sandbox::Hierarchy::detect(Path::new("/sys/fs/cgroup"));
    out.push(Check {
        name: "cgroups",
        ok: hierarchy.is_ok(),
        required: true,
        detail: match &hierarchy {
            Ok(hangar_sandbox::Hierarchy::V2 { .. }) => "cgroup v2".into(),
            Ok(hangar_sandbox::Hierarchy::V1 { .. }) => {
                "cgroup v1 (memory, cpu, pids; freezer for suspend)".into()
            }
            Err(e) => e.to_string(),
        },
    });
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    out.push(Check {
        name: "user namespaces",
        ok: userns > 0,
        required: true,
        detail: format!("user.max_user_namespaces = {userns} (each machine maps its root)"),
    });
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for (fs, required, why) in [
        ("overlay", true, "each container's root filesystem"),
        (
            "ext4",
            false,
            "sized rootfs and disk volumes (rootfs.size_gb, temp_dir size_mb)",
        ),
    ] {
        let ok = filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs));
        out.push(Check {
            name: fs,
            ok,
            required,
            detail: format!("filesystem for {why}"),
        });
    }
    let in_root = hangar_sandbox::in_root::InRoot::open(Path::new("/"))
        .and_then(|r| r.read_file("/proc/self/stat", 1).map(|_| ()));
    out.push(Check {
        name: "openat2",
        ok: in_root.is_ok(),
        required: true,
        detail: match in_root {
            Ok(()) => "paths inside machines are resolved inside them (RESOLVE_IN_ROOT)".into(),
            Err(e) => format!("{e} (Linux 5.6 or later)"),
        },
    });
    for (tool, package) in [
        ("mount", "mount"),
        ("mkfs.ext4", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("resize2fs", "e2fsprogs"),
    ] {
        let path = hangar_sandbox::plan::system_tool(tool);
        let ok = path.is_absolute() && path.is_file();
        out.push(Check {
            name: tool,
            ok,
            required: false,
            detail: if ok {
                path.display().to_string()
            } else {
                format!(
                    "not found: apt-get install {package} (sized rootfs and disk volumes need it)"
                )
            },
        });
    }
    // Machines run as unprivileged uids and must reach their dirs below the data dir.
    // (A data dir that does not exist yet is judged by the directories it will be made in.)
    let absolute = std::fs::canonicalize(data_dir).ok().or_else(|| {
        let parent = std::fs::canonicalize(data_dir.parent()?).ok()?;
        Some(parent.join(data_dir.file_name()?))
    });
    let traversable = absolute.is_some_and(|abs| {
        abs.ancestors().skip(1).all(|d| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        })
    });
    out.push(Check {
        name: "data dir",
        ok: traversable,
        required: true,
        detail: format!(
            "{}: every directory above it must let others through (o+x)",
            data_dir.display()
        ),
    });
    // Speed: on a pure v2 host, without favordynmods, the first cgroup move of each machine
    // start waits for an RCU grace period (v1 hosts move the helper without one).
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let v2: Vec<&str> = mounts.lines().filter(|l| l.contains(" cgroup2 ")).collect();
    let favored = !v2.is_empty() && v2.iter().all(|l| l.contains("favordynmods"));
    let pure_v2 = matches!(hierarchy, Ok(hangar_sandbox::Hierarchy::V2 { .. }));
    out.push(Check {
        name: "cgroup favordynmods",
        ok: favored || !pure_v2,
        required: false,
        detail: if favored {
            "on: machine starts do not wait for an RCU grace period".into()
        } else if !pure_v2 {
            "not needed: on cgroup v1 a start's helper moves into its cgroup without an RCU grace period".into()
        } else {
            "off: each machine start waits ~10 ms for an RCU grace period; `hangar daemon --favor-dynmods` turns it on (until reboot)".into()
        },
    });
    // Volumes and sized root filesystems are ext4 images on loop devices.
    let loop_control = Path::new("/dev/loop-control").exists();
    out.push(Check {
        name: "loop devices",
        ok: loop_control,
        required: false,
        detail: if loop_control {
            "/dev/loop-control exists: volumes and rootfs.size_gb work".into()
        } else {
            "no /dev/loop-control (modprobe loop): volumes and rootfs.size_gb will fail".into()
        },
    });
    // Free space where images, writable layers and volumes live.
    let probe = data_dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    let free_gb = free_bytes(probe) >> 30;
    out.push(Check {
        name: "disk space",
        ok: free_gb >= 2,
        required: false,
        detail: format!("{free_gb} GB free at {}", probe.display()),
    });
    // Builds (`hangar machine run .`, `hangar deploy`) use buildah.
    let buildah = std::process::Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    out.push(Check {
        name: "buildah",
        ok: buildah,
        required: false,
        detail: if buildah {
            "installed: Dockerfile builds work".into()
        } else {
            "not found: `apt-get install buildah` for `hangar machine run .` and `hangar deploy` builds".into()
        },
    });
    // Machine networking: the firewall is applied with nft; without it the daemon needs
    // --network off.
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    out.push(Check {
        name: "nftables",
        ok: nft,
        required: false,
        detail: if nft {
            "nft is installed: machine networking can confine machines".into()
        } else {
            "nft not found: install nftables, or run the daemon with --network off (loopback only)"
                .into()
        },
    });
    out
}

/// Bytes available to unprivileged writers on the filesystem holding `path` (0 if unknown).
fn free_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

/// `6.18.2-foo` → (6, 18).
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), (6, 18));
        assert_eq!(kernel_version("5.10.0"), (5, 10));
        assert_eq!(kernel_version(""), (0, 0));
        assert!(kernel_version("6.13.1") >= (6, 13));
    }
}
