//! Export for manual installation: what an mPOS device (which cannot send a
//! CSR) or any chosen child needs, as files an operator carries to it.
//!
//! - `ca.cer` (the root CA, DER: what Android installs) and `ca.pem` (the CA chain);
//! - `truststore.jks`, a Java truststore holding the CA, protected by the password;
//! - `<name>.pfx` per agent: a key made here, its certificate and the CA chain,
//!   PKCS#12 protected by the password — PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC)
//!   with an HMAC-SHA256 MAC by default, or `legacy` pbeWithSHAAnd3-KeyTripleDES-CBC
//!   with an HMAC-SHA1 MAC for old Windows.
//!
//! This is the one place where a private key leaves the parent, and only
//! inside a password-protected `.pfx` (mode 0600, in a folder made 0700). Every
//! file is written to a temporary name first and renamed once all are ready,
//! so a failure leaves nothing half-written.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fleetls_proto::AgentKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::pki::{pem_certs, Pki, PkiError};
use crate::registry::{Agent, Registry, RegistryError};
use crate::settings::SslSettings;
pub use fleetls_bus::stores::{jks_truststore, pkcs12};

/// The environment variable the export password is read from when no
/// password file is given (never from the command line).
pub const PASSWORD_ENV: &str = "FLEETLS_EXPORT_PASSWORD";

/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = fleetls_bus::stores::MIN_PASSWORD_CHARS;

/// Why an export was not done.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A value given cannot be used (the password, an agent name).
    #[error("{0}")]
    BadRequest(String),
    /// The export is not possible in the current state (an mPOS device
    /// without a DNS name of the parent, a local parent agent).
    #[error("{0}")]
    Refused(String),
    /// A file or folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate could not be issued.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The registry could not record an issued certificate.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The PKCS#12 file could not be built.
    #[error("cannot build the PKCS#12 file for {agent}: {reason}")]
    Keystore {
        /// The agent's name.
        agent: String,
        /// What failed.
        reason: String,
    },
}

/// One certificate issued by an export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportedCertificate {
    /// The agent.
    pub agent: Uuid,
    /// Its name.
    pub name: String,
    /// The certificate's serial, hex.
    pub serial: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// The `.pfx` holding it.
    pub file: PathBuf,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportReport {
    /// Every file written, CA files first.
    pub files: Vec<PathBuf>,
    /// The certificates issued, one per agent.
    #[serde(default)]
    pub certificates: Vec<ExportedCertificate>,
}

/// What the admin API is asked (`POST /api/export`). The password travels
/// in the body over loopback, never on a command line, and is never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct ExportRequest {
    /// The folder to write into, on the parent's machine (absolute).
    pub out: PathBuf,
    /// Agents to make a `.pfx` for, by name or id.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Also every registered mPOS agent.
    #[serde(default)]
    pub mpos: bool,
    /// The password of the `.pfx` files and of the truststore.
    pub password: String,
    /// 3DES/SHA-1 `.pfx` for old Windows instead of AES-256/SHA-256.
    #[serde(default)]
    pub legacy: bool,
}

impl fmt::Debug for ExportRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportRequest")
            .field("out", &self.out)
            .field("agents", &self.agents)
            .field("mpos", &self.mpos)
            .field("password", &"<redacted>")
            .field("legacy", &self.legacy)
            .finish()
    }
}

/// Reads the export password: from `file` when given (one trailing newline
/// is dropped), else from [`PASSWORD_ENV`]. Refuses a missing, empty or
/// short password.
pub fn read_password(file: Option<&Path>) -> Result<String, String> {
    read_password_with(file, |name| std::env::var(name).ok())
}

/// [`read_password`] with the environment given as a lookup (for tests).
pub fn read_password_with(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let password = match file {
        Some(path) => {
            let mut text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            text
        }
        None => env(PASSWORD_ENV).ok_or_else(|| {
            format!(
                "no export password: give --password-file FILE or set {PASSWORD_ENV} \
                 (a password is never taken from the command line)"
            )
        })?,
    };
    check_password(&password)?;
    Ok(password)
}

/// Refuses an empty password or one shorter than [`MIN_PASSWORD_CHARS`].
pub fn check_password(password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("the export password is empty".into());
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the export password is too short: use at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    Ok(())
}

