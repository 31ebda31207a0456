//! `fleetls-parent`: parses flags, sets up logging and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use fleetls_parent::campaign::Kind;
use fleetls_parent::client::ClientError;
use fleetls_parent::client::{self, AdminTarget, Client};
use fleetls_parent::config::{self, RawServe, ServeConfig};
use fleetls_parent::ops;
use fleetls_parent::settings::SettingsChange;

/// What `fleetls-parent --help` says of it.
const ABOUT: &str = "The fleetls parent agent: certificate authority, registry and switchover \
campaigns for a network of child agents that talk through RabbitMQ";

type Cli = fleetls_bus::process::Cli<Command>;

#[derive(Subcommand)]
enum Command {
    /// Run the parent: consume fleetls.parent, keep the registry, serve the admin API.
    Serve(Box<RawServe>),
    /// List every agent with its state (a table, or JSON with --json).
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// The broker's nodes (running, memory and disk alarms) and the node each
    /// agent's own connection is on, as RabbitMQ management shows them
    /// (needs the parent's --management).
    Cluster {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show or change the SSL settings (ports, names and addresses of the
    /// parent and the broker). Frozen once certificates exist.
    Settings {
        #[command(subcommand)]
        action: SettingsAction,
    },
    /// "Verify SSL Switchover": every eligible child holding a certificate
    /// runs the two-step test (certificate generation, connection over the
    /// SSL port), at most --concurrency at once. Follows the campaign with a
    /// progress line; Ctrl-C detaches without stopping it.
    Verify(CampaignArgs),
    /// "Reverify": re-run the test only for the children whose last result
    /// was not a pass.
    Reverify(CampaignArgs),
    /// "Use SSL connection": the children that passed the test switch to
    /// SSL mode, as a campaign with the same window.
    Switch(CampaignArgs),
    /// "Force SSL Switchover": every eligible child switches, tested or not.
    /// Names the children that may lose their connection and asks first.
    ForceSwitch {
        #[command(flatten)]
        args: CampaignArgs,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// "Use SSL connection for RabbitMQ": checks that AMQPS answers with a
    /// certificate from the CA, then moves every switched child's broker
    /// connection to it (a child that cannot stays on plain and says why),
    /// and finally the parent's own.
    SwitchBroker {
        #[command(flatten)]
        args: CampaignArgs,
        /// The AMQPS address agents move to (default: the --broker host, port
        /// 5671). It holds a password: prefer the FLEETLS_AMQPS variable
        #[arg(long, env = "FLEETLS_AMQPS")]
        amqps: Option<String>,
        /// Children authenticate with their certificate (SASL EXTERNAL) instead of the password
        #[arg(long)]
        external: bool,
    },
    /// "Show child agents without SSL": not switched to SSL; not connected to
    /// RabbitMQ over TLS (RabbitMQ management's own view).
    WithoutSsl {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Admission: list agents with their keys, accept or reject pending
    /// ones, delete an agent (its rows and queue go, its key is banned).
    Agents {
        #[command(subcommand)]
        action: AgentsAction,
    },
    /// The CA: `ca rotate` replaces it without a connected agent losing its
    /// connection (both CAs trusted, everyone re-issued, the old one dropped).
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Revoke an agent: its certificates go on the CA's revocation list (the
    /// SSL ports refuse them at once; `GET /crl.pem` serves it), its key is
    /// banned, its RabbitMQ user removed and its broker connections closed.
    Revoke {
        /// The agent, by name or id
        agent: String,
        /// key-compromise (default), superseded, cessation-of-operation,
        /// affiliation-changed or unspecified
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the fingerprint of the key the parent signs every command with:
    /// give it to children as --parent-key (FLEETLS_PARENT_KEY). Reads the
    /// data dir; made there if missing.
    SigningKey {
        /// The parent's data dir
        #[arg(long, env = "FLEETLS_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Security events: forged or replayed commands refused by children,
    /// messages signed by the wrong key, banned keys, oversized or invalid
    /// messages, agents that pinned another parent key.
    Security {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Write what the broker needs for AMQPS: its certificate, key and the
    /// CA, and rabbitmq.conf fragments for during and after the migration.
    BrokerTls {
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
    },
    /// Export for manual installation (mPOS, or any chosen child): ca.cer (DER),
    /// ca.pem, truststore.jks and a password-protected .pfx per agent. The
    /// password comes from --password-file or FLEETLS_EXPORT_PASSWORD, never the command line.
    Export {
        /// Folder to write into, on the parent's machine (created 0700)
        #[arg(long)]
        out: PathBuf,
        /// An agent to make a .pfx for, by name or id (repeat for more)
        #[arg(long = "agent", value_name = "NAME|ID")]
        agents: Vec<String>,
        /// Also every registered mPOS agent
        #[arg(long)]
        mpos: bool,
        /// A .pfx old Windows can import (3DES, SHA-1 MAC) instead of AES-256/SHA-256
        #[arg(long)]
        legacy: bool,
        /// File holding the password (else FLEETLS_EXPORT_PASSWORD)
        #[arg(long, env = "FLEETLS_PASSWORD_FILE")]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// What is wrong with a TLS endpoint, in plain words (trusts the parent's
    /// CA, presents parent.pem/parent.key). Exit 4 when a problem is found.
    Doctor(fleetls_doctor::DoctorArgs),
    /// Follow the newest campaign (or print its progress with --json).
    Campaign {
        #[command(flatten)]
        target: AdminTarget,
        /// Print the progress as JSON once instead of following
        #[arg(long)]
        json: bool,
    },
    /// Certificates: generate the CA and server certificates, send the
    /// information to the children, or reset everything.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Rotate the CA: a new one (made here, or the company's given with
    /// --ca-cert/--ca-key); every agent first trusts both, then is re-issued
    /// under the new one (a campaign), then the old one leaves the bundles.
    /// Each phase follows by itself once every agent followed; `--advance`
    /// takes the next phase now. Follow it in `status`.
    Rotate {
        /// A new company CA or intermediate certificate (PEM, on the parent's machine)
        #[arg(long, requires = "ca_key", conflicts_with = "advance")]
        ca_cert: Option<std::path::PathBuf>,
        /// Its private key (PEM)
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<std::path::PathBuf>,
        /// Take the next phase of the rotation under way now, without
        /// waiting for agents that have not followed (offline ones)
        #[arg(long)]
        advance: bool,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct CampaignArgs {
    /// The campaign's deadline (e.g. 60m, 90s); unfinished children then
    /// count as "did not participate"
    #[arg(long, default_value = "60m", value_parser = fleetls_parent::follow::parse_duration)]
    timeout: std::time::Duration,
    /// Each step's deadline
    #[arg(long, default_value = "60s", value_parser = fleetls_parent::follow::parse_duration)]
    step_timeout: std::time::Duration,
    /// Number of child agents that can simultaneously perform remote actions
    /// (default: the parent's --window)
    #[arg(long)]
    concurrency: Option<usize>,
    /// Start it and return at once
    #[arg(long)]
    detach: bool,
    #[command(flatten)]
    target: AdminTarget,
    /// Print the final progress and summary as JSON
    #[arg(long)]
    json: bool,
}

// Made once per process from the command line: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum SettingsAction {
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

#[derive(Subcommand)]
enum AgentsAction {
    /// Every agent with its admission, its key and the parent key it pinned.
    List {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Accept pending agents (by name or id), or --all of them.
    Accept {
        /// Names or ids
        agents: Vec<String>,
        /// Every pending agent
        #[arg(long, conflicts_with = "agents")]
        all: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Reject agents: they get nothing, their certificates are revoked and
    /// their key cannot register again (until accepted).
    Reject {
        /// Names or ids
        #[arg(required = true)]
        agents: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete agents: rows and queue removed, certificates revoked, key banned.
    Delete {
        /// Names or ids
        #[arg(required = true)]
        agents: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Keep agents on plain AMQP by decision: no campaign, no switch; counted
    /// as excluded and listed with the reason by without-ssl, and the final
    /// broker configuration keeps the plain listener for them.
    Exclude {
        /// Names or ids
        #[arg(required = true)]
        agents: Vec<String>,
        /// Why (one line, shown by status and without-ssl)
        #[arg(long, required = true)]
        reason: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Take excluded agents back into campaigns and switches.
    Include {
        /// Names or ids
        #[arg(required = true)]
        agents: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Create the CA (or use the company's), the parent's and the broker's
    /// certificates. Refused while a child runs a version below the SSL
    /// minimum, unless --ignore-old.
    Generate {
        /// Count children with old versions as "version not supporting SSL" and go ahead
        #[arg(long)]
        ignore_old: bool,
        /// A company CA or intermediate certificate (PEM, chain after it) to sign with
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The company CA's private key (PEM)
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// "Send information": queue the CA and SSL port to every eligible child
    /// without a certificate, online or not. Harmless to repeat.
    Send {
        /// Also to children that already hold a certificate
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Renew certificates now: the children named (or --all that hold one)
    /// make a new key and get a new certificate; the old one is revoked
    /// (superseded) once the new one is issued. Children also renew by
    /// themselves at two thirds of the lifetime.
    Renew {
        /// An agent (name or id); repeat for more
        #[arg(long = "agent", required_unless_present = "all")]
        agents: Vec<String>,
        /// Every eligible child holding a certificate
        #[arg(long, conflicts_with = "agents")]
        all: bool,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Move the CA and every certificate aside and unfreeze the settings.
    Reset {
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
}

async fn agents(action: AgentsAction) -> anyhow::Result<ExitCode> {
    let (path, target, request) = match action {
        AgentsAction::List { target, json } => {
            let list: Vec<ops::AgentEntry> = Client::new(&target)?.get("/api/admission").await?;
            if json {
                print_out(&(serde_json::to_string_pretty(&list)? + "\n"))?;
            } else {
                let mut out = format!(
                    "{:<24} {:<12} {:<9} {:<8} {:<20} ID\n",
                    "NAME", "KIND", "ADMISSION", "STATE", "KEY"
                );
                for a in &list {
                    let key = a
                        .key
                        .as_deref()
                        .map(|k| &k[..k.len().min(20)])
                        .unwrap_or("-");
                    out.push_str(&format!(
                        "{:<24} {:<12} {:<9} {:<8} {:<20} {}\n",
                        a.name,
                        a.kind.as_str(),
                        a.admission.as_str(),
                        if a.online { "online" } else { "offline" },
                        key,
                        a.id
                    ));
                }
                print_out(&out)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        AgentsAction::Accept {
            agents,
            all,
            target,
        } => (
            "/api/agents/accept",
            target,
            ops::AgentsRequest {
                agents,
                all,
                reason: None,
            },
        ),
        AgentsAction::Reject { agents, target } => (
            "/api/agents/reject",
            target,
            ops::AgentsRequest {
                agents,
                ..Default::default()
            },
        ),
        AgentsAction::Delete { agents, target } => (
            "/api/agents/delete",
            target,
            ops::AgentsRequest {
                agents,
                ..Default::default()
            },
        ),
        AgentsAction::Exclude {
            agents,
            reason,
            target,
        } => (
            "/api/agents/exclude",
            target,
            ops::AgentsRequest {
                agents,
                all: false,
                reason: Some(reason),
            },
        ),
        AgentsAction::Include { agents, target } => (
            "/api/agents/include",
            target,
            ops::AgentsRequest {
                agents,
                ..Default::default()
            },
        ),
    };
    let report: ops::AgentsReport = Client::new(&target)?.post(path, &request).await?;
    let verb = path.rsplit('/').next().unwrap_or("changed");
    if report.changed.is_empty() {
        println!("nothing to {verb}");
    }
    for name in &report.changed {
        println!("{verb}: {name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a long answer to stdout: a reader that stops early
/// (`status --json | head`) ends it quietly instead of as a panic.
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
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
        Command::Serve(flags) => {
            let loaded = cli
                .config
                .load(*flags, config::read_file, ServeConfig::from_raw);
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
        Command::Status { target, json } => {
            let status = Client::new(&target)?.status().await?;
            if json {
                print_out(&(serde_json::to_string_pretty(&status)? + "\n"))?;
            } else {
                print_out(&client::status_table(&status))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster { target, json } => {
            let view: fleetls_parent::cluster::ClusterView =
                Client::new(&target)?.get("/api/cluster").await?;
            if json {
                print_out(&(serde_json::to_string_pretty(&view)? + "\n"))?;
            } else {
                print_out(&fleetls_parent::cluster::table(&view))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings { action } => match action {
            SettingsAction::Show { target, json } => {
                let view: ops::SettingsView = Client::new(&target)?.get("/api/settings").await?;
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
                    &mut change.parent_key,
                    &mut change.broker_cert,
                    &mut change.broker_key,
                ]
                .into_iter()
                .flatten()
                {
                    *path = std::path::absolute(&*path).unwrap_or_else(|_| path.clone());
                }
                let view: ops::SettingsView =
                    Client::new(&target)?.post("/api/settings", &change).await?;
                print_settings(&view, json)
            }
        },
        Command::Certs { action } => certs(action).await,
        Command::Verify(args) => campaign(Kind::Verify, args, None, None).await,
        Command::Reverify(args) => campaign(Kind::Reverify, args, None, None).await,
        Command::Switch(args) => campaign(Kind::Switch, args, None, None).await,
        Command::ForceSwitch { args, yes } => {
            let client = Client::new(&args.target)?;
            let mut request = campaign_request(Kind::ForceSwitch, &args, None, None);
            request.dry_run = true;
            let start: ops::CampaignStart = client.post("/api/campaigns", &request).await?;
            if !start.plan.at_risk.is_empty() {
                eprintln!("These children did not pass the test and may lose their connection:");
                for name in &start.plan.at_risk {
                    eprintln!("  {name}");
                }
            }
            if !yes {
                use std::io::{BufRead, IsTerminal, Write};
                if !std::io::stdin().is_terminal() {
                    eprintln!("error: force-switch needs a confirmation; give --yes");
                    return Ok(ExitCode::from(2));
                }
                print!(
                    "Switch all {} child(ren) to SSL? Type \"force\" to go on: ",
                    start.plan.children.len()
                );
                std::io::stdout().flush()?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                if line.trim() != "force" {
                    eprintln!("not confirmed; nothing changed");
                    return Ok(ExitCode::from(3));
                }
            }
            campaign(Kind::ForceSwitch, args, None, None).await
        }
        Command::SwitchBroker {
            args,
            amqps,
            external,
        } => {
            let auth = external.then_some(fleetls_proto::BrokerAuth::External);
            campaign(Kind::SwitchBroker, args, amqps, auth).await
        }
        Command::WithoutSsl { target, json } => {
            let lists: ops::WithoutSsl = Client::new(&target)?.get("/api/without-ssl").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lists)?);
            } else {
                println!("Not switched to SSL ({}):", lists.not_switched.len());
                for e in &lists.not_switched {
                    println!("  {:<24} {}  {}", e.name, e.id, e.why);
                }
                if lists.broker_view {
                    println!(
                        "Not connected to RabbitMQ over TLS, per RabbitMQ ({}):",
                        lists.not_on_tls.len()
                    );
                    for e in &lists.not_on_tls {
                        println!("  {:<24} {}  {}", e.name, e.id, e.why);
                    }
                } else {
                    println!("(the parent has no --management: RabbitMQ's view is not available)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            out,
            agents,
            mpos,
            legacy,
            password_file,
            target,
            json,
        } => {
            let password = match fleetls_parent::export::read_password(password_file.as_deref()) {
                Ok(password) => password,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let out = std::path::absolute(&out).unwrap_or(out);
            let request = fleetls_parent::export::ExportRequest {
                out,
                agents,
                mpos,
                password,
                legacy,
            };
            let report: fleetls_parent::export::ExportReport =
                Client::new(&target)?.post("/api/export", &request).await?;
            print_json_or(&report, json, |r| {
                for file in &r.files {
                    println!("{}", file.display());
                }
                for c in &r.certificates {
                    println!(
                        "{}: certificate {} (valid until {}) in {}",
                        c.name,
                        c.serial,
                        client::when(c.not_after.max(0) as u64 * 1000),
                        c.file.display()
                    );
                }
            })
        }
        Command::Doctor(args) => {
            use fleetls_parent::layout::{CertFile, Layout};
            let layout = Layout::new(&args.data_dir);
            let limits = args.limits();
            let ca = args
                .ca
                .unwrap_or_else(|| layout.certificate(CertFile::CaPem));
            let (cert, key) = fleetls_parent::own::client_identity(&args.data_dir);
            let report = fleetls_parent::doctor::diagnose_files(
                &args.target,
                &ca,
                Some((&cert, &key)),
                limits,
            )
            .await;
            Ok(fleetls_doctor::print(&report, args.json))
        }
        Command::Agents { action } => agents(action).await,
        Command::Ca {
            action:
                CaAction::Rotate {
                    ca_cert,
                    ca_key,
                    advance,
                    target,
                    json,
                },
        } => {
            let absolute = |p: std::path::PathBuf| std::path::absolute(&p).unwrap_or(p);
            let request = fleetls_parent::rotation::RotateRequest {
                ca_cert: ca_cert.map(absolute),
                ca_key: ca_key.map(absolute),
                advance,
            };
            let report: fleetls_parent::rotation::RotateReport = Client::new(&target)?
                .post("/api/ca/rotate", &request)
                .await?;
            if json {
                print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
            } else {
                let r = &report.rotation;
                println!(
                    "CA rotation: phase {}  ({} -> {}); agents {}, trusting the new CA {}, on the new CA {}\n{}",
                    r.phase.as_str(),
                    r.old_ca,
                    r.new_ca,
                    r.agents,
                    r.trusting_new,
                    r.on_new_ca,
                    report.broker
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke {
            agent,
            reason,
            target,
            json,
        } => {
            let report: ops::RevokeReport = Client::new(&target)?
                .post("/api/revoke", &ops::RevokeRequest { agent, reason })
                .await?;
            if json {
                print_out(&(serde_json::to_string_pretty(&report)? + "\n"))?;
            } else {
                println!(
                    "revoked: {} ({}): {} certificate(s) on the revocation list, {} broker connection(s) closed; its key is banned",
                    report.name, report.id, report.certificates, report.connections_closed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SigningKey { data_dir } => {
            let path = fleetls_parent::signing_key_path(&data_dir);
            // Made here first (a parent not started yet): private, as serve makes it.
            fleetls_bus::files::create_private_dir(&data_dir)?;
            let key = fleetls_bus::seal::SigningKey::load_or_create(&path)?;
            println!("{}", key.public().fingerprint());
            Ok(ExitCode::SUCCESS)
        }
        Command::Security { target, json } => {
            let view: ops::SecurityView = Client::new(&target)?.get("/api/security").await?;
            if json {
                print_out(&(serde_json::to_string_pretty(&view)? + "\n"))?;
            } else {
                let total: u64 = view.counts.values().sum();
                println!("security events: {total}");
                for (kind, count) in &view.counts {
                    println!("  {kind:<16} {count}");
                }
                for e in &view.recent {
                    println!(
                        "{}  {:<16} {:<24} {}",
                        client::when(e.at),
                        e.kind,
                        e.name.as_deref().or(e.agent.as_deref()).unwrap_or("-"),
                        fleetls_parent::admission::printable(&e.detail, 300)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::BrokerTls {
            out,
            amqps_port,
            amqps_bind,
            nodes,
            target,
        } => {
            let out = std::path::absolute(&out).unwrap_or(out);
            let request = serde_json::json!({
                "out": out, "amqps_port": amqps_port, "amqps_bind": amqps_bind, "nodes": nodes,
            });
            let files: fleetls_parent::broker_switch::BrokerTlsFiles = Client::new(&target)?
                .post("/api/broker-tls", &request)
                .await?;
            for file in &files.files {
                println!("{}", file.display());
            }
            println!();
            if !nodes.is_empty() {
                println!("Each node's folder ({}/LABEL) holds its own certificate and fragments: use those on that node.", out.display());
            }
            println!("Append rabbitmq-migration.conf to the broker's rabbitmq.conf and restart RabbitMQ;");
            if files.final_refused.is_empty() {
                println!("after the migration use rabbitmq-final.conf instead and restart again.");
                if !files.kept_plain.is_empty() {
                    println!(
                        "rabbitmq-final.conf keeps plain AMQP open for {} agent(s) kept on plain by decision:",
                        files.kept_plain.len()
                    );
                    for agent in &files.kept_plain {
                        println!("  {agent}");
                    }
                }
            } else {
                println!(
                    "rabbitmq-final.conf (plain AMQP off) was not written: {} agent(s) would be cut off from the broker:",
                    files.final_refused.len()
                );
                for agent in &files.final_refused {
                    println!("  {agent}");
                }
                println!("Run broker-tls again once they are on AMQPS (`without-ssl`), or keep one on plain with `agents exclude NAME --reason TEXT`.");
            }
            println!(
                "Give the agents' shared user least privilege: rabbitmq-permissions.sh VHOST USER"
            );
            println!("(the parent keeps a user of its own with full rights on the vhost).");
            Ok(ExitCode::SUCCESS)
        }
        Command::Campaign { target, json } => {
            let client = Client::new(&target)?;
            if json {
                let progress: Option<fleetls_parent::campaign::Progress> =
                    client.get("/api/campaigns/current").await?;
                println!("{}", serde_json::to_string_pretty(&progress)?);
                return Ok(ExitCode::SUCCESS);
            }
            let (_, ended) = fleetls_parent::follow::follow(&client).await?;
            if ended {
                print_summary(&client.status().await?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn campaign_request(
    kind: Kind,
    args: &CampaignArgs,
    amqps: Option<String>,
    auth: Option<fleetls_proto::BrokerAuth>,
) -> ops::CampaignRequest {
    ops::CampaignRequest {
        kind,
        timeout_secs: Some(args.timeout.as_secs()),
        step_timeout_secs: Some(args.step_timeout.as_secs()),
        window: args.concurrency,
        amqps,
        auth,
        dry_run: false,
    }
}

async fn campaign(
    kind: Kind,
    args: CampaignArgs,
    amqps: Option<String>,
    auth: Option<fleetls_proto::BrokerAuth>,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.target)?;
    let request = campaign_request(kind, &args, amqps, auth);
    let start: ops::CampaignStart = client.post("/api/campaigns", &request).await?;
    let started = start
        .progress
        .ok_or_else(|| anyhow::anyhow!("the parent did not start the campaign"))?;
    if let (Some(amqps), Some(tls)) = (&start.plan.amqps, &start.plan.broker_tls) {
        eprintln!("{amqps} answers with {tls} and a certificate from the network's CA");
    }
    for down in &start.plan.amqps_down {
        eprintln!(
            "warning: {down}\n  (the other nodes answer: children try the list in turn and use this one once it is back)"
        );
    }
    if args.detach {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&started)?);
        } else {
            println!(
                "campaign {} started over {} child(ren), {} at once",
                started.id, started.total, started.window
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (progress, ended) = fleetls_parent::follow::follow(&client).await?;
    let overview = || client.get::<fleetls_parent::status::Overview>("/api/summary");
    if args.json {
        let status = overview().await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "campaign": progress,
                "summary": status.summary,
            }))?
        );
    } else if ended && kind.is_test() {
        // It names every child that did not pass: the whole list.
        print_summary(&client.status().await?);
    } else if ended {
        let status = overview().await?;
        println!(
            "{}: {} done, {} failed, {} did not take part; switched to SSL: {}, on AMQPS: {}",
            kind.as_str(),
            progress.passed,
            progress.failed,
            progress.did_not_participate,
            status.network.switched_to_ssl,
            status.network.broker_tls
        );
    }
    // 0 when every child passed; 4 when some failed or did not take part.
    Ok(if ended && progress.passed == progress.total {
        ExitCode::SUCCESS
    } else if ended {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(status: &fleetls_parent::status::Status) {
    let s = &status.summary;
    println!("Summary of the SSL switchover test:");
    println!("  properly passed:            {}", s.passed);
    println!("  with errors:                {}", s.with_errors);
    println!("  did not participate:        {}", s.did_not_participate);
    println!(
        "  version not supporting SSL: {}",
        s.version_not_supporting_ssl
    );
    println!("  mPOS:                       {}", s.mpos);
    println!("  excluded (kept plain):      {}", s.excluded);
    for agent in &status.agents {
        if let Some(result) = &agent.last_result {
            if result.state != fleetls_parent::campaign::ChildState::Passed {
                println!(
                    "  {:<24} {:<20} {} {}",
                    agent.name,
                    result.state,
                    result.cause.as_deref().unwrap_or("-"),
                    result.message.as_deref().unwrap_or("")
                );
            }
        }
    }
}

fn print_settings(view: &ops::SettingsView, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
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
    println!("SSL port:                        {}", s.port);
    println!("SSL port for local parent agents: {}", s.local_parent_port);
    println!("DNS names of the parent:         {}", list(s.names.clone()));
    println!(
        "IP addresses of the parent:      {}",
        list(s.ips.iter().map(|ip| ip.to_string()).collect())
    );
    println!(
        "DNS names of the broker:         {}",
        list(s.broker_names.clone())
    );
    println!(
        "IP addresses of the broker:      {}",
        list(s.broker_ips.iter().map(|ip| ip.to_string()).collect())
    );
    println!("lowest TLS version:              {}", s.min_tls.as_str());
    println!(
        "cipher suites:                   {}",
        if s.cipher_suites.is_empty() {
            "every suite of the crypto provider".to_owned()
        } else {
            s.cipher_suites.join(";")
        }
    );
    let whose = |own: bool| {
        if own {
            "the operator's own"
        } else {
            "issued by fleetls's CA"
        }
    };
    println!(
        "SSL port certificate:            {}",
        whose(view.own.parent)
    );
    println!(
        "broker certificate:              {}",
        whose(view.own.broker)
    );
    println!(
        "state:                           {}",
        if view.frozen {
            "frozen (certificates exist; `certs reset` to change)"
        } else {
            "editable"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn print_json_or<T: serde::Serialize>(
    value: &T,
    json: bool,
    text: impl FnOnce(&T),
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text(value);
    }
    Ok(ExitCode::SUCCESS)
}

async fn certs(action: CertsAction) -> anyhow::Result<ExitCode> {
    match action {
        CertsAction::Generate {
            ignore_old,
            ca_cert,
            ca_key,
            target,
            json,
        } => {
            let absolute = |p: Option<PathBuf>| p.map(|p| std::path::absolute(&p).unwrap_or(p));
            let request = ops::GenerateRequest {
                ignore_old,
                ca_cert: absolute(ca_cert),
                ca_key: absolute(ca_key),
            };
            let report: ops::GenerateReport = Client::new(&target)?
                .post("/api/certs/generate", &request)
                .await?;
            print_json_or(&report, json, |r| {
                println!("Certificates generated in {}", r.directory.display());
                println!("CA fingerprint: {}", r.ca_fingerprint);
                if r.company_ca {
                    println!("Signed by the company CA; children get the whole chain.");
                }
                for old in &r.old_versions {
                    println!("version not supporting SSL: {old}");
                }
            })
        }
        CertsAction::Send { all, target, json } => {
            let report: ops::SendReport = Client::new(&target)?
                .post(
                    "/api/certs/send",
                    &ops::SendRequest {
                        all,
                        ..Default::default()
                    },
                )
                .await?;
            print_json_or(&report, json, |r| {
                println!(
                    "Information queued for {} child(ren); {} already hold a certificate; {} not eligible (old version or mPOS).",
                    r.queued, r.already_have_certificate, r.not_eligible
                );
            })
        }
        CertsAction::Renew {
            agents,
            all: _,
            target,
            json,
        } => {
            let request = ops::SendRequest {
                all: false,
                renew: true,
                agents,
            };
            let report: ops::SendReport = Client::new(&target)?
                .post("/api/certs/send", &request)
                .await?;
            print_json_or(&report, json, |r| {
                println!(
                    "Renewal asked of {} child(ren); each makes a new key and gets a new certificate.",
                    r.queued
                );
            })
        }
        CertsAction::Reset { yes, target } => {
            if !yes {
                use std::io::{BufRead, IsTerminal, Write};
                if !std::io::stdin().is_terminal() {
                    eprintln!("error: certs reset discards the CA and every certificate; confirm with --yes");
                    return Ok(ExitCode::from(2));
                }
                print!(
                    "This discards the CA and every certificate issued. Type \"reset\" to go on: "
                );
                std::io::stdout().flush()?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                if line.trim() != "reset" {
                    eprintln!("not confirmed; nothing changed");
                    return Ok(ExitCode::from(3));
                }
            }
            let report: ops::ResetReport = Client::new(&target)?
                .post(
                    "/api/certs/reset",
                    &ops::ResetRequest {
                        confirm: "reset".into(),
                    },
                )
                .await?;
            println!(
                "Certificates moved to {}; the SSL settings can be changed again.",
                report.moved_to.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
