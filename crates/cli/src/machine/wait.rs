//! `hangar machine wait`: repeated server-side waits (each at most 60 s, the API's limit)
//! until the overall `--wait-timeout` runs out.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_client::{ClientError, StatusCode, WaitOptions};
use tokio::time::Instant;

use super::Ctx;

/// The server caps one wait at 60 s (reference 3.3).
const MAX_WAIT_PER_REQUEST: u64 = 60;
/// Like flyctl: retry 429, 5xx and dropped connections a few times before giving up.
const MAX_TRANSIENT_RETRIES: u32 = 3;

pub const WAIT_STATES: &[&str] = &[
    "started",
    "stopped",
    "suspended",
    "destroyed",
    "failed",
    "settled",
];

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct WaitArgs {
    /// Machine id or name (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// State to wait for; `settled` means any non-transient state
    #[arg(long, value_name = "STATE", default_value = "settled",
          value_parser = clap::builder::PossibleValuesParser::new(WAIT_STATES))]
    pub state: String,
    /// How long to wait in total, e.g. 30s, 5m, 1m30s (a bare number is seconds)
    #[arg(short = 'w', long, value_name = "DURATION", default_value = "5m", value_parser = parse_wait_timeout)]
    pub wait_timeout: Duration,
}

/// A Go-style duration (`5m`, `1m30s`) or a whole number of seconds.
pub fn parse_wait_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => hangar_api::duration::parse_go_duration(s).map_err(|e| e.to_string())?,
    };
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(d)
}

/// Seconds for the next server-side wait: what is left, rounded up, within 1..=60.
fn next_wait_secs(remaining: Duration) -> u64 {
    let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
    secs.clamp(1, MAX_WAIT_PER_REQUEST)
}

fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        ClientError::Api { status, .. } => {
            *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
        }
        _ => false,
    }
}

pub async fn run(ctx: &Ctx<'_>, args: WaitArgs) -> Result<()> {
    let id = ctx.resolve_opt(args.id.as_deref()).await?;
    let version = ctx.get(&id).await?.instance_id;
    println!(
        "Waiting for machine {id} to reach the {} state...",
        args.state
    );
    let state = wait_for(ctx, &id, &version, &args.state, args.wait_timeout).await?;
    println!("Machine {id} reached the {state} state");
    Ok(())
}

/// Waits (in rounds of at most 60 s) until machine `id` reaches `state` or `timeout` passes.
/// Follows the machine to its new version if it is updated meanwhile; retries transient errors.
pub(crate) async fn wait_for(
    ctx: &Ctx<'_>,
    id: &str,
    version: &str,
    state: &str,
    timeout: Duration,
) -> Result<hangar_api::MachineState> {
    let deadline = Instant::now() + timeout;
    let mut version = version.to_string();
    let mut transient_failures = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!(
                "timed out after {} waiting for machine {id} to reach the {state} state (raise --wait-timeout)",
                hangar_api::duration::format_go_duration(timeout),
            );
        }
        let opts = WaitOptions {
            states: vec![state.to_string()],
            timeout_secs: Some(next_wait_secs(remaining)),
            version: Some(version.clone()),
            from_event_id: None,
        };
        match ctx.client.wait_machine(ctx.app, id, &opts).await {
            Ok(resp) => return Ok(resp.state),
            // 408: this round's server-side timeout passed; the overall deadline decides.
            Err(e) if e.is_status(StatusCode::REQUEST_TIMEOUT) => {}
            // The machine was updated while we waited: follow the new version (flyctl retries these).
            Err(e)
                if e.api_message()
                    .is_some_and(|m| m.contains("currently replaced")) =>
            {
                version = ctx.get(id).await?.instance_id;
            }
            Err(e) if is_transient(&e) && transient_failures < MAX_TRANSIENT_RETRIES => {
                transient_failures += 1;
                let pause =
                    Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("failed waiting for machine {id} to reach the {state} state")
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timeouts() {
        assert_eq!(parse_wait_timeout("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_wait_timeout("1m30s").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(parse_wait_timeout("45").unwrap(), Duration::from_secs(45));
        assert!(parse_wait_timeout("0").is_err());
        assert!(parse_wait_timeout("soon").is_err());
        assert!(parse_wait_timeout("-5s").is_err());
    }

    #[test]
    fn clamps_each_round() {
        assert_eq!(next_wait_secs(Duration::from_secs(300)), 60);
        assert_eq!(next_wait_secs(Duration::from_millis(1500)), 2);
        assert_eq!(next_wait_secs(Duration::from_millis(1)), 1);
    }
}
