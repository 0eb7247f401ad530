//! Machine start benchmark: create→`started` latency (p50/p99) with a cached image, start of a
//! stopped machine, suspend/resume, destroy, the create→exec→destroy loop of per-user
//! sandboxes, and host memory per idle machine, against `runc run` and `podman run --rm`
//! of the same busybox rootfs in the same run. Prints figures; it asserts nothing.
//!
//!     cargo run --release --example bench_machines -- [--machines 200] [--idle 500]
//!
//! Needs root, the loopback registry with the fixtures (`scripts/registry start && push`), and
//! for the peers `runc`, `podman`, `skopeo`, `umoci` (Debian packages).

#[path = "common.rs"]
mod common;

use common::{arg, start_daemon, start_daemon_with};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangar_client::Client;
use serde_json::{json, Value};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    println!(
        "  {name:<44} p50 {:>8.2} ms   p99 {:>8.2} ms   (n={})",
        p50.as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.len()
    );
    p50
}

fn time_cmd(cmd: &mut Command) -> Option<Duration> {
    let t0 = Instant::now();
    let ok = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| t0.elapsed())
}

/// A runc bundle whose rootfs is the busybox fixture image.
fn runc_bundle(work: &Path) -> Option<PathBuf> {
    let images = Path::new("target/test-images");
    let bundle = work.join("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    let ok = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:busybox", images.display()))
        .arg(&bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    // Replace umoci's config with runc's default spec running `true`.
    let _ = std::fs::remove_file(bundle.join("config.json"));
    Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .ok()?;
    let spec_path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).ok()?).ok()?;
    spec["process"]["args"] = json!(["/bin/true"]);
    spec["process"]["terminal"] = json!(false);
    spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]);
    std::fs::write(&spec_path, serde_json::to_vec(&spec).ok()?).ok()?;
    Some(bundle)
}

fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Interleaved creates: the latencies and ids of the measured machines, per daemon.
type Interleaved = [(Vec<Duration>, Vec<String>); 2];

/// Creates `n` sleepers on each daemon in turn, so both see the same host, pausing `settle`
/// after each. Each daemon gets an app `bench` (it may have one) and first a machine that warms
/// its image cache, unmeasured and destroyed at the end.
async fn interleaved_creates(
    daemons: [&Client; 2],
    n: usize,
    image: &str,
    settle: Duration,
) -> Interleaved {
    let mut out: Interleaved = Default::default();
    let mut warm_ups = Vec::new();
    for c in daemons {
        let _ = c
            .post("/v1/apps")
            .json(&json!({"name": "bench"}))
            .send_raw()
            .await;
        warm_ups.push(common::create_sleeper(c, "bench", image).await.0);
    }
    for _ in 0..n {
        for (c, (lat, made)) in daemons.iter().zip(out.iter_mut()) {
            let (id, took) = common::create_sleeper(c, "bench", image).await;
            lat.push(took);
            made.push(id);
            tokio::time::sleep(settle).await;
        }
    }
    for (c, id) in daemons.into_iter().zip(warm_ups) {
        destroy_all(c, vec![id]).await;
    }
    out
}

/// Destroys (force) app `bench`'s machines `ids` on daemon `c`.
async fn destroy_all(c: &Client, ids: Vec<String>) {
    for id in ids {
        let _ = c
            .delete(format!("/v1/apps/bench/machines/{id}?force=true"))
            .send_raw()
            .await;
    }
}

