//! fleetls-bus: what the parent and the child both run.
//!
//! One implementation of each piece the two binaries share, so that they
//! cannot drift apart: connecting to RabbitMQ (plain and AMQPS, every error
//! reported; one node of a cluster's list, [`brokers`]), declaring the
//! design's topology, publishing with confirms and dead-lettering ([`amqp`];
//! its error, [`error::BusError`], below both), signing and checking envelopes
//! ([`seal`]), enrollment tokens and their proofs ([`enroll`]), the
//! reconnect loop and its delays ([`reconnect`], [`backoff`]), files
//! written whole with their mode set at creation ([`files`]), the
//! SIGINT/SIGTERM signal ([`shutdown`]), and the PKCS#12 and JKS stores of
//! `export` and of a child's `--trust-store-format` ([`stores`]).
//!
//! The wire format itself lives in `fleetls-proto`, which has no runtime;
//! this crate is the I/O above it.

#![deny(missing_docs)]

pub mod amqp;
pub mod brokers;
pub mod enroll;
pub mod error;
pub mod files;
pub mod process;
pub mod queue_type;
pub mod reconnect;
pub mod seal;
pub mod shutdown;
pub mod stores;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

/// What is wrong with a program's configuration (flags, `FLEETLS_*`
/// variables, the config file); each names the setting and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("missing setting {0}: give it as a flag, a FLEETLS_* variable or in the config file")]
    Missing(&'static str),
    /// A setting has a value that cannot be used.
    #[error("invalid {name} {value:?}: {why}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and what to do.
        why: String,
    },
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The parent's delay before reconnect attempt `attempt` (0-based):
/// exponential from 200 ms to 10 s, half of it fixed and half random. The
/// children's, which must not come back in step, is
/// [`reconnect::Backoff`] (full jitter, `--reconnect-max`).
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
