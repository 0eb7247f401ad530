//! `hangar machine leases view|clear`.

use anyhow::{Context, Result};
use clap::Subcommand;
use hangar_api::LeaseResponse;
use hangar_client::ClientError;

use super::Ctx;
use crate::output::{print_json, unix_secs_rfc3339, Table};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum LeasesCommand {
    /// Show the leases held on machines
    #[command(after_help = "Examples:\n  \
        hangar machine leases view            # every machine of the app\n  \
        hangar m leases view 1857156b526dd8 --json")]
    View {
        /// Machine ids or names (default: every machine of the app)
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        /// Print the leases as JSON, keyed by machine id
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Release leases held on machines
    #[command(after_help = "Examples:\n  \
        hangar machine leases clear 1857156b526dd8\n  \
        hangar m leases clear                 # the app's only machine, or pick on a terminal")]
    Clear {
        /// Machine ids or names (default: the app's only machine; on a terminal, pick)
        #[arg(value_name = "ID")]
        ids: Vec<String>,
    },
}

pub async fn run(ctx: &Ctx<'_>, cmd: LeasesCommand) -> Result<()> {
    match cmd {
        LeasesCommand::View { ids, json } => view(ctx, &ids, json).await,
        LeasesCommand::Clear { ids } => clear(ctx, &ids).await,
    }
}

/// The machines `leases view` shows: those named, or all of the app's.
async fn targets(ctx: &Ctx<'_>, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(ctx.list().await?.into_iter().map(|m| m.id).collect());
    }
    ctx.resolve_many(ids).await
}

async fn view(ctx: &Ctx<'_>, named: &[String], json: bool) -> Result<()> {
    let ids = targets(ctx, named).await?;
    let mut found: Vec<(String, serde_json::Value)> = Vec::new();
    for id in ids {
        let path = format!(
            "/v1/apps/{}/machines/{}/lease",
            hangar_client::encode(ctx.app),
            hangar_client::encode(&id)
        );
        // Untyped so --json shows exactly what the API returned.
        match ctx.client.get(path).send::<serde_json::Value>().await {
            Ok(lease) => found.push((id, lease)),
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(e).with_context(|| format!("failed to get the lease of machine {id}"))
            }
        }
    }
    if json {
        let map: serde_json::Map<String, serde_json::Value> = found.into_iter().collect();
        return print_json(&serde_json::Value::Object(map));
    }
    if found.is_empty() {
        match named {
            [] => println!("No leases on the machines of app {}", ctx.app),
            _ => println!("No leases found"),
        }
        return Ok(());
    }
    let mut table = Table::new(["MACHINE ID", "OWNER", "DESCRIPTION", "EXPIRES AT", "NONCE"]);
    for (id, raw) in found {
        let lease: LeaseResponse = serde_json::from_value(raw)
            .with_context(|| format!("unexpected lease JSON for machine {id}"))?;
        let d = lease.data;
        table.row([
            id,
            d.owner,
            d.description,
            unix_secs_rfc3339(d.expires_at),
            d.nonce,
        ]);
    }
    println!("Machine leases\n");
    print!("{}", table.render());
    Ok(())
}

async fn clear(ctx: &Ctx<'_>, named: &[String]) -> Result<()> {
    // Clearing is not done to every machine by default: a lease protects work in progress.
    for id in ctx.resolve_many(named).await? {
        let lease = match ctx.client.get_lease(ctx.app, &id).await {
            Ok(lease) => lease,
            Err(e) if e.is_not_found() => {
                println!("No lease on machine {id}");
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to get the lease of machine {id}"))
            }
        };
        match ctx
            .client
            .release_lease(ctx.app, &id, &lease.data.nonce)
            .await
        {
            Ok(()) => println!("Cleared the lease on machine {id}"),
            // Expired between the GET and the DELETE: the goal is reached anyway.
            Err(e) if e.is_not_found() => println!("No lease on machine {id}"),
            Err(e) => return Err(lease_clear_error(e, &id)),
        }
    }
    Ok(())
}

fn lease_clear_error(e: ClientError, id: &str) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("failed to clear the lease on machine {id}"))
}
