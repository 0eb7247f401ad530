//! Schedules (`schedule: hourly|daily|weekly|monthly`, milestone 2 §7): the scheduler starts
//! each scheduled machine once per period. Fires fall at `anchor + k·period + jitter` (k ≥ 1),
//! the anchor being when the machine was created and the jitter a stable fraction (under a
//! tenth) of the period derived from the machine id, so a fleet created together does not
//! start together. A fire that finds the machine running is skipped (and recorded); fires
//! missed while the daemon was down run once, at its next pass, not once per missed period.
//! Every pass takes `now` as an argument: tests drive it with their own clock.

use hangar_api::spec::Schedule;
use hangar_store::ScheduleRecord;

use super::*;

/// How often the scheduler looks for due fires.
pub const SCHEDULER_TICK: Duration = Duration::from_secs(5);

const HOUR_MS: i64 = 3600 * 1000;

pub fn period_ms(s: Schedule) -> i64 {
    match s {
        Schedule::Hourly => HOUR_MS,
        Schedule::Daily => 24 * HOUR_MS,
        Schedule::Weekly => 7 * 24 * HOUR_MS,
        // Months differ; a schedule does not need to know which: 30 days.
        Schedule::Monthly => 30 * 24 * HOUR_MS,
    }
}

/// The machine's offset within each period: FNV-1a of its id, modulo a tenth of the period.
pub fn jitter_ms(machine_id: &str, period: i64) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in machine_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % (period / 10).max(1) as u64) as i64
}

/// A machine's grid: its schedule's period and its own jitter.
fn grid(machine_id: &str, schedule: Schedule) -> (i64, i64) {
    let period = period_ms(schedule);
    (period, jitter_ms(machine_id, period))
}

/// The first fire after `t`: the smallest `anchor + k·period + jitter` (k ≥ 1) above `t`.
pub fn next_fire_after(anchor: i64, period: i64, jitter: i64, t: i64) -> i64 {
    let first = anchor + period + jitter;
    if t < first {
        return first;
    }
    let k = (t - first) / period + 1;
    first + k * period
}

/// What a due fire does with a machine in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireAction {
    Start,
    /// Still running (or on its way): this period's run is skipped.
    Skip,
    /// Being destroyed or replaced: nothing to do.
    Ignore,
}

pub fn fire_action(state: MachineState) -> FireAction {
    match state {
        MachineState::Stopped | MachineState::Created | MachineState::Failed => FireAction::Start,
        MachineState::Started
        | MachineState::Starting
        | MachineState::Restarting
        | MachineState::Stopping
        | MachineState::Suspending
        | MachineState::Suspended => FireAction::Skip,
        _ => FireAction::Ignore,
    }
}

/// The schedule of a machine as users see it (`machine status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScheduleView {
    pub schedule: String,
    /// RFC 3339.
    pub next_fire_at: String,
    pub last_fire_at: Option<String>,
    pub last_outcome: Option<String>,
}

