//! The edge proxy: services reached from the host through their edge ports, Fly's headers,
//! balancing, Host routing, raw TCP with the PROXY protocol, autostop/autostart, and edge port
//! claims. Each test runs a networked daemon (one at a time) with `--autostop-after 2s`.

mod common;

use std::time::{Duration, Instant};

use common::{certificate_for, test_image, Daemon};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn daemon() -> Daemon {
    // Nothing here resolves names outside `.internal`; the upstream is never asked.
    Daemon::start_networked("127.0.0.1:9".parse().unwrap()).await
}

async fn create_app(d: &Daemon, name: &str) {
    let r = d
        .post(
            "/v1/apps",
            json!({"app_name": name, "org_slug": "personal"}),
        )
        .await;
    assert_eq!(r.status, 201, "create app {name}: {}", r.text());
}

/// A CGI-capable busybox httpd on 8080 whose `/cgi-bin/env` prints the request's environment
/// (HTTP headers as `HTTP_*`) and `/hostname` the machine id.
const WEB: &str = "mkdir -p /www/cgi-bin && hostname > /www/hostname && \
    printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\necho MACHINE=$(hostname)\\n' > /www/cgi-bin/env && \
    chmod +x /www/cgi-bin/env && exec httpd -f -p 8080 -h /www";

fn web_config(services: Value) -> Value {
    json!({"config": {
        "image": test_image(),
        "init": {"exec": ["/bin/sh", "-c", WEB]},
        "services": services,
    }})
}

fn http_service(port: u16, extra: Value) -> Value {
    let mut s = json!({
        "protocol": "tcp", "internal_port": 8080,
        "ports": [{"port": port, "handlers": ["http"]}],
    });
    common::merge(&mut s, extra);
    json!([s])
}

async fn launch(d: &Daemon, app: &str, body: Value) -> String {
    let id = d.launch(app, body).await;
    d.wait_state(app, &id, "started").await;
    id
}

/// A plain HTTP/1.1 GET through the proxy: (status, headers and body as text).
async fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to the proxy on {port}: {e}"));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut out))
        .await
        .expect("the proxy answered in time")
        .unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim()
}

async fn state(d: &Daemon, app: &str, id: &str) -> String {
    let m: Value = d
        .get(&format!("/v1/apps/{app}/machines/{id}"))
        .await
        .json()
        .unwrap();
    m["state"].as_str().unwrap_or_default().to_string()
}

async fn eventually(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_http_service_answers_on_its_edge_port_with_flys_headers() {
    let d = daemon().await;
    create_app(&d, "edge").await;
    let id = launch(&d, "edge", web_config(http_service(18080, json!({})))).await;

    let (status, resp) = get(18080, "127.0.0.1:18080", "/hostname").await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(body(&resp), id);
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nfly-request-id: ") && lower.contains("-local\r\n"),
        "{resp}"
    );
    assert!(lower.contains("\r\nvia: 1.1 hangar\r\n"), "{resp}");

    let (status, resp) = get(18080, "127.0.0.1:18080", "/cgi-bin/env").await;
    assert_eq!(status, 200, "{resp}");
    for want in [
        "HTTP_FLY_CLIENT_IP=127.0.0.1",
        "HTTP_X_FORWARDED_FOR=127.0.0.1, 127.0.0.1",
        "HTTP_X_FORWARDED_PROTO=http",
        "HTTP_X_FORWARDED_PORT=18080",
        "HTTP_FLY_FORWARDED_PORT=18080",
        "HTTP_FLY_REGION=local",
        "HTTP_VIA=1.1 hangar",
        "HTTP_FLY_REQUEST_ID=",
    ] {
        assert!(resp.contains(want), "missing {want}: {resp}");
    }

    // `hangar services list` shows the port, where it listens and the machine behind it.
    let out = d.cli(&["services", "list", "-a", "edge"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("18080") && text.contains("127.0.0.1:18080") && text.contains("http"),
        "{text}"
    );
    assert!(text.contains(&id) && text.contains("started"), "{text}");

    let out = d.cli(&["machine", "status", &id, "-a", "edge"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Services") && text.contains("18080") && text.contains("8080"),
        "{text}"
    );

    // Destroying the machine closes the edge port: nothing is left listening.
    d.destroy_machine("edge", &id, true).await;
    eventually("the edge port to close", 10, async || {
        tokio::net::TcpStream::connect("127.0.0.1:18080")
            .await
            .is_err()
    })
    .await;
}

#[tokio::test]
async fn load_is_shared_and_apps_share_http_ports_by_host() {
    let d = daemon().await;
    create_app(&d, "pair").await;
    create_app(&d, "other").await;
    let a = launch(&d, "pair", web_config(http_service(18081, json!({})))).await;
    let b = launch(&d, "pair", web_config(http_service(18081, json!({})))).await;
    let c = launch(&d, "other", web_config(http_service(18081, json!({})))).await;

    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let (status, resp) = get(18081, "pair.localhost", "/hostname").await;
        assert_eq!(status, 200, "{resp}");
        seen.insert(body(&resp).to_string());
    }
    assert_eq!(
        seen,
        [a.clone(), b.clone()].into_iter().collect(),
        "both machines serve"
    );
    let (_, resp) = get(18081, "other.localhost:18081", "/hostname").await;
    assert_eq!(body(&resp), c);
    let (status, resp) = get(18081, "nobody.localhost", "/hostname").await;
    assert_eq!(status, 404, "{resp}");

    // Raw TCP ports belong to one app: a second app's claim is a 400 naming the holder, at
    // create and at update, and nothing changes.
    let tcp =
        |port: u16| json!([{"protocol": "tcp", "internal_port": 8080, "ports": [{"port": port}]}]);
    let r = d
        .post("/v1/apps/pair/machines", web_config(tcp(18081)))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("18081") && r.text().contains("other"),
        "{}",
        r.text()
    );
    let r = d
        .post(
            &format!("/v1/apps/other/machines/{c}"),
            web_config(tcp(18081)),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("pair"), "{}", r.text());
    let (_, resp) = get(18081, "other.localhost", "/hostname").await;
    assert_eq!(body(&resp), c, "still served as before");
}

