//! `doctor HOST:PORT` against small rustls servers run by the test, with
//! PKIs made in memory with rcgen: it passes a healthy endpoint and names
//! the right problem for a certificate from another CA, a name that is not
//! in the certificate, an expired certificate, a closed port, a missing
//! intermediate, a client certificate the server refuses (TLS 1.3, where it
//! shows only after the handshake, and TLS 1.2), a missing client
//! certificate, a port that does not speak TLS and a name that does not
//! resolve. The parent's core and the child's wrapper are the same code:
//! both are exercised.
//!
//! `fleetls-parent doctor` and `fleetls-child doctor` also run as processes
//! against such a server, reading their data dirs (the flag or
//! `FLEETLS_DATA_DIR`) as an operator's would: exit 0 and "no problem found"
//! for a healthy endpoint, each presenting its own certificate; exit 4 with
//! the problem named for a closed port, another CA (`--ca`, and the child's
//! `FLEETLS_CA`) and a child without its certificate; the same in `--json`;
//! exit 2 without a data dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetls_parent::doctor::{self, DoctorReport, Limits, Problem};
use fleetls_tests::{CertFile, ChildLayout, ParentLayout};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Short limits: every server here answers at once.
const LIMITS: Limits = Limits {
    connect: Duration::from_secs(5),
    handshake: Duration::from_secs(5),
    after_handshake: Duration::from_secs(2),
    offer: doctor::Offer::Both,
};

const GREETING: &str = "fleetls test server\n";

// ---------------------------------------------------------------------------
// A PKI in memory
// ---------------------------------------------------------------------------

/// A CA: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "doctor test");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Ca {
    /// A self-signed root.
    fn root(cn: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(cn);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one.
    fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf (leaf PEM, key PEM) for `names`, serverAuth or clientAuth,
    /// valid `days` around now (negative: in the past).
    fn leaf(&self, cn: &str, names: &[&str], server: bool, days: (i64, i64)) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        set_validity(&mut params, days);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for localhost and 127.0.0.1, valid now.
    fn server(&self) -> (String, String) {
        self.leaf("server", &["localhost", "127.0.0.1"], true, (-1, 30))
    }

    /// A client certificate, valid now.
    fn client(&self, cn: &str) -> (String, String) {
        self.leaf(cn, &[], false, (-1, 30))
    }
}

/// Valid from now + `days.0` to now + `days.1` (negative: in the past);
/// built from `date_time_ymd` and std durations so the test needs no `time`.
fn set_validity(params: &mut CertificateParams, days: (i64, i64)) {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let at = |days: i64| {
        let shift = Duration::from_secs(days.unsigned_abs() * 86_400);
        if days < 0 {
            now - shift
        } else {
            now + shift
        }
    };
    params.not_before = at(days.0);
    params.not_after = at(days.1);
}

// ---------------------------------------------------------------------------
// Test servers
// ---------------------------------------------------------------------------

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How a test server behaves.
struct Server<'a> {
    /// What it presents: chain PEM (leaf first) and key PEM.
    chain: String,
    key: String,
    /// Client certificates it requires (their CA), or none asked.
    client_ca: Option<&'a str>,
    /// TLS versions it speaks.
    versions: &'static [&'static SupportedProtocolVersion],
}

impl Server<'_> {
    fn new(chain: String, key: String) -> Self {
        Server {
            chain,
            key,
            client_ca: None,
            versions: rustls::DEFAULT_VERSIONS,
        }
    }

    /// Serves on a loopback port: a handshake, then the greeting.
    async fn start(self) -> u16 {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.versions)
            .unwrap();
        let builder = match self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certs(ca) {
                    roots.add(cert).unwrap();
                }
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(
                certs(&self.chain),
                PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(GREETING.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        port
    }
}

