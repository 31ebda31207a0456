//! The network's certificate authority: a CA made here (or the company's own
//! CA or intermediate), the parent's and the broker's server certificates,
//! and one certificate per child signed from its CSR. The parent decides
//! every field of what it signs; the CSR contributes only its public key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use fleetls_bus::files::write_atomic;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, CrlDistributionPoint, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::layout::{CertFile, Layout};
use crate::settings::SslSettings;
use fleetls_proto::AgentKind;

/// Default validity of issued certificates, in days (the CA/Browser limit).
pub const DEFAULT_CERT_DAYS: u32 = 398;
/// Validity of a CA made here, in days.
const CA_DAYS: i64 = 3650;

/// A PKI failure.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Input that cannot be used (a company CA, a stored file).
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The certificates folder inside a data dir.
pub fn certificates_dir(data_dir: &Path) -> PathBuf {
    Layout::new(data_dir).certificates()
}

/// Whether certificates were generated (the settings are then frozen).
pub fn exists(data_dir: &Path) -> bool {
    Layout::new(data_dir).certificate(CertFile::CaPem).exists()
}

/// A company CA or intermediate to sign with instead of one made here.
#[derive(Debug, Clone)]
pub struct CompanyCa {
    /// PEM file: the CA certificate first, then the rest of its chain.
    pub cert: PathBuf,
    /// PEM file: its private key.
    pub key: PathBuf,
}

/// A certificate that was issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate and the CA chain, PEM, leaf first.
    pub chain_pem: String,
    /// The serial, hex.
    pub serial: String,
    /// Subject CN.
    pub subject: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// What the CSR asked for and did not get.
    pub ignored: Vec<String>,
    /// `sha256:HEX` of the certificate's public key: a second CSR on the
    /// same key gets this certificate again instead of a new one.
    pub key: String,
    /// `sha256:HEX` of the CA certificate that signed it.
    pub ca: String,
}

/// The loaded CA.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    /// The CA chain, PEM: the signing CA first, the root last.
    pub ca_chain_pem: String,
    /// `sha256:HEX` of the root (last certificate of the chain, DER).
    pub root_fingerprint: String,
    /// `sha256:HEX` of the CA certificate that signs (first of the chain):
    /// the name of a CA in a rotation and in each certificate's record.
    pub signing_fingerprint: String,
    /// Every CA certificate to trust, PEM (`certificates/trust.pem`): the
    /// chain, and during a CA rotation the other CA too.
    pub trust_pem: String,
    /// Validity of issued certificates, days.
    pub lifetime: Duration,
    /// The CRL distribution point written into every certificate signed
    /// (`settings set --crl-url`); changes take effect from the next one.
    crl_url: std::sync::RwLock<Option<String>>,
}

pub use fleetls_bus::tls::fingerprint;

/// Every certificate of a PEM text, DER.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    fleetls_bus::tls::pem_certs(pem).map_err(PkiError::Invalid)
}

use fleetls_bus::tls::cert_pem as to_pem;

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator failed");
    bytes[0] = (bytes[0] & 0x7f) | 0x01; // positive, 16 bytes long
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn leaf_params(
    cn: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    lifetime: Duration,
    crl_url: Option<String>,
) -> (CertificateParams, SerialNumber, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let not_after = now + lifetime;
    let serial = random_serial();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "fleetls");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.extended_key_usages = ekus;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    params.serial_number = Some(serial.clone());
    // A little in the past, for clocks behind ours: 5 minutes, or a tenth
    // of a short test lifetime.
    params.not_before = now - std::cmp::min(lifetime / 10, Duration::minutes(5));
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    params.crl_distribution_points = crl_url
        .into_iter()
        .map(|uri| CrlDistributionPoint { uris: vec![uri] })
        .collect();
    (params, serial, not_after)
}

fn sans(names: &[String], ips: &[IpAddr]) -> Result<Vec<SanType>, PkiError> {
    let mut out = Vec::new();
    for name in names {
        out.push(SanType::DnsName(name.as_str().try_into()?));
    }
    out.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(out)
}

