//! fleetls-bus: what the parent and the child both run.
//!
//! One implementation of each piece the two binaries share, so that they
//! cannot drift apart: connecting to RabbitMQ (plain and AMQPS, every error
//! reported), declaring the design's topology, publishing with confirms and
//! dead-lettering ([`amqp`]), signing and checking envelopes ([`seal`]), the
//! reconnect delay ([`backoff`]), files written whole with their mode set at
//! creation ([`files`]), and the SIGINT/SIGTERM signal ([`shutdown`]).
//!
//! The wire format itself lives in `fleetls-proto`, which has no runtime;
//! this crate is the I/O above it.

#![deny(missing_docs)]

pub mod amqp;
pub mod files;
pub mod seal;
pub mod shutdown;

use std::time::Duration;

/// The delay before reconnect attempt `attempt` (0-based): exponential from
/// 200 ms to 10 s, with full jitter so a fleet does not come back in step.
pub fn backoff(attempt: u32) -> Duration {
    let cap_ms = (200u64 << attempt.min(6)).min(10_000);
    Duration::from_millis(cap_ms / 2 + rand::random_range(0..=cap_ms / 2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_and_stays_capped() {
        for attempt in 0..40 {
            let d = super::backoff(attempt).as_millis() as u64;
            let cap = (200u64 << attempt.min(6)).min(10_000);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d} ms");
        }
    }
}
