//! Shared by the benchmark runners: a release `hangar daemon` on a throw-away data dir, and a
//! timed create of a machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangar_client::{Client, Endpoint};
use serde_json::{json, Value};

pub struct Daemon {
    pub child: std::process::Child,
    pub client: Client,
    pub dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// The child is handed to `Daemon`, whose Drop kills and waits for it.
#[allow(clippy::zombie_processes)]
#[allow(dead_code)] // not every runner uses the default flags
pub async fn start_daemon(name: &str) -> Daemon {
    start_daemon_with(name, &[]).await
}

/// A daemon with extra flags (e.g. `--network off`).
#[allow(clippy::zombie_processes)]
pub async fn start_daemon_with(name: &str, flags: &[&str]) -> Daemon {
    let dir = PathBuf::from(format!("/tmp/hangar-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let hangar = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(|d| d.join("hangar")))
        .expect("target dir");
    let child = Command::new(&hangar)
        .args(["daemon", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(dir.join("api.sock"))
        // Hundreds of idle machines are the point of the idle-memory figure; admission at the
        // default ratios (crates/daemon/src/capacity.rs) would refuse them on a small host.
        .args(["--memory-overcommit", "64", "--cpu-overcommit", "64"])
        // The resolver never forwards in benchmarks: nothing leaves the host.
        .args(["--dns-upstream", "127.0.0.1:9"])
        .args(flags)
        .env(
            "RUST_LOG",
            std::env::var("HANGAR_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        // `HANGAR_BENCH_LOG=FILE` keeps the daemon's log (to see why a figure is odd).
        .stderr(
            std::env::var_os("HANGAR_BENCH_LOG")
                .and_then(|f| std::fs::File::create(f).ok())
                .map_or_else(Stdio::null, Stdio::from),
        )
        .spawn()
        .expect("start the daemon (cargo build --release first)");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("data/token")) {
            let client = Client::new(
                Endpoint::Unix(dir.join("api.sock")),
                Some(t.trim().to_string()),
            );
            if client.get("/v1/apps").send_raw().await.is_ok() {
                return Daemon { child, client, dir };
            }
        }
        assert!(Instant::now() < deadline, "daemon did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The busybox fixture image in the loopback registry (`scripts/registry start && push`).
pub fn test_image() -> String {
    let registry =
        std::env::var("HANGAR_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    format!("{registry}/hangar/busybox:latest")
}

/// Checks the command line: `--name value` pairs with names among `known`. `--help` prints
/// `usage` and exits; anything else is refused (a runner that ignored a typo or `--help` ran for
/// minutes with its defaults, and left its machines behind when its output was cut short).
#[allow(dead_code)] // not every runner takes options
pub fn check_args(known: &[&str], usage: &str) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        if a == "--help" || a == "-h" {
            println!("{usage}");
            std::process::exit(0);
        }
        if !known.contains(&a.as_str()) {
            eprintln!("unknown option {a:?}\n{usage}");
            std::process::exit(2);
        }
        if rest.next().is_none() {
            eprintln!("{a} needs a value\n{usage}");
            std::process::exit(2);
        }
    }
}

/// The value after `--name` on the command line, else `default`; a value that does not parse
/// is refused.
#[allow(dead_code)] // not every runner takes options
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}: {v:?} is not a valid value");
            std::process::exit(2)
        }),
    }
}

/// Creates a machine of `app` with `config` and waits until it is `started`: its id and the
/// time that took.
#[allow(dead_code)] // not every runner creates machines
pub async fn create_started(c: &Client, app: &str, config: Value) -> (String, Duration) {
    let t0 = Instant::now();
    let m: Value = c
        .post(format!("/v1/apps/{app}/machines"))
        .json(&json!({ "config": config }))
        .send()
        .await
        .expect("create");
    let id = m["id"].as_str().expect("id").to_string();
    let r = c
        .get(format!(
            "/v1/apps/{app}/machines/{id}/wait?state=started&timeout=60"
        ))
        .send_raw()
        .await
        .expect("wait");
    assert_eq!(r.status, 200, "{}", r.text());
    (id, t0.elapsed())
}

/// [`create_started`] of a machine of `image` that sleeps (not restarted).
#[allow(dead_code)] // not every runner creates machines
pub async fn create_sleeper(c: &Client, app: &str, image: &str) -> (String, Duration) {
    let config = json!({
        "image": image, "init": {"exec": ["/bin/sleep", "inf"]}, "restart": {"policy": "no"}
    });
    create_started(c, app, config).await
}

/// CPU time (user + system, seconds) the processes `pids` have used so far, from
/// `/proc/PID/stat` (every thread of each). CPU per request is the steadier figure when the host
/// is noisy: requests/s moves with whatever else runs, the work a request costs does not.
#[allow(dead_code)] // not every runner measures CPU
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces), from the state on:
            // utime and stime are the 12th and 13th.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / ticks
}

/// The child processes of `pid` (its main thread's).
#[allow(dead_code)] // not every runner looks at processes
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