/// The agents an export request names: each of `wanted` (a name or an id),
/// plus every mPOS agent when `mpos`. An unknown or ambiguous name is an error.
pub fn select_agents(
    agents: &[Agent],
    wanted: &[String],
    mpos: bool,
) -> Result<Vec<Agent>, ExportError> {
    let mut chosen: Vec<Agent> = Vec::new();
    let mut add = |agent: &Agent| {
        if !chosen.iter().any(|a| a.id == agent.id) {
            chosen.push(agent.clone());
        }
    };
    for want in wanted {
        let by_id = want.parse::<Uuid>().ok();
        let matches: Vec<&Agent> = agents
            .iter()
            .filter(|a| Some(a.id) == by_id || a.name == *want)
            .collect();
        match matches.as_slice() {
            [one] => add(one),
            [] => {
                return Err(ExportError::BadRequest(format!(
                    "no registered agent is named {want:?}: see `fleetls-parent status`"
                )))
            }
            many => {
                let ids: Vec<String> = many.iter().map(|a| a.id.to_string()).collect();
                return Err(ExportError::BadRequest(format!(
                    "{} agents are named {want:?} ({}): give the id instead",
                    many.len(),
                    ids.join(", ")
                )));
            }
        }
    }
    if mpos {
        agents
            .iter()
            .filter(|a| a.kind == AgentKind::Mpos)
            .for_each(&mut add);
    }
    Ok(chosen)
}

/// Writes the CA files, the truststore and one `.pfx` per agent into `out`
/// (created 0700), issuing each agent a certificate with a key made here and
/// recording it in the registry. Refused as a whole, before anything is
/// issued, for a local parent agent (it needs a server certificate with its
/// own names: it makes its key and CSR itself) and for mPOS agents while the
/// settings hold no DNS name (mPOS cannot connect to an IP address).
pub fn export(
    pki: &Pki,
    registry: &Registry,
    settings: &SslSettings,
    agents: &[Agent],
    out: &Path,
    password: &str,
    legacy: bool,
) -> Result<ExportReport, ExportError> {
    check_password(password).map_err(ExportError::BadRequest)?;
    exportable(settings, agents)?;
    let ca = pem_certs(&pki.ca_chain_pem)?;
    let root = ca.last().expect("pem_certs is never empty");
    let trusted: Vec<(String, &[u8])> = ca
        .iter()
        .rev()
        .enumerate()
        .map(|(i, cert)| match i {
            0 => ("fleetls-ca".to_owned(), cert.as_ref()),
            i => (format!("fleetls-ca-{i}"), cert.as_ref()),
        })
        .collect();
    let mut files: Vec<(PathBuf, Vec<u8>, u32)> = vec![
        (out.join("ca.cer"), root.to_vec(), 0o644),
        (
            out.join("ca.pem"),
            pki.ca_chain_pem.clone().into_bytes(),
            0o644,
        ),
        (
            out.join("truststore.jks"),
            jks_truststore(&trusted, password, fleetls_proto::now_ms()),
            0o644,
        ),
    ];

    let mut issued = Vec::new();
    let mut used_names: Vec<String> = Vec::new();
    for agent in agents {
        let (certificate, key_pem) = pki.issue_with_new_key(agent.id)?;
        let pfx = pkcs12(
            &certificate.chain_pem,
            &key_pem,
            &agent.name,
            password,
            legacy,
        )
        .map_err(|reason| ExportError::Keystore {
            agent: agent.name.clone(),
            reason,
        })?;
        let mut stem = file_stem(&agent.name);
        if used_names.contains(&stem) || ["ca", "truststore"].contains(&stem.as_str()) {
            stem = format!("{stem}-{}", &agent.id.simple().to_string()[..8]);
        }
        used_names.push(stem.clone());
        let path = out.join(format!("{stem}.pfx"));
        files.push((path.clone(), pfx, 0o600));
        issued.push((agent, certificate, path));
    }

    write_all(out, &files, &issued, registry)?;
    tracing::info!(
        out = %out.display(),
        agents = issued.len(),
        legacy,
        "export written"
    );
    Ok(ExportReport {
        files: files.into_iter().map(|(path, _, _)| path).collect(),
        certificates: issued
            .into_iter()
            .map(|(agent, certificate, file)| ExportedCertificate {
                agent: agent.id,
                name: agent.name.clone(),
                serial: certificate.serial,
                not_after: certificate.not_after,
                file,
            })
            .collect(),
    })
}

/// Refuses an export for a local parent (it makes its own key) and one for
/// mPOS devices while the settings hold no DNS name.
fn exportable(settings: &SslSettings, agents: &[Agent]) -> Result<(), ExportError> {
    let local_parents: Vec<&str> = agents
        .iter()
        .filter(|a| a.kind == AgentKind::LocalParent)
        .map(|a| a.name.as_str())
        .collect();
    if !local_parents.is_empty() {
        return Err(ExportError::Refused(format!(
            "{} is a local parent agent: it serves TLS with its own names, so it makes its own key \
             and CSR (`certs send`); export is for mPOS devices and children",
            local_parents.join(", ")
        )));
    }
    let mpos: Vec<&str> = agents
        .iter()
        .filter(|a| a.kind == AgentKind::Mpos)
        .map(|a| a.name.as_str())
        .collect();
    if !mpos.is_empty() && settings.names.is_empty() {
        return Err(ExportError::Refused(format!(
            "mPOS cannot use an IP: add a DNS name with settings set --names \
             (the SSL settings hold only IP addresses; mPOS: {})",
            mpos.join(", ")
        )));
    }

    Ok(())
}

