//! `hangar daemon`: runs the API server in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tracing_subscriber::EnvFilter;

#[derive(Args, Debug, Clone, PartialEq)]
#[command(after_help = "Examples:\n  \
    sudo hangar daemon\n  \
    hangar daemon --data-dir ./data --socket ./api.sock --listen 127.0.0.1:4280\n  \
    hangar daemon --config ./hangar.toml\n\n\
    Settings come from the flags, then HANGAR_* variables, then the config file\n\
    (/etc/hangar/hangar.toml when it exists; keys as the flags, with '_' for '-'), then defaults.\n\
    Logging follows RUST_LOG (default: info).")]
pub struct DaemonArgs {
    /// Config file (TOML); an unknown key or a bad value is an error naming it
    #[arg(long, value_name = "FILE", env = "HANGAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the database, images, machine state and the API token [default: /var/lib/hangar]
    #[arg(long, value_name = "DIR", env = "HANGAR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unix socket to serve the API on [default: /run/hangar/api.sock]
    #[arg(long, value_name = "PATH", env = "HANGAR_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Also serve the API over TCP on this address (e.g. 127.0.0.1:4280)
    #[arg(long, value_name = "ADDR:PORT", env = "HANGAR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the state lives: leave it out for the embedded SQLite in the data dir, or give a
    /// postgres:// URL for a store shared by the hosts of a cluster
    #[arg(long = "store", value_name = "URL", env = "HANGAR_STORE")]
    pub store_url: Option<String>,
    /// This host's name among the cluster's hosts [default: the host name]
    #[arg(long, value_name = "NAME", env = "HANGAR_HOST_ID", value_parser = parse_host_id)]
    pub host_id: Option<String>,
    /// This host's region (machines created without one go here) [default: local]
    #[arg(long, value_name = "CODE", env = "HANGAR_REGION", value_parser = parse_region)]
    pub region: Option<String>,
    /// Pull from this registry over plain HTTP (repeatable; loopback registries already are)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Pull images missing from the store (`missing`), or never: machines then run only images
    /// already imported or pulled [default: missing]
    #[arg(long, value_name = "missing|never", env = "HANGAR_PULL", value_parser = ["missing", "never"])]
    pub pull: Option<String>,
    /// How long a destroyed machine's logs stay readable with `hangar logs` (Go duration, e.g. 24h, 30m; 0 keeps none) [default: 24h]
    #[arg(long, value_name = "DURATION", env = "HANGAR_LOG_RETENTION", value_parser = parse_retention)]
    pub log_retention: Option<std::time::Duration>,
    /// Machines may reserve this many times the host's CPUs (shared CPUs sit idle mostly) [default: 4]
    #[arg(long, value_name = "RATIO", env = "HANGAR_CPU_OVERCOMMIT", value_parser = parse_ratio)]
    pub cpu_overcommit: Option<f64>,
    /// Machines may reserve this many times the host's memory [default: 1.5]
    #[arg(long, value_name = "RATIO", env = "HANGAR_MEMORY_OVERCOMMIT", value_parser = parse_ratio)]
    pub memory_overcommit: Option<f64>,
    /// Machine networking: a private 6PN address per machine on a bridge per network, and the
    /// `.internal` resolver at fdaa::3 (`off`: loopback only) [default: on]
    #[arg(long, value_name = "on|off", env = "HANGAR_NETWORK", value_parser = parse_on_off)]
    pub network: Option<bool>,
    /// Let machines open connections beyond this host (masqueraded); never into another network
    #[arg(long, env = "HANGAR_EGRESS")]
    pub egress: bool,
    /// Resolver for names outside `.internal` (repeatable, IP[:PORT]) [default: the host's /etc/resolv.conf]
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]", value_parser = parse_upstream)]
    pub dns_upstreams: Vec<SocketAddr>,
    /// Open every service's edge ports on this address (repeatable; 0.0.0.0 exposes them to the network) [default: 127.0.0.1]
    #[arg(long = "proxy-bind", value_name = "IP")]
    pub proxy_binds: Vec<std::net::IpAddr>,
    /// A host address the proxy may dedicate to one app (IP assignments; repeatable; the address must be the host's)
    #[arg(long = "proxy-ip-pool", value_name = "IP")]
    pub proxy_ip_pool: Vec<std::net::IpAddr>,
    /// HTTP services are also routed by Host: <app>.<domain> [default: localhost]
    #[arg(long, value_name = "DOMAIN", env = "HANGAR_PROXY_DOMAIN")]
    pub proxy_domain: Option<String>,
    /// Idle time after which the proxy stops (or suspends) a machine whose services have autostop (Go duration) [default: 5m]
    #[arg(long, value_name = "DURATION", env = "HANGAR_AUTOSTOP_AFTER", value_parser = parse_autostop_after)]
    pub autostop_after: Option<std::time::Duration>,
    /// PEM certificate chain the proxy's tls handler serves (with --proxy-tls-key) [default: a self-signed one per app]
    #[arg(long, value_name = "FILE", requires = "proxy_tls_key")]
    pub proxy_tls_cert: Option<PathBuf>,
    /// PEM private key of --proxy-tls-cert
    #[arg(long, value_name = "FILE", requires = "proxy_tls_cert")]
    pub proxy_tls_key: Option<PathBuf>,
    /// Close a proxied client connection that sends no request head for this long (Go duration) [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_autostop_after)]
    pub proxy_idle_timeout: Option<std::time::Duration>,
    /// Largest request head the proxy accepts, in bytes (at least 8192); bigger ones get a 431 [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub proxy_max_header_bytes: Option<usize>,
    /// Client connections the proxy holds open at once; past it new ones wait [default: 10000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub proxy_max_connections: Option<u32>,
    /// Threads serving proxied connections, each with its own event loop [default: one per CPU]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub proxy_workers: Option<u32>,
    /// Most sandboxes kept made ahead (namespaces, cgroup, Pilot waiting), so that a start only mounts the machine's image and hands over its config: two while starts are rare, more during bursts; cgroup v1 hosts only; 0 turns it off [default: 8]
    #[arg(long, value_name = "N", env = "HANGAR_WARM_SANDBOXES", value_parser = clap::value_parser!(u32).range(0..=64))]
    pub warm_sandboxes: Option<u32>,
    /// Remount the host's cgroup2 tree with favordynmods: machine starts on pure cgroup v2 hosts skip an RCU grace period (~10 ms), forks and exits host-wide get slightly dearer; lasts until reboot
    #[arg(long, env = "HANGAR_FAVOR_DYNMODS")]
    pub favor_dynmods: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (proxy requests, latency, autostarts, machines by state)
    #[arg(long, value_name = "ADDR:PORT", env = "HANGAR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Group whose members may use the API socket and read the token [default: hangar, when that group exists]
    #[arg(long, value_name = "GROUP", env = "HANGAR_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// Log lines as `text` (for people) or `json` (one object per line, for log shippers) [default: text]
    #[arg(long, value_name = "text|json", env = "HANGAR_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Key file app secrets are sealed with (64 hex characters, mode 0600); must exist when given [default: DATA_DIR/secrets.key, created at first start]
    #[arg(long, value_name = "FILE", env = "HANGAR_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Let `show_secrets=true` return secret values to the admin token (off: values are write-only, as on Fly)
    #[arg(long, env = "HANGAR_SECRETS_READABLE")]
    pub secrets_readable: bool,
}

