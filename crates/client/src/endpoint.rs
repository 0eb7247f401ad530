//! Where the daemon listens: `HANGAR_API_URL` as `unix:///path/to.sock` or `http://host:port`.

use std::fmt;
use std::path::PathBuf;

use crate::error::ClientError;

/// Default socket of the daemon.
///
/// Duplicates `hangar_daemon::DEFAULT_SOCKET` on purpose: the client must not depend on the
/// daemon crate (it pulls in the store, axum, …). Keep the two in sync.
pub const DEFAULT_SOCKET: &str = "/run/hangar/api.sock";

/// Environment variable naming the endpoint.
pub const API_URL_ENV: &str = "HANGAR_API_URL";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix domain socket path.
    Unix(PathBuf),
    /// Plain HTTP over TCP. `host` keeps IPv6 brackets off (`::1`), `Display` adds them back.
    Tcp { host: String, port: u16 },
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

impl Endpoint {
    /// Reads `HANGAR_API_URL`; unset or empty means the default socket.
    pub fn from_env() -> Result<Self, ClientError> {
        match std::env::var(API_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Self::parse(&url),
            _ => Ok(Self::default()),
        }
    }

    /// Parses `unix:///abs/path.sock`, `unix:/abs/path.sock`, a bare absolute path, or
    /// `http://host[:port][/]` (port defaults to 80). `https` is refused: the daemon speaks
    /// plain HTTP and silently downgrading would be worse than an error.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let url = url.trim();
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = url.strip_prefix("unix://") {
            // `unix:///run/x.sock` leaves `/run/x.sock`; `unix://run/x.sock` would be relative.
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a unix socket path must be absolute (unix:///path/to.sock)",
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = url.strip_prefix("unix:") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a unix socket path must be absolute (unix:///path/to.sock)",
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(rest)));
        }
        if url.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(url)));
        }
        if url.starts_with("https://") {
            return Err(invalid(
                "https is not supported; the daemon serves plain http",
            ));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(invalid("expected unix:///path/to.sock or http://host:port"));
        };
        // Only an authority is meaningful; the API paths are fixed (`/v1/...`).
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err(invalid(
                "only http://host:port is supported, without a path or credentials",
            ));
        }
        let (host, port) = split_host_port(authority).map_err(invalid)?;
        Ok(Endpoint::Tcp { host, port })
    }

    /// The `Host` header to send.
    pub(crate) fn host_header(&self) -> String {
        match self {
            // Any value works on a socket; Fly's in-machine socket uses the host `flaps`.
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Tcp { host, port } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
        }
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), &'static str> {
    let parse_port = |p: &str| p.parse::<u16>().map_err(|_| "invalid port");
    if let Some(rest) = authority.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("unterminated IPv6 address");
        };
        let port = match after {
            "" => 80,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or("invalid text after IPv6 address")?,
            )?,
        };
        return Ok((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err("IPv6 addresses must be bracketed: http://[::1]:4280")
        }
        Some((host, p)) if !host.is_empty() => Ok((host.to_string(), parse_port(p)?)),
        Some(_) => Err("missing host"),
        None => Ok((authority.to_string(), 80)),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp { .. } => write!(f, "http://{}", self.host_header()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_urls() {
        assert_eq!(
            Endpoint::parse("unix:///run/hangar/api.sock").unwrap(),
            Endpoint::Unix("/run/hangar/api.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:/tmp/a.sock").unwrap(),
            Endpoint::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Endpoint::parse("/tmp/a.sock").unwrap(),
            Endpoint::Unix("/tmp/a.sock".into())
        );
        assert!(Endpoint::parse("unix://relative.sock").is_err());
    }

    #[test]
    fn parses_http_urls() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:4280").unwrap(),
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 4280
            }
        );
        assert_eq!(
            Endpoint::parse("http://localhost/").unwrap(),
            Endpoint::Tcp {
                host: "localhost".into(),
                port: 80
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:4280").unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 4280
            }
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "https://example.com",
            "ftp://x",
            "localhost:4280",
            "http://",
            "http://host:notaport",
            "http://host:99999",
            "http://host:1/v1",
            "http://::1:80",
            "http://[::1",
            "http://:80",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn displays_round_trip() {
        for url in [
            "unix:///run/hangar/api.sock",
            "http://127.0.0.1:4280",
            "http://[::1]:4280",
        ] {
            assert_eq!(Endpoint::parse(url).unwrap().to_string(), url);
        }
        assert_eq!(
            Endpoint::default().to_string(),
            "unix:///run/hangar/api.sock"
        );
    }
}
