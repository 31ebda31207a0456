//! `fleetls-child doctor HOST:PORT`: the parent's doctor, from a child's
//! point of view: it trusts the child's CA (`DIR/certs/ca.pem`, or the file
//! given with `--ca`) and presents the child's own certificate
//! (`DIR/certs/agent.pem` and `agent.key`) when it has one.
//!
//! The core is the `fleetls-doctor` crate, shared with the parent.

use std::path::Path;

use crate::certs::CertStore;

pub use fleetls_doctor::{
    diagnose, diagnose_files, diagnose_with, render, CertSummary, Check, DoctorReport, Limits,
    Problem,
};

/// Diagnoses `target` as this child sees it: its CA (or `ca`), and its
/// certificate as client identity when it holds one.
pub async fn diagnose_child(
    target: &str,
    data_dir: &Path,
    ca: Option<&Path>,
    limits: Limits,
) -> DoctorReport {
    let store = CertStore::new(data_dir);
    let ca = ca.map(Path::to_owned).unwrap_or_else(|| store.ca_path());
    let (chain, key) = (store.chain_path(), store.key_path());
    let identity = (chain.exists() || key.exists()).then_some((chain.as_path(), key.as_path()));
    diagnose_files(target, &ca, identity, limits).await
}
