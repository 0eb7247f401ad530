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
    // Containers share the machine's network namespace: one table serves all.
    let listening = containers
        .first()
        .map(|(_, pid, _)| listening_sockets(&proc_root.join(pid.to_string()).join("net")))
        .unwrap_or_default();
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
            let listen_sockets = socket_inodes(&dir.join("fd"))
                .iter()
                .filter_map(|inode| listening.get(inode).cloned())
                .collect();
            Some(ProcessInfo {
                container: container.to_string(),
                pid,
                command,
                directory,
                rss,
                cpu,
                listen_sockets,
            })
        })
        .collect();
    out.sort_by(|a, b| a.container.cmp(&b.container).then(a.pid.cmp(&b.pid)));
    out
}

/// Inodes of the sockets a process has open (`fd/N -> socket:[inode]`).
fn socket_inodes(fd_dir: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(fd_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Listening TCP sockets of a network namespace (`<pid>/net/tcp` and `tcp6`), by inode.
fn listening_sockets(net: &Path) -> HashMap<u64, (String, String)> {
    let mut out = HashMap::new();
    for file in ["tcp", "tcp6"] {
        if let Ok(table) = fs::read_to_string(net.join(file)) {
            out.extend(parse_listening(&table));
        }
    }
    out
}

/// Rows of a `/proc/net/tcp{,6}` table in state LISTEN (`0A`): inode → (`tcp`, address).
pub fn parse_listening(table: &str) -> Vec<(u64, (String, String))> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (addr, port) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let address = match addr.len() {
                8 => {
                    let n = u32::from_str_radix(addr, 16).ok()?;
                    // The kernel prints the address in host (little-endian) order.
                    format!("{}:{port}", std::net::Ipv4Addr::from(n.swap_bytes()))
                }
                32 => {
                    let mut bytes = [0u8; 16];
                    for (i, word) in (0..4).map(|i| &addr[i * 8..i * 8 + 8]).enumerate() {
                        let w = u32::from_str_radix(word, 16).ok()?.swap_bytes();
                        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
                    }
                    format!("[{}]:{port}", std::net::Ipv6Addr::from(bytes))
                }
                _ => return None,
            };
            Some((f[9].parse().ok()?, ("tcp".to_string(), address)))
        })
        .collect()
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
    fn test_listening_sockets_from_proc_net() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0
   1: 0100007F:1F91 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0 20 4 30 10 -1
   2: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4244 1 0 100 0 0 10 0
";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5000 1 0 100 0 0 10 0
";
        let mut got = parse_listening(tcp);
        got.extend(parse_listening(tcp6));
        let got: Vec<(u64, String)> = got.into_iter().map(|(i, (_, a))| (i, a)).collect();
        assert_eq!(
            got,
            [
                (4242, "0.0.0.0:8080".to_string()),
                (4244, "127.0.0.1:80".to_string()),
                (5000, "[::1]:8082".to_string()),
            ]
        );
    }

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
