//! `hangar machine start|stop|cordon|uncordon`: leased mutations of one or more machines.

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_api::signal::STOP_SIGNALS;
use hangar_api::{GoDuration, Signal, StopRequest};

use super::Ctx;

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct IdsArgs {
    /// Machine ids or names (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
}

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct StopArgs {
    /// Machine ids or names (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Signal to stop the main process with (default: the machine's stop_config, else SIGINT)
    #[arg(short = 's', long, value_name = "SIGNAL", value_parser = parse_stop_signal)]
    pub signal: Option<Signal>,
    /// Seconds to wait after the signal before killing the machine
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Wait this long for each machine to reach `stopped`, e.g. 30s, 5m
    #[arg(short = 'w', long, value_name = "DURATION", value_parser = super::wait::parse_wait_timeout)]
    pub wait_timeout: Option<std::time::Duration>,
}

/// Accepts `SIGTERM`, `term` or a number, limited to the signals the stop endpoint takes.
pub fn parse_stop_signal(s: &str) -> Result<Signal, String> {
    let sig = Signal::parse(s).map_err(|e| e.to_string())?;
    if !sig.is_one_of(STOP_SIGNALS) {
        return Err(format!(
            "{sig} cannot stop a machine; use one of {}",
            STOP_SIGNALS.join(", ")
        ));
    }
    Ok(sig)
}

pub async fn start(ctx: &Ctx<'_>, args: IdsArgs) -> Result<()> {
    for id in ctx.resolve_many(&args.ids).await? {
        let id = id.as_str();
        println!("Sending start signal to {id}...");
        let resp = ctx
            .with_lease(id, "start", |nonce| async move {
                ctx.client
                    .start_machine(ctx.app, id, Some(&nonce))
                    .await
                    .with_context(|| format!("could not start machine {id}"))
            })
            .await?;
        if resp.migrated {
            println!("{id} has been started (migrated to {})", resp.new_host);
        } else {
            println!("{id} has been started");
        }
    }
    Ok(())
}

pub async fn stop(ctx: &Ctx<'_>, args: StopArgs) -> Result<()> {
    let req = StopRequest {
        signal: args.signal,
        timeout: args.timeout.map(GoDuration::from_secs),
    };
    for id in ctx.resolve_many(&args.ids).await? {
        let id = id.as_str();
        let req = &req;
        println!("Sending kill signal to machine {id}...");
        let (resp, version) = ctx
            .with_lease(id, "stop", |nonce| async move {
                let version = ctx.get(id).await?.instance_id;
                let resp = ctx
                    .client
                    .stop_machine(ctx.app, id, req, Some(&nonce))
                    .await
                    .with_context(|| format!("could not stop machine {id}"))?;
                Ok((resp, version))
            })
            .await?;
        if !resp.ok {
            bail!("could not stop machine {id}: the daemon did not confirm the stop");
        }
        if let Some(timeout) = args.wait_timeout {
            super::wait::wait_for(ctx, id, &version, "stopped", timeout).await?;
        }
        println!("{id} has been successfully stopped");
    }
    Ok(())
}

/// `cordon` (`on = true`) or `uncordon`.
pub async fn cordon(ctx: &Ctx<'_>, args: IdsArgs, on: bool) -> Result<()> {
    let verb = if on { "cordon" } else { "uncordon" };
    for id in ctx.resolve_many(&args.ids).await? {
        let id = id.as_str();
        ctx.with_lease(id, verb, |nonce| async move {
            let result = if on {
                ctx.client.cordon_machine(ctx.app, id, Some(&nonce)).await
            } else {
                ctx.client.uncordon_machine(ctx.app, id, Some(&nonce)).await
            };
            result.with_context(|| format!("could not {verb} machine {id}"))
        })
        .await?;
        println!("Machine {id} {verb}ed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert_eq!(parse_stop_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_stop_signal("SIGKILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_stop_signal("2").unwrap(), Signal::SIGINT);
        assert!(parse_stop_signal("SIGSEGV").is_err());
        assert!(parse_stop_signal("bogus").is_err());
    }
}
