//! `fleetls-child`: parses flags, sets up logging and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetls_child::config::{self, RawRun, RunConfig};

/// A fleetls child agent: registers with the parent through RabbitMQ,
/// heartbeats, and follows the parent through the switch to TLS.
#[derive(Parser)]
#[command(name = "fleetls-child", version)]
struct Cli {
    #[command(flatten)]
    config: fleetls_bus::process::ConfigFlag,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGINT/SIGTERM.
    Run(RawRun),
    /// Run N simulated children in one process (load tests, benchmarks).
    Swarm(fleetls_child::swarm::SwarmArgs),
    /// What is wrong with a TLS endpoint (the SSL port, a local parent, AMQPS),
    /// as this child sees it: its CA and its own certificate. Exit 4 on a problem.
    Doctor {
        /// HOST:PORT to check
        target: String,
        /// The child's data dir (certs/ca.pem, certs/agent.pem, certs/agent.key)
        #[arg(long, env = "FLEETLS_DATA_DIR")]
        data_dir: PathBuf,
        /// Trust this CA file instead of DATA_DIR/certs/ca.pem
        #[arg(long, env = "FLEETLS_CA")]
        ca: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(runtime) = fleetls_bus::process::start() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(flags) => {
                let loaded = cli
                    .config
                    .load(flags, config::read_file, RunConfig::from_raw);
                let config = match loaded {
                    Ok(config) => config,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                let shutdown = fleetls_child::shutdown::on_signals();
                match fleetls_child::agent::run(config, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Doctor {
                target,
                data_dir,
                ca,
                json,
            } => {
                let report =
                    fleetls_child::doctor::diagnose_child(&target, &data_dir, ca.as_deref()).await;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("a report serialises")
                    );
                } else {
                    print!("{}", fleetls_child::doctor::render(&report));
                }
                if report.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(4)
                }
            }
            Command::Swarm(args) => {
                let shutdown = fleetls_child::shutdown::on_signals();
                match fleetls_child::swarm::run(args, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::from(2)
                    }
                }
            }
        }
    })
}
