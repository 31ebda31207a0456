//! Why an operator's operation was not done: the one error of everything
//! the admin API runs on the parent (the operations of `ops`, `ca rotate`,
//! the export). `api_error` maps each kind to an HTTP status.

/// Why an operation was not done.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is malformed or a value is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// The operation is not allowed in the current state (409).
    #[error("{0}")]
    Refused(String),
    /// The broker is not reachable right now (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside the parent (500).
    #[error("{0}")]
    Internal(String),
}

/// Something failed inside the parent: an [`OpError::Internal`] carrying
/// its message.
pub(crate) fn internal(e: impl std::fmt::Display) -> OpError {
    OpError::Internal(e.to_string())
}
