//! `fleetls-parent without-ssl`: "Show child agents without SSL" — not
//! switched to SSL; not connected to RabbitMQ over TLS, by management.

use std::process::ExitCode;

use fleetls_parent::client::{AdminTarget, Client};
use fleetls_parent::ops::WithoutSsl;

/// The flags of `without-ssl`.
#[derive(clap::Args)]
pub(crate) struct WithoutSslArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Runs `without-ssl`: the two lists, or JSON.
pub(crate) async fn run(args: WithoutSslArgs) -> anyhow::Result<ExitCode> {
    let lists: WithoutSsl = Client::new(&args.target)?.get("/api/without-ssl").await?;
    if args.json {
        fleetls_bus::outln!("{}", serde_json::to_string_pretty(&lists)?);
        return Ok(ExitCode::SUCCESS);
    }
    fleetls_bus::outln!("Not switched to SSL ({}):", lists.not_switched.len());
    for e in &lists.not_switched {
        fleetls_bus::outln!("  {:<24} {}  {}", e.name, e.id, e.why);
    }
    if lists.broker_view {
        fleetls_bus::outln!(
            "Not connected to RabbitMQ over TLS, per RabbitMQ ({}):",
            lists.not_on_tls.len()
        );
        for e in &lists.not_on_tls {
            fleetls_bus::outln!("  {:<24} {}  {}", e.name, e.id, e.why);
        }
    } else {
        fleetls_bus::outln!("(the parent has no --management: RabbitMQ's view is not available)");
    }
    Ok(ExitCode::SUCCESS)
}
