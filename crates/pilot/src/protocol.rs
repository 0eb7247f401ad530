//! The daemon ↔ Pilot control protocol, one module for both sides (docs/pilot-protocol.md).
//!
//! A unix stream socket (`run/control.sock` in the machine dir); one JSON request per line,
//! one JSON reply per line. Every request carries the sender's protocol version `v`; every
//! reply carries Pilot's. A daemon meets Pilots started by older daemons (machines outlive
//! daemon upgrades): a reply without `v` is protocol 1, read through [`LegacyReply`]. A Pilot
//! refuses a request of a newer major version than its own with [`ErrorKind::Version`].
//! `watch` turns the connection into a stream of [`crate::spec::Event`] lines; `attach` into
//! a stream of [`frame`]s.

use serde::{Deserialize, Serialize};

use crate::spec::{ContainerStatus, ExecResult, ProcessInfo};

/// This side's protocol version. 1 was the untyped reply (`{"ok":…,"error":…}`); 2 added `v`,
/// the typed reply and error kinds.
pub const PROTOCOL_VERSION: u32 = 2;

/// A request line: the version, then the operation (`{"v":2,"op":"status"}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLine {
    /// Absent in protocol 1.
    #[serde(default = "v1")]
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

fn v1() -> u32 {
    1
}

impl RequestLine {
    pub fn new(request: Request) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            request,
        }
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// The containers' status, answered once every container but the `patient` ones has been
    /// launched or could not be (has left `created`): what a machine's start waits for,
    /// without asking again and again.
    StatusOnceLaunched {
        #[serde(default)]
        patient: Vec<String>,
    },
    /// Stop every container (reverse order) and exit; `signal`/`timeout_ms` override the
    /// containers' own stop settings.
    Stop {
        signal: Option<i32>,
        timeout_ms: Option<u64>,
    },
    Signal {
        signal: i32,
    },
    /// Runs a command inside a container (its namespaces, root, env and user). Without
    /// `container`, the one named `app`, else the first.
    Exec {
        container: Option<String>,
        command: Vec<String>,
        stdin: Option<String>,
        timeout_ms: Option<u64>,
    },
    /// Processes of every container.
    Ps,
    /// Turns the connection into a stream of event lines, starting with a replay of the most
    /// recent events (up to 256) since Pilot started.
    Watch,
    /// Runs `command` (default `/bin/sh`) inside a container, as `user` (a name or uid from
    /// the container's /etc/passwd, default the container's own), with `env` (`KEY=value`)
    /// added. After an `ok` reply the connection carries [`frame`]s.
    Attach {
        #[serde(default)]
        container: Option<String>,
        #[serde(default)]
        command: Vec<String>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        env: Vec<String>,
        #[serde(default = "default_rows")]
        rows: u16,
        #[serde(default = "default_cols")]
        cols: u16,
        /// On a pty (default); without, on pipes, with [`frame::EOF`] closing the input.
        #[serde(default = "default_tty")]
        tty: bool,
    },
}

fn default_tty() -> bool {
    true
}

fn default_rows() -> u16 {
    24
}

fn default_cols() -> u16 {
    80
}

/// A reply line: Pilot's version and the outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyLine {
    pub v: u32,
    #[serde(flatten)]
    pub reply: Reply,
}

/// What a request produced; each request has one success shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done (stop, signal, attach before its frames).
    Ok,
    Status {
        containers: Vec<ContainerStatus>,
    },
    Exec {
        result: ExecResult,
    },
    Ps {
        processes: Vec<ProcessInfo>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Why a request failed, so the daemon answers the right HTTP status without reading text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request named a container the machine does not have.
    NoSuchContainer,
    /// The container exists but is not running.
    NotRunning,
    /// The request cannot be carried out as asked (a bad user, command, signal).
    Invalid,
    /// The request line was not understood.
    BadRequest,
    /// The request's protocol version is newer than this Pilot's.
    Version,
    /// Anything else.
    Failed,
}

