//! `fly.toml` → one MachineConfig per process group, as flyctl makes them (milestone 2 §5.1,
//! §5.2): `[build]`, `[env]`, `[http_service]`, `[[services]]`, `[checks]`, `[[vm]]`,
//! `[processes]`, `[mounts]`, `[[restart]]`, `[[files]]`, `kill_signal`/`kill_timeout`,
//! `[deploy]`, and `machine_config` (a `.json` path or inline JSON) with the `container` that
//! gets the built image. Pure apart from reading the files it names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Default, Deserialize)]
pub struct FlyToml {
    pub app: Option<String>,
    pub primary_region: Option<String>,
    pub kill_signal: Option<String>,
    pub kill_timeout: Option<toml::Value>,
    pub swap_size_mb: Option<i64>,
    pub machine_config: Option<String>,
    pub container: Option<String>,
    #[serde(default)]
    pub build: Build,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub http_service: Option<toml::Value>,
    #[serde(default)]
    pub services: Vec<toml::Value>,
    #[serde(default)]
    pub checks: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub vm: Vec<Vm>,
    #[serde(default)]
    pub processes: BTreeMap<String, String>,
    pub mounts: Option<OneOrMany<Mount>>,
    #[serde(default)]
    pub restart: Vec<Restart>,
    #[serde(default)]
    pub deploy: Deploy,
    #[serde(default)]
    pub experimental: Experimental,
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Build {
    pub image: Option<String>,
    pub dockerfile: Option<String>,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    #[serde(alias = "build-target")]
    pub build_target: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Vm {
    pub size: Option<String>,
    pub memory: Option<toml::Value>,
    pub memory_mb: Option<i64>,
    pub cpus: Option<i64>,
    pub cpu_kind: Option<String>,
    #[serde(default)]
    pub processes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Mount {
    pub source: String,
    pub destination: String,
    pub initial_size: Option<toml::Value>,
    #[serde(default)]
    pub processes: Vec<String>,
    pub auto_extend_size_threshold: Option<i64>,
    pub auto_extend_size_increment: Option<toml::Value>,
    pub auto_extend_size_limit: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Restart {
    pub policy: Option<String>,
    pub retries: Option<i64>,
    #[serde(default)]
    pub processes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Deploy {
    pub strategy: Option<String>,
    pub max_unavailable: Option<f64>,
    pub wait_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Experimental {
    pub machine_config: Option<String>,
    pub container: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub exec: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FileEntry {
    pub guest_path: String,
    pub raw_value: Option<String>,
    pub local_path: Option<String>,
    pub secret_name: Option<String>,
    #[serde(default)]
    pub processes: Vec<String>,
}

/// The image checks run with before the real one is built.
const PLACEHOLDER_IMAGE: &str = "hangar/placeholder:latest";

/// A parsed fly.toml and where it was read from (relative paths in it are resolved there).
pub struct AppConfig {
    pub toml: FlyToml,
    pub dir: PathBuf,
    pub path: PathBuf,
}

/// Reads and parses `path`; errors name the file and the line.
pub fn load(path: &Path) -> Result<AppConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let toml: FlyToml = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        // One line, whatever the parser's message looks like.
        let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match line {
            Some(l) => anyhow!("{}, line {l}: {msg}", path.display()),
            None => anyhow!("{}: {msg}", path.display()),
        }
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let cfg = AppConfig {
        toml,
        dir,
        path: path.to_path_buf(),
    };
    cfg.check()?;
    Ok(cfg)
}

/// `1gb`, `512mb`, `256` (MB) → MB.
fn megabytes(what: &str, v: &toml::Value) -> Result<i64> {
    match v {
        toml::Value::Integer(n) => Ok(*n),
        toml::Value::String(s) => Ok(crate::machine::config_builder::parse_size(
            what,
            s,
            1 << 20,
            "a size such as 512mb or 1gb",
        )? as i64),
        other => bail!("{what}: expected a size, got {other}"),
    }
}

fn gigabytes(what: &str, v: &toml::Value) -> Result<i64> {
    match v {
        toml::Value::Integer(n) => Ok(*n),
        toml::Value::String(s) => {
            Ok(
                crate::machine::config_builder::parse_size(what, s, 1 << 30, "a size such as 10gb")?
                    as i64,
            )
        }
        other => bail!("{what}: expected a size, got {other}"),
    }
}

fn to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl AppConfig {
    /// The process groups, sorted; `app` when there are none.
    pub fn groups(&self) -> Vec<String> {
        if self.toml.processes.is_empty() {
            vec!["app".to_string()]
        } else {
            self.toml.processes.keys().cloned().collect()
        }
    }

    fn machine_config_source(&self) -> Option<&str> {
        self.toml
            .experimental
            .machine_config
            .as_deref()
            .or(self.toml.machine_config.as_deref())
            .filter(|s| !s.trim().is_empty())
    }

    /// The container that gets the built image: top-level `container`, else the seed's
    /// `[experimental] container`, else `app`, else the first.
    fn chosen_container(&self) -> Option<&str> {
        self.toml
            .container
            .as_deref()
            .or(self.toml.experimental.container.as_deref())
    }

    /// Everything that can be refused before anything is built or created.
    fn check(&self) -> Result<()> {
        if let Some(s) = self.toml.deploy.strategy.as_deref() {
            if !["rolling", "immediate"].contains(&s) {
                bail!(
                    "{}: [deploy] strategy {s:?} is not supported (rolling or immediate)",
                    self.path.display()
                );
            }
        }
        // Every group's config (machine_config included: there is always one group).
        for group in self.groups() {
            self.group_config(&group, PLACEHOLDER_IMAGE)?;
        }
        Ok(())
    }

    /// `machine_config` with the chosen container's image set to `image`, local files inlined.
    fn base_config(&self, image: &str) -> Result<Option<Map<String, Value>>> {
        let Some(src) = self.machine_config_source() else {
            return Ok(None);
        };
        let file = self.path.display();
        let text = if src.trim_start().starts_with('{') {
            src.to_string()
        } else if src.ends_with(".json") {
            let p = self.dir.join(src);
            std::fs::read_to_string(&p)
                .with_context(|| format!("{file}: machine_config: cannot read {}", p.display()))?
        } else {
            bail!("{file}: invalid machine config source {src:?}: give a .json file or inline JSON starting with {{");
        };
        let mut config: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{file}: machine_config: invalid JSON: {e}"))?;
        let containers = config
            .get_mut("containers")
            .and_then(Value::as_array_mut)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| anyhow!("{file}: machine_config has no containers"))?;
        let names: Vec<String> = containers
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        let chosen = match self.chosen_container() {
            Some(name) => names.iter().position(|n| n == name).ok_or_else(|| {
                anyhow!(
                    "{file}: container {name:?} not found in machine_config (containers: {})",
                    names.join(", ")
                )
            })?,
            None => names.iter().position(|n| n == "app").unwrap_or(0),
        };
        for (i, c) in containers.iter_mut().enumerate() {
            if i == chosen {
                c["image"] = json!(image);
            } else if c["image"].as_str().is_none_or(str::is_empty) {
                bail!(
                    "{file}: container {:?} must have an image specified",
                    names[i]
                );
            }
            if let Some(files) = c.get_mut("files").and_then(Value::as_array_mut) {
                self.inline_local_files(files)?;
            }
        }
        // flyctl sends the built image at the top level too.
        config.insert("image".into(), json!(image));
        Ok(Some(config))
    }

    fn inline_local_files(&self, files: &mut [Value]) -> Result<()> {
        for f in files {
            if let Some(local) = f
                .get("local_path")
                .and_then(Value::as_str)
                .map(str::to_string)
            {
                let p = self.dir.join(&local);
                let bytes = std::fs::read(&p).with_context(|| {
                    format!(
                        "{}: file {}: cannot read {}",
                        self.path.display(),
                        f["guest_path"],
                        p.display()
                    )
                })?;
                let m = f.as_object_mut().expect("a file entry is an object");
                m.remove("local_path");
                m.insert(
                    "raw_value".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                );
            }
        }
        Ok(())
    }

    /// The MachineConfig for process group `group` running `image` (as JSON, for the API).
    pub fn group_config(&self, group: &str, image: &str) -> Result<Value> {
        let t = &self.toml;
        let file = self.path.display().to_string();
        let mut c = self.base_config(image)?.unwrap_or_default();
        if !c.contains_key("containers") {
            c.insert("image".into(), json!(image));
        }
        let applies = |procs: &[String]| procs.is_empty() || procs.iter().any(|p| p == group);

        // Command: the group's, else [experimental] cmd; entrypoint and exec.
        let mut init = Map::new();
        if let Some(cmd) = t.processes.get(group) {
            let words = shlex::split(cmd)
                .ok_or_else(|| anyhow!("{file}: [processes] {group}: unbalanced quotes"))?;
            init.insert("cmd".into(), json!(words));
        } else if let Some(cmd) = &t.experimental.cmd {
            init.insert("cmd".into(), json!(cmd));
        }
        if let Some(e) = &t.experimental.entrypoint {
            init.insert("entrypoint".into(), json!(e));
        }
        if let Some(e) = &t.experimental.exec {
            init.insert("exec".into(), json!(e));
        }
        if let Some(swap) = t.swap_size_mb {
            init.insert("swap_size_mb".into(), json!(swap));
        }
        if !init.is_empty() {
            c.insert("init".into(), Value::Object(init));
        }

        // Env: machine_config's, then [env], then the process group.
        let mut env = c
            .get("env")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in &t.env {
            env.insert(k.clone(), json!(v));
        }
        if let Some(r) = &t.primary_region {
            env.insert("PRIMARY_REGION".into(), json!(r));
        }
        env.insert("FLY_PROCESS_GROUP".into(), json!(group));
        c.insert("env".into(), Value::Object(env));

        // Services: [http_service] and [[services]] of this group.
        let mut services = Vec::new();
        if let Some(hs) = &t.http_service {
            let procs: Vec<String> = hs
                .get("processes")
                .and_then(|p| p.clone().try_into().ok())
                .unwrap_or_default();
            if applies(&procs) {
                services.push(http_service(hs, &file)?);
            }
        }
        for s in &t.services {
            let procs: Vec<String> = s
                .get("processes")
                .and_then(|p| p.clone().try_into().ok())
                .unwrap_or_default();
            if applies(&procs) {
                services.push(service(s, &file)?);
            }
        }
        if !services.is_empty() {
            c.insert("services".into(), json!(services));
        }

        // Machine checks: [checks.<name>], port defaulting to the http_service's.
        let mut checks = Map::new();
        for (name, ck) in &t.checks {
            let procs: Vec<String> = ck
                .get("processes")
                .and_then(|p| p.clone().try_into().ok())
                .unwrap_or_default();
            if !applies(&procs) {
                continue;
            }
            let mut v = to_json(ck);
            let m = v
                .as_object_mut()
                .ok_or_else(|| anyhow!("{file}: [checks.{name}] must be a table"))?;
            m.remove("processes");
            if !m.contains_key("port") {
                let port = t
                    .http_service
                    .as_ref()
                    .and_then(|h| h.get("internal_port"))
                    .and_then(toml::Value::as_integer)
                    .ok_or_else(|| anyhow!("{file}: [checks.{name}] needs a port (there is no [http_service] to take it from)"))?;
                m.insert("port".into(), json!(port));
            }
            if let Some(method) = m.get("method").and_then(Value::as_str) {
                let upper = method.to_ascii_uppercase();
                m.insert("method".into(), json!(upper));
            }
            checks.insert(name.clone(), v);
        }
        if !checks.is_empty() {
            c.insert("checks".into(), Value::Object(checks));
        }

        // Guest: the [[vm]] of this group; none leaves the machine's current size.
        if let Some(vm) = t.vm.iter().find(|v| applies(&v.processes)) {
            let mut guest = match vm.size.as_deref() {
                Some(size) => {
                    let p = hangar_api::guest::preset_by_name(size).ok_or_else(|| {
                        anyhow!(
                            "{file}: [[vm]] size {size:?} is not one of {}",
                            hangar_api::guest::preset_names()
                        )
                    })?;
                    json!({"cpu_kind": p.cpu_kind, "cpus": p.cpus, "memory_mb": p.memory_mb})
                }
                None => json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}),
            };
            if let Some(mem) = &vm.memory {
                guest["memory_mb"] = json!(megabytes("[[vm]] memory", mem)?);
            }
            if let Some(mb) = vm.memory_mb {
                guest["memory_mb"] = json!(mb);
            }
            if let Some(cpus) = vm.cpus {
                guest["cpus"] = json!(cpus);
            }
            if let Some(kind) = &vm.cpu_kind {
                guest["cpu_kind"] = json!(kind);
            }
            c.insert("guest".into(), guest);
        }

        // Restart policy of this group.
        if let Some(r) = t.restart.iter().find(|r| applies(&r.processes)) {
            let policy = match r.policy.as_deref() {
                Some("always") => "always",
                Some("never") | Some("no") => "no",
                Some("on-failure") | Some("on_failure") | None => "on-failure",
                Some(other) => {
                    bail!("{file}: [[restart]] policy {other:?} (always, never or on-failure)")
                }
            };
            let mut restart = json!({"policy": policy});
            if let Some(n) = r.retries {
                restart["max_retries"] = json!(n);
            }
            c.insert("restart".into(), restart);
        }

        // Stop: kill_signal / kill_timeout.
        if t.kill_signal.is_some() || t.kill_timeout.is_some() {
            let mut stop = Map::new();
            if let Some(s) = &t.kill_signal {
                stop.insert("signal".into(), json!(s));
            }
            match &t.kill_timeout {
                Some(toml::Value::Integer(n)) => {
                    stop.insert("timeout".into(), json!(format!("{n}s")));
                }
                Some(toml::Value::String(s)) => {
                    stop.insert("timeout".into(), json!(s));
                }
                Some(other) => {
                    bail!("{file}: kill_timeout: expected seconds or a duration, got {other}")
                }
                None => {}
            }
            c.insert("stop_config".into(), Value::Object(stop));
        }

        // Files of this group.
        let mut files: Vec<Value> = c
            .get("files")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for f in t.files.iter().filter(|f| applies(&f.processes)) {
            let mut v = json!({"guest_path": f.guest_path});
            match (&f.raw_value, &f.local_path, &f.secret_name) {
                (Some(raw), _, _) => v["raw_value"] = json!(raw),
                (_, Some(local), _) => v["local_path"] = json!(local),
                (_, _, Some(secret)) => v["secret_name"] = json!(secret),
                _ => bail!(
                    "{file}: [[files]] {}: give raw_value, local_path or secret_name",
                    f.guest_path
                ),
            }
            files.retain(|x| x["guest_path"] != v["guest_path"]);
            files.push(v);
        }
        self.inline_local_files(&mut files)?;
        if !files.is_empty() {
            c.insert("files".into(), json!(files));
        }

        // Metadata flyctl sets on Fly Launch machines.
        let mut metadata = c
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        metadata.insert("fly_platform_version".into(), json!("v2"));
        metadata.insert("fly_process_group".into(), json!(group));
        metadata.insert(
            "fly_flyctl_version".into(),
            json!(format!("hangar-{}", env!("CARGO_PKG_VERSION"))),
        );
        c.insert("metadata".into(), Value::Object(metadata));

        // The config must be one the API accepts.
        let parsed: hangar_api::MachineConfig = serde_json::from_value(Value::Object(c.clone()))
            .map_err(|e| {
                anyhow!("{file}: the machine config for process group {group} is invalid: {e}")
            })?;
        let mut check = parsed;
        hangar_api::validate_config(&mut check)
            .map_err(|e| anyhow!("{file}: process group {group}: {e}"))?;
        Ok(Value::Object(c))
    }

    /// The `[mounts]` entry of `group`, if it has one.
    pub fn mount_of(&self, group: &str) -> Option<Mount> {
        let all = match self.toml.mounts.clone()? {
            OneOrMany::One(m) => vec![m],
            OneOrMany::Many(v) => v,
        };
        all.into_iter()
            .find(|m| m.processes.is_empty() || m.processes.iter().any(|p| p == group))
    }

    /// `initial_size` of a mount, GB (default 1).
    pub fn mount_size_gb(&self, m: &Mount) -> Result<i64> {
        m.initial_size
            .as_ref()
            .map(|v| gigabytes("[mounts] initial_size", v))
            .transpose()
            .map(|s| s.unwrap_or(1))
    }

    /// The `config.mounts` entry for a mount on volume `volume_id`.
    pub fn mount_json(&self, m: &Mount, volume_id: &str) -> Result<Value> {
        let mut v = json!({"volume": volume_id, "path": m.destination, "name": m.source});
        if let Some(t) = m.auto_extend_size_threshold {
            v["extend_threshold_percent"] = json!(t);
        }
        if let Some(inc) = &m.auto_extend_size_increment {
            v["add_size_gb"] = json!(gigabytes("[mounts] auto_extend_size_increment", inc)?);
        }
        if let Some(lim) = &m.auto_extend_size_limit {
            v["size_gb_limit"] = json!(gigabytes("[mounts] auto_extend_size_limit", lim)?);
        }
        Ok(v)
    }
}

/// `[http_service]` → a MachineService: 80 (http, force_https) and 443 (tls, http).
fn http_service(hs: &toml::Value, file: &str) -> Result<Value> {
    let port = hs
        .get("internal_port")
        .and_then(toml::Value::as_integer)
        .ok_or_else(|| anyhow!("{file}: [http_service] needs internal_port"))?;
    let force_https = hs
        .get("force_https")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    let mut s = json!({
        "protocol": "tcp",
        "internal_port": port,
        "ports": [
            {"port": 80, "handlers": ["http"], "force_https": force_https},
            {"port": 443, "handlers": ["tls", "http"]}
        ],
    });
    common_service_fields(hs, &mut s);
    if let Some(checks) = hs.get("checks").and_then(toml::Value::as_array) {
        let list: Vec<Value> = checks
            .iter()
            .map(|c| {
                let mut v = to_json(c);
                v["type"] = json!("http");
                v
            })
            .collect();
        s["checks"] = json!(list);
    }
    Ok(s)
}

/// A `[[services]]` table → a MachineService.
fn service(t: &toml::Value, file: &str) -> Result<Value> {
    let port = t
        .get("internal_port")
        .and_then(toml::Value::as_integer)
        .ok_or_else(|| anyhow!("{file}: [[services]] needs internal_port"))?;
    let mut s = json!({
        "protocol": t.get("protocol").and_then(toml::Value::as_str).unwrap_or("tcp"),
        "internal_port": port,
    });
    if let Some(ports) = t.get("ports") {
        s["ports"] = to_json(ports);
    }
    common_service_fields(t, &mut s);
    let mut checks = Vec::new();
    for (key, kind) in [("tcp_checks", "tcp"), ("http_checks", "http")] {
        for c in t
            .get(key)
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut v = to_json(c);
            v["type"] = json!(kind);
            checks.push(v);
        }
    }
    if !checks.is_empty() {
        s["checks"] = json!(checks);
    }
    Ok(s)
}

fn common_service_fields(t: &toml::Value, s: &mut Value) {
    if let Some(v) = t.get("auto_stop_machines") {
        s["autostop"] = to_json(v);
    }
    if let Some(v) = t.get("auto_start_machines") {
        s["autostart"] = to_json(v);
    }
    if let Some(v) = t.get("min_machines_running") {
        s["min_machines_running"] = to_json(v);
    }
    if let Some(v) = t.get("concurrency") {
        s["concurrency"] = to_json(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(toml_text: &str, files: &[(&str, &str)]) -> Result<AppConfig> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let path = dir.path().join("fly.toml");
        std::fs::write(&path, toml_text).unwrap();
        let cfg = load(&path);
        // The files live as long as the test's thread (forgetting the dir left one behind in
        // /tmp per run).
        thread_local! {
            static KEPT: std::cell::RefCell<Vec<tempfile::TempDir>> = const {
                std::cell::RefCell::new(Vec::new())
            };
        }
        KEPT.with(|k| k.borrow_mut().push(dir));
        cfg
    }

    const SEED_CONFIG: &str = r#"{"containers": [
        {"name": "nginx", "image": "nginx:latest",
         "files": [{"guest_path": "/etc/nginx/conf.d/default.conf", "local_path": "nginx.conf"}],
         "depends_on": [{"name": "echo", "condition": "healthy"}]},
        {"name": "echo", "image": "ealen/echo-server",
         "healthchecks": [{"exec": {"command": ["wget", "-q", "--spider", "http://localhost"]}}]}
    ]}"#;

    #[test]
    fn the_seeds_experimental_container_gets_the_image() {
        let cfg = app(
            "app = 'web'\n[experimental]\nmachine_config = 'cli-config.json'\ncontainer = 'echo'\n\n[http_service]\ninternal_port = 8080\n",
            &[("cli-config.json", SEED_CONFIG), ("nginx.conf", "server {}\n")],
        )
        .unwrap();
        let c = cfg.group_config("app", "web:deployment-1").unwrap();
        assert_eq!(c["containers"][1]["image"], "web:deployment-1");
        assert_eq!(c["containers"][0]["image"], "nginx:latest");
        assert_eq!(c["image"], "web:deployment-1");
        let raw = c["containers"][0]["files"][0]["raw_value"]
            .as_str()
            .unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap(),
            b"server {}\n"
        );
        assert_eq!(c["services"][0]["internal_port"], 8080);
        assert_eq!(c["metadata"]["fly_platform_version"], "v2");
        assert_eq!(c["metadata"]["fly_process_group"], "app");
        // Top level wins over [experimental]; none picks `app`, else the first.
        let cfg = app(
            "container = 'nginx'\n[experimental]\nmachine_config = 'c.json'\ncontainer = 'echo'\n",
            &[("c.json", SEED_CONFIG), ("nginx.conf", "x")],
        )
        .unwrap();
        assert_eq!(
            cfg.group_config("app", "x:1").unwrap()["containers"][0]["image"],
            "x:1"
        );
    }

