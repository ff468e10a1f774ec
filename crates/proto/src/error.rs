//! The one table that maps service error kinds to gRPC status codes.

/// An error a service returns to its caller. Each variant is one gRPC code;
/// messages name the offending field so callers know what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; `field` names the request field at fault.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The named resource does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The resource exists but is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The resource already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// No credentials, or credentials that are not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without the scope the call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// A rate limit was hit; retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Part of the API that a later release implements.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    /// A backend (store, bus) is down or overloaded; retrying may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected backend answer.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Shorthand for [`ServiceError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), message: message.into() }
    }

    /// The gRPC status code for this error kind.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Self::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Self::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Self::Unimplemented(_) => tonic::Code::Unimplemented,
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}
