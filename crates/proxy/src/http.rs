//! The `http` handler: HTTP/1.1 and HTTP/2 from clients (hyper's server), HTTP/1.1 to the
//! machine (hyper's client), with Fly's request and response headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, HOST, LOCATION};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::route::RouteError;
use crate::Proxy;

pub type Body = BoxBody<Bytes, hyper::Error>;
fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into() + "\n"))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Fly's header names, made at compile time (a name given as a string is parsed at each use).
static FLY_CLIENT_IP: HeaderName = HeaderName::from_static("fly-client-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static FLY_FORWARDED_PORT: HeaderName = HeaderName::from_static("fly-forwarded-port");
static FLY_REGION: HeaderName = HeaderName::from_static("fly-region");
static FLY_REQUEST_ID: HeaderName = HeaderName::from_static("fly-request-id");

/// Headers that describe one hop's connection, not the request (names made at compile time:
/// removing by a string parses it every time).
static HOP_BY_HOP: [HeaderName; 7] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];

/// `host[:port]` or `[v6][:port]` without the port.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.find(']').map_or(host, |end| &host[..end + 2]);
    }
    match host.split_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn via(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "2 hangar",
        Version::HTTP_10 => "1.0 hangar",
        _ => "1.1 hangar",
    }
}

/// One client connection's state: its connections to machines (idle ones by machine address),
/// the header values that are the same for every request on it, and its app's metric handles
/// (looked up once, not per request).
pub(crate) struct Conn {
    idle: std::sync::Mutex<std::collections::HashMap<(SocketAddr, bool), Vec<Sender>>>,
    client_ip: String,
    local_ip: String,
    client_ip_value: Option<HeaderValue>,
    xff_value: Option<HeaderValue>,
    port_value: HeaderValue,
    metrics: std::sync::Mutex<Option<AppMetrics>>,
    /// The port's only app, with the version of the table it was looked up in.
    last_app: std::sync::Mutex<Option<(u64, String)>>,
}

/// An app's metric handles (each shares its counter with the registry's family).
struct AppMetrics {
    app: String,
    in_flight: crate::metrics::ShardedGauge,
    duration: crate::metrics::ShardedHistogram,
    requests: Vec<(u16, crate::metrics::ShardedCounter)>,
}

/// A connection to a machine: HTTP/1.1, or HTTP/2 with `h2_backend`.
enum Sender {
    // The client's body goes on as it came (no boxing per request).
    H1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

impl Sender {
    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(&mut self, req: Request<Incoming>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

impl Conn {
    fn new(local: SocketAddr, peer: SocketAddr) -> Conn {
        let client_ip = peer.ip().to_canonical().to_string();
        let local_ip = local.ip().to_canonical().to_string();
        Conn {
            idle: std::sync::Mutex::new(std::collections::HashMap::new()),
            client_ip_value: HeaderValue::from_str(&client_ip).ok(),
            xff_value: HeaderValue::from_str(&format!("{client_ip}, {local_ip}")).ok(),
            port_value: HeaderValue::from(local.port()),
            client_ip,
            local_ip,
            metrics: std::sync::Mutex::new(None),
            last_app: std::sync::Mutex::new(None),
        }
    }

    fn take_ready(&self, backend: (SocketAddr, bool)) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&backend)?;
        list.retain(|s| !s.is_closed());
        let i = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    fn give_back(&self, backend: (SocketAddr, bool), sender: Sender) {
        if !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.entry(backend).or_default().push(sender);
        }
    }

    /// Runs `f` with `app`'s metric handles, looking them up when the app is new.
    fn with_metrics<T>(
        &self,
        metrics: &crate::metrics::Metrics,
        app: &str,
        f: impl FnOnce(&mut AppMetrics) -> T,
    ) -> T {
        let mut cached = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = |app: &str| {
            let labels = crate::metrics::Metrics::app(app);
            AppMetrics {
                app: app.to_string(),
                in_flight: metrics.in_flight.get_or_create(&labels).clone(),
                duration: metrics.duration.get_or_create(&labels).clone(),
                requests: Vec::new(),
            }
        };
        let m = match &mut *cached {
            Some(m) if m.app == app => m,
            other => other.insert(fresh(app)),
        };
        f(m)
    }

