//! The child's certificates in `DIR/certs`: the CA it trusts (pinned, or
//! trusted on first use), its own P-256 key (made here, never sent
//! anywhere) and the chain the parent signed from its CSR.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, SanType, PKCS_ECDSA_P256_SHA256,
};
use tracing::{info, warn};
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::write_atomic;
use fleetls_proto::{AgentKind, CertificateIssued, CertificatesReady};

pub use fleetls_bus::tls::{fingerprint, pem_certs};

/// The files of `DIR/certs`.
#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
    /// The other formats kept in step with the PEM files (`--trust-store-format`).
    stores: Option<crate::stores::TrustStores>,
}

impl CertStore {
    /// The store of a data dir.
    pub fn new(data_dir: &Path) -> CertStore {
        CertStore {
            dir: data_dir.join("certs"),
            stores: None,
        }
    }

    /// The same store, also keeping `stores` in step with its PEM files.
    pub fn with_stores(mut self, stores: Option<crate::stores::TrustStores>) -> CertStore {
        self.stores = stores;
        self
    }

    /// Rewrites the stores of the other format from the PEM files, if one
    /// is kept; a failure is logged (the PEM files stay the reference).
    pub fn keep_stores(&self) {
        let Some(stores) = &self.stores else {
            return;
        };
        match stores.write(self) {
            Ok(files) if !files.is_empty() => {
                info!(format = ?stores.format, files = ?files, "trust stores written")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot write the trust stores (--trust-store-format)"),
        }
    }

    /// The CA chain file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The private key file.
    /// The CA's revocation list, as the parent last sent it (a local
    /// parent's SSL port refuses what it revokes).
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// The agent's private key (0600).
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("agent.key")
    }

    /// The chain file (leaf first).
    pub fn chain_path(&self) -> PathBuf {
        self.dir.join("agent.pem")
    }

    fn pending_key_path(&self) -> PathBuf {
        self.dir.join("agent.key.pending")
    }

    /// Whether a key and a chain are installed.
    pub fn has_certificate(&self) -> bool {
        self.chain_path().exists() && self.key_path().exists()
    }

    /// Fingerprint of the root of the stored CA chain.
    pub fn stored_ca_fingerprint(&self) -> Option<String> {
        let pem = std::fs::read_to_string(self.ca_path()).ok()?;
        pem_certs(&pem).ok()?.last().map(|c| fingerprint(c))
    }

