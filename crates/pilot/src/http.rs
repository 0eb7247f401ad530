//! A minimal HTTP/1.1 client for health checks: one request with `Connection: close`, only the
//! status line is read. Redirects are not followed (a 3xx fails the check, as Fly's do).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The response head is never larger than this for a health endpoint worth the name.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed status line {0:?}")]
    BadStatusLine(String),
    #[error("connection closed before a status line")]
    Empty,
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
}

/// Builds the request bytes. Header names and values with CR or LF are dropped: they would let
/// a config smuggle a second request.
pub fn build_request(method: &str, path: &str, port: u16, headers: &[(String, String)]) -> Vec<u8> {
    let clean = |s: &str| !s.contains(['\r', '\n']);
    let method = if method.is_empty() || !clean(method) || method.contains(' ') {
        "GET"
    } else {
        method
    };
    let path = if path.starts_with('/') && clean(path) && !path.contains(' ') {
        path
    } else {
        "/"
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(name));
    if !has("host") {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    if !has("user-agent") {
        req.push_str("User-Agent: hangar-pilot/healthcheck\r\n");
    }
    for (name, value) in headers {
        if clean(name) && clean(value) && !name.is_empty() && !name.contains(':') {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    req.push_str("Connection: close\r\n\r\n");
    req.into_bytes()
}

/// Parses the status code out of `HTTP/1.x NNN reason`.
pub fn parse_status_line(line: &str) -> Result<u16, HttpError> {
    let bad = || HttpError::BadStatusLine(line.chars().take(80).collect());
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().ok_or_else(bad)?;
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let code = parts.next().ok_or_else(bad)?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

/// Returns the first line of `buf` once it is complete.
fn first_line(buf: &[u8]) -> Option<&[u8]> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..end];
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

/// Sends the request over plain TCP and returns `(status code, status line)`.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    exchange(stream, port, method, path, headers).await
}

/// The same over TLS: the certificate is checked against the web PKI roots for `server_name`
/// unless `skip_verify` (the usual case for a sidecar's self-signed certificate).
pub async fn request_tls(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    server_name: &str,
    skip_verify: bool,
) -> anyhow::Result<(u16, String)> {
    let connector = tokio_rustls::TlsConnector::from(crate::tls::client_config(skip_verify)?);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|_| anyhow::anyhow!("invalid TLS server name {server_name:?}"))?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let stream = connector.connect(name, tcp).await?;
    exchange(stream, port, method, path, headers).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<(u16, String)> {
    stream
        .write_all(&build_request(method, path, port, headers))
        .await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(line) = first_line(&buf) {
            let line = String::from_utf8_lossy(line).into_owned();
            let code = parse_status_line(&line)?;
            return Ok((code, line));
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::TooLarge.into());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Empty.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status_line("HTTP/1.0 302 Found"), Ok(302));
        assert_eq!(parse_status_line("HTTP/1.1 204"), Ok(204));
        assert!(parse_status_line("HTTP/2 200 OK").is_err());
        assert!(parse_status_line("SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line("HTTP/1.1 20 OK").is_err());
        assert!(parse_status_line("HTTP/1.1 abc OK").is_err());
        assert!(parse_status_line("").is_err());
    }

    #[test]
    fn test_first_line_needs_a_newline() {
        assert_eq!(
            first_line(b"HTTP/1.1 200 OK\r\nX: y"),
            Some(&b"HTTP/1.1 200 OK"[..])
        );
        assert_eq!(first_line(b"HTTP/1.1 200"), None);
    }

    #[test]
    fn test_request_has_host_and_drops_injected_headers() {
        let req = build_request(
            "HEAD",
            "/health?x=1",
            8080,
            &[
                ("X-Ok".into(), "1".into()),
                ("X-Bad".into(), "a\r\nGET / HTTP/1.1".into()),
            ],
        );
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("HEAD /health?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("X-Ok: 1\r\n"));
        assert!(!text.contains("X-Bad"));
        assert!(text.ends_with("Connection: close\r\n\r\n"));
        let custom_host = build_request("GET", "no-slash", 80, &[("host".into(), "a".into())]);
        let text = String::from_utf8(custom_host).unwrap();
        assert!(text.starts_with("GET / HTTP/1.1\r\n"));
        assert!(!text.contains("127.0.0.1"));
    }

    #[tokio::test]
    async fn test_request_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "301 Moved Permanently"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let resp =
                    format!("HTTP/1.1 {status}\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let (code, line) = request(port, "GET", "/", &[]).await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(line, "HTTP/1.1 200 OK");
        let (code, _) = request(port, "GET", "/", &[]).await.unwrap();
        assert_eq!(code, 301);
    }
}
