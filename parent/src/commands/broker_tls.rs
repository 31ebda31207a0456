//! `fleetls-parent broker-tls`: what the broker needs for AMQPS, written by
//! the parent, and what the operator does with it next.

use std::path::PathBuf;
use std::process::ExitCode;

use fleetls_parent::broker_switch::BrokerTlsFiles;
use fleetls_parent::client::{AdminTarget, Client};
use fleetls_parent::ops::BrokerTlsRequest;

/// The flags of `broker-tls`.
#[derive(clap::Args)]
pub(crate) struct BrokerTlsArgs {
    /// Folder to write into
    #[arg(long)]
    out: PathBuf,
    /// The broker's AMQPS port
    #[arg(long, default_value_t = fleetls_parent::broker_switch::DEFAULT_AMQPS_PORT)]
    amqps_port: u16,
    /// The addresses the AMQPS listener binds to, `;`-separated (default: the
    /// broker IPs of the settings; 0.0.0.0 for every interface)
    #[arg(long)]
    amqps_bind: Option<String>,
    /// A cluster node given its own certificate (its names and addresses
    /// beside the settings' broker names) and its own folder OUT/LABEL:
    /// LABEL=NAME;NAME;IP. Repeat for each node
    #[arg(long = "node", value_name = "LABEL=NAMES")]
    nodes: Vec<String>,
    #[command(flatten)]
    target: AdminTarget,
}

/// Runs `broker-tls`: the files written, then the steps that follow.
pub(crate) async fn run(args: BrokerTlsArgs) -> anyhow::Result<ExitCode> {
    let out = std::path::absolute(&args.out).unwrap_or(args.out);
    let per_node = !args.nodes.is_empty();
    let request = BrokerTlsRequest {
        out: out.clone(),
        amqps_port: Some(args.amqps_port),
        amqps_bind: args.amqps_bind,
        nodes: args.nodes,
    };
    let files: BrokerTlsFiles = Client::new(&args.target)?
        .post("/api/broker-tls", &request)
        .await?;
    for file in &files.files {
        fleetls_bus::outln!("{}", file.display());
    }
    fleetls_bus::outln!();
    if per_node {
        fleetls_bus::outln!("Each node's folder ({}/LABEL) holds its own certificate and fragments: use those on that node.", out.display());
    }
    fleetls_bus::outln!(
        "Append rabbitmq-migration.conf to the broker's rabbitmq.conf and restart RabbitMQ;"
    );
    print_final(&files);
    fleetls_bus::outln!(
        "For a fleet of thousands of agents append {} too (management's statistics every 30 s, no message rates; the file says what that saves and costs).",
        fleetls_parent::broker_switch::FLEET_CONF
    );
    fleetls_bus::outln!(
        "Give the agents' shared user least privilege: rabbitmq-permissions.sh VHOST USER"
    );
    fleetls_bus::outln!("(the parent keeps a user of its own with full rights on the vhost).");
    Ok(ExitCode::SUCCESS)
}

/// Whether rabbitmq-final.conf was written, and whom it keeps on plain or
/// would have cut off.
fn print_final(files: &BrokerTlsFiles) {
    if files.final_refused.is_empty() {
        fleetls_bus::outln!(
            "after the migration use rabbitmq-final.conf instead and restart again."
        );
        if !files.kept_plain.is_empty() {
            fleetls_bus::outln!(
                "rabbitmq-final.conf keeps plain AMQP open for {} agent(s) kept on plain by decision:",
                files.kept_plain.len()
            );
            for agent in &files.kept_plain {
                fleetls_bus::outln!("  {agent}");
            }
        }
    } else {
        fleetls_bus::outln!(
            "rabbitmq-final.conf (plain AMQP off) was not written: {} agent(s) would be cut off from the broker:",
            files.final_refused.len()
        );
        for agent in &files.final_refused {
            fleetls_bus::outln!("  {agent}");
        }
        fleetls_bus::outln!("Run broker-tls again once they are on AMQPS (`without-ssl`), or keep one on plain with `agents exclude NAME --reason TEXT`.");
    }
}
