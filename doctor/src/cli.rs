//! The `doctor` subcommand both programs share: its flags and how the
//! report is printed and turned into an exit code.

use crate::render::render;
use crate::report::{DoctorReport, Limits, Offer};

/// The flags of `doctor` in both programs.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// HOST:PORT to check
    pub target: String,
    /// The data dir whose CA and certificate are used (the parent's or the child's)
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    pub data_dir: std::path::PathBuf,
    /// Trust this CA file instead of the data dir's
    #[arg(long, env = "FLEETLS_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Offer only this TLS version (1.2 or 1.3), to see what a device
    /// limited to it gets; both by default
    #[arg(long)]
    pub tls_version: Option<Offer>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

impl DoctorArgs {
    /// The default time limits, with the TLS versions asked for.
    pub fn limits(&self) -> Limits {
        Limits {
            offer: self.tls_version.unwrap_or_default(),
            ..Limits::default()
        }
    }
}

/// Prints a report (as JSON with `json`) and gives the exit code: 0 when
/// no check failed, 4 when one did.
pub fn print(report: &DoctorReport, json: bool) -> std::process::ExitCode {
    let text = if json {
        serde_json::to_string_pretty(report).expect("a report serialises") + "\n"
    } else {
        render(report)
    };
    // A reader that went away (`| head`) ends the output, not the program.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing to stdout: {e}");
        }
    }
    if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(4)
    }
}