#[tokio::test]
async fn raw_tcp_with_the_proxy_protocol() {
    let d = daemon().await;
    create_app(&d, "echo").await;
    let body = json!({"config": {
        "image": test_image(),
        "init": {"exec": ["/bin/nc", "-ll", "-p", "9000", "-e", "/bin/cat"]},
        "services": [{"protocol": "tcp", "internal_port": 9000, "ports": [
            {"port": 15000},
            {"port": 15001, "handlers": ["proxy_proto"]},
            {"port": 15002, "handlers": ["proxy_proto"], "proxy_proto_options": {"version": "v2"}},
        ]}],
    }});
    launch(&d, "echo", body).await;

    /// Sends a line and reads until it comes back: what the machine received.
    async fn echo(port: u16) -> (Vec<u8>, u16) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let local = s.local_addr().unwrap().port();
        s.write_all(b"hello\n").await.unwrap();
        let mut got = Vec::new();
        let read = async {
            let mut buf = [0u8; 256];
            while !got.ends_with(b"hello\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("echo in time");
        (got, local)
    }
    assert_eq!(echo(15000).await.0, b"hello\n");
    let (got, local) = echo(15001).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {local} 15001\r\nhello\n")
    );
    let (got, local) = echo(15002).await;
    assert_eq!(&got[..16], b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c");
    assert_eq!(&got[24..26], &local.to_be_bytes());
    assert_eq!(&got[28..], b"hello\n");
}

#[tokio::test]
async fn autostop_suspends_idle_machines_and_a_request_resumes_them() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let d = Daemon::start_networked_with(
        "127.0.0.1:9".parse().unwrap(),
        &["--metrics-listen", &metrics],
    )
    .await;
    create_app(&d, "nap").await;
    let id = launch(
        &d,
        "nap",
        web_config(http_service(
            18082,
            json!({"autostop": "suspend", "autostart": true}),
        )),
    )
    .await;
    eventually("autostop to suspend the idle machine", 15, async || {
        state(&d, "nap", &id).await == "suspended"
    })
    .await;
    let events: Vec<Value> = d
        .get(&format!("/v1/apps/nap/machines/{id}/events"))
        .await
        .json()
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "suspend" && e["source"] == "fly-proxy"),
        "the proxy is recorded as the source: {events:?}"
    );
    let (status, resp) = get(18082, "nap.localhost", "/hostname").await;
    assert_eq!((status, body(&resp)), (200, id.as_str()), "{resp}");
    assert_eq!(state(&d, "nap", &id).await, "started");

    // The metrics count it all.
    let (status, text) = get(metrics_port, "127.0.0.1", "/metrics").await;
    assert_eq!(status, 200, "{text}");
    for want in [
        "hangar_proxy_autostarts_total{app=\"nap\"} 1",
        "hangar_proxy_autostops_total{app=\"nap\"} 1",
        "hangar_proxy_http_requests_total{app=\"nap\",status=\"200\"} 1",
        "hangar_proxy_http_request_duration_seconds_bucket{",
        "hangar_machines{state=\"started\"} 1",
    ] {
        assert!(text.contains(want), "missing {want}: {text}");
    }

    // With autostart off, a stopped machine stays stopped and the request gets a 503 at once.
    let r = d
        .post(&format!("/v1/apps/nap/machines/{id}/stop"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("nap", &id, "stopped").await;
    let r = d
        .post(&format!("/v1/apps/nap/machines/{id}"), {
            let mut b = web_config(http_service(18082, json!({"autostart": false})));
            b["skip_launch"] = json!(true);
            b
        })
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_state("nap", &id, "stopped").await;
    let t0 = Instant::now();
    let (status, resp) = get(18082, "nap.localhost", "/hostname").await;
    assert_eq!(status, 503, "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn min_machines_running_keeps_one_up() {
    let d = daemon().await;
    create_app(&d, "floor").await;
    let svc = http_service(
        18083,
        json!({"autostop": "stop", "min_machines_running": 1}),
    );
    let a = launch(&d, "floor", web_config(svc.clone())).await;
    let b = launch(&d, "floor", web_config(svc)).await;
    eventually("one machine to be stopped", 20, async || {
        let states = [state(&d, "floor", &a).await, state(&d, "floor", &b).await];
        states.contains(&"stopped".to_string())
    })
    .await;
    // Several more passes: the other one stays.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let states = [state(&d, "floor", &a).await, state(&d, "floor", &b).await];
    assert!(states.contains(&"started".to_string()), "{states:?}");
    assert!(states.contains(&"stopped".to_string()), "{states:?}");
}

#[tokio::test]
async fn tls_terminates_with_a_self_signed_certificate_per_app_and_speaks_http2() {
    let d = daemon().await;
    create_app(&d, "secure").await;
    let services = json!([{"protocol": "tcp", "internal_port": 8080, "ports": [
        {"port": 18443, "handlers": ["tls", "http"]},
        {"port": 18084, "handlers": ["http"], "force_https": true},
    ]}]);
    let id = launch(&d, "secure", web_config(services)).await;
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--resolve",
                "secure.localhost:18443:127.0.0.1",
            ])
            .args(args)
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "-kv",
            "--http2",
            "https://secure.localhost:18443/cgi-bin/env",
        ])
    })
    .await
    .unwrap();
    assert!(out.contains("HTTP_X_FORWARDED_PROTO=https"), "{out}{err}");
    assert!(out.contains("HTTP_X_FORWARDED_SSL=on"), "{out}");
    assert!(err.contains("HTTP/2 200"), "HTTP/2 to the client: {err}");
    assert!(
        err.contains("secure.localhost"),
        "the app's own certificate: {err}"
    );
    // Without -k the self-signed certificate is refused, as it should be.
    let (_, err) =
        tokio::task::spawn_blocking(move || curl(&["https://secure.localhost:18443/hostname"]))
            .await
            .unwrap();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let _ = id;

    // force_https: plain HTTP gets a 301 to https.
    let (status, resp) = get(18084, "secure.localhost:18084", "/x?y=1").await;
    assert_eq!(status, 301, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("\r\nlocation: https://secure.localhost/x?y=1\r\n"),
        "{resp}"
    );
}