/// Runs the doctor against `port` on 127.0.0.1 trusting `ca`, as `client`.
async fn doctor_at(port: u16, ca: &str, client: Option<&(String, String)>) -> DoctorReport {
    let client = client.map(|(cert, key)| (cert.clone().into_bytes(), key.clone().into_bytes()));
    let report =
        doctor::diagnose_with(&format!("127.0.0.1:{port}"), ca.as_bytes(), client, LIMITS).await;
    // Every report renders and serialises.
    let text = doctor::render(&report);
    assert!(text.starts_with("doctor 127.0.0.1:"), "{text}");
    serde_json::to_string(&report).unwrap();
    report
}

fn failed<'a>(report: &'a DoctorReport, name: &str) -> &'a doctor::Check {
    report
        .checks
        .iter()
        .find(|c| c.name == name && !c.ok)
        .unwrap_or_else(|| panic!("no failed check {name:?}:\n{}", doctor::render(report)))
}

fn assert_problems(report: &DoctorReport, expected: &[Problem]) {
    assert_eq!(report.problems(), expected, "\n{}", doctor::render(report));
    assert_eq!(report.ok, expected.is_empty());
}

// ---------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_healthy_endpoint_passes_every_check() {
    let ca = Ca::root("network CA");
    let (cert, key) = ca.server();
    let mut server = Server::new(format!("{cert}{}", ca.pem), key);
    server.client_ca = Some(&ca.pem);
    let port = server.start().await;
    let client = ca.client("agent-1");
    let report = doctor_at(port, &ca.pem, Some(&client)).await;
    assert_problems(&report, &[]);
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ca",
            "client_identity",
            "resolve",
            "connect",
            "handshake",
            "issuer",
            "name",
            "validity",
            "client_certificate"
        ]
    );
    let accepted = report.checks.last().unwrap();
    assert!(
        accepted.detail.contains("accepted the client certificate")
            && accepted.detail.contains("fleetls test server"),
        "{accepted:?}"
    );
    assert_eq!(report.protocol.as_deref(), Some("TLSv1.3"));
    assert_eq!(report.server_chain.len(), 2);
    assert!(report.server_chain[0]
        .names
        .contains(&"IP:127.0.0.1".to_string()));
    assert!(doctor::render(&report).contains("Result: no problem found."));

    // By name too: localhost may resolve to ::1 first, where nothing listens.
    let by_name = doctor::diagnose_with(
        &format!("localhost:{port}"),
        ca.pem.as_bytes(),
        Some((client.0.into_bytes(), client.1.into_bytes())),
        LIMITS,
    )
    .await;
    assert_problems(&by_name, &[]);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_an_unknown_issuer() {
    let ours = Ca::root("network CA");
    let theirs = Ca::root("some other CA");
    let (cert, key) = theirs.server();
    let port = Server::new(format!("{cert}{}", theirs.pem), key)
        .start()
        .await;
    let report = doctor_at(port, &ours.pem, None).await;
    assert_problems(&report, &[Problem::UnknownIssuer]);
    let issuer = failed(&report, "issuer");
    assert!(
        issuer.detail.contains("some other CA") && issuer.detail.contains("network CA"),
        "{issuer:?}"
    );
    assert!(issuer.fix.as_deref().unwrap().contains("--ca"));
    // The name and the dates are fine, and said so.
    assert!(report.checks.iter().any(|c| c.name == "name" && c.ok));
    assert!(report.checks.iter().any(|c| c.name == "validity" && c.ok));
}

#[tokio::test]
async fn a_name_not_in_the_certificate_is_a_name_mismatch_listing_the_names() {
    let ca = Ca::root("network CA");
    let (cert, key) = ca.leaf("server", &["parent.example", "10.9.8.7"], true, (-1, 30));
    let port = Server::new(cert, key).start().await;
    let report = doctor_at(port, &ca.pem, None).await;
    assert_problems(&report, &[Problem::NameMismatch]);
    let name = failed(&report, "name");
    assert!(
        name.detail.contains("127.0.0.1")
            && name.detail.contains("DNS:parent.example")
            && name.detail.contains("IP:10.9.8.7"),
        "{name:?}"
    );
    assert!(name
        .fix
        .as_deref()
        .unwrap()
        .contains("settings set --names"));
}

