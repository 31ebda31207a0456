//! The admin API on loopback: JSON over HTTP, every request carrying the
//! bearer token from `DIR/admin.token`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::service::App;
use crate::shutdown::Shutdown;

/// Builds the admin router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token))
        .with_state(app)
}

/// Serves the admin API on a bound listener until `shutdown` fires.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), app.token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token: send Authorization: Bearer <the content of DIR/admin.token>",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(app): State<Arc<App>>) -> Result<Json<crate::status::Status>, ApiError> {
    let app2 = app.clone();
    let status = tokio::task::spawn_blocking(move || app2.status())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(status))
}

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
