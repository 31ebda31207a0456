//! The child's certificates in `DIR/certs`: the CA it trusts (pinned, or
//! trusted on first use), its own P-256 key (made here, never sent
//! anywhere) and the chain the parent signed from its CSR — or the identity
//! `import` installs. The files are at the paths [`crate::layout::Layout`]
//! names and written here (all but the revocation list, which
//! `crate::agent` writes as the parent sends it); the stores of another
//! format (`crate::stores`, below this module) are kept in step.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use tracing::{info, warn};
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{write_atomic, StoreError};
use crate::layout::Layout;
use crate::stores::TrustStores;
use fleetls_proto::{AgentKind, CertificateIssued, CertificatesReady};

pub use fleetls_bus::tls::{fingerprint, pem_certs};

/// The files of `DIR/certs`.
#[derive(Debug, Clone)]
pub struct CertStore {
    layout: Layout,
    /// The other formats kept in step with the PEM files (`--trust-store-format`).
    stores: Option<TrustStores>,
}

impl CertStore {
    /// The store of a data dir.
    pub fn new(data_dir: &Path) -> CertStore {
        CertStore {
            layout: Layout::new(data_dir),
            stores: None,
        }
    }

    /// The same store, also keeping `stores` in step with its PEM files.
    pub fn with_stores(mut self, stores: Option<TrustStores>) -> CertStore {
        self.stores = stores;
        self
    }

