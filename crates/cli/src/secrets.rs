//! `hangar secrets`: flyctl's `fly secrets set|unset|list|import|deploy`. A set or unset without
//! `--stage` then updates the app's started machines with their own config, so they boot with
//! the new values (flyctl's restart-only deploy); stopped machines read them at their next start.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use hangar_api::{CreateMachineRequest, Machine, MachineState};
use hangar_client::Client;

use crate::app_name::AppArgs;
use crate::machine::{wait_for, Ctx};
use crate::output::{print_json, Table};

/// How long a redeployed machine may take to come back.
const REDEPLOY_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum SecretsCommand {
    /// Set one or more encrypted secrets (NAME=VALUE; NAME=- reads the value from stdin)
    #[command(after_help = "Examples:\n  \
        hangar secrets set -a my-app DATABASE_URL=postgres://db.internal/app\n  \
        openssl rand -hex 32 | hangar secrets set -a my-app SESSION_KEY=-\n  \
        hangar secrets set -a my-app TOKEN=abc --stage")]
    Set {
        #[command(flatten)]
        app: AppArgs,
        /// NAME=VALUE pairs
        #[arg(value_name = "NAME=VALUE", required = true)]
        pairs: Vec<String>,
        #[command(flatten)]
        deploy: DeployFlags,
    },
    /// Unset one or more secrets (names the app does not have are not an error)
    #[command(after_help = "Examples:\n  hangar secrets unset -a my-app OLD_TOKEN")]
    Unset {
        #[command(flatten)]
        app: AppArgs,
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
        #[command(flatten)]
        deploy: DeployFlags,
    },
    /// List secret names, digests and whether running machines have them yet (never values)
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  hangar secrets list -a my-app\n  hangar secrets list -a my-app --json"
    )]
    List {
        #[command(flatten)]
        app: AppArgs,
        /// Print the secrets as JSON
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Set secrets from NAME=VALUE lines on stdin (NAME="""…""" spans lines)
    #[command(after_help = "Examples:\n  hangar secrets import -a my-app < .env")]
    Import {
        #[command(flatten)]
        app: AppArgs,
        #[command(flatten)]
        deploy: DeployFlags,
    },
    /// Update the app's started machines so they boot with the current (staged) secrets
    #[command(after_help = "Examples:\n  hangar secrets deploy -a my-app")]
    Deploy {
        #[command(flatten)]
        app: AppArgs,
        /// Return once the updates are sent, without waiting for the machines
        #[arg(long)]
        detach: bool,
    },
}

#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployFlags {
    /// Store the change only; machines get it at their next start or `hangar secrets deploy`
    #[arg(long)]
    stage: bool,
    /// Return once the machine updates are sent, without waiting for them to start
    #[arg(long)]
    detach: bool,
}

pub async fn run(client: &Client, cmd: SecretsCommand) -> Result<()> {
    match cmd {
        SecretsCommand::Set { app, pairs, deploy } => {
            let app = app.resolve()?;
            let values = parse_pairs(&pairs, &mut std::io::stdin().lock())?;
            write(client, &app, values, &deploy).await
        }
        SecretsCommand::Unset { app, names, deploy } => {
            let app = app.resolve()?;
            for n in &names {
                hangar_api::check_secret_name(n).map_err(|e| anyhow!("{e}"))?;
            }
            let values = names.into_iter().map(|n| (n, None)).collect();
            write(client, &app, values, &deploy).await
        }
        SecretsCommand::Import { app, deploy } => {
            let app = app.resolve()?;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading NAME=VALUE lines from stdin")?;
            let values = parse_import(&text)?;
            if values.is_empty() {
                bail!("no NAME=VALUE lines on stdin");
            }
            write(client, &app, values, &deploy).await
        }
        SecretsCommand::List { app, json } => list(client, &app.resolve()?, json).await,
        SecretsCommand::Deploy { app, detach } => {
            let app = app.resolve()?;
            let machines = client
                .list_machines(&app, &Default::default())
                .await
                .with_context(|| format!("failed to list the machines of app {app}"))?;
            if machines.is_empty() {
                bail!("app {app} has no machines to deploy secrets to");
            }
            redeploy(client, &app, machines, None, detach).await
        }
    }
}