fn parse_autostop_after(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_retention(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: the idle time must be more than zero"));
    }
    Ok(d)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{s:?} is not an IP address (with an optional port)"))
}

/// A host id: what `hangar hosts list` shows and machines record as theirs.
fn parse_host_id(s: &str) -> std::result::Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a host id (1 to 63 letters, digits, '-', '_' or '.')"
        ))
    }
}

/// A region code, as Fly's (`ams`, `iad`) or any lowercase name.
fn parse_region(s: &str) -> std::result::Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a region code (lowercase letters, digits and '-', at most 32)"
        ))
    }
}

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/hangar/hangar.toml";

/// The config file: every daemon flag, by the flag's name with `_` for `-`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    host_id: Option<String>,
    region: Option<String>,
    socket: Option<PathBuf>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    pull: Option<String>,
    log_retention: Option<String>,
    cpu_overcommit: Option<f64>,
    memory_overcommit: Option<f64>,
    network: Option<bool>,
    egress: Option<bool>,
    dns_upstreams: Option<Vec<String>>,
    proxy_binds: Option<Vec<std::net::IpAddr>>,
    proxy_ip_pool: Option<Vec<std::net::IpAddr>>,
    proxy_domain: Option<String>,
    autostop_after: Option<String>,
    proxy_tls_cert: Option<PathBuf>,
    proxy_tls_key: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    proxy_idle_timeout: Option<String>,
    proxy_max_header_bytes: Option<usize>,
    proxy_max_connections: Option<u32>,
    proxy_workers: Option<u32>,
    favor_dynmods: Option<bool>,
    warm_sandboxes: Option<u32>,
    secrets_key_file: Option<PathBuf>,
    secrets_readable: Option<bool>,
    log_format: Option<String>,
    socket_group: Option<String>,
}

