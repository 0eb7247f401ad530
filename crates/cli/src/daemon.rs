//! `hangar daemon`: runs the API server in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tracing_subscriber::EnvFilter;

#[derive(Args, Debug, Clone, PartialEq)]
#[command(after_help = "Examples:\n  \
    sudo hangar daemon\n  \
    hangar daemon --data-dir ./data --socket ./api.sock --listen 127.0.0.1:4280\n\n\
    Logging follows RUST_LOG (default: info).")]
pub struct DaemonArgs {
    /// Directory for the database, images, machine state and the API token
    #[arg(long, value_name = "DIR", env = "HANGAR_DATA_DIR", default_value = hangar_daemon::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Unix socket to serve the API on
    #[arg(long, value_name = "PATH", default_value = hangar_daemon::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also serve the API over TCP on this address (e.g. 127.0.0.1:4280)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Pull from this registry over plain HTTP (repeatable; loopback registries already are)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// How long a destroyed machine's logs stay readable with `hangar logs` (Go duration, e.g. 24h, 30m; 0 keeps none)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_retention)]
    pub log_retention: std::time::Duration,
    /// Machines may reserve this many times the host's CPUs (shared CPUs sit idle mostly)
    #[arg(long, value_name = "RATIO", default_value_t = hangar_daemon::DEFAULT_CPU_OVERCOMMIT, value_parser = parse_ratio)]
    pub cpu_overcommit: f64,
    /// Machines may reserve this many times the host's memory
    #[arg(long, value_name = "RATIO", default_value_t = hangar_daemon::DEFAULT_MEMORY_OVERCOMMIT, value_parser = parse_ratio)]
    pub memory_overcommit: f64,
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
    // try_init: a subscriber may already be installed when embedded (tests); that one wins.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(hangar_daemon::run(hangar_daemon::DaemonOptions {
        data_dir: args.data_dir,
        socket: args.socket,
        listen: args.listen,
        insecure_registries: args.insecure_registries,
        log_retention: args.log_retention,
        cpu_overcommit: args.cpu_overcommit,
        memory_overcommit: args.memory_overcommit,
    }))
}
