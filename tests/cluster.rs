//! Cluster mode: daemons on one PostgreSQL store (a private server the test starts) are one
//! Machines API: each registers its host (region, capacity) and heartbeats, every host's API
//! serves every app, and each host stays the authority for the machines it runs.

mod common;

use common::{cli_ok, Daemon};
use hangar_test_postgres::TestPostgres;
use serde_json::{json, Value};

/// A private PostgreSQL with an empty database, and its URL (the client blocks: not on the
/// test's async thread).
async fn postgres_with_a_database() -> (TestPostgres, String) {
    tokio::task::spawn_blocking(|| {
        let pg = TestPostgres::start();
        let url = pg.database_url();
        (pg, url)
    })
    .await
    .unwrap()
}

/// Two hosts' daemons on one store. The second gets the first's secrets key: the store records
/// which key sealed the secrets, and a host with another key is refused.
async fn two_hosts(url: &str) -> (Daemon, Daemon) {
    let url = url.to_string();
    let a = Daemon::start_with_flags(
        false,
        &["--store", &url, "--host-id", "host-a", "--region", "ams"],
    )
    .await;
    let key = a.data_dir.join("secrets.key");
    let key = key.to_str().unwrap();
    let b = Daemon::start_with_flags(
        false,
        &[
            "--store",
            &url,
            "--host-id",
            "host-b",
            "--region",
            "iad",
            "--secrets-key-file",
            key,
        ],
    )
    .await;
    (a, b)
}

