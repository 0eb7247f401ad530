//! The contract every store backend must meet, as checks that take a fresh, empty store.
//! A backend's tests call [`run_all`]; SQLite's do (in CI), a cluster backend's will.
//!
//! Each check panics with what broke; they assume nothing about the backend beyond the traits.

use hangar_api::{MachineConfig, MachineState};

use crate::{
    AppRecord, ErrorClass, EventRecord, Expect, LeaseRecord, MachineRecord, Store, StoreError,
};

/// Runs every check, each on a store from `fresh`.
pub fn run_all(fresh: &mut dyn FnMut() -> Box<dyn Store>) {
    apps_round_trip_and_unique_names(fresh().as_ref());
    machines_round_trip_and_unique_live_names(fresh().as_ref());
    guarded_writes_refuse_stale_versions(fresh().as_ref());
    guarded_writes_honour_leases(fresh().as_ref());
    events_are_listed_newest_first(fresh().as_ref());
    deleting_an_app_takes_everything_of_it(fresh().as_ref());
    networks_and_addresses_are_allocated_once(fresh().as_ref());
    secrets_are_versioned_per_app(fresh().as_ref());
    volumes_attach_to_one_machine(fresh().as_ref());
    schedules_follow_their_machine(fresh().as_ref());
    certificates_belong_to_one_app(fresh().as_ref());
    dedicated_addresses_belong_to_one_app(fresh().as_ref());
    hosts_register_once_and_heartbeat(fresh().as_ref());
}

pub fn app(name: &str) -> AppRecord {
    AppRecord {
        id: format!("id-{name}"),
        name: name.into(),
        org_slug: "personal".into(),
        network: String::new(),
        internal_numeric_id: 0,
        created_at: 1,
        idempotency_key: None,
        app_role: String::new(),
    }
}

pub fn machine(app: &str, id: &str, name: &str) -> MachineRecord {
    MachineRecord {
        id: id.into(),
        app: app.into(),
        name: name.into(),
        state: MachineState::Created,
        region: "local".into(),
        instance_id: format!("v-{id}"),
        private_ip: format!("fdaa::2%{id}"),
        created_at: 1,
        updated_at: 1,
        cordoned: false,
        config: MachineConfig {
            image: Some("busybox".into()),
            ..Default::default()
        },
        image_ref: None,
        image_digests: Default::default(),
        row_version: 0,
        host_id: "host-1".into(),
        private_ipv4: String::new(),
        skip_secrets: false,
    }
}

pub fn event(id: &str, machine: &str, ts: i64) -> EventRecord {
    EventRecord {
        id: id.into(),
        machine_id: machine.into(),
        kind: "launch".into(),
        status: "created".into(),
        source: "user".into(),
        timestamp: ts,
        request: None,
    }
}

fn lease(machine: &str, nonce: &str, expires_at: i64) -> LeaseRecord {
    LeaseRecord {
        machine_id: machine.into(),
        nonce: nonce.into(),
        expires_at,
        owner: "someone".into(),
        description: String::new(),
        version: "v".into(),
    }
}

pub fn apps_round_trip_and_unique_names(s: &dyn Store) {
    let mut a = app("a1");
    a.idempotency_key = Some("key-1".into());
    a.app_role = "postgres_cluster".into();
    let stored = s.create_app(&a).unwrap();
    assert!(
        stored.internal_numeric_id > 0,
        "the store assigns a numeric id"
    );
    let got = s.get_app("a1").unwrap().expect("stored app");
    assert_eq!(got.app_role, "postgres_cluster");
    assert_eq!(
        s.get_app_by_idempotency_key("key-1").unwrap().unwrap().name,
        "a1"
    );
    let err = s.create_app(&app("a1")).unwrap_err();
    assert!(matches!(err, StoreError::AppNameTaken(_)), "{err}");
    assert_eq!(err.class(), ErrorClass::Conflict);
    assert!(s.get_app("nope").unwrap().is_none());
    s.create_app(&app("a2")).unwrap();
    assert_eq!(s.list_apps(Some("personal")).unwrap().len(), 2);
    assert_eq!(s.list_apps(Some("other")).unwrap().len(), 0);
}

