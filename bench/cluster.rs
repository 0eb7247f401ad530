//! Cluster-mode benchmark: the PostgreSQL store against the embedded SQLite in the same run
//! (API create and GET requests/s, create→`started` latency), and the time from a host going
//! silent to its machine's standby started on another host. Prints figures; asserts nothing.
//!
//!     cargo run --release --example bench_cluster -- [--machines 30] [--seconds 5]
//!
//! Needs root, PostgreSQL's `initdb`/`postgres` (Debian's postgresql; the server is private,
//! unix socket only, fsync on like SQLite's commits), and the loopback registry with the
//! fixtures (`scripts/registry start && push`). Daemons run with `--network off`: machine
//! networking is one daemon's per network namespace, and the figures are about the store.

#[path = "common.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{arg, start_daemon_with, Daemon};
use hangar_client::Client;
use serde_json::{json, Value};

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Requests/s of `request` from `workers` concurrent clients for `seconds`.
async fn throughput<F, Fut>(workers: usize, seconds: u64, request: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (done, request) = (done.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if request().await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / seconds as f64
}

async fn create_app(c: &Client, name: &str) {
    let r = c
        .post("/v1/apps")
        .json(&json!({"name": name}))
        .send_raw()
        .await
        .expect("create app");
    assert!(r.status == 201 || r.status == 409, "{}", r.text());
}

async fn destroy(c: &Client, app: &str, id: &str) {
    let _ = c
        .delete(format!("/v1/apps/{app}/machines/{id}?force=true"))
        .send_raw()
        .await;
}

/// Create (skip_launch) and GET requests/s against `d`.
async fn api_figures(d: &Daemon, seconds: u64) -> (f64, f64) {
    create_app(&d.client, "api").await;
    let c = d.client.clone();
    let creates = throughput(16, seconds, move || {
        let c = c.clone();
        async move {
            c.post("/v1/apps/api/machines")
                .json(&json!({"skip_launch": true, "config": {"image": "busybox", "env": {"A": "1"}}}))
                .send_raw()
                .await
                .is_ok_and(|r| r.status == 200)
        }
    })
    .await;
    let list: Value = d
        .client
        .get("/v1/apps/api/machines?summary=true")
        .send()
        .await
        .expect("list");
    let id = list[0]["id"].as_str().expect("a machine").to_string();
    let c = d.client.clone();
    let gets = throughput(16, seconds, move || {
        let (c, id) = (c.clone(), id.clone());
        async move {
            c.get(format!("/v1/apps/api/machines/{id}"))
                .send_raw()
                .await
                .is_ok_and(|r| r.status == 200)
        }
    })
    .await;
    (creates, gets)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::main]
async fn main() {
    common::check_args(&["--machines", "--seconds"], "bench_cluster [--machines 30] [--seconds 5]: the API on SQLite against PostgreSQL, and host loss to standby");
    let machines = arg("--machines", 30usize);
    let seconds = arg("--seconds", 5u64);
    let image = common::test_image();
    let pg = tokio::task::spawn_blocking(|| hangar_test_postgres::TestPostgres::start_with(true))
        .await
        .expect("postgres");
    let url = {
        let pg = &pg;
        tokio::task::block_in_place(|| pg.database_url())
    };

    let sqlite = start_daemon_with("cluster-sqlite", &["--network", "off"]).await;
    let port_a = free_port().to_string();
    let listen_a = format!("127.0.0.1:{port_a}");
    let postgres = start_daemon_with(
        "cluster-pg-a",
        &[
            "--network",
            "off",
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

    println!("store: PostgreSQL 15 (private server, fsync on) against SQLite, 2 cores");
    let (sc, sg) = api_figures(&sqlite, seconds).await;
    let (pc, pgt) = api_figures(&postgres, seconds).await;
    println!("  API create (skip_launch), 16 clients      sqlite {sc:>8.0} req/s   postgres {pc:>8.0} req/s   ({:.2}x)", pc / sc);
    println!("  API GET machine, 16 clients               sqlite {sg:>8.0} req/s   postgres {pgt:>8.0} req/s   ({:.2}x)", pgt / sg);

    // create→started, one at a time, alternating between the two stores.
    create_app(&sqlite.client, "run").await;
    create_app(&postgres.client, "run").await;
    for d in [&sqlite, &postgres] {
        let (warm, _) = common::create_sleeper(&d.client, "run", &image).await;
        destroy(&d.client, "run", &warm).await;
    }
    let (mut s_lat, mut p_lat, mut made) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..machines {
        let (id, lat) = common::create_sleeper(&sqlite.client, "run", &image).await;
        s_lat.push(lat);
        made.push((0, id));
        let (id, lat) = common::create_sleeper(&postgres.client, "run", &image).await;
        p_lat.push(lat);
        made.push((1, id));
    }
    for (which, id) in made {
        let d = if which == 0 { &sqlite } else { &postgres };
        destroy(&d.client, "run", &id).await;
    }
    let (s, p) = (p50(s_lat), p50(p_lat));
    println!(
        "  create -> started p50 (n={machines})           sqlite {:>8.2} ms    postgres {:>8.2} ms    ({:+.2} ms)",
        ms(s),
        ms(p),
        ms(p) - ms(s)
    );

    // Host loss: a machine on host-b with a standby on host-a; host-b stops heartbeating
    // (SIGSTOP: a hung or cut-off host; its machines keep running), and the standby starts.
    let key = postgres.dir.join("data/secrets.key");
    let port_b = free_port().to_string();
    let listen_b = format!("127.0.0.1:{port_b}");
    let host_b = start_daemon_with(
        "cluster-pg-b",
        &[
            "--network",
            "off",
            "--store",
            &url,
            "--host-id",
            "host-b",
            "--region",
            "iad",
            "--listen",
            &listen_b,
            "--secrets-key-file",
            key.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    create_app(&postgres.client, "ha").await;
    let primary: Value = postgres
        .client
        .post("/v1/apps/ha/machines")
        .json(&json!({"region": "iad", "config": {"image": image, "init": {"exec": ["/bin/sleep", "inf"]}}}))
        .send()
        .await
        .expect("primary");
    let primary = primary["id"].as_str().expect("id").to_string();
    let standby: Value = postgres
        .client
        .post("/v1/apps/ha/machines")
        .json(&json!({"region": "ams", "skip_launch": true, "config": {"image": image, "init": {"exec": ["/bin/sleep", "inf"]}, "standbys": [primary]}}))
        .send()
        .await
        .expect("standby");
    let standby = standby["id"].as_str().expect("id").to_string();
    let r = host_b
        .client
        .get(format!(
            "/v1/apps/ha/machines/{primary}/wait?state=started&timeout=60"
        ))
        .send_raw()
        .await
        .expect("wait primary");
    assert_eq!(r.status, 200, "{}", r.text());
    let b = nix::unistd::Pid::from_raw(host_b.child.id() as i32);
    nix::sys::signal::kill(b, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP host-b");
    let t0 = Instant::now();
    let r = postgres
        .client
        .get(format!(
            "/v1/apps/ha/machines/{standby}/wait?state=started&timeout=60"
        ))
        .send_raw()
        .await
        .expect("wait standby");
    let lost = t0.elapsed();
    nix::sys::signal::kill(b, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT host-b");
    if r.status == 200 {
        println!(
            "  host silent -> standby started             {:>8.2} s   (a host is unreachable after 15 s without heartbeats, every 5 s)",
            lost.as_secs_f64()
        );
    } else {
        println!(
            "  host silent -> standby started: not within 60 s ({})",
            r.text()
        );
    }
    // host-b answers again (its heartbeats resume); clean up through it and host-a.
    tokio::time::sleep(Duration::from_secs(1)).await;
    destroy(&postgres.client, "ha", &standby).await;
    destroy(&host_b.client, "ha", &primary).await;
    drop(host_b);
    drop(postgres);
    drop(sqlite);
    tokio::task::block_in_place(|| drop(pg));
}
