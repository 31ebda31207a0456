//! The stores a child keeps next to its PEM files for the programs beside
//! it that read another format (`run --trust-store-format pem|pkcs12|jks
//! --trust-store-password-file F`), rewritten whole whenever the CA or the
//! agent's certificate changes (first install, every renewal):
//!
//! ```text
//! format   DIR/certs/...                what it holds
//! pem      ca.pem, agent.pem, agent.key the PEM files themselves (nothing more)
//! pkcs12   truststore.p12 (0644)        the CA chain, certificates only
//!          agent.p12 (0600)             the agent's key, its certificate and the CA chain
//! jks      truststore.jks (0644)        the CA chain, as trusted-certificate entries
//!          agent.p12 (0600)             the identity (Java reads PKCS#12 keystores)
//! ```
//!
//! PKCS#12 files use PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) with an
//! HMAC-SHA256 MAC; every store is protected by the password in the file
//! given. The writers are the ones the parent's `export` uses
//! (`fleetls_bus::stores`).
//!
//! Below `crate::certs`, which calls [`TrustStores::write`] whenever a PEM
//! file changes: this module reads those files at the paths
//! [`crate::layout::Layout`] names, and imports nothing of `certs`.

use std::path::{Path, PathBuf};

use fleetls_bus::tls::pem_certs;
use fleetls_bus::ConfigError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use crate::layout::Layout;

/// The alias of the agent's key entry in `agent.p12`.
pub const IDENTITY_ALIAS: &str = "fleetls-agent";

/// A store format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The PEM files alone.
    Pem,
    /// PKCS#12 truststore and identity.
    Pkcs12,
    /// A JKS truststore and a PKCS#12 identity.
    Jks,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        match text.to_ascii_lowercase().as_str() {
            "pem" => Ok(Format::Pem),
            "pkcs12" | "p12" | "pfx" => Ok(Format::Pkcs12),
            "jks" => Ok(Format::Jks),
            _ => Err("expected pem, pkcs12 or jks".into()),
        }
    }
}

/// The stores to keep, and their password.
#[derive(Clone)]
pub struct TrustStores {
    /// The format.
    pub format: Format,
    /// The password of the pkcs12 / jks files (empty for pem).
    password: String,
}

impl std::fmt::Debug for TrustStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("TrustStores")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl TrustStores {
    /// From `--trust-store-format` and `--trust-store-password-file`: none
    /// without a format; a pkcs12 or jks store needs a password file (read
    /// here, at least 8 characters).
    pub fn from_flags(
        format: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<Option<TrustStores>, ConfigError> {
        let Some(text) = format else {
            if password_file.is_some() {
                return Err(ConfigError::Invalid {
                    name: "--trust-store-password-file",
                    value: password_file.unwrap_or(Path::new("")).display().to_string(),
                    why:
                        "given without --trust-store-format: add --trust-store-format pkcs12 or jks"
                            .into(),
                });
            }
            return Ok(None);
        };
        let format: Format = text.parse().map_err(|why| ConfigError::Invalid {
            name: "--trust-store-format",
            value: text.to_owned(),
            why,
        })?;
        let password = match (format, password_file) {
            (Format::Pem, _) => String::new(),
            (_, None) => return Err(ConfigError::Missing("--trust-store-password-file")),
            (_, Some(file)) => fleetls_bus::stores::read_password_file(file).map_err(|why| {
                ConfigError::Invalid {
                    name: "--trust-store-password-file",
                    value: file.display().to_string(),
                    why,
                }
            })?,
        };
        Ok(Some(TrustStores { format, password }))
    }

    /// Writes the stores of the format from the PEM files of the data dir
    /// `layout`: the truststore once a CA is stored, the identity once a
    /// certificate is installed (its chain and key are there). The files
    /// written.
    pub fn write(&self, layout: &Layout) -> Result<Vec<PathBuf>, String> {
        let mut written = Vec::new();
        let ca_pem = match std::fs::read_to_string(layout.ca()) {
            Ok(pem) => pem,
            Err(_) => return Ok(written),
        };
        let ca = pem_certs(&ca_pem)?;
        let aliases: Vec<(String, &[u8])> = ca
            .iter()
            .enumerate()
            .map(|(i, der)| match i {
                0 => ("fleetls-ca".to_owned(), der.as_ref()),
                n => (format!("fleetls-ca-{n}"), der.as_ref()),
            })
            .collect();
        let (truststore, bytes) = match self.format {
            Format::Pem => return Ok(written),
            Format::Pkcs12 => (
                layout.truststore_p12(),
                fleetls_bus::stores::pkcs12_truststore(&aliases, &self.password)?,
            ),
            Format::Jks => (
                layout.truststore_jks(),
                fleetls_bus::stores::jks_truststore(
                    &aliases,
                    &self.password,
                    fleetls_proto::now_ms(),
                ),
            ),
        };
        write(&truststore, &bytes, 0o644)?;
        written.push(truststore);
        let (chain_path, key_path) = (layout.chain(), layout.key());
        if !(chain_path.exists() && key_path.exists()) {
            return Ok(written);
        }
        let chain_pem = std::fs::read_to_string(&chain_path)
            .map_err(|e| format!("{}: {e}", chain_path.display()))?;
        let key_pem =
            std::fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(PrivateKeyDer::Pkcs8(key)) => key,
            Ok(_) => return Err("the agent's key is not PKCS#8".into()),
            Err(e) => return Err(format!("the agent's key is unreadable: {e}")),
        };
        // The full chain: the agent's certificates, then the CA's not among them.
        let mut chain = pem_certs(&chain_pem)?;
        for der in ca {
            if !chain.contains(&der) {
                chain.push(der);
            }
        }
        let identity = layout.identity_p12();
        let bytes = fleetls_bus::stores::pkcs12_der(
            &chain,
            key.secret_pkcs8_der(),
            IDENTITY_ALIAS,
            &self.password,
            false,
        )?;
        write(&identity, &bytes, 0o600)?;
        written.push(identity);
        Ok(written)
    }
}

/// Writes one store whole (a reader sees the old file or the new one).
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    fleetls_bus::files::write_atomic(path, bytes, mode)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "store-password\n").unwrap();
        assert!(TrustStores::from_flags(None, None).unwrap().is_none());
        let pem = TrustStores::from_flags(Some("pem"), None).unwrap().unwrap();
        assert_eq!(pem.format, Format::Pem);
        let jks = TrustStores::from_flags(Some("JKS"), Some(&file))
            .unwrap()
            .unwrap();
        assert_eq!(
            (jks.format, jks.password.as_str()),
            (Format::Jks, "store-password")
        );
        assert!(
            !format!("{jks:?}").contains("store-password"),
            "Debug hides it"
        );
        let missing = TrustStores::from_flags(Some("pkcs12"), None).unwrap_err();
        assert!(
            missing.to_string().contains("--trust-store-password-file"),
            "{missing}"
        );
        let bad = TrustStores::from_flags(Some("pfx2"), None).unwrap_err();
        assert!(bad.to_string().contains("pem, pkcs12 or jks"), "{bad}");
        let lone = TrustStores::from_flags(None, Some(&file)).unwrap_err();
        assert!(lone.to_string().contains("--trust-store-format"), "{lone}");
    }
}
