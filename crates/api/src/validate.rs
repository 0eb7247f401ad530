//! Validation and normalisation of a `MachineConfig` at create and update. Errors name the field
//! (`config.guest.cpus`) so a user can find the mistake; a config that passes is what gets stored.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_json::Value;

use crate::config::{
    ContainerConfig, ContainerHealthcheck, File, MachineCheck, MachineConfig, MachineGuest,
    MachineService, StopConfig,
};
use crate::guest::{self, limits, preset_by_name, preset_names};
use crate::signal::STOP_SIGNALS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

type Result<T = ()> = std::result::Result<T, ConfigError>;

pub const RESTART_POLICIES: &[&str] = &["no", "always", "on-failure"];
pub const SCHEDULES: &[&str] = &["hourly", "daily", "weekly", "monthly"];
pub const HANDLERS: &[&str] = &["http", "tls", "tcp", "proxy_proto", "pg_tls", "edge_http"];
/// The largest root filesystem a machine may ask for, as the largest volume.
pub const MAX_ROOTFS_GB: u64 = crate::MAX_VOLUME_GB as u64;
/// The longest stop timeout accepted (fly.toml `kill_timeout` max is 300 s; allow a day for API users).
pub const MAX_STOP_TIMEOUT_SECS: u64 = 24 * 3600;

/// Checks `config` and fills in what the platform defaults (guest size from `size` or the
/// default preset). Called on create and on every update.
/// Fields of the machine `env_from` can project into a variable (reference 4.1).
pub const ENV_FROM_REFS: &[&str] = &["id", "version", "app_name", "private_ip", "region", "image"];

