//! `hangar machine list`.

use anyhow::{Context, Result};
use clap::Args;
use hangar_api::Machine;
use hangar_client::ListMachinesOptions;

use super::{image_of, volume_of, Ctx};
use crate::output::{print_json, Table};

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct ListArgs {
    /// Only print machine ids
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print the machines as JSON
    #[arg(short = 'j', long)]
    pub json: bool,
    /// Only machines in these states (comma-separated: created,started,stopped,suspended)
    #[arg(long, value_name = "STATES")]
    pub state: Option<String>,
    /// Include destroyed machines
    #[arg(long)]
    pub include_deleted: bool,
}

pub async fn run(ctx: &Ctx<'_>, args: ListArgs) -> Result<()> {
    let opts = ListMachinesOptions {
        include_deleted: args.include_deleted,
        states: args
            .state
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        ..Default::default()
    };
    let failed = || format!("failed to list machines of app {}", ctx.app);

    if args.json {
        // Fetched untyped so the output is exactly what the API returned.
        let mut req = ctx.client.get(format!(
            "/v1/apps/{}/machines",
            hangar_client::encode(ctx.app)
        ));
        if opts.include_deleted {
            req = req.query("include_deleted", "true");
        }
        if !opts.states.is_empty() {
            req = req.query("state", opts.states.join(","));
        }
        let body: serde_json::Value = req.send().await.with_context(failed)?;
        return print_json(&body);
    }

    let machines = ctx
        .client
        .list_machines(ctx.app, &opts)
        .await
        .with_context(failed)?;
    if args.quiet {
        for m in &machines {
            println!("{}", m.id);
        }
        return Ok(());
    }
    if machines.is_empty() {
        println!("No machines are available on this app {}", ctx.app);
        return Ok(());
    }
    println!(
        "{} machines have been retrieved from app {}.\n",
        machines.len(),
        ctx.app
    );
    print!("{}", machines_table(&machines).render());
    Ok(())
}

pub fn machines_table(machines: &[Machine]) -> Table {
    let mut table = Table::new([
        "ID",
        "NAME",
        "STATE",
        "CHECKS",
        "REGION",
        "ROLE",
        "IMAGE",
        "IP ADDRESS",
        "VOLUME",
        "CREATED",
        "LAST UPDATED",
        "PROCESS GROUP",
        "SIZE",
    ]);
    for m in machines {
        // flyctl: passing/total checks, and the role a `role` check reports.
        let checks = m.checks.as_deref().unwrap_or_default();
        let summary = if checks.is_empty() {
            String::new()
        } else {
            let passing = checks.iter().filter(|c| c.status == "passing").count();
            format!("{passing}/{}", checks.len())
        };
        let role = checks
            .iter()
            .find(|c| c.name == "role")
            .map(|c| c.output.clone())
            .unwrap_or_default();
        let config = m.config.as_ref();
        let metadata = config.and_then(|c| c.metadata.as_ref());
        let group = metadata
            .and_then(|md| {
                md.get("fly_process_group")
                    .or_else(|| md.get("process_group"))
            })
            .cloned()
            .unwrap_or_default();
        let size = config
            .and_then(|c| c.guest.as_ref())
            .map(|g| format!("{}:{}MB", hangar_api::guest::size_name(g), g.memory_mb))
            .unwrap_or_default();
        table.row([
            m.id.clone(),
            m.name.clone(),
            m.state.to_string(),
            summary,
            m.region.clone(),
            role,
            image_of(m),
            m.private_ip.clone(),
            volume_of(m),
            m.created_at.clone(),
            m.updated_at.clone(),
            group,
            size,
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
    fn table_has_flyctl_columns() {
        let mut m = machine("1857156b526dd8", "aged-thunder-7371", MachineState::Stopped);
        m.checks = serde_json::from_value(serde_json::json!([
            {"name": "http", "status": "passing", "output": "ok"},
            {"name": "role", "status": "warning", "output": "primary"}
        ]))
        .unwrap();
        if let Some(c) = m.config.as_mut() {
            c.guest = Some(hangar_api::MachineGuest {
                cpu_kind: "shared".into(),
                cpus: 2,
                memory_mb: 512,
                ..Default::default()
            });
            c.metadata = Some([("fly_process_group".to_string(), "web".to_string())].into());
        }
        let out = machines_table(&[m]).render();
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .split("  ")
            .filter(|s| !s.is_empty())
            .map(str::trim)
            .collect();
        assert_eq!(
            header,
            [
                "ID",
                "NAME",
                "STATE",
                "CHECKS",
                "REGION",
                "ROLE",
                "IMAGE",
                "IP ADDRESS",
                "VOLUME",
                "CREATED",
                "LAST UPDATED",
                "PROCESS GROUP",
                "SIZE"
            ]
        );
        let row = lines.next().unwrap();
        for cell in [
            "1857156b526dd8",
            "aged-thunder-7371",
            "stopped",
            "nginx:latest",
            "fdaa:0:18:a7b:196:e274:9ce1:2",
            "vol_9vw681egy1jj5xm4",
            "2023-11-08T01:52:30Z",
            " 1/2 ",
            " primary ",
            " web ",
            "shared-cpu-2x:512MB",
        ] {
            assert!(row.contains(cell), "{row}");
        }
    }
}
