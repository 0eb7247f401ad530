//! The HTTP/1.1 upgrades the API serves (the console, the backhaul): what a request must ask
//! for, and the answer that switches protocols.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ApiResult};

/// A 426 unless `req` asks to upgrade to `protocol` (`Connection: Upgrade`,
/// `Upgrade: protocol`).
pub fn require(req: &Request, protocol: &str) -> ApiResult<()> {
    let has = |name: header::HeaderName, want: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
        })
    };
    if has(header::CONNECTION, "upgrade") && has(header::UPGRADE, protocol) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        format!("this endpoint needs Connection: Upgrade and Upgrade: {protocol}"),
    ))
}

/// The 101 that switches the connection to `protocol`.
pub fn switching(protocol: &'static str) -> Response {
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    res.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(protocol));
    res
}
