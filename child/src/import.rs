//! `fleetls-child import --pfx FILE --password-file F --data-dir DIR`: the
//! manual path of an agent that cannot send a CSR (an mPOS device). The
//! operator exports its identity on the parent (`fleetls-parent export
//! --mpos`), carries the `.pfx` to the device and installs it here; the
//! agent then holds a certificate like any other and moves to AMQPS with
//! `switch-broker`. Everything is checked before anything is written: the
//! identity is this agent's (CN = its id), the key belongs to the
//! certificate, the certificate is signed by the CA in the file, still
//! valid, and that CA is the one this agent already trusts, if any. The
//! files are then written by [`CertStore::install_imported`], as every
//! other certificate of the agent.

use std::path::{Path, PathBuf};

use clap::Args;
use rcgen::KeyPair;
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::certs::{fingerprint, CertStore};
use crate::layout::Layout;

/// `fleetls-child import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The agent's data dir (it must have run once: its identity is there)
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The PKCS#12 file `fleetls-parent export` wrote for this agent
    #[arg(long)]
    pub pfx: PathBuf,
    /// A file holding the export's password (one line)
    #[arg(long)]
    pub password_file: PathBuf,
    /// Also write the identity in this store format, as `run` does: pem,
    /// pkcs12 or jks (give the same as to `run`)
    #[arg(long, env = "FLEETLS_TRUST_STORE_FORMAT")]
    pub trust_store_format: Option<String>,
    /// The stores' password (pkcs12, jks)
    #[arg(long, env = "FLEETLS_TRUST_STORE_PASSWORD_FILE")]
    pub trust_store_password_file: Option<PathBuf>,
}

/// What was installed.
#[derive(Debug)]
pub struct Imported {
    /// The agent.
    pub agent: Uuid,
    /// The certificate's serial, hex.
    pub serial: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
}

/// Checks and installs the identity in `args.pfx`; `Err` says what is
/// wrong and what to do, and nothing was written.
pub fn import(args: &ImportArgs) -> Result<Imported, String> {
    let agent = agent_id(&args.data_dir)?;
    let stores = crate::stores::TrustStores::from_flags(
        args.trust_store_format.as_deref(),
        args.trust_store_password_file.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let password = read_password(&args.password_file)?;
    let data = std::fs::read(&args.pfx).map_err(|e| format!("{}: {e}", args.pfx.display()))?;
    let store = p12_keystore::KeyStore::from_pkcs12(&data, &password).map_err(|e| {
        format!(
            "{}: not a PKCS#12 file this password opens ({e}); check --password-file",
            args.pfx.display()
        )
    })?;
    let (_, chain) = store.private_key_chain().ok_or_else(|| {
        format!(
            "{}: holds no private key with its certificate; export the agent's identity with `fleetls-parent export`",
            args.pfx.display()
        )
    })?;
    let certs: Vec<&[u8]> = chain.chain().iter().map(|c| c.as_der()).collect();
    let [leaf_der, ca @ ..] = certs.as_slice() else {
        return Err(format!("{}: holds no certificate", args.pfx.display()));
    };
    if ca.is_empty() {
        return Err(format!(
            "{}: holds no CA chain after the certificate; export it again with `fleetls-parent export`",
            args.pfx.display()
        ));
    }
    let (_, leaf) = X509Certificate::from_der(leaf_der)
        .map_err(|e| format!("{}: the certificate is unreadable: {e}", args.pfx.display()))?;
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    if cn != agent.to_string() {
        return Err(format!(
            "{}: this identity is for agent {cn:?}, but this data dir is agent {agent}; \
             export the one for this agent (`fleetls-parent export --agent {agent}`)",
            args.pfx.display()
        ));
    }
    if !leaf.validity().is_valid() {
        return Err(format!(
            "{}: the certificate is not valid now (valid {} to {}); export a new one",
            args.pfx.display(),
            leaf.validity().not_before,
            leaf.validity().not_after
        ));
    }
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", chain.key().to_vec()));
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| format!("{}: the private key is unusable: {e}", args.pfx.display()))?;
    use rcgen::PublicKeyData;
    if leaf.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(format!(
            "{}: the private key does not belong to the certificate",
            args.pfx.display()
        ));
    }
    let (_, issuer) = X509Certificate::from_der(ca[0])
        .map_err(|e| format!("{}: the CA is unreadable: {e}", args.pfx.display()))?;
    leaf.verify_signature(Some(issuer.public_key()))
        .map_err(|_| {
            format!(
                "{}: the certificate is not signed by the CA that comes with it",
                args.pfx.display()
            )
        })?;
    let certs_store = CertStore::new(&args.data_dir).with_stores(stores);
    let root = fingerprint(ca[ca.len() - 1]);
    if let Some(trusted) = certs_store.stored_ca_fingerprint() {
        if trusted != root {
            return Err(format!(
                "{}: its CA ({root}) is not the one this agent trusts ({trusted}); \
                 export from the parent this agent belongs to",
                args.pfx.display()
            ));
        }
    }
    let pem_of = |der: &[u8]| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
    let chain_pem: String = certs.iter().map(|der| pem_of(der)).collect();
    let ca_pem: String = ca.iter().map(|der| pem_of(der)).collect();
    // The key goes in last, by rename: until then no half identity shows.
    certs_store
        .install_imported(&key_pem, &ca_pem, &chain_pem)
        .map_err(|e| format!("installing the identity failed: {e}"))?;
    certs_store.keep_stores();
    Ok(Imported {
        agent,
        serial: leaf.raw_serial_as_string().replace(':', ""),
        not_after: leaf.validity().not_after.to_string(),
    })
}

/// The agent id of a data dir that has run (its `identity.toml`).
fn agent_id(data_dir: &Path) -> Result<Uuid, String> {
    let path = Layout::new(data_dir).identity();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e}; run `fleetls-child run --kind mpos --data-dir {}` once first, so the agent registers",
            path.display(),
            data_dir.display()
        )
    })?;
    let identity: crate::identity::Identity =
        toml::from_str(&text).map_err(|e| format!("{}: unreadable: {e}", path.display()))?;
    Ok(identity.id)
}

/// The password in `path`: one line, its trailing newline dropped.
fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(format!("{}: the password file is empty", path.display()));
    }
    Ok(password.to_owned())
}
