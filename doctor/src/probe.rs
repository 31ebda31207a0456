//! The probe driver: the order of the checks, from the inputs through
//! resolving, connecting and the handshake to what the server does right
//! after it. Each step is a function that adds its check to the report and
//! says whether the next can run; the explanations live in `connect`,
//! `classify` and `chain`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::chain::check_chain;
use crate::classify::{client_outcome, client_refusal, handshake_failed};
use crate::connect::{connect, resolve};
use crate::describe::summary;
use crate::input::{anchor_names, load_ca, load_identity, split_target, Anchor, Identity};
use crate::report::{Check, DoctorReport, Limits, Offer, Problem};
use crate::verifier::{ClientResolver, Observed, Recorder};

/// Diagnoses `target` (`HOST:PORT`) trusting only `ca_pem` (PEM, one or more
/// CA certificates) and presenting `client` (chain PEM, key PEM) if given.
pub async fn diagnose(
    target: &str,
    ca_pem: &[u8],
    client: Option<(Vec<u8>, Vec<u8>)>,
) -> DoctorReport {
    diagnose_with(target, ca_pem, client, Limits::default()).await
}

/// [`diagnose`] reading the CA and the client certificate from files: a file
/// that cannot be read is a failed check (the client certificate is then
/// left out and the rest still runs).
pub async fn diagnose_files(
    target: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    limits: Limits,
) -> DoctorReport {
    let ca_pem = match std::fs::read(ca) {
        Ok(pem) => pem,
        Err(e) => {
            let mut report = DoctorReport::new(target);
            report.fail(
                "ca",
                Problem::BadInput,
                format!("cannot read the CA {}: {e}", ca.display()),
                "give the CA file with --ca, or generate the certificates first \
                 (`fleetls-parent certs generate`; a child gets its CA with `certs send`)",
            );
            return report;
        }
    };
    let mut unreadable = None;
    let identity = match client {
        None => None,
        Some((chain, key)) => match (std::fs::read(chain), std::fs::read(key)) {
            (Ok(chain), Ok(key)) => Some((chain, key)),
            (Err(e), _) => {
                unreadable = Some(format!("cannot read {}: {e}", chain.display()));
                None
            }
            (_, Err(e)) => {
                unreadable = Some(format!("cannot read {}: {e}", key.display()));
                None
            }
        },
    };
    let mut report = diagnose_with(target, &ca_pem, identity, limits).await;
    if let Some(detail) = unreadable {
        report.ok = false;
        report.checks.insert(
            0,
            Check {
                name: "client_identity".into(),
                ok: false,
                problem: Some(Problem::BadInput),
                detail: format!("{detail}; going on without a client certificate"),
                fix: Some(
                    "run the doctor as the agent's user (the key is readable by it only), \
                     or give this agent a certificate first (`fleetls-parent certs send`)"
                        .into(),
                ),
            },
        );
    }
    report
}

/// What the server is checked against: the host asked for, the CA, and
/// the client certificate presented.
struct Expected {
    /// The host as given (without brackets).
    host: String,
    /// The host as rustls checks it.
    server_name: ServerName<'static>,
    /// The CA, as rustls verifies with it.
    roots: RootCertStore,
    /// The CA, as the explanations name it.
    anchors: Vec<Anchor>,
    /// The crypto provider of the handshake and of the checks.
    provider: Arc<CryptoProvider>,
    /// The client certificate, when one was given and is usable.
    identity: Option<Identity>,
}

