//! `doctor HOST:PORT`: what is wrong with a TLS endpoint, in plain words.
//!
//! It resolves the host, connects, makes a TLS handshake trusting only the
//! given CA (presenting a client certificate when one is given), then checks
//! one by one what an agent would trip over, each with what to do about it:
//! a DNS failure, a closed port, a timeout, a port that does not speak TLS,
//! a certificate that does not chain to the CA, a missing intermediate, a
//! host name that is not in the certificate, a certificate expired or not
//! yet valid, and a client certificate the server refuses (in TLS 1.3 that
//! shows only after the handshake, so the doctor waits a moment for it).
//!
//! The handshake is as strict as an agent's: the verifier only records the
//! chain the server presents before it hands it to rustls's WebPKI
//! verification. The analysis of that chain (with x509-parser and rustls's
//! own path and name checks) is what turns one rustls error into the list.
//!
//! Both binaries use this crate: `fleetls-parent doctor` with the parent's
//! CA, `fleetls-child doctor` with what a child holds.

#![deny(missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

/// The TLS versions the doctor offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Offer {
    /// TLS 1.2 and 1.3, as every fleetls agent.
    #[default]
    Both,
    /// Only TLS 1.2: what a device limited to it would get.
    Tls12,
    /// Only TLS 1.3.
    Tls13,
}

impl std::str::FromStr for Offer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "1.2" => Ok(Offer::Tls12),
            "1.3" => Ok(Offer::Tls13),
            other => Err(format!("{other:?}: give 1.2 or 1.3")),
        }
    }
}

/// How long each stage may take, and what the doctor offers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Name resolution, and the TCP connection to each address.
    pub connect: Duration,
    /// The TLS handshake.
    pub handshake: Duration,
    /// How long to wait after the handshake for the server to speak or to
    /// refuse the client certificate (TLS 1.3 refuses it only then).
    pub after_handshake: Duration,
    /// The TLS versions offered.
    pub offer: Offer,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            after_handshake: Duration::from_secs(3),
            offer: Offer::Both,
        }
    }
}

/// What a failed check found, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The target, the CA or the client certificate given cannot be used.
    BadInput,
    /// The host name does not resolve.
    Dns,
    /// Nothing listens on the port (connection refused).
    Refused,
    /// No answer in time.
    Timeout,
    /// The port answers, but not with TLS.
    NotTls,
    /// The server's certificate does not chain to the CA.
    UnknownIssuer,
    /// The server sent only its own certificate, whose issuer is not the CA.
    MissingIntermediate,
    /// The host name is not among the certificate's names.
    NameMismatch,
    /// A certificate is expired.
    Expired,
    /// A certificate is not valid yet.
    NotYetValid,
    /// The server's certificate expires soon: renew it now.
    ExpiresSoon,
    /// The server refused the client certificate.
    ClientCertRejected,
    /// The server wants a client certificate and none was given.
    ClientCertRequired,
    /// The server and this client share no TLS version or cipher suite.
    ProtocolMismatch,
    /// Anything else.
    Other,
}

impl Problem {
    /// The name used in JSON and in the text.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::BadInput => "bad_input",
            Problem::Dns => "dns",
            Problem::Refused => "refused",
            Problem::Timeout => "timeout",
            Problem::NotTls => "not_tls",
            Problem::UnknownIssuer => "unknown_issuer",
            Problem::MissingIntermediate => "missing_intermediate",
            Problem::NameMismatch => "name_mismatch",
            Problem::Expired => "expired",
            Problem::NotYetValid => "not_yet_valid",
            Problem::ExpiresSoon => "expires_soon",
            Problem::ClientCertRejected => "client_cert_rejected",
            Problem::ClientCertRequired => "client_cert_required",
            Problem::ProtocolMismatch => "protocol_mismatch",
            Problem::Other => "other",
        }
    }
}

