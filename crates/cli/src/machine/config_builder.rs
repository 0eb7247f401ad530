//! Flags → `MachineConfig`, as flyctl's `determineMachineConfig` does it (reference 5.2, steps
//! 1-16, in that order). Pure apart from reading the local files the flags name, so every
//! command line can be checked against the exact JSON it produces.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use hangar_api::{
    Autostop, DnsConfig, File, MachineConfig, MachineGuest, MachineMount, MachinePort,
    MachineRestart, MachineService, RootfsConfig,
};
use serde_json::Value;

/// Schedules the API accepts.
pub const SCHEDULES: &[&str] = &["hourly", "daily", "weekly", "monthly"];

/// VM sizing flags, shared by run, create, update and clone.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFlags {
    /// VM size preset: shared-cpu-1x, shared-cpu-2x, …, performance-16x
    #[arg(long, value_name = "SIZE", help_heading = "VM size")]
    pub vm_size: Option<String>,
    /// Number of vCPUs (> 0)
    #[arg(
        long,
        visible_alias = "cpus",
        value_name = "N",
        help_heading = "VM size"
    )]
    pub vm_cpus: Option<String>,
    /// Memory in MB, or with a unit (512mb, 1gb)
    #[arg(
        long,
        visible_alias = "memory",
        value_name = "SIZE",
        help_heading = "VM size"
    )]
    pub vm_memory: Option<String>,
    /// Kind of CPU: shared or performance
    #[arg(
        long,
        visible_alias = "vm-cpukind",
        value_name = "KIND",
        help_heading = "VM size"
    )]
    pub vm_cpu_kind: Option<String>,
    /// Memory ceiling for ballooning, in MB or with a unit
    #[arg(long, value_name = "SIZE", help_heading = "VM size")]
    pub vm_max_memory: Option<String>,
    /// Dedicated host group to place the machine on
    #[arg(long, value_name = "ID", help_heading = "VM size")]
    pub host_dedication_id: Option<String>,
    /// Not supported: GPU machines are no longer available
    #[arg(long, value_name = "N", hide = true)]
    pub vm_gpus: Option<String>,
    /// Not supported: GPU machines are no longer available
    #[arg(long, value_name = "KIND", hide = true)]
    pub vm_gpu_kind: Option<String>,
}

/// The configuration flags of `machine run`, `create` and `update`.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigFlags {
    /// Expose a service: port[:machinePort][/protocol[:handler[:handler...]]] (repeatable, comma-separated)
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub ports: Vec<String>,
    /// Set an environment variable, NAME=VALUE (repeatable)
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Override the image ENTRYPOINT (shell words)
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Mount a volume: ID_OR_NAME:/path (a name takes the first unattached volume of that name; repeatable)
    #[arg(short = 'v', long = "volume", value_name = "VOLUME:/PATH")]
    pub volumes: Vec<String>,
    /// Set metadata, KEY=VALUE (repeatable)
    #[arg(short = 'm', long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Start the machine on a fuzzy schedule: hourly, daily, weekly or monthly
    #[arg(long, value_name = "SCHEDULE")]
    pub schedule: Option<String>,
    /// Do not register the machine's 6PN address in .internal DNS
    #[arg(long)]
    pub skip_dns_registration: bool,
    /// Let the proxy stop idle machines: off, stop, suspend, true or false (bare: stop)
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "stop")]
    pub autostop: Option<String>,
    /// Let the proxy start machines on demand: true or false (bare: true)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub autostart: Option<String>,
    /// Restart policy on exit: no, always or on-failure (empty: the server default)
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Make this machine a standby for these machine ids (comma-separated; empty clears)
    #[arg(long, value_name = "IDS")]
    pub standby_for: Option<String>,
    /// Write a local file into the machine: /guest/path=local/path (empty value removes)
    #[arg(long, value_name = "/GUEST=LOCAL")]
    pub file_local: Vec<String>,
    /// Write a literal into a machine file: /guest/path=VALUE (empty value removes)
    #[arg(long, value_name = "/GUEST=VALUE")]
    pub file_literal: Vec<String>,
    /// Write an app secret (base64) into a machine file: /guest/path=SECRET (empty value removes)
    #[arg(long, value_name = "/GUEST=SECRET")]
    pub file_secret: Vec<String>,
    /// Machine config as a JSON file or a literal JSON object, applied before the other flags
    #[arg(long, value_name = "FILE|JSON")]
    pub machine_config: Option<String>,
    /// Root filesystem persistence: never, always or restart
    #[arg(long, value_name = "MODE")]
    pub rootfs_persist: Option<String>,
    /// Root filesystem size in GB, or with a unit (2gb); 0 unsets
    #[arg(long, value_name = "SIZE")]
    pub rootfs_size: Option<String>,
    /// Swap size in MB, or with a unit (512mb)
    #[arg(long, value_name = "SIZE")]
    pub swap_size: Option<String>,
    /// Cache drive size in MB, or with a unit; 0 removes it
    #[arg(long, value_name = "SIZE")]
    pub cachedrive_size: Option<String>,
    /// Kernel argument (repeatable)
    #[arg(long = "kernel-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub kernel_args: Vec<String>,
    /// With multiple containers, the container that gets the image (default: `app`, else the first)
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    #[command(flatten)]
    pub vm: VmFlags,
}