    /// Counts a request answered with `status` after `seconds`.
    fn count(&self, metrics: &crate::metrics::Metrics, app: &str, status: u16, seconds: f64) {
        self.with_metrics(metrics, app, |m| {
            m.duration.observe(seconds);
            let counter = match m.requests.iter().position(|(s, _)| *s == status) {
                Some(i) => &m.requests[i].1,
                None => {
                    let labels = crate::metrics::RequestLabels {
                        app: app.to_string(),
                        status,
                    };
                    let c = metrics.requests.get_or_create(&labels).clone();
                    m.requests.push((status, c));
                    &m.requests[m.requests.len() - 1].1
                }
            };
            counter.inc();
        });
    }
}

impl Proxy {
    /// Sends the request to the machine over one of this client connection's own machine
    /// connections. A refused connection (the machine is starting, or between
    /// restarts) is tried again for a short while, as Fly Proxy retries; the request is only
    /// handed over once connected, so nothing of it is lost.
    async fn send(
        &self,
        mut req: Request<Incoming>,
        candidate: &crate::table::Candidate,
        backend: SocketAddr,
        h2: bool,
        woken: bool,
        conn: &Conn,
    ) -> Result<Response<Incoming>, String> {
        if h2 {
            // HTTP/2 names the target in :scheme and :authority: the client's Host goes there
            // (a Host header besides it is a duplicate to servers such as nginx).
            let path = req
                .uri()
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string());
            let authority = req
                .headers_mut()
                .remove(HOST)
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or_else(|| backend.to_string());
            *req.uri_mut() = format!("http://{authority}{path}")
                .parse()
                .map_err(|e| format!("bad request target: {e}"))?;
            *req.version_mut() = Version::HTTP_2;
        }
        let key = (backend, h2);
        let mut sender = match conn.take_ready(key) {
            Some(s) => s,
            None => {
                let patience = if woken {
                    self.config.connect_timeout
                } else {
                    std::time::Duration::from_secs(2)
                };
                let stream = self
                    .dial(
                        &candidate.machine,
                        backend.port(),
                        true,
                        patience,
                        crate::upstream::Purpose::Traffic {
                            autostart: candidate.service().autostart,
                        },
                    )
                    .await
                    .map_err(|e| format!("connect {backend}: {e} (PC01)"))?;
                if h2 {
                    let (sender, connection) = hyper::client::conn::http2::handshake(
                        TokioExecutor::new(),
                        TokioIo::new(stream),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    // On the connection's worker (see workers.rs): no hop between threads.
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Sender::H2(sender)
                } else {
                    let (sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream))
                            .await
                            .map_err(|e| e.to_string())?;
                    tokio::spawn(async move {
                        let _ = connection.with_upgrades().await;
                    });
                    Sender::H1(sender)
                }
            }
        };
        let resp = sender.send(req).await.map_err(|e| e.to_string());
        // A connection through another host counts as load there for as long as it is open:
        // kept for the next request, an idle client's keep-alive would hold the machine busy
        // (and awake) on its host. One per request instead.
        if candidate.machine.via.is_none() {
            conn.give_back(key, sender);
        }
        resp
    }