#[tokio::test]
async fn an_expired_certificate_is_named_with_its_dates() {
    let ca = Ca::root("network CA");
    let (cert, key) = ca.leaf("server", &["127.0.0.1"], true, (-60, -2));
    let port = Server::new(cert, key).start().await;
    let report = doctor_at(port, &ca.pem, None).await;
    assert_problems(&report, &[Problem::Expired]);
    let validity = failed(&report, "validity");
    assert!(
        validity.detail.contains("expired") && validity.detail.contains("valid from 20"),
        "{validity:?}"
    );
    assert!(validity.detail.contains("it is now 20"), "{validity:?}");
    // The chain itself is right.
    assert!(report.checks.iter().any(|c| c.name == "issuer" && c.ok));

    let (cert, key) = ca.leaf("server", &["127.0.0.1"], true, (3, 30));
    let port = Server::new(cert, key).start().await;
    let report = doctor_at(port, &ca.pem, None).await;
    assert_problems(&report, &[Problem::NotYetValid]);
}

#[tokio::test]
async fn a_certificate_in_its_last_days_is_due_for_renewal() {
    let ca = Ca::root("network CA");
    // 90 days of life, 5 left: past two thirds, the last month.
    let (cert, key) = ca.leaf("broker", &["127.0.0.1"], true, (-85, 5));
    let port = Server::new(cert, key).start().await;
    let report = doctor_at(port, &ca.pem, None).await;
    assert_problems(&report, &[Problem::ExpiresSoon]);
    let renewal = failed(&report, "renewal");
    assert!(
        renewal.detail.contains("in 4 days") || renewal.detail.contains("in 5 days"),
        "{renewal:?}"
    );
    assert!(
        renewal
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("broker-tls --out"),
        "{renewal:?}"
    );
    // With 60 of 90 days left it is fine.
    let (cert, key) = ca.leaf("broker", &["127.0.0.1"], true, (-30, 60));
    let port = Server::new(cert, key).start().await;
    assert_problems(&doctor_at(port, &ca.pem, None).await, &[]);
}

#[tokio::test]
async fn a_closed_port_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let ca = Ca::root("network CA");
    let report = doctor_at(port, &ca.pem, None).await;
    assert_problems(&report, &[Problem::Refused]);
    let connect = failed(&report, "connect");
    assert!(connect.detail.contains("closed"), "{connect:?}");
    assert!(connect.fix.as_deref().unwrap().contains(&port.to_string()));
}

#[tokio::test]
async fn a_leaf_without_its_intermediate_is_a_missing_intermediate() {
    let root = Ca::root("network root");
    let intermediate = root.intermediate("network intermediate");
    let (cert, key) = intermediate.server();
    let port = Server::new(cert.clone(), key.clone()).start().await;
    let report = doctor_at(port, &root.pem, None).await;
    assert_problems(&report, &[Problem::MissingIntermediate]);
    let issuer = failed(&report, "issuer");
    assert!(
        issuer.detail.contains("only its own certificate")
            && issuer.detail.contains("network intermediate"),
        "{issuer:?}"
    );
    // With the intermediate sent along, all is well.
    let port = Server::new(format!("{cert}{}", intermediate.pem), key)
        .start()
        .await;
    assert_problems(&doctor_at(port, &root.pem, None).await, &[]);
}

