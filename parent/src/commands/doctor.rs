//! `fleetls-parent doctor`: what is wrong with a TLS endpoint, checked with
//! the parent's CA and its own client identity.

use std::process::ExitCode;

use fleetls_doctor::DoctorArgs;
use fleetls_parent::layout::{CertFile, Layout};

/// Runs `doctor`: exit code 4 when a problem is found.
pub(crate) async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(&args.data_dir);
    let limits = args.limits();
    let ca = args
        .ca
        .unwrap_or_else(|| layout.certificate(CertFile::CaPem));
    let (cert, key) = fleetls_parent::own::client_identity(&args.data_dir);
    let report =
        fleetls_parent::doctor::diagnose_files(&args.target, &ca, Some((&cert, &key)), limits)
            .await;
    Ok(fleetls_doctor::print(&report, args.json))
}
