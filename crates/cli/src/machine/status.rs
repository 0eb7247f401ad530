//! `hangar machine status`.

use anyhow::{Context, Result};
use clap::Args;
use hangar_api::{Machine, MachineEvent};

use super::{image_of, volume_of, Ctx};
use crate::output::{key_values, print_json, unix_ms_rfc3339, Table};

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusArgs {
    /// Machine id or name (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// Print the machine's config as JSON
    #[arg(short = 'd', long)]
    pub display_config: bool,
    /// Print the machine as JSON
    #[arg(short = 'j', long, conflicts_with = "display_config")]
    pub json: bool,
}

pub async fn run(ctx: &Ctx<'_>, args: StatusArgs) -> Result<()> {
    let id = ctx.resolve_opt(args.id.as_deref()).await?;

    if args.json || args.display_config {
        // Untyped, so unknown fields survive.
        let body: serde_json::Value = ctx
            .client
            .get(format!(
                "/v1/apps/{}/machines/{}",
                hangar_client::encode(ctx.app),
                hangar_client::encode(&id)
            ))
            .send()
            .await
            .with_context(|| format!("failed to get machine {id}"))?;
        return if args.json {
            print_json(&body)
        } else {
            print_json(body.get("config").unwrap_or(&serde_json::Value::Null))
        };
    }

    let machine = ctx.get(&id).await?;
    let events = match &machine.events {
        Some(events) => events.clone(),
        None => ctx
            .client
            .machine_events(ctx.app, &id, None)
            .await
            .with_context(|| format!("failed to get the events of machine {id}"))?,
    };
    print!("{}", render_status(&machine, &events));
    if machine
        .config
        .as_ref()
        .is_some_and(|c| c.schedule.as_deref().is_some_and(|s| !s.is_empty()))
    {
        let schedule: Result<serde_json::Value, _> = ctx
            .client
            .get(format!(
                "/hangar/v1/apps/{}/machines/{}/schedule",
                hangar_client::encode(ctx.app),
                hangar_client::encode(&id)
            ))
            .send()
            .await;
        if let Ok(s) = schedule {
            let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
            print!(
                "\nSchedule\n{}",
                key_values(&[
                    ("Schedule", text("schedule")),
                    ("Next run", text("next_fire_at")),
                    ("Last run", text("last_fire_at")),
                    ("Last outcome", text("last_outcome")),
                ])
            );
        }
    }
    Ok(())
}

