//! Cluster mode: daemons on one PostgreSQL store (a private server the test starts) are one
//! Machines API: each registers its host (region, capacity) and heartbeats, every host's API
//! serves every app, and each host stays the authority for the machines it runs.

mod common;

use common::{cli_ok, Daemon};
use hangar_test_postgres::TestPostgres;
use serde_json::{json, Value};

/// A private PostgreSQL with an empty database, and its URL (the client blocks: not on the
/// test's async thread).
async fn postgres_with_a_database() -> (TestPostgres, String) {
    tokio::task::spawn_blocking(|| {
        let pg = TestPostgres::start();
        let url = pg.database_url();
        (pg, url)
    })
    .await
    .unwrap()
}

/// Two hosts' daemons on one store. The second gets the first's secrets key: the store records
/// which key sealed the secrets, and a host with another key is refused.
async fn two_hosts(url: &str) -> (Daemon, Daemon) {
    let url = url.to_string();
    let a = Daemon::start_with_flags(
        false,
        &["--store", &url, "--host-id", "host-a", "--region", "ams"],
    )
    .await;
    let key = a.data_dir.join("secrets.key");
    let key = key.to_str().unwrap();
    let b = Daemon::start_with_flags(
        false,
        &[
            "--store",
            &url,
            "--host-id",
            "host-b",
            "--region",
            "iad",
            "--secrets-key-file",
            key,
        ],
    )
    .await;
    (a, b)
}

#[tokio::test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
async fn hosts_on_one_store_are_one_api() {
    let (_pg, url) = postgres_with_a_database().await;
    let (a, b) = two_hosts(&url).await;

    // Both hosts are registered, with their regions, capacity and a fresh heartbeat.
    let hosts: Value = serde_json::from_str(&cli_ok(&a.cli(&["hosts", "list", "--json"]))).unwrap();
    let summary: Vec<(String, String, bool, String)> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["region"].as_str().unwrap().to_string(),
                h["this_host"].as_bool().unwrap(),
                h["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("host-a".into(), "ams".into(), true, "ok".into()),
            ("host-b".into(), "iad".into(), false, "ok".into())
        ],
        "{hosts}"
    );
    assert!(hosts[0]["cpus"].as_i64().unwrap() >= 1, "{hosts}");
    let table = cli_ok(&b.cli(&["hosts", "list"]));
    assert!(
        table.contains("host-b *") && table.contains("host-a"),
        "{table}"
    );

    // An app made through one host's API is every host's; so is a machine, which records the
    // host it was made on and its region.
    a.create_app("shared").await;
    let r = b.get("/v1/apps/shared").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = b
        .create_machine("shared", json!({"skip_launch": true}))
        .await;
    assert_eq!(m["region"], "iad", "{m}");
    let id = m["id"].as_str().unwrap();
    let seen: Value = a
        .get(&format!("/v1/apps/shared/machines/{id}"))
        .await
        .json()
        .unwrap();
    assert_eq!(seen["id"], id, "{seen}");
    let hosts: Value = a.get("/hangar/v1/hosts").await.json().unwrap();
    let machines: Vec<i64> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["machines"].as_i64().unwrap())
        .collect();
    assert_eq!(machines, [0, 1], "host-b has the machine: {hosts}");

    // A secret set through one host is sealed with the shared key and listed by the other.
    let r = a
        .post(
            "/v1/apps/shared/secrets",
            json!({"values": {"TOKEN": "s3cr3t"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let list: Value = b.get("/v1/apps/shared/secrets").await.json().unwrap();
    assert_eq!(list["secrets"][0]["name"], "TOKEN", "{list}");
}

#[tokio::test]
#[ignore = "needs root (PostgreSQL runs as the postgres user) and PostgreSQL's initdb; scripts/test runs it"]
async fn a_host_with_another_secrets_key_is_refused() {
    let (_pg, url) = postgres_with_a_database().await;
    let _a = Daemon::start_with_flags(false, &["--store", &url, "--host-id", "host-a"]).await;
    // A host that made its own key (on its own store), then pointed at the cluster's.
    let mut b = Daemon::start_with_flags(false, &["--host-id", "host-b"]).await;
    b.terminate();
    b.args.extend(["--store".to_string(), url]);
    let err = b.restart_refused().await;
    assert!(err.contains("secrets key"), "{err}");
}
