//! The commands of `fleetls-parent`, one module per command or family
//! (ripgrep's flags split): each holds its clap flags, calls the serving
//! parent's admin API (or the library, for `serve`, `doctor` and
//! `signing-key`) and prints. `main` only matches and calls.

pub(crate) mod agents;
pub(crate) mod broker_tls;
pub(crate) mod ca;
pub(crate) mod campaign;
pub(crate) mod certs;
pub(crate) mod doctor;
pub(crate) mod enroll;
pub(crate) mod export;
mod output;
pub(crate) mod revoke;
pub(crate) mod security;
pub(crate) mod serve;
pub(crate) mod settings;
pub(crate) mod signing_key;
pub(crate) mod status;
pub(crate) mod without_ssl;
