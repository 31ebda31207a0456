//! TLS an auditor passes: testssl.sh (Debian's package, installed by
//! `scripts/tools` when missing) against the parent's SSL port, a local
//! parent's SSL port and a RabbitMQ AMQPS listener configured with what
//! `broker-tls` writes (its rabbitmq.conf fragment and advanced.config)
//! flags nothing at MEDIUM or above, except what comes from the CA being
//! the network's own — each such finding is listed below with its reason.
//! The certificates name the parent's `/crl.der` as CRL distribution point
//! (`settings set --crl-url`), and OpenSSL checks revocation through it.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetls_tests::{
    repo, start_child, tools, wait_for, CertFile, Parent, PrivateNode, Vhost, WAIT,
};
use serde_json::Value;

const NODE: &str = "tlsaudit";
const AMQP_PORT: u16 = 5760;
const AMQPS_PORT: u16 = 5761;
const MGMT_PORT: u16 = 15760;
const PROMETHEUS_PORT: u16 = 15761;

/// Findings at MEDIUM or above that are about the CA being the network's
/// own, not about the TLS the endpoints speak: (testssl id, why accepted).
const ACCEPTED: &[(&str, &str)] = &[(
    "cert_chain_of_trust",
    "the network's own CA signs every certificate: testssl trusts only public roots; \
     fleetls's clients trust this CA by its pinned fingerprint",
)];

/// testssl's severities that fail the audit.
const FAILING: &[&str] = &["MEDIUM", "HIGH", "CRITICAL", "FATAL"];

/// Starts the private node with `extra` appended to its rabbitmq.conf and
/// `advanced` as its advanced.config.
fn start_node(node: &PrivateNode, extra: &Path, advanced: &Path) {
    node.run("stop", None, None);
    let output = Command::new(repo().join("scripts/broker"))
        .arg("start")
        .env_remove("FLEETLS_BROKER_DIR")
        .env_remove("FLEETLS_DIST_PORT")
        .env_remove("FLEETLS_BROKER_TLS_DIR")
        .env("FLEETLS_BROKER_NODE", node.name)
        .env("FLEETLS_AMQP_PORT", node.amqp.to_string())
        .env("FLEETLS_MGMT_PORT", node.mgmt.to_string())
        .env("FLEETLS_AMQPS_PORT", node.amqps.to_string())
        .env("FLEETLS_PROMETHEUS_PORT", node.prometheus.to_string())
        .env("FLEETLS_BROKER_EXTRA_CONF", extra)
        .env("FLEETLS_BROKER_ADVANCED_CONFIG", advanced)
        .output()
        .expect("scripts/broker runs");
    assert!(
        output.status.success(),
        "scripts/broker start (node {NODE}, with broker-tls's files) failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// testssl.sh against `127.0.0.1:port`, started in the background: the
/// protocols, the cipher categories, forward secrecy (curves), the server's
/// preferences, its certificate and the known vulnerabilities (client
/// renegotiation, LUCKY13, ...), into `json`.
fn testssl(port: u16, json: &Path, log: &Path) -> std::process::Child {
    let program = if Command::new("testssl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        "testssl"
    } else {
        "testssl.sh"
    };
    Command::new(program)
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--sneaky",
            "-p",
            "-s",
            "-f",
            "-P",
            "-S",
            "-U",
            "--jsonfile",
        ])
        .arg(json)
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).expect("the testssl log"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("testssl runs")
}

/// What testssl found: (id, severity, finding) of each entry.
fn findings(json: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let entries: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not testssl's JSON ({e})", json.display()));
    entries
        .iter()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (field("id"), field("severity"), field("finding"))
        })
        .collect()
}

