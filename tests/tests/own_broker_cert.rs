//! The broker with the operator's own certificate (a company CA instead of
//! fleetls's): `settings set --broker-cert F --broker-key F`, on a RabbitMQ
//! node of its own (`ownbrk`: AMQP 5660, AMQPS 5661, management 15660,
//! Prometheus 15661). The parent's SSL port serves an own certificate too,
//! so the parent must keep presenting a certificate of fleetls's CA to the
//! broker. A bad broker certificate is refused with the reason (a name of
//! the broker settings missing, a key of another certificate) and changes
//! nothing; a good one goes into `broker-tls`'s files, RabbitMQ serves it
//! (openssl sees the company's issuer), `switch-broker` checks it and moves
//! every child to AMQPS — each child's `broker-ca.pem` then holds the
//! company root, sent in the signed command — and the parent's own
//! connection moves too, presenting `certificates/client.pem` (CN
//! `fleetls-parent`, from fleetls's CA). The node is stopped at the end,
//! also on failure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use fleetls_tests::company::{root, server, write};
use fleetls_tests::{
    child_layout, start_child, test_dir, wait_for, CertFile, Parent, PrivateNode, Vhost,
};

const NODE: &str = "ownbrk";
const AMQP_PORT: u16 = 5660;
const AMQPS_PORT: u16 = 5661;
const MGMT_PORT: u16 = 15660;
const PROMETHEUS_PORT: u16 = 15661;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The subject and issuer lines `openssl x509` prints for a PEM file's
/// first certificate.
fn subject_issuer(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-issuer", "-in"])
        .arg(pem)
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `openssl s_client` sees on the AMQPS port, verifying with `ca`.
fn served(ca: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-connect"])
        .arg(format!("127.0.0.1:{AMQPS_PORT}"))
        .arg("-CAfile")
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The connections of the vhost whose name starts with `prefix`.
fn connections(vhost: &Vhost, prefix: &str) -> Vec<Value> {
    match vhost.management_try_get("/api/vhosts/{vhost}/connections") {
        Ok(Value::Array(list)) => list
            .into_iter()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn the_broker_serves_an_own_certificate_checked_first_and_every_child_moves_to_it() {
    // Declared first, dropped last: the node outlives every process using it.
    let node = PrivateNode {
        name: NODE,
        amqp: AMQP_PORT,
        mgmt: MGMT_PORT,
        amqps: AMQPS_PORT,
        prometheus: PROMETHEUS_PORT,
    };
    node.run("stop", None, None);
    node.run("start", None, None);
    let dir = test_dir();
    let vhost = Vhost::new_on(&node.addr());
    let company = root("company root");
    let root_pem = write(dir.path(), "company-root.pem", &company.pem);
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let names = ["obc-1", "obc-2", "obc-3"];
    let _children: Vec<_> = names
        .iter()
        .map(|n| start_child(&vhost, dir.path(), n, &["--trust-bundle", s(&root_pem)]))
        .collect();
    parent.wait_online(&names);
    parent.settings_loopback(&[
        "--broker-names",
        "broker.company.example",
        "--broker-ips",
        "127.0.0.1",
    ]);

    // Before certificates exist: refused, it would replace nothing.
    let (leaf, key) = server(&company, "broker.company.example", 365);
    let good_chain = write(dir.path(), "broker.pem", &format!("{leaf}{}", company.pem));
    let good_key = write(dir.path(), "broker.key", &key);
    let (code, _, err) = parent.cli(&[
        "settings",
        "set",
        "--broker-cert",
        s(&good_chain),
        "--broker-key",
        s(&good_key),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("run `certs generate` first"), "{err}");
    parent.certify(3, Duration::from_secs(60));
    let files = parent.layout();
    let broker_before = std::fs::read(files.certificate(CertFile::BrokerPem)).unwrap();

    // Refused, each with its reason, and nothing replaced.
    let (elsewhere, elsewhere_key) = server(&company, "other.example", 365);
    let (_, other_key) = server(&company, "broker.company.example", 365);
    for (chain, key, needle) in [
        (
            write(
                dir.path(),
                "elsewhere.pem",
                &format!("{elsewhere}{}", company.pem),
            ),
            write(dir.path(), "elsewhere.key", &elsewhere_key),
            "--broker-cert: the certificate does not name broker.company.example",
        ),
        (
            good_chain.clone(),
            write(dir.path(), "other.key", &other_key),
            "--broker-key: the key does not belong to the certificate of --broker-cert",
        ),
    ] {
        let (code, _, err) = parent.cli(&[
            "settings",
            "set",
            "--broker-cert",
            s(&chain),
            "--broker-key",
            s(&key),
        ]);
        assert_ne!(code, 0, "{} was accepted", chain.display());
        assert!(err.contains(needle), "{}: {err}", chain.display());
        assert_eq!(
            std::fs::read(files.certificate(CertFile::BrokerPem)).unwrap(),
            broker_before,
            "a refused certificate replaced the broker's"
        );
        assert!(!files.broker_root().exists());
    }

    // The SSL port's own certificate too: from now on the parent presents
    // client.pem (fleetls's CA) to the broker, not the company's.
    let (parent_leaf, parent_key) = server(&company, "localhost", 365);
    let parent_chain = write(
        dir.path(),
        "parent.pem",
        &format!("{parent_leaf}{}", company.pem),
    );
    let parent_key = write(dir.path(), "parent.key", &parent_key);
    parent.cli_ok(&[
        "settings",
        "set",
        "--parent-cert",
        s(&parent_chain),
        "--parent-key",
        s(&parent_key),
    ]);
    assert!(
        subject_issuer(&files.client_pem()).contains("CN = fleetls-parent"),
        "the parent's certificate toward the broker should stay fleetls's: {}",
        subject_issuer(&files.client_pem())
    );

    // The good one, accepted.
    parent.cli_ok(&[
        "settings",
        "set",
        "--broker-cert",
        s(&good_chain),
        "--broker-key",
        s(&good_key),
    ]);
    assert_eq!(
        std::fs::read_to_string(files.certificate(CertFile::BrokerPem)).unwrap(),
        std::fs::read_to_string(&good_chain).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(files.broker_root()).unwrap().trim(),
        company.pem.trim()
    );

    // `settings show` says whose each certificate is.
    let shown = parent.cli_json(&["settings", "show"]);
    assert_eq!(shown["own"]["parent"], true, "{shown}");
    assert_eq!(shown["own"]["broker"], true, "{shown}");
    let text = parent.cli_ok(&["settings", "show"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("broker certificate:") && l.contains("the operator's own")),
        "{text}"
    );

    // broker-tls writes it for RabbitMQ, which serves it after a restart.
    let tls = dir.path().join("broker-tls");
    parent.cli_ok(&[
        "broker-tls",
        "--out",
        s(&tls),
        "--amqps-port",
        &AMQPS_PORT.to_string(),
        "--amqps-bind",
        "127.0.0.1",
    ]);
    assert_eq!(
        std::fs::read_to_string(tls.join("broker.pem")).unwrap(),
        std::fs::read_to_string(&good_chain).unwrap(),
        "broker-tls did not write the operator's certificate"
    );
    node.run(
        "restart",
        Some(&tls),
        Some(&tls.join("rabbitmq-migration.conf")),
    );
    let seen = served(&root_pem);
    assert!(
        seen.contains("Verification: OK") || seen.contains("Verify return code: 0"),
        "the AMQPS port does not serve a certificate of the company root:\n{seen}"
    );
    // fleetls's CA alone does not verify it.
    let seen = served(&files.certificate(CertFile::CaPem));
    assert!(
        !(seen.contains("Verification: OK") || seen.contains("Verify return code: 0")),
        "the AMQPS port still serves fleetls's broker certificate:\n{seen}"
    );
    parent.wait_online(&names);

    // The network on SSL, then on AMQPS: switch-broker checks the broker's
    // certificate against the company root and sends it to every child.
    parent.cli_ok(&["verify", "--step-timeout", "30s"]);
    parent.cli_ok(&["switch", "--step-timeout", "30s"]);
    let amqps = format!("amqps://guest:guest@127.0.0.1:{AMQPS_PORT}/{}", vhost.name);
    let out = parent.cli_ok(&["switch-broker", "--amqps", &amqps, "--step-timeout", "30s"]);
    let campaign = parent.cli_json(&["campaign"]);
    assert_eq!(campaign["kind"], "switch-broker", "{out}\n{campaign}");
    assert_eq!(campaign["passed"], 3, "{campaign}");
    for name in names {
        let broker_ca =
            std::fs::read_to_string(child_layout(dir.path(), name).broker_ca()).unwrap();
        assert!(
            broker_ca.contains(company.pem.trim()),
            "{name}'s broker-ca.pem lacks the company root"
        );
    }
    // RabbitMQ's own view: every child and the parent on TLS; the parent
    // with fleetls's certificate (CN fleetls-parent, not the company's
    // "localhost").
    wait_for(
        "three children and the parent on AMQPS",
        Duration::from_secs(60),
        || {
            let children = connections(&vhost, "fleetls-child:");
            let parents = connections(&vhost, "fleetls-parent");
            let tls = |c: &Value| c["ssl"] == true && c["port"] == AMQPS_PORT;
            (children.len() == 3
                && children.iter().all(tls)
                && !parents.is_empty()
                && parents.iter().all(|c| {
                    tls(c)
                        && c["peer_cert_subject"]
                            .as_str()
                            .is_some_and(|s| s.contains("CN=fleetls-parent"))
                }))
            .then_some(())
        },
    );
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["broker_tls"], 3, "{}", status["network"]);
}
