//! Running one health check of one container run: wait out the grace period, then probe on
//! the interval (timers only, no polling) and feed each result to the supervisor.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;

use crate::spec::Probe;
use crate::state::Shared;
use crate::{exec, http};

/// Output kept per check result.
const MAX_OUTPUT: usize = 1024;
/// Floor for intervals so a zero interval cannot spin.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Runs check `k` of container `i`'s run `run`, handing each result to `report` (the
/// supervisor), which answers false once the run is over.
pub(crate) async fn run_check(
    state: Shared,
    i: usize,
    k: usize,
    report: impl Fn(bool, String) -> bool,
) {
    let Some(spec) = state
        .borrow()
        .containers
        .get(i)
        .and_then(|c| c.spec.healthchecks.get(k).cloned())
    else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(spec.grace_period_ms)).await;
    let mut ticker =
        tokio::time::interval(Duration::from_millis(spec.interval_ms).max(MIN_INTERVAL));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    loop {
        ticker.tick().await;
        let (pass, output) = probe(&state, i, &spec.probe, timeout).await;
        if !report(pass, truncate(output)) {
            return;
        }
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Runs one probe; network probes are cut at `timeout` here, exec ones kill their command.
async fn probe(state: &Shared, i: usize, probe: &Probe, timeout: Duration) -> (bool, String) {
    if matches!(probe, Probe::Exec { .. }) {
        return probe_once(state, i, probe, timeout).await;
    }
    match tokio::time::timeout(timeout, probe_once(state, i, probe, timeout)).await {
        Ok(r) => r,
        Err(_) => (false, format!("timed out after {} ms", timeout.as_millis())),
    }
}

async fn probe_once(state: &Shared, i: usize, probe: &Probe, timeout: Duration) -> (bool, String) {
    match probe {
        Probe::Tcp { port } => match TcpStream::connect(("127.0.0.1", *port)).await {
            Ok(_) => (true, format!("connected to 127.0.0.1:{port}")),
            Err(e) => (false, format!("connecting to 127.0.0.1:{port}: {e}")),
        },
        Probe::Http {
            port,
            method,
            path,
            scheme,
            headers,
            tls_skip_verify,
            tls_server_name,
        } => {
            let https = scheme.eq_ignore_ascii_case("https");
            let result = if https {
                let name = tls_server_name.as_deref().unwrap_or("localhost");
                http::request_tls(*port, method, path, headers, name, *tls_skip_verify).await
            } else {
                http::request(*port, method, path, headers).await
            };
            match result {
                Ok((code, line)) => ((200..300).contains(&code), line),
                Err(e) => (
                    false,
                    format!(
                        "{method} {}://127.0.0.1:{port}{path}: {e}",
                        if https { "https" } else { "http" }
                    ),
                ),
            }
        }
        Probe::Exec { command } => {
            let target = {
                let s = state.borrow();
                s.containers
                    .get(i)
                    .and_then(|c| Some((c.status.pid?, c.spec.process.clone())))
                    .map(|t| (t, s.waiters.clone()))
            };
            let Some(((pid, process), waiters)) = target else {
                return (false, "container is not running".into());
            };
            match exec::run(pid, &process, command, None, timeout, &waiters).await {
                Ok(r) => {
                    let mut out = r.stdout;
                    out.push_str(&r.stderr);
                    let out = out.trim().to_string();
                    if r.exit_code == 0 {
                        (true, out)
                    } else if r.exit_code == exec::TIMEOUT_CODE && r.exit_signal != 0 {
                        (false, format!("timed out after {} ms", timeout.as_millis()))
                    } else {
                        (false, format!("exit code {}: {out}", r.exit_code))
                    }
                }
                Err(e) => (false, e),
            }
        }
    }
}
