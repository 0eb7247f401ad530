//! Request parsing with Fly-shaped errors: JSON bodies name the bad field, query strings keep
//! repeated keys (`state=a&state=b`) and `metadata.KEY=VALUE` filters.

use axum::http::HeaderMap;
use hangar_api::LEASE_NONCE_HEADER;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// The largest request body: larger than axum's 2 MiB default, as configs may carry files as
/// base64.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Parses a required JSON body.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON request body is required"));
    }
    hangar_api::from_json_slice(body).map_err(ApiError::bad_request)
}

/// Parses an optional JSON body; an empty body (or `null`) is the default value.
pub fn optional_json_body<T: DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(T::default());
    }
    hangar_api::from_json_slice(body).map_err(ApiError::bad_request)
}

/// The query string as ordered key/value pairs.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Query(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|k| (k, v.as_str())))
    }

    /// `true`/`false`/`1`/`0`; absent or empty is `default`.
    pub fn bool(&self, key: &str, default: bool) -> ApiResult<bool> {
        match self.get(key) {
            None | Some("") => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid value {v:?} for query parameter {key} (expected true or false)"
                ))
            }),
        }
    }

    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value {v:?} for query parameter {key} (expected an integer)"
                ))
            }),
        }
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Some(true),
        "false" | "0" | "f" | "no" => Some(false),
        _ => None,
    }
}

/// The lease nonce the caller sent, if any.
pub fn lease_nonce(headers: &HeaderMap) -> Option<String> {
    headers
        .get(LEASE_NONCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// axum's `Path` with Fly's error body: a path that does not decode (bad percent-encoding,
/// invalid UTF-8) is a 400 `{"error": …}` rather than axum's plain-text rejection.
pub struct Path<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid path: {}",
                e.body_text()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_query_repeats_and_prefix() {
        let q = Query::parse(Some(
            "state=started&state=stopped,created&metadata.role=db&force=1",
        ));
        assert_eq!(
            q.all("state").collect::<Vec<_>>(),
            ["started", "stopped,created"]
        );
        assert_eq!(
            q.with_prefix("metadata.").collect::<Vec<_>>(),
            [("role", "db")]
        );
        assert!(q.bool("force", false).unwrap());
        assert!(Query::parse(Some("force=maybe"))
            .bool("force", false)
            .is_err());
    }
}
