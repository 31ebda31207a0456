//! The trust model, attacked from outside.
//!
//! Every attack here is made by `tests/attacks/fleetls_attack.py`, a second
//! AMQP client written in Python that shares no code with fleetls and holds
//! only what any till holds: the broker's shared credentials. Each test
//! performs the attack, then checks from outside that nothing changed — the
//! child's files, its broker address and certificates, the parent's registry
//! (read with `sqlite3`), what was issued — and that the attempt is visible:
//! dead-lettered with its reason, counted in `status --json` and `/metrics`.

use std::process::{Command, Stdio};

use fleetls_tests::attack::{
    attack, capture_setup, foreign_ca, hello, pinned_fingerprint, snapshot, Net, WAIT,
};
use fleetls_tests::{wait_for, CertFile, Proc};
use serde_json::{json, Value};

#[test]
fn forged_commands_are_refused_dead_lettered_and_reported() {
    let net = Net::start(&[]);
    let (_child, id) = net.child("till-1", &[]);
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        net.parent.agent("till-1")?["has_certificate"]
            .as_bool()?
            .then_some(())
    });
    let before = snapshot(&net.data("till-1"));
    let (evil_ca, _, _) = foreign_ca(net.dir.path());
    let (evil_key, _) = net.attacker_key("evil");
    let parent_key = net.network()["signing_key"].as_str().unwrap().to_owned();
    let deadline = (fleetls_proto::now_ms() + 60_000).to_string();
    let campaign = uuid::Uuid::new_v4().to_string();
    let rogue = json!({
        "campaign": campaign, "uri": "amqps://guest:guest@127.0.0.1:1/%2f",
        "ca_pem": evil_ca, "deadline": deadline.parse::<u64>().unwrap(), "auth": "plain"
    });
    let key = evil_key.to_str().unwrap();
    // 1. unsigned; 2. signed by the attacker; 3. the parent's key presented
    //    with the attacker's signature; 4–5. a forged switch and a test step
    //    to any host, signed by the attacker.
    net.command(&id, "UseBrokerTls", rogue.clone(), &["--to", &id]);
    net.command(
        &id,
        "UseBrokerTls",
        rogue.clone(),
        &["--to", &id, "--sign-key", key],
    );
    net.command(
        &id,
        "UseBrokerTls",
        rogue,
        &[
            "--to",
            &id,
            "--sign-key",
            key,
            "--present-key",
            &"ab".repeat(32),
        ],
    );
    net.command(
        &id,
        "UseSsl",
        json!({ "campaign": campaign }),
        &["--to", &id, "--sign-key", key],
    );
    net.command(
        &id,
        "RunStep",
        json!({
            "campaign": campaign,
            "step": {"ssl-port": {"host": "evil.example", "port": 443}},
            "deadline": deadline.parse::<u64>().unwrap()
        }),
        &["--to", &id, "--sign-key", key],
    );
    net.wait_dead(
        "the child to dead-letter five forged commands",
        "forged:",
        5,
    );
    let reasons = net.dead_reasons();
    assert!(
        reasons.iter().any(|r| r.contains("unsigned")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not by the parent key this agent pinned")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("bad signature")),
        "{reasons:?}"
    );
    // Nothing changed on the child: files, broker address, SSL mode.
    wait_for("the parent to count the five attempts", WAIT, || {
        (net.security_events() >= 5).then_some(())
    });
    assert_eq!(snapshot(&net.data("till-1")), before);
    assert!(!net.files("till-1").broker_ca().exists());
    let agent = net.parent.agent("till-1").unwrap();
    assert_eq!(agent["ssl"], false);
    assert_eq!(agent["broker_tls"], false);
    assert_eq!(agent["compromised"], false);
    // The child pinned the parent's key, and it still holds it.
    assert_eq!(net.parent.agent("till-1").unwrap()["compromised"], false);
    let trust = std::fs::read_to_string(net.files("till-1").trust()).unwrap();
    let pinned = trust
        .lines()
        .find_map(|l| l.strip_prefix("parent_key = "))
        .expect("a pinned key")
        .trim_matches('"')
        .to_owned();
    let (_, fingerprint) = pinned_fingerprint(&pinned);
    assert_eq!(fingerprint, parent_key);
    assert_eq!(
        net.sql(&format!(
            "SELECT coalesce(sum(count), 0) FROM security_events WHERE kind = 'forged_command' AND agent = '{id}'"
        )),
        "5"
    );
    assert_eq!(
        net.metric("fleetls_security_events_total{kind=\"forged_command\"}"),
        Some(5)
    );
    // The child still obeys its parent: told to renew, it holds a new
    // certificate of the parent's CA.
    let files = net.files("till-1");
    let held = std::fs::read(files.chain()).unwrap();
    let (code, _, err) = net.parent.cli(&["certs", "renew", "--agent", "till-1"]);
    assert_eq!(code, 0, "{err}");
    wait_for("till-1 renewed at its parent's word", WAIT, || {
        (std::fs::read(files.chain()).ok()? != held).then_some(())
    });
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(net.parent.cert_file(CertFile::CaPem))
        .arg(files.chain())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let valid = net.sql(&format!(
        "SELECT count(*) FROM certificates WHERE agent_id = '{id}' AND revoked = 0"
    ));
    assert_eq!(valid, "1");
    let superseded = net.sql(&format!(
        "SELECT count(*) FROM certificates WHERE agent_id = '{id}' AND revoke_reason = 'superseded'"
    ));
    assert_eq!(superseded, "1");
}