/// One check and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `target`, `ca`, `client_identity`, `resolve`,
    /// `connect`, `handshake`, `issuer`, `name`, `validity`, `client_certificate`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What went wrong, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// What was found, in plain words.
    pub detail: String,
    /// What to do about it, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// A certificate the server presented, as an operator reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertSummary {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Start of validity (UTC).
    pub not_before: String,
    /// End of validity (UTC).
    pub not_after: String,
    /// Subject alternative names (`DNS:…`, `IP:…`).
    pub names: Vec<String>,
    /// `sha256:` + hex of the DER.
    pub fingerprint: String,
}

/// Everything the doctor found about one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DoctorReport {
    /// `HOST:PORT` as given.
    pub target: String,
    /// Every check passed.
    pub ok: bool,
    /// The address connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The TLS version negotiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The chain the server presented, leaf first.
    #[serde(default)]
    pub server_chain: Vec<CertSummary>,
    /// The checks in the order they ran; a check that could not run is left out.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    fn new(target: &str) -> Self {
        DoctorReport {
            target: target.to_owned(),
            ok: true,
            address: None,
            protocol: None,
            server_chain: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_owned(),
            ok: true,
            problem: None,
            detail: detail.into(),
            fix: None,
        });
    }

    fn push(&mut self, check: Check) {
        self.ok &= check.ok;
        self.checks.push(check);
    }

    fn fail(
        &mut self,
        name: &str,
        problem: Problem,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.ok = false;
        self.checks.push(Check {
            name: name.to_owned(),
            ok: false,
            problem: Some(problem),
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    /// The problems found, each once, in the order of the checks.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for problem in self.checks.iter().filter_map(|c| c.problem) {
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        problems
    }
}

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

/// [`diagnose`] with explicit time limits.
pub async fn diagnose_with(
    target: &str,
    ca_pem: &[u8],
    client: Option<(Vec<u8>, Vec<u8>)>,
    limits: Limits,
) -> DoctorReport {
    let mut report = DoctorReport::new(target);
    let Some((host, port)) = split_target(target) else {
        report.fail(
            "target",
            Problem::BadInput,
            format!("{target:?} is not HOST:PORT"),
            "give the host and the port, e.g. parent.example:12365 or [fd00::1]:5671",
        );
        return report;
    };
    let server_name = match ServerName::try_from(host.clone()) {
        Ok(name) => name,
        Err(e) => {
            report.fail(
                "target",
                Problem::BadInput,
                format!("{host:?} is neither a DNS name nor an IP address ({e})"),
                "give the host as a DNS name or an IP address",
            );
            return report;
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let (roots, anchors) = match load_ca(ca_pem) {
        Ok(loaded) => loaded,
        Err(why) => {
            report.fail(
                "ca",
                Problem::BadInput,
                why,
                "give the PEM file of the CA the server's certificate comes from",
            );
            return report;
        }
    };
    report.pass(
        "ca",
        format!(
            "trusting {}",
            anchors
                .iter()
                .map(|a| format!("\"{}\" ({})", a.subject, a.fingerprint))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    let identity = match client {
        None => None,
        Some((chain_pem, key_pem)) => match load_identity(&chain_pem, &key_pem, &provider) {
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
        },
    };

    let Some(addresses) = resolve(&mut report, &host, port, limits).await else {
        return report;
    };
    let Some((tcp, address)) = connect(&mut report, &addresses, port, limits).await else {
        return report;
    };
    report.address = Some(address.to_string());

    let observed = Arc::new(Observed::default());
    let verifier = match WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
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
            return report;
        }
    };
    let versions: &[&rustls::SupportedProtocolVersion] = match limits.offer {
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
                    key: identity.as_ref().map(|i| i.key.clone()),
                    observed: observed.clone(),
                }))
        });
    let config = match config {
        Ok(config) => Arc::new(config),
        Err(e) => {
            report.fail(
                "handshake",
                Problem::Other,
                format!("no TLS configuration: {e}"),
                "report this as a bug",
            );
            return report;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let handshake = tokio::time::timeout(
        limits.handshake,
        connector.connect(server_name.clone(), tcp),
    )
    .await;

    let chain = observed.chain();
    if let Some(chain) = &chain {
        report.server_chain = chain.iter().map(|c| summary(c)).collect();
    }
    let handshake = match handshake {
        Err(_) => {
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
        }
        Ok(result) => result,
    };
    let mut tls = match handshake {
        Ok(tls) => {
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
            tls
        }
        Err(e) => {
            let tls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            // The chain's own checks say precisely what rustls refused.
            let mut chain_checks = DoctorReport::new(target);
            if let Some(chain) = &chain {
                check_chain(
                    &mut chain_checks,
                    chain,
                    &roots,
                    &anchors,
                    &server_name,
                    &host,
                    &provider,
                );
            }
            let found = chain_checks.problems().first().copied();
            handshake_failed(
                &mut report,
                &e,
                tls_error.as_ref(),
                found,
                &observed,
                &identity,
            );
            chain_checks.checks.into_iter().for_each(|c| report.push(c));
            return report;
        }
    };
    if let Some(chain) = &chain {
        check_chain(
            &mut report,
            chain,
            &roots,
            &anchors,
            &server_name,
            &host,
            &provider,
        );
    }

    // In TLS 1.3 the server checks the client certificate after the client
    // has finished the handshake: a refusal arrives as an alert on the
    // first read.
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
        Ok(Ok(_)) => report.push(client_refusal(None, presented, &asked, &identity)),
        Ok(Err(e)) => {
            let alert = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .and_then(|tls_error| match tls_error {
                    rustls::Error::AlertReceived(alert) => Some(*alert),
                    _ => None,
                });
            report.push(client_refusal(alert, presented, &asked, &identity));
        }
    }
    report
}