/// What the command adds to the flags.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Update: the machine's current config; run/create: none.
    pub base: Option<MachineConfig>,
    pub updating: bool,
    /// `--rm` (run/create).
    pub rm: bool,
    /// The image argument (run/create) or `--image` (update).
    pub image: Option<String>,
    /// New `init.cmd`: run/create pass the args after the image when there are any; update
    /// passes `--command` split into words, where an empty list clears `init.cmd`.
    pub command: Option<Vec<String>>,
    /// `--shell` without a command: keep the machine alive for the shell.
    pub shell: bool,
}

/// Builds the config (steps 1-16 of reference 5.2).
pub fn build_config(flags: &ConfigFlags, opts: &BuildOptions) -> Result<MachineConfig> {
    // 1. Base.
    let mut config = match &opts.base {
        Some(base) => base.clone(),
        None => MachineConfig {
            auto_destroy: opts.rm,
            ..Default::default()
        },
    };
    if flags.skip_dns_registration {
        config
            .dns
            .get_or_insert_with(DnsConfig::default)
            .skip_registration = Some(true);
    }

    // 2. --machine-config.
    if let Some(source) = &flags.machine_config {
        config = merge_machine_config(config, source)?;
    }
    let target_container = target_container(&config, flags.container.as_deref())?;

    // 3. Guest.
    let guest = config.guest.take();
    config.guest = Some(apply_vm_flags(guest, &flags.vm)?);
    if !flags.kernel_args.is_empty() {
        if let Some(g) = config.guest.as_mut() {
            g.kernel_args = Some(flags.kernel_args.clone());
        }
    }

    // 4. Storage.
    apply_storage(&mut config, flags)?;

    // 5. Env.
    if !flags.env.is_empty() {
        let env = config.env.get_or_insert_with(BTreeMap::new);
        for kv in &flags.env {
            let (k, v) = parse_kv("--env", kv, "NAME=VALUE")?;
            env.insert(k, v);
        }
    }

    // 6. Schedule.
    if let Some(s) = &flags.schedule {
        if !SCHEDULES.contains(&s.as_str()) {
            bail!(
                "invalid --schedule {s:?}: expected one of {}",
                SCHEDULES.join(", ")
            );
        }
        config.schedule = Some(s.clone());
    }

    // 7. Command.
    if let Some(cmd) = &opts.command {
        config.init.cmd = if cmd.is_empty() {
            None
        } else {
            Some(cmd.clone())
        };
    } else if opts.shell {
        config.init.exec = Some(vec!["/bin/sleep".into(), "inf".into()]);
    }

    // 8. Metadata.
    if !flags.metadata.is_empty() {
        let md = config.metadata.get_or_insert_with(BTreeMap::new);
        for kv in &flags.metadata {
            let (k, v) = parse_kv("--metadata", kv, "KEY=VALUE")?;
            md.insert(k, v);
        }
    }

    // 9. Services.
    let services = config.services.take().unwrap_or_default();
    let services = determine_services(services, &flags.ports)?;
    config.services = (!services.is_empty()).then_some(services);

    // 10. Entrypoint.
    if let Some(ep) = &flags.entrypoint {
        if !ep.trim().is_empty() {
            config.init.entrypoint = Some(split_words("--entrypoint", ep)?);
        }
    }

    // 11. Restart.
    apply_restart(&mut config, flags, opts)?;

    // 12. Volumes.
    // A string slice in flyctl: `-v a:/x,b:/y` is two volumes.
    for spec in flags.volumes.iter().flat_map(|v| v.split(',')) {
        let mount = parse_volume(spec)?;
        let mounts = config.mounts.get_or_insert_with(Vec::new);
        match mounts.iter_mut().find(|m| m.path == mount.path) {
            Some(existing) => existing.volume = mount.volume,
            None => mounts.push(mount),
        }
    }

    // 13. Image.
    if let Some(image) = &opts.image {
        match target_container {
            Some(i) => {
                if let Some(c) = config.containers.as_mut().and_then(|cs| cs.get_mut(i)) {
                    c.image = image.clone();
                }
            }
            None => config.image = Some(image.clone()),
        }
    }

    // 14. Autostop/autostart on every service, only when given.
    let autostop = flags
        .autostop
        .as_deref()
        .map(|v| {
            Autostop::parse(v).ok_or_else(|| {
                anyhow!("invalid --autostop {v:?}: expected off, stop, suspend, true or false")
            })
        })
        .transpose()?;
    let autostart = flags
        .autostart
        .as_deref()
        .map(|v| parse_bool("--autostart", v))
        .transpose()?;
    let disable_autostart = config.disable_machine_autostart.take();
    if let Some(services) = config.services.as_mut() {
        for s in services.iter_mut() {
            if let Some(disabled) = disable_autostart {
                s.autostart = Some(!disabled);
            }
            if let Some(a) = autostop {
                s.autostop = Some(a);
            }
            if let Some(a) = autostart {
                s.autostart = Some(a);
            }
        }
    }

    // 15. Standbys.
    if let Some(list) = &flags.standby_for {
        let ids = split_list(list);
        set_standbys(&mut config, ids);
    }

    // 16. Files.
    let files = files_from_flags(flags)?;
    merge_files(&mut config.files, files);

    Ok(config)
}

