//! `POST /hangar/v1/apps/{app}/machines/{id}/console`: an interactive command on a pty inside
//! a started machine, over an HTTP/1.1 upgrade (`Connection: Upgrade`,
//! `Upgrade: hangar-console`).
//!
//! Query: `container` (default the first), `command` (shell words, default `/bin/sh`), `user`
//! (name or uid in the container, default the container's), `rows`, `cols` (default 24×80),
//! `term` (the `TERM` to set, default `xterm`), `tty` (default true; `false` runs the command
//! on pipes, and a `3` frame from the client ends its input).
//!
//! The daemon asks Pilot to start the command (`attach` on its control socket) before it
//! answers, so a bad container, user or command is an ordinary HTTP error; then it answers 101
//! and splices the upgraded connection with Pilot's. Both directions carry Pilot's framing
//! unchanged: 1-byte type, 4-byte big-endian length, payload; `0` data, `1` resize (rows, cols
//! as u16 BE, client → machine), `2` exit (i32 BE code, machine → client, last), `3` end of
//! input (client → machine, without a pty).

use crate::extract::Path;
use axum::extract::{RawQuery, Request, State};
use axum::response::Response;
use hangar_pilot::protocol::Request as PilotRequest;
use hyper_util::rt::TokioIo;

use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::routes::AppState;

/// The `Upgrade` protocol name.
pub const PROTOCOL: &str = "hangar-console";
const DEFAULT_COMMAND: &str = "/bin/sh";

fn dimension(q: &Query, key: &str, default: u16) -> ApiResult<u16> {
    match q.int(key)? {
        None => Ok(default),
        Some(n) if (1..=u16::MAX as i64).contains(&n) => Ok(n as u16),
        Some(_) => Err(ApiError::bad_request(format!(
            "{key} must be between 1 and 65535"
        ))),
    }
}

pub async fn console(
    State(h): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    mut req: Request,
) -> ApiResult<Response> {
    crate::upgrade::require(&req, PROTOCOL)?;
    let q = Query::parse(raw.as_deref());
    let rows = dimension(&q, "rows", 24)?;
    let cols = dimension(&q, "cols", 80)?;
    let command_text = q
        .get("command")
        .filter(|c| !c.trim().is_empty())
        .unwrap_or(DEFAULT_COMMAND);
    let command = shlex::split(command_text).ok_or_else(|| {
        ApiError::bad_request(format!("command {command_text:?} has unbalanced quotes"))
    })?;
    let term = q.get("term").filter(|t| !t.is_empty()).unwrap_or("xterm");
    let attach = PilotRequest::Attach {
        container: q
            .get("container")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        command,
        user: q.get("user").filter(|u| !u.is_empty()).map(str::to_string),
        env: vec![format!("TERM={term}")],
        rows,
        cols,
        tty: q.bool("tty", true)?,
    };

    // The runtime asks Pilot to start the command before the answer, so a bad container,
    // user or command is an ordinary HTTP error.
    let mut pilot = h.attach(&app, &id, attach).await?;

    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                // Dropping Pilot's connection hangs the session up.
                tracing::warn!(error = %e, "console upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        // Ends when either side closes; Pilot closes after the exit frame.
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut pilot).await {
            tracing::debug!(error = %e, "console connection ended");
        }
    });
    Ok(crate::upgrade::switching(PROTOCOL))
}