/// Plain text for a terminal: one line per check, what to do under each
/// failed one, then the chain the server presented.
pub fn render(report: &DoctorReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = write!(out, "doctor {}", report.target);
    match (&report.address, &report.protocol) {
        (Some(address), Some(protocol)) => {
            let _ = write!(out, " ({address}, {protocol})");
        }
        (Some(address), None) => {
            let _ = write!(out, " ({address})");
        }
        _ => {}
    }
    out.push('\n');
    for check in &report.checks {
        let state = if check.ok { "ok" } else { "FAILED" };
        let _ = writeln!(out, "  {state:<7}{:<19}{}", check.name, check.detail);
        if let Some(problem) = check.problem {
            let _ = writeln!(out, "  {:<26}problem: {}", "", problem.as_str());
        }
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "  {:<26}what to do: {fix}", "");
        }
    }
    if !report.server_chain.is_empty() {
        out.push_str("The server presented:\n");
        for (i, cert) in report.server_chain.iter().enumerate() {
            let _ = writeln!(out, "  {i}: \"{}\"", cert.subject);
            let _ = writeln!(out, "     issued by \"{}\"", cert.issuer);
            let _ = writeln!(
                out,
                "     valid from {} to {}",
                cert.not_before, cert.not_after
            );
            if !cert.names.is_empty() {
                let _ = writeln!(out, "     names: {}", cert.names.join(", "));
            }
            let _ = writeln!(out, "     {}", cert.fingerprint);
        }
    }
    let problems = report.problems();
    if problems.is_empty() {
        out.push_str("Result: no problem found.\n");
    } else {
        let names: Vec<&str> = problems.iter().map(|p| p.as_str()).collect();
        let _ = writeln!(
            out,
            "Result: {} problem(s): {}.",
            problems.len(),
            names.join(", ")
        );
    }
    out
}