pub fn machines_round_trip_and_unique_live_names(s: &dyn Store) {
    s.create_app(&app("a1")).unwrap();
    let m = machine("a1", "00000000000001", "n1");
    s.insert_machine(&m, &event("e1", &m.id, 1), None).unwrap();
    assert_eq!(s.get_machine("a1", &m.id).unwrap().unwrap(), m);
    assert!(
        s.get_machine("other", &m.id).unwrap().is_none(),
        "scoped by app"
    );
    let dup = machine("a1", "00000000000002", "n1");
    let err = s
        .insert_machine(&dup, &event("e2", &dup.id, 1), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::MachineNameTaken(_)), "{err}");
    // A destroyed machine's name can be used again; it no longer counts.
    let mut gone = m.clone();
    gone.state = MachineState::Destroyed;
    gone.instance_id = "v2".into();
    let v = s
        .update_machine(&gone, Expect::version(0), true, None)
        .unwrap();
    assert_eq!(v, 1, "the row version moves on");
    assert_eq!(s.list_versions(&m.id).unwrap().len(), 2);
    assert!(s.has_version(&m.id, "v2").unwrap());
    assert_eq!(s.count_machines("a1").unwrap(), 0);
    s.insert_machine(&dup, &event("e3", &dup.id, 1), None)
        .unwrap();
    assert_eq!(s.list_machines("a1", false).unwrap().len(), 1);
    assert_eq!(s.list_machines("a1", true).unwrap().len(), 2);
    assert_eq!(s.list_live_machines().unwrap().len(), 1);
    // What changed since a moment: the destroyed one too (other hosts must hear of it).
    let changed = |since| -> Vec<String> {
        s.list_machines_changed_since(since)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect()
    };
    let mut all = changed(0);
    all.sort();
    assert_eq!(all, [m.id.clone(), dup.id.clone()]);
    let mut later = dup.clone();
    later.updated_at = m.updated_at + 10_000;
    s.update_machine(&later, Expect::version(0), false, None)
        .unwrap();
    assert_eq!(changed(m.updated_at + 5_000), std::slice::from_ref(&dup.id));
    assert!(changed(m.updated_at + 20_000).is_empty());
    assert_eq!(
        s.get_machine("a1", &dup.id).unwrap().unwrap().host_id,
        "host-1",
        "the owning host is kept"
    );
}

pub fn guarded_writes_refuse_stale_versions(s: &dyn Store) {
    s.create_app(&app("a1")).unwrap();
    let mut m = machine("a1", "00000000000001", "n1");
    s.insert_machine(&m, &event("e1", &m.id, 1), None).unwrap();
    // Two requests read version 0; the first write wins, the second is refused whole.
    let mut first = m.clone();
    first.state = MachineState::Starting;
    m.row_version = s
        .update_machine(
            &first,
            Expect::version(0),
            false,
            Some(&event("e2", &m.id, 2)),
        )
        .unwrap();
    let mut second = first.clone();
    second.state = MachineState::Destroying;
    let err = s
        .update_machine(
            &second,
            Expect::version(0),
            false,
            Some(&event("e3", &m.id, 3)),
        )
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{err}");
    let now = s.get_machine("a1", &m.id).unwrap().unwrap();
    assert_eq!(now.state, MachineState::Starting, "the loser wrote nothing");
    assert_eq!(now.row_version, m.row_version);
    assert!(
        s.list_events(&m.id, 10)
            .unwrap()
            .iter()
            .all(|e| e.id != "e3"),
        "nor its event"
    );
    let missing = machine("a1", "00000000000009", "n9");
    let err = s
        .update_machine(&missing, Expect::version(0), false, None)
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound, "{err}");
}

