//! The parent's SSL port: a rustls listener with the parent's server
//! certificate that requires a client certificate issued by the network's
//! CA. A child's step 2 handshakes here and reads the one-line greeting.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tracing::info;

use fleetls_bus::shutdown::Shutdown;

/// Why the SSL port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SslPortError {
    /// A certificate or key file is unusable.
    #[error("{0}")]
    Certificates(String),
    /// The port could not be bound.
    #[error("cannot listen on the SSL port {port}: {source} (is it in use? change it with `settings set --port`)")]
    Bind {
        /// The port.
        port: u16,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A server config presenting `cert_pem` (chain) / `key_pem` and requiring a
/// client certificate that chains to `ca_pem`, with the TLS versions and
/// cipher suites of `policy`.
pub fn server_config(
    ca_pem: &[u8],
    chain_pem: &[u8],
    key_pem: &[u8],
    crl_pem: Option<&[u8]>,
    policy: &fleetls_proto::TlsPolicy,
) -> Result<Arc<ServerConfig>, SslPortError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| SslPortError::Certificates(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| bad("CA", &e))?)
            .map_err(|e| bad("CA", &e))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("server certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("server key", &e))?;
    let verifier = fleetls_bus::tls::client_verifier(Arc::new(roots), crl_pem)
        .map_err(|e| bad("client verifier", &e))?;
    let mut config = fleetls_bus::tls::server_builder(policy)
        .map_err(|e| bad("TLS settings", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("server certificate", &e))?;
    // The policy's order of suites, not the client's (as the broker's
    // `honor_cipher_order`).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Loads the parent's SSL port configuration from `DIR/certificates`, with
/// the TLS versions and suites of `policy`.
pub fn parent_config(
    data_dir: &Path,
    policy: &fleetls_proto::TlsPolicy,
) -> Result<Arc<ServerConfig>, SslPortError> {
    use crate::layout::CertFile;
    let layout = crate::layout::Layout::new(data_dir);
    let read = |file: CertFile| {
        let path = layout.certificate(file);
        std::fs::read(&path)
            .map_err(|e| SslPortError::Certificates(format!("{}: {e}", path.display())))
    };
    let crl = std::fs::read(layout.certificate(CertFile::Crl)).ok();
    server_config(
        &trust(&layout),
        &read(CertFile::ParentPem)?,
        &read(CertFile::ParentKey)?,
        crl.as_deref(),
        policy,
    )
}

/// Every CA certificate trusted (`trust.pem`; `ca.pem` in a data dir made
/// before there was one).
pub fn trust(layout: &crate::layout::Layout) -> Vec<u8> {
    use crate::layout::CertFile;
    std::fs::read(layout.certificate(CertFile::TrustPem))
        .or_else(|_| std::fs::read(layout.certificate(CertFile::CaPem)))
        .unwrap_or_default()
}

/// Binds the SSL port on every address.
pub async fn bind(port: u16) -> Result<TcpListener, SslPortError> {
    TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| SslPortError::Bind { port, source })
}

/// Serves the parent's SSL port on `listener` until `shutdown` (see
/// [`fleetls_bus::tls::serve`]).
pub async fn serve(
    listener: TcpListener,
    config: tokio::sync::watch::Receiver<Arc<ServerConfig>>,
    greeting: String,
    shutdown: Shutdown,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    info!(port, "SSL port listening");
    fleetls_bus::tls::serve("ssl-port", listener, config, greeting, shutdown).await
}
