//! What can go wrong in the machine service, as the domain sees it. The HTTP layer maps each
//! kind to a status and Fly's error body in one place (`crate::error`); nothing here knows HTTP.

use hangar_store::{ErrorClass, StoreError};

use crate::runtime::RuntimeError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is wrong (a field, a value): fixing it is the caller's part.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The machine (or app) is not in a state that allows the action.
    #[error("failed_precondition: {0}")]
    Precondition(String),
    /// Another request changed the thing first, or holds it (a lease).
    #[error("{0}")]
    Conflict(String),
    /// A name (app, machine) already in use.
    #[error("{0}")]
    NameTaken(String),
    /// The host cannot hold the machine (Fly's `insufficient_capacity`).
    #[error("{0}")]
    Capacity(String),
    /// The machine could not start (its workload, its image).
    #[error("{0}")]
    StartFailed(String),
    /// `wait` ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// The store cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    /// The host's disk ran out while making what was asked (a volume).
    #[error("{0}")]
    InsufficientStorage(String),
    /// What was asked would not fit the host's disk (refused before anything is made).
    #[error("{0}")]
    DiskAdmission(String),
    /// The caller may not do this (read secret values on a daemon that keeps them write-only).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::Invalid(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub fn machine_not_found() -> Self {
        Self::NotFound("machine not found".into())
    }
    pub fn app_not_found(app: &str) -> Self {
        Self::NotFound(format!("app {app:?} not found"))
    }
    pub fn precondition(m: impl Into<String>) -> Self {
        Self::Precondition(m.into())
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::Conflict(m.into())
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::Internal(m.into())
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AppNameTaken(name) => {
                Self::NameTaken(format!("app name {name:?} is already taken"))
            }
            StoreError::MachineNameTaken(name) => {
                Self::NameTaken(format!("a machine named {name:?} already exists for app"))
            }
            StoreError::VolumeAttached { .. } => Self::Conflict(e.to_string()),
            StoreError::LeaseHeld { owner, expires_at } => Self::Conflict(format!(
                "lease currently held by {owner}, expires at {}",
                crate::clock::rfc3339_secs(expires_at)
            )),
            other => match other.class() {
                ErrorClass::Conflict => Self::Conflict(format!("{other}; read it again and retry")),
                ErrorClass::NotFound => Self::NotFound(other.to_string()),
                ErrorClass::Unavailable => Self::Unavailable(other.to_string()),
                ErrorClass::Internal => {
                    tracing::error!(error = %other, "store failure");
                    Self::Internal(format!("internal error: {other}"))
                }
            },
        }
    }
}

impl From<RuntimeError> for ServiceError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NotConfigured => Self::Precondition(e.to_string()),
            RuntimeError::Unsupported(_) | RuntimeError::Image(_) => Self::Invalid(e.to_string()),
            RuntimeError::Failed(_) => Self::Internal(e.to_string()),
            RuntimeError::StartFailed(_) => Self::StartFailed(e.to_string()),
            RuntimeError::NoSuchContainer(m) => Self::NotFound(m),
            RuntimeError::NotRunning(m) => Self::Precondition(m),
        }
    }
}
