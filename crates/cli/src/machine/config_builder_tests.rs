//! Command line → exact config JSON, for run, create, update and clone.

use clap::{CommandFactory, Parser};
use serde_json::{json, Value};

use crate::machine::{clone, run, update, MachineCommand};
use crate::{Cli, Command};

/// Expected outcome of one command line.
enum Want {
    Config(Value),
    /// The error contains every one of these.
    Err(&'static [&'static str]),
}

struct Case {
    line: &'static str,
    want: Want,
}

fn ok(line: &'static str, v: Value) -> Case {
    Case {
        line,
        want: Want::Config(v),
    }
}

fn err(line: &'static str, parts: &'static [&'static str]) -> Case {
    Case {
        line,
        want: Want::Err(parts),
    }
}

fn guest() -> Value {
    json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
}

/// `{"image": "nginx", "init": {}, "guest": <default>}` plus `extra`'s keys.
fn nginx(extra: Value) -> Value {
    let mut v = json!({"image": "nginx", "init": {}, "guest": guest()});
    for (k, x) in extra.as_object().expect("object").clone() {
        v[k] = x;
    }
    v
}

fn svc(internal: i64, ports: Value) -> Value {
    json!({"protocol": "tcp", "internal_port": internal, "ports": ports, "force_instance_key": null})
}

/// The config an updated machine starts from.
fn existing() -> Value {
    json!({
        "image": "nginx:1",
        "env": {"A": "1"},
        "init": {"cmd": ["nginx"]},
        "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
        "metadata": {"k": "v"},
        "services": [{"protocol": "tcp", "internal_port": 80,
            "ports": [{"port": 80, "handlers": ["http"]}], "autostop": true, "force_instance_key": null}],
        "restart": {"policy": "always"},
        "standbys": ["s1"],
        "files": [{"guest_path": "/etc/a", "raw_value": "YQ=="}]
    })
}

/// `existing()` with `changes` applied (a null value removes the key).
fn existing_with(changes: Value) -> Value {
    let mut v = existing();
    for (k, x) in changes.as_object().expect("object").clone() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(&k);
        } else {
            v[k] = x;
        }
    }
    v
}