fn check_env_from(field: &str, env_from: Option<&Vec<crate::EnvFrom>>) -> Result {
    for (i, e) in env_from.into_iter().flatten().enumerate() {
        if e.env_var.is_empty() {
            return Err(bad(format!("{field}[{i}].env_var"), "is required"));
        }
        if e.env_var.contains(['=', '\0']) {
            return Err(bad(
                format!("{field}[{i}].env_var"),
                format!("invalid environment variable name {:?}", e.env_var),
            ));
        }
        if !ENV_FROM_REFS.contains(&e.field_ref.as_str()) {
            return Err(bad(
                format!("{field}[{i}].field_ref"),
                format!(
                    "invalid field_ref {:?}; valid: {}",
                    e.field_ref,
                    ENV_FROM_REFS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Auto-extend fields of a mount: the threshold needs an increment (and the other way round),
/// in Fly's ranges.
fn check_auto_extend(field: &str, m: &crate::MachineMount) -> Result {
    let range = |name: &str, v: Option<i64>, lo: i64, hi: i64| match v {
        Some(v) if !(lo..=hi).contains(&v) => Err(bad(
            format!("{field}.{name}"),
            format!("{v} is out of range ({lo} to {hi})"),
        )),
        _ => Ok(()),
    };
    range(
        "extend_threshold_percent",
        m.extend_threshold_percent,
        1,
        99,
    )?;
    range("add_size_gb", m.add_size_gb, 1, 500)?;
    range("add_size_percent", m.add_size_percent, 1, 100)?;
    range("min_add_size_gb", m.min_add_size_gb, 1, 500)?;
    range("size_gb_limit", m.size_gb_limit, 1, crate::MAX_VOLUME_GB)?;
    let increment = m.add_size_gb.is_some() || m.add_size_percent.is_some();
    if m.add_size_gb.is_some() && m.add_size_percent.is_some() {
        return Err(bad(
            format!("{field}.add_size_percent"),
            "give add_size_gb or add_size_percent, not both",
        ));
    }
    if m.extend_threshold_percent.is_some() != increment {
        return Err(bad(
            format!("{field}.extend_threshold_percent"),
            "auto-extend needs extend_threshold_percent together with add_size_gb (or add_size_percent)",
        ));
    }
    Ok(())
}

/// `secrets` of a container or process: each names a variable and (optionally) the secret.
fn check_secrets(field: &str, secrets: Option<&Vec<crate::MachineSecret>>) -> Result {
    for (i, e) in secrets.into_iter().flatten().enumerate() {
        crate::check_secret_name(&e.env_var)
            .map_err(|m| bad(format!("{field}[{i}].env_var"), m))?;
        if let Some(name) = e.name.as_deref().filter(|n| !n.is_empty()) {
            crate::check_secret_name(name).map_err(|m| bad(format!("{field}[{i}].name"), m))?;
        }
    }
    Ok(())
}

/// A host name of dot-separated labels of letters, digits and dashes (RFC 1123).
fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_dns(dns: &crate::DnsConfig) -> Result {
    for (i, ns) in dns.nameservers.iter().flatten().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(
                format!("config.dns.nameservers[{i}]"),
                format!("{ns:?} is not an IP address"),
            ));
        }
    }
    for (i, search) in dns.searches.iter().flatten().enumerate() {
        if !is_hostname(search) {
            return Err(bad(
                format!("config.dns.searches[{i}]"),
                format!("{search:?} is not a domain name"),
            ));
        }
    }
    for (i, o) in dns.options.iter().flatten().enumerate() {
        let clean = |s: &str| !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == ':');
        if !clean(&o.name) || o.value.as_deref().is_some_and(|v| !clean(v)) {
            return Err(bad(
                format!("config.dns.options[{i}]"),
                "an option needs a name, and neither it nor its value may contain spaces or ':'",
            ));
        }
    }
    if let Some(h) = dns.hostname.as_deref().filter(|h| !h.is_empty()) {
        if !is_hostname(h) || h.contains('.') {
            return Err(bad(
                "config.dns.hostname",
                format!("{h:?} is not a host name (letters, digits and '-', at most 63)"),
            ));
        }
    }
    if let Some(h) = dns.hostname_fqdn.as_deref().filter(|h| !h.is_empty()) {
        if !is_hostname(h) {
            return Err(bad(
                "config.dns.hostname_fqdn",
                format!("{h:?} is not a domain name"),
            ));
        }
    }
    Ok(())
}

pub fn validate_config(config: &mut MachineConfig) -> Result {
    let has_image = config
        .image
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty());
    let has_containers = config.containers.as_ref().is_some_and(|c| !c.is_empty());
    if !has_image && !has_containers {
        return Err(bad(
            "config.image",
            "an image is required (or use config.containers for a multi-container machine)",
        ));
    }
    if let Some(image) = config.image.as_deref().filter(|s| !s.trim().is_empty()) {
        check_image("config.image", image)?;
    }

    normalize_guest(config)?;
    check_env("config.env", config.env.as_ref())?;
    check_init(config)?;
    if let Some(processes) = config.processes.as_ref().filter(|p| !p.is_empty()) {
        if has_containers {
            return Err(bad(
                "config.processes",
                "processes cannot be combined with containers; give each process as a container",
            ));
        }
        for (i, p) in processes.iter().enumerate() {
            let field = format!("config.processes[{i}]");
            check_argv(&format!("{field}.exec"), p.exec.as_ref())?;
            check_argv(&format!("{field}.entrypoint"), p.entrypoint.as_ref())?;
            check_argv(&format!("{field}.cmd"), p.cmd.as_ref())?;
            check_env(&format!("{field}.env"), p.env.as_ref())?;
            check_env_from(&format!("{field}.env_from"), p.env_from.as_ref())?;
            check_secrets(&format!("{field}.secrets"), p.secrets.as_ref())?;
            if p.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
                return Err(bad(format!("{field}.user"), "must not be empty"));
            }
        }
    }
    if let Some(metadata) = &config.metadata {
        for key in metadata.keys() {
            if key.is_empty() {
                return Err(bad("config.metadata", "metadata keys must not be empty"));
            }
        }
    }
    if let Some(restart) = &config.restart {
        check_restart("config.restart", restart)?;
    }
    if let Some(schedule) = config.schedule.as_deref().filter(|s| !s.is_empty()) {
        if !SCHEDULES.contains(&schedule) {
            return Err(bad(
                "config.schedule",
                format!(
                    "invalid schedule {schedule:?}: must be one of hourly, daily, weekly, monthly"
                ),
            ));
        }
    }
    if let Some(stop) = &config.stop_config {
        check_stop("config.stop_config", stop)?;
    }
    if let Some(files) = &config.files {
        check_files("config.files", files)?;
    }
    if config.mounts.is_some() {
        let mut paths = BTreeSet::new();
        for (i, m) in config.mounts.iter().flatten().enumerate() {
            let field = format!("config.mounts[{i}]");
            if m.volume.is_empty() {
                return Err(bad(format!("{field}.volume"), "a volume id is required"));
            }
        }
        // A relative path (the seed's `--volume data_volume:data`) means one under /.
        for m in config.mounts.iter_mut().flatten() {
            if !m.path.is_empty() && !m.path.starts_with('/') {
                m.path = format!("/{}", m.path);
            }
        }
        let mounts = config.mounts.as_deref().unwrap_or_default();
        for (i, m) in mounts.iter().enumerate() {
            let field = format!("config.mounts[{i}]");
            check_abs_path(&format!("{field}.path"), &m.path)?;
            if m.path.trim_end_matches('/').is_empty() {
                return Err(bad(
                    format!("{field}.path"),
                    "a volume cannot be mounted at /",
                ));
            }
            check_auto_extend(&field, m)?;
            if !paths.insert(m.path.as_str()) {
                return Err(bad(
                    format!("{field}.path"),
                    format!("path {} is mounted twice", m.path),
                ));
            }
        }
        if mounts.len() > 1 {
            return Err(bad(
                "config.mounts",
                "a machine can mount at most one volume",
            ));
        }
    }
    if let Some(dns) = &config.dns {
        check_dns(dns)?;
    }
    let services = config.services.as_deref().unwrap_or_default();
    for (i, service) in services.iter().enumerate() {
        check_service(&format!("config.services[{i}]"), service)?;
    }
    if let Some(checks) = &config.checks {
        for (name, check) in checks {
            if name.is_empty() {
                return Err(bad("config.checks", "check names must not be empty"));
            }
            check_check(&format!("config.checks.{name}"), check, true)?;
        }
    }
    if let Some(standbys) = &config.standbys {
        for (i, id) in standbys.iter().enumerate() {
            if !crate::ids::is_machine_id(id) {
                return Err(bad(
                    format!("config.standbys[{i}]"),
                    format!("{id:?} is not a machine id (14 hex characters)"),
                ));
            }
        }
        if !standbys.is_empty() && !services.is_empty() {
            return Err(bad(
                "config.standbys",
                "standbys are only for machines without services",
            ));
        }
    }
    if let Some(rootfs) = &config.rootfs {
        if rootfs.size_gb.is_some_and(|gb| gb > MAX_ROOTFS_GB) {
            return Err(bad(
                "config.rootfs.size_gb",
                format!("must be at most {MAX_ROOTFS_GB} (GB)"),
            ));
        }
        if let Some(persist) = rootfs.persist.as_deref().filter(|p| !p.is_empty()) {
            if !["never", "restart", "always"].contains(&persist) {
                return Err(bad(
                    "config.rootfs.persist",
                    format!("invalid value {persist:?}: must be never, restart or always"),
                ));
            }
        }
    }
    if let Some(fraction) = config
        .spot
        .as_ref()
        .and_then(|s| s.get("max_price_fraction"))
        .filter(|f| !f.is_null())
    {
        if !fraction.as_f64().is_some_and(|f| f > 0.0 && f <= 1.0) {
            return Err(bad(
                "config.spot.max_price_fraction",
                format!("invalid value {fraction}: must be above 0 and at most 1"),
            ));
        }
    }
    let volume_names = check_volumes(config)?;
    if let Some(containers) = &config.containers {
        check_containers(containers, &volume_names)?;
    }
    Ok(())
}