pub fn guarded_writes_honour_leases(s: &dyn Store) {
    s.create_app(&app("a1")).unwrap();
    let mut m = machine("a1", "00000000000001", "n1");
    s.insert_machine(&m, &event("e1", &m.id, 1), Some(&lease(&m.id, "n-1", 100)))
        .unwrap();
    let user = |nonce| Expect {
        row_version: 0,
        lease: Some((nonce, 50)),
        observed: false,
    };
    let err = s.update_machine(&m, user(None), false, None).unwrap_err();
    assert!(matches!(err, StoreError::LeaseHeld { .. }), "{err}");
    let err = s
        .update_machine(&m, user(Some("wrong")), false, None)
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{err}");
    m.row_version = s
        .update_machine(&m, user(Some("n-1")), false, None)
        .unwrap();
    // The platform's own writes are not a lease holder's business.
    m.row_version = s
        .update_machine(&m, Expect::version(m.row_version), false, None)
        .unwrap();
    // An expired lease binds nobody.
    let expired = Expect {
        row_version: m.row_version,
        lease: Some((None, 100)),
        observed: false,
    };
    m.row_version = s.update_machine(&m, expired, false, None).unwrap();
    // A write of what the runtime observed is a write like any other (it only does not wait
    // for the disk), and the ones after it are as before.
    m.name = "observed".into();
    let observed = Expect {
        row_version: m.row_version,
        lease: None,
        observed: true,
    };
    m.row_version = s.update_machine(&m, observed, false, None).unwrap();
    assert_eq!(
        s.get_machine("a1", &m.id).unwrap().unwrap().name,
        "observed"
    );
    m.row_version = s
        .update_machine(&m, Expect::version(m.row_version), false, None)
        .unwrap();
    s.delete_lease(&m.id).unwrap();
    assert!(s.get_lease(&m.id).unwrap().is_none());
}

pub fn events_are_listed_newest_first(s: &dyn Store) {
    s.create_app(&app("a1")).unwrap();
    let m = machine("a1", "00000000000001", "n1");
    s.insert_machine(&m, &event("e1", &m.id, 1), None).unwrap();
    for i in 2..=5 {
        s.append_event(&event(&format!("e{i}"), &m.id, i)).unwrap();
    }
    let got: Vec<String> = s
        .list_events(&m.id, 3)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, ["e5", "e4", "e3"]);
}

pub fn deleting_an_app_takes_everything_of_it(s: &dyn Store) {
    s.create_app(&app("a1")).unwrap();
    let m = machine("a1", "00000000000001", "n1");
    s.insert_machine(&m, &event("e1", &m.id, 1), Some(&lease(&m.id, "n", 9)))
        .unwrap();
    assert!(s.delete_app("a1").unwrap());
    assert!(
        !s.delete_app("a1").unwrap(),
        "a second delete finds nothing"
    );
    assert!(s.get_machine("a1", &m.id).unwrap().is_none());
    assert!(s.list_events(&m.id, 10).unwrap().is_empty());
    assert!(s.get_lease(&m.id).unwrap().is_none());
}

