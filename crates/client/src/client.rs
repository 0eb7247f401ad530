//! Transport: one HTTP/1.1 connection per request over a unix socket or TCP.
//!
//! A fresh connection per request keeps the client trivially correct for a CLI (no pool to
//! go stale when the daemon restarts); the daemon is local, so the handshake is cheap.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{header, HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpStream, UnixStream};

use crate::endpoint::Endpoint;
use crate::error::ClientError;
use crate::token;

/// TCP connects to an unreachable host can hang for minutes; a local daemon answers at once.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const USER_AGENT: &str = concat!("hangar-client/", env!("CARGO_PKG_VERSION"));

/// What to put in the `Authorization` header of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// `Bearer <client token>`; fails before sending if the client has no usable token.
    #[default]
    Default,
    /// No `Authorization` header at all.
    None,
    /// This exact header value (e.g. `"Bearer wrong"` or `"FlyV1 fm2_..."`).
    Header(String),
}

/// A response of any status, exactly as received.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, Clone)]
enum TokenState {
    /// Send no token (explicitly constructed that way).
    Absent,
    Present(String),
    /// `from_env` found no token. Kept rather than failing early so that a stopped daemon is
    /// reported as such (the more useful message) before a missing token file is.
    Unreadable {
        path: PathBuf,
        kind: io::ErrorKind,
        reason: String,
    },
}

/// Client of the Hangar daemon. Cheap to clone. Requests must run inside a tokio runtime.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    token: TokenState,
}