impl Pki {
    /// Loads the CA from `DIR/certificates`, with the CRL address of the
    /// settings in `DIR`.
    pub fn load(data_dir: &Path, lifetime: Duration) -> Result<Pki, PkiError> {
        let layout = Layout::new(data_dir);
        let chain_path = layout.certificate(CertFile::CaPem);
        let key_path = layout.certificate(CertFile::CaKey);
        let chain = std::fs::read_to_string(&chain_path).map_err(io(&chain_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let mut pki = Self::from_pem(&chain, &key, lifetime)?;
        if let Ok(trust) = std::fs::read_to_string(layout.certificate(CertFile::TrustPem)) {
            pki.trust_pem = trust;
        }
        let settings = SslSettings::load(data_dir).map_err(PkiError::Invalid)?;
        pki.set_crl_url(settings.and_then(|s| s.crl_url));
        Ok(pki)
    }

    /// A CA from its chain and key PEM (checked: a CA, its key, valid now).
    pub fn from_pem(chain_pem: &str, key_pem: &str, lifetime: Duration) -> Result<Pki, PkiError> {
        let certs = pem_certs(chain_pem)?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::Invalid(format!("unreadable CA private key: {e}")))?;
        check_ca(&certs[0], &key)?;
        let issuer = Issuer::from_ca_cert_der(&certs[0], key)?;
        let root = certs.last().expect("pem_certs is never empty");
        let ca_chain_pem: String = certs.iter().map(|c| to_pem(c)).collect();
        Ok(Pki {
            issuer,
            trust_pem: ca_chain_pem.clone(),
            ca_chain_pem,
            root_fingerprint: fingerprint(root),
            signing_fingerprint: fingerprint(&certs[0]),
            lifetime,
            crl_url: std::sync::RwLock::new(None),
        })
    }

    /// Names `url` as CRL distribution point in the certificates signed
    /// from now on (`None`: no such extension).
    pub fn set_crl_url(&self, url: Option<String>) {
        *self.crl_url.write().unwrap_or_else(|p| p.into_inner()) = url;
    }

    /// The CRL distribution point of the next certificate signed.
    pub fn crl_url(&self) -> Option<String> {
        self.crl_url
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes the CA (or takes the company's), the parent's and the broker's
    /// certificates, and writes them all at once: into a fresh folder renamed
    /// into place, so a failure leaves no half set.
    pub fn generate(
        data_dir: &Path,
        settings: &SslSettings,
        company: Option<&CompanyCa>,
        lifetime: Duration,
    ) -> Result<Pki, PkiError> {
        let (chain_pem, key_pem) = match company {
            Some(company) => read_company(company)?,
            None => make_ca()?,
        };
        let pki = Self::from_pem(&chain_pem, &key_pem, lifetime).map_err(|e| match company {
            Some(c) => PkiError::Invalid(format!(
                "the company CA {} / {} cannot be used: {e}",
                c.cert.display(),
                c.key.display()
            )),
            None => e,
        })?;
        pki.set_crl_url(settings.crl_url.clone());
        let parent =
            pki.server_certificate("fleetls-parent", &settings.names, &settings.ips, true)?;
        let broker = pki.server_certificate(
            "fleetls-broker",
            &settings.broker_names,
            &settings.broker_ips,
            false,
        )?;

        // An empty revocation list, so that servers and `openssl
        // -crl_check` have one from the start.
        let crl = pki.crl(&[], 1)?;
        let layout = Layout::new(data_dir);
        let dir = layout.certificates();
        let staging = layout.certificates_staging();
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        for file in CertFile::ALL {
            let content: &str = match file {
                CertFile::CaPem | CertFile::TrustPem => &pki.ca_chain_pem,
                CertFile::CaKey => &key_pem,
                CertFile::ParentPem => &parent.0,
                CertFile::ParentKey => &parent.1,
                CertFile::BrokerPem => &broker.0,
                CertFile::BrokerKey => &broker.1,
                CertFile::Crl => &crl,
            };
            let path = staging.join(file.name());
            write_atomic(&path, content.as_bytes(), file.mode()).map_err(io(&path))?;
        }
        std::fs::rename(&staging, &dir).map_err(io(&dir))?;
        Ok(pki)
    }

    /// Renews the parent's and the broker's certificates (new keys, same
    /// names) once two thirds of the parent's certificate's lifetime have
    /// passed; `true` when it did. Each file is replaced whole (the key
    /// first would break a reader in between; the chain and key are each
    /// written atomically and a reader retries).
    pub fn renew_own_if_due(
        &self,
        data_dir: &Path,
        settings: &SslSettings,
        now: i64,
    ) -> Result<bool, PkiError> {
        // An operator's own certificates are theirs to renew (doctor warns
        // before they expire); the parent's toward the broker is fleetls's.
        let (path, _) = crate::own::client_identity(data_dir);
        let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
        let certs = pem_certs(&pem)?;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, leaf) = X509Certificate::from_der(&certs[0])
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))?;
        let (from, until) = (
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
        );
        if now < from + (until - from) * 2 / 3 {
            return Ok(false);
        }
        self.reissue_own(data_dir, settings)?;
        Ok(true)
    }

