//! The task that keeps the broker's cluster view in the [`App`]: the
//! nodes' health is read from management every [`NODES_EVERY`], the
//! connections as often as their cost allows ([`connections_wait`]), and
//! `status`, the console and `/metrics` show the last view without waiting
//! on it.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::warn;

use crate::app::App;
use crate::cluster::{
    connections_wait, observed, read_connections, read_nodes, Connections, NODES_EVERY,
};
use crate::shutdown::Shutdown;

/// Reads the view into `app` until shutdown (only with `--management`). A
/// failure is logged once until the next success; the last view stays,
/// with its time.
pub async fn watch(app: Arc<App>, mut shutdown: Shutdown) {
    let Some(management) = app.config.management.clone() else {
        return;
    };
    let vhost = Some(app.config.vhost());
    let mut failing = false;
    let mut connections = Connections::default();
    let mut connections_due = Instant::now();
    loop {
        let read = async {
            let nodes = read_nodes(&management).await?;
            if Instant::now() >= connections_due {
                let started = Instant::now();
                connections = read_connections(&management, vhost.as_deref()).await?;
                connections_due = Instant::now() + connections_wait(started.elapsed());
            }
            Ok::<_, String>(observed(&management, &nodes, &connections))
        };
        match read.await {
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
            _ = tokio::time::sleep(NODES_EVERY) => {}
        }
    }
}
