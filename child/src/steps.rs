//! The two steps of the SSL switchover test, as a child runs them.
//!
//! Step 1, "certificate generation", loads CA, key and chain, checks that the
//! key matches, the chain verifies and nothing is expired, and builds the TLS
//! client configuration. Step 2, "connection over the SSL port", makes a full
//! TLS handshake with the client certificate to the host and port the parent
//! named and reads the server's greeting (in TLS 1.3 a refused client
//! certificate only shows then). Each failure carries a [`Cause`].

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use fleetls_proto::Cause;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;

use crate::certs::CertStore;

/// The message of a passed step 1.
pub const CERT_OK: &str = "Certificates generated successfully!";
/// The message of a passed step 2.
pub const SSL_OK: &str = "SSL communication switchover test completed successfully!";

/// A failed step: the message for the operator and its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// What the operator reads.
    pub message: String,
    /// Why, machine-readable.
    pub cause: Cause,
}

fn fail(cause: Cause, message: impl Into<String>) -> StepFailure {
    StepFailure {
        message: message.into(),
        cause,
    }
}

/// What step 1 loads: the TLS client configuration and the trusted roots.
pub struct Loaded {
    /// A client configuration presenting this agent's certificate.
    pub client: Arc<ClientConfig>,
    /// The CA, as trust anchors.
    pub roots: Arc<RootCertStore>,
    /// This agent's chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// This agent's key.
    pub key: PrivateKeyDer<'static>,
}

/// Step 1: load and check CA, key and chain; build the client configuration.
pub fn cert_test(store: &CertStore) -> Result<Loaded, StepFailure> {
    let read = |path: std::path::PathBuf| {
        std::fs::read(&path).map_err(|e| {
            fail(
                Cause::NoCertificate,
                format!(
                    "Certificate test failed: {} cannot be read ({e}).",
                    path.display()
                ),
            )
        })
    };
    let ca_pem = read(store.ca_path())?;
    let chain_pem = read(store.chain_path())?;
    let key_pem = read(store.key_path())?;
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            fail(
                Cause::NoCertificate,
                format!("Certificate test failed: the CA is unreadable ({e})."),
            )
        })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            fail(
                Cause::NoCertificate,
                format!("Certificate test failed: the certificate is unreadable ({e})."),
            )
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        fail(
            Cause::NoCertificate,
            format!("Certificate test failed: the key is unreadable ({e})."),
        )
    })?;
    if ca.is_empty() || chain.is_empty() {
        return Err(fail(
            Cause::NoCertificate,
            "Certificate test failed: no certificate is installed.",
        ));
    }
    let mut roots = RootCertStore::empty();
    // Every CA certificate of the chain is an anchor: a company intermediate
    // may come without its root.
    for cert in &ca {
        roots.add(cert.clone()).map_err(|e| {
            fail(
                Cause::Other,
                format!("Certificate test failed: the CA is unusable ({e})."),
            )
        })?;
    }
    let roots = Arc::new(roots);
    // The chain must verify as a client certificate under the CA, now.
    let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone())
        .build()
        .map_err(|e| fail(Cause::Other, format!("Certificate test failed: {e}.")))?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| {
            let cause = tls_cause(&e).unwrap_or(Cause::Other);
            fail(
                cause,
                format!("Certificate test failed: this agent's certificate does not verify ({e})."),
            )
        })?;
    // The servers this agent connects to may also present a certificate of
    // a root it was given (`--trust-bundle`: the parent's own SSL port
    // certificate); its clients are still checked against the CA alone.
    let mut server_roots = (*roots).clone();
    if let Ok(bundle) = std::fs::read(store.trust_bundle_path()) {
        for cert in CertificateDer::pem_slice_iter(&bundle).flatten() {
            let _ = server_roots.add(cert);
        }
    }
    // Building the client config checks that the key matches the certificate.
    let client = ClientConfig::builder()
        .with_root_certificates(Arc::new(server_roots))
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            fail(
                Cause::NoCertificate,
                format!("Certificate test failed: the key does not match the certificate ({e})."),
            )
        })?;
    Ok(Loaded {
        client: Arc::new(client),
        roots,
        chain,
        key,
    })
}

