//! Async HTTP client for the Hangar daemon (the Fly Machines API v1).
//!
//! ```no_run
//! # async fn demo() -> Result<(), hangar_client::ClientError> {
//! let client = hangar_client::Client::from_env()?;
//! let apps = client.list_apps("personal").await?;
//! let raw = client.get("/v1/apps/nope").send_raw().await?; // any status, exact body
//! # let _ = (apps, raw); Ok(()) }
//! ```
//!
//! The endpoint comes from `HANGAR_API_URL` (`unix:///path.sock` or `http://host:port`, default
//! the unix socket [`DEFAULT_SOCKET`]); the token from `HANGAR_API_TOKEN` or
//! `$HANGAR_DATA_DIR/token` (default `/var/lib/hangar/token`).

mod api;
mod client;
mod console;
mod endpoint;
mod error;
mod token;

pub use api::{ListMachinesOptions, RestartOptions, WaitOptions};
pub use client::{encode, Auth, Client, RawResponse, RequestBuilder};
pub use console::{ConsoleFrame, ConsoleOptions, ConsoleStream, CONSOLE_PROTOCOL};
pub use endpoint::{Endpoint, API_URL_ENV, DEFAULT_SOCKET};
pub use error::ClientError;
pub use token::{
    data_dir, read_token, resolve_token, token_path, API_TOKEN_ENV, DATA_DIR_ENV, DEFAULT_DATA_DIR,
    TOKEN_FILE,
};

/// Re-exported so users need no direct hyper dependency.
pub use hyper::body::Bytes;
pub use hyper::{HeaderMap, Method, StatusCode};