impl Hangar {
    /// One scheduler pass at `now` (unix ms): schedules are made for new scheduled machines
    /// and dropped for machines no longer scheduled; due ones fire.
    pub async fn run_schedules(&self, now: i64) -> ServiceResult<()> {
        let machines = self.live_machines().await?;
        let mut records: HashMap<String, ScheduleRecord> = db(&self.store, |s| s.list_schedules())
            .await?
            .into_iter()
            .map(|r| (r.machine_id.clone(), r))
            .collect();
        for m in machines {
            let Some(schedule) = m.spec().schedule else {
                if records.remove(&m.id).is_some() {
                    let id = m.id.clone();
                    db(&self.store, move |s| s.delete_schedule(&id)).await?;
                }
                continue;
            };
            let (period, jitter) = grid(&m.id, schedule);
            let mut rec = match records.remove(&m.id) {
                Some(r) => r,
                None => {
                    // Anchored at creation: `run` started it then; the first fire is a period on.
                    let anchor = m.created_at;
                    let rec = ScheduleRecord {
                        machine_id: m.id.clone(),
                        anchor_at: anchor,
                        next_fire_at: next_fire_after(anchor, period, jitter, now.max(anchor)),
                        last_fire_at: None,
                        last_outcome: None,
                    };
                    let r = rec.clone();
                    db(&self.store, move |s| s.put_schedule(&r)).await?;
                    rec
                }
            };
            if now < rec.next_fire_at {
                continue;
            }
            let outcome = match fire_action(m.state) {
                FireAction::Ignore => continue,
                FireAction::Skip => {
                    let event = Self::event(
                        &m,
                        "schedule",
                        m.state,
                        Source::Scheduler,
                        Some(json!({"skipped": "the machine is still running"})),
                    );
                    db(&self.store, move |s| s.append_event(&event)).await?;
                    "skipped: the machine was still running".to_string()
                }
                FireAction::Start => {
                    match self
                        .start_internal(&m.app, &m.id, Source::Scheduler, None)
                        .await
                    {
                        Ok(_) => "started".to_string(),
                        Err(e) => format!("failed: {e}"),
                    }
                }
            };
            tracing::info!(machine = %m.id, schedule = ?schedule, outcome, "scheduled fire");
            rec.last_fire_at = Some(now);
            rec.last_outcome = Some(outcome);
            rec.next_fire_at = next_fire_after(rec.anchor_at, period, jitter, now);
            let r = rec.clone();
            db(&self.store, move |s| s.put_schedule(&r)).await?;
        }
        // Schedules of machines that are gone (destroyed) go with them.
        for id in records.into_keys() {
            db(&self.store, move |s| s.delete_schedule(&id)).await?;
        }
        Ok(())
    }