fn check_image(field: &str, image: &str) -> Result {
    hangar_image::Reference::parse(image)
        .map(|_| ())
        .map_err(|e| bad(field, e.to_string()))
}

fn normalize_guest(config: &mut MachineConfig) -> Result {
    let size = config.size.as_deref().filter(|s| !s.is_empty());
    if let (Some(size), Some(_)) = (size, &config.guest) {
        return Err(bad(
            "config.size",
            format!("size {size:?} and guest are mutually exclusive; give one of them"),
        ));
    }
    let mut guest = match (size, config.guest.take()) {
        (Some(size), None) => preset_by_name(size)
            .ok_or_else(|| {
                bad(
                    "config.size",
                    format!("unknown size {size:?}; valid sizes: {}", preset_names()),
                )
            })?
            .to_guest(),
        (None, Some(g)) => g,
        _ => MachineGuest::default(),
    };
    if guest.cpu_kind.is_empty() {
        guest.cpu_kind = "shared".to_string();
    }
    if guest.cpus == 0 {
        guest.cpus = 1;
    }
    let Some(lim) = limits(&guest.cpu_kind) else {
        return Err(bad(
            "config.guest.cpu_kind",
            format!(
                "invalid cpu_kind {:?}: must be shared or performance",
                guest.cpu_kind
            ),
        ));
    };
    if guest.memory_mb == 0 {
        guest.memory_mb = lim.min_mb_per_cpu.saturating_mul(guest.cpus);
    }
    if guest.gpus.unwrap_or(0) > 0 || guest.gpu_kind.as_deref().is_some_and(|k| !k.is_empty()) {
        return Err(bad(
            "config.guest.gpus",
            "GPU machines are not supported by Hangar",
        ));
    }
    if !lim.cpus.contains(&guest.cpus) {
        return Err(bad(
            "config.guest.cpus",
            format!(
                "{} is not a valid number of {} cpus; valid: {:?}",
                guest.cpus, guest.cpu_kind, lim.cpus
            ),
        ));
    }
    if guest.memory_mb < 0 || guest.memory_mb % lim.memory_step_mb != 0 {
        return Err(bad(
            "config.guest.memory_mb",
            format!(
                "{} MB is not a multiple of {} MB ({} cpus)",
                guest.memory_mb, lim.memory_step_mb, guest.cpu_kind
            ),
        ));
    }
    let (min, max) = (
        lim.min_mb_per_cpu * guest.cpus,
        lim.max_mb_per_cpu * guest.cpus,
    );
    if guest.memory_mb < min || guest.memory_mb > max {
        return Err(bad(
            "config.guest.memory_mb",
            format!(
                "{} MB is out of range for {} ({min}..={max} MB)",
                guest.memory_mb,
                guest::size_name(&guest)
            ),
        ));
    }
    if let Some(max_mem) = guest.max_memory_mb {
        if max_mem != 0 && max_mem < guest.memory_mb {
            return Err(bad(
                "config.guest.max_memory_mb",
                "max_memory_mb must not be below memory_mb",
            ));
        }
        // The balloon ceiling is memory the machine may be given: the size's own maximum.
        if max_mem > max {
            return Err(bad(
                "config.guest.max_memory_mb",
                format!("max_memory_mb must be at most {max} MB for this size"),
            ));
        }
    }
    if let Some(persist) = &guest.persist_rootfs {
        let ok = match persist {
            Value::String(s) => ["", "none", "never", "restart", "always"].contains(&s.as_str()),
            Value::Number(n) => n.as_u64().is_some_and(|n| n <= 3),
            _ => false,
        };
        if !ok {
            return Err(bad(
                "config.guest.persist_rootfs",
                format!("invalid value {persist}: must be never, restart, always, none or 0-3"),
            ));
        }
    }
    // `size` is stored as the guest it stands for: a stored config is what clients send back on
    // update, and it must not then carry both.
    config.size = None;
    config.guest = Some(guest);
    Ok(())
}