pub fn render_status(m: &Machine, events: &[MachineEvent]) -> String {
    let config = m.config.as_ref();
    let guest = config.and_then(|c| c.guest.as_ref());
    let join = |v: Option<&Vec<String>>| v.map(|v| v.join(" ")).unwrap_or_default();
    let process_group = config
        .and_then(|c| c.metadata.as_ref())
        .and_then(|md| {
            md.get("fly_process_group")
                .or_else(|| md.get("process_group"))
        })
        .cloned()
        .unwrap_or_default();

    let mut out = format!(
        "Machine ID: {}\nInstance ID: {}\nState: {}\n",
        m.id, m.instance_id, m.state
    );
    // A failed machine says why (the newest event that carries an error).
    if m.state == hangar_api::MachineState::Failed {
        if let Some(reason) = events.iter().find_map(|e| {
            e.request
                .as_ref()
                .and_then(|r| r.get("error"))
                .and_then(|v| v.as_str())
        }) {
            out.push_str(&format!("Reason: {reason}\n"));
        }
    }
    // The last exit (newest first): an OOM kill is the reason people look at a status for.
    if let Some(exit) = events
        .iter()
        .filter(|e| e.kind == "exit")
        .find_map(|e| e.request.as_ref().and_then(|r| r.get("exit_event")))
    {
        let code = exit.get("exit_code").and_then(|v| v.as_i64()).unwrap_or(0);
        if exit.get("oom_killed").and_then(|v| v.as_bool()) == Some(true) {
            out.push_str(&format!(
                "Last exit: out of memory (killed by the OOM killer, exit code {code}); consider a larger --vm-memory\n"
            ));
        } else if code != 0 {
            out.push_str(&format!("Last exit: exit code {code}\n"));
        }
    }
    out.push_str("\nVM\n");
    out.push_str(&key_values(&[
        ("ID", m.id.clone()),
        ("Instance ID", m.instance_id.clone()),
        ("State", m.state.to_string()),
        ("Image", image_of(m)),
        ("Name", m.name.clone()),
        ("Private IP", m.private_ip.clone()),
        ("Region", m.region.clone()),
        ("Process Group", process_group),
        (
            "CPU Kind",
            guest.map(|g| g.cpu_kind.clone()).unwrap_or_default(),
        ),
        (
            "vCPUs",
            guest.map(|g| g.cpus.to_string()).unwrap_or_default(),
        ),
        (
            "Memory",
            guest.map(|g| g.memory_mb.to_string()).unwrap_or_default(),
        ),
        ("Created", m.created_at.clone()),
        ("Updated", m.updated_at.clone()),
        (
            "Entrypoint",
            join(config.and_then(|c| c.init.entrypoint.as_ref())),
        ),
        ("Command", join(config.and_then(|c| c.init.cmd.as_ref()))),
        ("Volume", volume_of(m)),
        ("Cordoned", m.cordoned.to_string()),
    ]));
    if let Some(services) = config
        .and_then(|c| c.services.as_ref())
        .filter(|s| !s.is_empty())
    {
        // Edge addresses are the proxy's (`hangar services list` shows where it listens).
        out.push_str("\nServices\n");
        let mut t = Table::new([
            "PROTOCOL",
            "PORTS",
            "HANDLERS",
            "INTERNAL PORT",
            "AUTOSTART",
            "AUTOSTOP",
        ]);
        for s in services {
            for p in s.ports.iter().flatten() {
                let ports = match (p.port, p.start_port, p.end_port) {
                    (Some(port), _, _) => port.to_string(),
                    (None, Some(a), Some(b)) => format!("{a}-{b}"),
                    _ => String::new(),
                };
                t.row([
                    if s.protocol.is_empty() {
                        "tcp".to_string()
                    } else {
                        s.protocol.clone()
                    },
                    ports,
                    p.handlers.clone().unwrap_or_default().join(","),
                    s.internal_port.to_string(),
                    s.autostart.unwrap_or(true).to_string(),
                    match s.autostop {
                        Some(hangar_api::Autostop::Stop) => "stop".into(),
                        Some(hangar_api::Autostop::Suspend) => "suspend".into(),
                        _ => "off".to_string(),
                    },
                ]);
            }
        }
        out.push_str(&t.render());
    }
    if let Some(containers) = m.containers.as_ref().filter(|c| !c.is_empty()) {
        out.push_str("\nContainers\n");
        let mut t = Table::new(["NAME", "STATE", "HEALTH", "RESTARTS", "EXIT CODE"]);
        for c in containers {
            t.row([
                c.name.clone(),
                c.state.clone(),
                c.health.clone().unwrap_or_default(),
                c.restart_count.to_string(),
                c.exit_code.map(|e| e.to_string()).unwrap_or_default(),
            ]);
        }
        out.push_str(&t.render());
    }
    if let Some(checks) = m.checks.as_ref().filter(|c| !c.is_empty()) {
        out.push_str(&format!("\nChecks [{}]\n", checks.len()));
        let mut t = Table::new(["NAME", "STATUS", "LAST UPDATED", "OUTPUT"]);
        for c in checks {
            t.row([
                c.name.clone(),
                c.status.clone(),
                c.updated_at.clone().unwrap_or_default(),
                c.output.clone(),
            ]);
        }
        out.push_str(&t.render());
    }
    out.push_str("\nEvent Logs\n");
    out.push_str(&events_table(events).render());
    out
}

