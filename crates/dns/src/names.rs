//! The `.internal` zone, as Fly answers it (`shared/reference/machines-api.md` §4.2 and
//! `milestone2.md` §2).
//!
//! AAAA names list **started** machines only:
//! `<app>.internal` (and `global.<app>.internal`), `<region>.<app>.internal`,
//! `<machine_id>.vm.<app>.internal`, `<group>.process.<app>.internal`,
//! `top<N>.nearest.of.<app>.internal` (one host has no distances: the first N in id order),
//! `<value>.<key>.kv._metadata.<app>.internal`.
//!
//! TXT names: `vms.<app>.internal` (`"<id> <region>,…"`), `regions.<app>.internal`
//! (`"<region>,…"`), `_apps.internal` (`"<app>,…"`), `_instances.internal`
//! (`"instance=<id>,app=<app>,ip=<6pn>,region=<r>;…"`); their `all.` variants include machines
//! in any state.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use crate::directory::{Directory, Entry, Scope};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Addresses for an AAAA name; empty means the name does not exist (NXDOMAIN).
    Addresses(Vec<Ipv6Addr>),
    Text(String),
    NxDomain,
}

/// Answers `name` (lower case, without the trailing dot, ending in `.internal`).
pub fn resolve(dir: &Directory, scope: Scope, name: &str) -> Answer {
    let Some(rest) = name.strip_suffix(".internal") else {
        return Answer::NxDomain;
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let machines = dir.visible(scope);
    let started = |e: &&Entry| e.started;
    match labels.as_slice() {
        ["_apps"] => Answer::Text(join(dir.apps(scope), ",")),
        ["_instances"] => instances(machines.iter().filter(started)),
        ["all", "_instances"] => instances(machines.iter()),
        [app] | ["global", app] => addresses(of_app(&machines, app).filter(started)),
        ["vms", app] => vms(&machines, app, true),
        ["all", "vms", app] => vms(&machines, app, false),
        ["regions", app] => regions(&machines, app, true),
        ["all", "regions", app] => regions(&machines, app, false),
        [id, "vm", app] => addresses(
            of_app(&machines, app)
                .filter(started)
                .filter(|e| e.id == *id),
        ),
        [group, "process", app] => {
            addresses(of_app(&machines, app).filter(started).filter(|e| {
                e.metadata.get("fly_process_group").map(String::as_str) == Some(*group)
            }))
        }
        [top, "nearest", "of", app] => match top.strip_prefix("top").and_then(|n| n.parse().ok()) {
            Some(n) => addresses(of_app(&machines, app).filter(started).take(n)),
            None => Answer::NxDomain,
        },
        [value, key, "kv", "_metadata", app] => {
            addresses(of_app(&machines, app).filter(started).filter(|e| {
                e.metadata
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case(key) && v.eq_ignore_ascii_case(value))
            }))
        }
        [region, app] => addresses(
            of_app(&machines, app)
                .filter(started)
                .filter(|e| e.region == *region),
        ),
        _ => Answer::NxDomain,
    }
}

fn of_app<'a>(machines: &'a [Entry], app: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
    machines.iter().filter(move |e| e.app == app)
}

fn addresses<'a>(found: impl Iterator<Item = &'a Entry>) -> Answer {
    let ips: Vec<Ipv6Addr> = found.map(|e| e.ipv6).collect();
    if ips.is_empty() {
        Answer::NxDomain
    } else {
        Answer::Addresses(ips)
    }
}

fn join(items: impl IntoIterator<Item = String>, sep: &str) -> String {
    items.into_iter().collect::<Vec<_>>().join(sep)
}

fn known(machines: &[Entry], app: &str) -> bool {
    machines.iter().any(|e| e.app == app)
}

fn vms(machines: &[Entry], app: &str, started_only: bool) -> Answer {
    if !known(machines, app) {
        return Answer::NxDomain;
    }
    Answer::Text(join(
        of_app(machines, app)
            .filter(|e| e.started || !started_only)
            .map(|e| format!("{} {}", e.id, e.region)),
        ",",
    ))
}

fn regions(machines: &[Entry], app: &str, started_only: bool) -> Answer {
    if !known(machines, app) {
        return Answer::NxDomain;
    }
    let set: BTreeSet<String> = of_app(machines, app)
        .filter(|e| e.started || !started_only)
        .map(|e| e.region.clone())
        .collect();
    Answer::Text(join(set, ","))
}