    #[test]
    fn bad_files_are_refused_naming_what() {
        let e = app("app = 'x'\n[http_service\n", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("fly.toml, line 2"), "{e}");
        let e = app("machine_config = 'c.txt'\n", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("invalid machine config source"), "{e}");
        let e = app("machine_config = '{\"image\": \"x\"}'\n", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no containers"), "{e}");
        let e = app(
            "container = 'nope'\nmachine_config = 'c.json'\n",
            &[("c.json", SEED_CONFIG), ("nginx.conf", "")],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("container \"nope\" not found"), "{e}");
        let e = app("[checks.web]\ntype = 'http'\npath = '/'\n", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs a port"), "{e}");
    }

    #[test]
    fn groups_get_their_command_vm_and_services() {
        let cfg = app(
            "app = 'x'\nkill_signal = 'SIGTERM'\nkill_timeout = 30\n[env]\nA = '1'\n\
             [processes]\nweb = 'httpd -f -p 8080'\nworker = 'sh -c \"sleep 1000\"'\n\
             [http_service]\ninternal_port = 8080\nprocesses = ['web']\nauto_stop_machines = 'suspend'\n\
             [[vm]]\nsize = 'shared-cpu-2x'\nprocesses = ['worker']\n\
             [[restart]]\npolicy = 'never'\n\
             [checks.alive]\ntype = 'tcp'\nprocesses = ['web']\ninterval = '5s'\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.groups(), ["web", "worker"]);
        let web = cfg.group_config("web", "img").unwrap();
        assert_eq!(web["init"]["cmd"], json!(["httpd", "-f", "-p", "8080"]));
        assert_eq!(web["services"][0]["autostop"], "suspend");
        assert_eq!(web["checks"]["alive"]["port"], 8080);
        assert!(
            web.get("guest").is_none(),
            "no [[vm]] for web: keep the machine's"
        );
        assert_eq!(web["env"]["A"], "1");
        assert_eq!(web["env"]["FLY_PROCESS_GROUP"], "web");
        assert_eq!(
            web["stop_config"],
            json!({"signal": "SIGTERM", "timeout": "30s"})
        );
        assert_eq!(web["restart"]["policy"], "no");
        let worker = cfg.group_config("worker", "img").unwrap();
        assert!(worker.get("services").is_none());
        assert_eq!(worker["guest"]["cpus"], 2);
        assert_eq!(worker["init"]["cmd"], json!(["sh", "-c", "sleep 1000"]));
    }
}
