//! `fleetls-parent settings show | set`: the SSL settings (ports, names
//! and addresses of the parent and the broker, TLS versions and suites,
//! the operator's own certificates).

use std::process::ExitCode;

use clap::Subcommand;
use fleetls_parent::client::{AdminTarget, Client};
use fleetls_parent::ops::SettingsView;
use fleetls_parent::settings::SettingsChange;

/// What `settings` does.
// Made once per process from the command line: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum SettingsAction {
    /// Print the SSL settings and whether they are frozen.
    Show {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Change SSL settings (lists are `;`-separated; a value replaces the old one).
    Set {
        #[command(flatten)]
        change: Box<SettingsChange>,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// Runs `settings ACTION`.
pub(crate) async fn run(action: SettingsAction) -> anyhow::Result<ExitCode> {
    match action {
        SettingsAction::Show { target, json } => {
            let view: SettingsView = Client::new(&target)?.get("/api/settings").await?;
            print_settings(&view, json)
        }
        SettingsAction::Set {
            mut change,
            target,
            json,
        } => {
            // The parent reads the files: absolute paths.
            for path in [
                &mut change.parent_cert,
                &mut change.parent_cert_key,
                &mut change.broker_cert,
                &mut change.broker_key,
            ]
            .into_iter()
            .flatten()
            {
                *path = std::path::absolute(&*path).unwrap_or_else(|_| path.clone());
            }
            let view: SettingsView = Client::new(&target)?.post("/api/settings", &change).await?;
            print_settings(&view, json)
        }
    }
}

/// Prints the settings: JSON, or one line each and whether they are frozen.
fn print_settings(view: &SettingsView, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        fleetls_bus::outln!("{}", serde_json::to_string_pretty(view)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = &view.settings;
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(";")
        }
    };
    fleetls_bus::outln!("SSL port:                        {}", s.port);
    fleetls_bus::outln!("SSL port for local parent agents: {}", s.local_parent_port);
    fleetls_bus::outln!("DNS names of the parent:         {}", list(s.names.clone()));
    fleetls_bus::outln!(
        "IP addresses of the parent:      {}",
        list(s.ips.iter().map(|ip| ip.to_string()).collect())
    );
    fleetls_bus::outln!(
        "DNS names of the broker:         {}",
        list(s.broker_names.clone())
    );
    fleetls_bus::outln!(
        "IP addresses of the broker:      {}",
        list(s.broker_ips.iter().map(|ip| ip.to_string()).collect())
    );
    fleetls_bus::outln!("lowest TLS version:              {}", s.min_tls.as_str());
    fleetls_bus::outln!(
        "cipher suites:                   {}",
        if s.cipher_suites.is_empty() {
            "every suite of the crypto provider".to_owned()
        } else {
            s.cipher_suites.join(";")
        }
    );
    fleetls_bus::outln!(
        "CRL address in certificates:     {}",
        s.crl_url.as_deref().unwrap_or("- (none)")
    );
    let whose = |own: bool| {
        if own {
            "the operator's own"
        } else {
            "issued by fleetls's CA"
        }
    };
    fleetls_bus::outln!(
        "SSL port certificate:            {}",
        whose(view.own.parent)
    );
    fleetls_bus::outln!(
        "broker certificate:              {}",
        whose(view.own.broker)
    );
    fleetls_bus::outln!(
        "state:                           {}",
        if view.frozen {
            "frozen (certificates exist; `certs reset` to change)"
        } else {
            "editable"
        }
    );
    Ok(ExitCode::SUCCESS)
}
