//! `fleetls-parent revoke NAME`: the agent's certificates go on the
//! revocation list, its key is banned and it loses the broker.

use std::process::ExitCode;

use fleetls_parent::client::{AdminTarget, Client};
use fleetls_parent::ops::{RevokeReport, RevokeRequest};

use super::output::print_pretty;

/// The flags of `revoke`.
#[derive(clap::Args)]
pub(crate) struct RevokeArgs {
    /// The agent, by name or id
    agent: String,
    /// The CRL reason: key-compromise (default), superseded,
    /// cessation-of-operation, affiliation-changed or unspecified
    /// (`--reason`, the old spelling, is an alias: `FLEETLS_REASON` is
    /// the free text of `agents exclude`)
    #[arg(long = "crl-reason", alias = "reason")]
    reason: Option<String>,
    #[command(flatten)]
    target: AdminTarget,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Runs `revoke`.
pub(crate) async fn run(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let request = RevokeRequest {
        agent: args.agent,
        reason: args.reason,
    };
    let report: RevokeReport = Client::new(&args.target)?
        .post("/api/revoke", &request)
        .await?;
    if args.json {
        print_pretty(&report)?;
    } else {
        fleetls_bus::outln!(
            "revoked: {} ({}): {} certificate(s) on the revocation list, {} broker connection(s) closed; its key is banned",
            report.name, report.id, report.certificates, report.connections_closed
        );
    }
    Ok(ExitCode::SUCCESS)
}
