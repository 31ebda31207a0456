//! What the doctor is given, read and checked before it connects: the
//! target `HOST:PORT`, the CA to trust (every certificate of the file an
//! anchor) and the client certificate with its key.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::describe::fingerprint;

/// `HOST:PORT` or `[IPv6]:PORT` split; the host without brackets.
pub(crate) fn split_target(target: &str) -> Option<(String, u16)> {
    let target = target.trim();
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        (host, port)
    } else {
        let (host, port) = target.rsplit_once(':')?;
        if host.contains(':') {
            return None;
        }
        (host, port)
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// A CA certificate, as the explanations name it.
pub(crate) struct Anchor {
    /// Subject DN.
    pub(crate) subject: String,
    /// `sha256:` + hex of the DER.
    pub(crate) fingerprint: String,
    /// The certificate itself.
    pub(crate) der: CertificateDer<'static>,
}

/// Reads the CA file: the roots rustls verifies with, and the same
/// certificates as [`Anchor`]s for the explanations.
pub(crate) fn load_ca(ca_pem: &[u8]) -> Result<(RootCertStore, Vec<Anchor>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the CA is not readable PEM ({e})"))?;
    if certs.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let mut roots = RootCertStore::empty();
    let mut anchors = Vec::new();
    // Every certificate of the file is an anchor, as for the agents: a
    // company intermediate may come without its root.
    for der in certs {
        roots
            .add(der.clone())
            .map_err(|e| format!("the CA certificate is unusable ({e})"))?;
        let subject = X509Certificate::from_der(&der)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default();
        anchors.push(Anchor {
            subject,
            fingerprint: fingerprint(&der),
            der,
        });
    }
    Ok((roots, anchors))
}

/// The CAs as the explanations list them: `"SUBJECT" (sha256:…)`, joined
/// with commas.
pub(crate) fn anchor_names(anchors: &[Anchor]) -> String {
    anchors
        .iter()
        .map(|a| format!("\"{}\" ({})", a.subject, a.fingerprint))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The client certificate and key, checked to belong together.
pub(crate) struct Identity {
    /// The chain and key, as rustls presents them.
    pub(crate) key: Arc<CertifiedKey>,
    /// Subject DN of the certificate.
    pub(crate) subject: String,
    /// Issuer DN of the certificate.
    pub(crate) issuer: String,
}

/// Reads the client chain and key, and checks that the key is the
/// certificate's.
pub(crate) fn load_identity(
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Identity, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the client certificate is not readable PEM ({e})"))?;
    if chain.is_empty() {
        return Err("the client certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the client key is not readable PEM ({e})"))?;
    let (subject, issuer) = X509Certificate::from_der(&chain[0])
        .map(|(_, c)| (c.subject().to_string(), c.issuer().to_string()))
        .map_err(|e| format!("the client certificate does not parse ({e})"))?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the client key does not fit its certificate ({e})"))?;
    Ok(Identity {
        key: Arc::new(key),
        subject,
        issuer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split() {
        assert_eq!(
            split_target("parent.example:12365"),
            Some(("parent.example".into(), 12365))
        );
        assert_eq!(
            split_target("[fd00::1]:5671"),
            Some(("fd00::1".into(), 5671))
        );
        assert_eq!(split_target("parent.example"), None);
        assert_eq!(split_target("fd00::1:5671"), None);
        assert_eq!(split_target("host:0"), None);
        assert_eq!(split_target(":443"), None);
        assert_eq!(split_target("host:http"), None);
    }
}
