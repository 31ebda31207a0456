//! fleetls-parent: the parent agent at headquarters. It keeps the registry
//! of every child (SQLite), consumes `fleetls.parent`, runs the network's CA
//! and the campaigns that move the fleet to TLS, and serves the admin API
//! and the console on loopback. [`serve`] is what the binary and the tests
//! call.
//!
//! The modules by layer, from the top down. Data flows one way: each layer
//! uses only the layers below it, and nothing below calls back up.
//!
//! - **Serving** — [`service`] builds the [`app::App`], spawns the tasks and
//!   runs the broker session; [`admin`] (the HTTP API, with [`api_error`])
//!   and [`console`] (the web pages) answer the operator.
//! - **Tasks and operations on the `App`** — [`tasks`]: the long-running
//!   loops ([`tasks::rotation`], [`tasks::owed`], [`tasks::cluster`],
//!   [`tasks::presence`]) and
//!   [`engine`], the campaign engine; [`ops`]: the operator's operations;
//!   [`export`]'s `export_op`.
//! - **[`app`]** — what the tasks share: configuration, registry, CA,
//!   settings, the SSL port, the broker channel, counters.
//! - **Domain: functions over a registry transaction and plain data** —
//!   [`inbound`] (a batch of messages → registry changes and what to send;
//!   its `csr` part certifies, answers again or refuses CSRs),
//!   [`enrollment`] (who gets in: tokens, names, the pending cap),
//!   [`admission`] (who may join, what a message may carry), [`campaign`], [`rotation`],
//!   [`owed`], [`status`], [`cluster`], [`topology`] (the broker's
//!   topology checked and repaired), [`metrics`] (the `/metrics` page from
//!   plain figures), and [`op_error`], the operations' error.
//! - **Storage** — [`registry`]: the one owner of the SQL schema, its
//!   migrations and every query, a submodule per table family (with the
//!   words its tables store: `campaign_states`, `agent_states`).
//! - **Foundations** — [`pki`], [`settings`], [`own`], [`ssl_port`],
//!   [`broker`], [`broker_switch`] (with [`rabbit_tls`], the broker's TLS
//!   options from the SSL port's policy), [`management`], [`queue_choice`],
//!   [`config`], [`layout`], [`token`], [`text`] (outside text made safe to
//!   store and print).
//! - **The CLI's side** (not in the serving process) — [`client`] calls the
//!   admin API, [`follow`] follows a campaign, [`duration`] parses flags.

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
pub mod duration;
pub mod engine;
pub mod enrollment;
pub mod export;
pub mod follow;
pub mod inbound;
pub mod layout;
pub mod management;
pub mod metrics;
pub mod op_error;
pub mod ops;
pub mod owed;
pub mod own;
pub mod pki;
pub mod queue_choice;
pub mod rabbit_tls;
pub mod registry;
pub mod rotation;
pub mod service;
pub mod settings;
pub mod ssl_port;
pub mod status;
pub mod tasks;
pub mod text;
pub mod token;
pub mod topology;

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