#[tokio::test]
async fn a_refused_client_certificate_is_named_in_tls13_and_tls12() {
    let ca = Ca::root("network CA");
    let other = Ca::root("the server's client CA");
    let client = ca.client("agent-2");
    static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    static TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    for versions in [TLS13, TLS12] {
        let (cert, key) = ca.server();
        let mut server = Server::new(cert, key);
        server.client_ca = Some(&other.pem);
        server.versions = versions;
        let port = server.start().await;
        let report = doctor_at(port, &ca.pem, Some(&client)).await;
        assert_problems(&report, &[Problem::ClientCertRejected]);
        let refused = failed(&report, "client_certificate");
        assert!(
            refused.detail.contains("agent-2") && refused.detail.contains("the server's client CA"),
            "the refusal names our certificate and the CAs the server accepts: {refused:?}"
        );
        // The server side itself is fine. TLS 1.2 refuses inside the
        // handshake, TLS 1.3 only after it.
        let handshake_ok = versions == TLS13;
        assert!(
            report
                .checks
                .iter()
                .any(|c| c.name == "handshake" && c.ok == handshake_ok),
            "{}",
            doctor::render(&report)
        );
        for name in ["issuer", "name", "validity"] {
            assert!(
                report.checks.iter().any(|c| c.name == name && c.ok),
                "{name} should pass:\n{}",
                doctor::render(&report)
            );
        }
    }
}

/// A server that speaks only TLS 1.3, asked by a client that offers only
/// 1.2 (`doctor --tls-version 1.2`: what an old device gets): the problem
/// is named, and the fix points at the settings that set the floor. Offered
/// 1.3, the same server passes.
#[tokio::test]
async fn a_tls13_only_server_and_a_tls12_only_client_are_a_protocol_mismatch() {
    let ca = Ca::root("network CA");
    let (cert, key) = ca.server();
    let mut server = Server::new(cert, key);
    static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    server.versions = TLS13;
    let port = server.start().await;
    let target = format!("127.0.0.1:{port}");
    let old_device = Limits {
        offer: doctor::Offer::Tls12,
        ..LIMITS
    };
    let report = doctor::diagnose_with(&target, ca.pem.as_bytes(), None, old_device).await;
    assert_problems(&report, &[Problem::ProtocolMismatch]);
    let check = failed(&report, "handshake");
    assert!(
        check
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("--min-tls")),
        "{check:?}"
    );
    let modern = Limits {
        offer: doctor::Offer::Tls13,
        ..LIMITS
    };
    let report = doctor::diagnose_with(&target, ca.pem.as_bytes(), None, modern).await;
    assert_problems(&report, &[]);
}

#[tokio::test]
async fn no_client_certificate_where_one_is_required() {
    let ca = Ca::root("network CA");
    let (cert, key) = ca.server();
    let mut server = Server::new(cert, key);
    server.client_ca = Some(&ca.pem);
    let port = server.start().await;
    let report = doctor_at(port, &ca.pem, None).await;
    assert_problems(&report, &[Problem::ClientCertRequired]);
}

#[tokio::test]
async fn a_plain_port_is_not_tls_and_a_bad_name_does_not_resolve() {
    // What RabbitMQ's plain AMQP port answers to anything but AMQP.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.write_all(b"AMQP\x00\x00\x09\x01").await;
        }
    });
    let ca = Ca::root("network CA");
    let report = doctor_at(port, &ca.pem, None).await;
    assert_problems(&report, &[Problem::NotTls]);

    let report = doctor::diagnose_with(
        "no-such-host.invalid:12365",
        ca.pem.as_bytes(),
        None,
        LIMITS,
    )
    .await;
    assert_problems(&report, &[Problem::Dns]);
}

/// The child's report (the same file compiled in the child crate, so another
/// type) as the parent's, through the JSON both print.
async fn child_doctor(target: &str, dir: &Path, ca: Option<&Path>) -> DoctorReport {
    let report = fleetls_child::doctor::diagnose_child(target, dir, ca, Limits::default()).await;
    serde_json::from_value(serde_json::to_value(report).unwrap()).unwrap()
}

