//! Enrollment attacked from outside. The attacker is `tests/attacks/
//! fleetls_attack.py` with the tills' shared broker credentials and keys of
//! its own — sometimes even a valid token, as a device it was given to
//! would hold — and every check reads what changed: registry rows
//! (`sqlite3`), `fleetls.dead`, the parent's commands, files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleetls_tests::attack::{attack, capture_setup, hello, Net, WAIT};
use fleetls_tests::{child_layout, wait_for};
use serde_json::{json, Value};

/// A fake agent of the attacker's: its id, key file and public key (hex).
struct Fake {
    id: String,
    key: PathBuf,
    public: String,
}

impl Fake {
    fn new(net: &Net, tag: &str) -> Fake {
        let (key, made) = net.attacker_key(tag);
        Fake {
            id: uuid::Uuid::new_v4().to_string(),
            key,
            public: made["public_hex"].as_str().unwrap().to_owned(),
        }
    }

    /// Says Hello as `name` of `kind`, with `enroll` (a proof, or null).
    fn hello(&self, net: &Net, name: &str, kind: &str, enroll: Value) {
        let mut fields = hello(name, kind, "shop-x", &[]);
        if !enroll.is_null() {
            fields["enroll"] = enroll;
        }
        net.to_parent(
            &self.id,
            "Hello",
            fields,
            &["--sign-key", self.key.to_str().unwrap()],
        );
    }

    /// A proof of `token` for this agent's own id and key.
    fn proof(&self, token: &str, kind: &str, name: &str) -> Value {
        attack(&[
            "enroll-proof",
            "--token",
            token,
            "--agent",
            &self.id,
            "--key-hex",
            &self.public,
            "--kind",
            kind,
            "--name",
            name,
        ])["enroll"]
            .clone()
    }

    /// Sends a CSR (PEM) in this agent's name.
    fn csr(&self, net: &Net, pem: &str) {
        net.to_parent(
            &self.id,
            "Csr",
            json!({ "pem": pem }),
            &["--sign-key", self.key.to_str().unwrap()],
        );
    }
}

/// A CSR made by openssl on `key` (a PEM file; made first, P-256, when
/// missing).
fn openssl_csr(key: &Path, cn: &str) -> String {
    if !key.exists() {
        let status = Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(key)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let out = Command::new("openssl")
        .args(["req", "-new", "-subj", &format!("/CN={cn}"), "-key"])
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A new token from `enroll create ARGS --json`: the token.
fn token(net: &Net, args: &[&str]) -> String {
    let mut all = vec!["enroll", "create"];
    all.extend(args);
    net.parent.cli_json(&all)["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The admission the registry holds for agent `id` (empty: none).
fn admission(net: &Net, id: &str) -> String {
    net.sql(&format!("SELECT admission FROM agents WHERE id = '{id}'"))
}

/// How many certificates the registry holds for agent `id`.
fn certificates_of(net: &Net, id: &str) -> u64 {
    net.sql(&format!(
        "SELECT count(*) FROM certificates WHERE agent_id = '{id}'"
    ))
    .parse()
    .unwrap()
}

/// Waits until the parent has recorded a refusal for agent `id`; returns it.
fn refusal(net: &Net, id: &str) -> String {
    wait_for("the parent to answer the CSR", WAIT, || {
        let r = net.sql(&format!(
            "SELECT reason FROM refusals WHERE agent_id = '{id}'"
        ));
        (!r.is_empty()).then_some(r)
    })
}

/// How many times security events of `kind` were seen (folded rows summed).
fn events(net: &Net, kind: &str) -> u64 {
    net.sql(&format!(
        "SELECT coalesce(sum(count), 0) FROM security_events WHERE kind = '{kind}'"
    ))
    .parse()
    .unwrap()
}

#[test]
fn fakes_without_a_token_get_no_certificate_and_a_device_with_one_does() {
    let net = Net::start(&[]);
    // The genuine till proves the test's token: accepted and certified.
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        (certificates_of(&net, &till) == 1).then_some(())
    });
    // 20 fakes with fresh keys, no token: each registers pending, its CSR
    // is refused, and nothing is issued.
    let fakes: Vec<Fake> = (0..20)
        .map(|i| Fake::new(&net, &format!("fake-{i}")))
        .collect();
    for (i, fake) in fakes.iter().enumerate() {
        fake.hello(&net, &format!("fake-{i}"), "child", Value::Null);
        let key = net.dir.path().join(format!("fake-{i}.tls.key"));
        fake.csr(&net, &openssl_csr(&key, &fake.id));
    }
    for fake in &fakes {
        let why = refusal(&net, &fake.id);
        assert!(why.contains("pending"), "{why}");
        assert_eq!(admission(&net, &fake.id), "pending");
        assert_eq!(certificates_of(&net, &fake.id), 0);
    }
    assert_eq!(net.sql("SELECT count(*) FROM certificates"), "1");
    assert_eq!(net.network()["pending"], 20);
}

#[test]
fn a_sniffed_hello_is_worth_nothing_with_another_key() {
    let net = Net::start(&[]);
    // The attacker copies everything sent to the parent.
    let url = net.url();
    let spy = capture_setup(&url, "fleetls.parent", "fleetls.parent", "spy");
    assert_eq!(spy["refused"], false, "{spy}");
    let (_till, till) = net.child("till-1", &[]);
    let hello = wait_for("the till's Hello in the spy queue", WAIT, || {
        let got = attack(&[
            "capture", "--broker", &url, "--queue", "spy", "--count", "0",
        ]);
        got["messages"].as_array()?.iter().find_map(|m| {
            let body = &m["decoded"]["body"]["Hello"];
            (body["name"] == "till-1").then(|| body.clone())
        })
    });
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        (certificates_of(&net, &till) == 1).then_some(())
    });
    let copied = hello["enroll"].clone();
    assert_eq!(copied["token"].as_str().unwrap().len(), 16, "{hello}");
    // The token itself never travels.
    let token_text =
        std::fs::read_to_string(fleetls_tests::enroll_token_path(net.dir.path())).unwrap();
    let secret = token_text.trim().rsplit('.').next().unwrap();
    assert!(!hello.to_string().contains(secret));
    // The copied proof with the attacker's own key and id, same name and
    // another: pending, recorded, its CSR refused, nothing issued.
    for (n, name) in ["till-1", "till-1b"].iter().enumerate() {
        let fake = Fake::new(&net, &format!("copy-{n}"));
        fake.hello(&net, name, "child", copied.clone());
        let key = net.dir.path().join(format!("copy-{n}.tls.key"));
        fake.csr(&net, &openssl_csr(&key, &fake.id));
        let why = refusal(&net, &fake.id);
        assert!(why.contains("pending"), "{why}");
        assert_eq!(certificates_of(&net, &fake.id), 0);
    }
    wait_for("the copied proofs recorded", WAIT, || {
        (events(&net, "enroll_refused") >= 2).then_some(())
    });
    let detail =
        net.sql("SELECT detail FROM security_events WHERE kind = 'enroll_refused' LIMIT 1");
    assert!(detail.contains("does not hold"), "{detail}");
    // The genuine till is untouched: still the one accepted, one certificate.
    assert_eq!(admission(&net, &till), "accepted");
    assert_eq!(certificates_of(&net, &till), 1);
}