fn instances<'a>(found: impl Iterator<Item = &'a Entry>) -> Answer {
    Answer::Text(join(
        found.map(|e| {
            format!(
                "instance={},app={},ip={},region={}",
                e.id, e.app, e.ipv6, e.region
            )
        }),
        ";",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, app: &str, region: &str, machine: u32, started: bool) -> Entry {
        Entry {
            id: id.into(),
            app: app.into(),
            region: region.into(),
            ipv6: hangar_net::SixPn {
                network: 1,
                host: 7,
                machine,
            }
            .address(),
            ipv4: None,
            started,
            skip_registration: false,
            metadata: [("fly_process_group".to_string(), "web".to_string())].into(),
        }
    }

    fn dir() -> Directory {
        let d = Directory::new();
        d.put(entry("a1", "app", "ams", 1, true));
        d.put(entry("a2", "app", "ord", 2, false));
        d.put(entry("b1", "other", "ams", 3, true));
        let mut hidden = entry("c1", "app", "ams", 4, true);
        hidden.skip_registration = true;
        d.put(hidden);
        // Another network: invisible to network 1.
        let mut far = entry("z1", "far", "ams", 5, true);
        far.ipv6 = hangar_net::SixPn {
            network: 2,
            host: 7,
            machine: 5,
        }
        .address();
        d.put(far);
        d
    }

    fn r(name: &str) -> Answer {
        resolve(&dir(), Scope::Network(1), name)
    }

    #[test]
    fn test_aaaa_names_list_started_machines_only() {
        let a1: Ipv6Addr = "fdaa:0:1:0:7:0:1:2".parse().unwrap();
        assert_eq!(r("app.internal"), Answer::Addresses(vec![a1]));
        assert_eq!(r("global.app.internal"), Answer::Addresses(vec![a1]));
        assert_eq!(r("ams.app.internal"), Answer::Addresses(vec![a1]));
        assert_eq!(r("ord.app.internal"), Answer::NxDomain);
        assert_eq!(r("a1.vm.app.internal"), Answer::Addresses(vec![a1]));
        assert_eq!(r("a2.vm.app.internal"), Answer::NxDomain);
        assert_eq!(r("c1.vm.app.internal"), Answer::NxDomain);
        assert_eq!(r("web.process.app.internal"), Answer::Addresses(vec![a1]));
        assert_eq!(
            r("top1.nearest.of.app.internal"),
            Answer::Addresses(vec![a1])
        );
        assert_eq!(
            r("web.fly_process_group.kv._metadata.app.internal"),
            Answer::Addresses(vec![a1])
        );
        assert_eq!(r("far.internal"), Answer::NxDomain);
    }

    #[test]
    fn test_txt_names_use_flys_formats() {
        assert_eq!(r("vms.app.internal"), Answer::Text("a1 ams".into()));
        assert_eq!(
            r("all.vms.app.internal"),
            Answer::Text("a1 ams,a2 ord".into())
        );
        assert_eq!(r("regions.app.internal"), Answer::Text("ams".into()));
        assert_eq!(
            r("all.regions.app.internal"),
            Answer::Text("ams,ord".into())
        );
        assert_eq!(r("_apps.internal"), Answer::Text("app,other".into()));
        assert_eq!(
            r("_instances.internal"),
            Answer::Text(
                "instance=a1,app=app,ip=fdaa:0:1:0:7:0:1:2,region=ams;\
                 instance=b1,app=other,ip=fdaa:0:1:0:7:0:3:2,region=ams"
                    .into()
            )
        );
        assert_eq!(r("vms.nope.internal"), Answer::NxDomain);
    }

    #[test]
    fn test_scope_follows_the_source_address() {
        let d = dir();
        assert_eq!(
            d.scope_of("fdaa:0:2:0:7:0:5:2".parse().unwrap()),
            Scope::Network(2)
        );
        assert_eq!(d.scope_of("::1".parse().unwrap()), Scope::Host);
        assert_eq!(
            resolve(&d, Scope::Host, "_apps.internal"),
            Answer::Text("app,far,other".into())
        );
    }
}
