//! `fleetls-parent`: parses flags, sets up logging and calls the library.
//! Each command runs in its module under `commands`; `run` only matches
//! and calls, and `main` maps the error to an exit code.

use std::process::ExitCode;

use clap::Subcommand;

mod commands;
use commands::{
    agents, broker_tls, ca, campaign, certs, doctor, enroll, export, revoke, security, serve,
    settings, signing_key, status, without_ssl,
};
use fleetls_parent::campaign::Kind;
use fleetls_parent::client::ClientError;
use fleetls_parent::config::RawServe;

/// What `fleetls-parent --help` says of it.
const ABOUT: &str = "The fleetls parent agent: certificate authority, registry and switchover \
campaigns for a network of child agents that talk through RabbitMQ";

type Cli = fleetls_bus::process::Cli<Command>;

#[derive(Subcommand)]
enum Command {
    /// Run the parent: consume fleetls.parent, keep the registry, serve the admin API.
    Serve(Box<RawServe>),
    /// List every agent with its state (a table, or JSON with --json).
    Status(status::StatusArgs),
    /// The broker's nodes (running, memory and disk alarms) and the node each
    /// agent's own connection is on, as RabbitMQ management shows them
    /// (needs the parent's --management).
    Cluster(status::ClusterArgs),
    /// Show or change the SSL settings (ports, names and addresses of the
    /// parent and the broker). Frozen once certificates exist.
    Settings {
        #[command(subcommand)]
        action: settings::SettingsAction,
    },
    /// "Verify SSL Switchover": every eligible child holding a certificate
    /// runs the two-step test (certificate generation, connection over the
    /// SSL port), at most --concurrency at once. Follows the campaign with a
    /// progress line; Ctrl-C detaches without stopping it.
    Verify(campaign::CampaignArgs),
    /// "Reverify": re-run the test only for the children whose last result
    /// was not a pass.
    Reverify(campaign::CampaignArgs),
    /// "Use SSL connection": the children that passed the test switch to
    /// SSL mode, as a campaign with the same window.
    Switch(campaign::CampaignArgs),
    /// "Force SSL Switchover": every eligible child switches, tested or not.
    /// Names the children that may lose their connection and asks first.
    ForceSwitch(campaign::ForceSwitchArgs),
    /// "Use SSL connection for RabbitMQ": checks that AMQPS answers with a
    /// certificate from the CA, then moves every switched child's broker
    /// connection to it (a child that cannot stays on plain and says why),
    /// and finally the parent's own.
    SwitchBroker(campaign::SwitchBrokerArgs),
    /// "Show child agents without SSL": not switched to SSL; not connected to
    /// RabbitMQ over TLS (RabbitMQ management's own view).
    WithoutSsl(without_ssl::WithoutSslArgs),
    /// Enrollment tokens: what admits a new device without an operator
    /// (the broker's credentials, shared by every till, prove nothing).
    Enroll {
        #[command(subcommand)]
        action: enroll::EnrollAction,
    },
    /// Admission: list agents with their keys, accept or reject pending
    /// ones, delete an agent (its rows and queue go, its key is banned).
    Agents {
        #[command(subcommand)]
        action: agents::AgentsAction,
    },
    /// The CA: `ca rotate` replaces it without a connected agent losing its
    /// connection (both CAs trusted, everyone re-issued, the old one dropped).
    Ca {
        #[command(subcommand)]
        action: ca::CaAction,
    },
    /// Revoke an agent: its certificates go on the CA's revocation list (the
    /// SSL ports refuse them at once; `GET /crl.pem` serves it), its key is
    /// banned, its RabbitMQ user removed and its broker connections closed.
    Revoke(revoke::RevokeArgs),
    /// Print the fingerprint of the key the parent signs every command with:
    /// give it to children as --parent-key (FLEETLS_PARENT_KEY). Reads the
    /// data dir; made there if missing.
    SigningKey(signing_key::SigningKeyArgs),
    /// Security events: forged or replayed commands refused by children,
    /// messages signed by the wrong key, banned keys, oversized or invalid
    /// messages, agents that pinned another parent key.
    Security(security::SecurityArgs),
    /// Write what the broker needs for AMQPS: its certificate, key and the
    /// CA, and rabbitmq.conf fragments for during and after the migration.
    BrokerTls(broker_tls::BrokerTlsArgs),
    /// Export for manual installation (mPOS, or any chosen child): ca.cer (DER),
    /// ca.pem, truststore.jks and a password-protected .pfx per agent. The
    /// password comes from --password-file or FLEETLS_EXPORT_PASSWORD, never the command line.
    Export(export::ExportArgs),
    /// What is wrong with a TLS endpoint, in plain words (trusts the parent's
    /// CA, presents parent.pem/parent.key). Exit 4 when a problem is found.
    Doctor(fleetls_doctor::DoctorArgs),
    /// Follow the newest campaign (or print its progress with --json).
    Campaign(campaign::FollowArgs),
    /// Certificates: generate the CA and server certificates, send the
    /// information to the children, or reset everything.
    Certs {
        #[command(subcommand)]
        action: certs::CertsAction,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse_as("fleetls-parent", ABOUT);
    let Some(runtime) = fleetls_bus::process::start() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<ClientError>() {
                // The parent answered but would not do it: 3, so scripts can tell.
                Some(ClientError::Refused(_)) => ExitCode::from(3),
                Some(ClientError::Invalid(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(flags) => serve::run(&cli.config, *flags).await,
        Command::Status(args) => status::status(args).await,
        Command::Cluster(args) => status::cluster(args).await,
        Command::Settings { action } => settings::run(action).await,
        Command::Certs { action } => certs::run(action).await,
        Command::Verify(args) => campaign::start(Kind::Verify, args).await,
        Command::Reverify(args) => campaign::start(Kind::Reverify, args).await,
        Command::Switch(args) => campaign::start(Kind::Switch, args).await,
        Command::ForceSwitch(args) => campaign::force_switch(args).await,
        Command::SwitchBroker(args) => campaign::switch_broker(args).await,
        Command::WithoutSsl(args) => without_ssl::run(args).await,
        Command::Export(args) => export::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
        Command::Agents { action } => agents::run(action).await,
        Command::Enroll { action } => enroll::run(action).await,
        Command::Ca { action } => ca::run(action).await,
        Command::Revoke(args) => revoke::run(args).await,
        Command::SigningKey(args) => signing_key::run(args),
        Command::Security(args) => security::run(args).await,
        Command::BrokerTls(args) => broker_tls::run(args).await,
        Command::Campaign(args) => campaign::follow(args).await,
    }
}