/// Sets `standbys` and `env.FLY_STANDBY_FOR`; an empty list clears both.
pub fn set_standbys(config: &mut MachineConfig, ids: Vec<String>) {
    if ids.is_empty() {
        config.standbys = None;
        if let Some(env) = config.env.as_mut() {
            env.remove("FLY_STANDBY_FOR");
            if env.is_empty() {
                config.env = None;
            }
        }
    } else {
        config
            .env
            .get_or_insert_with(BTreeMap::new)
            .insert("FLY_STANDBY_FOR".into(), ids.join(","));
        config.standbys = Some(ids);
    }
}

/// Comma-separated values, trimmed, empty items dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Shell-style word splitting, naming the flag on unbalanced quotes.
pub fn split_words(flag: &str, s: &str) -> Result<Vec<String>> {
    shlex::split(s)
        .ok_or_else(|| anyhow!("invalid {flag} {s:?}: unbalanced quotes or a trailing backslash"))
}

fn parse_kv(flag: &str, kv: &str, form: &str) -> Result<(String, String)> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("invalid {flag} {kv:?}: expected {form}"),
    }
}

fn parse_bool(flag: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" => Ok(true),
        "false" | "f" | "0" | "no" => Ok(false),
        _ => bail!("invalid {flag} {v:?}: expected true or false"),
    }
}

// ---- step 2: --machine-config ----

