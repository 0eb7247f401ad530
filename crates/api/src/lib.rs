//! Wire types of the Fly Machines API (v1) as Hangar serves it, with validation and the
//! encoding quirks Fly's clients rely on (Go durations, autostop booleans, signal names).

pub mod app;
pub mod certificates;
pub mod config;
pub mod duration;
pub mod error;
pub mod guest;
pub mod ids;
pub mod ips;
pub mod lifecycle;
pub mod machine;
pub mod secrets;
pub mod signal;
pub mod spec;
pub mod validate;
pub mod volumes;

pub use app::*;
pub use certificates::*;
pub use config::*;
pub use duration::GoDuration;
pub use error::ErrorResponse;
pub use ips::*;
pub use machine::*;
pub use secrets::*;
pub use signal::Signal;
pub use validate::{validate_config, ConfigError};
pub use volumes::*;

/// Header that proves the caller holds a machine's lease.
pub const LEASE_NONCE_HEADER: &str = "fly-machine-lease-nonce";
/// Correlation id on every response.
pub const REQUEST_ID_HEADER: &str = "fly-request-id";

/// Parses a JSON body, naming the field on error (`config.guest.cpus: invalid type …`).
pub fn from_json_slice<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid request body at {path}: {inner}")
        }
    })
}
