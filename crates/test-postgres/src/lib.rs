//! A PostgreSQL server of a test's own: `initdb` in a temp dir owned by the `postgres` user
//! (PostgreSQL refuses to run as root), `postgres` listening on a unix socket in that dir only
//! (nothing on any network address), stopped and removed when dropped. Needs root and Debian's
//! postgresql package (or initdb on PATH).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A PostgreSQL server of this test's own. It runs as the `postgres` user (it refuses root),
/// in a temp dir that user owns.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    server: Option<Child>,
    bin: PathBuf,
    user: nix::unistd::User,
    durable: bool,
}

fn postgres_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").exists());
    if let Some(dir) = on_path {
        return std::fs::canonicalize(dir.join("initdb"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL's initdb (Debian: apt install postgresql)")
}

impl TestPostgres {
    /// A server that does not wait for the disk (tests: `fsync=off`).
    pub fn start() -> TestPostgres {
        Self::start_with(false)
    }

    /// A server that waits for the disk when `durable` (benchmarks compare it with SQLite,
    /// which does), else not.
    pub fn start_with(durable: bool) -> TestPostgres {
        let user = nix::unistd::User::from_name("postgres")
            .expect("user lookup")
            .expect("a postgres user (Debian's postgresql package makes it)");
        let dir = tempfile::tempdir().expect("temp dir");
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown");
        let bin = postgres_bin();
        let out = Command::new(bin.join("initdb"))
            .args(["-D", "data", "-U", "postgres", "-A", "trust", "--no-sync"])
            .current_dir(dir.path())
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = TestPostgres {
            dir,
            server: None,
            bin,
            user,
            durable,
        };
        pg.run_server();
        pg
    }

    pub fn run_server(&mut self) {
        let child = Command::new(self.bin.join("postgres"))
            .args(["-D", "data", "-k"])
            .arg(self.dir.path())
            // Unix socket only: nothing listens on any address.
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                if self.durable {
                    "fsync=on"
                } else {
                    "fsync=off"
                },
                "-c",
                "max_connections=200",
            ])
            .current_dir(self.dir.path())
            .uid(self.user.uid.as_raw())
            .gid(self.user.gid.as_raw())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_err() {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                panic!("postgres exited: {status}");
            }
            assert!(Instant::now() < deadline, "postgres did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = child.wait();
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} user=postgres dbname={db}",
            self.dir.path().display()
        )
    }

    /// A new, empty database, as a `postgresql://` URL (what `hangar daemon --store` takes).
    pub fn database_url(&self) -> String {
        format!(
            "postgresql://postgres@/{}?host={}",
            self.create_database(),
            self.dir.path().display()
        )
    }

    /// A new, empty database; its libpq connection string.
    pub fn database(&self) -> String {
        self.url(&self.create_database())
    }

    /// Makes a database of a name not used before; its name.
    fn create_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("hangar{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin =
            postgres::Client::connect(&self.url("postgres"), postgres::NoTls).expect("connect");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        name
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop_server();
    }
}
