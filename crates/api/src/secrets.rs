//! App secrets (reference 1.7): names, digests and versions on the wire; values only when the
//! caller asks for them and may see them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest secret value accepted, in bytes (flyctl reads at most 64 KiB from stdin).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The longest secret name.
pub const MAX_NAME_LEN: usize = 255;
/// How many secrets one app may hold.
pub const MAX_SECRETS_PER_APP: usize = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppSecret {
    pub name: String,
    /// A keyed digest of the value (16 hex characters): equal values, equal digests.
    pub digest: String,
    /// Only with `show_secrets=true`, for a caller allowed to read values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// RFC 3339, with milliseconds.
    pub created_at: String,
    /// RFC 3339, with milliseconds.
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListSecretsResponse {
    pub secrets: Vec<AppSecret>,
}

/// `POST /apps/{app}/secrets`: a `null` value deletes the name (a missing name too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct SetSecretsRequest {
    pub values: BTreeMap<String, Option<String>>,
}

/// The secrets this write set, and the app's new secrets version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetSecretsResponse {
    pub secrets: Vec<AppSecret>,
    pub version: u64,
    /// Deprecated duplicate of `version` that older fly-go reads.
    #[serde(rename = "Version")]
    pub version_deprecated: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetSecretRequest {
    #[schema(max_length = 65536)]
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetSecretResponse {
    #[serde(flatten)]
    pub secret: AppSecret,
    pub version: u64,
    #[serde(rename = "Version")]
    pub version_deprecated: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteSecretResponse {
    pub version: u64,
    #[serde(rename = "Version")]
    pub version_deprecated: u64,
}

/// Why `name` is not a secret name, if it is not: secrets become environment variables, so a
/// name is what a shell accepts as one (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn check_secret_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a secret name cannot be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "secret name is {} characters long (at most {MAX_NAME_LEN})",
            name.len()
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid secret name {name:?}: use letters, digits and underscores, not starting with a digit"
        ));
    }
    Ok(())
}

/// Why `value` cannot be stored, if it cannot: its size, or a NUL byte (values become
/// environment variables, which cannot hold one; binary content goes base64-encoded, as file
/// secrets do). Values travel as JSON strings, so they are UTF-8.
pub fn check_secret_value(name: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!(
            "secret {name} contains a NUL byte, which an environment variable cannot hold \
             (base64-encode binary content)"
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "secret {name} is {} bytes; the limit is {MAX_VALUE_BYTES} bytes",
            value.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_environment_variable_names() {
        for ok in ["A", "_X", "DATABASE_URL", "a1_b2"] {
            assert!(check_secret_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "Ä"] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
        assert!(check_secret_value("A", &"x".repeat(MAX_VALUE_BYTES)).is_ok());
        assert!(check_secret_value("A", &"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(check_secret_value("A", "a\0b").is_err());
    }
}