#[tokio::test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
async fn hosts_on_one_store_are_one_api() {
    let (_pg, url) = postgres_with_a_database().await;
    let (a, b) = two_hosts(&url).await;

    // Both hosts are registered, with their regions, capacity and a fresh heartbeat.
    let hosts: Value = serde_json::from_str(&cli_ok(&a.cli(&["hosts", "list", "--json"]))).unwrap();
    let summary: Vec<(String, String, bool, String)> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["region"].as_str().unwrap().to_string(),
                h["this_host"].as_bool().unwrap(),
                h["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("host-a".into(), "ams".into(), true, "ok".into()),
            ("host-b".into(), "iad".into(), false, "ok".into())
        ],
        "{hosts}"
    );
    assert!(hosts[0]["cpus"].as_i64().unwrap() >= 1, "{hosts}");
    let table = cli_ok(&b.cli(&["hosts", "list"]));
    assert!(
        table.contains("host-b *") && table.contains("host-a"),
        "{table}"
    );

    // An app made through one host's API is every host's; so is a machine, which records the
    // host it was made on and its region.
    a.create_app("shared").await;
    let r = b.get("/v1/apps/shared").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = b
        .create_machine("shared", json!({"skip_launch": true}))
        .await;
    assert_eq!(m["region"], "iad", "{m}");
    let id = m["id"].as_str().unwrap();
    let seen: Value = machine_json(&a, "shared", id).await;
    assert_eq!(seen["id"], id, "{seen}");
    let hosts: Value = a.get("/hangar/v1/hosts").await.json().unwrap();
    let machines: Vec<i64> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["machines"].as_i64().unwrap())
        .collect();
    assert_eq!(machines, [0, 1], "host-b has the machine: {hosts}");

    // A secret set through one host is sealed with the shared key and listed by the other.
    let r = a
        .post(
            "/v1/apps/shared/secrets",
            json!({"values": {"TOKEN": "s3cr3t"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let list: Value = b.get("/v1/apps/shared/secrets").await.json().unwrap();
    assert_eq!(list["secrets"][0]["name"], "TOKEN", "{list}");
}

#[tokio::test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
async fn a_host_with_another_secrets_key_is_refused() {
    let (_pg, url) = postgres_with_a_database().await;
    let _a = Daemon::start_with_flags(false, &["--store", &url, "--host-id", "host-a"]).await;
    // A host that made its own key (on its own store), then pointed at the cluster's.
    let mut b = Daemon::start_with_flags(false, &["--host-id", "host-b"]).await;
    b.terminate();
    b.args.extend(["--store".to_string(), url]);
    let err = b.restart_refused().await;
    assert!(err.contains("secrets key"), "{err}");
}

/// A machine config of the test image that sleeps, with `extra` config fields.
fn sleeper(extra: Value) -> Value {
    let mut config = json!({"image": common::test_image(), "init": {"cmd": ["sleep", "600"]}});
    common::merge(&mut config, extra);
    config
}

/// Machine `id` of `app` as `d`'s API shows it.
async fn machine_json(d: &Daemon, app: &str, id: &str) -> Value {
    d.get(&format!("/v1/apps/{app}/machines/{id}"))
        .await
        .json()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Requests for a machine reach the host that runs it, from any host: a create for another
/// region is placed on a host of that region, then start/exec/stop through the first host act
/// on it there. When that host goes silent its machines keep running, requests for them fail
/// fast with a clear error, and they work again when it returns.
#[tokio::test]
#[ignore = "needs root, the test registry and PostgreSQL's initdb; scripts/test runs it"]
async fn requests_reach_the_host_that_runs_the_machine() {
    let (_pg, url) = postgres_with_a_database().await;
    let (port_a, port_b) = (free_port(), free_port());
    let listen_a = format!("127.0.0.1:{port_a}");
    let listen_b = format!("127.0.0.1:{port_b}");
    let a = Daemon::start_with_flags(
        true,
        &[
            "--store",
            &url,
            "--host-id",
            "host-a",
            "--region",
            "ams",
            "--listen",
            &listen_a,
        ],
    )
    .await;
    let key = a.data_dir.join("secrets.key");
    let mut b = Daemon::start_with_flags(
        true,
        &[
            "--store",
            &url,
            "--host-id",
            "host-b",
            "--region",
            "iad",
            "--listen",
            &listen_b,
            "--secrets-key-file",
            key.to_str().unwrap(),
        ],
    )
    .await;
    a.create_app("far").await;

    // Made through host-a, for region iad: it lands on host-b.
    let id = a
        .launch(
            "far",
            json!({"region": "iad", "config": sleeper(json!({}))}),
        )
        .await;
    a.wait_state("far", &id, "started").await;
    let local_to_b: Value = machine_json(&b, "far", &id).await;
    assert_eq!(local_to_b["region"], "iad", "{local_to_b}");
    let exec = a
        .post(
            &format!("/v1/apps/far/machines/{id}/exec"),
            json!({"command": ["hostname"]}),
        )
        .await;
    assert_eq!(exec.status, 200, "{}", exec.text());
    assert!(
        exec.json::<Value>().unwrap()["stdout"]
            .as_str()
            .unwrap()
            .starts_with(&id),
        "ran on the machine: {}",
        exec.text()
    );
    // The console (an HTTP upgrade) through host-a reaches the machine on host-b.
    let console = a
        .client
        .console(
            "far",
            &id,
            &hangar_client::ConsoleOptions {
                command: Some("/bin/sh".into()),
                ..Default::default()
            },
        )
        .await
        .expect("console across hosts");
    let (mut r, mut w) = tokio::io::split(console);
    hangar_client::ConsoleFrame::Data(b"echo far-$((40+2)); hostname\n".to_vec())
        .write(&mut w)
        .await
        .unwrap();
    let mut out = String::new();
    while !out.contains(&id) {
        let frame = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            hangar_client::ConsoleFrame::read(&mut r),
        )
        .await
        .unwrap_or_else(|_| panic!("console output so far: {out:?}"))
        .unwrap();
        match frame {
            Some(hangar_client::ConsoleFrame::Data(d)) => {
                out.push_str(&String::from_utf8_lossy(&d))
            }
            other => panic!("{other:?} after {out:?}"),
        }
    }
    assert!(out.contains("far-42"), "{out}");
    drop((r, w));

    // Hosts talk over TLS under the cluster's CA (all of the above went through it): host-b's
    // API port answers TLS with a certificate the CA issued for its address, and refuses the
    // cluster token over plain HTTP (a token that crossed the network in the clear).
    let cert = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &listen_b, "-showcerts"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&cert.stdout);
    assert!(text.contains("Hangar cluster CA"), "{text}");
    let cluster_token = hangar_secrets::SecretsKey::load(&key)
        .expect("the cluster's key")
        .cluster_token();
    let plain = hangar_client::Client::new(
        hangar_client::Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: port_b,
        },
        Some(cluster_token.to_string()),
    );
    let r = plain
        .get(format!("/v1/apps/far/machines/{id}"))
        .header("hangar-forwarded-by", "host-a")
        .send_raw()
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    // API users keep plain HTTP on the same port.
    let r = hangar_client::Client::new(
        hangar_client::Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: port_b,
        },
        Some(b.token.clone()),
    )
    .get(format!("/v1/apps/far/machines/{id}"))
    .send_raw()
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let hosts: Value = a.get("/hangar/v1/hosts").await.json().unwrap();
    assert_eq!(hosts[1]["used_cpus"], 1, "{hosts}");
    // The forwarded-by marker means nothing without the cluster token, and a percent-encoded
    // id names the same machine: both still reach host-b.
    let encoded = format!("%{:02X}{}", id.as_bytes()[0], &id[1..]);
    let r = a
        .client
        .raw(
            hyper::Method::POST,
            &format!("/v1/apps/far/machines/{encoded}/exec"),
            &[("hangar-forwarded-by", "host-b")],
            Some(br#"{"command": ["true"]}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Deleting the app through host-a would leave host-b's machine running: refused.
    let r = a.delete("/v1/apps/far?force=true").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("host-b"), "{}", r.text());

    // A volume made through host-a for region iad lives on host-b; a machine that mounts it
    // goes there too, and the volume's own requests reach host-b.
    let r = a
        .post(
            "/v1/apps/far/volumes",
            json!({"name": "data", "region": "iad", "size_gb": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let vol = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let with_volume = a
        .launch(
            "far",
            json!({"config": sleeper(json!({"mounts": [{"volume": vol, "path": "/data"}]}))}),
        )
        .await;
    a.wait_state("far", &with_volume, "started").await;
    let placed: Value = machine_json(&b, "far", &with_volume).await;
    assert_eq!(placed["region"], "iad", "on the volume's host: {placed}");
    let r = a
        .client
        .raw(
            hyper::Method::PUT,
            &format!("/v1/apps/far/volumes/{vol}/extend"),
            &[],
            Some(br#"{"size_gb": 2}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    a.destroy_machine("far", &with_volume, true).await;
    assert_eq!(
        a.delete(&format!("/v1/apps/far/volumes/{vol}"))
            .await
            .status,
        200
    );

    // No host in the region: Fly's capacity error.
    let r = a
        .post(
            "/v1/apps/far/machines",
            json!({"region": "syd", "config": {"image": common::test_image()}}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("insufficient_capacity"), "{}", r.text());

    // A standby of that machine, on host-a: it stays down while host-b answers.
    let standby = a
        .create_machine(
            "far",
            json!({"skip_launch": true, "config": sleeper(json!({"standbys": [id]}))}),
        )
        .await;
    let standby = standby["id"].as_str().unwrap().to_string();

    // host-b goes silent: its machine keeps running; host-a answers fast and says why.
    b.kill9();
    tokio::time::sleep(std::time::Duration::from_secs(16)).await;
    let t0 = std::time::Instant::now();
    let r = a
        .post(&format!("/v1/apps/far/machines/{id}/stop"), json!({}))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("host-b") && r.text().contains("unreachable"),
        "{}",
        r.text()
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    let hosts: Value = a.get("/hangar/v1/hosts").await.json().unwrap();
    assert_eq!(hosts[1]["status"], "unreachable", "{hosts}");
    // The standby starts on its own host.
    a.wait_state("far", &standby, "started").await;
    // The machine is still there to read, marked as on an unreachable host.
    let seen: Value = machine_json(&a, "far", &id).await;
    assert_eq!(
        (seen["state"].as_str(), seen["host_status"].as_str()),
        (Some("started"), Some("unreachable")),
        "{seen}"
    );

    // host-b comes back, adopts its machine, and requests through host-a work again.
    b.restart().await;
    let r = a
        .post(&format!("/v1/apps/far/machines/{id}/stop"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    a.wait_state("far", &id, "stopped").await;
    a.destroy_machine("far", &id, true).await;
    a.destroy_machine("far", &standby, true).await;
}

/// Two hosts given one host id would both act as the owner of its machines: the second is
/// refused while the first heartbeats.
#[tokio::test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
async fn a_second_host_with_a_live_hosts_id_is_refused() {
    let (_pg, url) = postgres_with_a_database().await;
    let a = Daemon::start_with_flags(false, &["--store", &url, "--host-id", "twin"]).await;
    let key = a.data_dir.join("secrets.key");
    let mut b = Daemon::start_with_flags(false, &["--host-id", "twin"]).await;
    b.terminate();
    b.args.extend([
        "--store".to_string(),
        url,
        "--secrets-key-file".to_string(),
        key.to_str().unwrap().to_string(),
    ]);
    let err = b.restart_refused().await;
    assert!(err.contains("in use by another live daemon"), "{err}");
}

/// The database goes away: machines keep running untouched, writes fail fast, and everything
/// works again when it returns.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root, the test registry and PostgreSQL's initdb; scripts/test runs it"]
async fn machines_outlive_a_database_outage() {
    let (mut pg, url) = postgres_with_a_database().await;
    let a = Daemon::start_with_flags(true, &["--store", &url, "--host-id", "solo"]).await;
    a.create_app("steady").await;
    let id = a
        .launch("steady", json!({"config": sleeper(json!({}))}))
        .await;
    a.wait_state("steady", &id, "started").await;
    // A mark in the machine's root filesystem, which a restart would not keep.
    let exec = |cmd: &'static str| {
        let (a, id) = (&a, id.clone());
        async move {
            a.post(
                &format!("/v1/apps/steady/machines/{id}/exec"),
                json!({"command": ["sh", "-c", cmd]}),
            )
            .await
        }
    };
    assert_eq!(exec("echo up > /mark").await.status, 200);

    tokio::task::block_in_place(|| pg.stop_server());
    let t0 = std::time::Instant::now();
    let r = a
        .post(
            "/v1/apps",
            json!({"name": "during", "org_slug": "personal"}),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t0.elapsed()
    );

    tokio::task::block_in_place(|| pg.run_server());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = a
            .post("/v1/apps", json!({"name": "after", "org_slug": "personal"}))
            .await;
        if r.status == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.text());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The same run of the machine: its mark is still there.
    let r = exec("cat /mark").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["stdout"], "up\n", "{}", r.text());
    a.destroy_machine("steady", &id, true).await;
}

/// Runs `sh -c script` in machine `id` of `app` through `d`'s API: (exit code, stdout).
async fn sh(d: &Daemon, app: &str, id: &str, script: &str) -> (i64, String) {
    let (code, out, _) = d.sh(app, id, script).await;
    (code, out)
}

/// Retries `script` in machine `id` until it prints `want` (another host's machines reach a
/// resolver, and its address the overlay, within about a second), or fails with the last
/// output. (busybox's `wget -T` crashes: timeouts are `timeout`'s.)
async fn until_prints(d: &Daemon, app: &str, id: &str, script: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, out) = sh(d, app, id, script).await;
        if code == 0 && out.contains(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{script}` in {id}: exit {code}, {out:?} (wanted {want:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Three hosts, each its own network namespace (its own bridges, routes and firewall) joined
/// by an underlay: machines of one network on different hosts reach each other over 6PN and
/// find each other through `.internal` from any host; a machine of another network does not
/// reach them.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root, the test registry and PostgreSQL's initdb; scripts/test runs it"]
async fn machines_on_different_hosts_reach_each_other() {
    let (_pg, url) = postgres_with_a_database().await;
    let hosts = common::netns::Hosts::new(3);
    let registry: std::net::SocketAddr = common::registry().parse().unwrap();
    let mut daemons = Vec::new();
    let mut key = None::<String>;
    for (n, region) in [(1, "ams"), (2, "iad"), (3, "syd")] {
        hosts.relay(n, registry).await;
        let address = common::netns::Hosts::address_of(n).to_string();
        let listen = format!("{address}:4280");
        let host_id = format!("host-{n}");
        let mut flags = vec![
            "--store",
            &url,
            "--host-id",
            &host_id,
            "--region",
            region,
            "--listen",
            &listen,
            // Names that are not .internal go nowhere (the namespace has no way out anyway).
            "--dns-upstream",
            "[::1]:53",
            "--proxy-bind",
            &address,
            "--autostop-after",
            "2s",
        ];
        if let Some(k) = &key {
            flags.extend(["--secrets-key-file", k.as_str()]);
        }
        let d = Daemon::start_in_netns(hosts.path(n), &flags).await;
        key.get_or_insert_with(|| d.data_dir.join("secrets.key").display().to_string());
        daemons.push(d);
    }
    let a = &daemons[0];
    a.create_app("web").await;
    let r = a
        .post(
            "/v1/apps",
            json!({"app_name": "elsewhere", "org_slug": "personal", "network": "other"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // A web server on host 2 (an HTTP service on edge port 80 that autostops and autostarts)
    // and clients on hosts 1 and 3, all made through host 1's API.
    let server_cmd = ["/bin/httpd", "-f", "-p", "[::]:8080", "-h", "/"];
    let service = json!([{
        "protocol": "tcp", "internal_port": 8080, "autostop": "stop", "autostart": true,
        "ports": [{"port": 80, "handlers": ["http"]}],
    }]);
    let mut ids = Vec::new();
    for (region, cmd, services) in [
        ("iad", json!(server_cmd), service),
        ("ams", json!(["/bin/sleep", "inf"]), json!([])),
        ("syd", json!(["/bin/sleep", "inf"]), json!([])),
    ] {
        let config = json!({
            "image": common::test_image(), "init": {"exec": cmd}, "services": services,
        });
        let id = a
            .launch("web", json!({"region": region, "config": config}))
            .await;
        a.wait_state("web", &id, "started").await;
        ids.push(id);
    }
    let server = ids[0].clone();
    // The server's IPv4, read while it surely runs (it autostops 2 s after its last request).
    let (_, out) = sh(a, "web", &server, "ip -4 -o addr show eth0").await;
    let v4 = out
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next());
    let v4 = v4.unwrap_or_else(|| panic!("no IPv4: {out}")).to_string();
    let server_m = machine_json(a, "web", &server).await;
    let server_ip = server_m["private_ip"].as_str().unwrap().to_string();
    // The server's 6PN address carries host 2's part, not host 1's or 3's.
    let client_ip = machine_json(a, "web", &ids[1]).await["private_ip"]
        .as_str()
        .unwrap()
        .to_string();
    let parts = |ip: &str| ip.parse::<std::net::Ipv6Addr>().unwrap().segments();
    assert_eq!(
        parts(&server_ip)[..3],
        parts(&client_ip)[..3],
        "one network"
    );
    assert_ne!(
        parts(&server_ip)[3..5],
        parts(&client_ip)[3..5],
        "two hosts"
    );

    // From hosts 1 and 3: by the machine's name, by the app's name (resolved by each host's
    // own resolver), and by address.
    for client in &ids[1..] {
        let by_name =
            format!("timeout 5 wget -qO- http://{server}.vm.web.internal:8080/etc/hostname");
        until_prints(a, "web", client, &by_name, &server).await;
        let by_region = "timeout 5 wget -qO- http://iad.web.internal:8080/etc/hostname";
        until_prints(a, "web", client, by_region, &server).await;
        let by_address = format!("timeout 5 wget -qO- http://[{server_ip}]:8080/etc/hostname");
        let (code, out) = sh(a, "web", client, &by_address).await;
        assert_eq!((code, out.trim()), (0, server.as_str()));
    }
    // The app's name lists its machines on all three hosts, asked on host 3 (a host learns
    // of another's machines within about a second: docs/cluster.md).
    let mut ips = Vec::new();
    for id in &ids {
        let ip = machine_json(a, "web", id).await["private_ip"]
            .as_str()
            .unwrap()
            .to_string();
        ips.push((id, ip));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, out) = sh(
            &daemons[2],
            "web",
            &ids[2],
            "nslookup -type=AAAA web.internal",
        )
        .await;
        let missing: Vec<_> = ips.iter().filter(|(_, ip)| !out.contains(ip)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} missing: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    // Another network's machine, on host 1, neither reaches the server nor resolves it.
    let config = json!({"image": common::test_image(), "init": {"exec": ["/bin/sleep", "inf"]}});
    let outsider = a
        .launch("elsewhere", json!({"region": "ams", "config": config}))
        .await;
    a.wait_state("elsewhere", &outsider, "started").await;
    let (code, out) = sh(
        a,
        "elsewhere",
        &outsider,
        &format!("timeout 5 wget -qO- http://[{server_ip}]:8080/etc/hostname"),
    )
    .await;
    assert_ne!(code, 0, "another network reached the server: {out}");
    let (_, out) = sh(
        a,
        "elsewhere",
        &outsider,
        &format!("nslookup -type=AAAA {server}.vm.web.internal"),
    )
    .await;
    assert!(!out.contains(&server_ip), "{out}");

    // Only IPv6 crosses the overlay: host 1 has no way to the server's IPv4.
    let (_, out) = sh(
        a,
        "web",
        &ids[1],
        &format!("timeout 3 wget -qO- http://{v4}:8080/etc/hostname || true"),
    )
    .await;
    assert!(!out.contains(&server), "IPv4 crossed the overlay: {out}");

    // Every host's proxy serves the app, whose only machine runs on host 2: hosts 1 and 3
    // reach it through host 2 (the backhaul), with the edge's own headers.
    let fetch = |n: usize, path: &str| {
        let url = format!("http://{}{path}", common::netns::Hosts::address_of(n));
        hosts.run_in(n, &["curl", "-s", "-f", "--max-time", "20", &url])
    };
    for n in [1, 3] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (ok, out) = fetch(n, "/etc/hostname");
            if ok && out.trim() == server {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host {n}'s proxy: {ok} {out:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    // Idle, it is stopped by its own host (which saw the other hosts' traffic as load)…
    a.wait_state("web", &server, "stopped").await;
    // …and a request at host 3's proxy has host 2 start it again, then is served.
    let (ok, out) = fetch(3, "/etc/hostname");
    assert!(
        ok && out.trim() == server,
        "autostart through host 3: {ok} {out:?}"
    );
    let m = machine_json(a, "web", &server).await;
    assert_eq!(m["state"], "started", "{m}");
    let events: Vec<Value> = a
        .get(&format!("/v1/apps/web/machines/{server}/events?limit=50"))
        .await
        .json()
        .unwrap();
    let by_proxy: Vec<&str> = events
        .iter()
        .filter(|e| e["source"] == "fly-proxy")
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        by_proxy.contains(&"start") && by_proxy.contains(&"stop"),
        "{events:?}"
    );

    for id in &ids {
        a.destroy_machine("web", id, true).await;
    }
    a.destroy_machine("elsewhere", &outsider, true).await;
    for d in &mut daemons {
        d.terminate();
    }
    // Every host's devices went with its machines and daemon.
    for n in 1..=3 {
        let (_, links) = hosts.run_in(n, &["ip", "-o", "link", "show"]);
        let ours: Vec<&str> = links.lines().filter(|l| l.contains(": hg")).collect();
        assert!(ours.is_empty(), "host {n} kept {ours:?}");
    }
}
