//! fleetls-parent: the parent agent at headquarters.
//!
//! It keeps the registry of every child (SQLite), consumes `fleetls.parent`,
//! serves the admin API on loopback, and — in later phases — runs the CA and
//! the switchover campaigns. [`serve`] is what the binary and the tests call.

pub mod admin;
pub mod broker;
pub mod broker_switch;
pub mod campaign;
pub mod client;
pub mod config;
pub mod console;
pub mod doctor;
pub mod engine;
pub mod export;
pub mod files;
pub mod follow;
pub mod management;
pub mod ops;
pub mod pki;
pub mod registry;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod ssl_port;
pub mod status;
pub mod token;

pub use config::ServeConfig;

/// The id the parent signs its messages with (`from` of every envelope).
pub const PARENT_ID: uuid::Uuid = uuid::Uuid::nil();
pub use service::serve;