fn merge_machine_config(base: MachineConfig, source: &str) -> Result<MachineConfig> {
    let trimmed = source.trim_start();
    let (text, dir) = if trimmed.starts_with('{') {
        (source.to_string(), None)
    } else {
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("cannot read --machine-config file {source}"))?;
        (text, Path::new(source).parent().map(Path::to_path_buf))
    };
    let mut patch: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("invalid --machine-config: not valid JSON: {e}"))?;
    if !patch.is_object() {
        bail!("invalid --machine-config: expected a JSON object");
    }
    fill_local_paths(&mut patch, dir.as_deref())?;
    let mut merged = serde_json::to_value(&base).context("cannot encode the machine config")?;
    deep_merge(&mut merged, patch);
    serde_json::from_value(merged).map_err(|e| anyhow!("invalid --machine-config: {e}"))
}

/// Objects merge key by key (as Go's `json.Unmarshal` onto an existing struct does); anything
/// else replaces.
fn deep_merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

/// Reads `files[].local_path` and `containers[].files[].local_path` into `raw_value` (base64).
fn fill_local_paths(patch: &mut Value, dir: Option<&Path>) -> Result<()> {
    let mut lists: Vec<&mut Value> = Vec::new();
    let obj = patch.as_object_mut().expect("checked to be an object");
    for (key, value) in obj.iter_mut() {
        match (key.as_str(), value) {
            ("files", files) => lists.push(files),
            ("containers", Value::Array(containers)) => {
                for c in containers.iter_mut() {
                    if let Some(files) = c.get_mut("files") {
                        lists.push(files);
                    }
                }
            }
            _ => {}
        }
    }
    for files in lists {
        let Value::Array(files) = files else { continue };
        for f in files.iter_mut() {
            let Some(f) = f.as_object_mut() else { continue };
            let Some(local) = f
                .get("local_path")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                continue;
            };
            let has_value = f.get("raw_value").is_some_and(|v| !v.is_null())
                || f.get("secret_name").is_some_and(|v| !v.is_null());
            if !has_value {
                let path = match dir {
                    Some(d) if Path::new(&local).is_relative() => d.join(&local),
                    _ => Path::new(&local).to_path_buf(),
                };
                let content = std::fs::read(&path).with_context(|| {
                    format!(
                        "cannot read local_path {} named in --machine-config",
                        path.display()
                    )
                })?;
                f.insert("raw_value".into(), Value::String(b64(&content)));
            }
            f.remove("local_path");
        }
    }
    Ok(())
}

