//! The one reconnect loop of fleetls: run a broker session, and when it
//! ends for any reason but a stop, open another — at once after a planned
//! end, after a delay otherwise — until shutdown.
//!
//! The child's delay is [`Backoff`], AWS's "full jitter": a random wait
//! from zero to a ceiling that doubles with each failed attempt, up to a cap
//! (`--reconnect-max`). After a broker restart, a fleet that lost its
//! connections at the same moment comes back spread over the whole ceiling
//! instead of in waves. The parent's loop ([`run`]) keeps
//! [`crate::backoff`].

use std::future::Future;
use std::time::{Duration, Instant};

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

/// Full-jitter reconnect delays: before attempt `n` (0 after a session that
/// stayed up), a random wait in `[0, min(cap, BASE × 2ⁿ)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The largest ceiling: no wait is longer.
    cap: Duration,
}

impl Backoff {
    /// The ceiling of the first attempt; it doubles with each failure.
    pub const BASE: Duration = Duration::from_secs(1);
    /// The cap when none is given (`--reconnect-max 60`).
    pub const DEFAULT_CAP: Duration = Duration::from_secs(60);
    /// How long a session must have run to count as one that stayed up:
    /// when it breaks after that, the next wait starts again from
    /// [`Backoff::BASE`]. One that breaks sooner (a broker that takes
    /// connections and drops them) keeps growing the wait.
    pub const STABLE: Duration = Duration::from_secs(30);

    /// Delays capped at `cap` (at least [`Backoff::BASE`]).
    pub fn new(cap: Duration) -> Backoff {
        Backoff {
            cap: cap.max(Backoff::BASE),
        }
    }

    /// The cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The ceiling of attempt `attempt` (0-based): `min(cap, BASE × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        Backoff::BASE
            .checked_mul(factor)
            .map_or(self.cap, |ceiling| ceiling.min(self.cap))
    }

    /// The wait before attempt `attempt`: uniformly random in
    /// `[0, ceiling(attempt)]`, to the millisecond.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=ceiling))
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Backoff::DEFAULT_CAP)
    }
}

/// Runs `session` until it says [`Ended::Stopped`] or `shutdown` fires; the
/// delay between two is [`crate::backoff`], at least `min_delay`, and a
/// session that broke starts the delays over. `what` names the loop in the
/// logs. Each session watches `shutdown` itself, so that it can close what
/// it holds.
pub async fn run<F, Fut>(what: &str, min_delay: Duration, shutdown: Shutdown, session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Ended>,
{
    let delay = |attempt| crate::backoff(attempt).max(min_delay);
    run_loop(what, delay, Duration::ZERO, shutdown, session).await
}

/// Like [`run`], with the full-jitter delays of `backoff`; the delays start
/// over only after a session that ran at least [`Backoff::STABLE`].
pub async fn run_with<F, Fut>(what: &str, backoff: Backoff, shutdown: Shutdown, session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Ended>,
{
    let delay = |attempt| backoff.delay(attempt);
    run_loop(what, delay, Backoff::STABLE, shutdown, session).await
}

/// The loop of [`run`] and [`run_with`]: `delay` gives the wait before
/// attempt `n`; a session that broke after running `stable` or longer
/// starts the attempts over.
async fn run_loop<F, Fut>(
    what: &str,
    delay: impl Fn(u32) -> Duration,
    stable: Duration,
    mut shutdown: Shutdown,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Ended>,
{
    let mut attempt = 0u32;
    while !shutdown.is_set() {
        let started = Instant::now();
        let ended = session().await;
        attempt = next_attempt(attempt, &ended, started.elapsed(), stable);
        match ended {
            Ended::Stopped => break,
            Ended::Again => continue,
            Ended::Broke(error) => {
                warn!(what, error = %error, attempt, "broker session ended; reconnecting");
            }
            Ended::Unreachable(error) => {
                warn!(what, error = %error, attempt, "cannot reach the broker; retrying");
            }
        }
        let wait = delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The attempt the next wait is for, after a session that ended as `ended`
/// when it had run `ran`: the count starts over after a planned end and
/// after a session that broke having stayed up at least `stable`; it goes
/// on otherwise.
fn next_attempt(attempt: u32, ended: &Ended, ran: Duration, stable: Duration) -> u32 {
    match ended {
        Ended::Stopped | Ended::Again => 0,
        Ended::Broke(_) if ran >= stable => 0,
        Ended::Broke(_) | Ended::Unreachable(_) => attempt,
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

    #[test]
    fn the_ceiling_doubles_from_one_second_up_to_the_cap() {
        let backoff = Backoff::default();
        let ceilings: Vec<u64> = (0..9).map(|n| backoff.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // No overflow, however many attempts.
        for attempt in [31, 32, 64, 1000, u32::MAX] {
            assert_eq!(backoff.ceiling(attempt), Duration::from_secs(60));
        }
        let small = Backoff::new(Duration::from_secs(5));
        assert_eq!(small.ceiling(2), Duration::from_secs(4));
        assert_eq!(small.ceiling(3), Duration::from_secs(5));
        // A cap below the base is the base.
        assert_eq!(Backoff::new(Duration::ZERO).cap(), Backoff::BASE);
    }

    #[test]
    fn every_delay_lies_between_zero_and_its_ceiling() {
        for cap in [1, 7, 60, 3600] {
            let backoff = Backoff::new(Duration::from_secs(cap));
            for attempt in 0..40 {
                for _ in 0..50 {
                    let delay = backoff.delay(attempt);
                    assert!(
                        delay <= backoff.ceiling(attempt),
                        "cap {cap} s, attempt {attempt}: {delay:?}"
                    );
                    assert!(delay <= Duration::from_secs(cap));
                }
            }
        }
    }

    #[test]
    fn delays_spread_over_the_whole_range() {
        // Full jitter, not "half the ceiling plus jitter": a fleet that lost
        // its broker at once comes back spread from zero to the ceiling.
        // (1,000 draws all in one half: a chance of 2^-999.)
        let backoff = Backoff::default();
        let drawn: Vec<Duration> = (0..1000).map(|_| backoff.delay(20)).collect();
        let half = Duration::from_secs(30);
        assert!(drawn.iter().any(|d| *d < half), "no delay below 30 s");
        assert!(drawn.iter().any(|d| *d > half), "no delay above 30 s");
    }

    #[test]
    fn attempts_start_over_only_after_a_session_that_stayed_up() {
        let stable = Backoff::STABLE;
        let broke = Ended::Broke("lost".into());
        let unreachable = Ended::Unreachable("refused".into());
        let (short, long) = (Duration::from_secs(1), stable + Duration::from_secs(1));
        assert_eq!(next_attempt(5, &broke, long, stable), 0);
        assert_eq!(next_attempt(5, &broke, stable, stable), 0);
        // Taken and dropped at once: the wait keeps growing.
        assert_eq!(next_attempt(5, &broke, short, stable), 5);
        assert_eq!(next_attempt(5, &unreachable, long, stable), 5);
        assert_eq!(next_attempt(5, &Ended::Again, short, stable), 0);
        // The parent's loop (`run`): every broken session starts over.
        assert_eq!(next_attempt(5, &broke, short, Duration::ZERO), 0);
    }
}