#[tokio::main]
async fn main() {
    common::check_args(&["--machines", "--idle"], "bench_machines [--machines 200] [--idle 500]: machine start, lifecycle, agent loop and idle memory against runc and podman");
    let machines = arg("--machines", 200usize);
    let idle = arg("--idle", 500usize);
    let image = common::test_image();
    let memcgs_before = memory_cgroups();
    let d = start_daemon("machines").await;
    let c = &d.client;
    c.post("/v1/apps")
        .json(&json!({"name": "bench"}))
        .send_raw()
        .await
        .expect("app");
    // Warm the image cache: the benchmark is about starting, not pulling.
    let (warm, _) = common::create_sleeper(c, "bench", &image).await;
    let _ = c
        .delete(format!("/v1/apps/bench/machines/{warm}?force=true"))
        .send_raw()
        .await;

    println!("machine start ({machines} machines, cached image, 2 cores):");
    let mut create_lat = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..machines {
        let (id, lat) = common::create_sleeper(c, "bench", &image).await;
        create_lat.push(lat);
        ids.push(id);
        // One at a time, like a user's `run`: this measures latency, not throughput.
    }
    let hangar_p50 = report("hangar create -> started", create_lat);

    // The same, with and without machine networking, interleaved so both see the same host.
    // Nothing is destroyed until the end: a destroy's teardown would weigh on whichever create
    // comes next.
    {
        let off = start_daemon_with("machines-nonet", &["--network", "off"]).await;
        let [(with, made), (without, made_off)] =
            interleaved_creates([c, &off.client], machines.min(100), &image, Duration::ZERO).await;
        destroy_all(&off.client, made_off).await;
        let with = report("hangar create -> started, networking on", with);
        let without = report("hangar create -> started, networking off", without);
        println!(
            "  networking adds {:+.2} ms at p50",
            (with.as_secs_f64() - without.as_secs_f64()) * 1e3
        );
        ids.extend(made);
    }

    // Warm sandboxes (made ahead; the default) against none, interleaved; both without
    // networking, which one daemon per host owns. A pause after each create lets what a start
    // leaves running (the pool's refill, a helper's exit) finish before the other's create.
    {
        let warm_d = start_daemon_with("machines-warm", &["--network", "off"]).await;
        let cold_d = start_daemon_with(
            "machines-cold",
            &["--network", "off", "--warm-sandboxes", "0"],
        )
        .await;
        let [(warm_lat, warm_made), (cold_lat, cold_made)] = interleaved_creates(
            [&warm_d.client, &cold_d.client],
            machines.min(100),
            &image,
            Duration::from_millis(30),
        )
        .await;
        destroy_all(&warm_d.client, warm_made).await;
        destroy_all(&cold_d.client, cold_made).await;
        let warm_p50 = report(
            "hangar create -> started, warm sandbox (networking off)",
            warm_lat,
        );
        let cold_p50 = report(
            "hangar create -> started, sandbox built per start (networking off)",
            cold_lat,
        );
        println!(
            "  a warm sandbox saves {:.2} ms at p50",
            (cold_p50.as_secs_f64() - warm_p50.as_secs_f64()) * 1e3
        );
    }

    // DNS from inside a machine: queries sent from its network namespace to fdaa::3.
    if let Some(lat) = dns_latency(&d, &ids[0], 2000).await {
        report(
            "dns query (AAAA <id>.vm.<app>.internal) from a machine",
            lat,
        );
    }

    for id in &ids {
        let r = c
            .post(format!("/v1/apps/bench/machines/{id}/stop"))
            .json(&json!({"signal": "SIGKILL", "timeout": "1s"}))
            .send_raw()
            .await
            .expect("stop");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut start_lat = Vec::new();
    for id in ids.iter().take(100) {
        let t0 = Instant::now();
        let r = c
            .post(format!("/v1/apps/bench/machines/{id}/start"))
            .send_raw()
            .await
            .expect("start");
        assert_eq!(r.status, 200, "{}", r.text());
        start_lat.push(t0.elapsed());
    }
    report("hangar start of a stopped machine", start_lat);

    // Resume: `start` of a suspended machine thaws its cgroup.
    let mut suspend_lat = Vec::new();
    let mut resume_lat = Vec::new();
    for id in ids.iter().take(100) {
        let t0 = Instant::now();
        let r = c
            .post(format!("/v1/apps/bench/machines/{id}/suspend"))
            .send_raw()
            .await
            .expect("suspend");
        assert_eq!(r.status, 200, "{}", r.text());
        let r = c
            .get(format!(
                "/v1/apps/bench/machines/{id}/wait?state=suspended&timeout=30"
            ))
            .send_raw()
            .await
            .expect("wait suspended");
        assert_eq!(r.status, 200, "{}", r.text());
        suspend_lat.push(t0.elapsed());
        let t0 = Instant::now();
        let r = c
            .post(format!("/v1/apps/bench/machines/{id}/start"))
            .send_raw()
            .await
            .expect("resume");
        assert_eq!(r.status, 200, "{}", r.text());
        let r = c
            .get(format!(
                "/v1/apps/bench/machines/{id}/wait?state=started&timeout=30"
            ))
            .send_raw()
            .await
            .expect("wait started");
        assert_eq!(r.status, 200, "{}", r.text());
        resume_lat.push(t0.elapsed());
    }
    report("hangar suspend (until suspended)", suspend_lat);
    report("hangar resume of a suspended machine", resume_lat);
    // Destroy of a running machine (force), until the API answers.
    let mut destroy_lat = Vec::new();
    for id in &ids {
        let t0 = Instant::now();
        let r = c
            .delete(format!("/v1/apps/bench/machines/{id}?force=true"))
            .send_raw()
            .await
            .expect("destroy");
        assert_eq!(r.status, 200, "{}", r.text());
        destroy_lat.push(t0.elapsed());
    }
    report("hangar destroy (force) of a running machine", destroy_lat);

    // The per-user sandbox loop AI-agent platforms run: create, wait for started, exec a
    // command, destroy with force; with networking, then without (in its own daemon).
    let [total, started, exec, destroy] = agent_loop(c, &image, machines.min(100)).await;
    report("agent loop (create, started, exec, destroy)", total);
    report("  of which create -> started", started);
    report("  of which exec", exec);
    report("  of which destroy", destroy);
    {
        let off = start_daemon_with("machines-nonet", &["--network", "off"]).await;
        off.client
            .post("/v1/apps")
            .json(&json!({"name": "bench"}))
            .send_raw()
            .await
            .expect("app");
        let [total, ..] = agent_loop(&off.client, &image, machines.min(100)).await;
        report("agent loop, networking off", total);
    }

    // Peers, same rootfs, `true` to completion.
    let work = d.dir.join("peers");
    std::fs::create_dir_all(&work).expect("peers dir");
    let runs = 30;
    let mut runc_p50 = None;
    match runc_bundle(&work) {
        Some(bundle) => {
            let mut lat = Vec::new();
            for i in 0..runs {
                if let Some(t) = time_cmd(
                    Command::new("runc")
                        .args(["run", "--bundle"])
                        .arg(&bundle)
                        .arg(format!("hangar-bench-{i}")),
                ) {
                    lat.push(t);
                }
            }
            if lat.is_empty() {
                println!("  runc run: failed (is runc installed and working here?)");
            } else {
                runc_p50 = Some(report("runc run (true, to exit)", lat));
            }
        }
        None => println!("  runc: skipped (needs umoci and runc)"),
    }
    let mut podman_p50 = None;
    let loaded = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "oci:target/test-images:busybox",
            "containers-storage:localhost/hangar-bench-busybox:latest",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if loaded {
        let mut lat = Vec::new();
        for _ in 0..runs {
            if let Some(t) = time_cmd(Command::new("podman").args([
                "run",
                "--rm",
                "--runtime=runc",
                "--cgroup-manager=cgroupfs",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
                "--network=none",
                "localhost/hangar-bench-busybox:latest",
                "/bin/true",
            ])) {
                lat.push(t);
            }
        }
        if lat.is_empty() {
            println!("  podman run --rm: failed");
        } else {
            podman_p50 = Some(report("podman run --rm (true, to exit)", lat));
        }
    } else {
        println!("  podman: skipped (needs skopeo and podman)");
    }
    let ratio = |peer: Option<Duration>| {
        peer.map(|p| {
            format!(
                "{:.1}x",
                p.as_secs_f64() / hangar_p50.as_secs_f64().max(1e-9)
            )
        })
        .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "  hangar p50 vs runc: {} faster; vs podman: {} faster",
        ratio(runc_p50),
        ratio(podman_p50)
    );

    println!("\nidle machines ({idle} running `sleep inf`):");
    let daemon_before = rss_kib(d.child.id());
    let available_before = mem_available_kib();
    let mut ids = Vec::new();
    for _ in 0..idle {
        let (id, _) = common::create_sleeper(c, "bench", &image).await;
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pilot_pss = 0u64;
    let mut sleep_pss = 0u64;
    for id in &ids {
        let state: Value = std::fs::read(d.dir.join("data/machines").join(id).join("runtime.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let Some(pid) = state["pid"].as_i64() else {
            continue;
        };
        pilot_pss += pss_kib(pid as i32);
        for child in common::children(pid as u32) {
            sleep_pss += pss_kib(child as i32);
        }
    }
    let daemon_after = rss_kib(d.child.id());
    let available_after = mem_available_kib();
    let n = ids.len().max(1) as f64;
    println!(
        "  pilot PSS per machine:            {:>8.0} KiB",
        pilot_pss as f64 / n
    );
    println!(
        "  workload (sleep) PSS per machine: {:>8.0} KiB",
        sleep_pss as f64 / n
    );
    println!(
        "  daemon RSS growth per machine:    {:>8.1} KiB  ({daemon_before} -> {daemon_after} KiB)",
        daemon_after.saturating_sub(daemon_before) as f64 / n
    );
    println!(
        "  overhead per machine (pilot + daemon): {:.2} MiB",
        (pilot_pss as f64 + daemon_after.saturating_sub(daemon_before) as f64) / n / 1024.0
    );
    // Everything the host gave up, kernel objects included (namespaces, cgroups, mounts, page
    // tables); noisy on a busy host, so it is a bound rather than a precise figure.
    let host_total = available_before.saturating_sub(available_after) as f64 / n;
    println!(
        "  host memory per machine (MemAvailable drop): {:.2} MiB, of which workload {:.2} MiB",
        host_total / 1024.0,
        sleep_pss as f64 / n / 1024.0
    );
    for id in &ids {
        let _ = c
            .delete(format!("/v1/apps/bench/machines/{id}?force=true"))
            .send_raw()
            .await;
    }
    // Destroyed machines' memory cgroups that the kernel keeps as "dying" ones (their page
    // cache still charged) slow every later cgroup creation; a churned host must not pile
    // them up. Counted after the reapers had a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let (Some(before), Some(after)) = (memcgs_before, memory_cgroups()) {
        println!(
            "\nmemory cgroups in the kernel (dying ones included): {before} before this run, \
             {after} after"
        );
    }
}

/// The kernel's count of memory cgroups (`/proc/cgroups`), live and dying.
fn memory_cgroups() -> Option<u64> {
    std::fs::read_to_string("/proc/cgroups")
        .ok()?
        .lines()
        .find(|l| l.starts_with("memory\t"))?
        .split('\t')
        .nth(2)?
        .parse()
        .ok()
}

/// `n` rounds of create → started → exec `echo hi` → destroy (force): the total and each phase.
async fn agent_loop(c: &Client, image: &str, n: usize) -> [Vec<Duration>; 4] {
    let mut out: [Vec<Duration>; 4] = Default::default();
    for _ in 0..n {
        let t0 = Instant::now();
        let (id, started) = common::create_sleeper(c, "bench", image).await;
        let t1 = Instant::now();
        let r = c
            .post(format!("/v1/apps/bench/machines/{id}/exec"))
            .json(&json!({"command": ["echo", "hi"]}))
            .send_raw()
            .await
            .expect("exec");
        assert_eq!(r.status, 200, "{}", r.text());
        let t2 = Instant::now();
        let r = c
            .delete(format!("/v1/apps/bench/machines/{id}?force=true"))
            .send_raw()
            .await
            .expect("destroy");
        assert_eq!(r.status, 200, "{}", r.text());
        out[0].push(t0.elapsed());
        out[1].push(started);
        out[2].push(t2 - t1);
        out[3].push(t2.elapsed());
    }
    out
}

/// Times `n` AAAA queries for the machine's own name, sent from its network namespace (a thread
/// that joins it) to the resolver at fdaa::3, one at a time.
fn dns_latency_blocking(pid: i64, name: &str, n: usize) -> Option<Vec<Duration>> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
    // SAFETY: setns on this thread only, with a namespace fd we hold.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let sock = std::net::UdpSocket::bind("[::]:0").ok()?;
    sock.connect("[fdaa::3]:53").ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    // A standard query: id, RD, one question (name, AAAA, IN).
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 28, 0, 1]);
    let mut buf = [0u8; 512];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        sock.send(&query).ok()?;
        let got = sock.recv(&mut buf).ok()?;
        lat.push(t0.elapsed());
        // One answer expected (ANCOUNT = 1).
        if got < 12 || buf[7] != 1 {
            return None;
        }
    }
    Some(lat)
}

async fn dns_latency(d: &common::Daemon, id: &str, n: usize) -> Option<Vec<Duration>> {
    let state: Value = std::fs::read(d.dir.join("data/machines").join(id).join("runtime.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())?;
    let pid = state["pid"].as_i64()?;
    let name = format!("{id}.vm.bench.internal");
    let got = std::thread::spawn(move || dns_latency_blocking(pid, &name, n))
        .join()
        .ok()
        .flatten();
    if got.is_none() {
        println!("  dns query: failed (is machine networking on?)");
    }
    got
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
