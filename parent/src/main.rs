//! `fleetls-parent`: parses flags, sets up logging and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetls_parent::client::{self, AdminTarget, Client};
use fleetls_parent::config::{self, RawServe, ServeConfig};

/// The fleetls parent agent: certificate authority, registry and switchover
/// campaigns for a network of child agents that talk through RabbitMQ.
#[derive(Parser)]
#[command(name = "fleetls-parent", version)]
struct Cli {
    /// TOML config file (its top-level keys are the flags of `serve`)
    #[arg(long, global = true, env = "FLEETLS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the parent: consume fleetls.parent, keep the registry, serve the admin API.
    Serve(RawServe),
    /// List every agent with its state (a table, or JSON with --json).
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(flags) => {
            let file = match &cli.config {
                Some(path) => config::read_file(path),
                None => Ok(RawServe::default()),
            };
            let config = match file.and_then(|file| ServeConfig::from_raw(flags.or(file))) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let shutdown = fleetls_parent::shutdown::on_signals();
            fleetls_parent::serve(config, shutdown, None).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { target, json } => {
            let status = Client::new(&target)?.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", client::status_table(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