    /// Handles `CertificatesReady`: checks the CA against the pin (or the one
    /// trusted before), stores it, and returns a CSR to send — `None` when a
    /// certificate from this CA is already installed. `Err` is the reason
    /// the CA was refused.
    pub fn prepare_csr(
        &self,
        ready: &CertificatesReady,
        pinned: Option<&str>,
        agent: Uuid,
        kind: AgentKind,
        hostnames: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<Option<String>, String> {
        let certs =
            pem_certs(&ready.ca_chain_pem).map_err(|e| format!("the CA sent is unusable: {e}"))?;
        let offered = fingerprint(certs.last().expect("pem_certs is never empty"));
        if offered != ready.ca_fingerprint {
            return Err(format!(
                "the CA refused: the message names fingerprint {} but the CA sent is {offered}",
                ready.ca_fingerprint
            ));
        }
        match (pinned, self.stored_ca_fingerprint()) {
            (Some(pin), _) if pin != offered => {
                return Err(format!(
                    "the CA refused: its fingerprint {offered} does not match the pinned {pin}; \
                     check --ca-fingerprint against `fleetls-parent status` (network.ca_fingerprint)"
                ));
            }
            (None, Some(stored)) if stored != offered => {
                return Err(format!(
                    "the CA refused: it changed since it was first trusted ({stored} then, {offered} now); \
                     if the parent's CA was reset on purpose, pin the new one with --ca-fingerprint"
                ));
            }
            (None, None) => info!(fingerprint = %offered, "trusting the parent's CA on first use"),
            _ => {}
        }
        let already = self.stored_ca_fingerprint().as_deref() == Some(offered.as_str())
            && self.has_certificate();
        write_atomic(&self.ca_path(), ready.ca_chain_pem.as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        self.keep_stores();
        if already && !ready.renew {
            return Ok(None);
        }
        self.csr(agent, kind, hostnames, ips).map(Some)
    }

    /// When the installed certificate is valid (not before, not after;
    /// seconds since the epoch), if one is installed and readable.
    pub fn validity(&self) -> Option<(i64, i64)> {
        let pem = std::fs::read_to_string(self.chain_path()).ok()?;
        let chain = pem_certs(&pem).ok()?;
        let (_, leaf) = X509Certificate::from_der(&chain[0]).ok()?;
        let validity = leaf.validity();
        Some((
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        ))
    }

    /// A CSR on the pending key (made now, or kept from an attempt whose
    /// answer has not come): for the first certificate and every renewal.
    pub fn csr(
        &self,
        agent: Uuid,
        kind: AgentKind,
        hostnames: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<String, String> {
        let key = match std::fs::read_to_string(self.pending_key_path()) {
            Ok(pem) => KeyPair::from_pem(&pem)
                .map_err(|e| format!("the pending key is unreadable: {e}"))?,
            Err(_) => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| format!("cannot make a key: {e}"))?;
                write_atomic(
                    &self.pending_key_path(),
                    key.serialize_pem().as_bytes(),
                    0o600,
                )
                .map_err(|e| e.to_string())?;
                key
            }
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent.to_string());
        params.distinguished_name = dn;
        if kind == AgentKind::LocalParent {
            for name in hostnames {
                if let Ok(name) = name.as_str().try_into() {
                    params.subject_alt_names.push(SanType::DnsName(name));
                }
            }
            params
                .subject_alt_names
                .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        }
        params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| format!("cannot make the CSR: {e}"))
    }

    /// Handles `CertificateIssued`: the chain must carry the pending key and
    /// be signed by the stored CA; then key and chain are installed.
    pub fn install(&self, issued: &CertificateIssued) -> Result<(), String> {
        let chain = pem_certs(&issued.chain_pem)
            .map_err(|e| format!("the certificate sent is unusable: {e}"))?;
        let pending = match std::fs::read_to_string(self.pending_key_path()) {
            Ok(pem) => pem,
            Err(_) => {
                let installed = std::fs::read_to_string(self.chain_path()).unwrap_or_default();
                if installed == issued.chain_pem {
                    return Ok(()); // the same answer twice
                }
                return Err("a certificate arrived but no CSR is pending; ignored".into());
            }
        };
        let key = KeyPair::from_pem(&pending)
            .map_err(|e| format!("the pending key is unreadable: {e}"))?;
        let (_, leaf) = X509Certificate::from_der(&chain[0])
            .map_err(|e| format!("the certificate sent is unreadable: {e}"))?;
        use rcgen::PublicKeyData;
        if leaf.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err("the certificate sent is not for this agent's key; ignored".into());
        }
        let ca_pem = std::fs::read_to_string(self.ca_path())
            .map_err(|_| "a certificate arrived but no CA is stored; ignored".to_owned())?;
        let ca = pem_certs(&ca_pem)?;
        let (_, issuer) = X509Certificate::from_der(&ca[0])
            .map_err(|e| format!("the stored CA is unreadable: {e}"))?;
        leaf.verify_signature(Some(issuer.public_key()))
            .map_err(|_| {
                "the certificate sent is not signed by the trusted CA; ignored".to_owned()
            })?;
        if !issued.ignored.is_empty() {
            warn!(ignored = ?issued.ignored, "the parent signed the CSR without some of what it asked for");
        }
        write_atomic(&self.chain_path(), issued.chain_pem.as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        std::fs::rename(self.pending_key_path(), self.key_path()).map_err(|e| e.to_string())?;
        info!(serial = %issued.serial, "certificate installed");
        self.keep_stores();
        Ok(())
    }

    /// Drops the pending key after the parent refused the CSR.
    pub fn forget_pending(&self) {
        let _ = std::fs::remove_file(self.pending_key_path());
    }
}
