//! SIGINT and SIGTERM, turned into one watch channel every task can await.

use tokio::sync::watch;

/// A signal that the process should stop; clone it into every task.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side: [`Trigger::fire`] asks every [`Shutdown`] to stop.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A connected pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Asks every receiver to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Resolves once a stop was asked for (or the trigger was dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

/// A [`Shutdown`] that fires on the first SIGINT or SIGTERM.
pub fn on_signals() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop asked for, shutting down");
        trigger.fire();
    });
    shutdown
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
