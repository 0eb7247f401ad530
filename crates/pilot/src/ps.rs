//! The processes of every container, from Pilot's /proc (the machine's pid namespace): a
//! process belongs to the container whose init shares its pid namespace.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::spec::ProcessInfo;

/// The inode of a process's pid namespace (`pid:[4026532...]`).
pub fn pid_ns(proc_root: &Path, pid: i32) -> Option<String> {
    let link = fs::read_link(proc_root.join(pid.to_string()).join("ns/pid")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// Lists the processes of the running containers, given `(name, init pid, rootfs)` of each.
pub fn list(proc_root: &Path, containers: &[(String, i32, String)]) -> Vec<ProcessInfo> {
    let namespaces: HashMap<String, (&str, &str)> = containers
        .iter()
        .filter_map(|(name, pid, rootfs)| {
            pid_ns(proc_root, *pid).map(|ns| (ns, (name.as_str(), rootfs.as_str())))
        })
        .collect();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let page = page_size();
    let mut out: Vec<ProcessInfo> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            // A process may exit while we look at it; skip what vanished.
            let ns = pid_ns(proc_root, pid)?;
            let (container, rootfs) = namespaces.get(&ns)?;
            let dir = proc_root.join(pid.to_string());
            let command = fs::read(dir.join("cmdline"))
                .ok()
                .map(|b| parse_cmdline(&b))
                .unwrap_or_default();
            let directory = fs::read_link(dir.join("cwd"))
                .map(|p| container_path(&p.to_string_lossy(), rootfs))
                .unwrap_or_default();
            let rss = fs::read_to_string(dir.join("statm"))
                .ok()
                .and_then(|s| parse_statm_rss(&s))
                .map_or(0, |pages| pages * page);
            let cpu = fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|s| parse_stat_cpu(&s))
                .unwrap_or(0);
            Some(ProcessInfo {
                container: container.to_string(),
                pid,
                command,
                directory,
                rss,
                cpu,
            })
        })
        .collect();
    out.sort_by(|a, b| a.container.cmp(&b.container).then(a.pid.cmp(&b.pid)));
    out
}

fn page_size() -> u64 {
    // SAFETY: sysconf with a constant argument.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

/// `/proc/<pid>/cmdline`: NUL-separated arguments.
pub fn parse_cmdline(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resident pages: the second field of `statm`.
pub fn parse_statm_rss(s: &str) -> Option<u64> {
    s.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (fields 14 and 15) of `stat`; the command name may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu(s: &str) -> Option<u64> {
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Pilot sees a container's cwd through its own root, as a path under the container's rootfs.
fn container_path(seen: &str, rootfs: &str) -> String {
    let rootfs = rootfs.trim_end_matches('/');
    match seen.strip_prefix(rootfs) {
        Some("") => "/".into(),
        Some(rest) if rest.starts_with('/') => rest.into(),
        _ => seen.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parsers() {
        assert_eq!(parse_cmdline(b"sh\0-c\0sleep 1\0"), "sh -c sleep 1");
        assert_eq!(parse_statm_rss("1000 250 100 1 0 50 0\n"), Some(250));
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(10));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert_eq!(container_path("/m/c/rootfs/srv", "/m/c/rootfs"), "/srv");
        assert_eq!(container_path("/m/c/rootfs", "/m/c/rootfs/"), "/");
        assert_eq!(container_path("/tmp", "/m/c/rootfs"), "/tmp");
        assert_eq!(
            container_path("/m/c/rootfs2/x", "/m/c/rootfs"),
            "/m/c/rootfs2/x"
        );
    }

    #[test]
    fn test_lists_own_namespace_processes() {
        // In the test's own pid namespace, our process is found under a container named "self".
        let me = std::process::id() as i32;
        let list = list(Path::new("/proc"), &[("self".into(), me, "/".into())]);
        let mine = list
            .iter()
            .find(|p| p.pid == me)
            .expect("own process listed");
        assert_eq!(mine.container, "self");
        assert!(mine.rss > 0);
        assert!(!mine.command.is_empty());
    }
}