fn check_env(field: &str, env: Option<&BTreeMap<String, String>>) -> Result {
    for (key, value) in env.into_iter().flatten() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(bad(
                field,
                format!("invalid environment variable name {key:?}"),
            ));
        }
        if value.contains('\0') {
            return Err(bad(format!("{field}.{key}"), "value contains a NUL byte"));
        }
    }
    Ok(())
}

fn check_argv(field: &str, argv: Option<&Vec<String>>) -> Result {
    if argv.into_iter().flatten().any(|a| a.contains('\0')) {
        return Err(bad(field, "arguments must not contain NUL bytes"));
    }
    Ok(())
}

fn check_init(config: &MachineConfig) -> Result {
    let init = &config.init;
    check_argv("config.init.exec", init.exec.as_ref())?;
    check_argv("config.init.entrypoint", init.entrypoint.as_ref())?;
    check_argv("config.init.cmd", init.cmd.as_ref())?;
    if init.swap_size_mb.is_some_and(|s| s < 0) {
        return Err(bad("config.init.swap_size_mb", "must not be negative"));
    }
    // 1 TiB: beyond any host here, and small enough for byte arithmetic.
    if init.swap_size_mb.is_some_and(|s| s > 1 << 20) {
        return Err(bad(
            "config.init.swap_size_mb",
            "must be at most 1048576 (1 TiB)",
        ));
    }
    Ok(())
}

fn check_restart(field: &str, restart: &crate::config::MachineRestart) -> Result {
    if !restart.policy.is_empty() && !RESTART_POLICIES.contains(&restart.policy.as_str()) {
        return Err(bad(
            format!("{field}.policy"),
            format!(
                "invalid restart policy {:?}: must be no, always or on-failure",
                restart.policy
            ),
        ));
    }
    if restart.max_retries.is_some_and(|n| n < 0) {
        return Err(bad(format!("{field}.max_retries"), "must not be negative"));
    }
    Ok(())
}