    /// Issues the parent's and the broker's certificates again now, from
    /// this CA (new keys, same names): a renewal, and a CA rotation moving
    /// them to the new CA once every agent trusts it. An operator's own
    /// certificates are left alone: with the SSL port's, the parent's
    /// certificate toward the broker (`client.pem`) is the one issued.
    pub fn reissue_own(&self, data_dir: &Path, settings: &SslSettings) -> Result<(), PkiError> {
        let layout = Layout::new(data_dir);
        let own = crate::own::OwnRecord::load(data_dir);
        let parent =
            self.server_certificate("fleetls-parent", &settings.names, &settings.ips, true)?;
        let (chain, key) = crate::own::client_identity(data_dir);
        let mut writes = vec![(key, parent.1, 0o600), (chain, parent.0, 0o644)];
        if !own.broker {
            let broker = self.server_certificate(
                "fleetls-broker",
                &settings.broker_names,
                &settings.broker_ips,
                false,
            )?;
            writes.push((layout.certificate(CertFile::BrokerKey), broker.1, 0o600));
            writes.push((layout.certificate(CertFile::BrokerPem), broker.0, 0o644));
        }
        for (path, content, mode) in writes {
            write_atomic(&path, content.as_bytes(), mode).map_err(io(&path))?;
        }
        Ok(())
    }

    /// A broker's certificate for `names` and `ips` (a cluster node's,
    /// `broker-tls --node`), with a new key: (chain PEM, key PEM).
    pub fn broker_certificate(
        &self,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<(String, String), PkiError> {
        self.server_certificate("fleetls-broker", names, ips, false)
    }

    /// A server certificate with its own new key: (chain PEM, key PEM).
    fn server_certificate(
        &self,
        cn: &str,
        names: &[String],
        ips: &[IpAddr],
        client_too: bool,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ekus = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if client_too {
            ekus.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let (params, _, _) =
            leaf_params(cn, sans(names, ips)?, ekus, self.lifetime, self.crl_url());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.ca_chain_pem),
            key.serialize_pem(),
        ))
    }

    /// Signs a child's CSR. The CSR must verify and name the agent that sent
    /// it; everything else is decided here: CN = agent id, clientAuth (local
    /// parents: also serverAuth with the names and addresses they registered),
    /// CA:FALSE, a random serial and `cert_days` of validity. What the CSR
    /// asked for beyond that is listed in `ignored`. `Err` is the refusal
    /// reason to report to the child.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        agent: Uuid,
        kind: AgentKind,
        hostnames: &[String],
        ips: &[String],
    ) -> Result<Issued, String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            format!("the CSR was refused: it does not parse or its signature does not verify ({e})")
        })?;
        let agent_id = agent.to_string();
        let subject = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(dn_text)
            .unwrap_or_default();
        if subject != agent_id {
            return Err(format!(
                "the CSR was refused: its subject CN={subject:?} is not the agent that sent it ({agent_id})"
            ));
        }
        let (allowed_names, allowed_ips): (Vec<String>, Vec<IpAddr>) = match kind {
            // Never a wildcard, whatever the caller passed.
            AgentKind::LocalParent => (
                hostnames
                    .iter()
                    .filter(|n| !n.contains('*'))
                    .cloned()
                    .collect(),
                ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let mut ignored = Vec::new();
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            ignored.push("CA:TRUE".to_owned());
        }
        for san in &csr.params.subject_alt_names {
            let allowed = match san {
                SanType::DnsName(name) => allowed_names.iter().any(|n| n == name.as_str()),
                SanType::IpAddress(ip) => allowed_ips.contains(ip),
                _ => false,
            };
            if !allowed {
                ignored.push(format!("subject alternative name {san:?}"));
            }
        }
        let mut ekus = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if kind == AgentKind::LocalParent && !(allowed_names.is_empty() && allowed_ips.is_empty()) {
            ekus.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        for eku in &csr.params.extended_key_usages {
            if !ekus.contains(eku) {
                ignored.push(format!("extended key usage {eku:?}"));
            }
        }
        for usage in &csr.params.key_usages {
            if *usage != KeyUsagePurpose::DigitalSignature {
                ignored.push(format!("key usage {usage:?}"));
            }
        }
        let sans = sans(&allowed_names, &allowed_ips).map_err(|e| e.to_string())?;
        let (params, serial, not_after) =
            leaf_params(&agent_id, sans, ekus, self.lifetime, self.crl_url());
        let key = fingerprint(rcgen::PublicKeyData::der_bytes(&csr.public_key));
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| format!("the CSR could not be signed: {e}"))?;
        Ok(Issued {
            chain_pem: format!("{}{}", signed.pem(), self.ca_chain_pem),
            serial: hex(&serial.to_bytes()),
            subject: agent_id,
            not_after: not_after.unix_timestamp(),
            ignored,
            key,
            ca: self.signing_fingerprint.clone(),
        })
    }
}

