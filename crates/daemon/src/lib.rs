//! The Hangar daemon: serves the Fly Machines API over a unix socket (and optionally TCP),
//! drives each machine's state machine and keeps everything in the store.

use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/hangar";
pub const DEFAULT_SOCKET: &str = "/run/hangar/api.sock";
/// Name of the admin token file inside the data dir (mode 0600).
pub const TOKEN_FILE: &str = "token";

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let _ = opts;
    anyhow::bail!("daemon not implemented yet")
}