impl Expected {
    /// The checks of `chain` (issuer, name, validity) into `report`.
    fn check_chain(&self, report: &mut DoctorReport, chain: &[CertificateDer<'static>]) {
        check_chain(
            report,
            chain,
            &self.roots,
            &self.anchors,
            &self.server_name,
            &self.host,
            &self.provider,
        );
    }
}

/// [`diagnose`] with explicit time limits.
pub async fn diagnose_with(
    target: &str,
    ca_pem: &[u8],
    client: Option<(Vec<u8>, Vec<u8>)>,
    limits: Limits,
) -> DoctorReport {
    let mut report = DoctorReport::new(target);
    let Some((host, port, server_name)) = parse_target(&mut report, target) else {
        return report;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Some((roots, anchors)) = trust_ca(&mut report, ca_pem) else {
        return report;
    };
    let identity = client.and_then(|(chain_pem, key_pem)| {
        present_identity(&mut report, &chain_pem, &key_pem, &provider)
    });
    let expected = Expected {
        host,
        server_name,
        roots,
        anchors,
        provider,
        identity,
    };

    let Some(addresses) = resolve(&mut report, &expected.host, port, limits).await else {
        return report;
    };
    let Some((tcp, address)) = connect(&mut report, &addresses, port, limits).await else {
        return report;
    };
    report.address = Some(address.to_string());

    let observed = Arc::new(Observed::default());
    let Some(config) = tls_config(&mut report, &expected, limits.offer, &observed) else {
        return report;
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let handshake = tokio::time::timeout(
        limits.handshake,
        connector.connect(expected.server_name.clone(), tcp),
    )
    .await;

    let chain = observed.chain();
    if let Some(chain) = &chain {
        report.server_chain = chain.iter().map(|c| summary(c)).collect();
    }
    let Ok(handshake) = handshake else {
        report.fail(
            "handshake",
            Problem::Timeout,
            format!(
                "the port accepts connections but the TLS handshake did not finish within {:?}",
                limits.handshake
            ),
            "check that this port serves TLS (a plain-text service waits for the client to speak first), \
             and that the server is not overloaded",
        );
        return report;
    };
    let mut tls = match handshake {
        Ok(tls) => {
            handshake_passed(&mut report, &tls);
            tls
        }
        Err(e) => {
            handshake_refused(&mut report, &expected, &e, chain.as_deref(), &observed);
            return report;
        }
    };
    if let Some(chain) = &chain {
        expected.check_chain(&mut report, chain);
    }
    after_handshake(&mut report, &mut tls, &expected, limits, &observed).await;
    report
}

/// The target split into host and port, and the host as rustls names it;
/// `None` after a failed `target` check.
fn parse_target(
    report: &mut DoctorReport,
    target: &str,
) -> Option<(String, u16, ServerName<'static>)> {
    let Some((host, port)) = split_target(target) else {
        report.fail(
            "target",
            Problem::BadInput,
            format!("{target:?} is not HOST:PORT"),
            "give the host and the port, e.g. parent.example:12365 or [fd00::1]:5671",
        );
        return None;
    };
    match ServerName::try_from(host.clone()) {
        Ok(name) => Some((host, port, name)),
        Err(e) => {
            report.fail(
                "target",
                Problem::BadInput,
                format!("{host:?} is neither a DNS name nor an IP address ({e})"),
                "give the host as a DNS name or an IP address",
            );
            None
        }
    }
}

/// The `ca` check: the CA loaded, or `None` when it cannot be used.
fn trust_ca(report: &mut DoctorReport, ca_pem: &[u8]) -> Option<(RootCertStore, Vec<Anchor>)> {
    match load_ca(ca_pem) {
        Ok((roots, anchors)) => {
            report.pass("ca", format!("trusting {}", anchor_names(&anchors)));
            Some((roots, anchors))
        }
        Err(why) => {
            report.fail(
                "ca",
                Problem::BadInput,
                why,
                "give the PEM file of the CA the server's certificate comes from",
            );
            None
        }
    }
}

/// The `client_identity` check: the client certificate loaded, or `None`
/// (and the doctor goes on without one) when it cannot be used.
fn present_identity(
    report: &mut DoctorReport,
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Option<Identity> {
    match load_identity(chain_pem, key_pem, provider) {
        Ok(identity) => {
            report.pass(
                "client_identity",
                format!(
                    "presenting \"{}\", issued by \"{}\"",
                    identity.subject, identity.issuer
                ),
            );
            Some(identity)
        }
        Err(why) => {
            report.fail(
                "client_identity",
                Problem::BadInput,
                format!("{why}; going on without a client certificate"),
                "check the agent's certificate and key files (the key must be the one of the certificate)",
            );
            None
        }
    }
}

/// The client configuration of the handshake: rustls's WebPKI verifier
/// behind the [`Recorder`], the client certificate behind the
/// [`ClientResolver`], the TLS versions of `offer`. `None` after a failed
/// check when it cannot be made.
fn tls_config(
    report: &mut DoctorReport,
    expected: &Expected,
    offer: Offer,
    observed: &Arc<Observed>,
) -> Option<Arc<ClientConfig>> {
    let provider = &expected.provider;
    let verifier = match WebPkiServerVerifier::builder_with_provider(
        Arc::new(expected.roots.clone()),
        provider.clone(),
    )
    .build()
    {
        Ok(verifier) => verifier,
        Err(e) => {
            report.fail(
                "ca",
                Problem::BadInput,
                format!("the CA cannot be used to verify: {e}"),
                "give the PEM file of a CA certificate",
            );
            return None;
        }
    };
    let versions: &[&rustls::SupportedProtocolVersion] = match offer {
        Offer::Both => rustls::ALL_VERSIONS,
        Offer::Tls12 => &[&rustls::version::TLS12],
        Offer::Tls13 => &[&rustls::version::TLS13],
    };
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map(|builder| {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Recorder {
                    inner: verifier,
                    observed: observed.clone(),
                }))
                .with_client_cert_resolver(Arc::new(ClientResolver {
                    key: expected.identity.as_ref().map(|i| i.key.clone()),
                    observed: observed.clone(),
                }))
        });
    match config {
        Ok(config) => Some(Arc::new(config)),
        Err(e) => {
            report.fail(
                "handshake",
                Problem::Other,
                format!("no TLS configuration: {e}"),
                "report this as a bug",
            );
            None
        }
    }
}

/// The `handshake` check passed: the TLS version and cipher suite agreed.
fn handshake_passed(report: &mut DoctorReport, tls: &TlsStream<TcpStream>) {
    let (_, connection) = tls.get_ref();
    let version = connection
        .protocol_version()
        .map(|v| format!("{v:?}").replace('_', "."))
        .unwrap_or_else(|| "TLS".into());
    let suite = connection
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    report.protocol = Some(version.clone());
    report.pass("handshake", format!("{version}, {suite}"));
}

/// The `handshake` check failed: why, then the checks of the chain the
/// server presented, which say precisely what rustls refused.
fn handshake_refused(
    report: &mut DoctorReport,
    expected: &Expected,
    error: &std::io::Error,
    chain: Option<&[CertificateDer<'static>]>,
    observed: &Observed,
) {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    let mut chain_checks = DoctorReport::new(&report.target);
    if let Some(chain) = chain {
        expected.check_chain(&mut chain_checks, chain);
    }
    let found = chain_checks.problems().first().copied();
    handshake_failed(
        report,
        error,
        tls_error.as_ref(),
        found,
        observed,
        &expected.identity,
    );
    chain_checks.checks.into_iter().for_each(|c| report.push(c));
}

/// The `client_certificate` check. In TLS 1.3 the server checks the client
/// certificate after the client has finished the handshake: a refusal
/// arrives as an alert on the first read.
async fn after_handshake(
    report: &mut DoctorReport,
    tls: &mut TlsStream<TcpStream>,
    expected: &Expected,
    limits: Limits,
    observed: &Observed,
) {
    let identity = &expected.identity;
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(limits.after_handshake, tls.read(&mut buf)).await;
    let asked = observed.asked();
    let presented = identity.is_some() && asked.is_some();
    match read {
        Ok(Ok(n)) if n > 0 => {
            let said = String::from_utf8_lossy(&buf[..n]);
            let said = said.lines().next().unwrap_or("").trim();
            let said: String = said.chars().take(80).collect();
            report.pass(
                "client_certificate",
                format!("{}; the server answered: \"{said}\"", client_outcome(presented, &asked)),
            );
        }
        Err(_) => report.pass(
            "client_certificate",
            format!(
                "{}; the server did not refuse the connection within {:?} (it waits for the client to speak first)",
                client_outcome(presented, &asked),
                limits.after_handshake
            ),
        ),
        Ok(Ok(_)) => report.push(client_refusal(None, presented, &asked, identity)),
        Ok(Err(e)) => {
            let alert = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .and_then(|tls_error| match tls_error {
                    rustls::Error::AlertReceived(alert) => Some(*alert),
                    _ => None,
                });
            report.push(client_refusal(alert, presented, &asked, identity));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::render;

    #[tokio::test]
    async fn bad_input_is_named() {
        let report = diagnose("no-port", b"", None).await;
        assert!(!report.ok);
        assert_eq!(report.problems(), [Problem::BadInput]);
        assert_eq!(report.checks[0].name, "target");
        let report = diagnose("localhost:1", b"not a certificate", None).await;
        assert_eq!(report.checks[0].name, "ca");
        assert!(render(&report).contains("FAILED"));
    }
}
