//! Volume benchmark: volume create latency, what attaching a volume adds to create→started,
//! snapshot and fork time, and write throughput inside a machine on its volume against the same
//! writes by the same busybox on the host filesystem directly, in the same run. Prints figures;
//! it asserts nothing.
//!
//!     cargo run --release --example bench_volumes -- [--n 20] [--mb 256] [--random 200]
//!
//! Needs root and the loopback registry with the fixtures (`scripts/registry start && push`).

#[path = "common.rs"]
mod common;

use common::{arg, start_daemon_with};
use std::process::Command;
use std::time::{Duration, Instant};

use hangar_client::Client;
use serde_json::{json, Value};

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn create_volume(c: &Client, name: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let v: Value = c
        .post("/v1/apps/vb/volumes")
        .json(&json!({"name": name, "size_gb": 4}))
        .send()
        .await
        .expect("create volume");
    (v["id"].as_str().expect("id").to_string(), t0.elapsed())
}

async fn start_machine(c: &Client, image: &str, volume: Option<&str>) -> (String, Duration) {
    let mut config = json!({"image": image, "init": {"exec": ["/bin/sleep", "inf"]},
        "restart": {"policy": "no"}});
    if let Some(v) = volume {
        config["mounts"] = json!([{"volume": v, "path": "/data"}]);
    }
    common::create_started(c, "vb", config).await
}

async fn exec_timed(c: &Client, id: &str, script: &str) -> Duration {
    let t0 = Instant::now();
    let out: Value = c
        .post(format!("/v1/apps/vb/machines/{id}/exec"))
        .json(&json!({"command": ["/bin/sh", "-c", script], "timeout": 600}))
        .send()
        .await
        .expect("exec");
    assert_eq!(out["exit_code"], 0, "{script}: {out}");
    t0.elapsed()
}

fn host_timed(script: &str, dir: &std::path::Path) -> Duration {
    let t0 = Instant::now();
    let ok = Command::new("busybox")
        .args(["sh", "-c", script])
        .current_dir(dir)
        .status()
        .expect("busybox sh")
        .success();
    assert!(ok, "{script}");
    t0.elapsed()
}

#[tokio::main]
async fn main() {
    common::check_args(&["--n", "--mb", "--random"], "bench_volumes [--n 20] [--mb 256] [--random 200]: volume create, attach, snapshot and fork, and write throughput against the host filesystem");
    let n = arg("--n", 20usize);
    let mb = arg("--mb", 256usize);
    let random = arg("--random", 200usize);
    let image = common::test_image();
    let d = start_daemon_with("volumes", &["--network", "off"]).await;
    let c = &d.client;
    c.post("/v1/apps")
        .json(&json!({"name": "vb"}))
        .send_raw()
        .await
        .expect("app");
    let (warm, _) = start_machine(c, &image, None).await;
    let _ = c
        .delete(format!("/v1/apps/vb/machines/{warm}?force=true"))
        .send_raw()
        .await;

    println!("volumes ({n} of each, 4 GB volumes, 2 cores):");
    let mut creates = Vec::new();
    let mut volumes = Vec::new();
    for i in 0..n {
        let (id, t) = create_volume(c, &format!("v{i}")).await;
        creates.push(t);
        volumes.push(id);
    }
    println!(
        "  volume create (sparse ext4, mkfs)          p50 {:>8.2} ms",
        ms(p50(creates))
    );

    // Attach: create→started with and without a volume, interleaved.
    let (mut with, mut without, mut machines) = (Vec::new(), Vec::new(), Vec::new());
    for v in &volumes {
        let (id, t) = start_machine(c, &image, Some(v)).await;
        with.push(t);
        machines.push(id);
        let (id, t) = start_machine(c, &image, None).await;
        without.push(t);
        machines.push(id);
    }
    let (with, without) = (p50(with), p50(without));
    println!(
        "  create -> started with a volume            p50 {:>8.2} ms",
        ms(with)
    );
    println!(
        "  create -> started without                  p50 {:>8.2} ms",
        ms(without)
    );
    println!(
        "  attaching a volume adds                        {:>+8.2} ms",
        ms(with) - ms(without)
    );

    // Throughput: the first machine (with volumes[0] at /data) against the host's disk.
    let m = &machines[0];
    let host_dir = d.dir.join("host-writes");
    std::fs::create_dir_all(&host_dir).expect("host dir");
    let baseline = exec_timed(c, m, "true").await;
    let seq = format!("dd if=/dev/zero of=seq bs=1M count={mb} conv=fsync 2>/dev/null; rm seq");
    let inside = exec_timed(c, m, &format!("cd /data && {seq}"))
        .await
        .saturating_sub(baseline);
    let host = host_timed(&seq, &host_dir);
    let rate = |d: Duration| mb as f64 / d.as_secs_f64();
    println!(
        "  sequential write {mb} MB + fsync: volume {:>7.1} MB/s, host fs {:>7.1} MB/s, ratio {:.2}",
        rate(inside),
        rate(host),
        rate(inside) / rate(host)
    );
    let rnd = format!(
        "dd if=/dev/zero of=rnd bs=1M count=64 2>/dev/null; i=0; while [ $i -lt {random} ]; do \
         dd if=/dev/urandom of=rnd bs=4k count=1 seek=$((RANDOM % 16384)) conv=notrunc,fsync 2>/dev/null; \
         i=$((i+1)); done; rm rnd"
    );
    let inside = exec_timed(c, m, &format!("cd /data && {rnd}"))
        .await
        .saturating_sub(baseline);
    let host = host_timed(&rnd, &host_dir);
    let iops = |d: Duration| random as f64 / d.as_secs_f64();
    println!(
        "  random 4k write + fsync ({random}):  volume {:>7.0} /s,   host fs {:>7.0} /s,   ratio {:.2}",
        iops(inside),
        iops(host),
        iops(inside) / iops(host)
    );

    // Snapshot and fork of a mounted volume with data on it.
    exec_timed(
        c,
        m,
        "dd if=/dev/zero of=/data/blob bs=1M count=128 2>/dev/null; sync",
    )
    .await;
    let t0 = Instant::now();
    let _: Value = c
        .post(format!("/v1/apps/vb/volumes/{}/snapshots", volumes[0]))
        .send()
        .await
        .expect("snapshot");
    println!(
        "  snapshot of a mounted volume (128 MB used) {:>8.2} ms",
        ms(t0.elapsed())
    );
    let t0 = Instant::now();
    let _: Value = c
        .post("/v1/apps/vb/volumes")
        .json(&json!({"name": "fork", "source_volume_id": volumes[0]}))
        .send()
        .await
        .expect("fork");
    println!(
        "  fork of a mounted volume (128 MB used)     {:>8.2} ms",
        ms(t0.elapsed())
    );

    for id in machines {
        let _ = c
            .delete(format!("/v1/apps/vb/machines/{id}?force=true"))
            .send_raw()
            .await;
    }
}
