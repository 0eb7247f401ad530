//! The PostgreSQL store against a real PostgreSQL: a private server the test starts with
//! `initdb` and `postgres` in a temp dir, listening on a unix socket only (no TCP at all).
//! It must pass the same conformance checks as SQLite, migrate once however many daemons
//! race, let only one of two daemons win a guarded write, and fail fast, then recover, when the
//! database goes away and comes back.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hangar_store::conformance::{app, event, machine};
use hangar_store::{AppStore, ErrorClass, Expect, MachineStore, NetworkStore, Store, StoreError};
use hangar_store_postgres::PgStore;

/// A PostgreSQL server of this test's own. It runs as the `postgres` user (it refuses root),
/// in a temp dir that user owns.
struct TestPostgres {
    dir: tempfile::TempDir,
    server: Option<Child>,
    bin: PathBuf,
    user: nix::unistd::User,
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
    fn start() -> TestPostgres {
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
        };
        pg.run_server();
        pg
    }

    fn run_server(&mut self) {
        let child = Command::new(self.bin.join("postgres"))
            .args(["-D", "data", "-k"])
            .arg(self.dir.path())
            // Unix socket only: nothing listens on any address.
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
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
            assert!(Instant::now() < deadline, "postgres did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = child.wait();
        }
    }

    fn url(&self, db: &str) -> String {
        format!(
            "host={} user=postgres dbname={db}",
            self.dir.path().display()
        )
    }

    /// A new, empty database; its URL.
    fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("hangar{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin =
            postgres::Client::connect(&self.url("postgres"), postgres::NoTls).expect("connect");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url(&name)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop_server();
    }
}

#[test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
fn postgres_store_passes_the_conformance_suite() {
    let pg = TestPostgres::start();
    hangar_store::conformance::run_all(&mut || {
        Box::new(PgStore::connect(&pg.database()).expect("connect")) as Box<dyn Store>
    });
}

#[test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
fn daemons_racing_to_migrate_and_to_write_take_turns() {
    let pg = TestPostgres::start();
    let url = pg.database();
    // Four daemons start at once on an empty database: one migrates, all work.
    let stores: Vec<Arc<PgStore>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PgStore::connect(&url).map(Arc::new)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("connect"))
            .collect()
    });
    let (a, b) = (stores[0].clone(), stores[1].clone());
    a.create_app(&app("race")).unwrap();
    let m = machine("race", "0123456789abcd", "m");
    a.insert_machine(&m, &event("e0", &m.id, 1), None).unwrap();

    // Round after round, both daemons read the machine and write from what they read: the
    // database lets exactly one of them win each time.
    for round in 0..20 {
        let read = a.get_machine("race", &m.id).unwrap().unwrap();
        let barrier = Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            [&a, &b]
                .map(|store| {
                    let (mut mine, barrier) = (read.clone(), &barrier);
                    s.spawn(move || {
                        mine.name = format!("r{round}");
                        barrier.wait();
                        store.update_machine(&mine, Expect::version(read.row_version), false, None)
                    })
                })
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(matches!(lost, StoreError::Conflict(_)), "{lost}");
    }
    assert_eq!(
        a.get_machine("race", &m.id).unwrap().unwrap().row_version,
        20
    );

    // Address blocks claimed by racing daemons are all different.
    let net = a.ensure_network("personal", "default", 1).unwrap();
    let claimed: Vec<u8> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .map(|st| s.spawn(move || st.claim_ipv4_block(net.id, 256).unwrap().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = claimed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), claimed.len(), "{claimed:?}");
}

#[test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
fn a_lost_database_fails_fast_and_comes_back() {
    let mut pg = TestPostgres::start();
    let store = PgStore::connect(&pg.database()).unwrap();
    store.create_app(&app("before")).unwrap();

    pg.stop_server();
    let t0 = Instant::now();
    let err = store.create_app(&app("during")).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "failed in {:?}",
        t0.elapsed()
    );

    pg.run_server();
    // The pool replaces its broken connections; within a few tries the store answers again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.create_app(&app("after")) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.class(), ErrorClass::Unavailable, "{e}");
                assert!(Instant::now() < deadline, "never came back: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let names: Vec<String> = store
        .list_apps(None)
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["after", "before"]);
}

#[test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
fn a_database_from_a_newer_hangar_is_refused() {
    let pg = TestPostgres::start();
    let url = pg.database();
    drop(PgStore::connect(&url).unwrap());
    // Connecting again migrates nothing and works.
    drop(PgStore::connect(&url).unwrap());
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.execute("UPDATE hangar_schema SET version = 999", &[])
        .unwrap();
    match PgStore::connect(&url) {
        Err(StoreError::SchemaTooNew { found: 999, .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}
