//! A real `hangar daemon` on a temp data dir, driven over its unix socket.

#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hangar_client::{Client, Endpoint, RawResponse};
use serde_json::{json, Value};

pub struct Daemon {
    pub child: Option<Child>,
    pub runtime: bool,
    /// Flags after `--socket` (kept for restarts).
    pub args: Vec<String>,
    /// The network namespace it runs in (a host of [`netns::Hosts`]); `None`: the test's.
    pub netns: Option<PathBuf>,
    /// Held while a networked daemon runs: machine networking is host-wide (one bridge per
    /// network id, the resolver on fdaa::3), so networked tests take turns across test
    /// binaries.
    _net_turn: Option<std::fs::File>,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub client: Client,
    pub token: String,
    // Kept so the directory outlives the daemon; dropped last.
    pub tmp: tempfile::TempDir,
}

/// The loopback test registry (`scripts/registry start && push`).
pub fn registry() -> String {
    std::env::var("HANGAR_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// The busybox fixture image, as machines pull it.
pub fn test_image() -> String {
    format!("{}/hangar/busybox:latest", registry())
}

pub fn hangar_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hangar")
}

/// Where a daemon started with [`Daemon::start_logging`] writes its debug log.
pub const DEBUG_LOG: &str = "daemon-debug.log";

fn spawn(
    data_dir: &Path,
    socket: &Path,
    runtime: bool,
    args: &[String],
    netns: Option<&Path>,
) -> Child {
    let mut cmd = Command::new(hangar_bin());
    if let Some(path) = netns {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let ns = std::fs::File::open(path).expect("open the network namespace");
        // SAFETY: only setns (async-signal-safe) between fork and exec; `ns` is moved into
        // the closure, so it stays open until then.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // A daemon logging at debug writes to a file beside its data dir (read by the test).
    let debug_log = data_dir.parent().map(|p| p.join(DEBUG_LOG));
    let debug = debug_log.as_ref().filter(|p| p.exists());
    if !runtime {
        // API tests run the control plane alone: machines are stored, never started.
        cmd.env("HANGAR_RUNTIME", "none");
    }
    cmd.args(["daemon", "--data-dir"])
        .arg(data_dir)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match debug {
        Some(log) => {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .expect("open the debug log");
            cmd.env("RUST_LOG", "debug").stderr(file);
        }
        None => {
            cmd.env("RUST_LOG", "warn").stderr(Stdio::piped());
        }
    }
    cmd.spawn().expect("spawn hangar daemon")
}

impl Daemon {
    /// A daemon without a machine runtime (API tests).
    pub async fn start() -> Daemon {
        Self::start_inner(false).await
    }

    /// A daemon that really runs machines (needs root and the test registry).
    pub async fn start_with_runtime() -> Daemon {
        Self::start_inner(true).await
    }

    /// A daemon with machine networking (bridges, veths, the resolver on fdaa::3), whose
    /// resolver forwards other names to `dns_upstream` (a loopback server of the test: tests
    /// never send traffic beyond the host). Waits its turn with other networked daemons.
    pub async fn start_networked(dns_upstream: std::net::SocketAddr) -> Daemon {
        Self::start_networked_with(dns_upstream, &[]).await
    }

    /// [`start_networked`](Self::start_networked) with more daemon flags.
    pub async fn start_networked_with(
        dns_upstream: std::net::SocketAddr,
        extra: &[&str],
    ) -> Daemon {
        let turn = tokio::task::spawn_blocking(|| {
            use std::os::fd::AsRawFd;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open("/tmp/hangar-tests-network.lock")
                .expect("open the network test lock");
            // SAFETY: flock on a file we hold open.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
            f
        })
        .await
        .expect("network turn");
        let args = vec![
            "--dns-upstream".to_string(),
            dns_upstream.to_string(),
            // Autostop tests wait for it; no other networked test uses autostop.
            "--autostop-after".into(),
            "2s".into(),
        ]
        .into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
        Self::start_with(true, args, Some(turn)).await
    }

    /// A daemon (networking off) with more flags.
    pub async fn start_with_flags(runtime: bool, flags: &[&str]) -> Daemon {
        let args = ["--network", "off"]
            .iter()
            .chain(flags)
            .map(|s| s.to_string())
            .collect();
        Self::start_with(runtime, args, None).await
    }

    /// [`start_with_flags`](Self::start_with_flags), logging at debug level to [`DEBUG_LOG`]
    /// beside the data dir (what [`debug_log`](Self::debug_log) reads).
    pub async fn start_logging(runtime: bool, flags: &[&str]) -> Daemon {
        let args = ["--network", "off"]
            .iter()
            .chain(flags)
            .map(|s| s.to_string())
            .collect();
        Self::start_with_log(runtime, args).await
    }

    async fn start_with_log(runtime: bool, args: Vec<String>) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join(DEBUG_LOG), b"").expect("create the debug log");
        Self::start_in(tmp, runtime, args, None).await
    }

    /// Everything the daemon logged so far (for a daemon from [`start_logging`](Self::start_logging)).
    pub fn debug_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join(DEBUG_LOG)).unwrap_or_default()
    }

    /// Starts the daemon again and expects it to refuse: returns what it printed.
    pub async fn restart_refused(&mut self) -> String {
        assert!(self.child.is_none(), "stop or kill the daemon first");
        let mut child = spawn(
            &self.data_dir,
            &self.socket,
            self.runtime,
            &self.args,
            self.netns.as_deref(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return err;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon started although it should have refused");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start_inner(runtime: bool) -> Daemon {
        // Networking is host-wide; tests that need it use start_networked.
        Self::start_with(runtime, vec!["--network".into(), "off".into()], None).await
    }

    async fn start_with(runtime: bool, args: Vec<String>, turn: Option<std::fs::File>) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        Self::start_in(tmp, runtime, args, turn).await
    }

    /// A daemon with a runtime and machine networking in network namespace `netns` (a host
    /// of [`netns::Hosts`]), with `flags`.
    pub async fn start_in_netns(netns: PathBuf, flags: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Logged at debug level (what `debug_log` reads): its stderr is otherwise unread.
        std::fs::write(tmp.path().join(DEBUG_LOG), b"").expect("create the debug log");
        let args = flags.iter().map(|s| s.to_string()).collect();
        Self::start_in_ns(tmp, true, args, None, Some(netns)).await
    }

    async fn start_in(
        tmp: tempfile::TempDir,
        runtime: bool,
        args: Vec<String>,
        turn: Option<std::fs::File>,
    ) -> Daemon {
        Self::start_in_ns(tmp, runtime, args, turn, None).await
    }

    async fn start_in_ns(
        tmp: tempfile::TempDir,
        runtime: bool,
        args: Vec<String>,
        turn: Option<std::fs::File>,
        netns: Option<PathBuf>,
    ) -> Daemon {
        let data_dir = tmp.path().join("data");
        let socket = tmp.path().join("api.sock");
        let child = spawn(&data_dir, &socket, runtime, &args, netns.as_deref());
        let mut d = Daemon {
            child: Some(child),
            runtime,
            args,
            netns,
            _net_turn: turn,
            client: Client::new(Endpoint::Unix(socket.clone()), None),
            data_dir,
            socket,
            token: String::new(),
            tmp,
        };
        d.wait_ready().await;
        d
    }

    /// Starts a daemon again on the same data dir and socket.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the daemon first");
        self.child = Some(spawn(
            &self.data_dir,
            &self.socket,
            self.runtime,
            &self.args,
            self.netns.as_deref(),
        ));
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("daemon exited early ({status}): {err}");
                }
            }
            if let Ok(token) = std::fs::read_to_string(self.data_dir.join("token")) {
                let token = token.trim().to_string();
                if !token.is_empty() && self.socket.exists() {
                    let client =
                        Client::new(Endpoint::Unix(self.socket.clone()), Some(token.clone()));
                    if client
                        .get("/v1/apps")
                        .query("org_slug", "personal")
                        .send_raw()
                        .await
                        .is_ok()
                    {
                        self.client = client;
                        self.token = token;
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "daemon did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        child.wait().expect("wait daemon")
    }

    pub async fn get(&self, path: &str) -> RawResponse {
        self.client.get(path).send_raw().await.expect("request")
    }

    pub async fn post(&self, path: &str, body: Value) -> RawResponse {
        self.client
            .post(path)
            .json(&body)
            .send_raw()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str) -> RawResponse {
        self.client.delete(path).send_raw().await.expect("request")
    }

    pub async fn create_app(&self, name: &str) {
        let r = self
            .post("/v1/apps", json!({"name": name, "org_slug": "personal"}))
            .await;
        assert_eq!(r.status, 201, "create app {name}: {}", r.text());
    }

    /// Creates a machine that is stored but not launched.
    pub async fn create_machine(&self, app: &str, extra: Value) -> Value {
        let mut body = json!({"skip_launch": true, "config": {"image": "busybox"}});
        merge(&mut body, extra);
        let r = self.post(&format!("/v1/apps/{app}/machines"), body).await;
        assert_eq!(r.status, 200, "create machine: {}", r.text());
        r.json().expect("machine json")
    }

    /// Creates (and launches) a machine from `body`; returns its id.
    #[allow(dead_code)] // not every test binary launches machines
    pub async fn launch(&self, app: &str, body: Value) -> String {
        let r = self.post(&format!("/v1/apps/{app}/machines"), body).await;
        assert_eq!(r.status, 200, "create: {}", r.text());
        let v: Value = r.json().expect("machine json");
        v["id"].as_str().expect("machine id").to_string()
    }

    /// Waits (up to 60 s) for machine `id` to reach `state`; returns the wait's answer.
    #[allow(dead_code)] // not every test binary waits on machines
    pub async fn wait_state(&self, app: &str, id: &str, state: &str) -> Value {
        let r = self
            .get(&format!(
                "/v1/apps/{app}/machines/{id}/wait?state={state}&timeout=60"
            ))
            .await;
        assert_eq!(
            r.status,
            200,
            "wait {state}: {} (machine: {})",
            r.text(),
            self.get(&format!("/v1/apps/{app}/machines/{id}"))
                .await
                .text()
        );
        r.json().expect("wait json")
    }

    /// The machine's `exit` events, newest first.
    #[allow(dead_code)] // not every test binary reads events
    pub async fn exit_events(&self, app: &str, id: &str) -> Vec<Value> {
        let events: Vec<Value> = self
            .get(&format!("/v1/apps/{app}/machines/{id}/events?limit=50"))
            .await
            .json()
            .expect("events json");
        events.into_iter().filter(|e| e["type"] == "exit").collect()
    }

    /// Runs `sh -c script` in machine `id` of `app` through the API: (exit code, stdout,
    /// stderr).
    pub async fn sh(&self, app: &str, id: &str, script: &str) -> (i64, String, String) {
        let r = self
            .post(
                &format!("/v1/apps/{app}/machines/{id}/exec"),
                json!({"command": ["/bin/sh", "-c", script], "timeout": 20}),
            )
            .await;
        assert_eq!(r.status, 200, "exec: {}", r.text());
        let v: Value = r.json().unwrap();
        (
            v["exit_code"].as_i64().unwrap_or(-1),
            v["stdout"].as_str().unwrap_or_default().to_string(),
            v["stderr"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Runs the `hangar` CLI against this daemon.
    #[allow(dead_code)] // not every test binary runs the CLI
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(hangar_bin())
            .args(args)
            .env(
                "HANGAR_API_URL",
                format!("unix://{}", self.socket.display()),
            )
            .env("HANGAR_API_TOKEN", &self.token)
            .output()
            .expect("run hangar")
    }

    /// Runs the `hangar` CLI against this daemon from `dir` (builds and deploys read files
    /// there).
    #[allow(dead_code)] // not every test binary runs the CLI
    pub fn cli_in(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new(hangar_bin())
            .args(args)
            .current_dir(dir)
            .env(
                "HANGAR_API_URL",
                format!("unix://{}", self.socket.display()),
            )
            .env("HANGAR_API_TOKEN", &self.token)
            .output()
            .expect("run hangar")
    }

    #[allow(dead_code)] // not every test binary destroys machines
    pub async fn destroy_machine(&self, app: &str, id: &str, force: bool) {
        let mut req = self.client.delete(format!("/v1/apps/{app}/machines/{id}"));
        if force {
            req = req.query("force", "true");
        }
        let r = req.send_raw().await.expect("destroy request");
        assert_eq!(r.status, 200, "destroy {id}: {}", r.text());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Machines outlive their daemon by design; a test must not leave any running on the
        // host, so destroy every machine (through this daemon: in a cluster, forwarded to the
        // host that runs it) and every app first.
        if self.runtime && self.child.is_some() && !self.token.is_empty() {
            let client = self.client.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let apps: Value = client.get("/v1/apps").send().await.ok()?;
                    for app in apps["apps"].as_array()? {
                        let Some(name) = app["name"].as_str() else {
                            continue;
                        };
                        let machines: Value = client
                            .get(format!("/v1/apps/{name}/machines"))
                            .send()
                            .await
                            .unwrap_or_default();
                        for m in machines.as_array().into_iter().flatten() {
                            let Some(id) = m["id"].as_str() else { continue };
                            let _ = client
                                .delete(format!("/v1/apps/{name}/machines/{id}"))
                                .query("force", "true")
                                .send_raw()
                                .await;
                        }
                        let _ = client
                            .delete(format!("/v1/apps/{name}"))
                            .query("force", "true")
                            .send_raw()
                            .await;
                    }
                    Some(())
                })
            })
            .join();
        }
        // SIGTERM first: a daemon that stops cleanly removes the network devices only it held
        // (a bridge lingering after its last machine).
        if let Some(child) = self.child.as_mut() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.kill9();
    }
}

/// Waits (up to 20 s) until `cond` holds. A destroy answers once the machine's processes are
/// killed; what it held on the host is released right after, which tests wait for with this.
pub async fn until(cond: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deep-merges `extra` into `base` (objects merge, everything else replaces).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

pub fn error_text(r: &RawResponse) -> String {
    let v: Value = r
        .json()
        .unwrap_or_else(|_| panic!("error body is not JSON: {}", r.text()));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {v}"))
        .to_string()
}

/// The stdout of a CLI run that must succeed (else the test fails showing both streams).
#[allow(dead_code)] // not every test binary runs the CLI
pub fn cli_ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "hangar failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The stderr of a CLI run that must fail.
#[allow(dead_code)] // not every test binary runs the CLI
pub fn cli_err(o: &std::process::Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A self-signed certificate and key for `host` (openssl), as PEM text.
pub fn certificate_for(dir: &std::path::Path, host: &str) -> (String, String) {
    let (cert, key) = (
        dir.join(format!("{host}.crt")),
        dir.join(format!("{host}.key")),
    );
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}