#[test]
fn a_forged_ca_rotation_bundle_is_refused_and_changes_nothing() {
    let net = Net::start(&[]);
    let (_child, id) = net.child("till-1", &[]);
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        net.parent.agent("till-1")?["has_certificate"]
            .as_bool()?
            .then_some(())
    });
    let before = snapshot(&net.data("till-1"));
    let (evil_ca, _, _) = foreign_ca(net.dir.path());
    let real_ca = std::fs::read_to_string(net.parent.cert_file(CertFile::CaPem)).unwrap();
    let (evil_key, _) = net.attacker_key("evil");
    let key = evil_key.to_str().unwrap();
    // A rotation to the attacker's CA, the real one kept beside it so that
    // nothing seems dropped: unsigned, then signed by the attacker.
    let bundle = json!({
        "ca_chain_pem": evil_ca, "ca_fingerprint": "sha256:00", "ssl_host": "evil.example",
        "ssl_port": 443, "serve_port": null, "renew": true,
        "trust_pem": format!("{real_ca}{evil_ca}")
    });
    net.command(&id, "CertificatesReady", bundle.clone(), &["--to", &id]);
    net.command(
        &id,
        "CertificatesReady",
        bundle,
        &["--to", &id, "--sign-key", key],
    );
    net.wait_dead("the child to dead-letter two forged bundles", "forged:", 2);
    wait_for("the parent to count the two attempts", WAIT, || {
        (net.security_events() >= 2).then_some(())
    });
    // Its trusted CAs, key and certificate are as they were.
    assert_eq!(snapshot(&net.data("till-1")), before);
    let trusted = std::fs::read_to_string(net.files("till-1").ca()).unwrap();
    assert_eq!(trusted, real_ca);
    assert!(net
        .parent
        .agent("till-1")
        .is_some_and(|a| a["compromised"] == false));
}

