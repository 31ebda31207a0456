//! `fleetls-parent serve`: the configuration from the flags, the variables
//! and the config file, then the parent until SIGINT or SIGTERM.

use std::process::ExitCode;

use fleetls_bus::process::ConfigFlag;
use fleetls_parent::config::{self, RawServe, ServeConfig};

/// Runs `serve`: exit code 2 when the configuration is wrong.
pub(crate) async fn run(config_flag: &ConfigFlag, flags: RawServe) -> anyhow::Result<ExitCode> {
    let loaded = config_flag.load(flags, config::read_file, ServeConfig::from_raw);
    let config = match loaded {
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
