//! API errors: an HTTP status plus Fly's `{"error": "...", "status": "..."}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::ErrorResponse;
use hangar_store::StoreError;

use crate::runtime::RuntimeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Fly's `status` field (`name_taken`, …).
    pub code: Option<&'static str>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// The machine is not in a state that allows the action (Fly answers 412 with
    /// `failed_precondition: …`).
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            format!("failed_precondition: {}", message.into()),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized: a valid token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn machine_not_found() -> Self {
        Self::not_found("machine not found")
    }

    pub fn app_not_found(app: &str) -> Self {
        Self::not_found(format!("app {app:?} not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AppNameTaken(name) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("app name {name:?} is already taken"),
            )
            .with_code("name_taken"),
            StoreError::MachineNameTaken(name) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("a machine named {name:?} already exists for app"),
            )
            .with_code("name_taken"),
            StoreError::LeaseHeld { owner, expires_at } => Self::conflict(format!(
                "lease currently held by {owner}, expires at {}",
                crate::clock::rfc3339_secs(expires_at)
            )),
            other => match other.class() {
                hangar_store::ErrorClass::Conflict => {
                    Self::conflict(format!("{other}; read it again and retry"))
                }
                hangar_store::ErrorClass::NotFound => Self::not_found(other.to_string()),
                hangar_store::ErrorClass::Unavailable => {
                    Self::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string())
                }
                hangar_store::ErrorClass::Internal => {
                    tracing::error!(error = %other, "store failure");
                    Self::internal(format!("internal error: {other}"))
                }
            },
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NotConfigured => Self::precondition(e.to_string()),
            RuntimeError::Unsupported(_) => Self::bad_request(e.to_string()),
            RuntimeError::Failed(_) => Self::internal(e.to_string()),
            RuntimeError::Image(_) => Self::bad_request(e.to_string()),
            RuntimeError::StartFailed(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: self.message,
            status: self.code.map(str::to_string),
        };
        (self.status, Json(body)).into_response()
    }
}
