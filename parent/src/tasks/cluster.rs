//! The task that keeps the broker's cluster view in the [`App`]: management
//! is read every [`EVERY`] ([`crate::cluster::observe`]), and `status`, the
//! console and `/metrics` show the last view without waiting on it.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::app::App;
use crate::cluster::observe;
use crate::shutdown::Shutdown;

/// How often the view is read again.
pub const EVERY: Duration = Duration::from_secs(10);

/// Reads the view every [`EVERY`] into `app` until shutdown (only with
/// `--management`). A failure is logged once until the next success; the
/// last view stays, with its time.
pub async fn watch(app: Arc<App>, mut shutdown: Shutdown) {
    let Some(management) = app.config.management.clone() else {
        return;
    };
    let vhost = Some(app.config.vhost());
    let mut failing = false;
    loop {
        match observe(&management, vhost.as_deref()).await {
            Ok(view) => {
                failing = false;
                *app.cluster.write().unwrap_or_else(|p| p.into_inner()) = Some(view);
            }
            Err(why) if !failing => {
                failing = true;
                warn!(error = %why, "cannot read the broker's nodes from management");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
