//! The admin API's error answer: a status code and `{"error": "..."}`,
//! shared by the API and the console's pages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::op_error::OpError;

/// An error answer: a status code and a JSON `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with a code and a message for the operator.
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// A 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let code = match &e {
            OpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OpError::Refused(_) => StatusCode::CONFLICT,
            OpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(code, e.to_string())
    }
}