pub fn networks_and_addresses_are_allocated_once(s: &dyn Store) {
    let default = s.ensure_network("personal", "default", 1).unwrap();
    let again = s.ensure_network("personal", "default", 2).unwrap();
    assert_eq!(default, again, "a network keeps its id and block");
    let other = s.ensure_network("personal", "tenant-a", 3).unwrap();
    let other_org = s.ensure_network("acme", "default", 4).unwrap();
    assert_ne!(default.id, other.id);
    assert_ne!(other.id, other_org.id);
    assert!(default.ipv4_blocks.is_empty());
    assert_eq!(s.claim_ipv4_block(default.id, 3).unwrap(), Some(0));
    assert_eq!(s.claim_ipv4_block(other.id, 3).unwrap(), Some(1));
    assert_eq!(s.claim_ipv4_block(default.id, 3).unwrap(), Some(2));
    assert_eq!(
        s.claim_ipv4_block(other_org.id, 3).unwrap(),
        None,
        "all 3 are taken"
    );
    let default = s.ensure_network("personal", "default", 5).unwrap();
    assert_eq!(default.ipv4_blocks, vec![0, 2]);
    assert_eq!(s.list_networks().unwrap().len(), 3);

    s.create_app(&app("a")).unwrap();
    let mut m1 = machine("a", "m1", "one");
    m1.private_ipv4 = "172.19.0.2".into();
    s.insert_machine(&m1, &event("e1", "m1", 1), None).unwrap();
    let mut m2 = machine("a", "m2", "two");
    m2.private_ipv4 = "172.19.0.2".into();
    let err = s
        .insert_machine(&m2, &event("e2", "m2", 1), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::AddressTaken(_)), "{err}");
    m2.private_ip = m1.private_ip.clone();
    m2.private_ipv4 = "172.19.0.3".into();
    let err = s
        .insert_machine(&m2, &event("e2", "m2", 1), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::AddressTaken(_)), "{err}");
    assert_eq!(
        s.live_ipv4_addresses("172.19.0.").unwrap(),
        vec!["172.19.0.2"]
    );
    // A destroyed machine's addresses are free again.
    m1.state = MachineState::Destroyed;
    s.update_machine(&m1, Expect::version(0), false, None)
        .unwrap();
    assert!(s.live_ipv4_addresses("172.19.0.").unwrap().is_empty());
    s.insert_machine(&m2, &event("e2", "m2", 1), None).unwrap();

    assert_eq!(s.setting_or_init("host", "abc").unwrap(), "abc");
    assert_eq!(s.setting_or_init("host", "def").unwrap(), "abc");
}

pub fn secrets_are_versioned_per_app(s: &dyn Store) {
    use crate::SecretWrite;
    let set = |name: &str, sealed: &[u8]| SecretWrite::Set {
        name: name.into(),
        sealed: sealed.to_vec(),
        digest: format!("d-{name}"),
    };
    assert_eq!(
        s.write_secrets("nope", &[set("A", b"x")], 1)
            .unwrap_err()
            .class(),
        ErrorClass::NotFound
    );
    s.create_app(&app("a")).unwrap();
    s.create_app(&app("b")).unwrap();
    assert_eq!(s.list_secrets("a").unwrap().version, 0);
    assert_eq!(
        s.write_secrets("a", &[set("A", b"1"), set("B", b"2")], 10)
            .unwrap(),
        1
    );
    // Deleting a missing name succeeds and still bumps the version.
    let del = |name: &str| SecretWrite::Delete { name: name.into() };
    assert_eq!(s.write_secrets("a", &[del("MISSING")], 11).unwrap(), 2);
    assert_eq!(
        s.write_secrets("a", &[set("A", b"3"), del("B")], 12)
            .unwrap(),
        3
    );
    let a = s.list_secrets("a").unwrap();
    assert_eq!(a.version, 3);
    assert_eq!(a.secrets.len(), 1);
    let first = &a.secrets[0];
    assert_eq!(
        (first.name.as_str(), first.sealed.as_slice()),
        ("A", &b"3"[..])
    );
    assert_eq!(
        (first.created_at, first.updated_at, first.version),
        (10, 12, 3)
    );
    // Apps do not share secrets or versions.
    assert_eq!(s.list_secrets("b").unwrap(), crate::SecretSet::default());
    assert!(s.delete_app("a").unwrap());
    assert_eq!(
        s.list_secrets("a").unwrap_err().class(),
        ErrorClass::NotFound
    );
}

pub fn volume(app: &str, id: &str) -> crate::VolumeRecord {
    crate::VolumeRecord {
        id: id.into(),
        app: app.into(),
        name: "data".into(),
        state: "created".into(),
        size_gb: 1,
        region: "local".into(),
        zone: "z1".into(),
        encrypted: false,
        fstype: "ext4".into(),
        snapshot_retention: 5,
        auto_backup_enabled: true,
        attached_machine_id: None,
        created_at: 1,
        deleted_at: None,
        host_id: "host-1".into(),
    }
}

