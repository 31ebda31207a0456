//! fleetls-child: a child agent of the network.
//!
//! It keeps an identity in its data dir, holds a durable queue on the broker,
//! introduces itself to the parent and reports its state, makes its key and
//! CSR, runs the two test steps, switches to TLS and moves to AMQPS when the
//! parent says so. [`agent::run`] is what the binary and the tests call.

pub mod agent;
pub mod broker_tls;
pub mod certs;
pub mod config;
pub mod doctor;
pub mod identity;
pub mod import;
pub mod layout;
pub mod local_port;
pub mod node;
pub mod seq;
pub mod session;
pub mod steps;
pub mod stores;
pub mod swarm;
pub mod trust;

pub use fleetls_bus::shutdown;
