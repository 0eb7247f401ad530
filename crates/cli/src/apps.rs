//! `hangar apps …` (flyctl `fly apps`).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hangar_api::{CreateAppRequest, ListAppsResponse};
use hangar_client::Client;

use crate::output::{print_json, Table};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum AppsCommand {
    /// Create a new app
    #[command(after_help = "Examples:\n  \
        hangar apps create my-app\n  \
        hangar apps create my-app --org personal --network my-net")]
    Create {
        /// Name of the new app
        name: String,
        /// Organization slug
        #[arg(short = 'o', long, value_name = "SLUG", default_value = "personal")]
        org: String,
        /// Custom 6PN network, isolating the app from the rest of the organization
        #[arg(long, value_name = "NAME")]
        network: Option<String>,
    },
    /// List apps
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  \
        hangar apps list\n  \
        hangar apps ls --json"
    )]
    List {
        /// Organization slug
        #[arg(short = 'o', long, value_name = "SLUG", default_value = "personal")]
        org: String,
        /// Print the apps as JSON
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Permanently destroy an app and its machines
    #[command(visible_aliases = ["delete", "rm"], after_help = "Examples:\n  \
        hangar apps destroy my-app\n  \
        hangar apps destroy my-app --yes")]
    Destroy {
        /// Name of the app
        name: String,
        /// Do not ask for confirmation
        #[arg(short = 'y', long)]
        yes: bool,
        /// Accepted for compatibility: the app's machines are always destroyed with it
        #[arg(short = 'f', long, hide = true)]
        force: bool,
    },
}

pub async fn run(client: &Client, cmd: AppsCommand) -> Result<()> {
    match cmd {
        AppsCommand::Create { name, org, network } => {
            let req = CreateAppRequest {
                name: Some(name.clone()),
                org_slug: Some(org),
                network,
                ..Default::default()
            };
            client
                .create_app(&req)
                .await
                .with_context(|| format!("failed to create app {name}"))?;
            println!("New app created: {name}");
        }
        AppsCommand::List { org, json } => {
            if json {
                let body: serde_json::Value = client
                    .get("/v1/apps")
                    .query("org_slug", &org)
                    .send()
                    .await
                    .context("failed to list apps")?;
                // flyctl's `apps list --json` prints the bare array of apps.
                let apps = body.get("apps").cloned().unwrap_or(body);
                return print_json(&apps);
            }
            let list = client
                .list_apps(&org)
                .await
                .context("failed to list apps")?;
            print!("{}", apps_table(&list).render());
        }
        AppsCommand::Destroy {
            name,
            yes,
            force: _,
        } => {
            if !yes
                && !confirm(&format!(
                    "Destroying an app is not reversible; its machines are destroyed with it.\nDestroy app {name}?"
                ))?
            {
                bail!("not destroying app {name}");
            }
            // As `fly apps destroy`: the app goes with its machines (the API alone refuses an
            // app that has machines unless asked with force=true).
            client
                .delete_app(&name, true)
                .await
                .with_context(|| format!("failed to destroy app {name}"))?;
            println!("Destroyed app {name}");
        }
    }
    Ok(())
}

pub fn apps_table(list: &ListAppsResponse) -> Table {
    let mut table = Table::new(["NAME", "OWNER", "STATUS", "LATEST DEPLOY"]);
    for app in &list.apps {
        // Hangar has no releases yet, so LATEST DEPLOY stays blank as for a never-deployed Fly app.
        table.row([
            app.name.as_str(),
            app.organization.slug.as_str(),
            app.status.as_str(),
            "",
        ]);
    }
    table
}

/// Asks for a line of text on the terminal (trimmed); refuses when stdin is not a terminal.
pub(crate) fn ask(question: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("an answer is required but stdin is not a terminal");
    }
    print!("{question}");
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer from stdin")?;
    Ok(answer.trim().to_string())
}

/// Asks a yes/no question on the terminal; refuses (rather than hangs or assumes yes) when
/// stdin is not a terminal.
pub(crate) fn confirm(question: &str) -> Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("confirmation required but stdin is not a terminal; pass --yes/-y");
    }
    print!("{question} (y/N) ");
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer from stdin")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::{App, Organization};

    #[test]
    fn table_columns() {
        let app = |name: &str, status: &str| App {
            id: "x".into(),
            name: name.into(),
            status: status.into(),
            network: String::new(),
            network_cidr: String::new(),
            internal_numeric_id: 1,
            machine_count: 0,
            volume_count: 0,
            organization: Organization {
                name: "Personal".into(),
                slug: "personal".into(),
                internal_numeric_id: 1,
            },
            created_at: 0,
            app_role: String::new(),
        };
        let list = ListAppsResponse {
            total_apps: 2,
            apps: vec![app("web", "deployed"), app("worker-long-name", "pending")],
        };
        assert_eq!(
            apps_table(&list).render(),
            "NAME              OWNER     STATUS    LATEST DEPLOY\n\
             web               personal  deployed\n\
             worker-long-name  personal  pending\n"
        );
    }
}