pub fn volumes_attach_to_one_machine(s: &dyn Store) {
    s.create_app(&app("v")).unwrap();
    let v = volume("v", "vol_1");
    s.insert_volume(&v).unwrap();
    assert_eq!(s.get_volume("v", "vol_1").unwrap().unwrap(), v);
    assert!(s.get_volume("other", "vol_1").unwrap().is_none());
    s.attach_volume("vol_1", "m1").unwrap();
    s.attach_volume("vol_1", "m1").unwrap();
    match s.attach_volume("vol_1", "m2") {
        Err(StoreError::VolumeAttached { machine, .. }) => assert_eq!(machine, "m1"),
        other => panic!("second machine attached: {other:?}"),
    }
    s.detach_volume("vol_1", "m2").unwrap();
    assert_eq!(
        s.get_volume("v", "vol_1")
            .unwrap()
            .unwrap()
            .attached_machine_id
            .as_deref(),
        Some("m1")
    );
    s.detach_volume("vol_1", "m1").unwrap();
    s.attach_volume("vol_1", "m2").unwrap();
    let mut updated = s.get_volume("v", "vol_1").unwrap().unwrap();
    updated.size_gb = 5;
    updated.state = "pending_destroy".into();
    updated.deleted_at = Some(9);
    s.update_volume(&updated).unwrap();
    let got = s.get_volume("v", "vol_1").unwrap().unwrap();
    assert_eq!(
        (got.size_gb, got.attached_machine_id.as_deref()),
        (5, Some("m2"))
    );
    assert_eq!(
        s.attach_volume("vol_1", "m3").unwrap_err().class(),
        ErrorClass::NotFound
    );
    let snap = crate::SnapshotRecord {
        id: "vs_1".into(),
        volume_id: "vol_1".into(),
        app: "v".into(),
        size: 10,
        volume_size: 5,
        status: "created".into(),
        retention_days: 5,
        created_at: 3,
    };
    s.insert_snapshot(&snap).unwrap();
    assert_eq!(s.list_snapshots("vol_1").unwrap(), vec![snap.clone()]);
    assert_eq!(s.get_snapshot("vs_1").unwrap(), Some(snap));
    assert_eq!(s.list_all_volumes().unwrap().len(), 1);
    s.purge_volume("vol_1").unwrap();
    assert!(s.list_volumes("v").unwrap().is_empty());
    assert!(s.list_snapshots("vol_1").unwrap().is_empty());
}

pub fn schedules_follow_their_machine(s: &dyn Store) {
    s.create_app(&app("s")).unwrap();
    let m = machine("s", "00000000000009", "cron");
    s.insert_machine(&m, &event("e9", &m.id, 1), None).unwrap();
    let mut rec = crate::ScheduleRecord {
        machine_id: m.id.clone(),
        anchor_at: 10,
        next_fire_at: 20,
        last_fire_at: None,
        last_outcome: None,
    };
    s.put_schedule(&rec).unwrap();
    rec.next_fire_at = 30;
    rec.last_fire_at = Some(20);
    rec.last_outcome = Some("started".into());
    s.put_schedule(&rec).unwrap();
    assert_eq!(s.get_schedule(&m.id).unwrap(), Some(rec.clone()));
    assert_eq!(s.list_schedules().unwrap(), vec![rec.clone()]);
    let orphan = crate::ScheduleRecord {
        machine_id: "nope".into(),
        ..rec
    };
    assert_eq!(
        s.put_schedule(&orphan).unwrap_err().class(),
        ErrorClass::NotFound
    );
    s.delete_schedule(&m.id).unwrap();
    assert!(s.get_schedule(&m.id).unwrap().is_none());
}