#[test]
fn a_captured_command_replayed_altered_or_redirected_is_refused() {
    let net = Net::start(&[]);
    let (_one, one) = net.child("till-1", &[]);
    let (_two, two) = net.child("till-2", &[]);
    // The attacker copies till-1's commands into a queue of its own.
    let copy = format!("evil-copy-{}", uuid::Uuid::new_v4().simple());
    let setup = capture_setup(&net.url(), "fleetls.agents", &one, &copy);
    assert_eq!(setup["queue"], copy.as_str(), "{setup}");
    net.generate_and_send();
    let captured = attack(&[
        "capture",
        "--broker",
        &net.url(),
        "--queue",
        &copy,
        "--count",
        "1",
        "--timeout",
        "30",
    ]);
    let message = &captured["messages"][0];
    assert_eq!(message["decoded"]["to"], one.as_str(), "{captured}");
    let payload = message["payload_hex"].as_str().unwrap();
    let headers = message["headers"].to_string();
    wait_for("till-1's and till-2's certificates", WAIT, || {
        let both = ["till-1", "till-2"].iter().all(|n| {
            net.parent
                .agent(n)
                .is_some_and(|a| a["has_certificate"] == true)
        });
        both.then_some(())
    });
    let (before_one, before_two) = (snapshot(&net.data("till-1")), snapshot(&net.data("till-2")));
    let url = net.url();
    let replay = |key: &str, set: &[&str]| {
        let mut args = vec![
            "replay",
            "--broker",
            &url,
            "--exchange",
            "fleetls.agents",
            "--routing-key",
            key,
            "--payload-hex",
            payload,
            "--headers",
            &headers,
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        attack(&args)
    };
    // The genuine command again, to its agent; to another agent; readdressed;
    // with its content changed.
    replay(&one, &[]);
    replay(&two, &[]);
    let to_two = format!("to={two}");
    replay(&two, &[&to_two]);
    replay(&one, &["body.ssl_host=\"evil.example\""]);
    net.wait_dead("four refused replays", "forged:", 4);
    let reasons = net.dead_reasons();
    assert!(
        reasons.iter().any(|r| r.contains("replayed")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("addressed to agent")),
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("bad signature"))
            .count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(snapshot(&net.data("till-1")), before_one);
    assert_eq!(snapshot(&net.data("till-2")), before_two);
    wait_for("the four attempts counted", WAIT, || {
        (net.security_events() >= 4).then_some(())
    });
}

#[test]
fn nobody_speaks_for_an_agent_but_the_agent() {
    let net = Net::start(&[]);
    let (_child, id) = net.child("till-1", &["--location", "shop-1"]);
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        net.parent.agent("till-1")?["has_certificate"]
            .as_bool()?
            .then_some(())
    });
    let row = |net: &Net| {
        net.sql(&format!(
            "SELECT name, location, signing_key FROM agents WHERE id = '{id}'"
        ))
    };
    let certificates = |net: &Net| {
        net.sql(&format!(
            "SELECT count(*) FROM certificates WHERE agent_id = '{id}'"
        ))
    };
    let (before, issued) = (row(&net), certificates(&net));
    let (key, _) = net.attacker_key("evil");
    let key = key.to_str().unwrap();
    // A Hello renaming till-1: unsigned, then signed by another key.
    net.to_parent(&id, "Hello", hello("evil", "child", "elsewhere", &[]), &[]);
    net.to_parent(
        &id,
        "Hello",
        hello("evil", "child", "elsewhere", &[]),
        &["--sign-key", key],
    );
    // A CSR for till-1 on a key made elsewhere.
    let csr_key = net.dir.path().join("csr.key");
    let output = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", &format!("/CN={id}"), "-keyout"])
        .arg(&csr_key)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let csr = String::from_utf8(output.stdout).unwrap();
    assert!(csr.contains("CERTIFICATE REQUEST"));
    net.to_parent(&id, "Csr", json!({ "pem": csr }), &["--sign-key", key]);
    // A forged step report (a pass for a failing child).
    net.to_parent(
        &id,
        "StepReport",
        json!({"campaign": uuid::Uuid::new_v4().to_string(), "step": "ssl-port", "ok": true,
               "message": "SSL communication switchover test completed successfully!",
               "cause": null, "started_at": null}),
        &["--sign-key", key],
    );
    net.wait_dead("four refused impersonations", "", 4);
    let reasons = net.dead_reasons();
    assert!(
        reasons.iter().any(|r| r.starts_with("forged: unsigned")),
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("impersonation"))
            .count(),
        3,
        "{reasons:?}"
    );
    assert_eq!(row(&net), before);
    assert_eq!(certificates(&net), issued);
    assert_eq!(net.parent.agent("till-1").unwrap()["name"], "till-1");
    wait_for("the attempts counted", WAIT, || {
        (net.security_events() >= 4).then_some(())
    });
    assert_eq!(
        net.metric("fleetls_security_events_total{kind=\"impersonation\"}"),
        Some(3)
    );
    assert_eq!(
        net.metric("fleetls_security_events_total{kind=\"unsigned\"}"),
        Some(1)
    );
}

