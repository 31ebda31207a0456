//! The web console ("SSL configuration" view), served by the admin server.

use std::sync::Arc;

use axum::Router;

use crate::service::App;

/// Routes of the console: the page (open) and the API it needs beyond the
/// common one (behind the token). Merged into the admin router.
pub fn router(app: Arc<App>) -> (Router, Router<Arc<App>>) {
    let _ = app;
    (Router::new(), Router::new())
}