    /// Serves HTTP on a client connection (plain, or TLS already terminated, in which case
    /// SNI chose `app`).
    pub(crate) async fn serve_http<S>(
        self: Arc<Self>,
        stream: S,
        local: SocketAddr,
        peer: SocketAddr,
        app: Option<String>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::new(Conn::new(local, peer));
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let (this, app, conn) = (this.clone(), app.clone(), conn.clone());
            async move {
                let t0 = std::time::Instant::now();
                let (resp, app) = this.forward(req, local, app, &conn).await;
                conn.count(
                    &this.metrics,
                    app.as_deref().unwrap_or(""),
                    resp.status().as_u16(),
                    t0.elapsed().as_secs_f64(),
                );
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.config.idle_timeout)
            .max_buf_size(self.config.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(self.config.idle_timeout / 2);
        let server = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        if let Err(e) = server.await {
            tracing::debug!(%peer, error = %e, "proxy: http connection ended");
        }
    }

    /// Which app a connection or request on `port` is for: among the apps whose edge there
    /// passes `edge`, the only one, else the one `host` (a `Host` header or a TLS server name)
    /// names: `<app>.<domain>` or `<app>`.
    pub(crate) fn app_for(
        &self,
        port: u16,
        host: Option<&str>,
        edge: impl Fn(&crate::table::EdgePort) -> bool,
    ) -> Option<String> {
        let table = self.table();
        let apps = table.apps_on(port, edge);
        if let [only] = apps.as_slice() {
            return Some(only.to_string());
        }
        let host = strip_port(host?).to_ascii_lowercase();
        // An app's custom hostname (an imported certificate's) routes to it.
        if let Some(app) = self.certificates.app_of_hostname(&host) {
            return apps.into_iter().find(|a| *a == app).map(str::to_string);
        }
        let name = host
            .strip_suffix(&format!(".{}", self.config.domain))
            .unwrap_or(&host);
        apps.into_iter().find(|a| *a == name).map(str::to_string)
    }

    /// [`app_for`](Self::app_for) an HTTP request. When one app alone serves the port (the
    /// common case) the answer does not depend on the `Host`, and is remembered per connection
    /// until the table changes.
    fn http_app_for(&self, conn: &Conn, port: u16, host: Option<&str>) -> Option<String> {
        let version = self.table_version();
        let mut last = conn.last_app.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, app)) = &*last {
            if *v == version {
                return Some(app.clone());
            }
        }
        let only = self.with_table(|table| match table.apps_on(port, |e| e.http).as_slice() {
            [only] => Some(only.to_string()),
            _ => None,
        });
        match only {
            Some(app) => {
                *last = Some((version, app.clone()));
                Some(app)
            }
            None => self.app_for(port, host, |e| e.http),
        }
    }

    /// Answers one request, with the app it was for (the metrics' label) when one was found.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        local: SocketAddr,
        app: Option<String>,
        conn: &Conn,
    ) -> (Response<Body>, Option<String>) {
        let port = local.port();
        let request_id_value = {
            // Made in place: one allocation per request, the header's own.
            let mut ulid = [0u8; ulid::ULID_LEN];
            ulid::Ulid::new().array_to_str(&mut ulid);
            ulid.make_ascii_lowercase();
            let mut id = Vec::with_capacity(ulid.len() + 1 + self.config.region.len());
            id.extend_from_slice(&ulid);
            id.push(b'-');
            id.extend_from_slice(self.config.region.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(id)).ok()
        };
        let version = req.version();
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let Some(app) = app.or_else(|| self.http_app_for(conn, port, host.as_deref())) else {
            let r = text(
                StatusCode::NOT_FOUND,
                "no app is served at this host and port",
            );
            return (r, None);
        };
        let _in_flight = conn.with_metrics(&self.metrics, &app, |m| m.in_flight.hold());
        let mut upgraded = false;
        let mut options = crate::table::HttpOptions::default();
        let mut resp = match self.choose(&app, port).await {
            Err(e) => {
                tracing::info!(%app, port, error = %e, "proxy: request not routed");
                let status = match e {
                    RouteError::NoService => StatusCode::NOT_FOUND,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                text(status, e.to_string())
            }
            Ok(chosen) => {
                let c = &chosen.candidate;
                options = c.edge().http_options.clone();
                if c.edge().force_https && !c.edge().tls {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    // To the default https port: the edge's TLS port is 443 on Fly.
                    let host = host.as_deref().unwrap_or("localhost");
                    let host = strip_port(host);
                    let mut r = text(StatusCode::MOVED_PERMANENTLY, "");
                    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{path}")) {
                        r.headers_mut().insert(LOCATION, v);
                    }
                    r
                } else {
                    let ip = c.machine.ipv4.map(std::net::IpAddr::V4);
                    let backend = ip.map(|ip| SocketAddr::new(ip, c.service().internal_port));
                    match backend {
                        None => text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the machine has no private address",
                        ),
                        Some(backend) => {
                            let proto = if c.edge().tls { "https" } else { "http" };
                            // An upgrade (WebSocket) is passed on: after the machine's 101 the
                            // two connections are joined byte for byte.
                            let upgrade = req.headers().get(hyper::header::UPGRADE).cloned();
                            let client_upgrade =
                                upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
                            let headers = req.headers_mut();
                            for h in &HOP_BY_HOP {
                                headers.remove(h);
                            }
                            if let Some(u) = upgrade {
                                headers.insert(hyper::header::UPGRADE, u);
                                headers.insert(
                                    hyper::header::CONNECTION,
                                    HeaderValue::from_static("upgrade"),
                                );
                            }
                            let set =
                                |headers: &mut hyper::HeaderMap,
                                 name: &HeaderName,
                                 value: Option<HeaderValue>| {
                                    if let Some(v) = value {
                                        headers.insert(name.clone(), v);
                                    }
                                };
                            // What is the same for every request on the connection was made
                            // once (Conn::new).
                            let xff =
                                match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                                    Some(prev) => HeaderValue::from_str(&format!(
                                        "{prev}, {}, {}",
                                        conn.client_ip, conn.local_ip
                                    ))
                                    .ok(),
                                    None => conn.xff_value.clone(),
                                };
                            set(headers, &FLY_CLIENT_IP, conn.client_ip_value.clone());
                            set(headers, &X_FORWARDED_FOR, xff);
                            set(
                                headers,
                                &X_FORWARDED_PROTO,
                                Some(HeaderValue::from_static(proto)),
                            );
                            set(
                                headers,
                                &X_FORWARDED_SSL,
                                Some(HeaderValue::from_static(if c.edge().tls {
                                    "on"
                                } else {
                                    "off"
                                })),
                            );
                            if !headers.contains_key(&X_FORWARDED_PORT) {
                                set(headers, &X_FORWARDED_PORT, Some(conn.port_value.clone()));
                            }
                            set(headers, &FLY_FORWARDED_PORT, Some(conn.port_value.clone()));
                            set(headers, &FLY_REGION, self.region_value.clone());
                            set(headers, &FLY_REQUEST_ID, request_id_value.clone());
                            set(
                                headers,
                                &hyper::header::VIA,
                                Some(HeaderValue::from_static(via(version))),
                            );
                            // Origin form: the connection is already to the machine (most
                            // HTTP/1.1 requests come so; HTTP/2 ones and absolute-form ones
                            // are rewritten).
                            if req.uri().scheme().is_some() || req.uri().authority().is_some() {
                                let path = req
                                    .uri()
                                    .path_and_query()
                                    .map_or("/".to_string(), |p| p.to_string());
                                match path.parse() {
                                    Ok(uri) => *req.uri_mut() = uri,
                                    Err(_) => {
                                        let r = text(StatusCode::BAD_REQUEST, "bad request target");
                                        return (r, None);
                                    }
                                }
                            }
                            *req.version_mut() = Version::HTTP_11;
                            // HTTP/2 requests name the host in :authority only.
                            if !req.headers().contains_key(HOST) {
                                if let Some(h) =
                                    host.as_deref().and_then(|h| HeaderValue::from_str(h).ok())
                                {
                                    req.headers_mut().insert(HOST, h);
                                }
                            }
                            match self
                                .send(
                                    req,
                                    c,
                                    backend,
                                    c.edge().http_options.h2_backend,
                                    chosen.woken,
                                    conn,
                                )
                                .await
                            {
                                // The machine stays loaded until the body is through.
                                Ok(mut r) if r.status() == StatusCode::SWITCHING_PROTOCOLS => {
                                    let (guard, machine) = (chosen.guard, c.machine.id.clone());
                                    match client_upgrade {
                                        Some(client) => {
                                            let backend = hyper::upgrade::on(&mut r);
                                            tokio::spawn(async move {
                                                let _guard = guard;
                                                match tokio::try_join!(client, backend) {
                                                    Ok((c, b)) => {
                                                        let (mut c, mut b) =
                                                            (TokioIo::new(c), TokioIo::new(b));
                                                        let _ = tokio::io::copy_bidirectional(
                                                            &mut c, &mut b,
                                                        )
                                                        .await;
                                                    }
                                                    Err(e) => {
                                                        tracing::debug!(%machine, error = %e, "proxy: upgrade failed")
                                                    }
                                                }
                                            });
                                            upgraded = true;
                                            r.map(|b| b.boxed())
                                        }
                                        None => text(
                                            StatusCode::BAD_GATEWAY,
                                            "the machine switched protocols unasked",
                                        ),
                                    }
                                }
                                Ok(r) => {
                                    let guard = chosen.guard;
                                    r.map(move |b| {
                                        b.map_frame(move |f| {
                                            let _ = &guard;
                                            f
                                        })
                                        .boxed()
                                    })
                                }
                                Err(e) => {
                                    tracing::info!(%app, machine = %c.machine.id, error = %e, "proxy: the machine failed the request");
                                    text(
                                        StatusCode::BAD_GATEWAY,
                                        format!("the machine did not answer: {e}"),
                                    )
                                }
                            }
                        }
                    }
                }
            }
        };
        let headers = resp.headers_mut();
        if !upgraded {
            for h in &HOP_BY_HOP {
                headers.remove(h);
            }
        }
        // `response.pristine` leaves the proxy's own headers out (and the app's alone).
        if !options.pristine {
            if let Some(v) = request_id_value {
                headers.insert(FLY_REQUEST_ID.clone(), v);
            }
            headers.insert(hyper::header::VIA, HeaderValue::from_static(via(version)));
            if !headers.contains_key(hyper::header::SERVER) {
                headers.insert(
                    hyper::header::SERVER,
                    HeaderValue::from_static("Fly/hangar"),
                );
            }
        }
        for (name, values) in &options.response_headers {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            headers.remove(&name);
            for v in values.iter().flatten() {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.append(name.clone(), v);
                }
            }
        }
        (resp, Some(app))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_strips_ports_from_hosts() {
        assert_eq!(strip_port("app.localhost:8080"), "app.localhost");
        assert_eq!(strip_port("app.localhost"), "app.localhost");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