fn check_stop(field: &str, stop: &StopConfig) -> Result {
    if let Some(signal) = stop.signal {
        if !signal.is_one_of(STOP_SIGNALS) {
            return Err(bad(
                format!("{field}.signal"),
                format!(
                    "{signal} is not a stop signal; use one of {}",
                    STOP_SIGNALS.join(", ")
                ),
            ));
        }
    }
    if let Some(timeout) = stop.timeout {
        if timeout.as_duration().as_secs() > MAX_STOP_TIMEOUT_SECS {
            return Err(bad(format!("{field}.timeout"), "must be at most 24h"));
        }
    }
    Ok(())
}

fn check_abs_path(field: &str, path: &str) -> Result {
    if !path.starts_with('/') {
        return Err(bad(field, format!("path {path:?} must be absolute")));
    }
    if path.contains('\0') || path.split('/').any(|c| c == "..") {
        return Err(bad(
            field,
            format!("path {path:?} must not contain '..' or NUL"),
        ));
    }
    Ok(())
}

fn check_files(field: &str, files: &[File]) -> Result {
    let mut seen = BTreeSet::new();
    for (i, file) in files.iter().enumerate() {
        let f = format!("{field}[{i}]");
        check_abs_path(&format!("{f}.guest_path"), &file.guest_path)?;
        if file.guest_path.ends_with('/') {
            return Err(bad(
                format!("{f}.guest_path"),
                "must name a file, not a directory",
            ));
        }
        let top = file
            .guest_path
            .split('/')
            .find(|c| !c.is_empty() && *c != ".");
        if let Some(kernel_fs) = top.filter(|t| ["proc", "sys", "dev"].contains(t)) {
            return Err(bad(
                format!("{f}.guest_path"),
                format!(
                    "{} is under /{kernel_fs}, where the kernel's filesystem is mounted over the image: the file would never be seen",
                    file.guest_path
                ),
            ));
        }
        if !seen.insert(file.guest_path.as_str()) {
            return Err(bad(
                format!("{f}.guest_path"),
                format!("{} is given twice", file.guest_path),
            ));
        }
        let sources = [
            file.raw_value.is_some(),
            file.secret_name.is_some(),
            file.image_config.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources != 1 {
            return Err(bad(
                f,
                format!(
                    "file {} needs exactly one of raw_value, secret_name or image_config (got {sources})",
                    file.guest_path
                ),
            ));
        }
        if let Some(name) = &file.secret_name {
            crate::check_secret_name(name).map_err(|m| bad(format!("{f}.secret_name"), m))?;
        }
        if let Some(raw) = &file.raw_value {
            crate::BASE64
                .decode(raw)
                .map_err(|e| bad(format!("{f}.raw_value"), format!("not valid base64: {e}")))?;
        }
        if file.mode.is_some_and(|m| m > 0o7777) {
            return Err(bad(
                format!("{f}.mode"),
                "mode must be at most 0o7777 (4095)",
            ));
        }
    }
    Ok(())
}

fn check_port(field: &str, port: i64) -> Result {
    if !(1..=65535).contains(&port) {
        return Err(bad(field, format!("port {port} is out of range 1-65535")));
    }
    Ok(())
}

fn check_service(field: &str, s: &MachineService) -> Result {
    if s.protocol != "tcp" && s.protocol != "udp" {
        return Err(bad(
            format!("{field}.protocol"),
            format!("invalid protocol {:?}: must be tcp or udp", s.protocol),
        ));
    }
    check_port(&format!("{field}.internal_port"), s.internal_port)?;
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let pf = format!("{field}.ports[{i}]");
        match (p.port, p.start_port, p.end_port) {
            (Some(port), None, None) => check_port(&format!("{pf}.port"), port)?,
            (None, start, end) if start.is_some() || end.is_some() => {
                let (start, end) = (start.unwrap_or(0), end.unwrap_or(65535));
                if !(0..=65535).contains(&start) || !(0..=65535).contains(&end) || start > end {
                    return Err(bad(pf, format!("invalid port range {start}-{end}")));
                }
            }
            _ => return Err(bad(pf, "give either port or start_port/end_port")),
        }
        for h in p.handlers.iter().flatten() {
            if !HANDLERS.contains(&h.as_str()) {
                return Err(bad(
                    format!("{pf}.handlers"),
                    format!("unknown handler {h:?}; valid: {}", HANDLERS.join(", ")),
                ));
            }
        }
    }
    if s.min_machines_running.is_some_and(|n| n < 0) {
        return Err(bad(
            format!("{field}.min_machines_running"),
            "must not be negative",
        ));
    }
    if let Some(c) = &s.concurrency {
        if let Some(kind) = c.kind.as_deref().filter(|k| !k.is_empty()) {
            if kind != "connections" && kind != "requests" {
                return Err(bad(
                    format!("{field}.concurrency.type"),
                    format!("invalid type {kind:?}: must be connections or requests"),
                ));
            }
        }
        if c.soft_limit.is_some_and(|n| n < 0) || c.hard_limit.is_some_and(|n| n < 0) {
            return Err(bad(
                format!("{field}.concurrency"),
                "limits must not be negative",
            ));
        }
        if let (Some(soft), Some(hard)) = (c.soft_limit, c.hard_limit) {
            if hard > 0 && soft > hard {
                return Err(bad(
                    format!("{field}.concurrency.soft_limit"),
                    "soft_limit must not exceed hard_limit",
                ));
            }
        }
    }
    for (i, check) in s.checks.iter().flatten().enumerate() {
        check_check(&format!("{field}.checks[{i}]"), check, false)?;
    }
    Ok(())
}

