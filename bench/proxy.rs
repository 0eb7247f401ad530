//! Proxy figures, one run, one backend (a machine running Debian's nginx, the mmdebstrap-built
//! `hangar/nginx` fixture, answering a small response with keep-alive):
//! requests/s and latency percentiles with `wrk` straight to the machine, through Hangar's
//! proxy, and through Debian's nginx as a reverse proxy (bare, and sending the same headers as
//! Hangar's proxy: the like-for-like comparison); then the time from a request to the
//! first response byte when the machine is suspended, and when it is stopped. Prints figures;
//! asserts nothing.
//!
//!     cargo build --release && cargo run --release --example bench_proxy [-- --seconds 5 --connections 32 --rounds 3]
//!
//! Needs root, the loopback registry with the fixtures, `wrk` and `nginx` (skipped with a
//! message when missing).

#[path = "common.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `wrk`'s requests/s and p50/p99 latency (ms) for `url`.
fn wrk(url: &str, seconds: u64, connections: u64) -> Option<(f64, f64, f64)> {
    let out = Command::new("wrk")
        .args([
            &format!("-t{}", connections.min(2)),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |s: &str| -> Option<f64> {
        let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = n.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => return None,
        })
    };
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
    };
    let rps = field("Requests/sec:")?.parse().ok()?;
    Some((rps, ms(&field("50%")?)?, ms(&field("99%")?)?))
}

/// Time to the first byte of the response to a GET on `port`.
async fn first_byte(port: u16) -> Duration {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"GET /index.html HTTP/1.1\r\nHost: bench.localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("first byte");
    let t = t0.elapsed();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    t
}

/// The backend's nginx site: a small response on 8080, no access log.
fn base64_conf() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode("server { listen 8080; access_log off; location / { return 200 \"hello\\n\"; } }\n")
}

