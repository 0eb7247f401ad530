//! `hangar hosts list`: the hosts sharing the daemon's store (one on a single host), their
//! regions, what they offer and use, and their last heartbeat.

use anyhow::{Context, Result};
use clap::Subcommand;
use hangar_client::Client;
use serde_json::Value;

use crate::output::{print_json, Table};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum HostsCommand {
    /// List the hosts: region, capacity, what their machines use, last heartbeat, status
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  hangar hosts list\n  hangar hosts list --json"
    )]
    List {
        /// Print the hosts as JSON
        #[arg(short = 'j', long)]
        json: bool,
    },
}

pub async fn run(client: &Client, cmd: HostsCommand) -> Result<()> {
    match cmd {
        HostsCommand::List { json } => {
            let hosts: Value = client
                .get("/hangar/v1/hosts")
                .send()
                .await
                .context("failed to list the hosts")?;
            if json {
                return print_json(&hosts);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let mut table = Table::new([
                "ID",
                "REGION",
                "CPUS (USED)",
                "MEMORY MB (USED)",
                "DISK GB",
                "MACHINES",
                "LAST HEARTBEAT",
                "STATUS",
            ]);
            for h in hosts.as_array().into_iter().flatten() {
                let n = |k: &str| h[k].as_i64().unwrap_or(0);
                let mark = if h["this_host"] == true { " *" } else { "" };
                table.row([
                    format!("{}{mark}", h["id"].as_str().unwrap_or_default()),
                    h["region"].as_str().unwrap_or_default().to_string(),
                    format!("{} ({})", n("cpus"), n("used_cpus")),
                    format!("{} ({})", n("memory_mb"), n("used_memory_mb")),
                    n("disk_gb").to_string(),
                    n("machines").to_string(),
                    format!(
                        "{:.0}s ago",
                        (now - n("heartbeat_at")).max(0) as f64 / 1000.0
                    ),
                    h["status"].as_str().unwrap_or_default().to_string(),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
    }
}