impl Client {
    /// A client for `endpoint`; `token = None` sends no `Authorization` header.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        let token = match token {
            Some(t) => TokenState::Present(t),
            None => TokenState::Absent,
        };
        Client { endpoint, token }
    }

    /// Endpoint from `HANGAR_API_URL`, token from `HANGAR_API_TOKEN` or the token file.
    /// Only a malformed `HANGAR_API_URL` fails here; a missing token fails at the first request.
    pub fn from_env() -> Result<Self, ClientError> {
        let endpoint = Endpoint::from_env()?;
        let token = match token::read_token() {
            Ok(t) => TokenState::Present(t),
            Err(ClientError::Token { path, cause }) => TokenState::Unreadable {
                path,
                kind: cause.kind(),
                reason: cause.to_string(),
            },
            Err(other) => return Err(other),
        };
        Ok(Client { endpoint, token })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn request(&self, method: Method, path: impl Into<String>) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method,
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            encode_error: None,
            auth: Auth::Default,
        }
    }

    pub fn get(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::POST, path)
    }

    pub fn put(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::PUT, path)
    }

    pub fn patch(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::PATCH, path)
    }

    pub fn delete(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::DELETE, path)
    }

    /// Sends `body` as is and returns the response whatever its status (for tests that check
    /// exact codes and bodies). `path_and_query` may carry a query string.
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let mut req = self.request(method, path_and_query);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(body) = body {
            req = req.body(body, "application/json");
        }
        req.send_raw().await
    }

    /// GETs `path_and_query` and hands the body to `on_chunk` as it arrives (for streaming
    /// endpoints such as logs); stops when the body ends or `on_chunk` returns false. A non-2xx
    /// answer is an [`ClientError::Api`] error.
    pub async fn get_streaming(
        &self,
        path_and_query: &str,
        on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        self.stream(Method::GET, path_and_query, on_chunk).await
    }

    /// [`get_streaming`](Self::get_streaming) for POST endpoints that stream (image pulls).
    pub async fn get_streaming_post(
        &self,
        path_and_query: &str,
        on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        self.stream(Method::POST, path_and_query, on_chunk).await
    }

    async fn stream(
        &self,
        method: Method,
        path_and_query: &str,
        mut on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let mut sender = self.connect().await?;
        let method_name = method.to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, "hangar")
            .header(header::USER_AGENT, USER_AGENT);
        if let Some(auth) = self.authorization(&Auth::Default)? {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let transport = |cause: hyper::Error| ClientError::Transport {
            method: method_name.clone(),
            path: path_and_query.to_string(),
            endpoint: self.endpoint.to_string(),
            cause,
        };
        let res = sender.send_request(req).await.map_err(transport)?;
        let status = res.status();
        let mut body = res.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(transport)?.to_bytes();
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api {
                status,
                message,
                code: None,
            });
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(transport)?;
            if let Some(data) = frame.data_ref() {
                if !on_chunk(data) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// POSTs what `body` yields as it comes, without holding it in memory (an image archive),
    /// and returns the response whatever its status.
    pub async fn post_stream(
        &self,
        path_and_query: &str,
        content_type: &str,
        body: impl tokio::io::AsyncRead + Send + 'static,
    ) -> Result<RawResponse, ClientError> {
        use futures_util::StreamExt;
        let mut sender = self.connect().await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path_and_query)
            .header(header::HOST, self.endpoint.host_header())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, header_value(content_type)?);
        if let Some(auth) = self.authorization(&Auth::Default)? {
            req = req.header(header::AUTHORIZATION, header_value(&auth)?);
        }
        let frames = tokio_util::io::ReaderStream::new(body)
            .map(|chunk| chunk.map(hyper::body::Frame::data));
        let req = req
            .body(http_body_util::StreamBody::new(frames))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let transport = |cause: hyper::Error| ClientError::Transport {
            method: "POST".into(),
            path: path_and_query.to_string(),
            endpoint: self.endpoint.to_string(),
            cause,
        };
        let (parts, body) = sender
            .send_request(req)
            .await
            .map_err(transport)?
            .into_parts();
        let body = body.collect().await.map_err(transport)?.to_bytes();
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn connect<B>(&self) -> Result<SendRequest<B>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let connect_error = |cause| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            cause,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(connect_error)?;
                self.handshake(TokioIo::new(stream)).await
            }
            Endpoint::Tcp { host, port } => {
                let stream = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| {
                    connect_error(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection timed out",
                    ))
                })?
                .map_err(connect_error)?;
                // Requests are small and latency-bound.
                let _ = stream.set_nodelay(true);
                self.handshake(TokioIo::new(stream)).await
            }
        }
    }

    async fn handshake<IO, B>(&self, io: IO) -> Result<SendRequest<B>, ClientError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| ClientError::Connect {
                endpoint: self.endpoint.to_string(),
                cause: io::Error::other(e),
            })?;
        // The connection future does the actual I/O; its errors also surface through
        // `send_request`, so the result here carries nothing new.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    pub(crate) fn authorization_for(&self, auth: &Auth) -> Result<Option<String>, ClientError> {
        self.authorization(auth)
    }

    fn authorization(&self, auth: &Auth) -> Result<Option<String>, ClientError> {
        match auth {
            Auth::None => Ok(None),
            Auth::Header(value) => Ok(Some(value.clone())),
            Auth::Default => match &self.token {
                TokenState::Absent => Ok(None),
                TokenState::Present(t) => Ok(Some(format!("Bearer {t}"))),
                TokenState::Unreadable { path, kind, reason } => Err(ClientError::Token {
                    path: path.clone(),
                    cause: io::Error::new(*kind, reason.clone()),
                }),
            },
        }
    }
}

/// One request being put together; finish with [`send`](Self::send),
/// [`send_empty`](Self::send_empty) or [`send_raw`](Self::send_raw).
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder<'c> {
    client: &'c Client,
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<(Vec<u8>, String)>,
    encode_error: Option<serde_json::Error>,
    auth: Auth,
}