/// Sends the change, then (unless staged) updates the started machines.
async fn write(
    client: &Client,
    app: &str,
    values: BTreeMap<String, Option<String>>,
    flags: &DeployFlags,
) -> Result<()> {
    let resp = client
        .set_secrets(app, values)
        .await
        .with_context(|| format!("failed to change the secrets of app {app}"))?;
    if flags.stage {
        println!(
            "Secrets have been staged, but not set on machines. Deploy or update machines in this app for the secrets to take effect."
        );
        return Ok(());
    }
    let machines = client
        .list_machines(app, &Default::default())
        .await
        .with_context(|| format!("failed to list the machines of app {app}"))?;
    if machines.is_empty() {
        println!("Secrets are staged for the first deployment");
        return Ok(());
    }
    redeploy(client, app, machines, Some(resp.version), flags.detach).await
}

/// Which machines a secrets change restarts: started ones, except release-command machines
/// and scheduled ones (those read the new values at their next run).
fn redeployable(m: &Machine) -> bool {
    let Some(config) = &m.config else {
        return false;
    };
    let release_command = config
        .metadata
        .as_ref()
        .and_then(|md| md.get("fly_process_group"))
        .is_some_and(|g| g == "fly_app_release_command");
    m.state == MachineState::Started && !release_command && config.schedule.is_none()
}

/// flyctl's restart-only deploy: each started machine gets an update with its own config (and
/// `min_secrets_version`), one at a time, under its lease.
async fn redeploy(
    client: &Client,
    app: &str,
    machines: Vec<Machine>,
    min_secrets_version: Option<u64>,
    detach: bool,
) -> Result<()> {
    let targets: Vec<&Machine> = machines.iter().filter(|m| redeployable(m)).collect();
    let others = machines.len() - targets.len();
    if targets.is_empty() {
        println!(
            "No started machines to update; the {others} other machine(s) of app {app} get the secrets at their next start"
        );
        return Ok(());
    }
    let ctx = Ctx { client, app };
    let total = targets.len();
    for (i, m) in targets.into_iter().enumerate() {
        println!("Updating machine {} [{}/{total}]", m.id, i + 1);
        let req = CreateMachineRequest {
            config: m.config.clone().unwrap_or_default(),
            current_version: Some(m.instance_id.clone()),
            min_secrets_version,
            ..Default::default()
        };
        let updated = ctx
            .with_lease(&m.id, "secrets deploy", |nonce| async move {
                client
                    .update_machine(app, &m.id, &req, Some(&nonce))
                    .await
                    .with_context(|| format!("could not update machine {}", m.id))
            })
            .await?;
        if detach {
            continue;
        }
        let state = wait_for(
            &ctx,
            &m.id,
            &updated.instance_id,
            "started",
            REDEPLOY_TIMEOUT,
        )
        .await
        .with_context(|| format!("machine {} did not start again", m.id))?;
        println!("Machine {} is {state} with the new secrets", m.id);
    }
    if others > 0 {
        println!("{others} machine(s) not started get the secrets at their next start");
    }
    Ok(())
}

async fn list(client: &Client, app: &str, json: bool) -> Result<()> {
    let secrets = client
        .list_secrets(app, None)
        .await
        .with_context(|| format!("failed to list the secrets of app {app}"))?
        .secrets;
    let machines = client
        .list_machines(app, &Default::default())
        .await
        .with_context(|| format!("failed to list the machines of app {app}"))?;
    let boots: Vec<i64> = machines
        .iter()
        .filter(|m| m.state == MachineState::Started)
        .map(boot_time)
        .collect();
    let rows: Vec<(hangar_api::AppSecret, &str)> = secrets
        .into_iter()
        .map(|s| {
            let status = status(&s.updated_at, &boots);
            (s, status)
        })
        .collect();
    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(s, status)| {
                serde_json::json!({
                    "name": s.name, "digest": s.digest, "status": status,
                    "created_at": s.created_at, "updated_at": s.updated_at,
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(out));
    }
    let mut table = Table::new(["NAME", "DIGEST", "STATUS"]);
    for (s, status) in rows {
        table.row([s.name, s.digest, status.to_string()]);
    }
    print!("{}", table.render());
    Ok(())
}

/// When the machine's current run began: its newest event that left it started (unix ms).
fn boot_time(m: &Machine) -> i64 {
    m.events
        .iter()
        .flatten()
        .filter(|e| e.status == "started")
        .map(|e| e.timestamp)
        .max()
        .unwrap_or(0)
}

/// `Deployed` when every started machine booted after the secret's last change, `Staged` when
/// none did (or none runs), `Partial` in between (flyctl's column).
fn status(updated_at: &str, boots: &[i64]) -> &'static str {
    let Some(changed) =
        time::OffsetDateTime::parse(updated_at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
    else {
        return "Unknown";
    };
    let have = boots.iter().filter(|b| **b >= changed).count();
    match (have, boots.len()) {
        (_, 0) | (0, _) => "Staged",
        (h, n) if h == n => "Deployed",
        _ => "Partial",
    }
}

/// `NAME=VALUE` arguments; `NAME=-` reads that value from `stdin` (at most one may).
fn parse_pairs(pairs: &[String], stdin: &mut dyn Read) -> Result<BTreeMap<String, Option<String>>> {
    let mut values = BTreeMap::new();
    let mut stdin_used = false;
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("{pair:?}: secrets are given as NAME=VALUE"))?;
        hangar_api::check_secret_name(name).map_err(|e| anyhow!("{e}"))?;
        let value = if value == "-" {
            if stdin_used {
                bail!("only one secret can read its value from stdin (NAME=-)");
            }
            stdin_used = true;
            let mut buf = Vec::new();
            stdin
                .take(hangar_api::MAX_VALUE_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading the secret value from stdin")?;
            let text = String::from_utf8(buf)
                .map_err(|_| anyhow!("the value of {name} on stdin is not UTF-8 text"))?;
            // `echo value |` adds a newline nobody means as part of the value.
            text.strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text)
                .to_string()
        } else {
            value.to_string()
        };
        hangar_api::check_secret_value(name, &value).map_err(|e| anyhow!("{e}"))?;
        if values.insert(name.to_string(), Some(value)).is_some() {
            bail!("secret {name} is given twice");
        }
    }
    Ok(values)
}