    /// Rewrites the stores of the other format from the PEM files, if one
    /// is kept; a failure is logged (the PEM files stay the reference).
    pub fn keep_stores(&self) {
        let Some(stores) = &self.stores else {
            return;
        };
        match stores.write(&self.layout) {
            Ok(files) if !files.is_empty() => {
                info!(format = ?stores.format, files = ?files, "trust stores written")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot write the trust stores (--trust-store-format)"),
        }
    }

    /// The files of the data dir.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The CA chain file.
    pub fn ca_path(&self) -> PathBuf {
        self.layout.ca()
    }

    /// The CA's revocation list, as the parent last sent it (a local
    /// parent's SSL port refuses what it revokes).
    pub fn crl_path(&self) -> PathBuf {
        self.layout.crl()
    }

    /// The agent's private key (0600).
    pub fn key_path(&self) -> PathBuf {
        self.layout.key()
    }

    /// The chain file (leaf first).
    pub fn chain_path(&self) -> PathBuf {
        self.layout.chain()
    }

    fn pending_key_path(&self) -> PathBuf {
        self.layout.pending_key()
    }

    /// Extra roots for the servers this agent connects to
    /// (`--trust-bundle`): the root of the parent's own SSL port certificate.
    pub fn trust_bundle_path(&self) -> PathBuf {
        self.layout.trust_bundle()
    }

    /// Keeps `pem` as the trust bundle (the folder made if needed).
    pub fn store_trust_bundle(&self, pem: &str) -> Result<(), String> {
        let dir = self.layout.certs();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_atomic(&self.trust_bundle_path(), pem.as_bytes(), 0o644).map_err(|e| e.to_string())
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
    /// trusted before), stores the CAs to trust, and returns a CSR to send —
    /// `None` when a certificate from this CA is already installed and no
    /// renewal is asked. `Err` is the reason the CA was refused.
    ///
    /// A CA rotation comes as `trust_pem` in a command signed by the parent
    /// key this agent pinned: a new CA named there is trusted although it is
    /// neither the pinned nor the first one. Whatever the bundle says, the
    /// CA that issued the certificate held stays trusted until a
    /// certificate from the new CA is installed (the next bundle drops it).
    pub fn prepare_csr(
        &self,
        ready: &CertificatesReady,
        pinned: Option<&str>,
        agent: Uuid,
        kind: AgentKind,
        hostnames: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<Option<String>, String> {
        let chain =
            pem_certs(&ready.ca_chain_pem).map_err(|e| format!("the CA sent is unusable: {e}"))?;
        let offered = fingerprint(chain.last().expect("pem_certs is never empty"));
        if offered != ready.ca_fingerprint {
            return Err(format!(
                "the CA refused: the message names fingerprint {} but the CA sent is {offered}",
                ready.ca_fingerprint
            ));
        }
        let mut bundle = match &ready.trust_pem {
            Some(pem) => {
                let certs =
                    pem_certs(pem).map_err(|e| format!("the CA bundle sent is unusable: {e}"))?;
                let held: Vec<String> = certs.iter().map(|c| fingerprint(c)).collect();
                if !chain.iter().all(|c| held.contains(&fingerprint(c))) {
                    return Err(
                        "the CA bundle refused: it does not hold the CA chain sent with it".into(),
                    );
                }
                certs
            }
            None => chain.clone(),
        };
        let trusted = self.trusted();
        let trusted_now: Vec<String> = trusted.iter().map(|c| fingerprint(c)).collect();
        match (pinned, self.stored_ca_fingerprint()) {
            _ if trusted_now.contains(&offered) => {}
            _ if ready.trust_pem.is_some() && !trusted_now.is_empty() => {
                info!(fingerprint = %offered, "CA rotation: trusting the parent's new CA (signed by the pinned parent key)");
            }
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
        let leaf = self.leaf();
        if let Some(leaf) = &leaf {
            if !issued_by_any(leaf, &bundle) {
                // Keep the CA this certificate comes from until the new one is held.
                bundle.extend(trusted.into_iter().filter(|ca| issued_by(leaf, ca)));
            }
        }
        self.store_trust(&bundle)?;
        self.keep_stores();
        let already =
            self.has_certificate() && leaf.is_some_and(|leaf| issued_by(&leaf, &chain[0]));
        if already && !ready.renew {
            return Ok(None);
        }
        self.csr(agent, kind, hostnames, ips).map(Some)
    }

    /// Every CA certificate this agent trusts (`certs/ca.pem`), DER.
    pub fn trusted(&self) -> Vec<CertificateDer<'static>> {
        std::fs::read_to_string(self.ca_path())
            .ok()
            .and_then(|pem| pem_certs(&pem).ok())
            .unwrap_or_default()
    }

    /// `sha256:HEX` of every CA certificate this agent trusts.
    pub fn trusted_fingerprints(&self) -> Vec<String> {
        self.trusted().iter().map(|c| fingerprint(c)).collect()
    }

    /// The CA the broker's certificate must chain to (given by the parent
    /// with the move to AMQPS, and kept in step with `ca.pem` since).
    pub fn broker_ca_path(&self) -> PathBuf {
        self.layout.broker_ca()
    }

    /// Keeps `pem` as what the broker's certificate must chain to (sent by
    /// the parent with the move to AMQPS).
    pub fn store_broker_ca(&self, pem: &str) -> Result<(), StoreError> {
        write_atomic(&self.broker_ca_path(), pem.as_bytes(), 0o644)
    }

    /// Writes the CAs to trust to `ca.pem` (and to `broker-ca.pem` once the
    /// agent is on AMQPS: the broker's certificate comes from the same CA),
    /// each whole, in one rename. `broker-ca.pem` keeps what it held beside
    /// the CAs (the root of an operator's own broker certificate, sent
    /// signed with the move to AMQPS).
    fn store_trust(&self, cas: &[CertificateDer<'static>]) -> Result<(), String> {
        let broker = self.broker_ca_path();
        // What broker-ca.pem holds beside the CAs trusted until now.
        let extra: Option<Vec<CertificateDer<'static>>> =
            std::fs::read_to_string(&broker).ok().map(|held| {
                let old: Vec<String> = self.trusted_fingerprints();
                pem_certs(&held)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| !old.contains(&fingerprint(c)))
                    .collect()
            });
        let write = |path: &Path, certs: &mut dyn Iterator<Item = &CertificateDer<'static>>| {
            let mut seen = Vec::new();
            let mut text = String::new();
            for cert in certs {
                let fp = fingerprint(cert);
                if !seen.contains(&fp) {
                    seen.push(fp);
                    text.push_str(&to_pem(cert));
                }
            }
            write_atomic(path, text.as_bytes(), 0o644).map_err(|e| e.to_string())
        };
        write(&self.ca_path(), &mut cas.iter())?;
        if let Some(extra) = extra {
            write(&broker, &mut cas.iter().chain(extra.iter()))?;
        }
        Ok(())
    }

    /// The certificate held (the leaf of `agent.pem`), DER.
    fn leaf(&self) -> Option<CertificateDer<'static>> {
        let pem = std::fs::read_to_string(self.chain_path()).ok()?;
        pem_certs(&pem).ok()?.into_iter().next()
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

    /// Installs an identity made elsewhere (`crate::import`, checked there):
    /// the key (PKCS#8 PEM), the CA chain to trust and the agent's chain.
    /// The key goes in last, by rename from [`Layout::import_key`] (0600):
    /// until then no half identity shows; on a failure that file is removed.
    pub fn install_imported(
        &self,
        key_pem: &str,
        ca_pem: &str,
        chain_pem: &str,
    ) -> Result<(), StoreError> {
        let pending = self.layout.import_key();
        let written = (|| {
            write_atomic(&pending, key_pem.as_bytes(), 0o600)?;
            write_atomic(&self.ca_path(), ca_pem.as_bytes(), 0o644)?;
            write_atomic(&self.chain_path(), chain_pem.as_bytes(), 0o644)?;
            std::fs::rename(&pending, self.key_path()).map_err(|e| StoreError {
                path: self.key_path(),
                why: e.to_string(),
            })
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&pending);
        }
        written
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
        let trusted = self.trusted();
        if trusted.is_empty() {
            return Err("a certificate arrived but no CA is stored; ignored".to_owned());
        }
        if !issued_by_any(&chain[0], &trusted) {
            return Err("the certificate sent is not signed by a trusted CA; ignored".to_owned());
        }
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

/// Whether `cert` is signed by the CA certificate `ca`.
fn issued_by(cert: &[u8], ca: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(ca),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Whether `cert` is signed by one of `cas`.
fn issued_by_any(cert: &[u8], cas: &[CertificateDer<'_>]) -> bool {
    cas.iter().any(|ca| issued_by(cert, ca))
}

use fleetls_bus::tls::cert_pem as to_pem;

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateSigningRequestParams, IsCa, Issuer};

    /// A CA: its certificate PEM and what signs with it.
    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let issuer = Issuer::from_ca_cert_der(cert.der(), key).unwrap();
        (cert.pem(), issuer)
    }

    fn ready(chain: &str, trust: Option<String>, renew: bool) -> CertificatesReady {
        let fingerprint = fingerprint(&pem_certs(chain).unwrap()[0]);
        CertificatesReady {
            ca_chain_pem: chain.to_owned(),
            ca_fingerprint: fingerprint,
            ssl_host: "localhost".into(),
            ssl_port: 1,
            serve_port: None,
            renew,
            trust_pem: trust,
            tls: None,
        }
    }

    fn issue(csr: &str, ca: &(String, Issuer<'static, KeyPair>)) -> CertificateIssued {
        let csr = CertificateSigningRequestParams::from_pem(csr).unwrap();
        let cert = csr.signed_by(&ca.1).unwrap();
        CertificateIssued {
            chain_pem: format!("{}{}", cert.pem(), ca.0),
            serial: "01".into(),
            not_after: 0,
            ignored: Vec::new(),
        }
    }

    fn prepare(store: &CertStore, ready: &CertificatesReady) -> Result<Option<String>, String> {
        store.prepare_csr(ready, None, Uuid::nil(), AgentKind::Child, &[], &[])
    }

    #[test]
    fn a_rotation_never_drops_the_ca_of_the_certificate_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        let (old, new) = (ca("old"), ca("new"));
        let fp = |pem: &str| fingerprint(&pem_certs(pem).unwrap()[0]);
        // The first certificate, from the old CA.
        let csr = prepare(&store, &ready(&old.0, None, false))
            .unwrap()
            .unwrap();
        store.install(&issue(&csr, &old)).unwrap();
        assert_eq!(store.trusted_fingerprints(), [fp(&old.0)]);
        // On AMQPS, with a broker serving the operator's own certificate:
        // its root came beside the CA, and stays through the rotation.
        let company = ca("company");
        std::fs::write(store.broker_ca_path(), format!("{}{}", old.0, company.0)).unwrap();
        let broker_trusts = || -> Vec<String> {
            let pem = std::fs::read_to_string(store.broker_ca_path()).unwrap();
            pem_certs(&pem)
                .unwrap()
                .iter()
                .map(|c| fingerprint(c))
                .collect()
        };
        // Trust: both CAs, nothing to ask for.
        let both = format!("{}{}", old.0, new.0);
        assert_eq!(
            prepare(&store, &ready(&old.0, Some(both.clone()), false)),
            Ok(None)
        );
        assert_eq!(store.trusted_fingerprints(), [fp(&old.0), fp(&new.0)]);
        // The old CA's chain sent without it in the bundle: refused.
        let refused = prepare(&store, &ready(&old.0, Some(new.0.clone()), false)).unwrap_err();
        assert!(refused.contains("does not hold the CA chain"), "{refused}");
        // The end of the rotation arrives before the new certificate: the
        // old CA stays, and a CSR for the new CA goes out.
        let csr = prepare(&store, &ready(&new.0, Some(new.0.clone()), false))
            .unwrap()
            .expect("a CSR: the certificate held is from the old CA");
        assert_eq!(store.trusted_fingerprints(), [fp(&new.0), fp(&old.0)]);
        // A certificate from a CA it does not trust is not installed.
        let stranger = ca("stranger");
        let wrong = issue(&csr, &stranger);
        assert!(store
            .install(&wrong)
            .unwrap_err()
            .contains("not signed by a trusted CA"));
        store.install(&issue(&csr, &new)).unwrap();
        // Now the old CA goes; a duplicate changes nothing.
        for _ in 0..2 {
            assert_eq!(
                prepare(&store, &ready(&new.0, Some(new.0.clone()), false)),
                Ok(None)
            );
            assert_eq!(store.trusted_fingerprints(), [fp(&new.0)]);
            assert_eq!(broker_trusts(), [fp(&new.0), fp(&company.0)]);
        }
    }

    #[test]
    fn a_new_ca_without_a_bundle_is_still_refused_after_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        let (old, new) = (ca("old"), ca("new"));
        let csr = prepare(&store, &ready(&old.0, None, false))
            .unwrap()
            .unwrap();
        store.install(&issue(&csr, &old)).unwrap();
        let refused = prepare(&store, &ready(&new.0, None, true)).unwrap_err();
        assert!(
            refused.contains("changed since it was first trusted"),
            "{refused}"
        );
    }
}