impl RequestBuilder<'_> {
    /// Appends `key=value` to the query string (percent-encoded).
    pub fn query(mut self, key: &str, value: impl ToString) -> Self {
        self.query.push((key.to_string(), value.to_string()));
        self
    }

    /// Appends `key=value` only when `value` is `Some`.
    pub fn query_opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.query(key, v),
            None => self,
        }
    }

    /// Adds a request header. An `authorization` header here replaces the client's token.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `fly-machine-lease-nonce` when a nonce is given.
    pub fn lease_nonce(self, nonce: Option<&str>) -> Self {
        match nonce {
            Some(n) => self.header(hangar_api::LEASE_NONCE_HEADER, n),
            None => self,
        }
    }

    /// Sets a JSON body (and `Content-Type: application/json`).
    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => self.body = Some((bytes, "application/json".to_string())),
            // Reported by `send*`, so call chains stay fluent.
            Err(e) => self.encode_error = Some(e),
        }
        self
    }

    /// Sets a body verbatim.
    pub fn body(mut self, body: Vec<u8>, content_type: &str) -> Self {
        self.body = Some((body, content_type.to_string()));
        self
    }

    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            return self.path.clone();
        }
        let mut out = self.path.clone();
        let mut sep = if out.contains('?') { '&' } else { '?' };
        for (k, v) in &self.query {
            out.push(sep);
            out.push_str(&encode(k));
            out.push('=');
            out.push_str(&encode(v));
            sep = '&';
        }
        out
    }

    /// Sends the request and returns the response whatever its status.
    pub async fn send_raw(self) -> Result<RawResponse, ClientError> {
        if let Some(e) = self.encode_error {
            return Err(ClientError::Encode(e));
        }
        let client = self.client;
        let uri = self.path_and_query();
        let transport_error = |cause| ClientError::Transport {
            method: self.method.to_string(),
            path: self.path.clone(),
            endpoint: client.endpoint.to_string(),
            cause,
        };

        let mut sender = client.connect().await?;

        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(&uri)
            .header(header::HOST, client.endpoint.host_header())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "application/json");
        let overrides_auth = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(header::AUTHORIZATION.as_str()));
        if !overrides_auth {
            if let Some(value) = client.authorization(&self.auth)? {
                builder = builder.header(header::AUTHORIZATION, header_value(&value)?);
            }
        }
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ClientError::Request(format!("invalid header name {name:?}")))?;
            builder = builder.header(name, header_value(value)?);
        }
        let body = match self.body {
            Some((bytes, content_type)) => {
                builder = builder.header(header::CONTENT_TYPE, header_value(&content_type)?);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| ClientError::Request(format!("{} {uri}: {e}", self.method)))?;

        let response = sender
            .send_request(request)
            .await
            .map_err(transport_error)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(transport_error)?.to_bytes();
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends the request; a 2xx body is decoded as `T`, anything else is [`ClientError::Api`].
    pub async fn send<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        let method = self.method.to_string();
        let path = self.path.clone();
        let raw = self.send_raw().await?;
        if !raw.status.is_success() {
            return Err(ClientError::from_response(raw.status, &raw.body));
        }
        raw.json().map_err(|cause| ClientError::Decode {
            method,
            path,
            cause,
        })
    }

    /// Like [`send`](Self::send) for responses whose body does not matter (204, 202, …).
    pub async fn send_empty(self) -> Result<(), ClientError> {
        let raw = self.send_raw().await?;
        if !raw.status.is_success() {
            return Err(ClientError::from_response(raw.status, &raw.body));
        }
        Ok(())
    }
}

fn header_value(value: &str) -> Result<HeaderValue, ClientError> {
    HeaderValue::from_str(value)
        .map_err(|_| ClientError::Request("header values must be visible ASCII".to_string()))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so the result is safe both
/// as a path segment and as a query key or value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("abc-1.2_3~"), "abc-1.2_3~");
        assert_eq!(encode("a b/c?d&e=f"), "a%20b%2Fc%3Fd%26e%3Df");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn builds_query_strings() {
        let client = Client::new(Endpoint::default(), None);
        let req = client
            .get("/v1/apps")
            .query("org_slug", "personal")
            .query("state", "started,stopped")
            .query_opt("region", None::<&str>);
        assert_eq!(
            req.path_and_query(),
            "/v1/apps?org_slug=personal&state=started%2Cstopped"
        );
        let req = client.get("/v1/x?a=1").query("b", 2);
        assert_eq!(req.path_and_query(), "/v1/x?a=1&b=2");
    }
}
