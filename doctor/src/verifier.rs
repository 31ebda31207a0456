//! What the doctor plugs into rustls to watch the handshake: a verifier
//! that records the chain the server presents before rustls's own WebPKI
//! verification judges it (so the handshake is as strict as an agent's),
//! and a client-certificate resolver that records whether the server asked
//! for one, and from which CAs.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Name};

/// What the handshake showed: the chain the server presented, and whether
/// (and from which CAs) it asked for a client certificate.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    chain: Mutex<Option<Vec<CertificateDer<'static>>>>,
    asked: Mutex<Option<Vec<String>>>,
}

impl Observed {
    /// The chain the server presented, leaf first, once it did.
    pub(crate) fn chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The CAs the server named when it asked for a client certificate;
    /// `None` when it did not ask.
    pub(crate) fn asked(&self) -> Option<Vec<String>> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// rustls's WebPKI verifier, unchanged, that first writes down what it is shown.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The verifier that decides.
    pub(crate) inner: Arc<WebPkiServerVerifier>,
    /// Where the chain is written down.
    pub(crate) observed: Arc<Observed>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self
            .observed
            .chain
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(chain);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Presents the client certificate (if any) and writes down that the server
/// asked for one, with the CAs it said it accepts.
#[derive(Debug)]
pub(crate) struct ClientResolver {
    /// The client certificate and key, when there is one.
    pub(crate) key: Option<Arc<CertifiedKey>>,
    /// Where the request is written down.
    pub(crate) observed: Arc<Observed>,
}

impl ResolvesClientCert for ClientResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let hints = root_hint_subjects
            .iter()
            .map(|dn| match X509Name::from_der(dn) {
                Ok((_, name)) => name.to_string(),
                Err(_) => "(unreadable name)".to_owned(),
            })
            .collect();
        *self
            .observed
            .asked
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hints);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}