/// `HOST:PORT` or `[IPv6]:PORT` split; the host without brackets.
fn split_target(target: &str) -> Option<(String, u16)> {
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
struct Anchor {
    subject: String,
    fingerprint: String,
    der: CertificateDer<'static>,
}

fn load_ca(ca_pem: &[u8]) -> Result<(RootCertStore, Vec<Anchor>), String> {
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

/// The client certificate and key, checked to belong together.
struct Identity {
    key: Arc<CertifiedKey>,
    subject: String,
    issuer: String,
}

fn load_identity(
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

async fn resolve(
    report: &mut DoctorReport,
    host: &str,
    port: u16,
    limits: Limits,
) -> Option<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        report.pass("resolve", format!("{host} is an IP address"));
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    let fix = "check the name (a typo?), the DNS server and /etc/hosts of this machine, \
               or use a name or address that resolves here";
    match tokio::time::timeout(limits.connect, tokio::net::lookup_host((host, port))).await {
        Err(_) => {
            report.fail(
                "resolve",
                Problem::Dns,
                format!("{host} did not resolve within {:?}", limits.connect),
                fix,
            );
            None
        }
        Ok(Err(e)) => {
            report.fail(
                "resolve",
                Problem::Dns,
                format!("{host} does not resolve: {e}"),
                fix,
            );
            None
        }
        Ok(Ok(addresses)) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            if addresses.is_empty() {
                report.fail(
                    "resolve",
                    Problem::Dns,
                    format!("{host} has no address"),
                    fix,
                );
                return None;
            }
            let list: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
            report.pass("resolve", format!("{host} is {}", list.join(", ")));
            Some(addresses)
        }
    }
}

/// Connects to each address in turn (`localhost` may be `::1` first).
async fn connect(
    report: &mut DoctorReport,
    addresses: &[SocketAddr],
    port: u16,
    limits: Limits,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let mut failures = Vec::new();
    let mut refused = false;
    for address in addresses {
        match tokio::time::timeout(limits.connect, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                report.pass("connect", format!("{address} accepts connections"));
                return Some((tcp, *address));
            }
            Ok(Err(e)) => {
                refused |= e.kind() == std::io::ErrorKind::ConnectionRefused;
                failures.push(format!("{address}: {e}"));
            }
            Err(_) => failures.push(format!("{address}: no answer within {:?}", limits.connect)),
        }
    }
    if refused {
        report.fail(
            "connect",
            Problem::Refused,
            format!("the port is closed ({})", failures.join("; ")),
            format!(
                "nothing listens on port {port} there: check that the service runs and listens on this port \
                 (the parent's SSL port opens once certificates exist: `settings show`), \
                 or a firewall rejects the connection"
            ),
        );
    } else {
        report.fail(
            "connect",
            Problem::Timeout,
            format!("no answer ({})", failures.join("; ")),
            "the host is down or unreachable from here, or a firewall drops the packets: \
             check the route and the firewalls between this machine and the server",
        );
    }
    None
}

