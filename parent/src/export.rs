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
use p12_keystore::{Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::pki::{pem_certs, Pki, PkiError};
use crate::registry::{Agent, Registry, RegistryError};
use crate::settings::SslSettings;

/// The environment variable the export password is read from when no
/// password file is given (never from the command line).
pub const PASSWORD_ENV: &str = "FLEETLS_EXPORT_PASSWORD";

/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// PBKDF2 / PKCS#12 KDF iterations of a modern `.pfx`.
const MODERN_ITERATIONS: u64 = 10_000;
/// Iterations of a legacy `.pfx`: what OpenSSL 1.x wrote, which every old
/// Windows imports.
const LEGACY_ITERATIONS: u64 = 2_048;

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
        for (path, bytes, mode) in &files {
            staged.push(stage(path, bytes, *mode)?);
        }
        for (agent, certificate, _) in &issued {
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

/// The export as the admin API runs it: finds the agents the request names
/// and exports for them with the parent's CA and settings.
pub fn export_op(
    app: &crate::app::App,
    request: &ExportRequest,
) -> Result<ExportReport, crate::ops::OpError> {
    use crate::ops::OpError;
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

impl From<ExportError> for crate::ops::OpError {
    fn from(e: ExportError) -> Self {
        use crate::ops::OpError;
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

/// A PKCS#12 file with the key (PEM, PKCS#8) and its chain (PEM, leaf
/// first), under `alias`, protected by `password`: PBES2 with
/// PBKDF2-HMAC-SHA256 and AES-256-CBC and an HMAC-SHA256 MAC, or with
/// `legacy` pbeWithSHAAnd3-KeyTripleDES-CBC and an HMAC-SHA1 MAC.
pub fn pkcs12(
    chain_pem: &str,
    key_pem: &str,
    alias: &str,
    password: &str,
    legacy: bool,
) -> Result<Vec<u8>, String> {
    let chain = pem_certs(chain_pem).map_err(|e| e.to_string())?;
    let key = pem::parse(key_pem).map_err(|e| format!("unreadable private key: {e}"))?;
    if key.tag() != "PRIVATE KEY" {
        return Err(format!(
            "the private key is {:?}, not PKCS#8 \"PRIVATE KEY\"",
            key.tag()
        ));
    }
    let certificates = chain
        .iter()
        .map(|der| Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // The usual localKeyId: the SHA-1 of the certificate the key belongs to.
    let local_key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &chain[0]);
    let entry =
        p12_keystore::PrivateKeyChain::new(key.contents(), local_key_id.as_ref(), certificates);
    let mut store = KeyStore::new();
    store.add_entry(alias, KeyStoreEntry::PrivateKeyChain(entry));
    let writer = store.writer(password);
    let writer = if legacy {
        writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .encryption_iterations(LEGACY_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .mac_iterations(LEGACY_ITERATIONS)
    } else {
        writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .encryption_iterations(MODERN_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha256)
            .mac_iterations(MODERN_ITERATIONS)
    };
    writer.write().map_err(|e| e.to_string())
}

/// The JKS magic number.
const JKS_MAGIC: u32 = 0xFEED_FEED;
/// The JKS version written (2: entries carry their certificate type).
const JKS_VERSION: u32 = 2;
/// The tag of a trusted-certificate entry.
const JKS_TRUSTED_CERT: u32 = 2;
/// What Java's JKS mixes into its integrity digest after the password.
const JKS_WHITENER: &[u8] = b"Mighty Aphrodite";

/// A Java KeyStore (JKS) truststore holding each `(alias, DER certificate)`
/// as a trusted-certificate entry, as `keytool -importcert` writes it.
///
/// The format, all integers big-endian: magic `0xFEEDFEED`, version 2, the
/// entry count; per entry the tag 2, the alias (u16 length, modified UTF-8;
/// lowercase, as JKS aliases are case-insensitive), the creation time (ms,
/// u64), the certificate type `"X.509"` (u16 length, bytes) and the
/// certificate (u32 length, DER); then the SHA-1 of the password as UTF-16BE,
/// the bytes `"Mighty Aphrodite"` and everything before it. A truststore
/// holds no secret: the password only protects its integrity.
pub fn jks_truststore(entries: &[(String, &[u8])], password: &str, created_ms: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&JKS_MAGIC.to_be_bytes());
    out.extend_from_slice(&JKS_VERSION.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (alias, der) in entries {
        out.extend_from_slice(&JKS_TRUSTED_CERT.to_be_bytes());
        java_utf(&mut out, &alias.to_lowercase());
        out.extend_from_slice(&created_ms.to_be_bytes());
        java_utf(&mut out, "X.509");
        out.extend_from_slice(&(der.len() as u32).to_be_bytes());
        out.extend_from_slice(der);
    }
    let digest = jks_digest(password, &out);
    out.extend_from_slice(digest.as_ref());
    out
}

/// The integrity digest of a JKS body.
fn jks_digest(password: &str, body: &[u8]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for unit in password.encode_utf16() {
        ctx.update(&unit.to_be_bytes());
    }
    ctx.update(JKS_WHITENER);
    ctx.update(body);
    ctx.finish()
}

/// Java's `DataOutput.writeUTF`: a u16 byte length, then modified UTF-8
/// (UTF-16 units; U+0000 as two bytes; no four-byte forms).
fn java_utf(out: &mut Vec<u8>, text: &str) {
    let mut bytes = Vec::new();
    for unit in text.encode_utf16() {
        match unit {
            0x0001..=0x007f => bytes.push(unit as u8),
            0x0000 | 0x0080..=0x07ff => {
                bytes.push(0xc0 | (unit >> 6) as u8);
                bytes.push(0x80 | (unit & 0x3f) as u8);
            }
            _ => {
                bytes.push(0xe0 | (unit >> 12) as u8);
                bytes.push(0x80 | ((unit >> 6) & 0x3f) as u8);
                bytes.push(0x80 | (unit & 0x3f) as u8);
            }
        }
    }
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a JKS truststore back: (aliases, certificates), checking the digest.
    fn read_jks(bytes: &[u8], password: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let (body, digest) = bytes.split_at(bytes.len() - 20);
        if jks_digest(password, body).as_ref() != digest {
            return Err("digest mismatch".into());
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let slice = &body[at..at + n];
            at += n;
            slice.to_vec()
        };
        let u32_of = |b: Vec<u8>| u32::from_be_bytes(b.try_into().unwrap());
        assert_eq!(u32_of(take(4)), JKS_MAGIC);
        assert_eq!(u32_of(take(4)), JKS_VERSION);
        let count = u32_of(take(4));
        let mut entries = Vec::new();
        for _ in 0..count {
            assert_eq!(u32_of(take(4)), JKS_TRUSTED_CERT);
            let len = u16::from_be_bytes(take(2).try_into().unwrap()) as usize;
            let alias = String::from_utf8(take(len)).unwrap();
            take(8);
            let len = u16::from_be_bytes(take(2).try_into().unwrap()) as usize;
            assert_eq!(take(len), b"X.509");
            let len = u32_of(take(4)) as usize;
            entries.push((alias, take(len)));
        }
        Ok(entries)
    }

    #[test]
    fn jks_round_trips_and_checks_the_password() {
        let certs = [b"first certificate".as_slice(), b"second".as_slice()];
        let entries = vec![
            ("Fleetls-CA".to_owned(), certs[0]),
            ("fleetls-ca-1".to_owned(), certs[1]),
        ];
        let jks = jks_truststore(&entries, "changeit", 1_700_000_000_000);
        assert_eq!(&jks[..4], &[0xfe, 0xed, 0xfe, 0xed]);
        let read = read_jks(&jks, "changeit").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].0, "fleetls-ca", "aliases are stored lowercase");
        assert_eq!(read[0].1, certs[0]);
        assert_eq!(read[1].1, certs[1]);
        assert!(read_jks(&jks, "changeiT").is_err());
    }

    #[test]
    fn jks_digest_is_sha1_of_utf16be_password_whitener_and_body() {
        // The password "ab" is 00 61 00 62 in UTF-16BE.
        let body = [1u8, 2, 3];
        let mut input = vec![0x00, 0x61, 0x00, 0x62];
        input.extend_from_slice(b"Mighty Aphrodite");
        input.extend_from_slice(&body);
        let expected = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
        assert_eq!(jks_digest("ab", &body).as_ref(), expected.as_ref());
    }

    #[test]
    fn java_utf_is_modified_utf8() {
        let mut out = Vec::new();
        java_utf(&mut out, "a\u{0}é€😀");
        let expected: &[u8] = &[
            0x00, 0x0e, // 14 bytes follow
            b'a', 0xc0, 0x80, // NUL as two bytes
            0xc3, 0xa9, // é
            0xe2, 0x82, 0xac, // €
            0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80, // 😀 as a surrogate pair
        ];
        assert_eq!(out, expected);
    }

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
