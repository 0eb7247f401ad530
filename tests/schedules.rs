//! Schedules fire: a scheduled machine's next run is kept in the store, shown by `machine
//! status`, survives daemon restarts, and a run missed while the daemon was down happens once
//! when it is back, started by the scheduler.

mod common;

use common::*;
use hangar_store::ScheduleStore;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn scheduler_starts(d: &Daemon, id: &str) -> usize {
    let events: Vec<Value> = d
        .get(&format!("/v1/apps/cron/machines/{id}/events?limit=50"))
        .await
        .json()
        .unwrap();
    events
        .iter()
        .filter(|e| e["type"] == "start" && e["source"] == "scheduler")
        .count()
}

#[tokio::test]
async fn test_a_missed_scheduled_run_fires_once_after_a_restart() {
    let mut d = Daemon::start_with_runtime().await;
    d.create_app("cron").await;
    let id = d
        .launch(
            "cron",
            json!({"config": {"image": test_image(), "schedule": "hourly",
                "init": {"exec": ["/bin/sh", "-c", "echo ran"]}}}),
        )
        .await;
    // `run` starts it once; it exits and stays stopped until its schedule.
    d.wait_state("cron", &id, "stopped").await;
    let r = d
        .post(&format!("/v1/apps/cron/machines/{id}/start"), json!({}))
        .await;
    assert_eq!(r.status, 400, "manual starts are refused: {}", r.text());

    // The scheduler records the schedule within a pass.
    let db = d.data_dir.join("state.db");
    let deadline = Instant::now() + Duration::from_secs(20);
    let recorded = loop {
        let store = hangar_store::SqliteStore::open(&db).unwrap();
        if let Some(r) = store.get_schedule(&id).unwrap() {
            break r;
        }
        assert!(Instant::now() < deadline, "no schedule recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    assert!(
        recorded.next_fire_at > now_ms() + 3_000_000,
        "about an hour on: {recorded:?}"
    );
    let status = d.cli(&["machine", "status", "-a", "cron", &id]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("Next run") && text.contains("hourly"),
        "{text}"
    );

    // Restarted, the same next run.
    d.terminate();
    d.restart().await;
    let shown: Value = d
        .get(&format!("/hangar/v1/apps/cron/machines/{id}/schedule"))
        .await
        .json()
        .unwrap();
    let store = hangar_store::SqliteStore::open(&db).unwrap();
    assert_eq!(
        store.get_schedule(&id).unwrap().unwrap().next_fire_at,
        recorded.next_fire_at
    );
    assert!(
        shown["next_fire_at"].as_str().unwrap().ends_with('Z'),
        "{shown}"
    );

    // The run was due while the daemon was down (its next fire moved into the past): it runs
    // once when the daemon is back, then the next is on the grid again.
    d.terminate();
    let mut missed = recorded.clone();
    missed.next_fire_at = now_ms() - 5 * 3_600_000;
    store.put_schedule(&missed).unwrap();
    drop(store);
    d.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while scheduler_starts(&d, &id).await == 0 {
        assert!(Instant::now() < deadline, "the missed run never fired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    d.wait_state("cron", &id, "stopped").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        scheduler_starts(&d, &id).await,
        1,
        "once, not once per missed period"
    );
    let store = hangar_store::SqliteStore::open(&db).unwrap();
    let after = store.get_schedule(&id).unwrap().unwrap();
    assert_eq!(after.last_outcome.as_deref(), Some("started"), "{after:?}");
    assert!(after.next_fire_at > now_ms(), "{after:?}");
    // A machine id names its app: no -a needed.
    let logs = d.cli(&["logs", "-i", &id, "--no-tail"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.matches("ran").count() >= 2, "{logs}");
}