#[tokio::test]
async fn the_child_side_reads_its_own_files() {
    let ca = Ca::root("network CA");
    let (cert, key) = ca.server();
    let mut server = Server::new(format!("{cert}{}", ca.pem), key);
    server.client_ca = Some(&ca.pem);
    let port = server.start().await;

    let dir = tempfile::tempdir().unwrap();
    let files = ChildLayout::new(dir.path());
    std::fs::create_dir_all(files.certs()).unwrap();
    let target = format!("127.0.0.1:{port}");

    // No certificate yet: the server wants one.
    std::fs::write(files.ca(), &ca.pem).unwrap();
    let report = child_doctor(&target, dir.path(), None).await;
    assert_problems(&report, &[Problem::ClientCertRequired]);

    // With its certificate: healthy.
    let (client, client_key) = ca.client("child-1");
    std::fs::write(files.chain(), format!("{client}{}", ca.pem)).unwrap();
    std::fs::write(files.key(), client_key).unwrap();
    let report = child_doctor(&target, dir.path(), None).await;
    assert_problems(&report, &[]);

    // Another CA given with --ca: the server is not trusted.
    let other = Ca::root("another CA");
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, &other.pem).unwrap();
    let report = child_doctor(&target, dir.path(), Some(&other_path)).await;
    assert_problems(&report, &[Problem::UnknownIssuer]);

    // A missing CA file is named.
    let report = child_doctor(&target, dir.path(), Some(Path::new("/nonexistent/ca.pem"))).await;
    assert_problems(&report, &[Problem::BadInput]);
    assert!(failed(&report, "ca").detail.contains("/nonexistent/ca.pem"));
}

// ---------------------------------------------------------------------------
// The programs as an operator runs them
// ---------------------------------------------------------------------------

/// Runs `fleetls-parent` or `fleetls-child` with `args` and the variables
/// `env` (none of the operator's own `FLEETLS_*`), off the runtime so that
/// the test servers keep serving: (exit code, stdout, stderr).
async fn run(name: &'static str, args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, std::path::PathBuf)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_path_buf()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(fleetls_tests::program(name));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FLEETLS_") {
                command.env_remove(key);
            }
        }
        command.args(&args).envs(env).env("RUST_LOG", "warn");
        fleetls_tests::outcome(&mut command)
    })
    .await
    .expect("the program ran")
}

/// The report a program printed with `--json`.
fn printed(name: &str, out: &str, err: &str) -> DoctorReport {
    serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("{name} doctor --json printed no report ({e}):\n{out}{err}"))
}