/// One revoked certificate, for the CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial, hex (as the registry keeps it).
    pub serial: String,
    /// When it was revoked, seconds since the epoch.
    pub at: i64,
    /// Why (RFC 5280 reason).
    pub reason: RevocationReason,
}

/// A revocation reason from its name (`key-compromise`, `superseded`,
/// `cessation-of-operation`, `affiliation-changed`, `unspecified`).
pub fn revocation_reason(name: &str) -> Result<RevocationReason, String> {
    Ok(match name {
        "unspecified" => RevocationReason::Unspecified,
        "key-compromise" => RevocationReason::KeyCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        other => {
            return Err(format!(
                "unknown revocation reason {other:?}: key-compromise, superseded, \
                 cessation-of-operation, affiliation-changed or unspecified"
            ))
        }
    })
}

impl Pki {
    /// The CA's revocation list (PEM), numbered `number`, valid a week
    /// (it is signed again at every revocation and at every start).
    pub fn crl(&self, revoked: &[Revoked], number: u64) -> Result<String, PkiError> {
        let now = time::OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            let serial = unhex(&r.serial)
                .ok_or_else(|| PkiError::Invalid(format!("serial {:?} is not hex", r.serial)))?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: time::OffsetDateTime::from_unix_timestamp(r.at).unwrap_or(now),
                reason_code: Some(r.reason),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(number.to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Issues a client certificate with a key made here, for an agent that
    /// cannot send a CSR (an mPOS device, or a child installed by hand):
    /// (the issued chain, the private key PEM). The key leaves this machine
    /// only inside the password-protected export.
    pub fn issue_with_new_key(&self, agent: Uuid) -> Result<(Issued, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let agent_id = agent.to_string();
        let (params, serial, not_after) = leaf_params(
            &agent_id,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            self.lifetime,
            self.crl_url(),
        );
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            Issued {
                chain_pem: format!("{}{}", cert.pem(), self.ca_chain_pem),
                serial: hex(&serial.to_bytes()),
                subject: agent_id,
                not_after: not_after.unix_timestamp(),
                ignored: Vec::new(),
                key: fingerprint(rcgen::PublicKeyData::der_bytes(&key)),
                ca: self.signing_fingerprint.clone(),
            },
            key.serialize_pem(),
        ))
    }
}

