//! `fleetls-parent status` and `cluster`: the network as the parent sees
//! it, and the broker's nodes as RabbitMQ management shows them.

use std::process::ExitCode;

use fleetls_parent::client::{self, AdminTarget, Client};

use super::output::{print_out, print_pretty};

/// The flags of `status` (its help is the variant's, in main.rs).
#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// The flags of `cluster`.
#[derive(clap::Args)]
pub(crate) struct ClusterArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// Runs `status`: a table of every agent, or JSON.
pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = Client::new(&args.target)?.status().await?;
    if args.json {
        print_pretty(&status)?;
    } else {
        print_out(&client::status_table(&status))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `cluster`: the broker's nodes and where each agent is connected.
pub(crate) async fn cluster(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let view: fleetls_parent::cluster::ClusterView =
        Client::new(&args.target)?.get("/api/cluster").await?;
    if args.json {
        print_pretty(&view)?;
    } else {
        print_out(&fleetls_parent::cluster::table(&view))?;
    }
    Ok(ExitCode::SUCCESS)
}
