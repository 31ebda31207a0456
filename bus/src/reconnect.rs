//! The one reconnect loop of fleetls: run a broker session, and when it
//! ends for any reason but a stop, open another — at once after a planned
//! end, after the backoff delay (growing while the broker stays out of
//! reach) otherwise — until shutdown.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

use crate::shutdown::Shutdown;

/// How one session ended.
#[derive(Debug)]
pub enum Ended {
    /// Asked to stop: the loop ends.
    Stopped,
    /// A planned end (a move, a renewed certificate): open the next at once.
    Again,
    /// It was up and broke: open the next after a short delay.
    Broke(String),
    /// It never came up: wait longer each time.
    Unreachable(String),
}

/// Runs `session` until it says [`Ended::Stopped`] or `shutdown` fires; the
/// delay between two is [`crate::backoff`], at least `min_delay`. `what`
/// names the loop in the logs. Each session watches `shutdown` itself, so
/// that it can close what it holds.
pub async fn run<F, Fut>(what: &str, min_delay: Duration, mut shutdown: Shutdown, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Ended>,
{
    let mut attempt = 0u32;
    while !shutdown.is_set() {
        match session().await {
            Ended::Stopped => break,
            Ended::Again => {
                attempt = 0;
                continue;
            }
            Ended::Broke(error) => {
                attempt = 0;
                warn!(what, error = %error, "broker session ended; reconnecting");
            }
            Ended::Unreachable(error) => {
                warn!(what, error = %error, attempt, "cannot reach the broker; retrying");
            }
        }
        let delay = crate::backoff(attempt).max(min_delay);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn it_reconnects_until_a_session_stops() {
        let (_trigger, shutdown) = crate::shutdown::channel();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        run("test", Duration::ZERO, shutdown, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Ended::Unreachable("no broker".into()),
                    1 => Ended::Again,
                    2 => Ended::Broke("lost".into()),
                    _ => Ended::Stopped,
                }
            }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let (trigger, shutdown) = crate::shutdown::channel();
        trigger.fire();
        run("test", Duration::from_secs(3600), shutdown, || async {
            Ended::Unreachable("never".into())
        })
        .await;
    }
}
