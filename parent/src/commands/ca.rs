//! `fleetls-parent ca rotate`: replaces the CA without a connected agent
//! losing its connection, or takes the rotation's next phase now.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use fleetls_parent::client::{AdminTarget, Client};
use fleetls_parent::rotation::{RotateReport, RotateRequest};

use super::output::print_pretty;

/// What `ca` does.
#[derive(Subcommand)]
pub(crate) enum CaAction {
    /// Rotate the CA: a new one (made here, or the company's given with
    /// --ca-cert/--ca-key); every agent first trusts both, then is re-issued
    /// under the new one (a campaign), then the old one leaves the bundles.
    /// Each phase follows by itself once every agent followed; `--advance`
    /// takes the next phase now. Follow it in `status`.
    Rotate {
        /// A new company CA or intermediate certificate (PEM, on the parent's machine)
        #[arg(long, requires = "ca_key", conflicts_with = "advance")]
        ca_cert: Option<PathBuf>,
        /// Its private key (PEM)
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Take the next phase of the rotation under way now, without
        /// waiting for agents that have not followed (offline ones)
        #[arg(long)]
        advance: bool,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// Runs `ca ACTION`.
pub(crate) async fn run(action: CaAction) -> anyhow::Result<ExitCode> {
    let CaAction::Rotate {
        ca_cert,
        ca_key,
        advance,
        target,
        json,
    } = action;
    // The parent reads the files: absolute paths.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let request = RotateRequest {
        ca_cert: ca_cert.map(absolute),
        ca_key: ca_key.map(absolute),
        advance,
    };
    let report: RotateReport = Client::new(&target)?
        .post("/api/ca/rotate", &request)
        .await?;
    if json {
        print_pretty(&report)?;
    } else {
        let r = &report.rotation;
        fleetls_bus::outln!(
            "CA rotation: phase {}  ({} -> {}); agents {}, trusting the new CA {}, on the new CA {}\n{}",
            r.phase.as_str(),
            r.old_ca,
            r.new_ca,
            r.agents,
            r.trusting_new,
            r.on_new_ca,
            report.broker
        );
    }
    Ok(ExitCode::SUCCESS)
}