pub fn certificates_belong_to_one_app(s: &dyn Store) {
    let cert = |app: &str, host: &str| crate::CertificateRecord {
        hostname: host.into(),
        app: app.into(),
        fullchain: "PEM".into(),
        key_sealed: vec![1, 2, 3],
        created_at: 1,
        updated_at: 1,
    };
    assert_eq!(
        s.put_certificate(&cert("none", "a.example"))
            .unwrap_err()
            .class(),
        ErrorClass::NotFound
    );
    s.create_app(&app("c1")).unwrap();
    s.create_app(&app("c2")).unwrap();
    s.put_certificate(&cert("c1", "a.example")).unwrap();
    let mut again = cert("c1", "a.example");
    again.fullchain = "NEW".into();
    again.updated_at = 2;
    s.put_certificate(&again).unwrap();
    let got = s.get_certificate("a.example").unwrap().unwrap();
    assert_eq!(
        (got.fullchain.as_str(), got.created_at, got.updated_at),
        ("NEW", 1, 2)
    );
    assert_eq!(
        s.put_certificate(&cert("c2", "a.example"))
            .unwrap_err()
            .class(),
        ErrorClass::Conflict
    );
    s.put_certificate(&cert("c2", "b.example")).unwrap();
    assert_eq!(s.list_certificates(Some("c1")).unwrap().len(), 1);
    assert_eq!(s.list_certificates(None).unwrap().len(), 2);
    assert!(s.delete_certificate("b.example").unwrap());
    assert!(!s.delete_certificate("b.example").unwrap());
    assert!(s.delete_app("c1").unwrap());
    assert!(
        s.get_certificate("a.example").unwrap().is_none(),
        "gone with its app"
    );
}

pub fn dedicated_addresses_belong_to_one_app(s: &dyn Store) {
    let ip = |app: &str, ip: &str, shared: bool| crate::IpAssignmentRecord {
        ip: ip.into(),
        app: app.into(),
        region: "local".into(),
        service_name: String::new(),
        shared,
        created_at: 1,
    };
    s.create_app(&app("i1")).unwrap();
    s.create_app(&app("i2")).unwrap();
    s.insert_ip_assignment(&ip("i1", "192.0.2.1", false))
        .unwrap();
    assert_eq!(
        s.insert_ip_assignment(&ip("i2", "192.0.2.1", false))
            .unwrap_err()
            .class(),
        ErrorClass::Conflict
    );
    // The shared address is every app's.
    s.insert_ip_assignment(&ip("i1", "127.0.0.1", true))
        .unwrap();
    s.insert_ip_assignment(&ip("i2", "127.0.0.1", true))
        .unwrap();
    assert_eq!(
        s.insert_ip_assignment(&ip("nope", "192.0.2.9", false))
            .unwrap_err()
            .class(),
        ErrorClass::NotFound
    );
    assert_eq!(s.list_ip_assignments(Some("i1")).unwrap().len(), 2);
    assert_eq!(s.list_ip_assignments(None).unwrap().len(), 3);
    assert!(!s.delete_ip_assignment("i2", "192.0.2.1").unwrap());
    assert!(s.delete_ip_assignment("i1", "192.0.2.1").unwrap());
    assert!(s.delete_app("i2").unwrap());
    assert_eq!(s.list_ip_assignments(None).unwrap().len(), 1);
}

pub fn host(id: &str, at: i64) -> crate::HostRecord {
    crate::HostRecord {
        id: id.into(),
        region: "ams".into(),
        cpus: 8,
        memory_mb: 16384,
        disk_gb: 100,
        api_addr: String::new(),
        instance: format!("instance-{id}"),
        registered_at: at,
        heartbeat_at: at,
    }
}

pub fn hosts_register_once_and_heartbeat(s: &dyn Store) {
    assert!(s.list_hosts().unwrap().is_empty());
    s.register_host(&host("h2", 10)).unwrap();
    s.register_host(&host("h1", 20)).unwrap();
    // Registering again (a restart) updates what the host offers, not when it first came.
    let mut again = host("h1", 30);
    again.cpus = 16;
    again.instance = "new".into();
    s.register_host(&again).unwrap();
    s.heartbeat("h2", 40).unwrap();
    let hosts = s.list_hosts().unwrap();
    assert_eq!(
        hosts
            .iter()
            .map(|h| (h.id.as_str(), h.cpus, h.registered_at, h.heartbeat_at))
            .collect::<Vec<_>>(),
        [("h1", 16, 20, 30), ("h2", 8, 10, 40)]
    );
    assert_eq!(hosts[0].instance, "new");
    assert_eq!(
        s.heartbeat("nobody", 50).unwrap_err().class(),
        ErrorClass::NotFound
    );
}
