//! A local parent agent's SSL port: the children of its location test their
//! TLS connection against it instead of the parent. It presents the local
//! parent's own certificate (serverAuth, its own names) and requires a
//! client certificate from the network's CA, like the parent's SSL port.

use std::sync::Arc;

use rustls::ServerConfig;
use tracing::{info, warn};

use crate::certs::CertStore;
use crate::shutdown::Shutdown;

/// Builds the server configuration from this agent's certificates, with
/// the network's TLS versions and cipher suites (`policy`).
pub fn server_config(
    store: &CertStore,
    policy: &fleetls_proto::TlsPolicy,
) -> Result<Arc<ServerConfig>, String> {
    let loaded = crate::steps::cert_test(store).map_err(|f| f.message)?;
    let crl = std::fs::read(store.crl_path()).ok();
    let verifier = fleetls_bus::tls::client_verifier(loaded.roots.clone(), crl.as_deref())?;
    let mut config = fleetls_bus::tls::server_builder(policy)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(loaded.chain, loaded.key)
        .map_err(|e| e.to_string())?;
    // The policy's order of suites, not the client's (as the parent's).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Serves TLS on `port` until `shutdown`, each handshake with the newest
/// configuration `config` holds.
pub async fn serve(
    config: tokio::sync::watch::Receiver<Arc<ServerConfig>>,
    port: u16,
    shutdown: Shutdown,
) {
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            warn!(port, error = %e, "cannot listen on the local SSL port");
            return;
        }
    };
    info!(
        port,
        "serving the SSL port for the children of this location"
    );
    let greeting = format!("fleetls-local-parent {} ok\n", env!("CARGO_PKG_VERSION"));
    fleetls_bus::tls::serve("local-parent-port", listener, config, greeting, shutdown).await
}
