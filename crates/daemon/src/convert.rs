//! Store records to the API's JSON objects.

use hangar_api::{
    App, LeaseData, LeaseResponse, Machine, MachineEvent, Organization, StrippedLease,
};
use hangar_store::{AppRecord, EventRecord, LeaseRecord, MachineRecord};

use crate::clock::rfc3339_ms;

pub fn app(a: &AppRecord, machine_count: i64) -> App {
    App {
        id: a.id.clone(),
        name: a.name.clone(),
        status: if machine_count > 0 {
            "deployed"
        } else {
            "pending"
        }
        .to_string(),
        network: if a.network.is_empty() {
            "default".into()
        } else {
            a.network.clone()
        },
        network_cidr: String::new(),
        internal_numeric_id: a.internal_numeric_id,
        machine_count,
        volume_count: 0,
        organization: Organization {
            name: a.org_slug.clone(),
            slug: a.org_slug.clone(),
            internal_numeric_id: 0,
        },
        created_at: a.created_at,
        app_role: a.app_role.clone(),
    }
}

pub fn event(e: &EventRecord) -> MachineEvent {
    MachineEvent {
        id: e.id.clone(),
        kind: e.kind.clone(),
        status: e.status.clone(),
        source: e.source.clone(),
        timestamp: e.timestamp,
        request: e.request.clone(),
    }
}

pub struct MachineView<'a> {
    pub record: &'a MachineRecord,
    pub events: Option<&'a [EventRecord]>,
    pub lease: Option<&'a LeaseRecord>,
    pub nonce: Option<String>,
    pub summary: bool,
}

pub fn machine(v: MachineView<'_>) -> Machine {
    let m = v.record;
    Machine {
        id: m.id.clone(),
        name: m.name.clone(),
        state: m.state,
        region: m.region.clone(),
        instance_id: m.instance_id.clone(),
        private_ip: m.private_ip.clone(),
        created_at: rfc3339_ms(m.created_at),
        updated_at: rfc3339_ms(m.updated_at),
        config: (!v.summary).then(|| m.config.clone()),
        image_ref: m.image_ref.clone(),
        events: (!v.summary).then(|| v.events.unwrap_or_default().iter().map(event).collect()),
        checks: (!v.summary).then(Vec::new),
        nonce: if v.summary { None } else { v.nonce },
        lease: v.lease.map(|l| StrippedLease {
            description: l.description.clone(),
            expires_at: l.expires_at,
            owner: l.owner.clone(),
        }),
        host_status: if v.summary {
            String::new()
        } else {
            "ok".to_string()
        },
        host_features: None,
        cordoned: m.cordoned,
        containers: None,
    }
}

pub fn lease(l: &LeaseRecord) -> LeaseResponse {
    LeaseResponse {
        status: "success".into(),
        data: LeaseData {
            nonce: l.nonce.clone(),
            expires_at: l.expires_at,
            owner: l.owner.clone(),
            description: l.description.clone(),
            version: l.version.clone(),
        },
    }
}