/// The cause of a rustls error, when it has one of ours.
pub fn tls_cause(error: &rustls::Error) -> Option<Cause> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    Some(match error {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => Cause::UnknownIssuer,
            C::NotValidForName | C::NotValidForNameContext { .. } => Cause::NameMismatch,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => Cause::Expired,
            _ => Cause::Other,
        },
        E::AlertReceived(
            A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied,
        ) => Cause::ClientCertRejected,
        E::NoCertificatesPresented => Cause::NoCertificate,
        _ => return None,
    })
}

fn io_cause(error: &std::io::Error) -> Cause {
    use std::io::ErrorKind as K;
    if let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return tls_cause(tls).unwrap_or(Cause::Other);
    }
    match error.kind() {
        K::ConnectionRefused => Cause::Refused,
        K::TimedOut | K::WouldBlock => Cause::Timeout,
        // A server that drops us right after the handshake refused our certificate.
        K::ConnectionReset | K::UnexpectedEof | K::BrokenPipe | K::ConnectionAborted => {
            Cause::ClientCertRejected
        }
        _ => Cause::Other,
    }
}

/// Step 2: a full TLS handshake with the client certificate to `host:port`,
/// then the server's greeting line, all within `limit`.
pub async fn ssl_port_test(
    loaded: &Loaded,
    host: &str,
    port: u16,
    limit: Duration,
) -> Result<String, StepFailure> {
    let failed = |cause: Cause, detail: String| {
        fail(
            cause,
            format!("Failed to establish connection over the SSL port {port}. ({detail})"),
        )
    };
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| failed(Cause::Dns, format!("{host:?} is not a host name: {e}")))?;
    let target = format!("{host}:{port}");
    let addresses = tokio::task::spawn_blocking(move || {
        target.to_socket_addrs().map(|a| a.collect::<Vec<_>>())
    })
    .await
    .map_err(|e| failed(Cause::Other, e.to_string()))?
    .map_err(|e| failed(Cause::Dns, format!("{host} does not resolve: {e}")))?;
    if addresses.is_empty() {
        return Err(failed(Cause::Dns, format!("{host} has no address")));
    }
    let attempt = async {
        // Every address in turn (localhost may be ::1 first, 127.0.0.1 next).
        let mut last_error = None;
        let mut connected = None;
        for address in &addresses {
            match tokio::net::TcpStream::connect(address).await {
                Ok(tcp) => {
                    connected = Some((tcp, *address));
                    break;
                }
                Err(e) => {
                    last_error = Some(failed(io_cause(&e), format!("connect to {address}: {e}")))
                }
            }
        }
        let Some((tcp, address)) = connected else {
            return Err(last_error.expect("at least one address was tried"));
        };
        let connector = tokio_rustls::TlsConnector::from(loaded.client.clone());
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| failed(io_cause(&e), format!("TLS handshake with {address}: {e}")))?;
        let mut greeting = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = tls
                .read(&mut buf)
                .await
                .map_err(|e| failed(io_cause(&e), format!("after the handshake: {e}")))?;
            if n == 0 {
                break;
            }
            greeting.extend_from_slice(&buf[..n]);
            if greeting.contains(&b'\n') || greeting.len() > 4096 {
                break;
            }
        }
        if greeting.is_empty() {
            return Err(failed(
                Cause::ClientCertRejected,
                "the server closed the connection without a greeting: it refused the client certificate".into(),
            ));
        }
        Ok(SSL_OK.to_owned())
    };
    tokio::time::timeout(limit, attempt).await.map_err(|_| {
        failed(
            Cause::Timeout,
            format!("no answer from {host}:{port} within {limit:?}"),
        )
    })?
}