/// Writes every file (staged, then renamed into place) and records the
/// certificates: all or nothing.
fn write_all(
    out: &Path,
    files: &[(PathBuf, Vec<u8>, u32)],
    issued: &[(&Agent, crate::pki::Issued, PathBuf)],
    registry: &Registry,
) -> Result<(), ExportError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(|source| ExportError::Io {
            path: out.to_owned(),
            source,
        })?;
    let mut staged = Vec::new();
    let result = (|| {
        for (path, bytes, mode) in files {
            staged.push(stage(path, bytes, *mode)?);
        }
        for (agent, certificate, _) in issued {
            registry.record_certificate(agent.id, certificate)?;
        }
        for ((path, _, _), tmp) in files.iter().zip(&staged) {
            std::fs::rename(tmp, path).map_err(|source| ExportError::Io {
                path: path.clone(),
                source,
            })?;
        }
        if let Ok(dir) = std::fs::File::open(out) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        for tmp in &staged {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    Ok(())
}

/// The export as the admin API runs it: finds the agents the request names
/// and exports for them with the parent's CA and settings.
pub fn export_op(
    app: &crate::app::App,
    request: &ExportRequest,
) -> Result<ExportReport, crate::op_error::OpError> {
    use crate::op_error::OpError;
    let pki = app.pki().ok_or_else(|| {
        OpError::Refused("there are no certificates yet: run `certs generate` first".into())
    })?;
    if !request.out.is_absolute() {
        return Err(OpError::BadRequest(format!(
            "the export folder must be an absolute path on the parent's machine, not {}",
            request.out.display()
        )));
    }
    let registered = app
        .registry
        .agents()
        .map_err(|e| OpError::Internal(e.to_string()))?;
    let agents = select_agents(&registered, &request.agents, request.mpos)?;
    Ok(export(
        &pki,
        &app.registry,
        &app.settings(),
        &agents,
        &request.out,
        &request.password,
        request.legacy,
    )?)
}

impl From<ExportError> for crate::op_error::OpError {
    fn from(e: ExportError) -> Self {
        use crate::op_error::OpError;
        match e {
            ExportError::BadRequest(m) => OpError::BadRequest(m),
            ExportError::Refused(m) => OpError::Refused(m),
            ExportError::Io { .. } => OpError::BadRequest(e.to_string()),
            other => OpError::Internal(other.to_string()),
        }
    }
}

/// A file name from an agent name: letters, digits, `.`, `-` and `_` kept,
/// anything else (a `/` for one) replaced by `_`.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = stem.trim_start_matches('.');
    if stem.is_empty() {
        "agent".to_owned()
    } else {
        stem.to_owned()
    }
}

/// Writes `bytes` to a temporary name beside `path`, created with `mode` and
/// synced; returns the temporary name to rename once everything is ready.
fn stage(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf, ExportError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |source| ExportError::Io {
        path: tmp.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "correct horse\n").unwrap();
        let no_env = |_: &str| None;
        assert_eq!(
            read_password_with(Some(&file), no_env).unwrap(),
            "correct horse"
        );
        let env = |name: &str| (name == PASSWORD_ENV).then(|| "from-the-env".to_owned());
        assert_eq!(
            read_password_with(Some(&file), env).unwrap(),
            "correct horse",
            "the file wins"
        );
        assert_eq!(read_password_with(None, env).unwrap(), "from-the-env");
        assert!(read_password_with(None, no_env)
            .unwrap_err()
            .contains(PASSWORD_ENV));
        std::fs::write(&file, "short\n").unwrap();
        assert!(read_password_with(Some(&file), no_env)
            .unwrap_err()
            .contains("too short"));
        std::fs::write(&file, "\n").unwrap();
        assert!(read_password_with(Some(&file), no_env)
            .unwrap_err()
            .contains("empty"));
        assert!(
            read_password_with(Some(&dir.path().join("missing")), no_env)
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_stem("till-1"), "till-1");
        assert_eq!(file_stem("../etc/passwd"), "_etc_passwd");
        assert_eq!(file_stem("Caisse n°2"), "Caisse_n_2");
        assert_eq!(file_stem(""), "agent");
    }
}