fn cases() -> Vec<Case> {
    vec![
        // ---- image and command ----
        ok("run nginx", nginx(json!({}))),
        ok("create nginx", nginx(json!({}))),
        ok("run nginx sleep inf", nginx(json!({"init": {"cmd": ["sleep", "inf"]}}))),
        ok("run nginx sleep inf -e A=1", nginx(json!({"init": {"cmd": ["sleep", "inf"]}, "env": {"A": "1"}}))),
        ok(
            "run debian --rm -- sh -c 'echo hi' --not-a-flag",
            json!({"image": "debian", "init": {"cmd": ["sh", "-c", "echo hi", "--not-a-flag"]}, "guest": guest(), "auto_destroy": true, "restart": {"policy": "no"}}),
        ),
        ok("run -e A=1 nginx", nginx(json!({"env": {"A": "1"}}))),
        err("run nginx --id 1857156b526dd8", &["--id", "hangar machine update"]),
        // A build (`.`, --dockerfile) happens before the config is made: the image is then the
        // built one (tests/builds.rs).
        err("run --build-depot nginx", &["--build-depot", "buildah"]),
        err("create", &["image is required"]),
        // ---- --rm, dns ----
        ok("run nginx --rm", nginx(json!({"auto_destroy": true, "restart": {"policy": "no"}}))),
        // Go-style booleans and repeated flags, as pflag parses them for flyctl.
        ok("run nginx --rm=true", nginx(json!({"auto_destroy": true, "restart": {"policy": "no"}}))),
        ok("run nginx --rm=false", nginx(json!({}))),
        ok("run nginx --skip-dns-registration=false", nginx(json!({}))),
        ok("run nginx --skip-dns-registration=1", nginx(json!({"dns": {"skip_registration": true}}))),
        ok("run nginx --vm-memory 512 --vm-memory 1024", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024}}))),
        ok("run nginx --vm-cpukind shared", nginx(json!({}))),
        err("run nginx --rm=maybe", &["--rm"]),
        err("run nginx --rm --restart always", &["--rm", "--restart always"]),
        // A policy given on the command line replaces the whole restart object.
        ok(
            "run nginx --machine-config '{\"restart\": {\"policy\": \"on-failure\", \"max_retries\": 3}}' --restart always",
            nginx(json!({"restart": {"policy": "always"}})),
        ),
        ok("create nginx --rm", nginx(json!({"auto_destroy": true, "restart": {"policy": "no"}}))),
        ok("run nginx --rm --restart ''", nginx(json!({"auto_destroy": true}))),
        ok("run nginx --skip-dns-registration", nginx(json!({"dns": {"skip_registration": true}}))),
        // ---- guest ----
        ok("run nginx --vm-size shared-cpu-2x", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512}}))),
        ok("run nginx --vm-size performance-1x", nginx(json!({"guest": {"cpu_kind": "performance", "cpus": 1, "memory_mb": 2048}}))),
        ok("run nginx --vm-cpus 2 --vm-memory 1gb", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 1024}}))),
        ok("run nginx --cpus 4 --memory 512", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 4, "memory_mb": 512}}))),
        ok("run nginx --vm-memory 512mb", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512}}))),
        ok("run nginx --vm-memory 1.5GB", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1536}}))),
        ok("run nginx --vm-size performance-2x --vm-memory 8192", nginx(json!({"guest": {"cpu_kind": "performance", "cpus": 2, "memory_mb": 8192}}))),
        ok("run nginx --vm-cpu-kind performance", nginx(json!({"guest": {"cpu_kind": "performance", "cpus": 1, "memory_mb": 256}}))),
        ok("run nginx --vm-max-memory 2gb", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, "max_memory_mb": 2048}}))),
        ok("run nginx --host-dedication-id hd-1", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, "host_dedication_id": "hd-1"}}))),
        ok("run nginx --kernel-arg quiet --kernel-arg loglevel=3", nginx(json!({"guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, "kernel_args": ["quiet", "loglevel=3"]}}))),
        err("run nginx --vm-gpus 1", &["--vm-gpus", "GPU machines are no longer supported"]),
        err("run nginx --vm-gpu-kind a100-pcie-40gb", &["--vm-gpu-kind", "GPU machines are no longer supported"]),
        err("run nginx --vm-size a100-40gb", &["--vm-size", "GPU machines are no longer supported"]),
        err("run nginx --vm-size huge", &["--vm-size", "\"huge\"", "shared-cpu-1x", "performance-16x"]),
        err("run nginx --vm-cpus 0", &["--vm-cpus", "greater than zero"]),
        err("run nginx --vm-cpus two", &["--vm-cpus", "greater than zero"]),
        err("run nginx --vm-memory 0", &["--vm-memory", "cannot be zero"]),
        err("run nginx --vm-memory lots", &["--vm-memory", "1gb"]),
        err("run nginx --vm-cpu-kind gpu", &["--vm-cpu-kind", "shared or performance"]),
        // ---- storage ----
        ok("run nginx --rootfs-persist always --rootfs-size 2gb", nginx(json!({"rootfs": {"persist": "always", "size_gb": 2}}))),
        ok("run nginx --rootfs-size 10", nginx(json!({"rootfs": {"size_gb": 10}}))),
        ok("run nginx --rootfs-size 0", nginx(json!({}))),
        err("run nginx --rootfs-persist sometimes", &["--rootfs-persist", "never, always or restart"]),
        err("run nginx --rootfs-size big", &["--rootfs-size", "2gb"]),
        ok("run nginx --swap-size 512mb", nginx(json!({"init": {"swap_size_mb": 512}}))),
        ok("run nginx --swap-size 1gb", nginx(json!({"init": {"swap_size_mb": 1024}}))),
        ok("run nginx --swap-size 256", nginx(json!({"init": {"swap_size_mb": 256}}))),
        ok("run nginx --cachedrive-size 10gb", nginx(json!({"cache_drive": {"size_mb": 10240}}))),
        err("run nginx --swap-size=-5", &["--swap-size"]),
        // ---- env, schedule, metadata ----
        ok("run nginx -e A=1 --env B=x=y --env C=", nginx(json!({"env": {"A": "1", "B": "x=y", "C": ""}}))),
        err("run nginx -e NOVALUE", &["--env", "NAME=VALUE"]),
        ok("run nginx --schedule daily", nginx(json!({"schedule": "daily", "restart": {"policy": "on-failure"}}))),
        ok("run nginx --schedule hourly --restart no", nginx(json!({"schedule": "hourly", "restart": {"policy": "no"}}))),
        err("run nginx --schedule yearly", &["--schedule", "hourly, daily, weekly, monthly"]),
        ok("run nginx -m a=b --metadata fly_process_group=app", nginx(json!({"metadata": {"a": "b", "fly_process_group": "app"}}))),
        err("run nginx -m =b", &["--metadata", "KEY=VALUE"]),
        // ---- ports (reference 5.4) ----
        ok(
            "run nginx -p 80/tcp:http -p 443:80/tcp:http:tls",
            nginx(json!({"services": [svc(80, json!([{"port": 80, "handlers": ["http"]}, {"port": 443, "handlers": ["http", "tls"]}]))]})),
        ),
        ok(
            "run nginx --port 80/tcp:http,443:80/tcp:http:tls",
            nginx(json!({"services": [svc(80, json!([{"port": 80, "handlers": ["http"]}, {"port": 443, "handlers": ["http", "tls"]}]))]})),
        ),
        ok("run nginx -p 5432/tcp:pg_tls", nginx(json!({"services": [svc(5432, json!([{"port": 5432, "handlers": ["pg_tls"]}]))]}))),
        ok("run nginx -p 8080", nginx(json!({"services": [svc(8080, json!([{"port": 8080}]))]}))),
        ok(
            "run nginx -p 53/udp -p 80",
            nginx(json!({"services": [
                {"protocol": "udp", "internal_port": 53, "ports": [{"port": 53}], "force_instance_key": null},
                svc(80, json!([{"port": 80}]))
            ]})),
        ),
        ok("run nginx -p 80/tcp:http -p 80/tcp:http:tls", nginx(json!({"services": [svc(80, json!([{"port": 80, "handlers": ["http", "tls"]}]))]}))),
        ok("run nginx -p 8000-8010:9000/tcp:tls", nginx(json!({"services": [svc(9000, json!([{"start_port": 8000, "end_port": 8010, "handlers": ["tls"]}]))]}))),
        ok(
            "run nginx -p 8000-8010:9000 -p 8000-8020:9000/tcp:http",
            nginx(json!({"services": [svc(9000, json!([{"start_port": 8000, "end_port": 8020, "handlers": ["http"]}]))]})),
        ),
        ok("run nginx -p 80/tcp:http -p 80/tcp:-", nginx(json!({}))),
        ok("run nginx -p 80/tcp:http -p 443:443/tcp:tls -p 80/tcp:-", nginx(json!({"services": [svc(443, json!([{"port": 443, "handlers": ["tls"]}]))]}))),
        err("run nginx -p 8000-8010", &["--port", "8000-8010", "machine port"]),
        err("run nginx -p 1:2:3", &["--port", "too many ':'"]),
        err("run nginx -p 80/sctp", &["--port", "tcp or udp"]),
        err("run nginx -p abc", &["--port", "not a port number"]),
        err("run nginx -p 70000", &["--port", "1-65535"]),
        // ---- entrypoint ----
        ok("run nginx --entrypoint \"/bin/sh -c 'echo hi'\"", nginx(json!({"init": {"entrypoint": ["/bin/sh", "-c", "echo hi"]}}))),
        ok("run nginx --entrypoint /docker-entrypoint.sh sleep inf", nginx(json!({"init": {"entrypoint": ["/docker-entrypoint.sh"], "cmd": ["sleep", "inf"]}}))),
        err("run nginx --entrypoint \"'unterminated\"", &["--entrypoint", "unbalanced quotes"]),
        // ---- restart ----
        ok("run nginx --restart always", nginx(json!({"restart": {"policy": "always"}}))),
        ok("run nginx --restart on-failure", nginx(json!({"restart": {"policy": "on-failure"}}))),
        ok("run nginx --restart on-fail", nginx(json!({"restart": {"policy": "on-failure"}}))),
        ok("run nginx --restart ''", nginx(json!({}))),
        err("run nginx --restart sometimes", &["--restart", "no, always or on-failure"]),
        // ---- volumes ----
        ok("run nginx -v vol_9vw681egy1jj5xm4:/data", nginx(json!({"mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "/data"}]}))),
        ok("run nginx -v vol_a:/data -v vol_b:/data", nginx(json!({"mounts": [{"volume": "vol_b", "path": "/data"}]}))),
        // A name stays a name here; run/create/update resolve it against the daemon's volumes.
        ok("run nginx -v data:/data", nginx(json!({"mounts": [{"volume": "data", "path": "/data"}]}))),
        err("run nginx -v vol_x", &["--volume", "VOLUME:/path"]),
        ok("run nginx -v vol_x:/data:ro", nginx(json!({"mounts": [{"volume": "vol_x", "path": "/data"}]}))),
        ok(
            "run nginx -v vol_a:/a,vol_b:/b",
            nginx(json!({"mounts": [{"volume": "vol_a", "path": "/a"}, {"volume": "vol_b", "path": "/b"}]})),
        ),
        // ---- autostop / autostart ----
        ok("run nginx -p 80/tcp:http --autostop", nginx(json!({"services": [{"protocol": "tcp", "internal_port": 80, "ports": [{"port": 80, "handlers": ["http"]}], "autostop": true, "force_instance_key": null}]}))),
        ok(
            "run nginx -p 80/tcp:http --autostop=suspend --autostart=false",
            nginx(json!({"services": [{"protocol": "tcp", "internal_port": 80, "ports": [{"port": 80, "handlers": ["http"]}], "autostop": "suspend", "autostart": false, "force_instance_key": null}]})),
        ),
        ok(
            "run nginx -p 80 -p 53/udp --autostop=off --autostart",
            nginx(json!({"services": [
                {"protocol": "tcp", "internal_port": 80, "ports": [{"port": 80}], "autostop": false, "autostart": true, "force_instance_key": null},
                {"protocol": "udp", "internal_port": 53, "ports": [{"port": 53}], "autostop": false, "autostart": true, "force_instance_key": null}
            ]})),
        ),
        ok("run nginx --autostop", nginx(json!({}))),
        err("run nginx -p 80 --autostop=maybe", &["--autostop", "off, stop, suspend, true or false"]),
        err("run nginx -p 80 --autostart=perhaps", &["--autostart", "true or false"]),
        ok(
            "run nginx -p 80 --machine-config '{\"disable_machine_autostart\": true}'",
            nginx(json!({"services": [{"protocol": "tcp", "internal_port": 80, "ports": [{"port": 80}], "autostart": false, "force_instance_key": null}]})),
        ),
        // ---- standbys ----
        ok("run nginx --standby-for 1857156b526dd8,2857156b526dd8", nginx(json!({"standbys": ["1857156b526dd8", "2857156b526dd8"], "env": {"FLY_STANDBY_FOR": "1857156b526dd8,2857156b526dd8"}}))),
        ok("run nginx --standby-for ''", nginx(json!({}))),
        // ---- files ----
        ok("run nginx --file-literal /etc/motd=hello", nginx(json!({"files": [{"guest_path": "/etc/motd", "raw_value": "aGVsbG8="}]}))),
        ok("run nginx --file-literal /b64=SGVsbG8=", nginx(json!({"files": [{"guest_path": "/b64", "raw_value": "U0dWc2JHOD0="}]}))),
        ok("run nginx --file-secret /etc/s=MY_SECRET", nginx(json!({"files": [{"guest_path": "/etc/s", "secret_name": "MY_SECRET"}]}))),
        ok("run nginx --file-local /etc/x={DIR}/local.txt", nginx(json!({"files": [{"guest_path": "/etc/x", "raw_value": "bG9jYWwK"}]}))),
        ok("run nginx --file-literal /a=1 --file-literal /a=", nginx(json!({}))),
        ok("run nginx --file-literal /a=1 --file-secret /a=S", nginx(json!({"files": [{"guest_path": "/a", "secret_name": "S"}]}))),
        ok("run nginx --file-literal /x=", nginx(json!({"files": [{"guest_path": "/x"}]}))),
        err("run nginx --file-literal etc/x=1", &["--file-literal", "absolute"]),
        err("run nginx --file-secret /x", &["--file-secret", "/guest/path=VALUE"]),
        err("run nginx --file-local /x={DIR}/missing", &["--file-local", "missing"]),
        // ---- --machine-config ----
        ok(
            "run nginx --machine-config '{\"env\": {\"A\": \"1\"}, \"restart\": {\"policy\": \"always\"}, \"guest\": {\"cpus\": 2, \"memory_mb\": 512, \"cpu_kind\": \"shared\"}}' -e B=2",
            nginx(json!({"env": {"A": "1", "B": "2"}, "restart": {"policy": "always"}, "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512}})),
        ),
        ok(
            "run nginx --machine-config '{\"containers\": [{\"name\": \"sidecar\", \"image\": \"busybox\"}, {\"name\": \"app\", \"image\": \"\"}]}'",
            json!({"init": {}, "guest": guest(), "containers": [{"name": "sidecar", "image": "busybox"}, {"name": "app", "image": "nginx"}]}),
        ),
        ok(
            "run nginx --container sidecar --machine-config '{\"containers\": [{\"name\": \"sidecar\", \"image\": \"\"}, {\"name\": \"app\", \"image\": \"redis\"}]}'",
            json!({"init": {}, "guest": guest(), "containers": [{"name": "sidecar", "image": "nginx"}, {"name": "app", "image": "redis"}]}),
        ),
        ok(
            "run nginx --machine-config '{\"containers\": [{\"name\": \"one\"}, {\"name\": \"two\", \"image\": \"redis\"}]}'",
            json!({"init": {}, "guest": guest(), "containers": [{"name": "one", "image": "nginx"}, {"name": "two", "image": "redis"}]}),
        ),
        ok(
            "run nginx --machine-config {DIR}/machine.json",
            json!({"init": {}, "guest": guest(),
                "files": [{"guest_path": "/etc/x", "raw_value": "bG9jYWwK"}],
                "containers": [{"name": "app", "image": "nginx", "files": [{"guest_path": "/c", "raw_value": "bG9jYWwK"}]}]}),
        ),
        err("run nginx --container nope --machine-config '{\"containers\": [{\"name\": \"app\"}]}'", &["--container", "nope", "app"]),
        // flyctl ignores --container when there are no containers.
        ok("run nginx --container app", nginx(json!({}))),
        err("run nginx --swap-size 0", &["--swap-size", "greater than zero"]),
        err("run nginx --machine-config '{bad'", &["--machine-config", "not valid JSON"]),
        err("run nginx --machine-config '[1]'", &["--machine-config"]),
        err("run nginx --machine-config /nonexistent/m.json", &["--machine-config", "/nonexistent/m.json"]),
        // ---- --shell ----
        ok(
            "run --shell",
            json!({"image": "ubuntu", "init": {"exec": ["/bin/sleep", "inf"]}, "guest": guest(), "auto_destroy": true, "restart": {"policy": "no"}}),
        ),
        // ---- update: flags onto the existing config ----
        ok("update 1857156b526dd8 -y", existing()),
        ok("update 1857156b526dd8 -e X=2 -y", existing_with(json!({"env": {"A": "1", "X": "2"}}))),
        ok("update 1857156b526dd8 --image nginx:2", existing_with(json!({"image": "nginx:2"}))),
        ok("update 1857156b526dd8 -C \"nginx -g 'daemon off;'\"", existing_with(json!({"init": {"cmd": ["nginx", "-g", "daemon off;"]}}))),
        ok("update 1857156b526dd8 --command ''", existing_with(json!({"init": {}}))),
        ok("update 1857156b526dd8 --restart no", existing_with(json!({"restart": {"policy": "no"}}))),
        ok("update 1857156b526dd8 --restart ''", existing_with(json!({"restart": null}))),
        ok("update 1857156b526dd8 -p 80/tcp:-", existing_with(json!({"services": null}))),
        ok(
            "update 1857156b526dd8 -p 8443:80/tcp:tls",
            existing_with(json!({"services": [{"protocol": "tcp", "internal_port": 80,
                "ports": [{"port": 80, "handlers": ["http"]}, {"port": 8443, "handlers": ["tls"]}], "autostop": true, "force_instance_key": null}]})),
        ),
        ok(
            "update 1857156b526dd8 --autostop=false",
            existing_with(json!({"services": [{"protocol": "tcp", "internal_port": 80,
                "ports": [{"port": 80, "handlers": ["http"]}], "autostop": false, "force_instance_key": null}]})),
        ),
        ok("update 1857156b526dd8 --file-literal /etc/a=", existing_with(json!({"files": null}))),
        ok("update 1857156b526dd8 --file-literal /etc/a=b", existing_with(json!({"files": [{"guest_path": "/etc/a", "raw_value": "Yg=="}]}))),
        ok("update 1857156b526dd8 --standby-for ''", existing_with(json!({"standbys": null}))),
        ok("update 1857156b526dd8 --vm-memory 1024", existing_with(json!({"guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 1024}}))),
        ok("update 1857156b526dd8 --schedule weekly", existing_with(json!({"schedule": "weekly"}))),
        ok("update 1857156b526dd8 -m k=w --skip-dns-registration", existing_with(json!({"metadata": {"k": "w"}, "dns": {"skip_registration": true}}))),
        err("update 1857156b526dd8 -C \"'open\"", &["--command"]),
    ]
}

/// Parses `line` as `hangar machine …` and builds the config as the command would.
fn build(line: &str, dir: &std::path::Path, auto_destroy_base: bool) -> anyhow::Result<Value> {
    let line = line.replace("{DIR}", &dir.display().to_string());
    let words = shlex::split(&line).expect("test line is valid shell words");
    let argv = ["hangar", "machine"]
        .into_iter()
        .map(String::from)
        .chain(words)
        .map(std::ffi::OsString::from)
        .collect();
    let cli = Cli::try_parse_from(crate::go_flags::go_bool_flags(&Cli::command(), argv))
        .map_err(|e| anyhow::anyhow!("clap: {}", crate::one_line_clap_error(&e)))?;
    let Command::Machine(m) = cli.command else {
        panic!("not a machine command")
    };
    let config = match m.command {
        MachineCommand::Run(a) => run::config_for(&a.create, a.shell)?,
        MachineCommand::Create(a) => run::config_for(&a, false)?,
        MachineCommand::Update(a) => {
            let mut base: hangar_api::MachineConfig = serde_json::from_value(existing()).unwrap();
            base.auto_destroy = auto_destroy_base;
            update::updated_config(&a, &base)?
        }
        other => panic!("unexpected command {other:?}"),
    };
    Ok(serde_json::to_value(config)?)
}

fn fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("local.txt"), "local\n").unwrap();
    std::fs::write(
        dir.path().join("machine.json"),
        r#"{"files": [{"guest_path": "/etc/x", "local_path": "local.txt"}],
            "containers": [{"name": "app", "files": [{"guest_path": "/c", "local_path": "local.txt"}]}]}"#,
    )
    .unwrap();
    dir
}

#[test]
fn command_lines_give_exact_configs() {
    let dir = fixtures();
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let got = build(case.line, dir.path(), false);
        match (&case.want, got) {
            (Want::Config(want), Ok(got)) if *want == got => {}
            (Want::Config(want), got) => failures.push(format!(
                "{}\n  want {want}\n  got  {}",
                case.line,
                match got {
                    Ok(v) => v.to_string(),
                    Err(e) => format!("error: {e:#}"),
                }
            )),
            (Want::Err(parts), Err(e)) => {
                let msg = format!("{e:#}");
                if msg.contains('\n') || !parts.iter().all(|p| msg.contains(p)) {
                    failures.push(format!(
                        "{}\n  want an error with {parts:?}\n  got  {msg}",
                        case.line
                    ));
                }
            }
            (Want::Err(parts), Ok(v)) => failures.push(format!(
                "{}\n  want an error with {parts:?}\n  got  {v}",
                case.line
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn update_of_an_auto_destroy_machine_forces_restart_no() {
    let dir = fixtures();
    let got = build("update 1857156b526dd8 -e X=1 -y", dir.path(), false).unwrap();
    assert_eq!(got["restart"], json!({"policy": "always"}));
    let got = build("update 1857156b526dd8 -e X=1 -y", dir.path(), true).unwrap();
    assert_eq!(got["restart"], json!({"policy": "no"}));
    assert_eq!(got["auto_destroy"], json!(true));
    let got = build("update 1857156b526dd8 --restart always", dir.path(), true).unwrap();
    assert_eq!(got["restart"], json!({"policy": "always"}));
}

fn source_machine() -> hangar_api::Machine {
    serde_json::from_value(json!({
        "id": "1857156b526dd8", "name": "aged-thunder-7371", "state": "stopped", "region": "local",
        "instance_id": "01HEPA330HZ37A78TK080NAK1M", "private_ip": "fdaa::2",
        "created_at": "2023-11-08T01:52:30Z", "updated_at": "2023-11-08T01:53:00Z",
        "config": {"image": "nginx", "init": {"cmd": ["nginx"]}, "guest": guest(), "auto_destroy": true,
            "mounts": [{"volume": "vol_old", "path": "/data", "name": "data"}]},
        "image_ref": {"registry": "docker.io", "repository": "library/nginx", "tag": "latest",
            "digest": "sha256:abcd", "labels": {}},
        "host_status": "ok", "cordoned": false
    }))
    .unwrap()
}

fn clone_of(line: &str) -> anyhow::Result<Value> {
    let words = shlex::split(line).unwrap();
    let cli = Cli::try_parse_from(
        ["hangar", "machine", "clone"]
            .into_iter()
            .map(String::from)
            .chain(words),
    )?;
    let Command::Machine(m) = cli.command else {
        panic!()
    };
    let MachineCommand::Clone(a) = m.command else {
        panic!()
    };
    Ok(serde_json::to_value(clone::clone_config(
        &source_machine(),
        &a,
    )?)?)
}

#[test]
fn clone_configs() {
    let base = |extra: Value| {
        let mut v = json!({"image": "docker.io/library/nginx:latest@sha256:abcd", "init": {"cmd": ["nginx"]},
            "guest": guest(), "auto_destroy": true, "mounts": [{"volume": "vol_new", "path": "/data"}]});
        for (k, x) in extra.as_object().unwrap().clone() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(&k);
            } else {
                v[k] = x;
            }
        }
        v
    };
    assert_eq!(
        clone_of("--attach-volume vol_new").unwrap(),
        base(json!({}))
    );
    assert_eq!(
        clone_of("--attach-volume vol_new:/other --clear-cmd --clear-auto-destroy").unwrap(),
        base(
            json!({"init": {"cmd": []}, "auto_destroy": null, "mounts": [{"volume": "vol_new", "path": "/other"}]})
        )
    );
    assert_eq!(
        clone_of("--attach-volume vol_new --override-cmd 'sleep inf' --vm-size shared-cpu-2x --standby-for source,abc").unwrap(),
        base(json!({"init": {"cmd": ["sleep", "inf"]}, "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
            "standbys": ["1857156b526dd8", "abc"], "env": {"FLY_STANDBY_FOR": "1857156b526dd8,abc"}}))
    );
    // Without --attach-volume the mount keeps the source's volume until `run` makes the new one.
    let plain = clone_of("").unwrap();
    assert!(
        plain["mounts"][0]["volume"]
            .as_str()
            .unwrap()
            .starts_with("vol_"),
        "{plain}"
    );
    // flyctl: --clear-cmd wins over --override-cmd; an empty override changes nothing.
    assert_eq!(
        clone_of("--attach-volume vol_new --clear-cmd --override-cmd x").unwrap(),
        base(json!({"init": {"cmd": []}}))
    );
    assert_eq!(
        clone_of("--attach-volume vol_new --override-cmd ''").unwrap(),
        base(json!({}))
    );
}

#[test]
fn exec_requests() {
    let parse = |line: &str| {
        let words = shlex::split(line).unwrap();
        let cli = Cli::try_parse_from(
            ["hangar", "machine", "exec"]
                .into_iter()
                .map(String::from)
                .chain(words),
        )
        .unwrap();
        let Command::Machine(m) = cli.command else {
            panic!()
        };
        let MachineCommand::Exec(a) = m.command else {
            panic!()
        };
        let (id, req) = crate::machine::process::exec_request(&a).unwrap();
        (id, serde_json::to_value(req).unwrap())
    };
    assert_eq!(
        parse("'ls -la /'"),
        (
            None,
            json!({"command": ["ls", "-la", "/"], "cmd": "ls -la /"})
        )
    );
    assert_eq!(
        parse("1857156b526dd8 'echo hi' --container app --timeout 10"),
        (
            Some("1857156b526dd8".to_string()),
            json!({"command": ["echo", "hi"], "cmd": "echo hi", "container": "app", "timeout": 10})
        )
    );
}
