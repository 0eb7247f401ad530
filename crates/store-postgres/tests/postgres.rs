//! The PostgreSQL store against a real PostgreSQL: a private server the test starts with
//! `initdb` and `postgres` in a temp dir, listening on a unix socket only (no TCP at all).
//! It must pass the same conformance checks as SQLite, migrate once however many daemons
//! race, let only one of two daemons win a guarded write, and fail fast, then recover, when the
//! database goes away and comes back.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hangar_store::conformance::{app, event, machine};
use hangar_store::{AppStore, ErrorClass, Expect, MachineStore, NetworkStore, Store, StoreError};
use hangar_store_postgres::PgStore;
use hangar_test_postgres::TestPostgres;

#[test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
fn postgres_store_passes_the_conformance_suite() {
    let pg = TestPostgres::start();
    hangar_store::conformance::run_all(&mut || {
        Box::new(PgStore::connect(&pg.database()).expect("connect")) as Box<dyn Store>
    });
    // The URL form the daemon's --store takes reaches the same server.
    let store = PgStore::connect(&pg.database_url()).expect("connect by URL");
    store.create_app(&app("by-url")).unwrap();
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
