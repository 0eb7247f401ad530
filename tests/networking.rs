//! Private networking: real 6PN addresses on a bridge per network, `.internal` DNS from inside
//! machines, isolation between networks and from the host, re-adoption after a daemon SIGKILL,
//! and no device left behind. Every test runs a networked daemon (one at a time: networking
//! is host-wide) whose resolver forwards other names to a loopback server of the test.

mod common;

use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{test_image, Daemon};
use serde_json::{json, Value};

/// A loopback DNS server that answers every A query with 192.0.2.1 (TEST-NET-1, never
/// contacted) and anything else with no records: what "the host's resolver" is in these tests.
async fn fake_upstream() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, src)) = sock.recv_from(&mut buf).await {
            // Header (12 bytes), then the one question: its name ends at the zero label.
            let Some(end) = buf[12..n].iter().position(|b| *b == 0).map(|p| 12 + p + 1) else {
                continue;
            };
            let qtype = u16::from_be_bytes([buf[end], buf[end + 1]]);
            let mut reply = buf[..end + 4].to_vec();
            reply[2] = 0x81; // QR, RD
            reply[3] = 0x80; // RA, NOERROR
            reply[6..12].copy_from_slice(&[0, u8::from(qtype == 1), 0, 0, 0, 0]);
            if qtype == 1 {
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
            }
            let _ = sock.send_to(&reply, src).await;
        }
    });
    addr
}

async fn daemon() -> Daemon {
    Daemon::start_networked(fake_upstream().await).await
}

async fn create_app(d: &Daemon, name: &str, network: Option<&str>) {
    let mut body = json!({"app_name": name, "org_slug": "personal"});
    if let Some(n) = network {
        body["network"] = json!(n);
    }
    let r = d.post("/v1/apps", body).await;
    assert_eq!(r.status, 201, "create app {name}: {}", r.text());
}

/// A started machine running `cmd`; returns (id, its machine object).
async fn run(d: &Daemon, app: &str, cmd: &[&str], extra: Value) -> (String, Value) {
    let mut body = json!({"config": {"image": test_image(), "init": {"exec": cmd}}});
    common::merge(&mut body, extra);
    let id = d.launch(app, body).await;
    d.wait_state(app, &id, "started").await;
    let m: Value = d
        .get(&format!("/v1/apps/{app}/machines/{id}"))
        .await
        .json()
        .unwrap();
    (id, m)
}

/// An HTTP server machine: busybox httpd on port 8080 (IPv4 and IPv6), serving `/`.
async fn web(d: &Daemon, app: &str) -> (String, Value) {
    run(
        d,
        app,
        &["/bin/httpd", "-f", "-p", "[::]:8080", "-h", "/"],
        json!({}),
    )
    .await
}

async fn sleeper(d: &Daemon, app: &str) -> (String, Value) {
    run(d, app, &["/bin/sleep", "inf"], json!({})).await
}

/// What `nslookup -type=T name` prints in the machine (stdout), and whether it succeeded.
async fn lookup(d: &Daemon, app: &str, id: &str, kind: &str, name: &str) -> (bool, String) {
    let (code, out, _) = d
        .sh(app, id, &format!("nslookup -type={kind} {name}"))
        .await;
    (code == 0 && !out.contains("NXDOMAIN"), out)
}

/// The machine's private IPv4, as its eth0 has it.
async fn ipv4(d: &Daemon, app: &str, id: &str) -> String {
    let (_, out, _) = d.sh(app, id, "ip -4 -o addr show eth0").await;
    let addr = out
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no IPv4: {out}"));
    addr.split('/').next().unwrap().to_string()
}

fn ip(m: &Value) -> String {
    m["private_ip"].as_str().unwrap().to_string()
}

/// The host's network devices Hangar made for machines (not the spare veths of warm
/// sandboxes, made ahead of any machine).
fn devices() -> Vec<String> {
    let spares = spare_veths();
    all_devices()
        .into_iter()
        .filter(|n| !spares.contains(n))
        .collect()
}