fn check_check(field: &str, c: &MachineCheck, top_level: bool) -> Result {
    match c.kind_type.as_deref() {
        Some("tcp") | Some("http") => {}
        Some(other) => {
            return Err(bad(
                format!("{field}.type"),
                format!("invalid check type {other:?}: must be tcp or http"),
            ))
        }
        None => {
            return Err(bad(
                format!("{field}.type"),
                "a check type (tcp or http) is required",
            ))
        }
    }
    match c.port {
        Some(port) => check_port(&format!("{field}.port"), port)?,
        None if top_level => {
            return Err(bad(format!("{field}.port"), "a port is required"));
        }
        None => {}
    }
    if let Some(kind) = c.kind.as_deref().filter(|k| !k.is_empty()) {
        if !top_level {
            return Err(bad(format!("{field}.kind"), "service checks take no kind"));
        }
        if kind != "informational" && kind != "readiness" {
            return Err(bad(
                format!("{field}.kind"),
                format!("invalid kind {kind:?}: must be informational or readiness"),
            ));
        }
    }
    for (name, d) in [("interval", c.interval), ("timeout", c.timeout)] {
        if d.is_some_and(|d| d.as_duration().is_zero()) {
            return Err(bad(format!("{field}.{name}"), "must be greater than zero"));
        }
    }
    if let Some(path) = c.path.as_deref().filter(|p| !p.is_empty()) {
        if !path.starts_with('/') {
            return Err(bad(
                format!("{field}.path"),
                "an http check path must start with /",
            ));
        }
    }
    if let Some(proto) = c.protocol.as_deref().filter(|p| !p.is_empty()) {
        if proto != "http" && proto != "https" {
            return Err(bad(
                format!("{field}.protocol"),
                format!("invalid protocol {proto:?}: must be http or https"),
            ));
        }
    }
    if let Some(method) = c.method.as_deref() {
        check_method(&format!("{field}.method"), method)?;
    }
    Ok(())
}

fn check_method(field: &str, method: &str) -> Result {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad(field, format!("invalid http method {method:?}")));
    }
    Ok(())
}

/// Container and volume names become directory names on the host: letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit (so never `.`, `..` or a hidden name), at most 63.
pub fn is_dir_safe_name(name: &str) -> bool {
    name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_volumes(config: &MachineConfig) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for (i, v) in config.volumes.iter().flatten().enumerate() {
        let field = format!("config.volumes[{i}]");
        if v.name.is_empty() {
            return Err(bad(format!("{field}.name"), "a volume name is required"));
        }
        if !is_dir_safe_name(&v.name) {
            return Err(bad(
                format!("{field}.name"),
                format!(
                    "volume name {:?} may only use letters, digits, '-', '_' and '.', \
                     and must start with a letter or digit",
                    v.name
                ),
            ));
        }
        if !names.insert(v.name.clone()) {
            return Err(bad(
                format!("{field}.name"),
                format!("duplicate volume name {:?}", v.name),
            ));
        }
        if let Some(t) = &v.temp_dir {
            if let Some(st) = t.storage_type.as_deref().filter(|s| !s.is_empty()) {
                if st != "disk" && st != "memory" {
                    return Err(bad(
                        format!("{field}.temp_dir.storage_type"),
                        format!("invalid storage_type {st:?}: must be disk or memory"),
                    ));
                }
            }
            if t.size_mb.is_some_and(|s| s > 1 << 20) {
                return Err(bad(
                    format!("{field}.temp_dir.size_mb"),
                    "must be at most 1048576 (1 TiB)",
                ));
            }
            if t.size_mb.is_some_and(|s| s < 0) {
                return Err(bad(
                    format!("{field}.temp_dir.size_mb"),
                    "must not be negative",
                ));
            }
        }
    }
    Ok(names)
}

