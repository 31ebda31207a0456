//! `doctor HOST:PORT`: what is wrong with a TLS endpoint, in plain words.
//!
//! It resolves the host, connects, makes a TLS handshake trusting only the
//! given CA (presenting a client certificate when one is given), then checks
//! one by one what an agent would trip over, each with what to do about it:
//! a DNS failure, a closed port, a timeout, a port that does not speak TLS,
//! a certificate that does not chain to the CA, a missing intermediate, a
//! host name that is not in the certificate, a certificate expired or not
//! yet valid, and a client certificate the server refuses (in TLS 1.3 that
//! shows only after the handshake, so the doctor waits a moment for it).
//!
//! The handshake is as strict as an agent's: the verifier only records the
//! chain the server presents before it hands it to rustls's WebPKI
//! verification. The analysis of that chain (with x509-parser and rustls's
//! own path and name checks) is what turns one rustls error into the list.
//!
//! Both binaries use this crate: `fleetls-parent doctor` with the parent's
//! CA, `fleetls-child doctor` with what a child holds.
//!
//! # Modules
//!
//! The modules are private; what the binaries use is re-exported here.
//! Listed from the bottom up: a module uses only those above it in the list.
//!
//! - `report`: the types of the report ([`DoctorReport`], [`Check`],
//!   [`Problem`], [`CertSummary`]) and of the limits ([`Limits`], [`Offer`]).
//! - `describe`: certificates, dates and durations as an operator reads them.
//! - `input`: the target, the CA and the client certificate, read and
//!   checked before connecting.
//! - `verifier`: what is plugged into rustls to record the server's chain
//!   and its request for a client certificate.
//! - `connect`: resolving the host and the TCP connection.
//! - `render`: the report as plain text ([`render()`]).
//! - `classify`: what a failed handshake or a refusal right after it means.
//! - `chain`: the checks of the server's chain (issuer, name, validity,
//!   renewal).
//! - `probe`: the order of the checks ([`diagnose`], [`diagnose_with`],
//!   [`diagnose_files`]).
//! - `cli`: the `doctor` subcommand's flags ([`DoctorArgs`]) and [`print()`].

#![deny(missing_docs)]

mod chain;
mod classify;
mod cli;
mod connect;
mod describe;
mod input;
mod probe;
mod render;
mod report;
mod verifier;

pub use cli::{print, DoctorArgs};
pub use probe::{diagnose, diagnose_files, diagnose_with};
pub use render::render;
pub use report::{CertSummary, Check, DoctorReport, Limits, Offer, Problem};
