//! `hangar status`: an app and its machines by process group, with release versions and
//! checks (flyctl's `fly status`).

use anyhow::{Context, Result};
use clap::Args;
use hangar_client::Client;

use crate::app_name::AppArgs;
use crate::output::Table;

#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "Examples:\n  hangar status -a my-app")]
pub struct StatusArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Print the machines as JSON
    #[arg(short = 'j', long)]
    pub json: bool,
}

pub async fn run(client: &Client, args: StatusArgs) -> Result<()> {
    let app = args.app.resolve()?;
    let info = client
        .get_app(&app)
        .await
        .with_context(|| format!("failed to get app {app}"))?;
    let mut machines = client
        .list_machines(&app, &Default::default())
        .await
        .with_context(|| format!("failed to list the machines of app {app}"))?;
    let meta = |m: &hangar_api::Machine, k: &str| {
        m.config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .and_then(|md| md.get(k).cloned())
            .unwrap_or_default()
    };
    machines.sort_by_key(|m| (meta(m, "fly_process_group"), m.id.clone()));
    if args.json {
        return crate::output::print_json(&serde_json::to_value(&machines)?);
    }
    println!(
        "App\n  Name     = {}\n  Owner    = {}\n",
        info.name, info.organization.slug
    );
    if machines.is_empty() {
        println!("No machines are deployed (hangar deploy, or hangar machine run)");
        return Ok(());
    }
    let mut table = Table::new([
        "PROCESS",
        "ID",
        "VERSION",
        "REGION",
        "STATE",
        "ROLE",
        "CHECKS",
        "LAST UPDATED",
    ]);
    for m in &machines {
        let checks = m.checks.clone().unwrap_or_default();
        let passing = checks.iter().filter(|c| c.status == "passing").count();
        let checks = if checks.is_empty() {
            String::new()
        } else {
            format!("{} total, {passing} passing", checks.len())
        };
        let version = meta(m, "fly_release_version");
        let role = if m
            .config
            .as_ref()
            .and_then(|c| c.standbys.as_ref())
            .is_some_and(|s| !s.is_empty())
        {
            "standby"
        } else {
            ""
        };
        table.row([
            meta(m, "fly_process_group"),
            m.id.clone(),
            if version.is_empty() {
                String::new()
            } else {
                version
            },
            m.region.clone(),
            m.state.to_string(),
            role.to_string(),
            checks,
            m.updated_at.clone(),
        ]);
    }
    println!("Machines");
    print!("{}", table.render());
    Ok(())
}
