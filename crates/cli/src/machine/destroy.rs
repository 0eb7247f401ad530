//! `hangar machine destroy|rm|remove`.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_api::MachineState;

use super::Ctx;

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct DestroyArgs {
    /// Machine ids or names (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Kill and destroy machines that are still running
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Destroy every active machine running this image (`repository:tag`, as `list` shows it)
    #[arg(short = 'i', long, value_name = "IMAGE", conflicts_with = "ids")]
    pub image: Option<String>,
    /// Do not ask before destroying the machines --image selects
    #[arg(short = 'y', long, requires = "image")]
    pub yes: bool,
}

/// States flyctl destroys without `--force` (reference 5.1).
pub fn destroyable_without_force(state: MachineState) -> bool {
    matches!(state, MachineState::Stopped | MachineState::Suspended)
}

/// Whether machine `m` runs `image` as flyctl's `--image` means it: `repository:tag` (with the
/// `fly.version` label in parentheses when there is one), or the configured image as written.
fn runs_image(m: &hangar_api::Machine, image: &str) -> bool {
    if let Some(r) = &m.image_ref {
        let short = format!("{}:{}", r.repository, r.tag);
        let with_version = r
            .labels
            .get("fly.version")
            .map(|v| format!("{short} ({v})"));
        if image == short
            || with_version.as_deref() == Some(image)
            || image == format!("{}/{short}", r.registry)
        {
            return true;
        }
    }
    m.config
        .as_ref()
        .and_then(|c| c.image.as_deref())
        .is_some_and(|i| i == image)
}

/// The machines `--image` selects, confirmed by the user.
async fn by_image(ctx: &Ctx<'_>, image: &str, yes: bool) -> Result<Vec<String>> {
    let ids: Vec<String> = ctx
        .list()
        .await?
        .into_iter()
        .filter(|m| m.state != MachineState::Destroyed && runs_image(m, image))
        .map(|m| m.id)
        .collect();
    if ids.is_empty() || yes {
        return Ok(ids);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "confirmation required but stdin is not a terminal; pass --yes to destroy {} machines",
            ids.len()
        );
    }
    let question = format!(
        "{} Machines ({}) will be destroyed, continue?",
        ids.len(),
        ids.join(",")
    );
    if crate::apps::confirm(&question)? {
        Ok(ids)
    } else {
        Ok(Vec::new())
    }
}

pub async fn run(ctx: &Ctx<'_>, args: DestroyArgs) -> Result<()> {
    let force = args.force;
    let ids = match args.image.as_deref().map(str::trim) {
        Some(image) if !image.is_empty() => by_image(ctx, image, args.yes).await?,
        Some(_) => {
            bail!("--image needs a value (repository:tag, as `hangar machine list` shows it)")
        }
        None => ctx.resolve_many(&args.ids).await?,
    };
    if ids.is_empty() {
        println!("No machine to destroy, exiting");
        return Ok(());
    }
    // Every machine is checked before any is destroyed: no half-done batch.
    let mut machines = Vec::with_capacity(ids.len());
    for id in &ids {
        let machine = ctx.get(id).await?;
        if !force && !destroyable_without_force(machine.state) {
            bail!(
                "machine {id} is in a {} state and cannot be destroyed since it is not stopped, either stop it first or use the --force flag",
                machine.state
            );
        }
        machines.push(machine);
    }
    for machine in machines {
        let id = machine.id.as_str();
        println!(
            "machine {id} was found and is currently in {} state, attempting to destroy...",
            machine.state
        );
        ctx.with_lease(id, "destroy", |nonce| async move {
            ctx.client
                .delete_machine(ctx.app, id, force, Some(&nonce))
                .await
                .with_context(|| format!("failed to destroy machine {id}"))
        })
        .await?;
        println!("{id} has been destroyed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idle_states_without_force() {
        for ok in ["stopped", "suspended"] {
            assert!(destroyable_without_force(ok.parse().unwrap()), "{ok}");
        }
        for refused in [
            "started",
            "starting",
            "stopping",
            "replacing",
            "destroying",
            "created",
            "failed",
        ] {
            assert!(
                !destroyable_without_force(refused.parse().unwrap()),
                "{refused}"
            );
        }
    }
}
