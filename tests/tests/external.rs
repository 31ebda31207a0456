//! `switch-broker --external`: children log in to RabbitMQ with their
//! certificates (SASL EXTERNAL), each as a RabbitMQ user of its own that the
//! parent creates through management, allowed only its own queue. On a node
//! of its own (`bext`), restarted once with the migration fragment that
//! `broker-tls` writes. Then, from outside, with one child's certificate and
//! key: its login cannot read another agent's queue nor copy the children's
//! messages; and `agents delete` removes the user.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use fleetls_tests::{free_port, repo, start_child, wait_for, Parent, PrivateNode, Vhost};

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
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "10"]);
    let _one = start_child(&vhost, dir.path(), "till-1", &[]);
    let _two = start_child(&vhost, dir.path(), "till-2", &[]);
    let ids: Vec<String> = ["till-1", "till-2"]
        .iter()
        .map(|n| {
            wait_for("registered", WAIT, || {
                parent.agent(n)?["id"].as_str().map(str::to_owned)
            })
        })
        .collect();
    let port = free_port().to_string();
    ok(
        &parent,
        &[
            "settings",
            "set",
            "--names",
            "localhost",
            "--ips",
            "127.0.0.1",
            "--port",
            &port,
        ],
    );
    ok(&parent, &["certs", "generate"]);
    ok(&parent, &["certs", "send"]);
    wait_for("two certificates", WAIT, || {
        let s = parent.status_json().ok()?;
        (s["network"]["children_with_certificates"] == 2).then_some(())
    });
    ok(&parent, &["verify", "--step-timeout", "20s"]);
    ok(&parent, &["switch", "--step-timeout", "20s"]);

    // The node restarted with the migration fragment of broker-tls (its
    // listener moved to this node's port).
    let tls = dir.path().join("broker-tls");
    ok(&parent, &["broker-tls", "--out", tls.to_str().unwrap()]);
    let fragment = std::fs::read_to_string(tls.join("rabbitmq-migration.conf")).unwrap();
    assert!(
        fragment.contains("ssl_cert_login_from = common_name"),
        "{fragment}"
    );
    let fragment = fragment.replace(
        "listeners.ssl.default = 5671",
        &format!("listeners.ssl.default = 127.0.0.1:{AMQPS_PORT}"),
    );
    let conf = dir.path().join("migration-for-node.conf");
    std::fs::write(&conf, fragment).unwrap();
    node.run("restart", Some(&tls), Some(&conf));
    wait_for("both back online", WAIT, || {
        let s = parent.status_json().ok()?;
        (s["network"]["online"] == 2).then_some(())
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
        let name = format!("fleetls-child:{id}");
        let user = wait_for("the child on AMQPS as its own user", WAIT, || {
            let list = vhost.management_get("/api/vhosts/{vhost}/connections");
            list.as_array()?
                .iter()
                .find(|c| {
                    c["client_properties"]["connection_name"] == name.as_str() && c["ssl"] == true
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
    let certs = dir.path().join("till-1/certs");
    let as_till_1 = |args: &[&str]| {
        let mut all = args.to_vec();
        let (ca, cert, key) = (
            tls.join("ca.pem"),
            certs.join("agent.pem"),
            certs.join("agent.key"),
        );
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

    // Deleting an agent removes its RabbitMQ user.
    ok(&parent, &["agents", "delete", "till-2"]);
    let gone = fleetls_tests::http()
        .get(format!("{}/api/users/{}", broker.management, ids[1]))
        .basic_auth(&broker.user, Some(&broker.password))
        .send()
        .unwrap();
    assert_eq!(gone.status(), reqwest::StatusCode::NOT_FOUND);
}
