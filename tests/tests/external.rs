//! `switch-broker --external`: children log in to RabbitMQ with their
//! certificates (SASL EXTERNAL), each as a RabbitMQ user of its own that the
//! parent creates through management, allowed only its own queue. On a node
//! of its own (`bext`), restarted once with the migration fragment that
//! `broker-tls` writes. Then, from outside, with one child's certificate and
//! key: its login cannot read another agent's queue nor copy the children's
//! messages; and `agents delete` removes the user.
//!
//! Revocation, in the same network: `revoke till-1` puts its certificate on
//! the CA's revocation list — `GET /crl.pem` serves it without a token and
//! `openssl verify -crl_check` calls it revoked —, the parent's SSL port and
//! the local parent of its location refuse its certificate at once while
//! till-2's passes, its AMQPS connection is closed and stays closed (its
//! RabbitMQ user is gone), and a Hello signed with its key is refused.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use fleetls_tests::{
    child_layout, repo, start_child, wait_for, CertFile, Parent, PrivateNode, Vhost,
};

const NODE: &str = "bext";
const AMQP_PORT: u16 = 5796;
const MGMT_PORT: u16 = 15796;
const AMQPS_PORT: u16 = 5797;
const PROMETHEUS_PORT: u16 = 15798;
const WAIT: Duration = Duration::from_secs(90);