impl Reply {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Reply::Error {
            kind,
            message: message.into(),
        }
    }

    /// The reply as one line (with this side's version), newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&ReplyLine {
            v: PROTOCOL_VERSION,
            reply: self.clone(),
        })
        .unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Reads a reply line from a Pilot of any supported version: `(its version, reply)`.
    pub fn parse(line: &str) -> Result<(u32, Reply), String> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("bad reply from pilot: {e}"))?;
        match value.get("v").and_then(serde_json::Value::as_u64) {
            Some(v) => {
                let r: ReplyLine = serde_json::from_value(value)
                    .map_err(|e| format!("bad reply from pilot (protocol {v}): {e}"))?;
                Ok((r.v, r.reply))
            }
            None => {
                let legacy: LegacyReply = serde_json::from_value(value)
                    .map_err(|e| format!("bad reply from pilot (protocol 1): {e}"))?;
                Ok((1, legacy.into()))
            }
        }
    }
}

/// Protocol 1's reply, a bag of optional fields, as Pilots started by older daemons send it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LegacyReply {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub status: Option<LegacyStatus>,
    #[serde(default)]
    pub exec: Option<ExecResult>,
    #[serde(default)]
    pub ps: Option<Vec<ProcessInfo>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LegacyStatus {
    pub containers: Vec<ContainerStatus>,
}

impl From<LegacyReply> for Reply {
    fn from(r: LegacyReply) -> Self {
        if !r.ok {
            let message = r.error.unwrap_or_else(|| "request failed".into());
            // Protocol 1 said why only in words.
            let kind = if message.starts_with("no container") {
                ErrorKind::NoSuchContainer
            } else if message.contains("is not running") {
                ErrorKind::NotRunning
            } else {
                ErrorKind::Failed
            };
            return Reply::Error { kind, message };
        }
        match (r.status, r.exec, r.ps) {
            (Some(s), _, _) => Reply::Status {
                containers: s.containers,
            },
            (_, Some(result), _) => Reply::Exec { result },
            (_, _, Some(processes)) => Reply::Ps { processes },
            _ => Reply::Ok,
        }
    }
}

/// Framing of an attached session: 1-byte type, 4-byte big-endian length, payload.
pub mod frame {
    pub const HEADER: usize = 5;
    /// Largest payload accepted; data frames are far smaller.
    pub const MAX_PAYLOAD: usize = 1 << 20;
    /// Terminal bytes: client → pty input, pty output → client.
    pub const DATA: u8 = 0;
    /// Client → Pilot: rows then cols, u16 big-endian each.
    pub const RESIZE: u8 = 1;
    /// Pilot → client, last: the exit code as i32 big-endian (128+signal when killed).
    pub const EXIT: u8 = 2;
    /// Client → Pilot, without a pty: the input has ended.
    pub const EOF: u8 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_version() {
        let line = RequestLine::new(Request::Status).to_line();
        let text = String::from_utf8(line).unwrap();
        assert_eq!(text, "{\"v\":2,\"op\":\"status\"}\n");
        // A protocol-1 request (no v) is still read.
        let old: RequestLine = serde_json::from_str("{\"op\":\"ps\"}").unwrap();
        assert_eq!(old.v, 1);
        assert!(matches!(old.request, Request::Ps));
    }

    #[test]
    fn replies_round_trip_and_old_ones_are_understood() {
        let r = Reply::error(ErrorKind::NotRunning, "container app is not running");
        let line = String::from_utf8(r.to_line()).unwrap();
        assert_eq!(Reply::parse(line.trim()).unwrap(), (2, r));
        let (v, old) =
            Reply::parse(r#"{"ok":false,"error":"no container \"x\" in this machine"}"#).unwrap();
        assert_eq!(v, 1);
        assert!(matches!(
            old,
            Reply::Error {
                kind: ErrorKind::NoSuchContainer,
                ..
            }
        ));
        assert_eq!(Reply::parse(r#"{"ok":true}"#).unwrap(), (1, Reply::Ok));
        let (_, status) = Reply::parse(r#"{"ok":true,"status":{"containers":[]}}"#).unwrap();
        assert_eq!(status, Reply::Status { containers: vec![] });
    }
}