/// Explains a failed handshake; the certificate checks follow separately.
///
/// `found` is the first problem the checks of the server's chain found.
fn handshake_failed(
    report: &mut DoctorReport,
    error: &std::io::Error,
    tls_error: Option<&rustls::Error>,
    found: Option<Problem>,
    observed: &Observed,
    identity: &Option<Identity>,
) {
    use rustls::Error as E;
    let asked = observed.asked();
    match tls_error {
        Some(E::InvalidCertificate(c)) => report.fail(
            "handshake",
            found.unwrap_or_else(|| certificate_problem(c)),
            format!("refused the server's certificate: {error}"),
            "see the checks of the certificate below",
        ),
        Some(E::AlertReceived(alert)) if is_certificate_alert(*alert) || asked.is_some() => {
            // TLS 1.2 checks the client certificate inside the handshake.
            let presented = identity.is_some() && asked.is_some();
            let refusal = client_refusal(Some(*alert), presented, &asked, identity);
            report.push(Check {
                name: "handshake".into(),
                ok: false,
                problem: refusal.problem,
                detail: format!("the server ended the handshake with the alert {alert:?}"),
                fix: Some("see the check of the client certificate".into()),
            });
            report.push(refusal);
        }
        Some(E::AlertReceived(
            alert @ (rustls::AlertDescription::ProtocolVersion
            | rustls::AlertDescription::HandshakeFailure
            | rustls::AlertDescription::InsufficientSecurity),
        )) => report.fail(
            "handshake",
            Problem::ProtocolMismatch,
            format!(
                "the server ended the handshake with the alert {alert:?}: it accepts none of the \
                 TLS versions or cipher suites this client offered"
            ),
            "the server requires a newer TLS version or other cipher suites than this client offers: \
             on the parent, `fleetls-parent settings show` names min-tls and cipher-suites (change them \
             with `settings set --min-tls 1.2 --cipher-suites \"\"`), or update the client",
        ),
        Some(E::PeerIncompatible(why)) => report.fail(
            "handshake",
            Problem::ProtocolMismatch,
            format!("the server and this client share no TLS version or cipher suite ({why:?})"),
            "the server offers only what this client refuses: check its TLS versions and cipher suites",
        ),
        Some(E::AlertReceived(alert)) => report.fail(
            "handshake",
            Problem::Other,
            format!("the server ended the handshake with the alert {alert:?}"),
            "the server and this agent share no TLS version or cipher suite (TLS 1.2 or 1.3 with \
             modern suites is needed), or the server refuses the name asked for: see the server's log",
        ),
        Some(E::InvalidMessage(_)) | Some(E::InappropriateMessage { .. }) => report.fail(
            "handshake",
            Problem::NotTls,
            format!("the port answered, but not with TLS ({error})"),
            "this port serves plain text: use the TLS port (the parent's SSL port, 12365 by default; \
             AMQPS on 5671, plain AMQP is 5672)",
        ),
        Some(other) => report.fail(
            "handshake",
            Problem::Other,
            format!("the TLS handshake failed: {other}"),
            "see the server's log for why it ended the handshake",
        ),
        None => {
            use std::io::ErrorKind as K;
            if matches!(
                error.kind(),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            ) {
                report.fail(
                    "handshake",
                    Problem::NotTls,
                    format!("the server closed the connection during the handshake ({error})"),
                    "check that this port serves TLS (a plain-text service hangs up on a TLS hello), \
                     and see the server's log",
                );
            } else {
                report.fail(
                    "handshake",
                    Problem::Other,
                    format!("the TLS handshake failed: {error}"),
                    "see the server's log",
                );
            }
        }
    }
}

fn certificate_problem(error: &CertificateError) -> Problem {
    use CertificateError as C;
    match error {
        C::UnknownIssuer | C::BadSignature => Problem::UnknownIssuer,
        C::NotValidForName | C::NotValidForNameContext { .. } => Problem::NameMismatch,
        C::Expired | C::ExpiredContext { .. } => Problem::Expired,
        C::NotValidYet | C::NotValidYetContext { .. } => Problem::NotYetValid,
        _ => Problem::Other,
    }
}

/// Alerts a server sends when it does not accept the client certificate.
fn is_certificate_alert(alert: AlertDescription) -> bool {
    use AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied
            | A::DecryptError
    )
}

fn client_outcome(presented: bool, asked: &Option<Vec<String>>) -> &'static str {
    match (presented, asked) {
        (true, _) => "the server accepted the client certificate",
        (false, None) => "the server did not ask for a client certificate",
        (false, Some(_)) => {
            "the server asked for a client certificate and goes on without one (it is optional there)"
        }
    }
}