fn ok(parent: &Parent, args: &[&str]) -> String {
    let (code, out, err) = parent.cli(args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

/// The attacker's client (tests/attacks): its JSON answer.
fn attack(args: &[&str]) -> Value {
    let output = Command::new("python3")
        .arg(repo().join("tests/attacks/fleetls_attack.py"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fleetls_attack.py {args:?}: {out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&out).unwrap()
}

/// A TLS handshake with a client certificate to `port` (the greeting read):
/// `Err` with openssl's output when the server refuses.
fn handshake(
    port: u16,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(), String> {
    let out = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains(" ok\n") && text.contains("fleetls-") {
        Ok(())
    } else {
        Err(text)
    }
}

#[test]
fn each_child_logs_in_with_its_certificate_as_a_user_allowed_only_its_queue() {
    let node = PrivateNode {
        name: NODE,
        amqp: AMQP_PORT,
        mgmt: MGMT_PORT,
        amqps: AMQPS_PORT,
        prometheus: PROMETHEUS_PORT,
    };
    node.run("stop", None, None);
    node.run("start", None, None);
    let broker = node.addr();
    let vhost = Vhost::new_on(&broker);
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &[
            "--offline-after",
            "10",
            "--local-parent-names",
            "localhost",
            "--local-parent-ips",
            "127.0.0.1",
        ],
    );
    let one = start_child(&vhost, dir.path(), "till-1", &["--location", "shop"]);
    let _two = start_child(&vhost, dir.path(), "till-2", &["--location", "hq"]);
    let _lp = start_child(
        &vhost,
        dir.path(),
        "lp-1",
        &[
            "--kind",
            "local-parent",
            "--location",
            "shop",
            "--hostnames",
            "localhost",
        ],
    );
    wait_for("lp-1 registered", WAIT, || parent.agent("lp-1"));
    ok(&parent, &["agents", "accept", "lp-1"]);
    let ids: Vec<String> = ["till-1", "till-2"]
        .iter()
        .map(|n| {
            wait_for("registered", WAIT, || {
                parent.agent(n)?["id"].as_str().map(str::to_owned)
            })
        })
        .collect();
    let (ssl_port, lp_port) = parent.settings_loopback(&[]);
    parent.certify(3, WAIT);
    ok(&parent, &["verify", "--step-timeout", "20s"]);
    ok(&parent, &["switch", "--step-timeout", "20s"]);

    // The node restarted with the migration fragment of broker-tls, as
    // written, its listener on this node's port (--amqps-port, --amqps-bind).
    let tls = dir.path().join("broker-tls");
    ok(
        &parent,
        &[
            "broker-tls",
            "--out",
            tls.to_str().unwrap(),
            "--amqps-port",
            &AMQPS_PORT.to_string(),
            "--amqps-bind",
            "127.0.0.1",
        ],
    );
    let conf = tls.join("rabbitmq-migration.conf");
    let fragment = std::fs::read_to_string(&conf).unwrap();
    assert!(
        fragment.contains("ssl_cert_login_from = common_name"),
        "{fragment}"
    );
    node.run("restart", Some(&tls), Some(&conf));
    wait_for("all three back online", WAIT, || {
        let s = parent.status_json().ok()?;
        (s["network"]["online"] == 3).then_some(())
    });

    let amqps = format!("amqps://guest:guest@127.0.0.1:{AMQPS_PORT}/{}", vhost.name);
    ok(
        &parent,
        &[
            "switch-broker",
            "--amqps",
            &amqps,
            "--external",
            "--step-timeout",
            "30s",
        ],
    );
    // Each child is connected over TLS as the user named by its certificate.
    for id in &ids {
        let name = format!("fleetls-child:{id} (");
        let user = wait_for("the child on AMQPS as its own user", WAIT, || {
            let list = vhost.management_get("/api/vhosts/{vhost}/connections");
            list.as_array()?
                .iter()
                .find(|c| {
                    c["client_properties"]["connection_name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&name))
                        && c["ssl"] == true
                })
                .and_then(|c| c["user"].as_str().map(str::to_owned))
        });
        assert_eq!(&user, id);
        let permissions = vhost.management_get(&format!("/api/users/{id}/permissions"));
        let granted = permissions.as_array().expect("permissions listed");
        assert_eq!(granted.len(), 1, "{permissions}");
        assert_eq!(granted[0]["vhost"], vhost.name.as_str());
        let configure = granted[0]["configure"].as_str().unwrap();
        assert!(configure.contains(&id.replace('-', r"\-")), "{configure}");
    }

    // From outside, with till-1's certificate and key, logged in as till-1.
    let till_1 = child_layout(dir.path(), "till-1");
    let as_till_1 = |args: &[&str]| {
        let mut all = args.to_vec();
        let (ca, cert, key) = (tls.join("ca.pem"), till_1.chain(), till_1.key());
        let owned = [
            ca.to_str().unwrap().to_owned(),
            cert.to_str().unwrap().to_owned(),
            key.to_str().unwrap().to_owned(),
        ];
        all.extend(["--ca", &owned[0], "--cert", &owned[1], "--key", &owned[2]]);
        all.push("--external");
        attack(&all)
    };
    let url = format!("amqps://127.0.0.1:{AMQPS_PORT}/{}", vhost.name);
    let other = format!("fleetls.agent.{}", ids[1]);
    let take = as_till_1(&["consume", "--broker", &url, "--queue", &other]);
    assert_eq!(take["refused"], true, "till-1 read till-2's queue: {take}");
    let delete = as_till_1(&["declare", "--broker", &url, "--queue", &other, "--delete"]);
    assert_eq!(
        delete["refused"], true,
        "till-1 deleted till-2's queue: {delete}"
    );
    let own = format!("fleetls.agent.{}", ids[0]);
    let copy = as_till_1(&[
        "bind",
        "--broker",
        &url,
        "--queue",
        &own,
        "--exchange",
        "fleetls.parent",
        "--routing-key",
        "fleetls.parent",
    ]);
    assert_eq!(
        copy["refused"], true,
        "till-1 copied the children's messages: {copy}"
    );

    // ---- revocation of till-1
    let ca = tls.join("ca.pem");
    let cert_of = |name: &str| {
        let files = child_layout(dir.path(), name);
        (files.chain(), files.key())
    };
    let (one_cert, one_key) = cert_of("till-1");
    let (two_cert, two_key) = cert_of("till-2");
    // Before: both pass at the parent's SSL port and at the local parent's.
    for p in [ssl_port, lp_port] {
        assert!(
            handshake(p, &ca, &one_cert, &one_key).is_ok(),
            "till-1 at {p} before revocation"
        );
    }
    // What till-1 logged before its revocation.
    let logged_before = one.output().len();
    let revoked = ok(
        &parent,
        &["revoke", "till-1", "--reason", "key-compromise", "--json"],
    );
    let revoked: Value = serde_json::from_str(&revoked).unwrap();
    assert_eq!(revoked["certificates"], 1, "{revoked}");
    assert_eq!(revoked["connections_closed"], 1, "{revoked}");
    // The CRL, served without a token, is the one in the data dir.
    let served = fleetls_tests::http()
        .get(format!("http://{}/crl.pem", parent.admin))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let stored = std::fs::read_to_string(parent.cert_file(CertFile::Crl)).unwrap();
    assert_eq!(served, stored);
    assert!(served.contains("BEGIN X509 CRL"), "{served}");
    let crl = dir.path().join("served-crl.pem");
    std::fs::write(&crl, &served).unwrap();
    let verify = |cert: &std::path::Path| {
        let out = Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&ca)
            .arg("-CRLfile")
            .arg(&crl)
            .arg(cert)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (good, text) = verify(&one_cert);
    assert!(!good && text.contains("certificate revoked"), "{text}");
    let (good, text) = verify(&two_cert);
    assert!(good, "{text}");
    // The SSL ports refuse till-1 at once, and still take till-2.
    let refused = handshake(ssl_port, &ca, &one_cert, &one_key).unwrap_err();
    assert!(refused.contains("revoked"), "{refused}");
    handshake(ssl_port, &ca, &two_cert, &two_key).expect("till-2 at the parent's SSL port");
    let refused = wait_for("the local parent refusing till-1", WAIT, || {
        handshake(lp_port, &ca, &one_cert, &one_key).err()
    });
    assert!(refused.contains("revoked"), "{refused}");
    handshake(lp_port, &ca, &two_cert, &two_key).expect("till-2 at the local parent");
    // Its broker connection is gone and stays gone; till-2's is there.
    let connected = |id: &str| {
        let name = format!("fleetls-child:{id} (");
        let list = vhost.management_get("/api/vhosts/{vhost}/connections");
        list.as_array().map(|l| {
            l.iter().any(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&name))
            })
        })
    };
    wait_for("till-1's connection closed", WAIT, || {
        (connected(&ids[0]) == Some(false)).then_some(())
    });
    // Its RabbitMQ user is gone; till-2's is there.
    let user = |id: &str| {
        fleetls_tests::http()
            .get(format!("{}/api/users/{id}", broker.management))
            .basic_auth(&broker.user, Some(&broker.password))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(user(&ids[0]), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(user(&ids[1]), reqwest::StatusCode::OK);
    // It stays out: till-1 tries to log in again, and is refused, twice,
    // never connected in between.
    wait_for("till-1 refused twice at its login", WAIT, || {
        assert_eq!(connected(&ids[0]), Some(false), "till-1 came back");
        let log = one.output();
        let refused = log[logged_before..]
            .matches("cannot reach the broker; retrying")
            .count();
        (refused >= 2).then_some(())
    });
    assert_eq!(connected(&ids[0]), Some(false), "till-1 came back");
    assert_eq!(connected(&ids[1]), Some(true), "till-2 lost its connection");
    // Its key cannot speak again: a Hello signed with it is refused.
    let key = till_1.signing_key();
    let plain = format!("amqp://guest:guest@127.0.0.1:{AMQP_PORT}/{}", vhost.name);
    let hello = serde_json::json!({
        "name": "till-1", "kind": "child", "version": "1.0.0", "location": "shop",
        "hostnames": [], "ips": [], "key_fingerprint": null,
        "state": {"has_certificate": true, "ssl": true, "broker_tls": false}
    })
    .to_string();
    attack(&[
        "send",
        "--broker",
        &plain,
        "--exchange",
        "fleetls.parent",
        "--routing-key",
        "fleetls.parent",
        "--kind",
        "Hello",
        "--fields",
        &hello,
        "--from",
        &ids[0],
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    wait_for("the revoked key's Hello refused", WAIT, || {
        vhost
            .peek_queue("fleetls.dead", 50)
            .iter()
            .any(|m| {
                m["properties"]["headers"]["x-fleetls-reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("banned_key") && r.contains("revoked"))
            })
            .then_some(())
    });

    // Deleting an agent removes its RabbitMQ user.
    ok(&parent, &["agents", "delete", "till-2"]);
    let gone = fleetls_tests::http()
        .get(format!("{}/api/users/{}", broker.management, ids[1]))
        .basic_auth(&broker.user, Some(&broker.password))
        .send()
        .unwrap();
    assert_eq!(gone.status(), reqwest::StatusCode::NOT_FOUND);
}