pub fn events_table(events: &[MachineEvent]) -> Table {
    let mut table = Table::new(["STATE", "EVENT", "SOURCE", "TIMESTAMP"]);
    for e in events {
        table.row([
            e.status.clone(),
            e.kind.clone(),
            e.source.clone(),
            unix_ms_rfc3339(e.timestamp),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::tests::machine;
    use hangar_api::MachineState;

    #[test]
    fn renders_status_and_events() {
        let m = machine("1857156b526dd8", "aged-thunder-7371", MachineState::Started);
        let events = vec![MachineEvent {
            id: "01HEPA330HZ37A78TK080NAK1M".into(),
            kind: "start".into(),
            status: "started".into(),
            source: "user".into(),
            timestamp: 1_699_408_350_123,
            request: None,
        }];
        let out = render_status(&m, &events);
        assert!(out.starts_with("Machine ID: 1857156b526dd8\n"), "{out}");
        assert!(out.contains("  Image         = nginx:latest\n"), "{out}");
        assert!(out.contains("STATE    EVENT  SOURCE  TIMESTAMP\n"), "{out}");
        assert!(
            out.contains("started  start  user    2023-11-08T01:52:30.123Z\n"),
            "{out}"
        );
    }
}

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct StatsArgs {
    /// Machine id or name (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// Time between the two readings the CPU share is measured over (Go duration, 100ms to 60s)
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_interval)]
    pub interval: std::time::Duration,
    /// Print the raw readings as JSON
    #[arg(short = 'j', long)]
    pub json: bool,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = hangar_api::duration::parse_go_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(60) {
        return Err(format!("{s:?}: between 100ms and 60s"));
    }
    Ok(d)
}

/// `hangar machine stats`: CPU share over an interval, memory, processes and disk IO of a
/// started machine, read from its cgroup.
pub async fn stats(ctx: &Ctx<'_>, args: StatsArgs) -> Result<()> {
    let id = ctx.resolve_opt(args.id.as_deref()).await?;
    let path = format!(
        "/hangar/v1/apps/{}/machines/{}/stats",
        hangar_client::encode(ctx.app),
        hangar_client::encode(&id)
    );
    let read = || async {
        ctx.client
            .get(path.clone())
            .send::<serde_json::Value>()
            .await
            .with_context(|| format!("failed to read the stats of machine {id}"))
    };
    let first = read().await?;
    let started = std::time::Instant::now();
    tokio::time::sleep(args.interval).await;
    let second = read().await?;
    if args.json {
        return print_json(&second);
    }
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let cpus = ctx
        .get(&id)
        .await?
        .config
        .and_then(|c| c.guest)
        .map_or(1, |g| g.cpus.max(1));
    let busy = n(&second, "cpu_ns").saturating_sub(n(&first, "cpu_ns")) as f64 / 1e9;
    let share = 100.0 * busy / started.elapsed().as_secs_f64() / cpus as f64;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let limit = n(&second, "memory_limit_bytes");
    print!(
        "{}",
        key_values(&[
            ("Machine", id.clone()),
            ("CPU", format!("{share:.1}% of {cpus} vCPU(s)")),
            (
                "CPU time",
                format!("{:.2} s", n(&second, "cpu_ns") as f64 / 1e9)
            ),
            (
                "Memory",
                if limit == u64::MAX {
                    format!("{:.1} MiB", mib(n(&second, "memory_bytes")))
                } else {
                    format!(
                        "{:.1} MiB of {:.0} MiB",
                        mib(n(&second, "memory_bytes")),
                        mib(limit)
                    )
                }
            ),
            ("Processes", n(&second, "pids").to_string()),
            (
                "Disk IO",
                format!(
                    "{:.1} MiB read, {:.1} MiB written ({:.1} / {:.1} MiB/s)",
                    mib(n(&second, "io_read_bytes")),
                    mib(n(&second, "io_write_bytes")),
                    mib(n(&second, "io_read_bytes").saturating_sub(n(&first, "io_read_bytes")))
                        / started.elapsed().as_secs_f64(),
                    mib(n(&second, "io_write_bytes").saturating_sub(n(&first, "io_write_bytes")))
                        / started.elapsed().as_secs_f64(),
                )
            ),
        ])
    );
    Ok(())
}