/// `fly secrets import`'s input: `NAME=VALUE` per line, blank lines and `#` comments skipped,
/// `NAME="""` … `"""` for a value over several lines, surrounding double quotes dropped.
fn parse_import(text: &str) -> Result<BTreeMap<String, Option<String>>> {
    let mut values = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (name, value) = trimmed
            .split_once('=')
            .ok_or_else(|| anyhow!("line {}: expected NAME=VALUE", n + 1))?;
        let name = name.trim();
        hangar_api::check_secret_name(name).map_err(|e| anyhow!("line {}: {e}", n + 1))?;
        let value = if let Some(first) = value.strip_prefix("\"\"\"") {
            let mut parts = Vec::new();
            let mut rest = first.to_string();
            loop {
                if let Some(end) = rest.strip_suffix("\"\"\"") {
                    parts.push(end.to_string());
                    break;
                }
                parts.push(rest);
                rest = lines
                    .next()
                    .map(|(_, l)| l.to_string())
                    .ok_or_else(|| anyhow!("line {}: {name}'s \"\"\" is never closed", n + 1))?;
            }
            parts.join("\n")
        } else if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            value[1..value.len() - 1].to_string()
        } else {
            value.to_string()
        };
        hangar_api::check_secret_value(name, &value).map_err(|e| anyhow!("{e}"))?;
        values.insert(name.to_string(), Some(value));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_stdin() {
        let mut stdin: &[u8] = b"from stdin\n";
        let v = parse_pairs(&["A=1".into(), "B=-".into(), "C=x=y".into()], &mut stdin).unwrap();
        assert_eq!(v["A"].as_deref(), Some("1"));
        assert_eq!(v["B"].as_deref(), Some("from stdin"));
        assert_eq!(v["C"].as_deref(), Some("x=y"));
        let mut empty: &[u8] = b"";
        for bad in ["NOEQUALS", "1A=x", "A-B=x"] {
            assert!(parse_pairs(&[bad.into()], &mut empty).is_err(), "{bad}");
        }
        assert!(parse_pairs(&["A=1".into(), "A=2".into()], &mut empty).is_err());
    }

    #[test]
    fn import_lines() {
        let v = parse_import(
            "# comment\n\nA=1\nB=\"quoted value\"\nC=\"\"\"line one\nline two\"\"\"\nD=\n",
        )
        .unwrap();
        assert_eq!(v["A"].as_deref(), Some("1"));
        assert_eq!(v["B"].as_deref(), Some("quoted value"));
        assert_eq!(v["C"].as_deref(), Some("line one\nline two"));
        assert_eq!(v["D"].as_deref(), Some(""));
        assert!(parse_import("A=\"\"\"never closed\n").is_err());
        assert!(parse_import("just words\n").is_err());
    }

    #[test]
    fn status_compares_boots_with_the_change() {
        let t = "2026-01-01T00:00:10Z";
        let at = 1_767_225_610_000; // the same instant in ms
        assert_eq!(status(t, &[]), "Staged");
        assert_eq!(status(t, &[at - 1]), "Staged");
        assert_eq!(status(t, &[at + 5, at - 1]), "Partial");
        assert_eq!(status(t, &[at, at + 1]), "Deployed");
        assert_eq!(status("garbage", &[at]), "Unknown");
    }
}
