//! `fleetls-parent security`: the security events the parent recorded,
//! counted by kind, newest first.

use std::process::ExitCode;

use fleetls_parent::client::{self, AdminTarget, Client};
use fleetls_parent::ops::SecurityView;

use super::output::print_pretty;

/// The flags of `security`.
#[derive(clap::Args)]
pub(crate) struct SecurityArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Runs `security`: the counts and the newest events, or JSON.
pub(crate) async fn run(args: SecurityArgs) -> anyhow::Result<ExitCode> {
    let view: SecurityView = Client::new(&args.target)?.get("/api/security").await?;
    if args.json {
        print_pretty(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    let total: u64 = view.counts.values().sum();
    fleetls_bus::outln!("security events: {total}");
    for (kind, count) in &view.counts {
        fleetls_bus::outln!("  {kind:<16} {count}");
    }
    for e in &view.recent {
        fleetls_bus::outln!(
            "{}  {:<16} {:<24} {}",
            client::when(e.at),
            e.kind,
            e.name.as_deref().or(e.agent.as_deref()).unwrap_or("-"),
            fleetls_parent::admission::printable(&e.detail, 300)
        );
    }
    Ok(ExitCode::SUCCESS)
}