/// Index of the container that receives the image: `--container`, else `app`, else the first.
fn target_container(config: &MachineConfig, name: Option<&str>) -> Result<Option<usize>> {
    let containers = match config.containers.as_deref() {
        Some(cs) if !cs.is_empty() => cs,
        // As flyctl, --container means nothing without containers and is ignored.
        _ => return Ok(None),
    };
    if let Some(name) = name {
        return match containers.iter().position(|c| c.name == name) {
            Some(i) => Ok(Some(i)),
            None => bail!(
                "invalid --container {name:?}: expected one of {}",
                containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    Ok(Some(
        containers.iter().position(|c| c.name == "app").unwrap_or(0),
    ))
}

// ---- step 3: guest ----

/// Applies the VM flags to a guest (the `shared-cpu-1x` preset when there is none).
pub fn apply_vm_flags(guest: Option<MachineGuest>, vm: &VmFlags) -> Result<MachineGuest> {
    if vm.vm_gpus.is_some() || vm.vm_gpu_kind.is_some() {
        let flag = if vm.vm_gpus.is_some() {
            "--vm-gpus"
        } else {
            "--vm-gpu-kind"
        };
        bail!("{flag}: GPU machines are no longer supported");
    }
    let mut guest = match guest {
        Some(g) => g,
        None => hangar_api::guest::preset_by_name(hangar_api::guest::DEFAULT_VM_SIZE)
            .expect("the default preset exists")
            .to_guest(),
    };
    if let Some(size) = &vm.vm_size {
        let preset = hangar_api::guest::preset_by_name(size).ok_or_else(|| {
            anyhow!(
                "invalid --vm-size {size:?}: expected one of {}",
                hangar_api::guest::preset_names()
            )
        })?;
        if preset.gpu_kind.is_some() {
            bail!("invalid --vm-size {size:?}: GPU machines are no longer supported");
        }
        guest.cpu_kind = preset.cpu_kind.to_string();
        guest.cpus = preset.cpus;
        guest.memory_mb = preset.memory_mb;
        guest.gpus = None;
        guest.gpu_kind = None;
    }
    if let Some(cpus) = &vm.vm_cpus {
        match cpus.trim().parse::<i64>() {
            Ok(n) if n > 0 => guest.cpus = n,
            _ => bail!("invalid --vm-cpus {cpus:?}: expected a whole number greater than zero"),
        }
    }
    if let Some(mem) = &vm.vm_memory {
        let mb = parse_size(
            "--vm-memory",
            mem,
            MIB,
            "megabytes, or a size such as 512mb or 1gb",
        )?;
        if mb == 0 {
            bail!("invalid --vm-memory {mem:?}: memory cannot be zero");
        }
        guest.memory_mb = mb as i64;
    }
    if let Some(kind) = &vm.vm_cpu_kind {
        if kind != "shared" && kind != "performance" {
            bail!("invalid --vm-cpu-kind {kind:?}: expected shared or performance");
        }
        guest.cpu_kind = kind.clone();
    }
    if let Some(max) = &vm.vm_max_memory {
        let mb = parse_size(
            "--vm-max-memory",
            max,
            MIB,
            "megabytes, or a size such as 512mb or 1gb",
        )?;
        guest.max_memory_mb = (mb > 0).then_some(mb as i64);
    }
    if let Some(id) = &vm.host_dedication_id {
        guest.host_dedication_id = (!id.is_empty()).then(|| id.clone());
    }
    Ok(guest)
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// flyctl's `helpers.ParseSize(s, units.RAMInBytes, unit)`: a bare number is already in
/// `unit`; otherwise a size with a binary unit (`512mb`, `1gb`, `1.5g`, `2GiB`) converted to
/// `unit`, rounded down.
pub fn parse_size(flag: &str, s: &str, unit: u64, accepted: &str) -> Result<u64> {
    let t = s.trim();
    let err = || anyhow!("invalid {flag} {s:?}: expected {accepted}");
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let lower = t.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, suffix) = lower.split_at(split);
    let num: f64 = num.parse().map_err(|_| err())?;
    let suffix = suffix.trim();
    let suffix = suffix.strip_suffix('b').unwrap_or(suffix);
    let suffix = suffix.strip_suffix('i').unwrap_or(suffix);
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1 << 10,
        "m" => MIB,
        "g" => GIB,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(err()),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 {
        return Err(err());
    }
    Ok((bytes as u64) / unit)
}

// ---- step 4: storage ----

fn apply_storage(config: &mut MachineConfig, flags: &ConfigFlags) -> Result<()> {
    if let Some(p) = &flags.rootfs_persist {
        if !matches!(p.as_str(), "never" | "always" | "restart") {
            bail!("invalid --rootfs-persist {p:?}: expected never, always or restart");
        }
        config
            .rootfs
            .get_or_insert_with(RootfsConfig::default)
            .persist = Some(p.clone());
    }
    if let Some(s) = &flags.rootfs_size {
        let gb = parse_size("--rootfs-size", s, GIB, "gigabytes, or a size such as 2gb")?;
        if gb == 0 {
            if let Some(r) = config.rootfs.as_mut() {
                r.size_gb = None;
                if r.persist.is_none() && r.extra.is_empty() {
                    config.rootfs = None;
                }
            }
        } else {
            config
                .rootfs
                .get_or_insert_with(RootfsConfig::default)
                .size_gb = Some(gb);
        }
    }
    if let Some(s) = &flags.swap_size {
        let mb = parse_size("--swap-size", s, MIB, "megabytes, or a size such as 512mb")?;
        if mb == 0 {
            bail!("invalid --swap-size {s:?}: it must be greater than zero");
        }
        config.init.swap_size_mb = Some(mb as i64);
    }
    if let Some(s) = &flags.cachedrive_size {
        let mb = parse_size(
            "--cachedrive-size",
            s,
            MIB,
            "megabytes, or a size such as 10gb",
        )?;
        config.cache_drive = (mb > 0).then(|| serde_json::json!({ "size_mb": mb }));
    }
    Ok(())
}

// ---- step 9: --port (reference 5.4) ----

/// One `--port` value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortSpec {
    port: Option<i64>,
    range: Option<(i64, i64)>,
    internal: i64,
    protocol: String,
    handlers: Vec<String>,
}

const PORT_FORM: &str = "port[:machinePort][/protocol[:handler...]] or start-end:machinePort";

fn parse_port_number(spec: &str, s: &str) -> Result<i64> {
    match s.trim().parse::<i64>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => bail!(
            "invalid --port {spec:?}: {s:?} is not a port number (1-65535); expected {PORT_FORM}"
        ),
    }
}

fn parse_port(spec: &str) -> Result<PortSpec> {
    let (ports, rest) = match spec.split_once('/') {
        Some((p, r)) => (p, Some(r)),
        None => (spec, None),
    };
    let (protocol, handlers) = match rest {
        Some(r) => {
            let mut parts = r.split(':');
            let proto = parts.next().unwrap_or_default().to_string();
            (proto, parts.map(str::to_string).collect::<Vec<_>>())
        }
        None => ("tcp".to_string(), Vec::new()),
    };
    if protocol != "tcp" && protocol != "udp" {
        bail!("invalid --port {spec:?}: protocol {protocol:?} is not tcp or udp; expected {PORT_FORM}");
    }
    if rest.is_some_and(|r| r.contains('/')) {
        bail!("invalid --port {spec:?}: more than one '/'; expected {PORT_FORM}");
    }
    let parts: Vec<&str> = ports.split(':').collect();
    let (edge, internal) = match parts.as_slice() {
        [edge] => (*edge, None),
        [edge, internal] => (*edge, Some(*internal)),
        _ => bail!("invalid --port {spec:?}: too many ':' in the ports; expected {PORT_FORM}"),
    };
    let (port, range) = match edge.split_once('-') {
        Some((s, e)) => {
            let (s, e) = (parse_port_number(spec, s)?, parse_port_number(spec, e)?);
            if internal.is_none() {
                bail!("invalid --port {spec:?}: a port range needs a machine port (start-end:machinePort)");
            }
            if s > e {
                bail!("invalid --port {spec:?}: the range start {s} is above its end {e}");
            }
            (None, Some((s, e)))
        }
        None => (Some(parse_port_number(spec, edge)?), None),
    };
    let internal = match internal {
        Some(i) => parse_port_number(spec, i)?,
        None => port.expect("a single port without a range"),
    };
    Ok(PortSpec {
        port,
        range,
        internal,
        protocol,
        handlers,
    })
}

/// flyctl's `DetermineServices`: group by `internal_port/protocol`, replace re-specified edge
/// ports, `-` clears a service, and services left without ports are dropped.
fn determine_services(
    mut services: Vec<MachineService>,
    flags: &[String],
) -> Result<Vec<MachineService>> {
    let specs: Vec<&str> = flags
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.is_empty() {
        return Ok(services);
    }
    for spec in specs {
        let p = parse_port(spec)?;
        let idx = match services
            .iter()
            .position(|s| s.internal_port == p.internal && s.protocol == p.protocol)
        {
            Some(i) => i,
            None => {
                services.push(MachineService {
                    protocol: p.protocol.clone(),
                    internal_port: p.internal,
                    ..Default::default()
                });
                services.len() - 1
            }
        };
        let svc = &mut services[idx];
        if p.handlers.len() == 1 && p.handlers[0] == "-" {
            svc.ports = None;
            continue;
        }
        let ports = svc.ports.get_or_insert_with(Vec::new);
        let existing = ports.iter().position(|e| match (p.port, p.range) {
            (Some(port), _) => e.port == Some(port),
            (None, Some((start, _))) => e.start_port == Some(start),
            (None, None) => false,
        });
        let entry = match existing {
            Some(i) => &mut ports[i],
            None => {
                ports.push(MachinePort::default());
                ports.last_mut().expect("just pushed")
            }
        };
        if let Some(port) = p.port {
            entry.port = Some(port);
        }
        if let Some((start, end)) = p.range {
            entry.start_port = Some(start);
            entry.end_port = Some(end);
        }
        entry.handlers = (!p.handlers.is_empty()).then_some(p.handlers);
    }
    services.retain(|s| s.ports.as_ref().is_some_and(|p| !p.is_empty()));
    Ok(services)
}

// ---- step 11: restart (reference 5.3) ----

fn apply_restart(
    config: &mut MachineConfig,
    flags: &ConfigFlags,
    opts: &BuildOptions,
) -> Result<()> {
    let policy = match flags.restart.as_deref() {
        Some("") => {
            config.restart = None;
            return Ok(());
        }
        Some("no") => "no",
        Some("always") if opts.rm => {
            bail!("--rm cannot be combined with --restart always: the machine would restart instead of exiting and never be removed")
        }
        Some("always") => "always",
        Some("on-failure") => "on-failure",
        Some("on-fail") => {
            eprintln!("Warning: --restart on-fail is deprecated; use on-failure");
            "on-failure"
        }
        Some(other) => {
            bail!("invalid --restart {other:?}: expected no, always or on-failure")
        }
        None => {
            if opts.rm || (opts.updating && config.auto_destroy) {
                "no"
            } else if !opts.updating && flags.schedule.is_some() && config.restart.is_none() {
                "on-failure"
            } else {
                return Ok(());
            }
        }
    };
    // flyctl writes a fresh restart object: a policy given here drops an older max_retries.
    config.restart = Some(MachineRestart {
        policy: policy.to_string(),
        ..Default::default()
    });
    Ok(())
}

// ---- step 12: --volume ----

fn parse_volume(spec: &str) -> Result<MachineMount> {
    // As flyctl: anything after a second ':' (mount options) is ignored.
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    let (source, path) = match parts.as_slice() {
        [s, p] | [s, p, _] if !s.is_empty() && !p.is_empty() => (*s, *p),
        _ => bail!("invalid --volume {spec:?}: expected VOLUME:/path (a vol_ id or a volume name)"),
    };
    Ok(MachineMount {
        volume: source.to_string(),
        path: path.to_string(),
        ..Default::default()
    })
}

// ---- step 16: files ----

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn files_from_flags(flags: &ConfigFlags) -> Result<Vec<File>> {
    let mut out = Vec::new();
    for (flag, values) in [
        ("--file-local", &flags.file_local),
        ("--file-literal", &flags.file_literal),
        ("--file-secret", &flags.file_secret),
    ] {
        for spec in values {
            let Some((guest, value)) = spec.split_once('=') else {
                bail!("invalid {flag} {spec:?}: expected /guest/path=VALUE");
            };
            if !guest.starts_with('/') {
                bail!("invalid {flag} {spec:?}: the guest path must be absolute");
            }
            let mut file = File {
                guest_path: guest.to_string(),
                ..Default::default()
            };
            if !value.is_empty() {
                match flag {
                    "--file-local" => {
                        let content = std::fs::read(value)
                            .with_context(|| format!("{flag} {spec}: cannot read {value}"))?;
                        file.raw_value = Some(b64(&content));
                    }
                    "--file-literal" => file.raw_value = Some(b64(value.as_bytes())),
                    _ => file.secret_name = Some(value.to_string()),
                }
            }
            out.push(file);
        }
    }
    Ok(out)
}

/// fly-go's `MergeFiles`: by `guest_path`; a file with no content removes an existing entry
/// (and, for a new path, is appended as is, which the server rejects naming the path).
fn merge_files(files: &mut Option<Vec<File>>, new: Vec<File>) {
    if new.is_empty() {
        return;
    }
    let list = files.get_or_insert_with(Vec::new);
    for f in new {
        let idx = list.iter().position(|e| e.guest_path == f.guest_path);
        match idx {
            None => list.push(f),
            Some(i) if f.raw_value.is_none() && f.secret_name.is_none() => {
                list.remove(i);
            }
            Some(i) => list[i] = f,
        }
    }
    if list.is_empty() {
        *files = None;
    }
}

#[cfg(test)]
#[path = "config_builder_tests.rs"]
mod tests;