#[tokio::test]
async fn a_failing_service_check_takes_a_machine_out_of_rotation_and_back() {
    let d = daemon().await;
    create_app(&d, "checked").await;
    let svc = http_service(
        18085,
        json!({"checks": [{"type": "http", "path": "/hostname", "interval": "1s", "timeout": "1s"}]}),
    );
    let a = launch(&d, "checked", web_config(svc.clone())).await;
    let b = launch(&d, "checked", web_config(svc)).await;
    let served = async || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let (status, resp) = get(18085, "checked.localhost", "/cgi-bin/env").await;
            assert_eq!(status, 200, "{resp}");
            let host = resp
                .lines()
                .find_map(|l| l.strip_prefix("MACHINE="))
                .unwrap_or_default()
                .to_string();
            seen.insert(host);
        }
        seen
    };
    // A's check fails once its /hostname is gone: only B serves.
    let r = d
        .post(
            &format!("/v1/apps/checked/machines/{a}/exec"),
            json!({"command": ["mv", "/www/hostname", "/www/gone"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually("A out of rotation", 10, async || {
        served().await == [b.clone()].into()
    })
    .await;
    assert_eq!(
        state(&d, "checked", &a).await,
        "started",
        "a check never stops a machine"
    );
    // Back when it passes again.
    let r = d
        .post(
            &format!("/v1/apps/checked/machines/{a}/exec"),
            json!({"command": ["mv", "/www/gone", "/www/hostname"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually("A back in rotation", 10, async || {
        served().await.contains(&a)
    })
    .await;
}

/// The multi-container seed's rate limiter: Debian's nginx (an image built with mmdebstrap) as
/// a sidecar limiting requests to 1/s in front of an app container, reached from the host
/// through the proxy.
#[tokio::test]
async fn the_seeds_rate_limiter_sidecar_is_reached_through_the_proxy() {
    let d = daemon().await;
    create_app(&d, "limited").await;
    let nginx = format!("{}/hangar/nginx:latest", common::registry());
    // The seed's own file: limit_req 1r/s, listen 8080, proxy_pass http://localhost:80.
    let conf = "bGltaXRfcmVxX3pvbmUgJGJpbmFyeV9yZW1vdGVfYWRkciB6b25lPW15X3pvbmU6MTBtIHJhdGU9MXIvczsKCnNlcnZlciB7CiAgbGlzdGVuIDgwODA7CgogIGxvY2F0aW9uIC8gewogICAgbGltaXRfcmVxIHpvbmU9bXlfem9uZTsKICAgIHByb3h5X3Bhc3MgaHR0cDovL2xvY2FsaG9zdDo4MDsKICB9Cn0=";
    let config = json!({"config": {
        "containers": [
            {"name": "nginx", "image": nginx,
             "files": [{"guest_path": "/etc/nginx/conf.d/default.conf", "raw_value": conf}],
             "depends_on": [{"name": "echo", "condition": "started"}]},
            {"name": "echo", "image": test_image(),
             "cmd": ["/bin/sh", "-c", "mkdir -p /www && echo hello from echo > /www/index.html && exec httpd -f -p 80 -h /www"]},
        ],
        "services": [{"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 18087, "handlers": ["http"]}]}],
        "guest": {"cpus": 1, "memory_mb": 256, "cpu_kind": "shared"},
    }});
    launch(&d, "limited", config).await;
    let mut first = None;
    eventually("nginx to answer", 20, async || {
        let (status, resp) = get(18087, "limited.localhost", "/index.html").await;
        first = Some((status, resp));
        status == 200
    })
    .await;
    let (_, resp) = first.unwrap();
    assert_eq!(body(&resp), "hello from echo", "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("server: nginx"),
        "through nginx: {resp}"
    );
    // Past 1 request a second, nginx refuses.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(18087, "limited.localhost", "/index.html").await.0);
    }
    assert!(statuses.contains(&503), "rate limited: {statuses:?}");
}

/// An upgrade (what WebSockets do) passes through: the machine's 101, then bytes both ways.
#[tokio::test]
async fn upgrades_pass_through_the_http_handler() {
    let d = daemon().await;
    create_app(&d, "ws").await;
    // A machine that answers any request with a 101 and then echoes.
    let up = "cr=$(printf '\\r')\n\
        while read -r l; do [ \"$l\" = \"$cr\" ] || [ -z \"$l\" ] && break; done\n\
        printf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n'\n\
        exec cat\n";
    use base64::Engine;
    let body = json!({"config": {
        "image": test_image(),
        "files": [{"guest_path": "/up.sh", "raw_value": base64::engine::general_purpose::STANDARD.encode(up)}],
        "init": {"exec": ["/bin/nc", "-ll", "-p", "8080", "-e", "/bin/sh", "/up.sh"]},
        "services": http_service(18088, json!({})),
    }});
    launch(&d, "ws", body).await;
    let mut s = tokio::net::TcpStream::connect("127.0.0.1:18088")
        .await
        .unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let head = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(15), head)
        .await
        .expect("101 in time");
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    s.write_all(b"ping\n").await.unwrap();
    let mut echo = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echo, b"ping\n");
}

/// `http_options`: h2_backend talks HTTP/2 to the machine (Debian's nginx, h2c), response
/// headers are set and removed, and `pristine` leaves the proxy's own headers out.
#[tokio::test]
async fn http_options_h2_backend_and_response_headers() {
    use base64::Engine;
    let d = daemon().await;
    create_app(&d, "opts").await;
    let conf = "server { listen 8080 http2; access_log off; location / { \
        add_header X-App-Header app; return 200 \"proto=$server_protocol\\n\"; } }\n";
    let ports = json!([
        {"port": 18089, "handlers": ["http"], "http_options": {"h2_backend": true,
            "response": {"headers": {"x-added": "yes", "x-multi": ["a", "b"], "x-app-header": false}}}},
        {"port": 18092, "handlers": ["http"], "http_options": {"h2_backend": true, "response": {"pristine": true}}},
    ]);
    let config = json!({"config": {
        "image": format!("{}/hangar/nginx:latest", common::registry()),
        "files": [{"guest_path": "/etc/nginx/conf.d/default.conf",
                   "raw_value": base64::engine::general_purpose::STANDARD.encode(conf)}],
        "services": [{"protocol": "tcp", "internal_port": 8080, "ports": ports}],
    }});
    launch(&d, "opts", config).await;
    let mut resp = String::new();
    eventually("nginx to answer", 20, async || {
        let (status, r) = get(18089, "opts.localhost", "/").await;
        if status != 200 {
            eprintln!("not yet: {r}");
        }
        resp = r;
        status == 200
    })
    .await;
    let lower = resp.to_ascii_lowercase();
    assert_eq!(body(&resp), "proto=HTTP/2.0", "{resp}");
    assert!(lower.contains("\r\nx-added: yes\r\n"), "{resp}");
    assert!(
        lower.contains("\r\nx-multi: a\r\n") && lower.contains("\r\nx-multi: b\r\n"),
        "{resp}"
    );
    assert!(!lower.contains("x-app-header"), "removed: {resp}");
    assert!(lower.contains("\r\nfly-request-id: "), "{resp}");
    let (status, resp) = get(18092, "opts.localhost", "/").await;
    let lower = resp.to_ascii_lowercase();
    assert_eq!(status, 200, "{resp}");
    assert!(
        !lower.contains("fly-request-id") && !lower.contains("\r\nvia:"),
        "pristine: {resp}"
    );
    assert!(lower.contains("x-app-header: app"), "{resp}");
}

/// Client-side limits: a malformed request gets a 400 from the proxy, an oversized head a 431,
/// and a connection that sends nothing is closed after the idle timeout.
#[tokio::test]
async fn bad_and_idle_clients_are_answered_and_cut() {
    let d = Daemon::start_networked_with(
        "127.0.0.1:9".parse().unwrap(),
        &[
            "--proxy-idle-timeout",
            "1s",
            "--proxy-max-header-bytes",
            "8192",
        ],
    )
    .await;
    create_app(&d, "limits").await;
    launch(&d, "limits", web_config(http_service(18093, json!({})))).await;
    async fn raw(req: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect("127.0.0.1:18093")
            .await
            .unwrap();
        let _ = s.write_all(req).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_string()
    }
    let resp = raw(b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: limits.localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let resp = raw(big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    // Idle: closed by the proxy after about a second.
    let mut s = tokio::net::TcpStream::connect("127.0.0.1:18093")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed by the proxy")
        .unwrap_or(0);
    let _ = n;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

/// The proxy lives in the daemon: after a daemon SIGKILL and restart its edge ports are back
/// (from the stored machines) within a second of the daemon answering.
#[tokio::test]
async fn edge_ports_come_back_with_the_daemon() {
    let mut d = daemon().await;
    create_app(&d, "again").await;
    let id = launch(&d, "again", web_config(http_service(18096, json!({})))).await;
    let (status, _) = get(18096, "again.localhost", "/hostname").await;
    assert_eq!(status, 200);
    d.kill9();
    d.restart().await;
    let t0 = Instant::now();
    eventually("the edge port after the restart", 5, async || {
        tokio::net::TcpStream::connect("127.0.0.1:18096")
            .await
            .is_ok()
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let (status, resp) = get(18096, "again.localhost", "/hostname").await;
    assert_eq!((status, body(&resp)), (200, id.as_str()), "{resp}");
}

/// A custom certificate imported through flaps' certificates API is served for its hostname,
/// which routes to the app (TLS and plain HTTP), survives a restart, and goes when deleted.
#[tokio::test]
async fn custom_certificates_are_served_for_their_hostnames() {
    let mut d = daemon().await;
    create_app(&d, "shop").await;
    create_app(&d, "blog").await;
    let ports = json!([{"protocol": "tcp", "internal_port": 8080, "ports": [
        {"port": 18445, "handlers": ["tls", "http"]},
        {"port": 18085, "handlers": ["http"]},
    ]}]);
    launch(&d, "shop", web_config(ports.clone())).await;
    launch(&d, "blog", web_config(ports)).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate_for(dir.path(), "shop.example.test");
    let (other_cert, other_key) = certificate_for(dir.path(), "other.example.test");

    // Bad imports: a certificate for another name, a key of another certificate, a bad name.
    for (body, named) in [
        (
            json!({"hostname": "shop.example.test", "fullchain": other_cert, "private_key": other_key}),
            "not valid for shop.example.test",
        ),
        (
            json!({"hostname": "shop.example.test", "fullchain": cert, "private_key": other_key}),
            "private_key",
        ),
        (
            json!({"hostname": "not a host", "fullchain": cert, "private_key": key}),
            "hostname",
        ),
        (
            json!({"hostname": "shop.example.test", "fullchain": "junk", "private_key": key}),
            "fullchain",
        ),
    ] {
        let r = d.post("/v1/apps/shop/certificates/custom", body).await;
        assert_eq!(r.status, 400, "{named}: {}", r.text());
        assert!(
            common::error_text(&r).contains(named),
            "{named}: {}",
            r.text()
        );
    }
    let r = d
        .post(
            "/v1/apps/shop/certificates/custom",
            json!({"hostname": "shop.example.test", "fullchain": cert, "private_key": key}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json::<Value>().unwrap()["certificates"][0]["source"],
        "custom"
    );
    let r = d
        .post(
            "/v1/apps/blog/certificates/custom",
            json!({"hostname": "shop.example.test", "fullchain": cert, "private_key": key}),
        )
        .await;
    assert_eq!(r.status, 409, "another app's hostname: {}", r.text());
    let list: Value = d.get("/v1/apps/shop/certificates").await.json().unwrap();
    assert_eq!(list["total_count"], 1, "{list}");
    assert!(!list.to_string().contains("PRIVATE KEY"), "{list}");
    assert_eq!(
        d.post(
            "/v1/apps/shop/certificates/acme",
            json!({"hostname": "x.example"})
        )
        .await
        .status,
        501
    );

    let ca = dir.path().join("shop.example.test.crt");
    let curl = move |host: &'static str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--resolve",
                &format!("{host}:18445:127.0.0.1"),
            ])
            .arg("--cacert")
            .arg(&ca)
            .arg(format!("https://{host}:18445/hostname"))
            .output()
            .expect("curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Verified against the imported certificate (no -k), and routed to shop by the name.
    let c = curl.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || c("shop.example.test"))
        .await
        .unwrap();
    assert!(ok, "{out}");
    let shop_machine: Vec<Value> = d.get("/v1/apps/shop/machines").await.json().unwrap();
    assert_eq!(out.trim(), shop_machine[0]["id"].as_str().unwrap(), "{out}");
    // Plain HTTP with that Host reaches shop too.
    let (status, resp) = get(18085, "shop.example.test", "/hostname").await;
    assert_eq!(status, 200, "{resp}");
    assert!(
        resp.contains(shop_machine[0]["id"].as_str().unwrap()),
        "{resp}"
    );

    // After a restart the certificate is still served; after a delete it is not.
    d.terminate();
    d.restart().await;
    let c = curl.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || c("shop.example.test"))
        .await
        .unwrap();
    assert!(ok, "after a restart: {out}");
    let r = d
        .delete("/v1/apps/shop/certificates/shop.example.test")
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let (ok, out) = tokio::task::spawn_blocking(move || curl("shop.example.test"))
        .await
        .unwrap();
    assert!(!ok, "no longer served: {out}");
}

/// An HTTP/1.0 request over a raw TCP connection to `ip:port`: the response text.
async fn raw_get(ip: &str, port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((ip, port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut out),
    )
    .await;
    out
}

/// IP assignments: apps with a dedicated address (from --proxy-ip-pool) each keep their own raw
/// TCP port there, an app without one uses the shared address, and the pool runs out cleanly.
#[tokio::test]
async fn dedicated_addresses_give_apps_their_own_raw_tcp_ports() {
    let d = Daemon::start_networked_with(
        "127.0.0.1:9".parse().unwrap(),
        &[
            "--proxy-ip-pool",
            "127.0.0.2",
            "--proxy-ip-pool",
            "127.0.0.3",
        ],
    )
    .await;
    for app in ["db1", "db2", "db3", "db4"] {
        create_app(&d, app).await;
    }
    let assign = |app: &'static str, kind: &'static str| {
        let d = &d;
        async move {
            d.post(
                &format!("/v1/apps/{app}/ip_assignments"),
                // flaps' AssignIP body: every field, empty when unset.
                json!({"type": kind, "region": "", "org_slug": "", "network": "",
                       "service_name": ""}),
            )
            .await
        }
    };
    let r = assign("db1", "v4").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["ip"], "127.0.0.2");
    let r = assign("db2", "v4").await;
    assert_eq!(r.json::<Value>().unwrap()["ip"], "127.0.0.3");
    let r = assign("db3", "v4").await;
    assert_eq!(r.status, 409, "the pool is used up: {}", r.text());
    let r = assign("db3", "shared_v4").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let shared: Value = r.json().unwrap();
    assert_eq!(
        (shared["ip"].as_str(), shared["shared"].as_bool()),
        (Some("127.0.0.1"), Some(true))
    );
    assert_eq!(assign("db3", "private_v6").await.status, 400);
    assert_eq!(assign("db3", "v5").await.status, 400);

    // The same raw TCP port for three apps: two on their own addresses, one shared.
    let raw = json!([{"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 18700}]}]);
    let mut ids = std::collections::BTreeMap::new();
    for app in ["db1", "db2", "db3"] {
        ids.insert(app, launch(&d, app, web_config(raw.clone())).await);
    }
    let r = d
        .post("/v1/apps/db4/machines", web_config(raw.clone()))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        common::error_text(&r).contains("db3"),
        "names the holder: {}",
        r.text()
    );
    for (ip, app) in [
        ("127.0.0.2", "db1"),
        ("127.0.0.3", "db2"),
        ("127.0.0.1", "db3"),
    ] {
        // `started` means the workload was forked, not that it listens yet: a raw TCP
        // connection before that is closed empty, so it is tried again for a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut resp = raw_get(ip, 18700, "/hostname").await;
        while resp.is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            resp = raw_get(ip, 18700, "/hostname").await;
        }
        assert!(resp.contains(ids[app].as_str()), "{ip} -> {app}: {resp}");
    }
    let list: Value = d.get("/v1/apps/db1/ip_assignments").await.json().unwrap();
    assert_eq!(list["ips"].as_array().unwrap().len(), 1, "{list}");
    // Releasing db1's address would put its port 18700 on the shared address, db3's: refused.
    let r = d.delete("/v1/apps/db1/ip_assignments/127.0.0.2").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        d.delete("/v1/apps/db1/ip_assignments/127.0.0.9")
            .await
            .status,
        404
    );
    // Without the machine, it goes, and the address stops answering.
    d.destroy_machine("db1", &ids["db1"], true).await;
    let r = d.delete("/v1/apps/db1/ip_assignments/127.0.0.2").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(tokio::net::TcpStream::connect(("127.0.0.2", 18700))
        .await
        .is_err());
}

/// `psql` on the host through a `pg_tls` port to a real PostgreSQL (Debian's, in the
/// mmdebstrap-built `hangar/postgres` image): the proxy answers the SSLRequest and terminates
/// TLS, so `sslmode=require` connects while the server sees a plaintext client; a plaintext
/// client is passed on as it is.
#[tokio::test]
async fn pg_tls_terminates_tls_for_postgres_clients() {
    if std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("psql is missing: apt install postgresql-client (.ci/run installs postgresql)");
    }
    let d = daemon().await;
    create_app(&d, "pg").await;
    let config = json!({"config": {
        "image": format!("{}/hangar/postgres:latest", common::registry()),
        "guest": {"cpus": 1, "memory_mb": 512, "cpu_kind": "shared"},
        "services": [{"protocol": "tcp", "internal_port": 5432,
                      "ports": [{"port": 15432, "handlers": ["pg_tls"]}]}],
    }});
    launch(&d, "pg", config).await;
    let psql = |sslmode: &str| {
        let out = std::process::Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port=15432 user=postgres dbname=postgres sslmode={sslmode} connect_timeout=5"
            ))
            .args(["-Atc", "select 'answer', ssl from pg_stat_ssl where pid = pg_backend_pid()"])
            .env("PGPASSWORD", "unused")
            .output()
            .expect("run psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    // initdb runs at the machine's first start: wait for the server to take queries.
    let mut last = String::new();
    eventually("PostgreSQL to answer through pg_tls", 60, async || {
        let (ok, out, err) = psql("require");
        last = format!("{out} {err}");
        ok
    })
    .await;
    // TLS to the proxy (`require` fails without it), plaintext from the proxy to the server.
    let (ok, out, err) = psql("require");
    assert!(ok, "{err}");
    assert_eq!(out, "answer|f", "{last}");
    // A client that does not ask for TLS goes through untouched.
    let (ok, out, err) = psql("disable");
    assert!(ok, "{err}");
    assert_eq!(out, "answer|f");
    // The handshake is the proxy's: its certificate is the app's self-signed one.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "postgres",
            "-connect",
            "127.0.0.1:15432",
        ])
        .args(["-servername", "pg.localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let pem = text
        .find("-----BEGIN CERTIFICATE-----")
        .and_then(|a| {
            text.find("-----END CERTIFICATE-----")
                .map(|b| &text[a..b + 25])
        })
        .unwrap_or_else(|| panic!("no certificate from the pg_tls port: {text}"));
    let mut x509 = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let names = x509.wait_with_output().unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(names.contains("DNS:pg.localhost"), "{names}");
}

/// A UDP service: datagrams to the edge port reach the machine at `fly-global-services:<port>`
/// and its answers come back from the edge address; each client is a flow of its own; a second
/// app cannot claim the same UDP port. The server is Perl's (Debian's `perl-base`, in the
/// `hangar/nginx` image), bound to `fly-global-services` as Fly's docs tell apps to.
#[tokio::test]
async fn udp_services_relay_datagrams_both_ways() {
    let d = daemon().await;
    create_app(&d, "dgram").await;
    let echo = "use IO::Socket::INET; \
        my $s = IO::Socket::INET->new(LocalAddr => 'fly-global-services', LocalPort => 5353, \
            Proto => 'udp') or die \"bind: $!\"; \
        while (1) { my $peer = $s->recv(my $buf, 65535); $s->send(\"echo:$buf\", 0, $peer); }";
    let config = json!({"config": {
        "image": format!("{}/hangar/nginx:latest", common::registry()),
        "init": {"exec": ["perl", "-e", echo]},
        "services": [{"protocol": "udp", "internal_port": 5353, "ports": [{"port": 15353}]}],
    }});
    let id = launch(&d, "dgram", config).await;
    let ask = async |socket: &tokio::net::UdpSocket, msg: &str| -> Option<String> {
        socket
            .send_to(msg.as_bytes(), "127.0.0.1:15353")
            .await
            .ok()?;
        let mut buf = [0u8; 1024];
        let (n, from) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
        assert_eq!(
            from,
            "127.0.0.1:15353".parse().unwrap(),
            "answers come from the edge"
        );
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The server may not be bound yet: datagrams before then are lost, as UDP's are.
    eventually("the UDP service to answer", 20, async || {
        ask(&a, "ping").await.as_deref() == Some("echo:ping")
    })
    .await;
    assert_eq!(ask(&a, "again").await.as_deref(), Some("echo:again"));
    assert_eq!(ask(&b, "other").await.as_deref(), Some("echo:other"));
    // The machine's /etc/hosts names its private IPv4 fly-global-services.
    let r = d
        .post(
            &format!("/v1/apps/dgram/machines/{id}/exec"),
            json!({"command": ["grep", "fly-global-services", "/etc/hosts"]}),
        )
        .await;
    assert!(r.text().contains("fly-global-services"), "{}", r.text());

    // `services list` shows it.
    let r = d.get("/hangar/v1/apps/dgram/services").await;
    assert!(r.text().contains("\"15353/udp\""), "{}", r.text());
    assert!(r.text().contains("127.0.0.1:15353"), "{}", r.text());

    // A UDP port belongs to one app.
    create_app(&d, "dgram2").await;
    let r = d
        .post(
            "/v1/apps/dgram2/machines",
            json!({"config": {"image": test_image(),
                "services": [{"protocol": "udp", "internal_port": 53, "ports": [{"port": 15353}]}]}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("dgram"), "{}", r.text());

    // Destroying the machine closes the port.
    let r = d
        .delete(&format!("/v1/apps/dgram/machines/{id}?force=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually("the UDP port to close", 10, async || {
        std::net::UdpSocket::bind("127.0.0.1:15353").is_ok()
    })
    .await;
}