/// Writes each file, its folder made first.
fn write(files: &[(PathBuf, &str)]) {
    for (path, text) in files {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

#[tokio::test]
async fn the_programs_diagnose_as_processes_with_their_exit_codes() {
    let ca = Ca::root("network CA");
    let (cert, key) = ca.server();
    let mut server = Server::new(format!("{cert}{}", ca.pem), key);
    server.client_ca = Some(&ca.pem);
    let port = server.start().await;
    let target = format!("127.0.0.1:{port}");
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("127.0.0.1:{port}")
    };

    // The parent's data dir (certificates/: the CA and the parent's own
    // certificate, here a client one) and two children's (certs/: with a
    // certificate, and one holding only the CA).
    let dir = tempfile::tempdir().unwrap();
    let (parent_cert, parent_key) = ca.client("fleetls-parent");
    let parent = dir.path().join("parent");
    let parent_files = ParentLayout::new(&parent);
    write(&[
        (parent_files.certificate(CertFile::CaPem), &ca.pem),
        (parent_files.certificate(CertFile::ParentPem), &parent_cert),
        (parent_files.certificate(CertFile::ParentKey), &parent_key),
    ]);
    let (child_cert, child_key) = ca.client("child-1");
    let child = dir.path().join("child");
    let child_files = ChildLayout::new(&child);
    write(&[
        (child_files.ca(), &ca.pem),
        (child_files.chain(), &format!("{child_cert}{}", ca.pem)),
        (child_files.key(), &child_key),
    ]);
    let bare = dir.path().join("bare");
    write(&[(ChildLayout::new(&bare).ca(), &ca.pem)]);
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, Ca::root("another CA").pem).unwrap();
    let (p, c, b, o) = (
        parent.to_str().unwrap(),
        child.to_str().unwrap(),
        bare.to_str().unwrap(),
        other.to_str().unwrap(),
    );

    // Healthy: exit 0 and the plain-words result.
    for (name, args, env) in [
        (
            "fleetls-parent",
            vec!["doctor", &target, "--data-dir", p],
            vec![],
        ),
        (
            "fleetls-child",
            vec!["doctor", &target, "--data-dir", c],
            vec![],
        ),
        // The data dir from FLEETLS_DATA_DIR.
        (
            "fleetls-parent",
            vec!["doctor", &target],
            vec![("FLEETLS_DATA_DIR", parent.as_path())],
        ),
        (
            "fleetls-child",
            vec!["doctor", &target],
            vec![("FLEETLS_DATA_DIR", child.as_path())],
        ),
    ] {
        let (code, out, err) = run(name, &args, &env).await;
        assert_eq!(code, 0, "{name} {args:?}:\n{out}{err}");
        assert!(out.starts_with(&format!("doctor {target} (")), "{out}");
        assert!(out.ends_with("Result: no problem found.\n"), "{out}");
        let (code, out, err) = run(name, &[&args[..], &["--json"]].concat(), &env).await;
        assert_eq!(code, 0, "{name} {args:?} --json:\n{out}{err}");
        let report = printed(name, &out, &err);
        assert_problems(&report, &[]);
        // Each program presents its own certificate and the server accepts it.
        let cn = if name == "fleetls-parent" {
            "fleetls-parent"
        } else {
            "child-1"
        };
        let identity = &report.checks[1];
        assert_eq!(identity.name, "client_identity", "{out}");
        assert!(identity.detail.contains(cn), "{identity:?}");
        let accepted = report.checks.last().unwrap();
        assert_eq!(accepted.name, "client_certificate", "{out}");
        assert!(
            accepted.ok && accepted.detail.contains("accepted the client certificate"),
            "{accepted:?}"
        );
    }

    // A problem: exit 4, the problem named.
    for (name, args, env, problem) in [
        (
            "fleetls-parent",
            vec!["doctor", &closed, "--data-dir", p],
            vec![],
            Problem::Refused,
        ),
        (
            "fleetls-child",
            vec!["doctor", &closed, "--data-dir", c],
            vec![],
            Problem::Refused,
        ),
        (
            "fleetls-parent",
            vec!["doctor", &target, "--data-dir", p, "--ca", o],
            vec![],
            Problem::UnknownIssuer,
        ),
        (
            "fleetls-child",
            vec!["doctor", &target, "--data-dir", c, "--ca", o],
            vec![],
            Problem::UnknownIssuer,
        ),
        // The child's --ca from FLEETLS_CA.
        (
            "fleetls-child",
            vec!["doctor", &target, "--data-dir", c],
            vec![("FLEETLS_CA", other.as_path())],
            Problem::UnknownIssuer,
        ),
        // A child without its certificate yet, where one is required.
        (
            "fleetls-child",
            vec!["doctor", &target, "--data-dir", b],
            vec![],
            Problem::ClientCertRequired,
        ),
    ] {
        let (code, out, err) = run(name, &args, &env).await;
        assert_eq!(code, 4, "{name} {args:?} {env:?}:\n{out}{err}");
        assert!(
            out.ends_with(&format!("Result: 1 problem(s): {}.\n", problem.as_str())),
            "{name} {args:?} {env:?}:\n{out}"
        );
        let (code, out, err) = run(name, &[&args[..], &["--json"]].concat(), &env).await;
        assert_eq!(code, 4, "{name} {args:?} --json:\n{out}{err}");
        assert_problems(&printed(name, &out, &err), &[problem]);
    }

    // No data dir at all: a usage error naming it.
    for name in ["fleetls-parent", "fleetls-child"] {
        let (code, out, err) = run(name, &["doctor", &target], &[]).await;
        assert_eq!(code, 2, "{name} doctor without a data dir:\n{out}{err}");
        assert!(err.contains("--data-dir <DATA_DIR>"), "{err}");
    }
}
