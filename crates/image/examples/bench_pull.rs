//! Benchmark: pull + unpack of the ~50 MB 3-layer `hangar/bench` image from the local registry
//! (scripts/registry start && scripts/registry push), next to `skopeo copy` + `umoci unpack`
//! of the same image, then rootfs preparation and overlay mount for a cached image.
//! Run as root: `cargo run --release -p hangar-image --example bench_pull`.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_image::{pull, ImageStore, PullOptions, Reference};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn run(cmd: &mut Command) -> bool {
    match cmd.output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
            false
        }
        Err(e) => {
            eprintln!("{cmd:?}: {e}");
            false
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reg = std::env::var("HANGAR_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bench = Reference::parse(&format!("{reg}/hangar/bench:latest"))?;
    let opts = PullOptions::default();

    println!("pull + unpack {bench} ({rounds} rounds, fresh store each)");
    for i in 0..rounds {
        let t = tempfile::tempdir()?;
        let store = Arc::new(ImageStore::open(t.path().join("images"))?);
        let start = Instant::now();
        let rec = pull(&store, &bench, &opts).await?;
        let hangar = start.elapsed();
        let mb = rec.size as f64 / 1e6;

        let oci = t.path().join("oci");
        let start = Instant::now();
        let ok = run(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{bench}"))
            .arg(format!("oci:{}:bench", oci.display())))
            && run(Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:bench", oci.display()))
                .arg(t.path().join("bundle")));
        let other = start.elapsed();
        println!(
            "  round {i}: hangar {:>7.1} ms ({:.0} MB/s, {mb:.1} MB)   skopeo+umoci {}",
            hangar.as_secs_f64() * 1e3,
            mb / hangar.as_secs_f64(),
            if ok {
                format!("{:>7.1} ms", other.as_secs_f64() * 1e3)
            } else {
                "n/a".into()
            }
        );
    }

    // Cached image: rootfs preparation and overlay mount.
    let t = tempfile::tempdir()?;
    let store = Arc::new(ImageStore::open(t.path().join("images"))?);
    let img = Reference::parse(&format!("{reg}/hangar/layers:latest"))?;
    let rec = pull(&store, &img, &opts).await?;
    let n = 2000;
    let mut prep = Vec::with_capacity(n);
    for i in 0..n {
        let c = t.path().join(format!("c/{i}"));
        let s = Instant::now();
        store.prepare_rootfs(&rec.manifest_digest, &c, Some((100_000, 100_000)))?;
        prep.push(s.elapsed());
    }
    println!(
        "prepare_rootfs ({} layers, {n} iterations): p50 {:?}  p99 {:?}",
        rec.layers.len(),
        pct(&mut prep, 0.5),
        pct(&mut prep, 0.99)
    );
    let target = t.path().join("mnt");
    std::fs::create_dir(&target)?;
    let map = [hangar_image::IdRange {
        inside: 0,
        outside: 100_000,
        count: 65_536,
    }];
    let ns = hangar_image::Userns::create(&map, &map)?;
    for (label, userns) in [("plain", None), ("idmapped", Some(&ns))] {
        let mut mount = Vec::new();
        for i in 0..200 {
            let c = t.path().join(format!("m/{label}{i}"));
            let s = Instant::now();
            let spec = store.prepare_rootfs(&rec.manifest_digest, &c, Some((100_000, 100_000)))?;
            hangar_image::mount_rootfs(&spec, &target, userns)?;
            mount.push(s.elapsed());
            hangar_image::unmount_rootfs(&target)?;
        }
        println!(
            "prepare + overlay mount, {label} layers (200 iterations): p50 {:?}  p99 {:?}",
            pct(&mut mount, 0.5),
            pct(&mut mount, 0.99)
        );
    }
    Ok(())
}
