//! Network namespaces a test makes to stand for separate hosts: each "host" namespace has an
//! `eth0` on a shared underlay bridge (in a namespace of its own) with address
//! `10.99.0.<n>/24`, and the loopback test registry relayed to its own loopback, so a daemon
//! in it pulls images as usual. Everything goes when the [`Hosts`] are dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Hosts {
    /// The host namespaces, in order (`10.99.0.1`, `.2`, …).
    pub names: Vec<String>,
    underlay: String,
}

impl Hosts {
    /// `count` host namespaces joined by an underlay.
    pub fn new(count: usize) -> Hosts {
        let tag = std::process::id();
        let underlay = format!("hangar-test-{tag}-u");
        ip(&["netns", "add", &underlay]);
        let hosts = Hosts {
            names: Vec::new(),
            underlay,
        };
        ip(&[
            "-n",
            &hosts.underlay,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ]);
        ip(&["-n", &hosts.underlay, "link", "set", "br0", "up"]);
        let mut hosts = hosts;
        for n in 1..=count {
            let name = format!("hangar-test-{tag}-{n}");
            ip(&["netns", "add", &name]);
            hosts.names.push(name.clone());
            let port = format!("port{n}");
            ip(&[
                "-n",
                &name,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &hosts.underlay,
            ]);
            ip(&[
                "-n",
                &hosts.underlay,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{}/24", Self::address_of(n)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &name, "link", "set", "eth0", "up"]);
            ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// Host `n`'s (1-based) underlay address.
    pub fn address_of(n: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, n as u8)
    }

    /// The namespace file of host `n` (1-based).
    pub fn path(&self, n: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.names[n - 1])
    }

    /// Relays TCP connections to `target` (a loopback service of the test's own namespace,
    /// such as the test registry) from the same address inside host `n`'s namespace.
    pub async fn relay(&self, n: usize, target: SocketAddr) {
        let path = self.path(n);
        // A listening socket belongs to the namespace it was made in: make it on a thread
        // that joins host n's namespace (and then ends); connections to the target are made
        // here, in the test's.
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns on a namespace file we hold open; only this thread moves.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let l = std::net::TcpListener::bind(target).expect("bind the relay");
            l.set_nonblocking(true).unwrap();
            l
        })
        .join()
        .expect("relay thread");
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
    }

    /// Runs `cmd` inside host `n`'s namespace: (success, stdout).
    pub fn run_in(&self, n: usize, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path(n).display()))
            .args(cmd)
            .output()
            .expect("run nsenter");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in self.names.iter().chain([&self.underlay]) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
