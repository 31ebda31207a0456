//! `fleetls-parent signing-key`: the fingerprint of the key the parent
//! signs every command with, which children pin.

use std::path::PathBuf;
use std::process::ExitCode;

/// The flags of `signing-key`.
#[derive(clap::Args)]
pub(crate) struct SigningKeyArgs {
    /// The parent's data dir
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    data_dir: PathBuf,
}

/// Runs `signing-key`: reads the key from the data dir, made there if
/// missing.
pub(crate) fn run(args: SigningKeyArgs) -> anyhow::Result<ExitCode> {
    let path = fleetls_parent::signing_key_path(&args.data_dir);
    // Made here first (a parent not started yet): private, as serve makes it.
    fleetls_bus::files::create_private_dir(&args.data_dir)?;
    let key = fleetls_bus::seal::SigningKey::load_or_create(&path)?;
    fleetls_bus::outln!("{}", key.public().fingerprint());
    Ok(ExitCode::SUCCESS)
}
