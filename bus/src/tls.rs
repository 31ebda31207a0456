//! The client-certificate check of every fleetls TLS server (the parent's
//! SSL port and a local parent's): a certificate from the network's CA, and
//! not on the CA's revocation list when there is one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::shutdown::Shutdown;

const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The crypto provider (ring, the workspace's one) limited to the cipher
/// suites `policy` allows, and the TLS versions it allows; an unknown
/// suite name, or suites that leave no version usable, is an error naming
/// them and listing what is known.
pub fn provider_for(
    policy: &fleetls_proto::TlsPolicy,
) -> Result<
    (
        Arc<CryptoProvider>,
        &'static [&'static SupportedProtocolVersion],
    ),
    String,
> {
    let mut provider = rustls::crypto::ring::default_provider();
    let known = |p: &CryptoProvider| -> Vec<String> {
        p.cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect()
    };
    let versions: &'static [&'static SupportedProtocolVersion] = match policy.min_version {
        fleetls_proto::TlsVersion::Tls12 => rustls::ALL_VERSIONS,
        fleetls_proto::TlsVersion::Tls13 => TLS13_ONLY,
    };
    if !policy.cipher_suites.is_empty() {
        let all = known(&provider);
        let unknown: Vec<&String> = policy
            .cipher_suites
            .iter()
            .filter(|name| !all.contains(name))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "unknown cipher suite(s) {unknown:?}: choose among {}",
                all.join(";")
            ));
        }
        provider
            .cipher_suites
            .retain(|s| policy.cipher_suites.contains(&format!("{:?}", s.suite())));
    }
    let usable = provider
        .cipher_suites
        .iter()
        .any(|s| versions.iter().any(|v| v.version == s.version().version));
    if !usable {
        return Err(format!(
            "none of the cipher suites {:?} works with TLS {} and above: add a TLS 1.3 suite (one of {})",
            policy.cipher_suites,
            policy.min_version.as_str(),
            known(&rustls::crypto::ring::default_provider())
                .into_iter()
                .filter(|n| n.starts_with("TLS13_"))
                .collect::<Vec<_>>()
                .join(";")
        ));
    }
    Ok((Arc::new(provider), versions))
}

/// A server configuration builder that follows `policy`.
pub fn server_builder(
    policy: &fleetls_proto::TlsPolicy,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, String> {
    let (provider, versions) = provider_for(policy)?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())
}

/// `sha256:` and the lowercase hex SHA-256 of `der` (a certificate): how
/// fleetls names a CA an operator pins.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// One certificate as PEM text (LF line endings).
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Every certificate of a PEM text, DER; none at all is an error.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| format!("unreadable PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    Ok(certs)
}

/// A verifier that requires a client certificate chaining to `roots` and
/// refuses every certificate `crl_pem` (PEM, one or more CRLs) revokes.
/// Only the agent's own certificate is checked against the CRL: the CA's
/// own issuer (a company root) publishes none here.
///
/// The lists are read once, into a set of (issuer, serial), and each
/// handshake looks its certificate up there. webpki's own CRL check
/// verifies the list's signature at every handshake — a hash of the whole
/// list: after a renewal of 30,000 agents (a list of 30,000 entries, ~1
/// MB) that was 45% of the parent's CPU during a verify campaign. The lists
/// are the parent's own, signed by it and read from its data directory (or,
/// on a local parent, received in a signed message from it).
pub fn client_verifier(
    roots: Arc<RootCertStore>,
    crl_pem: Option<&[u8]>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let chain = WebPkiClientVerifier::builder(roots)
        .build()
        .map_err(|e| format!("client certificate verifier: {e}"))?;
    let Some(pem) = crl_pem else {
        return Ok(chain);
    };
    let revoked = Revoked::from_pem(pem)?;
    if revoked.is_empty() {
        return Ok(chain);
    }
    Ok(Arc::new(NotRevoked { chain, revoked }))
}

/// The serials each CA revoked, by the CA's name (DER, as in the
/// certificates it issues).
#[derive(Debug, Default)]
struct Revoked(HashMap<Vec<u8>, HashSet<Vec<u8>>>);