    /// The machine's schedule: its next fire and its last outcome (`None` if unscheduled).
    pub async fn schedule_of(&self, app: &str, id: &str) -> ServiceResult<Option<ScheduleView>> {
        let m = self.get_machine(app, id, false).await?;
        let Some(schedule) = m.spec().schedule else {
            return Ok(None);
        };
        let mid = m.id.clone();
        let rec = db(&self.store, move |s| s.get_schedule(&mid)).await?;
        let (period, jitter) = grid(&m.id, schedule);
        let next = match &rec {
            Some(r) => r.next_fire_at,
            // Not yet seen by the scheduler (it will be within a tick): the same formula.
            None => next_fire_after(m.created_at, period, jitter, crate::clock::now_ms()),
        };
        Ok(Some(ScheduleView {
            schedule: m.config.schedule.clone().unwrap_or_default(),
            next_fire_at: crate::clock::rfc3339_ms(next),
            last_fire_at: rec
                .as_ref()
                .and_then(|r| r.last_fire_at)
                .map(crate::clock::rfc3339_ms),
            last_outcome: rec.and_then(|r| r.last_outcome),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_fall_on_the_anchor_grid_with_a_stable_jitter() {
        let p = HOUR_MS;
        let j = jitter_ms("3d8d9e1f2a3b4c", p);
        assert_eq!(j, jitter_ms("3d8d9e1f2a3b4c", p), "stable");
        assert!((0..p / 10).contains(&j));
        assert_ne!(j, jitter_ms("0000000000000a", p), "machines differ");
        // Before the first fire: the first fire.
        assert_eq!(next_fire_after(0, p, j, 0), p + j);
        assert_eq!(next_fire_after(0, p, j, p + j - 1), p + j);
        // At or after a fire: the one after it.
        assert_eq!(next_fire_after(0, p, j, p + j), 2 * p + j);
        // Down for ten periods: one fire now, then back on the grid.
        assert_eq!(next_fire_after(0, p, j, 11 * p + j + 5), 12 * p + j);
    }

    /// A real service (SQLite store, no machine runtime, so starts fail) driven by a test
    /// clock: fires land on the grid, a running machine is skipped, downtime fires once.
    #[tokio::test]
    async fn the_scheduler_fires_on_its_grid_with_a_test_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let store = hangar_store::SqliteStore::open(&tmp.path().join("state.db")).unwrap();
        let key = hangar_secrets::SecretsKey::create(&tmp.path().join("key")).unwrap();
        let h = Hangar::new(
            Arc::new(store),
            Arc::new(crate::runtime::NoRuntime),
            "local".into(),
            None,
            crate::capacity::Ledger::new(crate::capacity::HostCapacity::detect(4.0, 1.5)),
            "host".into(),
            SecretsConfig {
                key: Arc::new(key),
                readable: false,
            },
            None,
            Arc::default(),
            false,
        )
        .unwrap();
        h.create_app(
            "cron".into(),
            "personal".into(),
            String::new(),
            None,
            String::new(),
        )
        .await
        .unwrap();
        let req: CreateMachineRequest = serde_json::from_value(json!({
            "skip_launch": true,
            "config": {"image": "busybox", "schedule": "hourly"}
        }))
        .unwrap();
        let (m, _) = h.create_machine("cron", req).await.unwrap();
        let (anchor, p) = (m.created_at, HOUR_MS);
        let first = anchor + p + jitter_ms(&m.id, p);
        let rec = |h: &Hangar| {
            let id = m.id.clone();
            let store = h.store.clone();
            async move { store.get_schedule(&id).unwrap().unwrap() }
        };

        // Not due: the schedule is recorded with its first fire, nothing happens.
        h.run_schedules(anchor + 1000).await.unwrap();
        let r = rec(&h).await;
        assert_eq!((r.next_fire_at, r.last_fire_at), (first, None));
        assert_eq!(
            h.schedule_of("cron", &m.id)
                .await
                .unwrap()
                .unwrap()
                .next_fire_at,
            crate::clock::rfc3339_ms(first)
        );

        // Due: it fires (and fails here, with no runtime: recorded), next one a period on.
        h.run_schedules(first).await.unwrap();
        let r = rec(&h).await;
        assert_eq!(r.last_fire_at, Some(first));
        assert!(
            r.last_outcome.as_deref().unwrap().starts_with("failed:"),
            "{r:?}"
        );
        assert_eq!(r.next_fire_at, first + p);

        // Still running at the next fire: skipped, with an event from the scheduler.
        let mut running = h.get_machine("cron", &m.id, false).await.unwrap();
        running.state = MachineState::Started;
        let v = running.row_version;
        h.store
            .update_machine(&running, hangar_store::Expect::version(v), false, None)
            .unwrap();
        h.run_schedules(first + p + 10).await.unwrap();
        let r = rec(&h).await;
        assert_eq!(
            r.last_outcome.as_deref(),
            Some("skipped: the machine was still running")
        );
        assert_eq!(r.next_fire_at, first + 2 * p);
        let events = h.events(&m.id, 5).await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.kind == "schedule" && e.source == "scheduler"),
            "{events:?}"
        );

        // Down for ten periods: one fire at the next pass, then back on the grid.
        let mut stopped = h.get_machine("cron", &m.id, false).await.unwrap();
        stopped.state = MachineState::Stopped;
        let v = stopped.row_version;
        h.store
            .update_machine(&stopped, hangar_store::Expect::version(v), false, None)
            .unwrap();
        let late = first + 12 * p + 7;
        h.run_schedules(late).await.unwrap();
        let r = rec(&h).await;
        assert_eq!(r.last_fire_at, Some(late));
        assert_eq!(r.next_fire_at, first + 13 * p);
        h.run_schedules(late + 1).await.unwrap();
        assert_eq!(
            rec(&h).await.last_fire_at,
            Some(late),
            "once, not once per missed period"
        );

        // Unscheduled by an update: the schedule goes.
        let mut plain = h.get_machine("cron", &m.id, false).await.unwrap();
        plain.config.schedule = None;
        plain.instance_id = ids::new_ulid();
        let v = plain.row_version;
        h.store
            .update_machine(&plain, hangar_store::Expect::version(v), true, None)
            .unwrap();
        h.run_schedules(late + 2).await.unwrap();
        assert!(h.store.get_schedule(&m.id).unwrap().is_none());
    }

    #[test]
    fn running_machines_are_skipped() {
        assert_eq!(fire_action(MachineState::Stopped), FireAction::Start);
        assert_eq!(fire_action(MachineState::Failed), FireAction::Start);
        assert_eq!(fire_action(MachineState::Started), FireAction::Skip);
        assert_eq!(fire_action(MachineState::Destroying), FireAction::Ignore);
    }
}