/// The spare veths of the warm sandboxes waiting now: each is named after its sandbox's
/// cgroup (`.warm-<tag>-<12 hex>`), as `hgv<12 hex>`.
fn spare_veths() -> std::collections::HashSet<String> {
    ["/sys/fs/cgroup/pids/hangar", "/sys/fs/cgroup/hangar"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(".warm-"))
        .map(|n| format!("hgv{}", &n[n.len().saturating_sub(12)..]))
        .collect()
}

/// Every network device Hangar made.
fn all_devices() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("hg"))
        .collect()
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn machines_of_one_app_reach_each_other_by_internal_names() {
    let d = daemon().await;
    create_app(&d, "net-one", None).await;
    let (server, sm) = web(&d, "net-one").await;
    let (client, cm) = sleeper(&d, "net-one").await;

    // Real 6PN addresses: one /48 for the network, the host's /80 shared, ::2 of a /112 each.
    let (a, b): (Ipv6Addr, Ipv6Addr) = (ip(&sm).parse().unwrap(), ip(&cm).parse().unwrap());
    assert_eq!(a.segments()[0], 0xfdaa);
    assert_eq!(a.segments()[..5], b.segments()[..5], "{a} {b}");
    assert_eq!(a.segments()[7], 2);
    assert_ne!(a, b);

    // The machine sees the same address as the API, in env, /etc/hosts and on eth0.
    let (_, out, _) = d.sh("net-one",
        &client,
        "echo $FLY_PRIVATE_IP; grep fly-local-6pn /etc/hosts; ip -6 addr show eth0; cat /etc/resolv.conf",
    )
    .await;
    assert!(out.starts_with(&format!("{b}\n")), "{out}");
    assert!(out.contains(&format!("{b}\tfly-local-6pn")), "{out}");
    assert!(out.contains(&format!("inet6 {b}/112")), "{out}");
    assert!(out.contains("nameserver fdaa::3"), "{out}");

    // HTTP by the stable name, through the machine's own resolver.
    let url = format!("http://{server}.vm.net-one.internal:8080/etc/hostname");
    let (code, out, err) = d.sh("net-one", &client, &format!("wget -qO- {url}")).await;
    assert_eq!((code, out.trim()), (0, server.as_str()), "{err}");
    // The app's name lists both.
    let (ok, out) = lookup(&d, "net-one", &client, "AAAA", "net-one.internal").await;
    assert!(
        ok && out.contains(&a.to_string()) && out.contains(&b.to_string()),
        "{out}"
    );

    // The host reaches every machine (the proxy's path), over IPv6 and IPv4.
    let v4 = ipv4(&d, "net-one", &server).await;
    for target in [format!("[{a}]:8080"), format!("{v4}:8080")] {
        let s = tokio::net::TcpStream::connect(&target).await;
        assert!(s.is_ok(), "host to {target}: {s:?}");
    }
}

/// A machine that stops and starts again keeps its link-layer address: the host (the proxy's
/// side) and its neighbours keep cached entries for its addresses, and with a new random MAC
/// their packets went to the old one, so connections to a restarted machine hung for seconds.
#[tokio::test]
async fn a_restarted_machine_keeps_its_mac_and_answers_at_once() {
    let d = daemon().await;
    create_app(&d, "net-mac", None).await;
    let (id, _) = web(&d, "net-mac").await;
    let v4 = ipv4(&d, "net-mac", &id).await;
    let mac = async || {
        d.sh("net-mac", &id, "cat /sys/class/net/eth0/address")
            .await
            .1
    };
    let before = mac().await;
    // The host learns the address (a neighbour entry), as the proxy's connections do.
    let s = tokio::net::TcpStream::connect(format!("{v4}:8080")).await;
    assert!(s.is_ok(), "host to {v4}: {s:?}");
    drop(s);
    for action in ["stop", "start"] {
        let r = d
            .post(
                &format!("/v1/apps/net-mac/machines/{id}/{action}"),
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{action}: {}", r.text());
        let state = if action == "stop" {
            "stopped"
        } else {
            "started"
        };
        d.wait_state("net-mac", &id, state).await;
    }
    assert_eq!(mac().await, before, "eth0's MAC changed across a restart");
    assert!(before.starts_with("02:"), "locally administered: {before}");
    // Connects at once (refused only until httpd listens), never left unanswered.
    eventually(
        "the restarted machine to accept",
        async || match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(format!("{v4}:8080")),
        )
        .await
        {
            Ok(Ok(_)) => true,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => false,
            other => panic!("connect to the restarted machine: {other:?}"),
        },
    )
    .await;
}