#[test]
fn a_used_up_revoked_or_expired_token_admits_no_one() {
    let net = Net::start(&[]);
    net.generate_and_send();
    // A token for one device: the attacker's proof (its own code, from the
    // written description) is accepted once — the proof is right — then no more.
    let once = token(&net, &["--uses", "1"]);
    let first = Fake::new(&net, "first");
    first.hello(&net, "dev-1", "child", first.proof(&once, "child", "dev-1"));
    wait_for("dev-1 accepted", WAIT, || {
        (admission(&net, &first.id) == "accepted").then_some(())
    });
    let second = Fake::new(&net, "second");
    second.hello(
        &net,
        "dev-2",
        "child",
        second.proof(&once, "child", "dev-2"),
    );
    // Revoked by the operator.
    let revoked = token(&net, &["--uses", "10"]);
    let id = revoked.split('.').nth(1).unwrap().to_owned();
    let out = net.parent.cli_ok(&["enroll", "revoke", &id]);
    assert!(out.contains("revoked"), "{out}");
    let third = Fake::new(&net, "third");
    third.hello(
        &net,
        "dev-3",
        "child",
        third.proof(&revoked, "child", "dev-3"),
    );
    // Expired: its expiry moved into the past in the registry (a token
    // lives at least a minute).
    let expired = token(&net, &["--uses", "10"]);
    let expired_id = expired.split('.').nth(1).unwrap().to_owned();
    net.sql(&format!(
        "UPDATE enroll_tokens SET expires_at = 1 WHERE id = '{expired_id}'"
    ));
    let fourth = Fake::new(&net, "fourth");
    fourth.hello(
        &net,
        "dev-4",
        "child",
        fourth.proof(&expired, "child", "dev-4"),
    );
    // A token for children does not admit a local parent.
    let fifth = Fake::new(&net, "fifth");
    let many = token(&net, &["--uses", "10"]);
    fifth.hello(
        &net,
        "lp-5",
        "local-parent",
        fifth.proof(&many, "local-parent", "lp-5"),
    );
    for (fake, why) in [
        (&second, "used up"),
        (&third, "revoked"),
        (&fourth, "expired"),
        (&fifth, "admits child, not a local-parent"),
    ] {
        wait_for("the fake registered", WAIT, || {
            (!admission(&net, &fake.id).is_empty()).then_some(())
        });
        assert_eq!(admission(&net, &fake.id), "pending");
        let detail = net.sql(&format!(
            "SELECT detail FROM security_events WHERE kind = 'enroll_refused' AND agent = '{}'",
            fake.id
        ));
        assert!(detail.contains(why), "{why}: {detail}");
    }
    let listed = net.parent.cli_json(&["enroll", "list"]);
    let state = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["state"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(state(once.split('.').nth(1).unwrap()), "used up");
    assert_eq!(state(&id), "revoked");
    assert_eq!(state(&expired_id), "expired");
    // No token appears in any answer.
    assert!(!listed
        .to_string()
        .contains(once.rsplit('.').next().unwrap()));
}

#[test]
fn a_revoked_or_deleted_agents_key_is_never_certified_again_whoever_asks() {
    let net = Net::start(&[]);
    let (till, till_id) = net.child("till-1", &[]);
    let (other, other_id) = net.child("till-2", &[]);
    for id in [&till_id, &other_id] {
        wait_for("the tills accepted", WAIT, || {
            (admission(&net, id) == "accepted").then_some(())
        });
    }
    net.generate_and_send();
    for id in [&till_id, &other_id] {
        wait_for("the tills' certificates", WAIT, || {
            (certificates_of(&net, id) == 1).then_some(())
        });
    }
    // The attacker steals both tills' TLS keys; the operator revokes one
    // for key compromise and deletes the other.
    let stolen = child_layout(net.dir.path(), "till-1").key();
    let stolen2 = child_layout(net.dir.path(), "till-2").key();
    let copy = net.dir.path().join("stolen.key");
    let copy2 = net.dir.path().join("stolen2.key");
    std::fs::copy(&stolen, &copy).unwrap();
    std::fs::copy(&stolen2, &copy2).unwrap();
    till.signal("KILL");
    other.signal("KILL");
    net.parent
        .cli_ok(&["revoke", "till-1", "--reason", "key-compromise"]);
    net.parent.cli_ok(&["agents", "delete", "till-2"]);
    // It holds a valid token, registers under fresh ids, and asks for
    // certificates on the stolen keys.
    let shared = std::fs::read_to_string(fleetls_tests::enroll_token_path(net.dir.path())).unwrap();
    for (n, key) in [&copy, &copy2].iter().enumerate() {
        let fake = Fake::new(&net, &format!("thief-{n}"));
        let name = format!("new-till-{n}");
        fake.hello(
            &net,
            &name,
            "child",
            fake.proof(shared.trim(), "child", &name),
        );
        wait_for("the thief accepted (it holds a token)", WAIT, || {
            (admission(&net, &fake.id) == "accepted").then_some(())
        });
        fake.csr(&net, &openssl_csr(key, &fake.id));
        let why = refusal(&net, &fake.id);
        assert!(why.contains("was revoked"), "{why}");
        assert_eq!(certificates_of(&net, &fake.id), 0);
    }
    // Only the two certificates ever issued, both revoked.
    assert_eq!(net.sql("SELECT count(*) FROM certificates"), "2");
    assert_eq!(
        net.sql("SELECT count(*) FROM certificates WHERE revoked = 1"),
        "2"
    );
    assert!(events(&net, "revoked_key_csr") >= 2);
}

#[test]
fn squatters_look_alikes_and_hidden_characters_are_stopped_at_the_door() {
    let net = Net::start(&[]);
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
    let shared = std::fs::read_to_string(fleetls_tests::enroll_token_path(net.dir.path())).unwrap();
    let shared = shared.trim();
    // The same name, a valid token: pending, flagged with the holder.
    let squatter = Fake::new(&net, "squatter");
    squatter.hello(
        &net,
        "till-1",
        "child",
        squatter.proof(shared, "child", "till-1"),
    );
    // A Cyrillic і: looks like till-1.
    let cyrillic = "t\u{0456}ll-1";
    let lookalike = Fake::new(&net, "lookalike");
    lookalike.hello(
        &net,
        cyrillic,
        "child",
        lookalike.proof(shared, "child", cyrillic),
    );
    for fake in [&squatter, &lookalike] {
        wait_for("the fake registered", WAIT, || {
            (!admission(&net, &fake.id).is_empty()).then_some(())
        });
        assert_eq!(admission(&net, &fake.id), "pending");
    }
    let flag = |id: &str| net.sql(&format!("SELECT name_flag FROM agents WHERE id = '{id}'"));
    assert!(flag(&squatter.id).contains(&format!("name in use by {till}")));
    assert!(flag(&lookalike.id).contains("looks like"));
    // A zero-width space, a right-to-left override: never registered.
    for (n, name) in ["till\u{200B}-1", "till-\u{202E}1"].iter().enumerate() {
        let hidden = Fake::new(&net, &format!("hidden-{n}"));
        hidden.hello(&net, name, "child", hidden.proof(shared, "child", name));
    }
    net.wait_dead("the hidden names dead-lettered", "invalid_field", 2);
    assert_eq!(net.sql("SELECT count(*) FROM agents"), "3");
    // The operator sees it: flags, and what a name really holds.
    let (_, list, _) = net.parent.cli(&["agents", "list"]);
    assert!(list.contains("! name in use by"), "{list}");
    assert!(list.contains("t\\u{456}ll-1"), "{list}");
    // `accept --all` leaves flagged names to be accepted by name.
    let out = net.parent.cli_ok(&["agents", "accept", "--all"]);
    assert_eq!(out.trim(), "nothing to accept", "{out}");
    assert_eq!(net.network()["pending"], 2);
    // Neither took a use of the token.
    let listed = net.parent.cli_json(&["enroll", "list"]);
    assert_eq!(listed[0]["uses"], 1, "{listed}");
}

#[test]
fn pending_fakes_are_capped_and_accept_all_asks_first() {
    let net = Net::start(&["--max-pending", "15"]);
    let fakes: Vec<Fake> = (0..18).map(|i| Fake::new(&net, &format!("f{i}"))).collect();
    for (i, fake) in fakes.iter().enumerate() {
        fake.hello(&net, &format!("fake-{i}"), "local-parent", Value::Null);
    }
    wait_for("15 pending, 3 refused at the cap", WAIT, || {
        (net.network()["pending"] == 15 && events(&net, "pending_cap") == 3).then_some(())
    });
    net.wait_dead("the refused registrations dead-lettered", "pending_cap", 3);
    // A device with a token still gets in.
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted past the cap", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
    // More than a handful: accept --all lists them and asks for --yes.
    let (code, _, err) = net.parent.cli(&["agents", "accept", "--all"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("15 agents are pending") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(net.network()["pending"], 15);
    // The operator clears them by age.
    std::thread::sleep(Duration::from_millis(1100));
    let out = net
        .parent
        .cli_ok(&["agents", "reject", "--pending-older-than", "1s"]);
    assert!(out.contains("fake-"), "{out}");
    assert_eq!(net.network()["pending"], 0);
    assert_eq!(
        net.sql("SELECT count(*) FROM agents WHERE admission = 'rejected'"),
        "15"
    );
}

#[test]
fn an_mpos_device_never_gets_a_certificate_from_a_csr() {
    let net = Net::start(&[]);
    net.generate_and_send();
    let shared = std::fs::read_to_string(fleetls_tests::enroll_token_path(net.dir.path())).unwrap();
    let fake = Fake::new(&net, "mpos");
    fake.hello(
        &net,
        "mpos-9",
        "mpos",
        fake.proof(shared.trim(), "mpos", "mpos-9"),
    );
    wait_for("the mPOS accepted (its token admits mPOS)", WAIT, || {
        (admission(&net, &fake.id) == "accepted").then_some(())
    });
    let key = net.dir.path().join("mpos.tls.key");
    fake.csr(&net, &openssl_csr(&key, &fake.id));
    let why = refusal(&net, &fake.id);
    assert!(why.contains("by export"), "{why}");
    assert_eq!(certificates_of(&net, &fake.id), 0);
}

#[test]
fn the_wire_heals_when_a_broker_user_deletes_the_exchanges() {
    let net = Net::start(&[]);
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
    let url = net.url();
    for exchange in ["fleetls.agents", "fleetls.parent"] {
        let deleted = attack(&[
            "exchange",
            "--broker",
            &url,
            "--exchange",
            exchange,
            "--delete",
        ]);
        assert_eq!(deleted["deleted"], true, "{deleted}");
    }
    let purged = attack(&[
        "declare",
        "--broker",
        &url,
        "--queue",
        "fleetls.dead",
        "--delete",
    ]);
    assert_eq!(purged["deleted"], true, "{purged}");
    // Nobody is restarted: the parent rebuilds, and the till hears it again
    // (it is sent its certificate information and gets a certificate).
    wait_for("the topology rebuilt", WAIT, || {
        (events(&net, "topology") >= 1).then_some(())
    });
    let detail = net.sql("SELECT detail FROM security_events WHERE kind = 'topology'");
    assert!(detail.contains("fleetls.agents"), "{detail}");
    net.generate_and_send();
    wait_for("till-1's certificate after the repair", WAIT, || {
        (certificates_of(&net, &till) == 1).then_some(())
    });
    let bindings = net
        .vhost
        .management_get("/api/exchanges/{vhost}/fleetls.agents/bindings/source");
    assert!(
        bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["routing_key"] == till.as_str()),
        "{bindings}"
    );
    wait_for("fleetls.dead declared again", WAIT, || {
        net.vhost
            .management_try_get("/api/queues/{vhost}/fleetls.dead")
            .ok()
    });
}

#[test]
fn the_permission_script_leaves_the_agents_user_no_way_back_to_admin() {
    let net = Net::start(&[]);
    net.generate_and_send();
    let out = net.dir.path().join("broker-files");
    net.parent
        .cli_ok(&["broker-tls", "--out", out.to_str().unwrap()]);
    let script = out.join("rabbitmq-permissions.sh");
    // `rabbitmqctl` on the script's PATH is the test node's own.
    let bin = net.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ctl = bin.join("rabbitmqctl");
    std::fs::write(
        &ctl,
        format!(
            "#!/bin/sh\nexec {} ctl \"$@\"\n",
            fleetls_tests::repo().join("scripts/broker").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = |user: &str| {
        Command::new("sh")
            .arg(&script)
            .arg(&net.vhost.name)
            .arg(user)
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    // guest, RabbitMQ's own administrator, is refused with the reason.
    let refused = run("guest");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("guest"));
    // A tills user a careless install made an administrator with every right.
    let broker = fleetls_tests::broker();
    let user = format!("tills-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let password = "tills-password-1";
    let admin = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = fleetls_tests::http()
            .request(method, format!("{}{path}", broker.management))
            .basic_auth(&broker.user, Some(&broker.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().unwrap()
    };
    let vhost = net.vhost.name.replace('/', "%2F");
    admin(
        reqwest::Method::PUT,
        &format!("/api/users/{user}"),
        Some(json!({"password": password, "tags": "administrator"})),
    );
    admin(
        reqwest::Method::PUT,
        &format!("/api/permissions/{vhost}/{user}"),
        Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    let applied = run(&user);
    assert!(applied.status.success(), "{applied:?}");
    // No tag left, the design's permissions set.
    let shown: Value = admin(reqwest::Method::GET, &format!("/api/users/{user}"), None)
        .json()
        .unwrap();
    let tags = &shown["tags"];
    assert!(
        tags.as_str().is_some_and(str::is_empty) || tags.as_array().is_some_and(Vec::is_empty),
        "{shown}"
    );
    let perms: Value = admin(
        reqwest::Method::GET,
        &format!("/api/permissions/{vhost}/{user}"),
        None,
    )
    .json()
    .unwrap();
    assert_ne!(perms["configure"], ".*", "{perms}");
    assert_ne!(perms["write"], ".*", "{perms}");
    // The user tries its way back: management answers it nothing, and its
    // attempt to give itself every right changes nothing.
    let as_user = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = fleetls_tests::http()
            .request(method, format!("{}{path}", broker.management))
            .basic_auth(&user, Some(password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().unwrap().status().as_u16()
    };
    assert_eq!(as_user(reqwest::Method::GET, "/api/whoami", None), 401);
    let back = as_user(
        reqwest::Method::PUT,
        &format!("/api/permissions/{vhost}/{user}"),
        Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    assert_eq!(back, 401);
    let after: Value = admin(
        reqwest::Method::GET,
        &format!("/api/permissions/{vhost}/{user}"),
        None,
    )
    .json()
    .unwrap();
    assert_eq!(after, perms);
    // And over AMQP it cannot publish a command to an agent.
    let host = broker.amqp.rsplit('@').next().unwrap();
    let url = format!("amqp://{user}:{password}@{host}/{vhost}");
    let agent = uuid::Uuid::new_v4().to_string();
    let sent = attack(&[
        "send",
        "--broker",
        &url,
        "--exchange",
        "fleetls.agents",
        "--routing-key",
        &agent,
        "--to",
        &agent,
        "--kind",
        "UseSsl",
        "--fields",
        &json!({"campaign": uuid::Uuid::new_v4().to_string()}).to_string(),
        "--from",
        "nil",
        "--refusal-ok",
    ]);
    assert_eq!(sent["refused"], true, "{sent}");
    assert_eq!(sent["code"], 403, "{sent}");
    // Its dead letters go through fleetls.parent, which the parent routes
    // on to the bounded fleetls.dead.
    let raw = |exchange: &str, key: &str| {
        attack(&[
            "raw",
            "--broker",
            &url,
            "--exchange",
            exchange,
            "--routing-key",
            key,
            "--payload-hex",
            "00",
            "--headers",
            r#"{"x-fleetls-reason": "invented"}"#,
            "--refusal-ok",
        ])
    };
    let routed = raw("fleetls.parent", "fleetls.dead");
    assert_ne!(routed["refused"], true, "{routed}");
    net.wait_dead("the dead letter routed to fleetls.dead", "invented", 1);
    admin(reqwest::Method::DELETE, &format!("/api/users/{user}"), None);
}

#[test]
fn pending_fakes_hold_up_neither_a_ca_rotation_nor_the_final_broker_step() {
    let net = Net::start(&[]);
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        (certificates_of(&net, &till) == 1).then_some(())
    });
    // 500 fakes without a token: a swarm whose data dir has none beside it.
    let fakes = net.dir.path().join("untokened");
    std::fs::create_dir_all(&fakes).unwrap();
    let args: Vec<String> = [
        "swarm",
        "--broker",
        &net.url(),
        "--data-dir",
        fakes.join("swarm").to_str().unwrap(),
        "--count",
        "500",
        "--prefix",
        "fake",
        "--heartbeat",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _swarm = fleetls_tests::Proc::spawn(
        &fleetls_tests::program("fleetls-child"),
        &args,
        net.dir.path().join("swarm.log"),
    );
    wait_for("500 fakes pending", Duration::from_secs(240), || {
        (net.network()["pending"] == 500).then_some(())
    });
    // The rotation goes through every phase: only till-1 is waited for.
    net.parent.cli_ok(&["ca", "rotate"]);
    let rotation = wait_for("the rotation finished", Duration::from_secs(240), || {
        let rotation = net.network()["ca_rotation"].clone();
        (rotation["phase"] == "finished").then_some(rotation)
    });
    assert_eq!(rotation["agents"], 1, "{rotation}");
    // The final broker step: till-1 kept on plain by decision, the fakes
    // count for nothing — the fragment that closes plain AMQP is written.
    net.parent.cli_ok(&[
        "agents",
        "exclude",
        "till-1",
        "--reason",
        "the test keeps it",
    ]);
    let out = net.dir.path().join("broker-files");
    let said = net
        .parent
        .cli_ok(&["broker-tls", "--out", out.to_str().unwrap()]);
    assert!(out.join("rabbitmq-final.conf").is_file(), "{said}");
    assert_eq!(net.network()["pending"], 500);
}

#[test]
fn a_flood_of_one_kind_never_pushes_another_out_of_the_record() {
    let net = Net::start(&[]);
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
    // A forged command, refused by the till and reported.
    net.command(
        &till,
        "UseSsl",
        json!({"campaign": uuid::Uuid::new_v4().to_string()}),
        &["--to", &till],
    );
    wait_for("the forged command recorded", WAIT, || {
        (events(&net, "forged_command") == 1).then_some(())
    });
    // 2,500 badly signed messages, each from a new claimed sender.
    let url = net.url();
    let flood = attack(&["flood", "--broker", &url, "--count", "2500"]);
    assert_eq!(flood["sent"], 2500);
    let counted = |kind: &str| -> u64 {
        net.sql(&format!(
            "SELECT coalesce(max(count), 0) FROM security_counts WHERE kind = '{kind}'"
        ))
        .parse()
        .unwrap()
    };
    wait_for("the flood counted", Duration::from_secs(120), || {
        (counted("bad_signature") == 2500).then_some(())
    });
    // Its own kind keeps 1,000 sources; the forged command is still there,
    // in the registry and in what `security` shows.
    let kept: u64 = net
        .sql("SELECT count(*) FROM security_events WHERE kind = 'bad_signature'")
        .parse()
        .unwrap();
    assert_eq!(kept, 1000);
    assert_eq!(events(&net, "forged_command"), 1);
    let view = net.parent.cli_json(&["security"]);
    let recent = view["recent"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|e| e["kind"] == "forged_command" && e["agent"] == till.as_str()),
        "{view}"
    );
    assert_eq!(view["counts"]["bad_signature"], 2500);
}

#[test]
fn what_an_agent_says_about_itself_counts_for_nothing() {
    let net = Net::start(&[]);
    net.generate_and_send();
    let shared = std::fs::read_to_string(fleetls_tests::enroll_token_path(net.dir.path())).unwrap();
    // An accepted fake (it holds a token) claims to be on SSL and AMQPS.
    let boaster = Fake::new(&net, "boaster");
    let mut fields = hello("boaster", "child", "shop-x", &[]);
    fields["state"] = json!({"has_certificate": true, "ssl": true, "broker_tls": true});
    fields["enroll"] = boaster.proof(shared.trim(), "child", "boaster");
    net.to_parent(
        &boaster.id,
        "Hello",
        fields,
        &["--sign-key", boaster.key.to_str().unwrap()],
    );
    wait_for("the boaster accepted", WAIT, || {
        (admission(&net, &boaster.id) == "accepted").then_some(())
    });
    let agent = net.parent.agent("boaster").unwrap();
    assert_eq!(agent["has_certificate"], false, "{agent}");
    assert_eq!(agent["ssl"], false, "{agent}");
    assert_eq!(agent["broker_tls"], false, "{agent}");
    let network = net.network();
    assert_eq!(network["switched_to_ssl"], 0, "{network}");
    assert_eq!(network["broker_tls"], 0, "{network}");
    // An accepted fake that obeys another parent key is COMPROMISED, and
    // nothing is issued to it.
    let turncoat = Fake::new(&net, "turncoat");
    let mut fields = hello("turncoat", "child", "shop-x", &[]);
    fields["state"] = json!({
        "has_certificate": false, "ssl": false, "broker_tls": false,
        "parent_key": format!("sha256:{}", "ab".repeat(32))
    });
    fields["enroll"] = turncoat.proof(shared.trim(), "child", "turncoat");
    net.to_parent(
        &turncoat.id,
        "Hello",
        fields,
        &["--sign-key", turncoat.key.to_str().unwrap()],
    );
    wait_for("the turncoat shown compromised", WAIT, || {
        (net.parent.agent("turncoat")?["compromised"] == true).then_some(())
    });
    let key = net.dir.path().join("turncoat.tls.key");
    turncoat.csr(&net, &openssl_csr(&key, &turncoat.id));
    let why = refusal(&net, &turncoat.id);
    assert!(why.contains("COMPROMISED"), "{why}");
    assert_eq!(certificates_of(&net, &turncoat.id), 0);
}

#[test]
fn open_enrollment_is_loud_and_fleetls_dead_is_bounded() {
    let net = Net::start(&["--auto-accept", "child:*"]);
    let (_, table, _) = net.parent.cli(&["status"]);
    assert!(table.contains("OPEN ENROLLMENT (child:*)"), "{table}");
    assert_eq!(net.network()["open_enrollment"], "child:*");
    let metrics = net.metrics();
    assert!(
        metrics.lines().any(|l| l == "fleetls_open_enrollment 1"),
        "{metrics}"
    );
    assert!(net.parent.proc.output().contains("open enrollment"));
    // The parent bounded fleetls.dead through management.
    let policy = wait_for("the fleetls-dead policy", WAIT, || {
        net.vhost
            .management_try_get("/api/policies/{vhost}/fleetls-dead")
            .ok()
    });
    assert_eq!(policy["definition"]["max-length"], 100_000, "{policy}");
    assert_eq!(
        policy["definition"]["overflow"], "reject-publish",
        "{policy}"
    );
    // Without the flag: tokens only, and said so.
    let closed = Net::start(&[]);
    assert!(closed.network()["open_enrollment"].is_null());
    assert!(closed
        .metrics()
        .lines()
        .any(|l| l == "fleetls_open_enrollment 0"));
}

/// An admission is for the identity it was given to. An agent admitted by
/// an mPOS token that then says it is a child, or one admitted as a kiosk
/// that renames itself after an accepted till, is decided again — pending,
/// recorded, and certified nothing. And a name is judged against accepted
/// agents only, again when `accept --all` runs: a look-alike an attacker
/// registered first does not push the genuine till into the queue, and a
/// squatter that took a name before its owner was accepted is not accepted
/// with the rest.
#[test]
fn an_admission_holds_only_for_the_identity_it_was_given_to() {
    let net = Net::start(&[]);
    net.generate_and_send();
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });

    // A: kind laundering. Admitted as an mPOS device by an mPOS token …
    let mpos_token = token(&net, &["--kinds", "mpos", "--name-pattern", "mpos-*"]);
    let launder = Fake::new(&net, "launder");
    launder.hello(
        &net,
        "mpos-9",
        "mpos",
        launder.proof(&mpos_token, "mpos", "mpos-9"),
    );
    wait_for("the mPOS fake accepted by its token", WAIT, || {
        (admission(&net, &launder.id) == "accepted").then_some(())
    });
    // … then a child, proving the same token for the new kind.
    launder.hello(
        &net,
        "mpos-9",
        "child",
        launder.proof(&mpos_token, "child", "mpos-9"),
    );
    wait_for("the changed identity decided again", WAIT, || {
        (admission(&net, &launder.id) == "pending").then_some(())
    });
    assert_eq!(events(&net, "identity_changed"), 1);
    assert!(
        events(&net, "enroll_refused") >= 1,
        "the mPOS token admits no child"
    );
    launder.csr(
        &net,
        &openssl_csr(&net.dir.path().join("launder.key"), &launder.id),
    );
    let why = refusal(&net, &launder.id);
    assert!(why.contains("is pending"), "{why}");
    assert_eq!(certificates_of(&net, &launder.id), 0);

    // A: name laundering. Admitted as kiosk-1 by a kiosk token, it renames
    // itself after the accepted till-1.
    let kiosk_token = token(&net, &["--kinds", "child", "--name-pattern", "kiosk-*"]);
    let renamer = Fake::new(&net, "renamer");
    renamer.hello(
        &net,
        "kiosk-1",
        "child",
        renamer.proof(&kiosk_token, "child", "kiosk-1"),
    );
    wait_for("kiosk-1 accepted by its token", WAIT, || {
        (admission(&net, &renamer.id) == "accepted").then_some(())
    });
    renamer.hello(
        &net,
        "till-1",
        "child",
        renamer.proof(&kiosk_token, "child", "till-1"),
    );
    wait_for("the renamed agent decided again", WAIT, || {
        (admission(&net, &renamer.id) == "pending").then_some(())
    });
    let flag = net.sql(&format!(
        "SELECT name_flag FROM agents WHERE id = '{}'",
        renamer.id
    ));
    assert!(flag.contains(&format!("name in use by {till}")), "{flag}");
    assert_eq!(events(&net, "identity_changed"), 2);
    assert_eq!(
        admission(&net, &till),
        "accepted",
        "the real till-1 is untouched"
    );

    // B: a token-less look-alike of till-2 registers first; the genuine
    // till-2 (with a token) is still accepted.
    let early = Fake::new(&net, "early");
    early.hello(&net, "t\u{0456}ll-2", "child", Value::Null);
    wait_for("the look-alike pending", WAIT, || {
        (admission(&net, &early.id) == "pending").then_some(())
    });
    let (_till2, _) = net.child("till-2", &[]);
    let genuine = |name: &str, fake: &str| {
        wait_for("the genuine device registered", WAIT, || {
            let id = net.sql(&format!(
                "SELECT id FROM agents WHERE name = '{name}' AND id <> '{fake}'"
            ));
            (!id.is_empty()).then_some(id)
        })
    };
    let till2 = genuine("till-2", &early.id);
    wait_for("the genuine till-2 accepted", WAIT, || {
        (admission(&net, &till2) == "accepted").then_some(())
    });
    assert_eq!(admission(&net, &early.id), "pending");

    // C: a squatter takes till-3 before the genuine one; accept --all,
    // run after the genuine till-3 is accepted, leaves the squatter.
    let squatter = Fake::new(&net, "squatter3");
    squatter.hello(&net, "till-3", "child", Value::Null);
    wait_for("the squatter pending", WAIT, || {
        (admission(&net, &squatter.id) == "pending").then_some(())
    });
    let (_till3, _) = net.child("till-3", &[]);
    let till3 = genuine("till-3", &squatter.id);
    wait_for("the genuine till-3 accepted", WAIT, || {
        (admission(&net, &till3) == "accepted").then_some(())
    });
    let out = net.parent.cli_ok(&["agents", "accept", "--all"]);
    assert!(
        out.contains("left pending") && out.contains(&format!("name in use by {till3}")),
        "{out}"
    );
    assert!(!out.contains("accept: till-3"), "{out}");
    assert_eq!(admission(&net, &squatter.id), "pending");
    // The look-alike of till-2, accepted by the same --all, would print
    // like an accepted till: left too.
    assert!(out.contains("looks like"), "{out}");
    assert_eq!(admission(&net, &early.id), "pending");

    // A space at the end prints like the name without it.
    let shared = std::fs::read_to_string(fleetls_tests::enroll_token_path(net.dir.path())).unwrap();
    let spaced = Fake::new(&net, "spaced");
    spaced.hello(
        &net,
        "till-1 ",
        "child",
        spaced.proof(shared.trim(), "child", "till-1 "),
    );
    wait_for("the spaced name registered", WAIT, || {
        (!admission(&net, &spaced.id).is_empty()).then_some(())
    });
    assert_eq!(admission(&net, &spaced.id), "pending");
    let flag = net.sql(&format!(
        "SELECT name_flag FROM agents WHERE id = '{}'",
        spaced.id
    ));
    assert!(
        flag.contains("looks like") && flag.contains(&till),
        "{flag}"
    );
}

/// A broker user unbinds one till's queue from `fleetls.agents`: the till
/// still consumes it and looks connected, but hears nothing. The parent's
/// next message to it comes back unrouted; the parent binds the queue
/// again, records it, and sends what the till was owed again — nobody is
/// restarted.
#[test]
fn a_tills_queue_unbound_by_a_broker_user_is_bound_again() {
    let net = Net::start(&[]);
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
    let bound = || {
        net.vhost
            .management_get("/api/exchanges/{vhost}/fleetls.agents/bindings/source")
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["routing_key"] == till.as_str())
    };
    assert!(bound());
    let unbound = attack(&[
        "bind",
        "--broker",
        &net.url(),
        "--queue",
        &format!("fleetls.agent.{till}"),
        "--exchange",
        "fleetls.agents",
        "--routing-key",
        &till,
        "--unbind",
    ]);
    assert_eq!(
        (&unbound["refused"], &unbound["unbound"]),
        (&json!(false), &json!(true)),
        "{unbound}"
    );
    assert!(!bound(), "the attack removed the binding");
    let before = events(&net, "topology");
    net.generate_and_send();
    wait_for("the binding made again and recorded", WAIT, || {
        (bound() && events(&net, "topology") > before).then_some(())
    });
    let detail = net
        .sql("SELECT detail FROM security_events WHERE kind = 'topology' ORDER BY at DESC LIMIT 1");
    assert!(detail.contains("lost their binding"), "{detail}");
    // The operator sees the alarm: status (text and JSON).
    let alarm = &net.network()["topology"];
    assert!(
        alarm["repairs"].as_u64() >= Some(1)
            && alarm["last"]
                .as_str()
                .unwrap_or("")
                .contains("lost their binding"),
        "{alarm}"
    );
    let (_, text, _) = net.parent.cli(&["status"]);
    assert!(
        text.contains("TOPOLOGY: a broker user damaged the wire"),
        "{text}"
    );
    wait_for("till-1's certificate, sent again, installed", WAIT, || {
        (certificates_of(&net, &till) == 1 && net.files("till-1").chain().exists()).then_some(())
    });
}

/// `fleetls.dead` at its bound keeps what it holds and refuses the newest:
/// a broker user's flood cannot push the evidence already there out, and
/// the parent counts each dead letter the full queue refused and goes on
/// with its work. (The parent's own bound, 100,000 messages, is shown by
/// its policy; the test lays the same policy with a bound of 3 over it.)
#[test]
fn a_full_dead_letter_queue_keeps_its_evidence_and_the_parent_counts_what_it_refused() {
    let net = Net::start(&[]);
    let policy = wait_for("the fleetls-dead policy", WAIT, || {
        net.vhost
            .management_try_get("/api/policies/{vhost}/fleetls-dead")
            .ok()
    });
    assert_eq!(
        policy["definition"]["overflow"], "reject-publish",
        "{policy}"
    );
    net.vhost.management_put(
        "/api/policies/{vhost}/fleetls-dead-small",
        &json!({
            "pattern": "^fleetls\\.dead$",
            "apply-to": "queues",
            "priority": 20,
            "definition": {"max-length": 3, "overflow": "reject-publish"},
        }),
    );
    wait_for("the small bound in force", WAIT, || {
        let q = net.vhost.management_get("/api/queues/{vhost}/fleetls.dead");
        (q["policy"] == "fleetls-dead-small").then_some(())
    });
    // The evidence: an unsigned message in till-1's name, dead-lettered.
    let victim = uuid::Uuid::new_v4().to_string();
    net.to_parent(&victim, "Heartbeat", json!({"state": {}}), &[]);
    net.wait_dead("the unsigned message dead-lettered", "forged: unsigned", 1);
    // The flood, through the route children dead-letter by, up to the bound.
    for _ in 0..2 {
        let sent = attack(&[
            "raw",
            "--broker",
            &net.url(),
            "--exchange",
            "fleetls.parent",
            "--routing-key",
            "fleetls.dead",
            "--payload-hex",
            "00",
            "--headers",
            r#"{"x-fleetls-reason": "flood"}"#,
            "--refusal-ok",
        ]);
        assert_ne!(sent["refused"], true, "{sent}");
    }
    wait_for("fleetls.dead at its bound", WAIT, || {
        (net.vhost.queue_depth("fleetls.dead") == Some(3)).then_some(())
    });
    // Another refused message: the parent's dead letter is refused, counted,
    // and the parent goes on (the message is acked, not redelivered for ever).
    net.to_parent(&victim, "Heartbeat", json!({"state": {}}), &[]);
    wait_for("the refused dead letter counted", WAIT, || {
        (net.metric("fleetls_dead_letters_refused_total") >= Some(1)).then_some(())
    });
    let reasons = net.dead_reasons();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].starts_with("forged: unsigned"),
        "the evidence is kept: {reasons:?}"
    );
    wait_for("fleetls.parent drained", WAIT, || {
        (net.vhost.queue_depth("fleetls.parent") == Some(0)).then_some(())
    });
    let (_till, till) = net.child("till-1", &[]);
    wait_for("till-1 accepted", WAIT, || {
        (admission(&net, &till) == "accepted").then_some(())
    });
}
