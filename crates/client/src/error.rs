//! Errors of the client. Each variant renders as a single, complete line fit for `Error: …`.
//!
//! Underlying causes are part of the message and deliberately *not* exposed as
//! `Error::source`: the connect message must put the cause in the middle ("…: <cause>; start it
//! with …"), and exposing it as well would make anyhow's `{:#}` print every cause twice.

use std::io;
use std::path::PathBuf;

use hyper::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid HANGAR_API_URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// No `HANGAR_API_TOKEN` and the token file could not be read.
    #[error(
        "no API token: HANGAR_API_TOKEN is not set and {} could not be read: {cause}; \
         the daemon creates it on first start (`hangar daemon`)",
        path.display()
    )]
    Token { path: PathBuf, cause: io::Error },

    /// The daemon is not running, the socket is missing, or the connection was refused.
    #[error(
        "cannot reach the Hangar daemon at {endpoint}: {cause}; \
         start it with `hangar daemon` (or set HANGAR_API_URL)"
    )]
    Connect { endpoint: String, cause: io::Error },

    /// The connection broke mid-request (daemon crashed or restarted).
    #[error("request {method} {path} to {endpoint} failed: {cause}")]
    Transport {
        method: String,
        path: String,
        endpoint: String,
        cause: hyper::Error,
    },

    /// A non-2xx answer. `message` is Fly's `error` (or `message`) field, or the raw body.
    #[error("{message} (HTTP {})", status.as_u16())]
    Api {
        status: StatusCode,
        message: String,
        /// Fly's `status` code field (`name_taken`, …), when present.
        code: Option<String>,
    },

    #[error("invalid request: {0}")]
    Request(String),

    #[error("cannot encode the request body: {0}")]
    Encode(serde_json::Error),

    #[error("unexpected response to {method} {path}: {cause}")]
    Decode {
        method: String,
        path: String,
        cause: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_status(&self, status: StatusCode) -> bool {
        self.status() == Some(status)
    }

    pub fn is_not_found(&self) -> bool {
        self.is_status(StatusCode::NOT_FOUND)
    }

    /// The server's error text, for API errors.
    pub fn api_message(&self) -> Option<&str> {
        match self {
            ClientError::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Builds the error of a non-2xx response from its body. Fly's body is
    /// `{"error": "...", "status": "..."}`; some errors use `message`, which fly-go prefers.
    /// The error an answer with a non-2xx `status` and `body` stands for.
    pub fn from_response(status: StatusCode, body: &[u8]) -> Self {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let message = field("message")
            .or_else(|| field("error"))
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                // Keep the message on one line even for HTML/plain-text bodies from proxies.
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("request failed")
                        .to_lowercase()
                } else {
                    text
                }
            });
        ClientError::Api {
            status,
            message,
            code: field("status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_from_fly_body() {
        let e =
            ClientError::from_response(StatusCode::NOT_FOUND, br#"{"error":"machine not found"}"#);
        assert_eq!(e.to_string(), "machine not found (HTTP 404)");
        assert!(e.is_not_found());

        let e = ClientError::from_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":"app name taken","status":"name_taken"}"#,
        );
        match e {
            ClientError::Api { code, .. } => assert_eq!(code.as_deref(), Some("name_taken")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn api_error_from_odd_bodies() {
        let e = ClientError::from_response(StatusCode::BAD_GATEWAY, b"bad\n  gateway\n");
        assert_eq!(e.to_string(), "bad gateway (HTTP 502)");
        let e = ClientError::from_response(StatusCode::UNAUTHORIZED, b"");
        assert_eq!(e.to_string(), "unauthorized (HTTP 401)");
        let e = ClientError::from_response(
            StatusCode::CONFLICT,
            br#"{"error":"x","message":"lease currently held by a@b"}"#,
        );
        assert_eq!(e.api_message(), Some("lease currently held by a@b"));
    }
}
