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

/// Base64 as Fly's API (Go's `base64.StdEncoding`) reads it: padded standard alphabet, and a
/// last character's unused low bits need not be zero (`QQ==` and `QR==` both decode to `A`).
/// A file's `raw_value` or a file secret a Go client accepted is accepted here too.
pub const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Header that proves the caller holds a machine's lease.
pub const LEASE_NONCE_HEADER: &str = "fly-machine-lease-nonce";
/// Correlation id on every response.
pub const REQUEST_ID_HEADER: &str = "fly-request-id";

/// Parses a JSON body, naming the field on error (`config.guest.cpus: invalid type …`).
///
/// A whole number written with a fraction (`32.0`, as some JSON encoders write every number)
/// is an integer in JSON Schema, and so in the served schema: a body refused only for that is
/// read again with such numbers as integers.
pub fn from_json_slice<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let describe = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid request body at {path}: {inner}")
        }
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    let first = match serde_path_to_error::deserialize(de) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if !first.inner().to_string().contains("floating point") {
        return Err(describe(first));
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(describe(first));
    };
    if !whole_floats_to_integers(&mut value) {
        return Err(describe(first));
    }
    serde_path_to_error::deserialize(value).map_err(describe)
}

/// Rewrites every float with no fractional part (within i64/u64) as an integer; true if any.
fn whole_floats_to_integers(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return false };
            if f.fract() != 0.0 || !f.is_finite() {
                return false;
            }
            let whole = if f >= 0.0 && f <= u64::MAX as f64 {
                serde_json::Number::from(f as u64)
            } else if f < 0.0 && f >= i64::MIN as f64 {
                serde_json::Number::from(f as i64)
            } else {
                return false;
            };
            *n = whole;
            true
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, i| whole_floats_to_integers(i) | any),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |any, i| whole_floats_to_integers(i) | any),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_written_as_floats_are_integers() {
        let r: crate::SetMemoryLimitRequest = from_json_slice(br#"{"limit_mb": 512.0}"#).unwrap();
        assert_eq!(r.limit_mb, 512);
        let e =
            from_json_slice::<crate::SetMemoryLimitRequest>(br#"{"limit_mb": 512.5}"#).unwrap_err();
        assert!(e.contains("limit_mb"), "{e}");
        let e =
            from_json_slice::<crate::SetMemoryLimitRequest>(br#"{"limit_mb": "x"}"#).unwrap_err();
        assert!(e.contains("limit_mb"), "{e}");
    }
}