pub const CONDITIONS: &[&str] = &["started", "healthy", "exited_successfully"];

fn check_containers(containers: &[ContainerConfig], volumes: &BTreeSet<String>) -> Result {
    let mut names = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let field = format!("config.containers[{i}]");
        if c.name.is_empty() {
            return Err(bad(format!("{field}.name"), "a container name is required"));
        }
        if !is_dir_safe_name(&c.name) {
            return Err(bad(
                format!("{field}.name"),
                format!(
                    "container name {:?} may only use letters, digits, '-', '_' and '.', \
                     and must start with a letter or digit",
                    c.name
                ),
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err(bad(
                format!("{field}.name"),
                format!("duplicate container name {:?}", c.name),
            ));
        }
    }
    let by_name: BTreeMap<&str, &ContainerConfig> =
        containers.iter().map(|c| (c.name.as_str(), c)).collect();
    for c in containers {
        let field = format!("config.containers[{}]", c.name);
        if c.image.trim().is_empty() {
            return Err(bad(format!("{field}.image"), "an image is required"));
        }
        check_image(&format!("{field}.image"), &c.image)?;
        check_argv(&format!("{field}.exec"), c.exec.as_ref())?;
        check_argv(&format!("{field}.entrypoint"), c.entrypoint.as_ref())?;
        check_argv(&format!("{field}.cmd"), c.cmd.as_ref())?;
        check_env(&format!("{field}.env"), c.env.as_ref())?;
        check_env_from(&format!("{field}.env_from"), c.env_from.as_ref())?;
        check_secrets(&format!("{field}.secrets"), c.secrets.as_ref())?;
        if let Some(files) = &c.files {
            check_files(&format!("{field}.files"), files)?;
        }
        if let Some(restart) = &c.restart {
            check_restart(&format!("{field}.restart"), restart)?;
        }
        if let Some(stop) = &c.stop {
            check_stop(&format!("{field}.stop"), stop)?;
        }
        let mut hc_names = BTreeSet::new();
        for (i, hc) in c.healthchecks.iter().flatten().enumerate() {
            let hf = format!("{field}.healthchecks[{i}]");
            if let Some(name) = &hc.name {
                if !hc_names.insert(name.as_str()) {
                    return Err(bad(
                        format!("{hf}.name"),
                        format!("duplicate health check name {name:?}"),
                    ));
                }
            }
            check_healthcheck(&hf, hc)?;
        }
        for (i, dep) in c.depends_on.iter().flatten().enumerate() {
            let df = format!("{field}.depends_on[{i}]");
            let Some(target) = by_name.get(dep.name.as_str()) else {
                return Err(bad(
                    format!("{df}.name"),
                    format!(
                        "container {:?} depends on unknown container {:?}",
                        c.name, dep.name
                    ),
                ));
            };
            if dep.name == c.name {
                return Err(bad(
                    format!("{df}.name"),
                    format!("container {:?} depends on itself", c.name),
                ));
            }
            if !CONDITIONS.contains(&dep.condition.as_str()) {
                return Err(bad(
                    format!("{df}.condition"),
                    format!(
                        "invalid condition {:?}: must be started, healthy or exited_successfully",
                        dep.condition
                    ),
                ));
            }
            if dep.condition == "healthy"
                && target.healthchecks.as_ref().is_none_or(|h| h.is_empty())
            {
                return Err(bad(
                    format!("{df}.condition"),
                    format!(
                        "container {:?} waits for {:?} to be healthy, but {:?} has no healthchecks",
                        c.name, dep.name, dep.name
                    ),
                ));
            }
        }
        let mut paths = BTreeSet::new();
        for (i, m) in c.mounts.iter().flatten().enumerate() {
            let mf = format!("{field}.mounts[{i}]");
            if !volumes.contains(&m.name) {
                return Err(bad(
                    format!("{mf}.name"),
                    format!(
                        "container {:?} mounts unknown volume {:?} (not in config.volumes)",
                        c.name, m.name
                    ),
                ));
            }
            check_abs_path(&format!("{mf}.path"), &m.path)?;
            if !paths.insert(m.path.as_str()) {
                return Err(bad(
                    format!("{mf}.path"),
                    format!("{} is mounted twice", m.path),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(containers) {
        return Err(bad(
            "config.containers",
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(())
}

fn check_healthcheck(field: &str, hc: &ContainerHealthcheck) -> Result {
    let kinds = [hc.tcp.is_some(), hc.http.is_some(), hc.exec.is_some()]
        .iter()
        .filter(|k| **k)
        .count();
    if kinds != 1 {
        return Err(bad(
            field,
            format!("a health check needs exactly one of tcp, http or exec (got {kinds})"),
        ));
    }
    if let Some(tcp) = &hc.tcp {
        check_port(&format!("{field}.tcp.port"), tcp.port)?;
    }
    if let Some(http) = &hc.http {
        check_port(&format!("{field}.http.port"), http.port)?;
        if let Some(scheme) = http.scheme.as_deref().filter(|s| !s.is_empty()) {
            if scheme != "http" && scheme != "https" {
                return Err(bad(
                    format!("{field}.http.scheme"),
                    format!("invalid scheme {scheme:?}: must be http or https"),
                ));
            }
        }
        if let Some(path) = http.path.as_deref().filter(|p| !p.is_empty()) {
            if !path.starts_with('/') {
                return Err(bad(format!("{field}.http.path"), "must start with /"));
            }
        }
        if let Some(method) = http.method.as_deref() {
            check_method(&format!("{field}.http.method"), method)?;
        }
    }
    if let Some(exec) = &hc.exec {
        if exec.command.is_empty() {
            return Err(bad(format!("{field}.exec.command"), "must not be empty"));
        }
    }
    for (name, v) in [
        ("interval", hc.interval),
        ("timeout", hc.timeout),
        ("success_threshold", hc.success_threshold),
        ("failure_threshold", hc.failure_threshold),
    ] {
        if v.is_some_and(|v| v <= 0) {
            return Err(bad(format!("{field}.{name}"), "must be greater than zero"));
        }
    }
    if hc.grace_period.is_some_and(|v| v < 0) {
        return Err(bad(format!("{field}.grace_period"), "must not be negative"));
    }
    // Seconds; a day is far beyond any sensible probe period and keeps the arithmetic small.
    for (name, v) in [
        ("interval", hc.interval),
        ("timeout", hc.timeout),
        ("grace_period", hc.grace_period),
    ] {
        if v.is_some_and(|v| v > 86_400) {
            return Err(bad(
                format!("{field}.{name}"),
                "must be at most 86400 seconds (24h)",
            ));
        }
    }
    for (name, v) in [
        ("success_threshold", hc.success_threshold),
        ("failure_threshold", hc.failure_threshold),
    ] {
        if v.is_some_and(|v| v > 1_000_000) {
            return Err(bad(format!("{field}.{name}"), "must be at most 1000000"));
        }
    }
    if let Some(kind) = hc.kind.as_deref().filter(|k| !k.is_empty()) {
        if kind != "readiness" && kind != "liveness" {
            return Err(bad(
                format!("{field}.kind"),
                format!("invalid kind {kind:?}: must be readiness or liveness"),
            ));
        }
    }
    if let Some(policy) = hc.unhealthy.as_deref().filter(|k| !k.is_empty()) {
        if policy != "stop" {
            return Err(bad(
                format!("{field}.unhealthy"),
                format!("invalid unhealthy policy {policy:?}: must be stop"),
            ));
        }
    }
    Ok(())
}

/// Depth-first search for a dependency cycle; returns it as `a -> b -> a`.
fn find_cycle(containers: &[ContainerConfig]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let index: BTreeMap<&str, usize> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut marks = vec![Mark::New; containers.len()];
    let mut stack: Vec<usize> = Vec::new();

    fn visit(
        i: usize,
        containers: &[ContainerConfig],
        index: &BTreeMap<&str, usize>,
        marks: &mut Vec<Mark>,
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[i] = Mark::Active;
        stack.push(i);
        for dep in containers[i].depends_on.iter().flatten() {
            let Some(&j) = index.get(dep.name.as_str()) else {
                continue;
            };
            match marks[j] {
                Mark::Active => {
                    let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..]
                        .iter()
                        .map(|&k| containers[k].name.clone())
                        .collect();
                    cycle.push(containers[j].name.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(j, containers, index, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        None
    }

    for i in 0..containers.len() {
        if marks[i] == Mark::New {
            if let Some(c) = visit(i, containers, &index, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}
