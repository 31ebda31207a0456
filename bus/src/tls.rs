//! The client-certificate check of every fleetls TLS server (the parent's
//! SSL port and a local parent's): a certificate from the network's CA, and
//! not on the CA's revocation list when there is one.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

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
