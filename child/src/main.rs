//! `fleetls-child`: parses flags, sets up logging and calls the library.

use std::process::ExitCode;

use clap::Subcommand;
use fleetls_child::config::{self, RawRun, RunConfig};

/// What `fleetls-child --help` says of it.
const ABOUT: &str = "A fleetls child agent: registers with the parent through RabbitMQ, \
reports its state, and follows the parent through the switch to TLS";

type Cli = fleetls_bus::process::Cli<Command>;

// Made once per process from the command line: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGINT/SIGTERM.
    Run(RawRun),
    /// Run N simulated children in one process (load tests, benchmarks).
    Swarm(fleetls_child::swarm::SwarmArgs),
    /// Install an identity exported by the parent (an mPOS device, which
    /// cannot send a CSR): checked whole before anything is written.
    Import(fleetls_child::import::ImportArgs),
    /// What is wrong with a TLS endpoint (the SSL port, a local parent, AMQPS),
    /// as this child sees it: its CA and its own certificate. Exit 4 on a problem.
    Doctor(fleetls_doctor::DoctorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_as("fleetls-child", ABOUT);
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
            Command::Doctor(args) => {
                let report = fleetls_child::doctor::diagnose_child(
                    &args.target,
                    &args.data_dir,
                    args.ca.as_deref(),
                    args.limits(),
                )
                .await;
                fleetls_doctor::print(&report, args.json)
            }
            Command::Import(args) => match fleetls_child::import::import(&args) {
                Ok(done) => {
                    fleetls_bus::outln!(
                        "imported: agent {} certificate {} valid until {}",
                        done.agent,
                        done.serial,
                        done.not_after
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            },
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