#[test]
fn a_fake_local_parent_gets_no_server_certificate_and_redirects_nobody() {
    let net = Net::start(&["--local-parent-names", ".shop.example"]);
    let (_child, child) = net.child("till-1", &["--location", "shop-1"]);
    let (key, _) = net.attacker_key("fake-lp");
    let key = key.to_str().unwrap();
    let fake = uuid::Uuid::new_v4().to_string();
    // Its own queue, where the parent's answers arrive.
    let queue = format!("fleetls.agent.{fake}");
    capture_setup(&net.url(), "fleetls.agents", &fake, &queue);
    // A wildcard is refused outright.
    net.to_parent(
        &fake,
        "Hello",
        hello("lp", "local-parent", "shop-1", &["*.shop"]),
        &["--sign-key", key],
    );
    net.wait_dead("the wildcard Hello refused", "invalid_field: host name", 1);
    // Without it, the fake registers — as pending.
    net.to_parent(
        &fake,
        "Hello",
        hello(
            "lp",
            "local-parent",
            "shop-1",
            &["localhost", "bank.example", "lp.shop.example"],
        ),
        &["--sign-key", key],
    );
    let lp = wait_for("the fake local parent registered", WAIT, || {
        net.parent.agent("lp")
    });
    assert_eq!(lp["admission"], "pending", "{lp}");
    assert_eq!(net.network()["pending"], 1);
    // Step 2 of the children of shop-1 does not go to a pending local parent.
    let copy = format!("evil-copy-{}", uuid::Uuid::new_v4().simple());
    capture_setup(&net.url(), "fleetls.agents", &child, &copy);
    net.generate_and_send();
    let ready = attack(&[
        "capture",
        "--broker",
        &net.url(),
        "--queue",
        &copy,
        "--count",
        "1",
        "--timeout",
        "30",
    ]);
    let body = &ready["messages"][0]["decoded"]["body"]["CertificatesReady"];
    assert_eq!(body["ssl_host"], "localhost", "{ready}");
    assert_eq!(body["ssl_port"], net.network()["ssl_port"], "{ready}");
    // A CSR while pending: refused.
    let csr_for = |names: &str| {
        let output = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-subj", &format!("/CN={fake}"), "-addext", names, "-keyout"])
            .arg(
                net.dir
                    .path()
                    .join(format!("lp-{}.key", uuid::Uuid::new_v4().simple())),
            )
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let sans = "subjectAltName=DNS:localhost,DNS:bank.example,DNS:lp.shop.example";
    net.to_parent(
        &fake,
        "Csr",
        json!({ "pem": csr_for(sans) }),
        &["--sign-key", key],
    );
    let answer = attack(&[
        "capture",
        "--broker",
        &net.url(),
        "--queue",
        &queue,
        "--count",
        "1",
        "--timeout",
        "30",
    ]);
    let rejected = &answer["messages"][0]["decoded"]["body"]["CsrRejected"]["reason"];
    assert!(
        rejected.as_str().is_some_and(|r| r.contains("pending")),
        "{answer}"
    );
    // Accepted by an operator, it gets only the allowed names.
    let (code, out, err) = net.parent.cli(&["agents", "accept", "lp"]);
    assert_eq!(code, 0, "{out}{err}");
    net.to_parent(
        &fake,
        "Csr",
        json!({ "pem": csr_for(sans) }),
        &["--sign-key", key],
    );
    let answer = attack(&[
        "capture",
        "--broker",
        &net.url(),
        "--queue",
        &queue,
        "--count",
        "1",
        "--timeout",
        "30",
    ]);
    let chain = answer["messages"][0]["decoded"]["body"]["CertificateIssued"]["chain_pem"]
        .as_str()
        .unwrap_or_else(|| panic!("no certificate: {answer}"));
    let pem = net.dir.path().join("lp.pem");
    std::fs::write(&pem, chain).unwrap();
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DNS:lp.shop.example"), "{text}");
    assert!(
        !text.contains("bank.example") && !text.contains("localhost"),
        "{text}"
    );
}

#[test]
fn oversized_and_control_characters_are_refused_and_never_printed() {
    let mut net = Net::start(&[]);
    let (_child, _) = net.child("till-1", &[]);
    let (key, _) = net.attacker_key("evil");
    let key = key.to_str().unwrap();
    // A 100 KiB payload (its hex in a file: too big for one argument), and
    // a Hello whose location moves the cursor.
    let big = net.dir.path().join("big.hex");
    std::fs::write(&big, "ab".repeat(100 * 1024)).unwrap();
    let big = format!("@{}", big.display());
    attack(&[
        "raw",
        "--broker",
        &net.url(),
        "--exchange",
        "fleetls.parent",
        "--routing-key",
        "fleetls.parent",
        "--payload-hex",
        &big,
    ]);
    let evil = uuid::Uuid::new_v4().to_string();
    net.to_parent(
        &evil,
        "Hello",
        hello("till-x", "child", "shop\u{1b}[2J\nroot#", &[]),
        &["--sign-key", key],
    );
    let long = "n".repeat(10_000);
    net.to_parent(
        &evil,
        "Hello",
        hello(&long, "child", "shop", &[]),
        &["--sign-key", key],
    );
    net.wait_dead("three refused messages", "", 3);
    let reasons = net.dead_reasons();
    assert!(
        reasons.iter().any(|r| r.starts_with("too_large")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("invalid_field: location")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("invalid_field: name")),
        "{reasons:?}"
    );
    assert_eq!(net.sql("SELECT name FROM agents"), "till-1");
    // An agent whose name, version and location hold control characters
    // (a registry written before these checks, or by hand), beside till-1:
    // the status prints both, without them.
    net.parent.proc.signal("TERM");
    net.parent.proc.wait_exit(WAIT).expect("the parent stops");
    let evil = uuid::Uuid::new_v4();
    net.sql(&format!(
        "INSERT INTO agents (id, name, kind, version, location, hostnames, ips, first_seen, last_seen)
         VALUES ('{evil}', 'evil' || char(27) || '[2J', 'child', '1.0' || char(10) || 'root#',
                 'shop' || char(27) || '[2J' || char(13) || 'root#', '[]', '[]', 1, 1)"
    ));
    net.parent.restart(&net.vhost, &[]);
    let (code, table, err) = net.parent.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows.iter().any(|r| r.starts_with("till-1 ")),
        "till-1 is listed: {table}"
    );
    let shown = rows
        .iter()
        .find(|r| r.ends_with(&evil.to_string()))
        .unwrap_or_else(|| panic!("the agent {evil} is listed on one line: {table:?}"));
    assert!(shown.starts_with("evil?[2J "), "{shown:?}");
    assert!(shown.contains("1.0?root#"), "{shown:?}");
    assert!(shown.contains("shop?[2J?root#"), "{shown:?}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
}

#[test]
fn a_child_pinned_up_front_refuses_a_foreign_ca_and_one_trusting_first_use_is_flagged() {
    let net = Net::start(&[]);
    let parent_key = net.network()["signing_key"].as_str().unwrap().to_owned();
    let (_pinned, pinned) = net.child("till-pinned", &["--parent-key", &parent_key]);
    let (_tofu, tofu) = net.child("till-tofu", &[]);
    let (evil_ca, _, _) = foreign_ca(net.dir.path());
    let (key, _) = net.attacker_key("evil");
    let key = key.to_str().unwrap();
    let ready = |to: &str| {
        net.command(
            to,
            "CertificatesReady",
            json!({"ca_chain_pem": evil_ca, "ca_fingerprint": "sha256:00", "ssl_host": "evil.example",
                   "ssl_port": 443, "serve_port": null}),
            &["--to", to, "--sign-key", key],
        )
    };
    // Before `certs generate`: the CA takeover the trust model exists for.
    ready(&pinned);
    ready(&tofu);
    net.wait_dead("the pinned child refusing", "forged: signed by", 1);
    assert!(!net.files("till-pinned").ca().exists());
    // The child that trusted first use is shown compromised, never healthy.
    let flagged = wait_for("the TOFU child flagged", WAIT, || {
        let a = net.parent.agent("till-tofu")?;
        (a["compromised"] == true).then_some(a)
    });
    assert_eq!(flagged["id"], tofu.as_str());
    assert_eq!(net.network()["compromised"], 1);
    let events =
        net.sql("SELECT coalesce(sum(count), 0) FROM security_events WHERE kind = 'compromised'");
    assert_eq!(events, "1");
    let (_, table, _) = net.parent.cli(&["status"]);
    assert!(table.contains("COMPROMISED"), "{table}");
    // The genuine parent still reaches the pinned child.
    net.generate_and_send();
    wait_for(
        "the pinned child's certificate from the real CA",
        WAIT,
        || {
            net.parent.agent("till-pinned")?["has_certificate"]
                .as_bool()?
                .then_some(())
        },
    );
}

#[test]
fn no_other_client_can_take_the_parents_queue() {
    let net = Net::start(&[]);
    let taken = attack(&[
        "consume",
        "--broker",
        &net.url(),
        "--queue",
        "fleetls.parent",
    ]);
    assert_eq!(taken["refused"], true, "{taken}");
    assert_eq!(taken["code"], ACCESS_REFUSED, "{taken}");
    assert!(
        taken["error"].as_str().unwrap().contains(EXCLUSIVE_USE),
        "{taken}"
    );
}

/// AMQP's reply code for a refused access. RabbitMQ answers it both for a
/// right the user lacks ("... refused for user 'NAME'") and for a queue
/// another connection consumes exclusively ("... in exclusive use"); only
/// an exclusive *queue* gets 405 RESOURCE_LOCKED. The text tells them apart.
const ACCESS_REFUSED: u16 = 403;
/// RabbitMQ's text for a permission the user lacks.
const NO_RIGHT: &str = "refused for user";
/// RabbitMQ's text for a queue held by an exclusive consumer.
const EXCLUSIVE_USE: &str = "in exclusive use";

/// Whether an attack was refused for want of a permission: 403, saying
/// so, and not because the parent's consumer holds the queue.
fn refused_for_want_of_right(answer: &Value) -> bool {
    let error = answer["error"].as_str().unwrap_or_default();
    answer["refused"] == true
        && answer["code"] == ACCESS_REFUSED
        && error.contains(NO_RIGHT)
        && !error.contains(EXCLUSIVE_USE)
}

/// A folder holding `rabbitmqctl` for the node the tests run against, as
/// `scripts/broker` calls it: the node `FLEETLS_BROKER_NODE` (`fleetls`) at
/// localhost, with the Erlang cookie of its folder (`FLEETLS_BROKER_DIR`,
/// `target/broker/NODE`). Put first on `PATH`, it runs an operator's
/// script unchanged.
fn node_rabbitmqctl(dir: &std::path::Path) -> std::path::PathBuf {
    let node = std::env::var("FLEETLS_BROKER_NODE").unwrap_or_else(|_| "fleetls".into());
    let node_dir = std::env::var_os("FLEETLS_BROKER_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| fleetls_tests::repo().join("target/broker").join(&node));
    let bin = dir.join("rabbitmq-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("rabbitmqctl");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nHOME='{home}' RABBITMQ_CONF_ENV_FILE='{env}' \\\n  exec /usr/lib/rabbitmq/bin/rabbitmqctl -n '{node}@localhost' \"$@\"\n",
            home = node_dir.join("home").display(),
            env = node_dir.join("rabbitmq-env.conf").display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn the_agents_least_privilege_user_runs_a_child_and_cannot_spy_on_the_parent() {
    let net = Net::start(&[]);
    // The script `broker-tls` writes for the operator.
    net.parent.cli_ok(&["certs", "generate"]);
    let out = net.dir.path().join("broker-tls");
    net.parent.cli_ok(&[
        "broker-tls",
        "--out",
        out.to_str().unwrap(),
        "--amqps-bind",
        "127.0.0.1",
    ]);
    // The agents' shared user, given its permissions by that script, run
    // as written against the test's node.
    let user = format!("tills-{}", uuid::Uuid::new_v4().simple());
    let broker = fleetls_tests::broker();
    let put = |path: String, body: Value| {
        let response = fleetls_tests::http()
            .put(format!("{}{path}", broker.management))
            .basic_auth(&broker.user, Some(&broker.password))
            .json(&body)
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{:?}", response.text());
    };
    put(
        format!("/api/users/{user}"),
        json!({"password": "till-secret", "tags": ""}),
    );
    let bin = node_rabbitmqctl(net.dir.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = Command::new("sh")
        .arg(out.join("rabbitmq-permissions.sh"))
        .args([&net.vhost.name, &user])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        script.status.success(),
        "rabbitmq-permissions.sh: {script:?}"
    );
    let restricted = net.url().replacen(
        &format!("{}:{}@", broker.user, broker.password),
        &format!("{user}:till-secret@"),
        1,
    );
    assert_ne!(restricted, net.url());
    // A child on that user registers and gets its certificate.
    let data = net.data("till-1");
    let mut child = Proc::spawn(
        &fleetls_tests::program("fleetls-child"),
        &[
            "run",
            "--broker",
            &restricted,
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            "till-1",
            "--heartbeat",
            "1",
        ]
        .map(String::from),
        net.dir.path().join("till-1.log"),
    );
    wait_for("the restricted child registered", WAIT, || {
        net.parent.agent("till-1")
    });
    net.parent.cli_ok(&["certs", "send"]);
    wait_for("the restricted child's certificate", WAIT, || {
        net.parent.agent("till-1")?["has_certificate"]
            .as_bool()?
            .then_some(())
    });
    // With the same credentials, the attacker can neither copy the children's
    // messages nor take or delete the parent's queue.
    let copy = capture_setup(
        &restricted,
        "fleetls.parent",
        "fleetls.parent",
        "fleetls.agent.00000000-0000-0000-0000-000000000001",
    );
    assert!(refused_for_want_of_right(&copy), "{copy}");
    // Refused for want of the right, not because the parent's consumer is
    // exclusive (which refuses any user, the administrator too).
    let take = attack(&[
        "consume",
        "--broker",
        &restricted,
        "--queue",
        "fleetls.parent",
    ]);
    assert!(refused_for_want_of_right(&take), "{take}");
    let delete = attack(&[
        "declare",
        "--broker",
        &restricted,
        "--queue",
        "fleetls.parent",
        "--delete",
    ]);
    assert!(refused_for_want_of_right(&delete), "{delete}");
    let own = attack(&["declare", "--broker", &restricted, "--queue", "evil-queue"]);
    assert!(refused_for_want_of_right(&own), "{own}");
    child.signal("TERM");
    child.wait_exit(WAIT);
    let _ = fleetls_tests::http()
        .delete(format!("{}/api/users/{user}", broker.management))
        .basic_auth(&broker.user, Some(&broker.password))
        .send();
}