/// The server refused the connection right after (or, TLS 1.2, during) the
/// handshake: with an alert, or by hanging up without a word.
fn client_refusal(
    alert: Option<AlertDescription>,
    presented: bool,
    asked: &Option<Vec<String>>,
    identity: &Option<Identity>,
) -> Check {
    let how = match alert {
        Some(alert) => format!("with the alert {alert:?}"),
        None => "by closing the connection without a word".to_owned(),
    };
    let accepted = match asked {
        Some(hints) if !hints.is_empty() => format!(
            "; it accepts client certificates issued by: {}",
            hints
                .iter()
                .map(|h| format!("\"{h}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    };
    let (problem, detail, fix) = match (identity, presented) {
        (Some(identity), true) => (
            Problem::ClientCertRejected,
            format!(
                "the server refused the client certificate \"{}\" (issued by \"{}\") {how}{accepted}",
                identity.subject, identity.issuer
            ),
            "the server must trust the CA that issued this certificate, and the certificate must be \
             valid and meant for clients (clientAuth). If the network's CA was made anew \
             (`certs reset`), the agent still holds a certificate from the old one: send the \
             information again (`fleetls-parent certs send --all`) so it gets a new certificate",
        ),
        _ if asked.is_some() || alert == Some(AlertDescription::CertificateRequired) => (
            Problem::ClientCertRequired,
            format!(
                "the server requires a client certificate and none was given; it refused {how}{accepted}"
            ),
            "give the agent's certificate and key (a child's certs/agent.pem and certs/agent.key; \
             a child without one gets it through `fleetls-parent certs send`)",
        ),
        _ => (
            Problem::Other,
            format!("the server ended the connection right after the handshake {how}"),
            "see the server's log for why it closes connections",
        ),
    };
    Check {
        name: "client_certificate".into(),
        ok: false,
        problem: Some(problem),
        detail,
        fix: Some(fix.into()),
    }
}

/// The checks of the chain the server presented: issuer, name, validity.
fn check_chain(
    report: &mut DoctorReport,
    chain: &[CertificateDer<'static>],
    roots: &RootCertStore,
    anchors: &[Anchor],
    server_name: &ServerName<'static>,
    host: &str,
    provider: &CryptoProvider,
) {
    let Some(leaf_der) = chain.first() else {
        report.fail(
            "issuer",
            Problem::Other,
            "the server presented no certificate",
            "configure a certificate on the server",
        );
        return;
    };
    let Ok((_, leaf)) = X509Certificate::from_der(leaf_der) else {
        report.fail(
            "issuer",
            Problem::Other,
            "the server's certificate does not parse",
            "configure a valid X.509 certificate on the server",
        );
        return;
    };
    let parsed = match ParsedCertificate::try_from(leaf_der) {
        Ok(parsed) => parsed,
        Err(e) => {
            report.fail(
                "issuer",
                Problem::Other,
                format!("the server's certificate is not usable: {e}"),
                "configure a valid X.509 certificate on the server",
            );
            return;
        }
    };
    let now = UnixTime::now();
    let now_secs = now.as_secs() as i64;
    let leaf_from = leaf.validity().not_before.timestamp();
    let leaf_to = leaf.validity().not_after.timestamp();

    // Issuer: the path to the CA, at a time the leaf is valid (its dates are
    // the validity check's business).
    let at = if (leaf_from..=leaf_to).contains(&now_secs) {
        now
    } else {
        UnixTime::since_unix_epoch(Duration::from_secs(
            (leaf_from / 2 + leaf_to / 2).max(0) as u64
        ))
    };
    let path = rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        &chain[1..],
        at,
        provider.signature_verification_algorithms.all,
    );
    let issuer = leaf.issuer().to_string();
    let ca_names = anchors
        .iter()
        .map(|a| format!("\"{}\" ({})", a.subject, a.fingerprint))
        .collect::<Vec<_>>()
        .join(", ");
    match path {
        Ok(()) => report.pass(
            "issuer",
            format!("the certificate chains to the CA (issued by \"{issuer}\")"),
        ),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => report.pass(
            "issuer",
            format!("the certificate chains to the CA (issued by \"{issuer}\"; dates aside)"),
        ),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => {
            let issuer_is_a_ca_here = anchors.iter().any(|a| {
                X509Certificate::from_der(&a.der)
                    .map(|(_, c)| c.subject().as_raw() == leaf.issuer().as_raw())
                    .unwrap_or(false)
            });
            if chain.len() == 1
                && !issuer_is_a_ca_here
                && leaf.issuer().as_raw() != leaf.subject().as_raw()
            {
                report.fail(
                    "issuer",
                    Problem::MissingIntermediate,
                    format!(
                        "the server sent only its own certificate; it was issued by \"{issuer}\", \
                         which is not the CA trusted here ({ca_names}): the certificate(s) between \
                         them are missing"
                    ),
                    "make the server send its whole chain: its certificate file must hold its \
                     certificate first, then the intermediate CA certificate(s) \
                     (for fleetls: parent.pem and agent.pem hold the chain). If it was issued by \
                     another CA altogether, install a certificate from this network's CA",
                );
            } else {
                let top = chain
                    .last()
                    .and_then(|c| X509Certificate::from_der(c).ok())
                    .map(|(_, c)| format!("\"{}\"", c.issuer()))
                    .unwrap_or_default();
                report.fail(
                    "issuer",
                    Problem::UnknownIssuer,
                    format!(
                        "the server's certificate does not chain to the CA trusted here ({ca_names}): \
                         it was issued by \"{issuer}\" and its chain ends at {top}"
                    ),
                    "install on the server a certificate issued by this network's CA (for the parent: \
                     DATA_DIR/certificates/parent.pem; after `certs reset` everything is issued anew), \
                     or give the doctor the CA the server really uses (--ca); when the parent serves \
                     its own certificate (`settings set --parent-cert`), give the agents its root with \
                     `fleetls-child run --trust-bundle ROOT.pem`; for a broker serving the operator's \
                     own certificate (`settings set --broker-cert`), give the doctor its root \
                     (DATA_DIR/certificates/broker-root.pem) with --ca",
                );
            }
        }
        Err(e) => report.fail(
            "issuer",
            Problem::Other,
            format!("the certificate is not usable by a TLS server: {e}"),
            "issue the server a certificate for servers (extended key usage serverAuth) from the CA",
        ),
    }

    // Name: is the host connected to among the certificate's names?
    match rustls::client::verify_server_name(&parsed, server_name) {
        Ok(()) => report.pass("name", format!("{host} is among the certificate's names")),
        Err(_) => {
            let names = sans(&leaf);
            let listed = if names.is_empty() {
                format!(
                    "the certificate has no subject alternative name at all (subject \"{}\")",
                    leaf.subject()
                )
            } else {
                format!("the certificate names only {}", names.join(", "))
            };
            report.fail(
                "name",
                Problem::NameMismatch,
                format!("{host} is not among the certificate's names: {listed}"),
                format!(
                    "connect with one of the names the certificate has, or give the server a certificate \
                     naming {host} (for the fleetls parent: `settings set --names` / `--ips`, then \
                     `certs reset` and `certs generate`: the names are inside the certificates)"
                ),
            );
        }
    }

    // Validity: every certificate presented, and the CA.
    let mut expired = Vec::new();
    let mut early = Vec::new();
    let presented = chain.iter().map(|c| c.as_ref());
    let trusted = anchors.iter().map(|a| a.der.as_ref());
    for der in presented.chain(trusted) {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            continue;
        };
        let from = cert.validity().not_before.timestamp();
        let to = cert.validity().not_after.timestamp();
        let line = format!(
            "\"{}\" (valid from {} to {})",
            cert.subject(),
            utc(from),
            utc(to)
        );
        if now_secs > to && !expired.contains(&line) {
            expired.push(line);
        } else if now_secs < from && !early.contains(&line) {
            early.push(line);
        }
    }
    let now_text = utc(now_secs);
    if !expired.is_empty() {
        report.fail(
            "validity",
            Problem::Expired,
            format!("expired: {}; it is now {now_text}", expired.join("; ")),
            "renew the expired certificate (for fleetls: an agent's with `fleetls-parent certs \
             renew --agent NAME`; the parent renews its own and the broker's itself — for RabbitMQ \
             run `broker-tls --out DIR` again and clear its PEM cache); if it should not have \
             expired yet, check the clock of this machine",
        );
    }
    if !early.is_empty() {
        report.fail(
            "validity",
            Problem::NotYetValid,
            format!("not valid yet: {}; it is now {now_text}", early.join("; ")),
            "check the clocks of this machine and of the machine that issued the certificate (NTP)",
        );
    }
    if expired.is_empty() && early.is_empty() {
        report.pass(
            "validity",
            format!(
                "valid now ({now_text}); the server's certificate expires {}",
                utc(leaf_to)
            ),
        );
        // Within the last third of its life (at most 30 days before): still
        // valid, but due — fleetls renews at two thirds, so this one missed it.
        let leaf_from = leaf.validity().not_before.timestamp();
        let warn_from = leaf_to - ((leaf_to - leaf_from) / 3).min(30 * 24 * 3600);
        if now_secs >= warn_from {
            report.fail(
                "renewal",
                Problem::ExpiresSoon,
                format!(
                    "the server's certificate expires {} — in {} — and was not renewed",
                    utc(leaf_to),
                    duration_text(leaf_to - now_secs)
                ),
                "renew it now: for the broker, `fleetls-parent broker-tls --out DIR` writes the \
                 renewed files in place, then `rabbitmqctl eval 'ssl:clear_pem_cache().'`; for a \
                 local parent, `fleetls-parent certs renew --agent NAME`",
            );
        }
    }
}

/// A duration in seconds as days, hours or minutes, for a person.
fn duration_text(seconds: i64) -> String {
    match seconds.max(0) {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", s / 3_600),
        s => format!("{} minutes", s / 60),
    }
}

/// The subject alternative names of a certificate, as `DNS:…` and `IP:…`.
fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(format!(
                    "IP:{}",
                    IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?)
                )),
                16 => Some(format!(
                    "IP:{}",
                    IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?)
                )),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn summary(der: &CertificateDer<'_>) -> CertSummary {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: utc(cert.validity().not_before.timestamp()),
            not_after: utc(cert.validity().not_after.timestamp()),
            names: sans(&cert),
            fingerprint: fingerprint(der),
        },
        Err(e) => CertSummary {
            subject: format!("(unreadable: {e})"),
            issuer: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            names: Vec::new(),
            fingerprint: fingerprint(der),
        },
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{unix} (Unix time)"),
    }
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What the handshake showed: the chain the server presented, and whether
/// (and from which CAs) it asked for a client certificate.
#[derive(Debug, Default)]
struct Observed {
    chain: Mutex<Option<Vec<CertificateDer<'static>>>>,
    asked: Mutex<Option<Vec<String>>>,
}