/// A new CA made here: (certificate PEM, key PEM), valid ten years.
pub fn make_ca() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "fleetls");
    dn.push(
        DnType::CommonName,
        format!("fleetls CA {}", &Uuid::new_v4().simple().to_string()[..8]),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(CA_DAYS);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A company CA's chain and key, read from its files.
pub fn read_company(company: &CompanyCa) -> Result<(String, String), PkiError> {
    let chain = std::fs::read_to_string(&company.cert).map_err(io(&company.cert))?;
    let key = std::fs::read_to_string(&company.key).map_err(io(&company.key))?;
    Ok((chain, key))
}

fn dn_text(value: &DnValue) -> String {
    match value {
        DnValue::Utf8String(s) => s.clone(),
        DnValue::PrintableString(s) => s.as_str().to_owned(),
        DnValue::Ia5String(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}

/// Checks that `cert` is a CA certificate whose key is `key` and that it is valid now.
fn check_ca(cert: &CertificateDer<'_>, key: &KeyPair) -> Result<(), PkiError> {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| PkiError::Invalid(format!("unreadable CA certificate: {e}")))?;
    let is_ca = parsed
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(PkiError::Invalid(
            "the certificate is not a CA (basicConstraints CA:TRUE is missing)".into(),
        ));
    }
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(PkiError::Invalid(
            "the private key does not belong to the CA certificate".into(),
        ));
    }
    if !parsed.validity().is_valid() {
        return Err(PkiError::Invalid(format!(
            "the CA certificate is not valid now (valid {} to {})",
            parsed.validity().not_before,
            parsed.validity().not_after
        )));
    }
    Ok(())
}

/// Bytes from hex digits (`None` when it is not hex).
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SslSettings {
        SslSettings::defaults("127.0.0.1")
    }

    fn csr(cn: &str, f: impl FnOnce(&mut CertificateParams)) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        f(&mut params);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn renewals_leave_the_operators_own_certificates_and_renew_the_parents_toward_the_broker() {
        use crate::own::{install, Role};
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &settings(), None, Duration::days(398)).unwrap();
        // Another CA's certificates stand for the company's.
        let company = tempfile::tempdir().unwrap();
        Pki::generate(company.path(), &settings(), None, Duration::days(398)).unwrap();
        let theirs = |name: &str| {
            std::fs::read_to_string(certificates_dir(company.path()).join(name)).unwrap()
        };
        let certs = certificates_dir(dir.path());
        let read = |name: &str| std::fs::read_to_string(certs.join(name)).unwrap();
        let fleetls_parent = read("parent.pem");
        install(
            dir.path(),
            Role::Parent,
            &theirs("parent.pem"),
            &theirs("parent.key"),
        )
        .unwrap();
        install(
            dir.path(),
            Role::Broker,
            &theirs("broker.pem"),
            &theirs("broker.key"),
        )
        .unwrap();
        assert_eq!(
            read("client.pem"),
            fleetls_parent,
            "the replaced one stays the client's"
        );
        let root = pem_certs(&theirs("broker.pem")).unwrap().pop().unwrap();
        assert_eq!(read("broker-root.pem"), to_pem(&root));
        assert_eq!(
            crate::own::client_identity(dir.path()),
            (certs.join("client.pem"), certs.join("client.key"))
        );
        assert!(crate::own::broker_trust_files(dir.path()).contains(&certs.join("broker-root.pem")));

        pki.reissue_own(dir.path(), &settings()).unwrap();
        assert_eq!(read("parent.pem"), theirs("parent.pem"));
        assert_eq!(read("parent.key"), theirs("parent.key"));
        assert_eq!(read("broker.pem"), theirs("broker.pem"));
        assert_eq!(read("broker.key"), theirs("broker.key"));
        assert_ne!(
            read("client.pem"),
            fleetls_parent,
            "the client's was not renewed"
        );
        let client = pem_certs(&read("client.pem")).unwrap();
        assert_eq!(fingerprint(&client[1]), pki.signing_fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn generate_writes_every_file_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &settings(), None, Duration::days(398)).unwrap();
        let certs = certificates_dir(dir.path());
        use std::os::unix::fs::PermissionsExt;
        for (name, mode) in [
            ("ca.pem", 0o644),
            ("ca.key", 0o600),
            ("parent.pem", 0o644),
            ("parent.key", 0o600),
            ("broker.pem", 0o644),
            ("broker.key", 0o600),
        ] {
            let meta = std::fs::metadata(certs.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        assert!(!dir.path().join("certificates.new").exists());
        let again = Pki::load(dir.path(), Duration::days(398)).unwrap();
        assert_eq!(again.root_fingerprint, pki.root_fingerprint);
        assert!(pki.root_fingerprint.starts_with("sha256:") && pki.root_fingerprint.len() == 71);
    }

    /// The URIs of the CRL distribution points of a certificate's leaf.
    fn crl_points(chain_pem: &str) -> Vec<String> {
        use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
        use x509_parser::prelude::{FromDer, X509Certificate};
        let der = pem_certs(chain_pem).unwrap().remove(0);
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        let mut uris = Vec::new();
        for ext in leaf.extensions() {
            if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
                for point in points.iter() {
                    if let Some(DistributionPointName::FullName(names)) = &point.distribution_point
                    {
                        for name in names {
                            if let GeneralName::URI(uri) = name {
                                uris.push(uri.to_string());
                            }
                        }
                    }
                }
            }
        }
        uris
    }

    #[test]
    fn certificates_name_the_crl_address_of_the_settings_from_when_it_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &settings(), None, Duration::days(30)).unwrap();
        let parent = std::fs::read_to_string(certificates_dir(dir.path()).join("parent.pem"));
        assert!(crl_points(&parent.unwrap()).is_empty(), "none by default");
        let agent = Uuid::new_v4();
        let request = csr(&agent.to_string(), |_| {});
        let before = pki.sign_csr(&request, agent, AgentKind::Child, &[], &[]);
        assert!(crl_points(&before.unwrap().chain_pem).is_empty());

        let url = "http://hq.example:12380/crl.pem";
        pki.set_crl_url(Some(url.into()));
        let after = pki.sign_csr(&request, agent, AgentKind::Child, &[], &[]);
        assert_eq!(crl_points(&after.unwrap().chain_pem), [url]);
        let (mpos, _) = pki.issue_with_new_key(agent).unwrap();
        assert_eq!(crl_points(&mpos.chain_pem), [url]);
        let (broker, _) = pki.broker_certificate(&["mq.example".into()], &[]).unwrap();
        assert_eq!(crl_points(&broker), [url]);

        // Generated with the setting, the parent's and the broker's have it
        // too; a reload reads it from the settings.
        let dir = tempfile::tempdir().unwrap();
        let mut with_url = settings();
        with_url.crl_url = Some(url.into());
        with_url.save(dir.path()).unwrap();
        Pki::generate(dir.path(), &with_url, None, Duration::days(30)).unwrap();
        for file in ["parent.pem", "broker.pem"] {
            let pem = std::fs::read_to_string(certificates_dir(dir.path()).join(file)).unwrap();
            assert_eq!(crl_points(&pem), [url], "{file}");
        }
        let loaded = Pki::load(dir.path(), Duration::days(30)).unwrap();
        assert_eq!(loaded.crl_url().as_deref(), Some(url));
    }

    #[test]
    fn the_parent_decides_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &settings(), None, Duration::days(30)).unwrap();
        let agent = Uuid::new_v4();
        let greedy = csr(&agent.to_string(), |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.subject_alt_names = vec![SanType::DnsName("bank.example".try_into().unwrap())];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        });
        let issued = pki
            .sign_csr(&greedy, agent, AgentKind::Child, &[], &[])
            .unwrap();
        assert_eq!(issued.ignored.len(), 3, "{:?}", issued.ignored);
        let certs = pem_certs(&issued.chain_pem).unwrap();
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, leaf) = X509Certificate::from_der(&certs[0]).unwrap();
        assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
        assert!(leaf.subject_alternative_name().unwrap().is_none());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.code_signing);
        let days = (leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp())
            / 86400;
        assert_eq!(days, 30);
        assert_eq!(hex(leaf.raw_serial()), issued.serial);
    }

    #[test]
    fn a_csr_for_another_agent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &settings(), None, Duration::days(30)).unwrap();
        let other = csr(&Uuid::new_v4().to_string(), |_| {});
        let err = pki
            .sign_csr(&other, Uuid::new_v4(), AgentKind::Child, &[], &[])
            .unwrap_err();
        assert!(err.contains("is not the agent that sent it"), "{err}");
        let err = pki
            .sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                Uuid::new_v4(),
                AgentKind::Child,
                &[],
                &[],
            )
            .unwrap_err();
        assert!(err.contains("does not parse"), "{err}");
    }

    #[test]
    fn a_local_parent_gets_server_auth_for_its_own_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &settings(), None, Duration::days(30)).unwrap();
        let agent = Uuid::new_v4();
        let request = csr(&agent.to_string(), |p| {
            p.subject_alt_names = vec![
                SanType::DnsName("lp.shop".try_into().unwrap()),
                SanType::DnsName("evil.example".try_into().unwrap()),
            ];
        });
        let issued = pki
            .sign_csr(
                &request,
                agent,
                AgentKind::LocalParent,
                &["lp.shop".into()],
                &["10.0.0.9".into()],
            )
            .unwrap();
        assert_eq!(issued.ignored.len(), 1);
        let certs = pem_certs(&issued.chain_pem).unwrap();
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, leaf) = X509Certificate::from_der(&certs[0]).unwrap();
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 2);
    }

    #[test]
    fn a_company_ca_that_is_not_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(vec!["not-a-ca".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("c.key"), key.serialize_pem()).unwrap();
        let company = CompanyCa {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("c.key"),
        };
        let err = Pki::generate(dir.path(), &settings(), Some(&company), Duration::days(30))
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a CA"), "{err}");
        assert!(!exists(dir.path()));
    }
}