#[tokio::test]
async fn networks_are_isolated_from_each_other_and_from_the_host() {
    let d = daemon().await;
    create_app(&d, "iso-a", None).await;
    create_app(&d, "iso-b", Some("tenant-b")).await;
    let (web_a, ma) = web(&d, "iso-a").await;
    let (web_b, mb) = web(&d, "iso-b").await;
    let (a_net, b_net): (Ipv6Addr, Ipv6Addr) = (ip(&ma).parse().unwrap(), ip(&mb).parse().unwrap());
    assert_ne!(
        a_net.segments()[1..3],
        b_net.segments()[1..3],
        "different /48s"
    );

    // Neither reaches the other, in either direction, over IPv6 or IPv4.
    let (a4, b4) = (
        ipv4(&d, "iso-a", &web_a).await,
        ipv4(&d, "iso-b", &web_b).await,
    );
    for (app, from, to) in [
        ("iso-a", &web_a, format!("{b_net}")),
        ("iso-a", &web_a, b4.clone()),
        ("iso-b", &web_b, format!("{a_net}")),
        ("iso-b", &web_b, a4.clone()),
    ] {
        let started = Instant::now();
        let (code, out, _) = d
            .sh(
                app,
                from,
                &format!("echo | nc -w 2 {to} 8080 && echo CONNECTED"),
            )
            .await;
        assert!(
            code != 0 && !out.contains("CONNECTED"),
            "{app} reached {to}: {out}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Nor does one network's resolver tell of the other's machines.
    let (found, out) = lookup(&d, "iso-b", &web_b, "AAAA", "iso-a.internal").await;
    assert!(!found, "{out}");
    let (_, out) = lookup(&d, "iso-b", &web_b, "TXT", "_apps.internal").await;
    assert!(out.contains("iso-b") && !out.contains("iso-a"), "{out}");

    // The host's own services are out of reach: a listener on every host address, tried at
    // the gateway addresses and the resolver's; only the resolver's port 53 answers.
    let host = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
    let port = host.local_addr().unwrap().port();
    let mut gw6 = a_net.segments();
    (gw6[5], gw6[6], gw6[7]) = (0, 0, 1);
    let gw4 = format!("{}.1", a4.rsplit_once('.').unwrap().0);
    for to in [Ipv6Addr::from(gw6).to_string(), gw4, "fdaa::3".into()] {
        let (code, out, _) = d
            .sh(
                "iso-a",
                &web_a,
                &format!("echo | nc -w 2 {to} {port} && echo CONNECTED"),
            )
            .await;
        assert!(
            code != 0 && !out.contains("CONNECTED"),
            "machine reached the host at {to}:{port}: {out}"
        );
    }
    let (found, out) = lookup(&d, "iso-a", &web_a, "A", "example.test").await;
    assert!(
        found && out.contains("192.0.2.1"),
        "names outside .internal are forwarded: {out}"
    );
    drop(host);
}

#[tokio::test]
async fn every_internal_name_resolves_as_fly_documents() {
    let d = daemon().await;
    create_app(&d, "dnsapp", None).await;
    let (web1, m1) = run(
        &d,
        "dnsapp",
        &["/bin/sleep", "inf"],
        json!({"config": {"metadata": {"fly_process_group": "worker", "role": "primary"}}}),
    )
    .await;
    let (web2, m2) = sleeper(&d, "dnsapp").await;
    let (hidden, _) = run(
        &d,
        "dnsapp",
        &["/bin/sleep", "inf"],
        json!({"config": {"dns": {"skip_registration": true}}}),
    )
    .await;
    let (ip1, ip2) = (ip(&m1), ip(&m2));
    let region = m1["region"].as_str().unwrap().to_string();
    let q = |kind: &'static str, name: String| {
        let d = &d;
        let web2 = web2.clone();
        async move { lookup(d, "dnsapp", &web2, kind, &name).await }
    };

    for name in [
        "dnsapp.internal",
        "global.dnsapp.internal",
        &format!("{region}.dnsapp.internal"),
    ] {
        let (ok, out) = q("AAAA", name.to_string()).await;
        assert!(
            ok && out.contains(&ip1) && out.contains(&ip2),
            "{name}: {out}"
        );
    }
    let (ok, out) = q("AAAA", format!("{web1}.vm.dnsapp.internal")).await;
    assert!(ok && out.contains(&ip1) && !out.contains(&ip2), "{out}");
    let (ok, out) = q("AAAA", "worker.process.dnsapp.internal".into()).await;
    assert!(ok && out.contains(&ip1) && !out.contains(&ip2), "{out}");
    let (ok, out) = q("AAAA", "primary.role.kv._metadata.dnsapp.internal".into()).await;
    assert!(ok && out.contains(&ip1) && !out.contains(&ip2), "{out}");
    let (ok, out) = q("AAAA", "top1.nearest.of.dnsapp.internal".into()).await;
    assert!(ok && out.matches("Address: fdaa").count() == 1, "{out}");
    let (ok, out) = q("AAAA", format!("{hidden}.vm.dnsapp.internal")).await;
    assert!(!ok, "skip_registration keeps a machine out: {out}");

    let (ok, out) = q("TXT", "vms.dnsapp.internal".into()).await;
    assert!(
        ok && out.contains(&format!("{web1} {region}"))
            && out.contains(&format!("{web2} {region}")),
        "{out}"
    );
    let (_, out) = q("TXT", "regions.dnsapp.internal".into()).await;
    assert!(out.contains(&format!("\"{region}\"")), "{out}");
    let (_, out) = q("TXT", "_apps.internal".into()).await;
    assert!(out.contains("\"dnsapp\""), "{out}");
    let (_, out) = q("TXT", "_instances.internal".into()).await;
    assert!(
        out.contains(&format!(
            "instance={web1},app=dnsapp,ip={ip1},region={region}"
        )),
        "{out}"
    );

    // Stopped: gone from the AAAA names and the plain TXT ones, still in `all.`; started: back.
    let r = d
        .post(&format!("/v1/apps/dnsapp/machines/{web1}/stop"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("dnsapp", &web1, "stopped").await;
    let (ok, out) = q("AAAA", format!("{web1}.vm.dnsapp.internal")).await;
    assert!(!ok, "a stopped machine is not answered: {out}");
    let (_, out) = q("TXT", "vms.dnsapp.internal".into()).await;
    assert!(!out.contains(&web1), "{out}");
    let (_, out) = q("TXT", "all.vms.dnsapp.internal".into()).await;
    assert!(out.contains(&web1), "{out}");
    let (_, out) = q("TXT", "all._instances.internal".into()).await;
    assert!(out.contains(&web1), "{out}");
    let r = d
        .post(&format!("/v1/apps/dnsapp/machines/{web1}/start"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("dnsapp", &web1, "started").await;
    let (ok, out) = q("AAAA", format!("{web1}.vm.dnsapp.internal")).await;
    assert!(
        ok && out.contains(&ip1),
        "started again, answered again, same address: {out}"
    );
}

#[tokio::test]
async fn a_daemon_sigkill_leaves_connections_up_and_teardown_leaves_no_device() {
    let mut d = daemon().await;
    create_app(&d, "keep", None).await;
    let (server, sm) = run(
        &d,
        "keep",
        &["/bin/nc", "-ll", "-p", "9000", "-e", "/bin/cat"],
        json!({}),
    )
    .await;
    let (client, _) = sleeper(&d, "keep").await;
    let server_ip = ip(&sm);
    // A long-lived connection: the client sends a line every 100 ms and keeps the echoes.
    d.sh("keep",
        &client,
        &format!("(while true; do echo ping; sleep 0.1; done | nc {server_ip} 9000 > /tmp/echoes) >/dev/null 2>&1 &"),
    )
    .await;
    let echoes = async |d: &Daemon| {
        d.sh("keep", &client, "wc -l < /tmp/echoes")
            .await
            .1
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    eventually("the first echoes", async || echoes(&d).await > 0).await;
    let nc_pid = async |d: &Daemon| d.sh("keep", &client, "pidof nc").await.1.trim().to_string();
    let pid = nc_pid(&d).await;
    assert!(!pid.is_empty());

    d.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.restart().await;
    let before = echoes(&d).await;
    eventually("echoes after the restart", async || {
        echoes(&d).await > before + 3
    })
    .await;
    assert_eq!(nc_pid(&d).await, pid, "the same connection, not a new one");

    // Suspending the server and resuming it keeps the connection as well.
    let r = d
        .post(
            &format!("/v1/apps/keep/machines/{server}/suspend"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("keep", &server, "suspended").await;
    let r = d
        .post(&format!("/v1/apps/keep/machines/{server}/start"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("keep", &server, "started").await;
    let before = echoes(&d).await;
    eventually("echoes after a resume", async || {
        echoes(&d).await > before + 3
    })
    .await;
    assert_eq!(nc_pid(&d).await, pid);

    // The resolver is back too.
    let (ok, out) = lookup(
        &d,
        "keep",
        &client,
        "AAAA",
        &format!("{server}.vm.keep.internal"),
    )
    .await;
    assert!(ok && out.contains(&server_ip), "{out}");

    // Destroying every machine removes its veth (with its network namespace, right after the
    // answer) and, with the last one, the bridge.
    d.destroy_machine("keep", &client, true).await;
    eventually("the client's veth to go", async || devices().len() == 2).await;
    assert!(
        devices().iter().any(|n| n.starts_with("hgn")),
        "{:?}",
        devices()
    );
    d.destroy_machine("keep", &server, true).await;
    eventually("every device to go", async || devices().is_empty()).await;
    // The warm sandboxes' spare veths go with the daemon.
    let spares = spare_veths();
    assert!(
        !spares.is_empty() && spares.iter().all(|n| all_devices().contains(n)),
        "spares {spares:?}, devices {:?}",
        all_devices()
    );
    assert!(d.terminate().success());
    eventually("the spare veths to go", async || all_devices().is_empty()).await;
}

#[tokio::test]
async fn bad_network_names_are_refused() {
    let d = Daemon::start().await;
    for bad in ["Tenant", "../x", "a b", "-x", &"n".repeat(64)] {
        let r = d
            .post(
                "/v1/apps",
                json!({"app_name": "badnet", "org_slug": "personal", "network": bad}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(r.text().contains("network"), "{}", r.text());
    }
    assert_eq!(
        d.get("/v1/apps/badnet").await.status,
        404,
        "nothing was created"
    );
}

/// A daemon running networking in a network namespace of its own locks
/// `/run/hangar/network-<namespace inode>.lock`; the file goes when the daemon stops, and a
/// starting daemon removes such files that no daemon holds (their daemons were killed).
#[tokio::test]
async fn test_namespace_network_locks_do_not_pile_up() {
    use std::os::unix::fs::MetadataExt;
    let hosts = common::netns::Hosts::new(1);
    std::fs::create_dir_all("/run/hangar").unwrap();
    // As a SIGKILLed daemon of a namespace long gone leaves it.
    let stale = std::path::Path::new("/run/hangar/network-1.lock");
    std::fs::write(stale, b"").unwrap();
    let inode = std::fs::metadata(hosts.path(1)).unwrap().ino();
    let ours = std::path::PathBuf::from(format!("/run/hangar/network-{inode}.lock"));
    let mut d = Daemon::start_in_netns(hosts.path(1), &[]).await;
    assert!(ours.exists(), "{} is the daemon's lock", ours.display());
    assert!(!stale.exists(), "a lock nobody holds is removed");
    assert!(d.terminate().success());
    assert!(!ours.exists(), "the daemon's own lock goes with it");
}