fn p50(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    common::check_args(&["--seconds", "--connections", "--rounds"], "bench_proxy [--seconds 5] [--connections 32] [--rounds 3]: proxied requests against nginx, and wake-up times");
    let seconds = common::arg("--seconds", 5u64);
    let connections = common::arg("--connections", 32u64);
    let rounds = common::arg("--rounds", 3u64);
    let workers = std::env::var("BENCH_PROXY_WORKERS").unwrap_or_default();
    let flags: Vec<&str> = if workers.is_empty() {
        vec![]
    } else {
        vec!["--proxy-workers", &workers]
    };
    let d = common::start_daemon_with("proxy", &flags).await;
    let c = &d.client;
    c.post("/v1/apps")
        .json(&json!({"name": "bench"}))
        .send_raw()
        .await
        .expect("app");
    let config = json!({
        "image": common::test_image().replace("/hangar/busybox:", "/hangar/nginx:"),
        "files": [{"guest_path": "/etc/nginx/conf.d/default.conf", "raw_value": base64_conf()}],
        "guest": {"cpus": 1, "memory_mb": 256, "cpu_kind": "shared"},
        "services": [{"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 18090, "handlers": ["http"]}]}],
    });
    let (id, _) = common::create_started(c, "bench", config).await;
    let r: Value = c
        .post(format!("/v1/apps/bench/machines/{id}/exec"))
        .json(&json!({"command": ["/bin/sh", "-c", "ip -4 -o addr show eth0"]}))
        .send()
        .await
        .expect("exec");
    let ipv4 = r["stdout"]
        .as_str()
        .and_then(|s| s.split_whitespace().nth(3))
        .and_then(|a| a.split('/').next())
        .expect("the machine's IPv4")
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let show = |name: &str, r: Option<(f64, f64, f64)>| match r {
        Some((rps, p50, p99)) => {
            println!("  {name:<28} {rps:>9.0} req/s   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms");
        }
        None => println!("  {name:<28} failed (is wrk installed?)"),
    };
    // A proxy's requests/s and CPU per request (µs): what its processes used during the run
    // over the requests served.
    let through = |name: &str, url: &str, pids: &[u32]| {
        let before = common::cpu_seconds(pids);
        let r = wrk(url, seconds, connections);
        let used = common::cpu_seconds(pids) - before;
        let per_request = r.map(|(rps, _, _)| used / (rps * seconds as f64).max(1.0) * 1e6);
        if let (Some((rps, p50, p99)), Some(us)) = (r, per_request) {
            println!(
                "  {name:<28} {rps:>9.0} req/s   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   {us:>5.1} µs CPU/request"
            );
        } else {
            show(name, r);
        }
        r.map(|(rps, _, _)| rps).zip(per_request)
    };
    // Two nginx configurations: the bare `proxy_pass` (what nginx does when told nothing), and
    // the same job as Hangar's proxy: the client's Host, and Fly's request and response headers
    // (what a reverse proxy in front of web apps is configured to send, and what costs the
    // backend parsing too).
    let same_headers = "proxy_set_header Host $http_host;\n\
         proxy_set_header Fly-Client-IP $remote_addr;\n\
         proxy_set_header X-Forwarded-For \"$proxy_add_x_forwarded_for, $server_addr\";\n\
         proxy_set_header X-Forwarded-Proto $scheme;\n\
         proxy_set_header X-Forwarded-Ssl off;\n\
         proxy_set_header X-Forwarded-Port $server_port;\n\
         proxy_set_header Fly-Forwarded-Port $server_port;\n\
         proxy_set_header Fly-Region local;\n\
         proxy_set_header Fly-Request-Id $request_id-local;\n\
         proxy_set_header Via \"1.1 nginx\";\n\
         add_header Fly-Request-Id $request_id-local;\n\
         add_header Via \"1.1 nginx\";\n";
    let conf = d.dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; upstream m {{ server {ipv4}:8080; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:18091; location / {{ proxy_pass http://m;\n\
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
             server {{ listen 127.0.0.1:18092; location / {{ proxy_pass http://m;\n\
             proxy_http_version 1.1; proxy_set_header Connection \"\";\n{same_headers} }} }} }}\n",
            dir = d.dir.display()
        ),
    )
    .expect("nginx.conf");
    let nginx = Command::new("nginx")
        .args(["-c"])
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Rounds in turn (direct, hangar, the two nginx), so that the host's noise falls on all four
    // alike; the ratio is the median of the rounds'.
    println!(
        "proxy throughput ({rounds} rounds of {seconds} s, {connections} connections, 2 threads, one nginx machine as the backend):"
    );
    let daemon = [d.child.id()];
    let workers = nginx
        .as_ref()
        .map(|n| common::children(n.id()))
        .unwrap_or_default();
    let (mut bare, mut same) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        println!(" round {round}:");
        let direct = wrk(
            &format!("http://{ipv4}:8080/index.html"),
            seconds,
            connections,
        );
        show("direct to the machine", direct);
        let hangar = through(
            "through hangar's proxy",
            "http://127.0.0.1:18090/index.html",
            &daemon,
        );
        if nginx.is_ok() {
            let n = through(
                "through nginx, bare",
                "http://127.0.0.1:18091/index.html",
                &workers,
            );
            let s = through(
                "through nginx, same headers",
                "http://127.0.0.1:18092/index.html",
                &workers,
            );
            if let (Some(h), Some(n), Some(s)) = (hangar, n, s) {
                bare.push((h.0 / n.0.max(1e-9), h.1 / n.1.max(1e-9)));
                same.push((h.0 / s.0.max(1e-9), h.1 / s.1.max(1e-9)));
            }
        } else {
            println!("  nginx: skipped (apt install nginx)");
        }
    }
    if let Ok(mut nginx) = nginx {
        // SIGTERM: nginx's master takes its workers down with it (a SIGKILL would leave them
        // listening).
        let _ = Command::new("kill").arg(nginx.id().to_string()).status();
        let _ = nginx.wait();
    }
    let median = |mut v: Vec<f64>| {
        let shown: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], shown.join(", "))
    };
    for (ratios, what) in [
        (same, "nginx sending the same headers"),
        (bare, "bare nginx (no forwarding headers)"),
    ] {
        if ratios.is_empty() {
            continue;
        }
        let (throughput, rounds) = median(ratios.iter().map(|r| r.0).collect());
        println!("  hangar vs {what}: {throughput:.2}x the throughput (median; rounds {rounds})");
        let (cpu, rounds) = median(ratios.iter().map(|r| r.1).collect());
        println!("    and {cpu:.2}x the CPU per request (median; rounds {rounds})");
    }

    // Added latency without queueing: one connection, one request at a time.
    println!("\nlatency ({seconds} s, 1 connection, sequential requests):");
    let one = |url: &str| wrk(url, seconds, 1);
    let direct1 = one(&format!("http://{ipv4}:8080/index.html"));
    show("direct to the machine", direct1);
    let hangar1 = one("http://127.0.0.1:18090/index.html");
    show("through hangar's proxy", hangar1);
    if let (Some(h), Some(d)) = (hangar1, direct1) {
        println!(
            "  added by hangar's proxy: p50 {:+.3} ms, p99 {:+.3} ms",
            h.1 - d.1,
            h.2 - d.2
        );
    }

    println!("\nwake on request (time to the first response byte, 20 rounds):");
    for (name, path) in [("suspended", "suspend"), ("stopped", "stop")] {
        let mut lat = Vec::new();
        for _ in 0..20 {
            let r = c
                .post(format!("/v1/apps/bench/machines/{id}/{path}"))
                .json(&json!({}))
                .send_raw()
                .await
                .expect(path);
            assert_eq!(r.status, 200, "{}", r.text());
            let _ = c
                .get(format!(
                    "/v1/apps/bench/machines/{id}/wait?state={}&timeout=30",
                    if path == "stop" {
                        "stopped"
                    } else {
                        "suspended"
                    }
                ))
                .send_raw()
                .await;
            lat.push(first_byte(18090).await);
        }
        println!("  from {name:<10} p50 {:>7.2} ms", p50(lat));
    }
    let _ = c
        .delete(format!("/v1/apps/bench/machines/{id}?force=true"))
        .send_raw()
        .await;
}
