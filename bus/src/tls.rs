//! The client-certificate check of every fleetls TLS server (the parent's
//! SSL port and a local parent's): a certificate from the network's CA, and
//! not on the CA's revocation list when there is one.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
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
pub fn client_verifier(
    roots: Arc<RootCertStore>,
    crl_pem: Option<&[u8]>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut builder = WebPkiClientVerifier::builder(roots);
    if let Some(pem) = crl_pem {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the revocation list is not PEM: {e}"))?;
        if !crls.is_empty() {
            builder = builder
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
    }
    builder
        .build()
        .map_err(|e| format!("client certificate verifier: {e}"))
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