impl Revoked {
    /// Reads every CRL of `pem`; a list that is not PEM or not a CRL is an
    /// error naming what is wrong.
    fn from_pem(pem: &[u8]) -> Result<Revoked, String> {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the revocation list is not PEM: {e}"))?;
        let mut revoked = Revoked::default();
        for der in &crls {
            let unreadable =
                |e: webpki::Error| format!("the revocation list cannot be read: {e:?}");
            let crl =
                webpki::BorrowedCertRevocationList::from_der(der.as_ref()).map_err(unreadable)?;
            let serials = (&crl)
                .into_iter()
                .map(|entry| entry.map(|entry| entry.serial_number.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(unreadable)?;
            let crl = webpki::CertRevocationList::from(crl);
            if crl.issuing_distribution_point().is_some() {
                // Its scope would be narrower than its issuer's certificates
                // (fleetls never writes one).
                return Err(
                    "the revocation list names an issuing distribution point, which fleetls \
                     does not support: give the CA's whole list"
                        .into(),
                );
            }
            revoked
                .0
                .entry(crl.issuer().to_vec())
                .or_default()
                .extend(serials);
        }
        Ok(revoked)
    }

    fn is_empty(&self) -> bool {
        self.0.values().all(HashSet::is_empty)
    }

    /// Whether the CA named `issuer` revoked `serial`.
    fn contains(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.0.get(issuer).is_some_and(|s| s.contains(serial))
    }
}

/// webpki's check of the chain, then the certificate looked up among the
/// revoked ones (see [`client_verifier`]).
#[derive(Debug)]
struct NotRevoked {
    chain: Arc<dyn ClientCertVerifier>,
    revoked: Revoked,
}

impl ClientCertVerifier for NotRevoked {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.revoked.contains(cert.issuer(), cert.serial()) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.chain.requires_raw_public_keys()
    }
}

/// Serves TLS on `listener` until `shutdown`: each connection gets a full
/// handshake (client certificate required) with the newest configuration
/// `config` holds — a new certificate or revocation list applies from the
/// next handshake, the port is never closed —, then `greeting`, then the
/// end. `what` names the port in the logs.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    config: tokio::sync::watch::Receiver<Arc<ServerConfig>>,
    greeting: String,
    mut shutdown: Shutdown,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(port = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config.borrow().clone());
        let greeting = greeting.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(mut tls)) => {
                    let _ = tls.write_all(greeting.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
                Ok(Err(e)) => debug!(port = what, %peer, error = %e, "handshake refused"),
                Err(_) => debug!(port = what, %peer, "handshake timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
        ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, RevocationReason,
        RevokedCertParams, SerialNumber,
    };

    /// A CA: its certificate (DER) and its issuer.
    fn ca(name: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        (der, Issuer::new(params, key))
    }

    /// A client certificate of `ca` with the serial `serial`.
    fn client(ca: &Issuer<'_, KeyPair>, serial: u64) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "till");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, ca).unwrap().der().clone()
    }

    /// `ca`'s revocation list (PEM) revoking `serials`.
    fn crl(ca: &Issuer<'_, KeyPair>, serials: &[u64]) -> String {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(ca)
        .unwrap()
        .pem()
        .unwrap()
    }

    fn verdict(
        verifier: &Arc<dyn ClientCertVerifier>,
        cert: &CertificateDer<'_>,
    ) -> Result<(), rustls::Error> {
        verifier
            .verify_client_cert(cert, &[], UnixTime::now())
            .map(|_| ())
    }

    const REVOKED: Result<(), rustls::Error> =
        Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));

    /// During a CA rotation both CAs are trusted and each has its list: a
    /// serial is revoked for the CA that revoked it only.
    #[test]
    fn a_revoked_certificate_is_refused_and_the_same_serial_of_another_ca_is_not() {
        let (old_der, old) = ca("fleetls CA old");
        let (new_der, new) = ca("fleetls CA new");
        let mut roots = RootCertStore::empty();
        roots.add(old_der).unwrap();
        roots.add(new_der).unwrap();
        let roots = Arc::new(roots);
        let lists = format!("{}{}", crl(&old, &[2, 3]), crl(&new, &[7]));
        let verifier = client_verifier(roots.clone(), Some(lists.as_bytes())).unwrap();
        assert_eq!(verdict(&verifier, &client(&old, 1)), Ok(()));
        assert_eq!(verdict(&verifier, &client(&old, 2)), REVOKED);
        assert_eq!(verdict(&verifier, &client(&old, 3)), REVOKED);
        assert_eq!(verdict(&verifier, &client(&new, 2)), Ok(()));
        assert_eq!(verdict(&verifier, &client(&new, 7)), REVOKED);
        assert_eq!(verdict(&verifier, &client(&old, 7)), Ok(()));
        // A CA nobody trusts is refused whatever the lists say.
        let (_, foreign) = ca("fleetls CA old");
        assert!(matches!(
            verdict(&verifier, &client(&foreign, 1)),
            Err(rustls::Error::InvalidCertificate(_))
        ));
        assert_ne!(verdict(&verifier, &client(&foreign, 1)), REVOKED);
        // Without a list, and with a list that revokes nothing, nothing is
        // revoked; the chain is still checked.
        for lists in [None, Some(crl(&old, &[]))] {
            let verifier =
                client_verifier(roots.clone(), lists.as_deref().map(str::as_bytes)).unwrap();
            assert_eq!(verdict(&verifier, &client(&old, 2)), Ok(()));
            assert!(verdict(&verifier, &client(&foreign, 2)).is_err());
        }
    }

    /// A list that cannot be read is an error that says so, not a verifier
    /// that lets everyone in.
    #[test]
    fn an_unreadable_revocation_list_is_an_error() {
        let (der, _) = ca("fleetls CA");
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let roots = Arc::new(roots);
        let garbage = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        let why = client_verifier(roots.clone(), Some(garbage.as_bytes())).unwrap_err();
        assert!(why.contains("revocation list cannot be read"), "{why}");
        let broken = "-----BEGIN X509 CRL-----\nnot base64!\n";
        let why = client_verifier(roots, Some(broken.as_bytes())).unwrap_err();
        assert!(why.contains("revocation list"), "{why}");
    }
}
