//! `hangar machine restart|suspend|kill|exec`: commands that act on a machine's processes.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hangar_api::{ExecRequest, Signal};
use hangar_client::RestartOptions;

use super::config_builder::split_words;
use super::wait::{parse_wait_timeout, wait_for};
use super::Ctx;

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct RestartArgs {
    /// Machine ids or names (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Signal to stop the main process with
    #[arg(short = 's', long, value_name = "SIGNAL", value_parser = parse_signal)]
    pub signal: Option<Signal>,
    /// Seconds to wait for the process to exit before killing it
    #[arg(long, value_name = "SECS")]
    pub time: Option<u64>,
    /// Force the stop
    #[arg(long)]
    pub force: bool,
    /// Do not wait for the machine's health checks to pass after the restart
    #[arg(long)]
    pub skip_health_checks: bool,
}

/// How long `restart` waits for a machine to be started again (flyctl's 5 minutes).
const RESTART_WAIT: Duration = Duration::from_secs(300);

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct SuspendArgs {
    /// Machine ids or names (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Wait this long for each machine to reach `suspended`, e.g. 30s, 5m
    #[arg(short = 'w', long, value_name = "DURATION", value_parser = parse_wait_timeout)]
    pub wait_timeout: Option<Duration>,
}

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct KillArgs {
    /// Machine id or name (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub id: Option<String>,
}

#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecArgs {
    /// Machine id or name, then the command (one shell-words string or several words)
    #[arg(value_name = "[ID] COMMAND", required = true, num_args = 1..=2)]
    pub args: Vec<String>,
    /// Container to run the command in (multi-container machines)
    #[arg(long, value_name = "NAME", conflicts_with = "no_container")]
    pub container: Option<String>,
    /// Run the command on the machine itself rather than in a named container (a machine
    /// built from one image only; multi-container machines need --container)
    #[arg(long)]
    pub no_container: bool,
    /// Seconds to let the command run
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<i64>,
    /// Print the result as JSON
    #[arg(short = 'j', long)]
    pub json: bool,
}

pub fn parse_signal(s: &str) -> Result<Signal, String> {
    Signal::parse(s).map_err(|e| e.to_string())
}

pub(crate) async fn restart(ctx: &Ctx<'_>, args: RestartArgs) -> Result<()> {
    let opts = RestartOptions {
        signal: args.signal.map(|s| s.to_string()),
        timeout_secs: args.time,
        force_stop: args.force,
    };
    for id in ctx.resolve_many(&args.ids).await? {
        let id = id.as_str();
        let opts = &opts;
        println!("Restarting machine {id}");
        ctx.with_lease(id, "restart", |nonce| async move {
            ctx.client
                .restart_machine(ctx.app, id, opts, Some(&nonce))
                .await
                .map_err(|e| super::no_runtime(e, || format!("could not restart machine {id}")))
        })
        .await?;
        // As flyctl: wait for the machine to be started again, then for its checks.
        let version = ctx.get(id).await?.instance_id;
        wait_for(ctx, id, &version, "started", RESTART_WAIT)
            .await
            .with_context(|| format!("machine {id} did not start again"))?;
        if !args.skip_health_checks {
            super::run::watch_checks(ctx, id).await?;
        }
        println!("Machine {id} restarted successfully!");
    }
    Ok(())
}

pub(crate) async fn suspend(ctx: &Ctx<'_>, args: SuspendArgs) -> Result<()> {
    for id in ctx.resolve_many(&args.ids).await? {
        let id = id.as_str();
        println!("Sending suspend signal to machine {id}...");
        let version = ctx
            .with_lease(id, "suspend", |nonce| async move {
                let m = ctx.get(id).await?;
                ctx.client
                    .suspend_machine(ctx.app, id, Some(&nonce))
                    .await
                    .with_context(|| format!("could not suspend machine {id}"))?;
                Ok(m.instance_id)
            })
            .await?;
        if let Some(timeout) = args.wait_timeout {
            wait_for(ctx, id, &version, "suspended", timeout).await?;
        }
        println!("{id} has been suspended");
    }
    Ok(())
}

pub(crate) async fn kill(ctx: &Ctx<'_>, args: KillArgs) -> Result<()> {
    let id = ctx.resolve_opt(args.id.as_deref()).await?;
    ctx.client
        .signal_machine(ctx.app, &id, 9, None)
        .await
        .with_context(|| format!("could not kill machine {id}"))?;
    println!("Kill signal has been sent to machine {id}");
    Ok(())
}

/// Splits `exec` arguments into the machine (when the first one names one) and the command.
fn split_exec_args(args: &[String]) -> (Option<&str>, &[String]) {
    match args {
        [first, rest @ ..] if !rest.is_empty() => (Some(first.as_str()), rest),
        _ => (None, args),
    }
}

/// The exec request body: `command` split into words, plus the deprecated `cmd` string.
pub fn exec_request(args: &ExecArgs) -> Result<(Option<String>, ExecRequest)> {
    let (id, words) = split_exec_args(&args.args);
    let (command, cmd) = match words {
        [one] => (split_words("exec command", one)?, one.clone()),
        many => (
            many.to_vec(),
            shlex::try_join(many.iter().map(String::as_str)).unwrap_or_else(|_| many.join(" ")),
        ),
    };
    let req = ExecRequest {
        command: Some(command),
        cmd: Some(cmd),
        container: args.container.clone(),
        machine: args.no_container.then_some(true),
        stdin: None,
        timeout: args.timeout,
    };
    Ok((id.map(str::to_string), req))
}

pub(crate) async fn exec(ctx: &Ctx<'_>, args: ExecArgs) -> Result<()> {
    let (id, req) = exec_request(&args)?;
    let id = ctx.resolve_opt(id.as_deref()).await?;
    let resp = ctx
        .client
        .exec_machine(ctx.app, &id, &req)
        .await
        .map_err(|e| {
            super::no_runtime(e, || format!("could not run the command on machine {id}"))
        })?;
    if args.json {
        crate::output::print_json(&serde_json::to_value(&resp)?)?;
    } else {
        if resp.exit_code != 0 {
            println!("Exit code: {}", resp.exit_code);
        }
        print!("{}", resp.stdout);
        let _ = std::io::stdout().flush();
        eprint!("{}", resp.stderr);
        for (stream, cut) in [
            ("stdout", resp.stdout_truncated),
            ("stderr", resp.stderr_truncated),
        ] {
            if cut {
                eprintln!("hangar: the command's {stream} was cut at 1 MiB (exec keeps no more; use `hangar machine console` for long output)");
            }
        }
    }
    if resp.exit_code != 0 {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        std::process::exit(i32::try_from(resp.exit_code).unwrap_or(1));
    }
    Ok(())
}
