//! `hangar services list`: an app's edge ports, where the proxy listens for them, and the
//! machines behind each (flyctl's `fly services list`, with Hangar's proxy state).

use anyhow::{Context, Result};
use clap::Subcommand;
use hangar_client::Client;
use serde_json::Value;

use crate::app_name::AppArgs;
use crate::output::{print_json, Table};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum ServicesCommand {
    /// List the app's services: edge ports, handlers, listeners and machines
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  \
        hangar services list -a my-app\n  \
        hangar services list -a my-app --json"
    )]
    List {
        #[command(flatten)]
        app: AppArgs,
        /// Print the services as JSON
        #[arg(short = 'j', long)]
        json: bool,
    },
}

pub async fn run(client: &Client, cmd: ServicesCommand) -> Result<()> {
    match cmd {
        ServicesCommand::List { app, json } => {
            let app = app.resolve()?;
            let services: Value = client
                .get(format!("/hangar/v1/apps/{app}/services"))
                .send()
                .await
                .with_context(|| format!("failed to list the services of app {app}"))?;
            if json {
                return print_json(&services);
            }
            let mut table = Table::new([
                "PORT",
                "HANDLERS",
                "INTERNAL PORT",
                "LISTENING ON",
                "MACHINES",
            ]);
            for s in services.as_array().into_iter().flatten() {
                let list = |v: &Value| {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let machines = s["machines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        let mark = if m["routable"] == true {
                            ""
                        } else {
                            " (out of rotation)"
                        };
                        format!(
                            "{} {} load {}{mark}",
                            m["id"].as_str().unwrap_or_default(),
                            m["state"].as_str().unwrap_or_default(),
                            m["load"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let listening = list(&s["listening"]);
                table.row([
                    s["port"].as_str().unwrap_or_default().to_string(),
                    list(&s["handlers"]),
                    s["internal_port"].to_string(),
                    if listening.is_empty() {
                        "-".to_string()
                    } else {
                        listening
                    },
                    machines,
                ]);
            }
            if table.is_empty() {
                println!("App {app} has no services.");
            } else {
                print!("{}", table.render());
            }
            Ok(())
        }
    }
}
