//! fleetls-parent: the parent agent at headquarters.
//!
//! It keeps the registry of every child (SQLite), consumes `fleetls.parent`,
//! serves the admin API on loopback, and — in later phases — runs the CA and
//! the switchover campaigns. [`serve`] is what the binary and the tests call.

pub mod admin;
pub mod admission;
pub mod api_error;
pub mod app;
pub mod broker;
pub mod broker_switch;
pub mod campaign;
pub mod client;
pub mod cluster;
pub mod config;
pub mod console;
pub mod engine;
pub mod export;
pub mod follow;
pub mod inbound;
pub mod layout;
pub mod management;
pub mod ops;
pub mod owed;
pub mod own;
pub mod pki;
pub mod queue_choice;
pub mod registry;
pub mod rotation;
pub mod service;
pub mod settings;
pub mod ssl_port;
pub mod status;
pub mod token;

pub use config::ServeConfig;
pub use fleetls_bus::{files, shutdown};
pub use fleetls_doctor as doctor;

/// The id the parent signs its messages with (`from` of every envelope).
pub const PARENT_ID: uuid::Uuid = uuid::Uuid::nil();
pub use service::serve;

/// Where the parent keeps the key it signs every command with (mode 0600,
/// separate from the TLS keys; made once — children pin it).
pub fn signing_key_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    layout::Layout::new(data_dir).signing_key()
}
