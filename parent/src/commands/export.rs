//! `fleetls-parent export`: a CA bundle and password-protected .pfx files
//! for manual installation (mPOS, or any chosen child).

use std::path::PathBuf;
use std::process::ExitCode;

use fleetls_parent::client::{self, AdminTarget, Client};
use fleetls_parent::export::{read_password, ExportReport, ExportRequest};

use super::output::print_json_or;

/// The flags of `export`.
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
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
}

/// Runs `export`: exit code 2 when the password cannot be read.
pub(crate) async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let password = match read_password(args.password_file.as_deref()) {
        Ok(password) => password,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let out = std::path::absolute(&args.out).unwrap_or(args.out);
    let request = ExportRequest {
        out,
        agents: args.agents,
        mpos: args.mpos,
        password,
        legacy: args.legacy,
    };
    let report: ExportReport = Client::new(&args.target)?
        .post("/api/export", &request)
        .await?;
    print_json_or(&report, args.json, |r| {
        for file in &r.files {
            fleetls_bus::outln!("{}", file.display());
        }
        for c in &r.certificates {
            fleetls_bus::outln!(
                "{}: certificate {} (valid until {}) in {}",
                c.name,
                c.serial,
                client::when(c.not_after.max(0) as u64 * 1000),
                c.file.display()
            );
        }
    })
}
