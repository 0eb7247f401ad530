//! `hangar machine update` (flyctl `fly machine update`): lease, re-read, apply the flags onto
//! the current config, show the diff, confirm, POST with the nonce, wait for `settled`.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_api::{CreateMachineRequest, MachineConfig};

use super::config_builder::{build_config, split_words, BuildOptions, ConfigFlags};
use super::wait::{parse_wait_timeout, wait_for};
use super::{no_runtime, Ctx};

#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateArgs {
    /// Machine id or name (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// New image
    #[arg(short = 'i', long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub build: crate::build::BuildFlags,
    /// New command (shell words) replacing init.cmd; an empty string clears it
    #[arg(short = 'C', long, value_name = "COMMAND", allow_hyphen_values = true)]
    pub command: Option<String>,
    /// Do not start the machine after the update
    #[arg(long)]
    pub skip_start: bool,
    /// Do not wait for the machine's health checks to pass after the update
    #[arg(long)]
    pub skip_health_checks: bool,
    /// Apply without asking for confirmation
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// How long to wait for the machine to settle, e.g. 30s, 5m
    #[arg(short = 'w', long, value_name = "DURATION", default_value = "5m", value_parser = parse_wait_timeout)]
    pub wait_timeout: Duration,
    #[command(flatten)]
    pub config: ConfigFlags,
}

/// The new config for `update` flags applied onto `current` (pure apart from local files).
pub fn updated_config(args: &UpdateArgs, current: &MachineConfig) -> Result<MachineConfig> {
    let command = match &args.command {
        Some(c) => Some(split_words("--command", c)?),
        None => None,
    };
    build_config(
        &args.config,
        &BuildOptions {
            base: Some(current.clone()),
            updating: true,
            rm: false,
            image: args.image.clone(),
            command,
            shell: false,
        },
    )
}

pub(crate) async fn run(ctx: &Ctx<'_>, mut args: UpdateArgs) -> Result<()> {
    let id = ctx.resolve_opt(args.id.as_deref()).await?;
    // --dockerfile (or --image .) builds the working directory first, as flyctl.
    if let Some(source) = crate::build::build_source(args.image.as_deref(), &args.build)? {
        args.image =
            Some(crate::build::build_image(ctx.client, ctx.app, &source, &args.build).await?);
    }
    let id = id.as_str();
    let args = &args;
    let version = ctx
        .with_lease(id, "update", |nonce| async move {
            let machine = ctx.get(id).await?;
            let current = machine.config.clone().unwrap_or_default();
            let mut new = updated_config(args, &current)?;
            crate::volumes::resolve_volume_names(ctx.client, ctx.app, &mut new, Some(id)).await?;
            let old_json = pretty(&current)?;
            let new_json = pretty(&new)?;
            if old_json == new_json {
                println!("No changes to apply to machine {id}");
                return Ok(None);
            }
            println!("Configuration changes to be applied to machine {id} ({}):\n", machine.name);
            print!("{}", unified_diff(&old_json, &new_json));
            if !args.yes {
                if !std::io::stdin().is_terminal() {
                    bail!("confirmation required but stdin is not a terminal; pass --yes/-y to apply the update");
                }
                if !crate::apps::confirm("Apply changes?")? {
                    bail!("update of machine {id} cancelled");
                }
            }
            let skip_launch =
                args.skip_start || new.standbys.as_ref().is_some_and(|s| !s.is_empty());
            let req = CreateMachineRequest {
                config: new,
                name: Some(machine.name.clone()),
                region: Some(machine.region.clone()),
                skip_launch,
                current_version: Some(machine.instance_id.clone()),
                ..Default::default()
            };
            println!("Updating machine {id}");
            let updated = ctx
                .client
                .update_machine(ctx.app, id, &req, Some(&nonce))
                .await
                .map_err(|e| no_runtime(e, || format!("could not update machine {id}")))?;
            let state = wait_for(ctx, id, &updated.instance_id, "settled", args.wait_timeout)
                .await
                .context("the update was applied but the machine did not settle")?;
            Ok(Some(state))
        })
        .await?;
    use hangar_api::MachineState;
    match version {
        // As flyctl: an update that leaves the machine failed is an error.
        Some(MachineState::Failed) => bail!(
            "machine {id} was updated but failed to start; see hangar logs -a {} -i {id}",
            ctx.app
        ),
        Some(state) => {
            if state == MachineState::Started && !args.skip_health_checks {
                super::run::watch_checks(ctx, id).await?;
            }
            println!("Machine {id} updated successfully ({state})");
        }
        None => {}
    }
    Ok(())
}

fn pretty(config: &MachineConfig) -> Result<String> {
    let mut s = serde_json::to_string_pretty(config).context("cannot encode the machine config")?;
    s.push('\n');
    Ok(s)
}

/// A unified-style diff of two texts, line by line: unchanged lines indented by a space,
/// removed lines with `-`, added lines with `+`.
pub fn unified_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // LCS table; configs are a few hundred lines at most.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::from("--- current\n+++ new\n");
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_lines() {
        let d = unified_diff("a\nb\nc\n", "a\nx\nc\nd\n");
        assert_eq!(d, "--- current\n+++ new\n a\n-b\n+x\n c\n+d\n");
        assert_eq!(unified_diff("", "z"), "--- current\n+++ new\n+z\n");
    }
}