impl ConfigFile {
    /// Reads `path`; a missing file is an error only when it was asked for by name.
    fn load(path: &std::path::Path, explicit: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot read config file {}: {e}",
                    path.display()
                ))
            }
        };
        toml::from_str(&text).map_err(|e| {
            let at = e.span().map_or(String::new(), |s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!(", line {line}")
            });
            anyhow::anyhow!("config file {}{at}: {}", path.display(), e.message().trim())
        })
    }
}

impl DaemonArgs {
    /// `log_format` from the config file (read before logging starts).
    fn config_log_format(&self) -> Result<Option<String>> {
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        Ok(ConfigFile::load(&path, self.config.is_some())?.log_format)
    }

    /// The daemon's options: flags (and HANGAR_* variables) over the config file over defaults.
    pub fn resolve(&self) -> Result<hangar_daemon::DaemonOptions> {
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let file = ConfigFile::load(&path, self.config.is_some())?;
        let in_file =
            |key: &str, e: String| anyhow::anyhow!("config file {}: {key}: {e}", path.display());
        let log_retention = match (&self.log_retention, &file.log_retention) {
            (Some(d), _) => *d,
            (None, Some(s)) => parse_retention(s).map_err(|e| in_file("log_retention", e))?,
            (None, None) => std::time::Duration::from_secs(24 * 3600),
        };
        let ratio =
            |flag: Option<f64>, key: &str, value: Option<f64>, default: f64| match (flag, value) {
                (Some(r), _) => Ok(r),
                (None, Some(r)) => parse_ratio(&r.to_string()).map_err(|e| in_file(key, e)),
                (None, None) => Ok(default),
            };
        let autostop_after = match (&self.autostop_after, &file.autostop_after) {
            (Some(d), _) => *d,
            (None, Some(s)) => parse_autostop_after(s).map_err(|e| in_file("autostop_after", e))?,
            (None, None) => std::time::Duration::from_secs(300),
        };
        let dns_upstreams = if !self.dns_upstreams.is_empty() {
            Some(self.dns_upstreams.clone())
        } else {
            file.dns_upstreams
                .as_ref()
                .map(|list| {
                    list.iter()
                        .map(|u| parse_upstream(u).map_err(|e| in_file("dns_upstreams", e)))
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?
        };
        let mut insecure_registries = file.insecure_registries.clone();
        insecure_registries.extend(self.insecure_registries.iter().cloned());
        let host_id = match (&self.host_id, &file.host_id) {
            (Some(h), _) => Some(h.clone()),
            (None, Some(h)) => Some(parse_host_id(h).map_err(|e| in_file("host_id", e))?),
            (None, None) => None,
        };
        let region = match (&self.region, &file.region) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(r)) => Some(parse_region(r).map_err(|e| in_file("region", e))?),
            (None, None) => None,
        };
        Ok(hangar_daemon::DaemonOptions {
            store_url: self.store_url.clone().or(file.store.clone()),
            host_id,
            region,
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(hangar_daemon::DEFAULT_DATA_DIR)),
            socket: self
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(hangar_daemon::DEFAULT_SOCKET)),
            listen: self.listen.or(file.listen),
            insecure_registries,
            pull: match self.pull.as_deref().or(file.pull.as_deref()) {
                None | Some("missing") => true,
                Some("never") => false,
                Some(other) => {
                    anyhow::bail!("pull: {other:?} is not a pull policy (missing or never)")
                }
            },
            log_retention,
            cpu_overcommit: ratio(
                self.cpu_overcommit,
                "cpu_overcommit",
                file.cpu_overcommit,
                hangar_daemon::DEFAULT_CPU_OVERCOMMIT,
            )?,
            memory_overcommit: ratio(
                self.memory_overcommit,
                "memory_overcommit",
                file.memory_overcommit,
                hangar_daemon::DEFAULT_MEMORY_OVERCOMMIT,
            )?,
            network: self.network.or(file.network).unwrap_or(true),
            egress: self.egress || file.egress.unwrap_or(false),
            dns_upstreams,
            proxy_binds: if self.proxy_binds.is_empty() {
                file.proxy_binds
                    .clone()
                    .unwrap_or_else(|| vec![std::net::Ipv4Addr::LOCALHOST.into()])
            } else {
                self.proxy_binds.clone()
            },
            proxy_domain: self
                .proxy_domain
                .clone()
                .or(file.proxy_domain.clone())
                .unwrap_or_else(|| "localhost".into()),
            autostop_after,
            proxy_ip_pool: if self.proxy_ip_pool.is_empty() {
                file.proxy_ip_pool.clone().unwrap_or_default()
            } else {
                self.proxy_ip_pool.clone()
            },
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            favor_dynmods: self.favor_dynmods || file.favor_dynmods.unwrap_or(false),
            warm_sandboxes: match self.warm_sandboxes.or(file.warm_sandboxes) {
                Some(n) if n > 64 => {
                    anyhow::bail!("warm_sandboxes {n}: at most 64")
                }
                Some(n) => n as usize,
                None => hangar_daemon::DEFAULT_WARM_SANDBOXES,
            },
            secrets_key_file: self
                .secrets_key_file
                .clone()
                .or(file.secrets_key_file.clone()),
            secrets_readable: self.secrets_readable || file.secrets_readable.unwrap_or(false),
            socket_group: self.socket_group.clone().or(file.socket_group.clone()),
            proxy_idle_timeout: match (&self.proxy_idle_timeout, &file.proxy_idle_timeout) {
                (Some(d), _) => *d,
                (None, Some(s)) => {
                    parse_autostop_after(s).map_err(|e| in_file("proxy_idle_timeout", e))?
                }
                (None, None) => hangar_proxy::ProxyConfig::DEFAULT_IDLE_TIMEOUT,
            },
            proxy_max_header_bytes: match self
                .proxy_max_header_bytes
                .or(file.proxy_max_header_bytes)
            {
                Some(n) if n < 8192 => anyhow::bail!(
                    "--proxy-max-header-bytes {n}: at least 8192 (a request head must fit)"
                ),
                Some(n) => n,
                None => hangar_proxy::ProxyConfig::DEFAULT_MAX_HEADER_BYTES,
            },
            proxy_max_connections: self
                .proxy_max_connections
                .or(file.proxy_max_connections)
                .map_or(hangar_proxy::ProxyConfig::DEFAULT_MAX_CONNECTIONS, |n| {
                    n as usize
                }),
            proxy_workers: match self.proxy_workers.or(file.proxy_workers) {
                Some(n) if !(1..=1024).contains(&n) => {
                    anyhow::bail!("proxy_workers {n}: between 1 and 1024")
                }
                Some(n) => n as usize,
                None => 0,
            },
            proxy_tls: match (
                self.proxy_tls_cert.clone().or(file.proxy_tls_cert.clone()),
                self.proxy_tls_key.clone().or(file.proxy_tls_key.clone()),
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => anyhow::bail!(
                    "config file {}: proxy_tls_cert and proxy_tls_key go together",
                    path.display()
                ),
            },
        })
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    hangar_api::duration::parse_go_duration(s).map_err(|e| e.to_string())
}

pub fn run(args: DaemonArgs) -> Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match args.log_format.clone().or(args.config_log_format()?) {
        Some(f) if f == "json" => true,
        Some(f) if f == "text" => false,
        Some(other) => anyhow::bail!("log_format {other:?}: text or json"),
        None => false,
    };
    // try_init: a subscriber may already be installed when embedded (tests); that one wins.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = args.resolve()?;
    // The host is checked as `hangar doctor` does; what machines cannot do without stops the
    // start with the reason (a runtime-less daemon serves the API only and needs none of it).
    if std::env::var("HANGAR_RUNTIME").as_deref() != Ok("none") {
        let failures = crate::doctor::startup_failures(&options.data_dir);
        if !failures.is_empty() {
            anyhow::bail!(
                "this host cannot run machines: {} (`hangar doctor` lists every check; HANGAR_RUNTIME=none serves the API without machines)",
                failures.join("; ")
            );
        }
    }
    runtime.block_on(hangar_daemon::run(options))
}