impl Observed {
    fn chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn asked(&self) -> Option<Vec<String>> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// rustls's WebPKI verifier, unchanged, that first writes down what it is shown.
#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    observed: Arc<Observed>,
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
struct ClientResolver {
    key: Option<Arc<CertifiedKey>>,
    observed: Arc<Observed>,
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

/// The flags of `doctor` in both programs.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// HOST:PORT to check
    pub target: String,
    /// The data dir whose CA and certificate are used (the parent's or the child's)
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    pub data_dir: std::path::PathBuf,
    /// Trust this CA file instead of the data dir's
    #[arg(long, env = "FLEETLS_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Offer only this TLS version (1.2 or 1.3), to see what a device
    /// limited to it gets; both by default
    #[arg(long)]
    pub tls_version: Option<Offer>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

impl DoctorArgs {
    /// The default time limits, with the TLS versions asked for.
    pub fn limits(&self) -> Limits {
        Limits {
            offer: self.tls_version.unwrap_or_default(),
            ..Limits::default()
        }
    }
}

/// Prints a report (as JSON with `json`) and gives the exit code: 0 when
/// no check failed, 4 when one did.
pub fn print(report: &DoctorReport, json: bool) -> std::process::ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("a report serialises")
        );
    } else {
        print!("{}", render(report));
    }
    if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(4)
    }
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

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

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