fn wait_port(port: u16, what: &str) {
    wait_for(what, WAIT, || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

#[test]
fn testssl_finds_nothing_on_the_ssl_ports_and_the_amqps_listener_but_the_private_ca() {
    tools::ensure("testssl");
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &[
            "--local-parent-names",
            "localhost",
            "--local-parent-ips",
            "127.0.0.1",
        ],
    );
    let crl_url = format!("http://{}/crl.der", parent.admin);
    let _local = start_child(
        &vhost,
        dir.path(),
        "lp-audit",
        &[
            "--kind",
            "local-parent",
            "--location",
            "shop-a",
            "--hostnames",
            "localhost",
            "--ips",
            "127.0.0.1",
        ],
    );
    parent.wait_online(&["lp-audit"]);
    parent.cli_ok(&["agents", "accept", "lp-audit"]);
    let (ssl_port, local_port) = parent.settings_loopback(&["--crl-url", &crl_url]);
    parent.cli_ok(&["certs", "generate"]);
    parent.cli_ok(&["certs", "send"]);
    wait_for("lp-audit's certificate", WAIT, || {
        (parent.agent("lp-audit")?["has_certificate"] == true).then_some(())
    });
    // A client other than fleetls's follows the certificate's CRL
    // distribution point: OpenSSL downloads the DER list and checks it.
    let verified = Command::new("openssl")
        .args(["verify", "-crl_check", "-crl_download", "-CAfile"])
        .arg(parent.cert_file(CertFile::CaPem))
        .arg(parent.cert_file(CertFile::ParentPem))
        .output()
        .expect("openssl runs");
    assert!(
        verified.status.success(),
        "openssl verify -crl_download: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    wait_port(ssl_port, "the parent's SSL port");
    wait_port(local_port, "the local parent's SSL port");

    // The broker's files, for a listener on the private node's AMQPS port.
    let out = dir.path().join("broker");
    parent.cli_ok(&[
        "broker-tls",
        "--out",
        out.to_str().unwrap(),
        "--amqps-port",
        &AMQPS_PORT.to_string(),
        "--amqps-bind",
        "127.0.0.1",
    ]);
    let node = PrivateNode {
        name: NODE,
        amqp: AMQP_PORT,
        mgmt: MGMT_PORT,
        amqps: AMQPS_PORT,
        prometheus: PROMETHEUS_PORT,
    };
    start_node(
        &node,
        &out.join("rabbitmq-migration.conf"),
        &out.join("advanced-migration.config"),
    );
    wait_port(AMQPS_PORT, "the broker's AMQPS listener");

    // The three audits at once (each mostly waits on handshakes).
    let targets = [
        ("the parent's SSL port", ssl_port),
        ("a local parent's SSL port", local_port),
        ("the broker's AMQPS listener", AMQPS_PORT),
    ];
    let started = Instant::now();
    let mut runs: Vec<(&str, PathBuf, PathBuf, std::process::Child)> = targets
        .iter()
        .map(|(what, port)| {
            let json = dir.path().join(format!("testssl-{port}.json"));
            let log = dir.path().join(format!("testssl-{port}.log"));
            let child = testssl(*port, &json, &log);
            (*what, json, log, child)
        })
        .collect();
    let deadline = started + Duration::from_secs(300);
    for (what, _, log, child) in &mut runs {
        loop {
            if let Some(status) = child.try_wait().expect("testssl's status") {
                // Below 240 it counts what it found (read from the JSON
                // below); from 240 up it could not test.
                assert!(
                    status.code().is_some_and(|c| c < 240),
                    "testssl against {what} exited with {status}:\n{}",
                    std::fs::read_to_string(&*log).unwrap_or_default()
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("testssl against {what} ran longer than 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("testssl: three audits in {:?}", started.elapsed());

    let accepted: BTreeMap<&str, &str> = ACCEPTED.iter().copied().collect();
    let mut flagged = Vec::new();
    for (what, json, _, _) in &runs {
        let found = findings(json);
        // The audit ran: the protocols were looked at.
        let severity_of = |id: &str| {
            found
                .iter()
                .find(|(i, _, _)| i == id)
                .map(|(_, s, f)| format!("{s} {f}"))
                .unwrap_or_else(|| panic!("testssl against {what} reports no {id}"))
        };
        assert!(severity_of("TLS1_3").contains("offered"), "{what}");
        assert!(severity_of("TLS1").contains("not offered"), "{what}");
        assert!(severity_of("SSLv3").contains("not offered"), "{what}");
        assert!(
            severity_of("cert_crlDistributionPoints").contains(&crl_url),
            "{what}: the certificate names the CRL address"
        );
        for (id, severity, finding) in &found {
            if FAILING.contains(&severity.as_str()) && !accepted.contains_key(id.as_str()) {
                flagged.push(format!("{what}: {severity} {id}: {finding}"));
            }
        }
    }
    assert!(
        flagged.is_empty(),
        "testssl flags (MEDIUM or above, other than the private CA):\n{}",
        flagged.join("\n")
    );
}
