//! Table-driven validation of `MachineConfig` against the reference (machines-api.md §2, §6, §7,
//! §8): every case is deserialised exactly as a request body would be, validated, and either
//! checked for the error (which must name the field) or for the normalised JSON it stores.

use hangar_api::{from_json_slice, validate_config, MachineConfig};
use serde_json::{json, Value};

enum Expect {
    /// Valid. Each `(json pointer, value)` is checked on the normalised, re-serialised config;
    /// `None` means the field must be absent.
    Ok(Vec<(&'static str, Option<Value>)>),
    /// `validate_config` refuses it; the error text (`field: message`) contains this.
    Invalid(&'static str),
    /// The body does not even deserialise; the error text contains this.
    Undecodable(&'static str),
}

struct Case {
    name: &'static str,
    config: Value,
    expect: Expect,
}

fn case(name: &'static str, config: Value, expect: Expect) -> Case {
    Case {
        name,
        config,
        expect,
    }
}

fn ok() -> Expect {
    Expect::Ok(Vec::new())
}

fn ok_with(checks: Vec<(&'static str, Option<Value>)>) -> Expect {
    Expect::Ok(checks)
}

fn has(pointer: &'static str, value: Value) -> (&'static str, Option<Value>) {
    (pointer, Some(value))
}

fn absent(pointer: &'static str) -> (&'static str, Option<Value>) {
    (pointer, None)
}

fn err(substring: &'static str) -> Expect {
    Expect::Invalid(substring)
}

fn undecodable(substring: &'static str) -> Expect {
    Expect::Undecodable(substring)
}

/// `{"image": "alpine", ...extra}`.
fn alpine(extra: Value) -> Value {
    let mut config = json!({"image": "alpine"});
    for (k, v) in extra.as_object().expect("object").clone() {
        config[k] = v;
    }
    config
}

/// An nginx config with one service built from `service` (protocol tcp, internal port 80 unless
/// overridden).
fn with_service(service: Value) -> Value {
    let mut s = json!({"protocol": "tcp", "internal_port": 80});
    for (k, v) in service.as_object().expect("object").clone() {
        s[k] = v;
    }
    json!({"image": "nginx", "services": [s]})
}

/// A one-check config (`checks.c`).
fn with_check(check: Value) -> Value {
    json!({"image": "nginx", "checks": {"c": check}})
}

fn with_containers(containers: Value) -> Value {
    json!({"containers": containers})
}

fn http_healthcheck() -> Value {
    json!([{"name": "up", "http": {"port": 80, "path": "/"}, "kind": "readiness"}])
}

fn decode(body: &Value) -> Result<MachineConfig, String> {
    from_json_slice::<MachineConfig>(&serde_json::to_vec(body).unwrap())
}

fn cases() -> Vec<Case> {
    vec![
        // ---- §2.1 top level and image references (§7.1, 7.2, 7.10) ----
        case(
            "minimal create (7.1) gets the default guest",
            json!({"image": "docker.io/library/nginx:latest"}),
            ok_with(vec![
                has("/image", json!("docker.io/library/nginx:latest")),
                has("/guest", json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})),
                has("/init", json!({})),
                absent("/size"),
            ]),
        ),
        case(
            "create without launching (7.2): alpine with init.exec",
            json!({"image": "alpine", "init": {"exec": ["/bin/sleep", "inf"]}}),
            ok_with(vec![has("/init/exec", json!(["/bin/sleep", "inf"]))]),
        ),
        case("image with tag (7.10)", json!({"image": "nginx:1.27"}), ok()),
        case(
            "image on registry-1.docker.io (2.1) is stored as given",
            json!({"image": "registry-1.docker.io/library/ubuntu:latest"}),
            ok_with(vec![has(
                "/image",
                json!("registry-1.docker.io/library/ubuntu:latest"),
            )]),
        ),
        case(
            "image pinned by digest",
            json!({"image": "ghcr.io/acme/app:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}),
            ok(),
        ),
        case("no image and no containers", json!({}), err("config.image")),
        case("blank image", json!({"image": "  "}), err("config.image")),
        case("malformed image", json!({"image": "nginx:"}), err("config.image")),
        case(
            "uppercase repository",
            json!({"image": "docker.io/Library/Nginx"}),
            err("config.image"),
        ),
        case(
            "empty environment variable name",
            alpine(json!({"env": {"": "x"}})),
            err("config.env"),
        ),
        case(
            "environment variable name with '='",
            alpine(json!({"env": {"A=B": "x"}})),
            err("config.env"),
        ),
        case(
            "empty metadata key",
            alpine(json!({"metadata": {"": "x"}})),
            err("config.metadata"),
        ),
        case(
            "negative swap",
            alpine(json!({"init": {"swap_size_mb": -1}})),
            err("config.init.swap_size_mb"),
        ),
        case(
            "rootfs persist restart",
            alpine(json!({"rootfs": {"persist": "restart", "size_gb": 5}})),
            ok_with(vec![has("/rootfs", json!({"persist": "restart", "size_gb": 5}))]),
        ),
        case(
            // Found by fuzzing: 2^63 GB overflowed a conversion into a 500.
            "rootfs size beyond the largest volume",
            alpine(json!({"rootfs": {"size_gb": 9223372036854775808u64}})),
            err("config.rootfs.size_gb"),
        ),
        case(
            "rootfs persist unknown",
            alpine(json!({"rootfs": {"persist": "forever"}})),
            err("config.rootfs.persist"),
        ),
        case(
            "spot max_price_fraction 1 is allowed",
            alpine(json!({"spot": {"max_price_fraction": 1.0}})),
            ok(),
        ),
        case(
            "spot max_price_fraction must be in (0, 1]",
            alpine(json!({"spot": {"max_price_fraction": 1.5}})),
            err("config.spot.max_price_fraction"),
        ),
        case(
            "spot max_price_fraction 0 is out of range",
            alpine(json!({"spot": {"max_price_fraction": 0}})),
            err("config.spot.max_price_fraction"),
        ),
        // ---- §2.3 guest, presets and limits (§7.3) ----
        case(
            "size performance-2x (7.3) fills guest",
            alpine(json!({"size": "performance-2x"})),
            ok_with(vec![has(
                "/guest",
                json!({"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}),
            )]),
        ),
        case(
            "size shared-cpu-4x",
            alpine(json!({"size": "shared-cpu-4x"})),
            ok_with(vec![has(
                "/guest",
                json!({"cpu_kind": "shared", "cpus": 4, "memory_mb": 1024}),
            )]),
        ),
        case(
            "size performance-16x",
            alpine(json!({"size": "performance-16x"})),
            ok_with(vec![has("/guest/memory_mb", json!(32768))]),
        ),
        case(
            "unknown size",
            alpine(json!({"size": "huge"})),
            err("config.size"),
        ),
        case(
            "size and guest are mutually exclusive",
            alpine(json!({"size": "performance-2x", "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}})),
            err("config.size"),
        ),
        case(
            "GPU presets are refused",
            alpine(json!({"size": "a100-40gb"})),
            err("config.guest.gpus"),
        ),
        case(
            "bad cpu count and memory (7.3)",
            alpine(json!({"guest": {"cpu_kind": "shared", "cpus": 3, "memory_mb": 300}})),
            err("config.guest.cpus"),
        ),
        case(
            "shared memory not a multiple of 256",
            alpine(json!({"guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 300}})),
            err("config.guest.memory_mb"),
        ),
        case(
            "shared memory above 2048 per cpu",
            alpine(json!({"guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 4096}})),
            err("config.guest.memory_mb"),
        ),
        case(
            "shared-cpu-8x at its 16 GB maximum",
            alpine(json!({"guest": {"cpu_kind": "shared", "cpus": 8, "memory_mb": 16384}})),
            ok(),
        ),
        case(
            "performance memory below 2048 per cpu",
            alpine(json!({"guest": {"cpu_kind": "performance", "cpus": 1, "memory_mb": 1024}})),
            err("config.guest.memory_mb"),
        ),
        case(
            "performance memory not a multiple of 1024",
            alpine(json!({"guest": {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4608}})),
            err("config.guest.memory_mb"),
        ),
        case(
            "performance with 32 cpus",
            alpine(json!({"guest": {"cpu_kind": "performance", "cpus": 32, "memory_mb": 65536}})),
            ok(),
        ),
        case(
            "performance with 3 cpus",
            alpine(json!({"guest": {"cpu_kind": "performance", "cpus": 3, "memory_mb": 8192}})),
            err("config.guest.cpus"),
        ),
        case(
            "cpu_kind alone gets that kind's minimum",
            alpine(json!({"guest": {"cpu_kind": "performance"}})),
            ok_with(vec![has(
                "/guest",
                json!({"cpu_kind": "performance", "cpus": 1, "memory_mb": 2048}),
            )]),
        ),
        case(
            "cpus alone defaults to shared",
            alpine(json!({"guest": {"cpus": 2}})),
            ok_with(vec![has(
                "/guest",
                json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 512}),
            )]),
        ),
        case(
            "unknown cpu_kind",
            alpine(json!({"guest": {"cpu_kind": "dedicated", "cpus": 1, "memory_mb": 256}})),
            err("config.guest.cpu_kind"),
        ),
        case(
            "max_memory_mb below memory_mb",
            alpine(json!({"guest": {"cpus": 1, "memory_mb": 512, "max_memory_mb": 256}})),
            err("config.guest.max_memory_mb"),
        ),
        case(
            "persist_rootfs as a string or an integer (2.3)",
            alpine(json!({"guest": {"cpus": 1, "memory_mb": 256, "persist_rootfs": 2}})),
            ok_with(vec![has("/guest/persist_rootfs", json!(2))]),
        ),
        case(
            "persist_rootfs out of range",
            alpine(json!({"guest": {"cpus": 1, "memory_mb": 256, "persist_rootfs": "sometimes"}})),
            err("config.guest.persist_rootfs"),
        ),
        case(
            "cpus of the wrong type",
            alpine(json!({"guest": {"cpus": "two"}})),
            undecodable("invalid type"),
        ),
        // ---- restart, auto_destroy, schedule (§5.3, 5.5, 7.6, 7.17) ----
        case(
            "restart on-failure with max_retries (7.6)",
            alpine(json!({"init": {"cmd": ["sh", "-c", "exit 3"]}, "restart": {"policy": "on-failure", "max_retries": 2}})),
            ok_with(vec![has("/restart", json!({"policy": "on-failure", "max_retries": 2}))]),
        ),
        case(
            "restart no with auto_destroy (7.6)",
            alpine(json!({"restart": {"policy": "no"}, "auto_destroy": true})),
            ok_with(vec![has("/auto_destroy", json!(true)), has("/restart/policy", json!("no"))]),
        ),
        case("restart always", alpine(json!({"restart": {"policy": "always"}})), ok()),
        case(
            "restart alias on-fail is CLI-only",
            alpine(json!({"restart": {"policy": "on-fail"}})),
            err("config.restart.policy"),
        ),
        case(
            "fly.toml's never is not an API policy",
            alpine(json!({"restart": {"policy": "never"}})),
            err("config.restart.policy"),
        ),
        case(
            "negative max_retries",
            alpine(json!({"restart": {"policy": "on-failure", "max_retries": -1}})),
            err("config.restart.max_retries"),
        ),
        case(
            "schedule daily (7.17)",
            alpine(json!({"schedule": "daily", "restart": {"policy": "on-failure"}})),
            ok_with(vec![has("/schedule", json!("daily"))]),
        ),
        case("schedule hourly", alpine(json!({"schedule": "hourly"})), ok()),
        case("schedule monthly", alpine(json!({"schedule": "monthly"})), ok()),
        case(
            "schedule every-5m (7.17)",
            alpine(json!({"schedule": "every-5m"})),
            err("config.schedule"),
        ),
        case(
            "schedule is case-sensitive",
            alpine(json!({"schedule": "Daily"})),
            err("config.schedule"),
        ),
        // ---- §2.4 services, autostop, ports, concurrency (§7.4, 7.5) ----
        case(
            "service from the --port pattern (7.4): suspend stays a string",
            with_service(json!({
                "autostop": "suspend", "autostart": true, "min_machines_running": 0,
                "concurrency": {"type": "requests", "soft_limit": 20, "hard_limit": 25},
                "ports": [
                    {"port": 80, "handlers": ["http"], "force_https": true},
                    {"port": 443, "handlers": ["tls", "http"]}
                ]
            })),
            ok_with(vec![
                has("/services/0/autostop", json!("suspend")),
                has("/services/0/autostart", json!(true)),
                has("/services/0/min_machines_running", json!(0)),
                has("/services/0/concurrency", json!({"type": "requests", "soft_limit": 20, "hard_limit": 25})),
                has("/services/0/ports/0/force_https", json!(true)),
                has("/services/0/ports/1/handlers", json!(["tls", "http"])),
                has("/services/0/force_instance_key", Value::Null),
            ]),
        ),
        case(
            "autostop \"stop\" is written as true",
            with_service(json!({"autostop": "stop", "ports": [{"port": 80}]})),
            ok_with(vec![has("/services/0/autostop", json!(true))]),
        ),
        case(
            "autostop \"off\" is written as false",
            with_service(json!({"autostop": "off", "ports": [{"port": 80}]})),
            ok_with(vec![has("/services/0/autostop", json!(false))]),
        ),
        case(
            "autostop false is echoed as false (7.5)",
            with_service(json!({"autostop": false, "ports": [{"port": 80}]})),
            ok_with(vec![has("/services/0/autostop", json!(false))]),
        ),
        case(
            "autostop true is echoed as true",
            with_service(json!({"autostop": true, "ports": [{"port": 80}]})),
            ok_with(vec![has("/services/0/autostop", json!(true))]),
        ),
        case(
            "autostop left unset stays unset",
            with_service(json!({"ports": [{"port": 80}]})),
            ok_with(vec![absent("/services/0/autostop")]),
        ),
        case(
            "autostop \"sometimes\" (7.5)",
            with_service(json!({"autostop": "sometimes"})),
            undecodable("autostop"),
        ),
        case(
            "autostop of the wrong type",
            with_service(json!({"autostop": 1})),
            undecodable("invalid type"),
        ),
        case(
            "udp service",
            json!({"image": "alpine", "services": [{"protocol": "udp", "internal_port": 5353, "ports": [{"port": 53}]}]}),
            ok(),
        ),
        case(
            "service protocol http",
            with_service(json!({"protocol": "http"})),
            err("config.services[0].protocol"),
        ),
        case(
            "service without protocol",
            json!({"image": "nginx", "services": [{"internal_port": 80}]}),
            err("config.services[0].protocol"),
        ),
        case(
            "service without internal_port",
            json!({"image": "nginx", "services": [{"protocol": "tcp"}]}),
            err("config.services[0].internal_port"),
        ),
        case(
            "internal_port above 65535",
            with_service(json!({"internal_port": 70000})),
            err("config.services[0].internal_port"),
        ),
        case(
            "edge port 0",
            with_service(json!({"ports": [{"port": 0}]})),
            err("config.services[0].ports[0].port"),
        ),
        case(
            "edge port range",
            with_service(json!({"ports": [{"start_port": 8000, "end_port": 8010, "handlers": ["tls"]}]})),
            ok_with(vec![has("/services/0/ports/0/start_port", json!(8000)), has("/services/0/ports/0/end_port", json!(8010))]),
        ),
        case(
            "edge port range open at one end",
            with_service(json!({"ports": [{"start_port": 8000}]})),
            ok(),
        ),
        case(
            "inverted edge port range",
            with_service(json!({"ports": [{"start_port": 9000, "end_port": 8000}]})),
            err("config.services[0].ports[0]"),
        ),
        case(
            "port entry without port or range",
            with_service(json!({"ports": [{"handlers": ["http"]}]})),
            err("config.services[0].ports[0]"),
        ),
        case(
            "unknown handler",
            with_service(json!({"ports": [{"port": 80, "handlers": ["quic"]}]})),
            err("config.services[0].ports[0].handlers"),
        ),
        case(
            "pg_tls and proxy_proto handlers",
            with_service(json!({"internal_port": 5432, "ports": [{"port": 5432, "handlers": ["proxy_proto", "pg_tls"], "proxy_proto_options": {"version": "v2"}}]})),
            ok_with(vec![has("/services/0/ports/0/proxy_proto_options", json!({"version": "v2"}))]),
        ),
        case(
            "port options pass through",
            with_service(json!({"ports": [{"port": 443, "handlers": ["tls", "http"],
                "tls_options": {"alpn": ["h2", "http/1.1"], "versions": ["TLSv1.2", "TLSv1.3"]},
                "http_options": {"compress": true, "response": {"pristine": true, "headers": {"x-a": "b"}}}}]})),
            ok_with(vec![
                has("/services/0/ports/0/tls_options/alpn", json!(["h2", "http/1.1"])),
                has("/services/0/ports/0/http_options/response/pristine", json!(true)),
            ]),
        ),
        case(
            "concurrency type bytes",
            with_service(json!({"concurrency": {"type": "bytes"}})),
            err("config.services[0].concurrency.type"),
        ),
        case(
            "concurrency soft_limit above hard_limit",
            with_service(json!({"concurrency": {"type": "connections", "soft_limit": 30, "hard_limit": 25}})),
            err("config.services[0].concurrency.soft_limit"),
        ),
        case(
            "negative concurrency limit",
            with_service(json!({"concurrency": {"hard_limit": -1}})),
            err("config.services[0].concurrency"),
        ),
        case(
            "negative min_machines_running",
            with_service(json!({"min_machines_running": -1})),
            err("config.services[0].min_machines_running"),
        ),
        case(
            "service check without a port uses the service's",
            with_service(json!({"checks": [{"type": "http", "path": "/health", "interval": "10s", "timeout": "2s"}]})),
            ok_with(vec![has("/services/0/checks/0/interval", json!("10s"))]),
        ),
        case(
            "service checks take no kind",
            with_service(json!({"checks": [{"type": "tcp", "kind": "readiness"}]})),
            err("config.services[0].checks[0].kind"),
        ),
        // ---- §2.5 checks and Go durations (§7.8) ----
        case(
            "checks with durations (7.8): nanoseconds come back as Go strings",
            json!({"image": "nginx", "checks": {
                "alive": {"type": "tcp", "port": 80, "interval": "15s", "timeout": "2s", "grace_period": "1s", "kind": "readiness"},
                "web": {"type": "http", "port": 80, "method": "GET", "path": "/", "protocol": "http",
                        "interval": 15000000000u64, "timeout": "10s",
                        "headers": [{"name": "X-Forwarded-Proto", "values": ["https"]}]}
            }}),
            ok_with(vec![
                has("/checks/alive/interval", json!("15s")),
                has("/checks/alive/grace_period", json!("1s")),
                has("/checks/web/interval", json!("15s")),
                has("/checks/web/timeout", json!("10s")),
                has("/checks/web/headers", json!([{"name": "X-Forwarded-Proto", "values": ["https"]}])),
            ]),
        ),
        case(
            "Go duration formatting of minutes, hours and fractions",
            json!({"image": "nginx", "checks": {
                "a": {"type": "tcp", "port": 80, "interval": 90000000000u64, "timeout": 1500000000u64, "grace_period": "1h"},
                "b": {"type": "tcp", "port": 80, "interval": "1m30s", "timeout": "500ms", "grace_period": 3723000000000u64},
                "c": {"type": "tcp", "port": 80, "interval": "60s", "timeout": 1500, "grace_period": "2h45m"}
            }}),
            ok_with(vec![
                has("/checks/a/interval", json!("1m30s")),
                has("/checks/a/timeout", json!("1.5s")),
                has("/checks/a/grace_period", json!("1h0m0s")),
                has("/checks/b/interval", json!("1m30s")),
                has("/checks/b/timeout", json!("500ms")),
                has("/checks/b/grace_period", json!("1h2m3s")),
                has("/checks/c/interval", json!("1m0s")),
                has("/checks/c/timeout", json!("1.5µs")),
                has("/checks/c/grace_period", json!("2h45m0s")),
            ]),
        ),
        case(
            "zero grace period is written as 0s",
            with_check(json!({"type": "tcp", "port": 80, "grace_period": 0})),
            ok_with(vec![has("/checks/c/grace_period", json!("0s"))]),
        ),
        case(
            "negative duration in nanoseconds",
            with_check(json!({"type": "tcp", "port": 80, "interval": -1})),
            undecodable("negative"),
        ),
        case(
            "negative duration string",
            with_check(json!({"type": "tcp", "port": 80, "interval": "-5s"})),
            undecodable("negative"),
        ),
        case(
            "duration string without a unit",
            with_check(json!({"type": "tcp", "port": 80, "interval": "10"})),
            undecodable("invalid duration"),
        ),
        case(
            "duration with an unknown unit",
            with_check(json!({"type": "tcp", "port": 80, "timeout": "2d"})),
            undecodable("invalid duration"),
        ),
        case(
            "fractional nanoseconds",
            with_check(json!({"type": "tcp", "port": 80, "timeout": 1.5})),
            undecodable("whole number"),
        ),
        case(
            "check type grpc",
            with_check(json!({"type": "grpc", "port": 80})),
            err("config.checks.c.type"),
        ),
        case(
            "check without type",
            with_check(json!({"port": 80})),
            err("config.checks.c.type"),
        ),
        case(
            "top-level check without port",
            with_check(json!({"type": "tcp"})),
            err("config.checks.c.port"),
        ),
        case(
            "check kind liveness is not a machine check kind",
            with_check(json!({"type": "tcp", "port": 80, "kind": "liveness"})),
            err("config.checks.c.kind"),
        ),
        case(
            "check kind informational",
            with_check(json!({"type": "tcp", "port": 80, "kind": "informational"})),
            ok(),
        ),
        case(
            "zero check interval",
            with_check(json!({"type": "tcp", "port": 80, "interval": "0s"})),
            err("config.checks.c.interval"),
        ),
        case(
            "http check path without a slash",
            with_check(json!({"type": "http", "port": 80, "path": "health"})),
            err("config.checks.c.path"),
        ),
        case(
            "http check protocol ftp",
            with_check(json!({"type": "http", "port": 80, "protocol": "ftp"})),
            err("config.checks.c.protocol"),
        ),
        case(
            "http check method with a space",
            with_check(json!({"type": "http", "port": 80, "method": "GE T"})),
            err("config.checks.c.method"),
        ),
        // ---- stop_config and signals (§2.1, 7.9, §8) ----
        case(
            "stop_config with signal name and timeout",
            alpine(json!({"stop_config": {"signal": "SIGINT", "timeout": "30s"}})),
            ok_with(vec![has("/stop_config", json!({"signal": "SIGINT", "timeout": "30s"}))]),
        ),
        case(
            "stop_config signal as an integer and timeout in nanoseconds",
            alpine(json!({"stop_config": {"signal": 9, "timeout": 5000000000u64}})),
            ok_with(vec![has("/stop_config", json!({"signal": "SIGKILL", "timeout": "5s"}))]),
        ),
        case(
            "stop_config signal 15 is SIGTERM",
            alpine(json!({"stop_config": {"signal": 15}})),
            ok_with(vec![has("/stop_config/signal", json!("SIGTERM"))]),
        ),
        case(
            "signal SIGFOO (7.9)",
            alpine(json!({"stop_config": {"signal": "SIGFOO"}})),
            undecodable("SIGFOO"),
        ),
        case(
            "signal number 99",
            alpine(json!({"stop_config": {"signal": 99}})),
            undecodable("unknown signal"),
        ),
        case(
            "SIGSEGV is not a stop signal",
            alpine(json!({"stop_config": {"signal": "SIGSEGV"}})),
            err("config.stop_config.signal"),
        ),
        case(
            "stop timeout longer than a day",
            alpine(json!({"stop_config": {"timeout": "48h"}})),
            err("config.stop_config.timeout"),
        ),
        // ---- §2.7 files (§7.7, §8) ----
        case(
            "files (7.7): raw_value and secret_name",
            alpine(json!({"files": [
                {"guest_path": "/etc/hello.txt", "raw_value": "aGVsbG8K", "mode": 420},
                {"guest_path": "/run/s", "secret_name": "MY_B64"}
            ]})),
            ok_with(vec![has("/files/0/mode", json!(420)), has("/files/1/secret_name", json!("MY_B64"))]),
        ),
        case(
            "file from image_config",
            alpine(json!({"files": [{"guest_path": "/etc/image.json", "image_config": "alpine"}]})),
            ok(),
        ),
        case(
            "relative guest_path (7.7)",
            alpine(json!({"files": [{"guest_path": "rel/path", "raw_value": "aGVsbG8K"}]})),
            err("config.files[0].guest_path"),
        ),
        case(
            "guest_path with ..",
            alpine(json!({"files": [{"guest_path": "/etc/../root/x", "raw_value": "aGVsbG8K"}]})),
            err("config.files[0].guest_path"),
        ),
        case(
            "file without content source names the path (8)",
            alpine(json!({"files": [{"guest_path": "/x"}]})),
            err("config.files[0]: file /x needs exactly one"),
        ),
        case(
            "file with raw_value and secret_name",
            alpine(json!({"files": [{"guest_path": "/x", "raw_value": "aGVsbG8K", "secret_name": "S"}]})),
            err("config.files[0]"),
        ),
        case(
            // Go's StdEncoding (Fly's API) ignores a last character's unused bits.
            "file raw_value whose last character has unused bits set",
            alpine(json!({"files": [{"guest_path": "/x", "raw_value": "X1n0ed8Stcy+Q/lUN0G4ZU=="}]})),
            ok(),
        ),
        case(
            "file raw_value with padding missing",
            alpine(json!({"files": [{"guest_path": "/x", "raw_value": "QQ="}]})),
            err("config.files[0].raw_value"),
        ),
        case(
            "file raw_value that is not base64",
            alpine(json!({"files": [{"guest_path": "/x", "raw_value": "hello world!"}]})),
            err("config.files[0].raw_value"),
        ),
        case(
            "same guest_path twice",
            alpine(json!({"files": [
                {"guest_path": "/x", "raw_value": "aGVsbG8K"},
                {"guest_path": "/x", "secret_name": "S"}
            ]})),
            err("config.files[1].guest_path"),
        ),
        case(
            "file mode above 0o7777",
            alpine(json!({"files": [{"guest_path": "/x", "raw_value": "", "mode": 65535}]})),
            err("config.files[0].mode"),
        ),
        // ---- §2.6 mounts (§7.13) ----
        case(
            "volume mount (7.13)",
            alpine(json!({"mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "/data"}]})),
            ok_with(vec![has("/mounts/0", json!({"volume": "vol_9vw681egy1jj5xm4", "path": "/data"}))]),
        ),
        case(
            "mount without volume",
            alpine(json!({"mounts": [{"path": "/data"}]})),
            err("config.mounts[0].volume"),
        ),
        case(
            "relative mount path means one under / (the seed's `data`)",
            alpine(json!({"mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "data"}]})),
            ok_with(vec![has("/mounts/0/path", json!("/data"))]),
        ),
        case(
            "auto-extend needs an increment",
            alpine(json!({"mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "/d", "extend_threshold_percent": 80}]})),
            err("config.mounts[0].extend_threshold_percent"),
        ),
        case(
            "auto-extend threshold range",
            alpine(json!({"mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "/d", "extend_threshold_percent": 120, "add_size_gb": 1}]})),
            err("config.mounts[0].extend_threshold_percent"),
        ),
        case(
            "auto-extend",
            alpine(json!({"mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "/d", "extend_threshold_percent": 80, "add_size_gb": 2, "size_gb_limit": 10}]})),
            ok_with(vec![has("/mounts/0/size_gb_limit", json!(10))]),
        ),
        case(
            "a volume at /",
            alpine(json!({"mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "/"}]})),
            err("config.mounts[0].path"),
        ),
        case(
            "two volumes",
            alpine(json!({"mounts": [
                {"volume": "vol_9vw681egy1jj5xm4", "path": "/a"},
                {"volume": "vol_8vw681egy1jj5xm4", "path": "/b"}
            ]})),
            err("config.mounts"),
        ),
        // ---- standbys (§5.5, 7.16) ----
        case(
            "standby without services (7.16)",
            alpine(json!({"standbys": ["1857156b526dd8"], "env": {"FLY_STANDBY_FOR": "1857156b526dd8"}})),
            ok_with(vec![has("/standbys", json!(["1857156b526dd8"]))]),
        ),
        case(
            "standby with services (7.16)",
            {
                let mut c = with_service(json!({"ports": [{"port": 80}]}));
                c["standbys"] = json!(["1857156b526dd8"]);
                c
            },
            err("config.standbys"),
        ),
        case(
            "standby that is not a machine id",
            alpine(json!({"standbys": ["web-1"]})),
            err("config.standbys[0]"),
        ),
        case(
            "empty standbys with services (update --standby-for \"\")",
            {
                let mut c = with_service(json!({"ports": [{"port": 80}]}));
                c["standbys"] = json!([]);
                c
            },
            ok(),
        ),
        // ---- §2.9 / §6 containers (§7.15) ----
        case(
            "multi-container with dependencies (7.15)",
            json!({
                "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512},
                "containers": [
                    {"name": "app", "image": "nginx", "healthchecks": [{"name": "up",
                        "http": {"port": 80, "path": "/", "method": "GET", "scheme": "http"},
                        "interval": 5, "timeout": 2, "grace_period": 1, "success_threshold": 1,
                        "failure_threshold": 3, "kind": "readiness"}]},
                    {"name": "migrate", "image": "alpine", "cmd": ["true"]},
                    {"name": "sidecar", "image": "alpine", "cmd": ["sleep", "inf"], "depends_on": [
                        {"name": "app", "condition": "healthy"},
                        {"name": "migrate", "condition": "exited_successfully"}
                    ]}
                ],
                "services": [{"protocol": "tcp", "internal_port": 80, "ports": [{"port": 80, "handlers": ["http"]}]}]
            }),
            ok_with(vec![
                absent("/image"),
                has("/guest/memory_mb", json!(512)),
                has("/containers/0/healthchecks/0/interval", json!(5)),
                has("/containers/2/depends_on/1", json!({"name": "migrate", "condition": "exited_successfully"})),
            ]),
        ),
        case(
            "duplicate container names",
            with_containers(json!([
                {"name": "app", "image": "nginx"},
                {"name": "app", "image": "alpine"}
            ])),
            err("config.containers[1].name: duplicate container name \"app\""),
        ),
        case(
            "container without a name",
            with_containers(json!([{"image": "nginx"}])),
            err("config.containers[0].name"),
        ),
        case(
            "container without an image",
            with_containers(json!([{"name": "app"}])),
            err("config.containers[app].image"),
        ),
        case(
            "container with a malformed image",
            with_containers(json!([{"name": "app", "image": "Nginx"}])),
            err("config.containers[app].image"),
        ),
        case(
            "unknown dependency (7.15)",
            with_containers(json!([
                {"name": "app", "image": "nginx"},
                {"name": "sidecar", "image": "alpine", "depends_on": [{"name": "db", "condition": "started"}]}
            ])),
            err("config.containers[sidecar].depends_on[0].name: container \"sidecar\" depends on unknown container \"db\""),
        ),
        case(
            "dependency cycle (7.15) names the cycle",
            with_containers(json!([
                {"name": "a", "image": "alpine", "depends_on": [{"name": "b", "condition": "started"}]},
                {"name": "b", "image": "alpine", "depends_on": [{"name": "c", "condition": "started"}]},
                {"name": "c", "image": "alpine", "depends_on": [{"name": "a", "condition": "started"}]}
            ])),
            err("config.containers: dependency cycle: a -> b -> c -> a"),
        ),
        case(
            "two-container cycle behind an independent container",
            with_containers(json!([
                {"name": "x", "image": "alpine"},
                {"name": "y", "image": "alpine", "depends_on": [{"name": "x", "condition": "started"}, {"name": "z", "condition": "started"}]},
                {"name": "z", "image": "alpine", "depends_on": [{"name": "y", "condition": "started"}]}
            ])),
            err("dependency cycle: y -> z -> y"),
        ),
        case(
            "container depending on itself",
            with_containers(json!([
                {"name": "a", "image": "alpine", "depends_on": [{"name": "a", "condition": "started"}]}
            ])),
            err("config.containers[a].depends_on[0].name"),
        ),
        case(
            "diamond dependencies are not a cycle",
            with_containers(json!([
                {"name": "base", "image": "alpine"},
                {"name": "l", "image": "alpine", "depends_on": [{"name": "base", "condition": "exited_successfully"}]},
                {"name": "r", "image": "alpine", "depends_on": [{"name": "base", "condition": "exited_successfully"}]},
                {"name": "top", "image": "alpine", "depends_on": [{"name": "l", "condition": "started"}, {"name": "r", "condition": "started"}]}
            ])),
            ok(),
        ),
        case(
            "healthy on a container without healthchecks",
            with_containers(json!([
                {"name": "app", "image": "nginx"},
                {"name": "sidecar", "image": "alpine", "depends_on": [{"name": "app", "condition": "healthy"}]}
            ])),
            err("config.containers[sidecar].depends_on[0].condition"),
        ),
        case(
            "unknown dependency condition",
            with_containers(json!([
                {"name": "app", "image": "nginx", "healthchecks": http_healthcheck()},
                {"name": "sidecar", "image": "alpine", "depends_on": [{"name": "app", "condition": "ready"}]}
            ])),
            err("config.containers[sidecar].depends_on[0].condition"),
        ),
        case(
            "healthcheck with none of tcp, http, exec",
            with_containers(json!([{"name": "app", "image": "nginx", "healthchecks": [{"name": "up", "interval": 5}]}])),
            err("config.containers[app].healthchecks[0]: a health check needs exactly one of tcp, http or exec (got 0)"),
        ),
        case(
            "healthcheck with both tcp and exec",
            with_containers(json!([{"name": "app", "image": "nginx", "healthchecks": [
                {"name": "up", "tcp": {"port": 80}, "exec": {"command": ["true"]}}
            ]}])),
            err("config.containers[app].healthchecks[0]: a health check needs exactly one of tcp, http or exec (got 2)"),
        ),
        case(
            "exec healthcheck and liveness stop policy",
            with_containers(json!([{"name": "app", "image": "nginx", "healthchecks": [
                {"name": "alive", "exec": {"command": ["pgrep", "nginx"]}, "kind": "liveness", "unhealthy": "stop"}
            ]}])),
            ok_with(vec![has("/containers/0/healthchecks/0/exec", json!({"command": ["pgrep", "nginx"]}))]),
        ),
        case(
            "exec healthcheck with an empty command",
            with_containers(json!([{"name": "app", "image": "nginx", "healthchecks": [{"exec": {"command": []}}]}])),
            err("config.containers[app].healthchecks[0].exec.command"),
        ),
        case(
            "healthcheck interval of zero seconds",
            with_containers(json!([{"name": "app", "image": "nginx", "healthchecks": [{"tcp": {"port": 80}, "interval": 0}]}])),
            err("config.containers[app].healthchecks[0].interval"),
        ),
        case(
            "healthcheck kind startup",
            with_containers(json!([{"name": "app", "image": "nginx", "healthchecks": [{"tcp": {"port": 80}, "kind": "startup"}]}])),
            err("config.containers[app].healthchecks[0].kind"),
        ),
        case(
            "healthcheck unhealthy restart",
            with_containers(json!([{"name": "app", "image": "nginx", "healthchecks": [{"tcp": {"port": 80}, "unhealthy": "restart"}]}])),
            err("config.containers[app].healthchecks[0].unhealthy"),
        ),
        case(
            "duplicate healthcheck names",
            with_containers(json!([{"name": "app", "image": "nginx", "healthchecks": [
                {"name": "up", "tcp": {"port": 80}}, {"name": "up", "tcp": {"port": 81}}
            ]}])),
            err("config.containers[app].healthchecks[1].name"),
        ),
        case(
            "container restart, stop and files",
            with_containers(json!([{"name": "app", "image": "nginx",
                "restart": {"policy": "always"},
                "stop": {"signal": "SIGQUIT", "timeout": 10000000000u64},
                "files": [{"guest_path": "/etc/nginx/conf.d/x.conf", "raw_value": "aGVsbG8K"}]}])),
            ok_with(vec![has("/containers/0/stop", json!({"signal": "SIGQUIT", "timeout": "10s"}))]),
        ),
        case(
            "container file with a relative path",
            with_containers(json!([{"name": "app", "image": "nginx", "files": [{"guest_path": "x.conf", "raw_value": ""}]}])),
            err("config.containers[app].files[0].guest_path"),
        ),
        case(
            "container restart policy bogus",
            with_containers(json!([{"name": "app", "image": "nginx", "restart": {"policy": "sometimes"}}])),
            err("config.containers[app].restart.policy"),
        ),
        case(
            "env_from with an unknown field_ref",
            with_containers(json!([{"name": "app", "image": "nginx", "env_from": [{"env_var": "ME", "field_ref": "hostname"}]}])),
            err("config.containers[app].env_from[0].field_ref"),
        ),
        case(
            "processes with commands, env and env_from",
            json!({"image": "nginx", "processes": [
                {"cmd": ["nginx"], "env": {"ROLE": "web"}, "env_from": [{"env_var": "ME", "field_ref": "id"}]},
                {"exec": ["/worker"], "user": "app", "secrets": [{"env_var": "TOKEN"}]}
            ]}),
            ok_with(vec![
                has("/processes/1/exec/0", json!("/worker")),
                has("/processes/1/secrets/0/env_var", json!("TOKEN")),
            ]),
        ),
        case(
            "processes with an unknown env_from field_ref",
            json!({"image": "nginx", "processes": [{"env_from": [{"env_var": "X", "field_ref": "nope"}]}]}),
            err("config.processes[0].env_from[0].field_ref"),
        ),
        case(
            "processes with an env_from variable that has no name",
            json!({"image": "nginx", "processes": [{"env_from": [{"field_ref": "id"}]}]}),
            err("config.processes[0].env_from[0].env_var"),
        ),
        case(
            "processes together with containers",
            json!({"processes": [{"cmd": ["x"]}], "containers": [{"name": "app", "image": "nginx"}]}),
            err("config.processes"),
        ),
        case(
            "processes that is not a list",
            json!({"image": "nginx", "processes": {"cmd": ["x"]}}),
            undecodable("processes"),
        ),
        case(
            "dns with nameservers, searches, options and hostnames",
            alpine(json!({"dns": {"nameservers": ["10.0.0.2", "fd00::53"], "searches": ["corp.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}],
                "hostname": "web-1", "hostname_fqdn": "web-1.corp.example", "dns_forward_rules": []}})),
            ok_with(vec![
                has("/dns/options/0/value", json!("2")),
                has("/dns/dns_forward_rules", json!([])),
            ]),
        ),
        case(
            "dns nameserver that is not an IP address",
            alpine(json!({"dns": {"nameservers": ["dns.example"]}})),
            err("config.dns.nameservers[0]"),
        ),
        case(
            "dns hostname with a dot",
            alpine(json!({"dns": {"hostname": "a.b"}})),
            err("config.dns.hostname"),
        ),
        case(
            "dns search domain with a space",
            alpine(json!({"dns": {"searches": ["a b"]}})),
            err("config.dns.searches[0]"),
        ),
        case(
            "dns option without a name",
            alpine(json!({"dns": {"options": [{"value": "2"}]}})),
            err("config.dns.options[0]"),
        ),
        case(
            "an absolute volume name (would escape the machine dir)",
            json!({"image": "nginx", "volumes": [{"name": "/etc", "temp_dir": {"storage_type": "memory"}}]}),
            err("config.volumes[0].name"),
        ),
        case(
            "a volume name that climbs out",
            json!({"image": "nginx", "volumes": [{"name": "../../x", "temp_dir": {}}]}),
            err("config.volumes[0].name"),
        ),
        case(
            "a volume name of dots",
            json!({"image": "nginx", "volumes": [{"name": "..", "temp_dir": {}}]}),
            err("config.volumes[0].name"),
        ),
        case(
            "a container named ..",
            with_containers(json!([{"name": "..", "image": "nginx"}])),
            err("config.containers[0].name"),
        ),
        case(
            "a container named .",
            with_containers(json!([{"name": ".", "image": "nginx"}])),
            err("config.containers[0].name"),
        ),
        case(
            "a hidden container name",
            with_containers(json!([{"name": ".app", "image": "nginx"}])),
            err("config.containers[0].name"),
        ),
        case(
            "a healthcheck interval of 2^63 seconds",
            with_containers(json!([{"name": "app", "image": "nginx",
                "healthchecks": [{"tcp": {"port": 80}, "interval": 9223372036854775807i64}]}])),
            err("config.containers[app].healthchecks[0].interval"),
        ),
        case(
            "a huge cpu count with no memory",
            alpine(json!({"guest": {"cpus": 90000000000000000i64, "cpu_kind": "shared"}})),
            err("config.guest"),
        ),
        case(
            "a duration whose fraction overflows",
            alpine(json!({"stop_config": {"timeout": "340282366920938463463374607431768211.999us"}})),
            undecodable("duration"),
        ),
        case(
            "a swap size beyond 1 TiB",
            alpine(json!({"init": {"swap_size_mb": 4611686018427387904i64}})),
            err("config.init.swap_size_mb"),
        ),
        case(
            "a balloon ceiling beyond the size's memory",
            alpine(json!({"guest": {"cpus": 1, "cpu_kind": "shared", "memory_mb": 256, "max_memory_mb": 17592186044416i64}})),
            err("config.guest.max_memory_mb"),
        ),
        case(
            "temp_dir volumes on disk and in memory",
            json!({
                "volumes": [
                    {"name": "scratch", "temp_dir": {"storage_type": "disk", "size_mb": 100}},
                    {"name": "shm", "temp_dir": {"storage_type": "memory", "size_mb": 64}}
                ],
                "containers": [
                    {"name": "app", "image": "nginx", "mounts": [{"name": "scratch", "path": "/scratch"}, {"name": "shm", "path": "/dev/shm"}]},
                    {"name": "worker", "image": "alpine", "mounts": [{"name": "scratch", "path": "/work"}]}
                ]
            }),
            ok_with(vec![has("/volumes/1/temp_dir", json!({"storage_type": "memory", "size_mb": 64}))]),
        ),
        case(
            "temp_dir storage_type tmpfs",
            json!({
                "volumes": [{"name": "scratch", "temp_dir": {"storage_type": "tmpfs"}}],
                "containers": [{"name": "app", "image": "nginx"}]
            }),
            err("config.volumes[0].temp_dir.storage_type"),
        ),
        case(
            "duplicate volume names",
            json!({
                "volumes": [{"name": "v", "temp_dir": {}}, {"name": "v", "temp_dir": {}}],
                "containers": [{"name": "app", "image": "nginx"}]
            }),
            err("config.volumes[1].name"),
        ),
        case(
            "container mounting an unknown volume",
            json!({
                "volumes": [{"name": "scratch", "temp_dir": {"storage_type": "disk"}}],
                "containers": [{"name": "app", "image": "nginx", "mounts": [{"name": "cache", "path": "/cache"}]}]
            }),
            err("config.containers[app].mounts[0].name"),
        ),
        case(
            "container mount with a relative path",
            json!({
                "volumes": [{"name": "scratch", "temp_dir": {"storage_type": "disk"}}],
                "containers": [{"name": "app", "image": "nginx", "mounts": [{"name": "scratch", "path": "scratch"}]}]
            }),
            err("config.containers[app].mounts[0].path"),
        ),
    ]
}

#[test]
fn test_config_validation_table() {
    let cases = cases();
    assert!(cases.len() >= 45, "only {} cases", cases.len());
    let mut names = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {:?}", c.name);
        if let Err(why) = run(c) {
            failures.push(format!("{}: {why}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

fn run(c: &Case) -> Result<(), String> {
    let decoded = decode(&c.config);
    let mut config = match (&c.expect, decoded) {
        (Expect::Undecodable(want), Err(e)) => {
            return if e.contains(want) {
                Ok(())
            } else {
                Err(format!("decode error {e:?} does not contain {want:?}"))
            };
        }
        (Expect::Undecodable(_), Ok(config)) => {
            return Err(format!("decoded although it should not: {config:?}"));
        }
        (_, Err(e)) => return Err(format!("does not decode: {e}")),
        (_, Ok(config)) => config,
    };
    match (&c.expect, validate_config(&mut config)) {
        (Expect::Invalid(want), Err(e)) => {
            if !e.field.starts_with("config.") && e.field != "config" {
                return Err(format!(
                    "error field {:?} does not name a config field",
                    e.field
                ));
            }
            let text = e.to_string();
            if text.contains(want) {
                Ok(())
            } else {
                Err(format!("error {text:?} does not contain {want:?}"))
            }
        }
        (Expect::Invalid(want), Ok(())) => {
            Err(format!("validated, but expected an error with {want:?}"))
        }
        (Expect::Ok(_), Err(e)) => Err(format!("refused: {e}")),
        (Expect::Ok(checks), Ok(())) => {
            let out = serde_json::to_value(&config).map_err(|e| e.to_string())?;
            for (pointer, want) in checks {
                let got = out.pointer(pointer);
                if got != want.as_ref() {
                    return Err(format!("{pointer}: got {got:?}, want {want:?} in {out}"));
                }
            }
            // What was stored must validate again unchanged: updates send it back.
            let mut again =
                decode(&out).map_err(|e| format!("normalised config does not decode: {e}"))?;
            validate_config(&mut again)
                .map_err(|e| format!("normalised config does not validate again: {e}"))?;
            let again = serde_json::to_value(&again).unwrap();
            if again != out {
                return Err(format!("not idempotent: {out} became {again}"));
            }
            Ok(())
        }
        (Expect::Undecodable(_), _) => unreachable!(),
    }
}

/// Fields this version does not model come back exactly as a newer client sent them, at every
/// level of nesting.
#[test]
fn test_unknown_fields_round_trip() {
    let body = json!({
        "image": "nginx",
        "future_top": {"nested": [1, 2, {"deep": true}]},
        "init": {"exec": ["/bin/app"], "future_init": "x"},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, "required_host_features": ["x"]},
        "services": [{
            "protocol": "tcp", "internal_port": 80, "future_service": 1,
            "ports": [{"port": 80, "handlers": ["http"], "future_port": {"a": "b"}}],
            "concurrency": {"type": "requests", "soft_limit": 5, "future_concurrency": null},
            "checks": [{"type": "http", "path": "/", "future_service_check": 2,
                        "headers": [{"name": "X", "values": ["y"], "future_header": 3}]}]
        }],
        "checks": {"web": {"type": "tcp", "port": 80, "interval": "15s", "future_check": [true]}},
        "mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "/data",
                    "extend_threshold_percent": 80, "add_size_gb": 1, "size_gb_limit": 10}],
        "files": [{"guest_path": "/x", "raw_value": "", "future_file": "f"}],
        "restart": {"policy": "always", "gpu_bid_price": 1.5},
        "stop_config": {"signal": "SIGTERM", "future_stop": 7},
        "dns": {"skip_registration": true, "options": [{"name": "ndots", "value": "2"}],
                "dns_forward_rules": [{"basename": "x", "addr": "y"}], "hostname_fqdn": "a.b"},
        "rootfs": {"persist": "always", "future_rootfs": 0},
        "volumes": [{"name": "v", "image": "busybox",
                     "temp_dir": {"storage_type": "disk", "size_mb": 10, "future_temp_dir": "t"}}],
        "containers": [
            {"name": "app", "image": "nginx", "future_container": {"k": "v"},
             "env_from": [{"env_var": "ID", "field_ref": "id", "future_env_from": 1}],
             "depends_on": [{"name": "side", "condition": "healthy", "future_dependency": 1}],
             "mounts": [{"name": "v", "path": "/v", "future_container_mount": 1}]},
            {"name": "side", "image": "alpine", "healthchecks": [
                {"name": "h", "future_healthcheck": "h",
                 "http": {"port": 80, "path": "/", "future_http": "x",
                          "headers": [{"name": "H", "values": ["v"], "future_hc_header": 1}]}},
                {"name": "t", "tcp": {"port": 81, "future_tcp": 1}},
                {"name": "e", "exec": {"command": ["true"], "future_exec": 1}}
            ]}
        ]
    });
    let mut config = decode(&body).unwrap();
    validate_config(&mut config).unwrap();
    let out = serde_json::to_value(&config).unwrap();
    assert_subset(&body, &out, "");
}

/// Every field of `want` is in `got` with the same value (the server may add fields, such as
/// `force_instance_key: null`, but must not drop or change one).
fn assert_subset(want: &Value, got: &Value, path: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                let p = format!("{path}/{k}");
                let Some(gv) = g.get(k) else {
                    panic!("{p} was dropped (got {got})");
                };
                assert_subset(v, gv, &p);
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{path}: array length changed");
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                assert_subset(wv, gv, &format!("{path}/{i}"));
            }
        }
        _ => assert_eq!(want, got, "{path} changed"),
    }
}

/// Decoding errors name the field where the body went wrong.
#[test]
fn test_decode_errors_name_the_field() {
    let e = decode(&alpine(json!({"guest": {"cpus": "two"}}))).unwrap_err();
    assert!(e.contains("guest.cpus"), "{e}");
    let e = decode(&with_service(json!({"autostop": "sometimes"}))).unwrap_err();
    assert!(e.contains("services[0].autostop"), "{e}");
    let e = decode(&alpine(json!({"stop_config": {"signal": "SIGFOO"}}))).unwrap_err();
    assert!(e.contains("stop_config.signal"), "{e}");
    let e = decode(&with_check(
        json!({"type": "tcp", "port": 80, "interval": -1}),
    ))
    .unwrap_err();
    assert!(e.contains("checks.c.interval"), "{e}");
}
