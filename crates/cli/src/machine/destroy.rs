//! `hangar machine destroy|rm|remove`.

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
}

/// States flyctl destroys without `--force` (reference 5.1, plus the never-started and broken
/// states, which have nothing running to lose).
pub fn destroyable_without_force(state: MachineState) -> bool {
    matches!(
        state,
        MachineState::Stopped
            | MachineState::Suspended
            | MachineState::Created
            | MachineState::Failed
    )
}

pub async fn run(ctx: &Ctx<'_>, args: DestroyArgs) -> Result<()> {
    let force = args.force;
    for id in ctx.resolve_many(&args.ids).await? {
        let id = id.as_str();
        let machine = ctx.get(id).await?;
        if !force && !destroyable_without_force(machine.state) {
            bail!(
                "machine {id} is in a {} state and cannot be destroyed since it is not stopped, either stop it first or use the --force flag",
                machine.state
            );
        }
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
        for ok in ["stopped", "suspended", "created", "failed"] {
            assert!(destroyable_without_force(ok.parse().unwrap()), "{ok}");
        }
        for refused in ["started", "starting", "stopping", "replacing", "destroying"] {
            assert!(
                !destroyable_without_force(refused.parse().unwrap()),
                "{refused}"
            );
        }
    }
}
