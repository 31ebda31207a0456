//! `fleetls-parent certs generate | send | renew | reset`: the CA and the
//! server certificates, "Send information" to the children, renewal now,
//! and discarding them all.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use fleetls_parent::client::{AdminTarget, Client};
use fleetls_parent::ops::{
    GenerateReport, GenerateRequest, ResetReport, ResetRequest, SendReport, SendRequest,
};

use super::output::{confirm, print_json_or};

/// What `certs` does.
#[derive(Subcommand)]
pub(crate) enum CertsAction {
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
        #[arg(
            long = "agent",
            value_name = "NAME|ID",
            required_unless_present = "all"
        )]
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

/// Runs `certs ACTION`.
pub(crate) async fn run(action: CertsAction) -> anyhow::Result<ExitCode> {
    match action {
        CertsAction::Generate {
            ignore_old,
            ca_cert,
            ca_key,
            target,
            json,
        } => generate(ignore_old, ca_cert, ca_key, &target, json).await,
        CertsAction::Send { all, target, json } => {
            let request = SendRequest {
                all,
                ..Default::default()
            };
            let report: SendReport = Client::new(&target)?
                .post("/api/certs/send", &request)
                .await?;
            print_json_or(&report, json, |r| {
                fleetls_bus::outln!(
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
            let request = SendRequest {
                all: false,
                renew: true,
                agents,
            };
            let report: SendReport = Client::new(&target)?
                .post("/api/certs/send", &request)
                .await?;
            print_json_or(&report, json, |r| {
                fleetls_bus::outln!(
                    "Renewal asked of {} child(ren); each makes a new key and gets a new certificate.",
                    r.queued
                );
            })
        }
        CertsAction::Reset { yes, target } => reset(yes, &target).await,
    }
}

/// `certs generate`: the company CA's files are read by the parent, so
/// their paths go absolute.
async fn generate(
    ignore_old: bool,
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    target: &AdminTarget,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let absolute = |p: Option<PathBuf>| p.map(|p| std::path::absolute(&p).unwrap_or(p));
    let request = GenerateRequest {
        ignore_old,
        ca_cert: absolute(ca_cert),
        ca_key: absolute(ca_key),
    };
    let report: GenerateReport = Client::new(target)?
        .post("/api/certs/generate", &request)
        .await?;
    print_json_or(&report, json, |r| {
        fleetls_bus::outln!("Certificates generated in {}", r.directory.display());
        fleetls_bus::outln!("CA fingerprint: {}", r.ca_fingerprint);
        if r.company_ca {
            fleetls_bus::outln!("Signed by the company CA; children get the whole chain.");
        }
        for old in &r.old_versions {
            fleetls_bus::outln!("version not supporting SSL: {old}");
        }
    })
}

/// `certs reset`: asks first unless `yes`.
async fn reset(yes: bool, target: &AdminTarget) -> anyhow::Result<ExitCode> {
    if !yes {
        if let Some(code) = confirm(
            "certs reset discards the CA and every certificate; confirm with --yes",
            "This discards the CA and every certificate issued. Type \"reset\" to go on: ",
            "reset",
        )? {
            return Ok(code);
        }
    }
    let request = ResetRequest {
        confirm: "reset".into(),
    };
    let report: ResetReport = Client::new(target)?
        .post("/api/certs/reset", &request)
        .await?;
    fleetls_bus::outln!(
        "Certificates moved to {}; the SSL settings can be changed again.",
        report.moved_to.display()
    );
    Ok(ExitCode::SUCCESS)
}
