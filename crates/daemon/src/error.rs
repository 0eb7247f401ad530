//! API errors: an HTTP status plus Fly's `{"error": "...", "status": "..."}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::ErrorResponse;
use hangar_store::StoreError;

use crate::runtime::RuntimeError;
use crate::service::ServiceError;

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

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

/// The one place a domain error becomes an HTTP status and Fly's error body.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(_) => Self::bad_request(message),
            ServiceError::NotFound(_) => Self::not_found(message),
            ServiceError::Precondition(_) => Self::new(StatusCode::PRECONDITION_FAILED, message),
            ServiceError::Conflict(_) => Self::conflict(message),
            ServiceError::NameTaken(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, message).with_code("name_taken")
            }
            ServiceError::Capacity(_) => Self::conflict(message).with_code("insufficient_capacity"),
            ServiceError::StartFailed(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, message),
            ServiceError::Timeout(_) => Self::new(StatusCode::REQUEST_TIMEOUT, message),
            ServiceError::Unavailable(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, message),
            ServiceError::DiskAdmission(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, message),
            ServiceError::InsufficientStorage(_) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, message)
            }
            ServiceError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, message),
            ServiceError::Internal(_) => Self::internal(message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ServiceError::from(e).into()
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        ServiceError::from(e).into()
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
