//! The trust model against the attack surface of the newer features, attacked
//! from outside: the admin API without its token (raw HTTP), forged CRLs and
//! TLS-policy downgrades to a local parent (forged, replayed, or genuine ones
//! taken from its queue and delivered late), forged reports that would move
//! a CA rotation on, step and broker-switch commands replayed after a
//! restart (and a replay laundered into a redelivery), messages for an agent
//! whose key is not pinned yet, and an identity forged for an mPOS device
//! (`fleetls-child import`). The attacker is `tests/attacks/fleetls_attack.py`
//! (see `tests/security.rs`); every test checks from outside that nothing
//! changed (files on the agent's disk, the parent's registry read with
//! `sqlite3`, the TLS port as openssl sees it) and that the attempt shows
//! where the design says (`fleetls.dead` with its reason, security counts).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use fleetls_tests::attack::{attack, capture_setup, foreign_ca, hello, snapshot, Net, WAIT};
use fleetls_tests::{repo, start_child, wait_for, CertFile, ChildLayout};
use serde_json::{json, Value};

/// The routes the admin server answers without the token: the console's
/// page and assets (they hold no data), `/metrics`, and the revocation list
/// (`/crl.pem`, and `/crl.der`, the address certificates name as their CRL
/// distribution point: any TLS client must be able to fetch it). Any other
/// route found in the router's source must refuse a request without it.
const OPEN_ROUTES: [&str; 6] = [
    "/",
    "/console.js",
    "/console.css",
    "/metrics",
    "/crl.pem",
    "/crl.der",
];

/// Every `(METHOD, path)` the admin server routes, read from the source of
/// its routers (`parent/src/admin.rs`, `parent/src/console.rs`), so that a
/// route added later is attacked too. Panics on a routing call this reader
/// does not understand (`nest`, `fallback`, ...) rather than miss routes.
fn routes_in_source() -> BTreeSet<(String, String)> {
    // No other file of the parent routes anything.
    let mut stack = vec![repo().join("parent/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("admin.rs")
                && !path.ends_with("console.rs")
            {
                let source = std::fs::read_to_string(&path).unwrap();
                assert!(
                    !source.contains(".route(") && !source.contains("Router::new"),
                    "{} routes requests: add it to this test",
                    path.display()
                );
            }
        }
    }
    let mut routes = BTreeSet::new();
    for file in ["parent/src/admin.rs", "parent/src/console.rs"] {
        let source = std::fs::read_to_string(repo().join(file)).unwrap();
        for unknown in [
            ".nest(",
            ".nest_service(",
            ".route_service(",
            ".fallback(",
            ".fallback_service(",
        ] {
            assert!(
                !source.contains(unknown),
                "{file} uses {unknown}: teach this test to read it"
            );
        }
        for (at, _) in source.match_indices(".route(") {
            let rest = &source[at + ".route(".len()..];
            let path = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| {
                    panic!("{file}: a route whose path is not a literal: {rest:.80}")
                });
            // The call ends before the next `.route(`/`.route_layer(`/`;`.
            let end = [".route(", ".route_layer(", ";"]
                .iter()
                .filter_map(|m| rest.find(m))
                .min()
                .unwrap_or(rest.len());
            let call = &rest[..end];
            let mut methods = 0;
            for method in ["get", "post", "put", "delete", "patch"] {
                let found = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0
                        || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && call.as_bytes()[i - 1] != b'_'
                });
                if found {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                    methods += 1;
                }
            }
            assert!(methods > 0, "{file}: no method found for {path}: {call}");
        }
    }
    routes
}

/// What a request to `path` carries so that, if it were obeyed, it would
/// change something an operator cares about.
fn harmful_bodies(path: &str, dir: &Path, evil_cert: &Path, evil_key: &Path) -> Vec<Value> {
    let out = |name: &str| dir.join(name).display().to_string();
    match path {
        "/api/settings" => vec![
            json!({"min-tls": "1.2", "cipher-suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"}),
            json!({"parent-cert": evil_cert, "parent-key": evil_key}),
            json!({"names": "evil.example", "port": "1"}),
        ],
        "/api/certs/generate" => vec![json!({"ignore_old": true})],
        "/api/certs/send" => vec![json!({"all": true, "renew": true})],
        "/api/certs/reset" => vec![json!({"confirm": "reset"})],
        "/api/campaigns" => vec![json!({"kind": "switch"}), json!({"kind": "verify"})],
        "/api/export" => vec![
            json!({"out": out("evil-export"), "agents": ["till-1"], "mpos": true, "password": "evil-password"}),
        ],
        "/api/doctor" => vec![json!({"target": "127.0.0.1:1"})],
        "/api/broker-tls" => vec![json!({"out": out("evil-broker-tls")})],
        "/api/agents/accept" => vec![json!({"all": true})],
        "/api/agents/reject" | "/api/agents/delete" | "/api/agents/include" => {
            vec![json!({"agents": ["till-1", "till-2"]})]
        }
        "/api/agents/exclude" => vec![json!({"agents": ["till-1"], "reason": "evil"})],
        "/api/revoke" => vec![json!({"agent": "till-1", "reason": "key-compromise"})],
        "/api/ca/rotate" => vec![json!({}), json!({"advance": true})],
        _ => vec![json!({})],
    }
}

/// One request from outside, through the attacker's raw HTTP client.
fn probe(admin: &str, method: &str, path: &str, body: Option<&Value>, auth: Option<&str>) -> Value {
    let body = body.map(Value::to_string);
    let mut args = vec![
        "admin-probe",
        "--addr",
        admin,
        "--method",
        method,
        "--path",
        path,
    ];
    if let Some(body) = &body {
        args.extend(["--json", body.as_str()]);
    }
    if let Some(auth) = auth {
        args.extend(["--authorization", auth]);
    }
    attack(&args)
}

/// What an operator would notice changed: the registry's facts, the parent's
/// certificates and settings, and the files an export or broker-tls writes.
fn parent_state(net: &Net) -> Vec<String> {
    let mut state = vec![
        net.sql("SELECT id, name, kind, admission, coalesce(excluded, ''), signing_key FROM agents ORDER BY id"),
        net.sql("SELECT serial, agent_id, revoked, ca FROM certificates ORDER BY serial"),
        net.sql("SELECT count(*) FROM ca_rotations"),
        net.sql("SELECT count(*) FROM campaigns"),
        net.sql("SELECT count(*) FROM banned_keys"),
        net.parent.cli_json(&["settings", "show"]).to_string(),
    ];
    for (name, content) in snapshot(&net.parent.layout().certificates()) {
        state.push(format!("{name}: {}", String::from_utf8_lossy(&content)));
    }
    for made in ["evil-export", "evil-broker-tls"] {
        state.push(format!("{made}: {}", net.dir.path().join(made).exists()));
    }
    state
}

#[test]
fn every_admin_route_but_the_open_ones_refuses_a_request_without_the_token() {
    let net = Net::start(&[]);
    let (_one, _) = net.child("till-1", &[]);
    let (_two, _) = net.child("till-2", &[]);
    net.generate_and_send();
    wait_for("the certificates", WAIT, || {
        (net.network()["children_with_certificates"] == 2).then_some(())
    });
    let routes = routes_in_source();
    // The reader found the routes of the newer features (it reads the source).
    for (method, path) in [
        ("POST", "/api/agents/exclude"),
        ("POST", "/api/agents/include"),
        ("POST", "/api/ca/rotate"),
        ("GET", "/api/cluster"),
        ("POST", "/api/settings"),
        ("GET", "/api/settings"),
        ("POST", "/api/revoke"),
        ("POST", "/api/export"),
        ("GET", "/api/agents"),
        ("GET", "/api/security"),
        ("GET", "/metrics"),
        ("GET", "/"),
    ] {
        assert!(
            routes.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} not found in the router: {routes:?}"
        );
    }
    let token = std::fs::read_to_string(net.parent.layout().token())
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 16, "a short token: {}", token.len());
    let (evil_ca, evil_cert, evil_key) = foreign_ca(net.dir.path());
    assert!(evil_ca.contains("BEGIN CERTIFICATE"));
    let before = parent_state(&net);
    let admin = net.parent.admin.clone();
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Bearer {token}x")),
        Some(format!("Bearer {}", &token[..token.len() - 1])),
        Some(format!("Basic {token}")),
        Some(token.clone()),
    ];
    let mut attacked = 0;
    for (method, path) in &routes {
        if OPEN_ROUTES.contains(&path.as_str()) {
            continue;
        }
        let bodies = if method == "GET" {
            vec![None]
        } else {
            harmful_bodies(path, net.dir.path(), &evil_cert, &evil_key)
                .into_iter()
                .map(Some)
                .collect()
        };
        for (n, body) in bodies.iter().enumerate() {
            // Every wrong token with the first body; the others without one.
            let tries = if n == 0 { &wrong[..] } else { &wrong[..1] };
            for auth in tries {
                let got = probe(&admin, method, path, body.as_ref(), auth.as_deref());
                assert_eq!(
                    got["status"], 401,
                    "{method} {path} with Authorization {auth:?} was not refused: {got}"
                );
                assert!(
                    !got["body"].as_str().unwrap().contains(&token),
                    "{method} {path}: the answer holds the token"
                );
                attacked += 1;
            }
        }
    }
    assert!(attacked > 150, "only {attacked} requests made");
    // The same request with the token is let through (the probe is right).
    let with = format!("Bearer {token}");
    let status = probe(&admin, "GET", "/api/status", None, Some(&with));
    assert_eq!(status["status"], 200, "{status}");
    // The attempts changed nothing.
    assert_eq!(parent_state(&net), before);
    // The open routes answer without the token, and give away no secret: not
    // the token, no private key, no agent's id or name.
    let ids = net.sql("SELECT id FROM agents");
    let secrets: Vec<String> = [
        token.clone(),
        "PRIVATE KEY".to_owned(),
        "till-1".to_owned(),
        "till-2".to_owned(),
    ]
    .into_iter()
    .chain(ids.lines().map(str::to_owned))
    .collect();
    let open: BTreeSet<&str> = routes
        .iter()
        .map(|(_, p)| p.as_str())
        .filter(|p| OPEN_ROUTES.contains(p))
        .collect();
    assert_eq!(open.len(), OPEN_ROUTES.len(), "{open:?}");
    for path in OPEN_ROUTES {
        let got = probe(&admin, "GET", path, None, None);
        assert_eq!(got["status"], 200, "GET {path}: {got}");
        let text = format!("{}{}", got["headers"], got["body"]);
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "GET {path} leaks {secret:?}"
            );
        }
    }
    let crl = probe(&admin, "GET", "/crl.pem", None, None);
    assert!(
        crl["body"].as_str().unwrap().contains("BEGIN X509 CRL"),
        "{crl}"
    );
}

/// `openssl s_client` to `port` as `client` (a child's data dir, its
/// certificate and the CA it trusts): whether the handshake completed.
fn s_client(port: u16, client: &Path, extra: &[&str]) -> (bool, String) {
    let files = ChildLayout::new(client);
    let output = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error"])
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(files.ca())
        .arg("-cert")
        .arg(files.chain())
        .arg("-key")
        .arg(files.key())
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.success() && text.contains("Verification: OK"),
        text,
    )
}

/// A copy queue the attacker binds to an agent's commands (before they flow).
fn tap(net: &Net, agent: &str) -> String {
    let copy = format!("evil-copy-{}", uuid::Uuid::new_v4().simple());
    let setup = capture_setup(&net.url(), "fleetls.agents", agent, &copy);
    assert_eq!(setup["queue"], copy.as_str(), "{setup}");
    copy
}

/// Every command the copy queue `copy` holds now (waiting up to `secs`).
fn captured(net: &Net, copy: &str, secs: &str) -> Vec<Value> {
    let got = attack(&[
        "capture",
        "--broker",
        &net.url(),
        "--queue",
        copy,
        "--count",
        "0",
        "--timeout",
        secs,
    ]);
    got["messages"].as_array().unwrap().clone()
}

/// Republishes a captured command exactly, or with `set` changes, to `to`.
fn replay(net: &Net, to: &str, message: &Value, set: &[&str]) -> Value {
    let url = net.url();
    let headers = message["headers"].to_string();
    let mut args = vec![
        "replay",
        "--broker",
        &url,
        "--exchange",
        "fleetls.agents",
        "--routing-key",
        to,
        "--payload-hex",
        message["payload_hex"].as_str().unwrap(),
        "--headers",
        &headers,
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    attack(&args)
}

fn kind_of(message: &Value) -> Option<&str> {
    message["decoded"]["body"]
        .as_object()?
        .keys()
        .next()
        .map(String::as_str)
}

fn forged_commands(net: &Net, id: &str) -> u64 {
    net.sql(&format!(
        "SELECT coalesce(sum(count), 0) FROM security_events WHERE kind = 'forged_command' AND agent = '{id}'"
    ))
    .parse()
    .unwrap()
}

#[test]
fn a_local_parent_refuses_forged_crls_and_tls_downgrades_forged_or_replayed() {
    let net = Net::start(&[
        "--local-parent-names",
        "localhost",
        "--local-parent-ips",
        "127.0.0.1",
    ]);
    let password = net.dir.path().join("store.pw");
    std::fs::write(&password, "store-password-1\n").unwrap();
    let (lp_proc, lp) = net.child(
        "lp-1",
        &[
            "--kind",
            "local-parent",
            "--location",
            "shop",
            "--hostnames",
            "localhost",
            // Its trust stores are part of what must not change.
            "--trust-store-format",
            "pkcs12",
            "--trust-store-password-file",
            password.to_str().unwrap(),
        ],
    );
    let (_till, _) = net.child("till-1", &["--location", "shop"]);
    let (_victim, _) = net.child("till-9", &["--location", "shop"]);
    net.parent.cli_ok(&["agents", "accept", "lp-1"]);
    let copy = tap(&net, &lp);
    net.generate_and_send();
    wait_for("three certificates", WAIT, || {
        (net.network()["children_with_certificates"] == 3).then_some(())
    });
    let lp_port = local_parent_port(&net);
    let (till, lp_dir) = (net.data("till-1"), net.data("lp-1"));
    // The local parent's port serves TLS 1.2 (the default) …
    wait_for("the local parent's port", WAIT, || {
        s_client(lp_port, &till, &["-tls1_2"]).0.then_some(())
    });
    // … until the operator allows 1.3 only; and till-9 is revoked: a CRL.
    net.parent.cli_ok(&["settings", "set", "--min-tls", "1.3"]);
    wait_for("the local parent's port on TLS 1.3 only", WAIT, || {
        (!s_client(lp_port, &till, &["-tls1_2"]).0).then_some(())
    });
    net.parent
        .cli_ok(&["revoke", "till-9", "--reason", "key-compromise"]);
    let crl_path = ChildLayout::new(&lp_dir).crl();
    let genuine_crl = std::fs::read_to_string(net.parent.cert_file(CertFile::Crl)).unwrap();
    wait_for("the local parent's CRL", WAIT, || {
        (std::fs::read_to_string(&crl_path).ok()? == genuine_crl).then_some(())
    });
    let commands = captured(&net, &copy, "5");
    let old_policy = commands
        .iter()
        .find(|m| {
            kind_of(m) == Some("CertificatesReady")
                && m["decoded"]["body"]["CertificatesReady"]["tls"]["min_version"] == "1.2"
        })
        .unwrap_or_else(|| {
            panic!("no CertificatesReady with the 1.2 policy captured: {commands:?}")
        })
        .clone();
    let crl_update = commands
        .iter()
        .find(|m| kind_of(m) == Some("CrlUpdated"))
        .unwrap_or_else(|| panic!("no CrlUpdated captured: {commands:?}"))
        .clone();
    let before = snapshot(&lp_dir);
    let forged_before = forged_commands(&net, &lp);
    let dead_before = net.dead_reasons().len();

    // 1. A CRL of the attacker's own CA revoking nothing (un-revokes till-9),
    //    unsigned, signed by the attacker, and under the parent's key with
    //    the attacker's signature.
    let (_, evil_cert, evil_key_pem) = foreign_ca(net.dir.path());
    let evil_crl = attack(&[
        "forge-crl",
        "--ca-cert",
        evil_cert.to_str().unwrap(),
        "--ca-key",
        evil_key_pem.to_str().unwrap(),
    ])["crl_pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key, _) = net.attacker_key("evil");
    let key = key.to_str().unwrap();
    let parent_key = pinned_hex(&lp_dir);
    let crl = json!({ "crl_pem": evil_crl });
    net.command(&lp, "CrlUpdated", crl.clone(), &["--to", &lp]);
    net.command(
        &lp,
        "CrlUpdated",
        crl.clone(),
        &["--to", &lp, "--sign-key", key],
    );
    net.command(
        &lp,
        "CrlUpdated",
        crl,
        &["--to", &lp, "--sign-key", key, "--present-key", &parent_key],
    );
    // 2. The genuine CRL update with the attacker's CRL in it; the genuine
    //    one again (a replay).
    let body_crl = format!("body.crl_pem={}", Value::String(evil_crl.clone()));
    replay(&net, &lp, &crl_update, &[&body_crl]);
    replay(&net, &lp, &crl_update, &[]);
    // 3. The TLS policy back to 1.2 with a weak suite, and a foreign CA to
    //    trust: forged by the attacker, the genuine 1.2 bundle replayed, and
    //    that bundle altered to carry the attacker's CA.
    let real_ca = std::fs::read_to_string(net.parent.cert_file(CertFile::CaPem)).unwrap();
    let evil_ca = std::fs::read_to_string(&evil_cert).unwrap();
    let downgrade = json!({
        "ca_chain_pem": real_ca, "ca_fingerprint": net.network()["ca_fingerprint"],
        "ssl_host": "localhost", "ssl_port": net.network()["ssl_port"], "serve_port": lp_port,
        "tls": {"min_version": "1.2", "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"]},
        "trust_pem": format!("{real_ca}{evil_ca}")
    });
    net.command(
        &lp,
        "CertificatesReady",
        downgrade.clone(),
        &["--to", &lp, "--sign-key", key],
    );
    net.command(&lp, "CertificatesReady", downgrade, &["--to", &lp]);
    replay(&net, &lp, &old_policy, &[]);
    let trust = format!(
        "body.trust_pem={}",
        Value::String(format!("{real_ca}{evil_ca}"))
    );
    replay(&net, &lp, &old_policy, &[&trust]);
    let deadline = std::time::Instant::now() + WAIT;
    while net.dead_reasons().len() < dead_before + 9 {
        assert!(
            std::time::Instant::now() < deadline,
            "nine forgeries not all dead-lettered: {:?}\nlocal parent log:\n{}",
            net.dead_reasons(),
            fleetls_tests::tail(&lp_proc.output(), 60)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let reasons = net.dead_reasons();
    for needle in [
        "unsigned",
        "not by the parent key this agent pinned",
        "bad signature",
        "replayed",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle}: {reasons:?}"
        );
    }
    wait_for("the parent to count nine forged commands", WAIT, || {
        (forged_commands(&net, &lp) >= forged_before + 9).then_some(())
    });
    // Nothing changed on the local parent: its CRL, trusted CAs, policy,
    // keys, trust stores.
    assert!(ChildLayout::new(&lp_dir).truststore_p12().exists());
    assert_eq!(snapshot(&lp_dir), before);
    assert_eq!(std::fs::read_to_string(&crl_path).unwrap(), genuine_crl);
    assert!(!std::fs::read_to_string(ChildLayout::new(&lp_dir).ca())
        .unwrap()
        .contains(evil_ca.trim()));
    // Its port still refuses TLS 1.2 and still serves TLS 1.3.
    let (ok, text) = s_client(lp_port, &till, &["-tls1_2"]);
    assert!(
        !ok,
        "the local parent's port took TLS 1.2 after the attack: {text}"
    );
    let (ok, text) = s_client(lp_port, &till, &["-tls1_3"]);
    assert!(ok, "{text}");
    assert_eq!(net.parent.agent("lp-1").unwrap()["compromised"], false);
}

/// The parent key an agent pinned, as the hex a command's `x-fleetls-key`
/// carries (from its `trust.toml`).
fn pinned_hex(agent_dir: &Path) -> String {
    let trust = std::fs::read_to_string(ChildLayout::new(agent_dir).trust()).unwrap();
    trust
        .lines()
        .find_map(|l| l.strip_prefix("parent_key = "))
        .expect("a pinned key")
        .trim_matches('"')
        .to_owned()
}

/// Changes the registry behind the serving parent's back (as an older
/// release left it), waiting for its lock.
fn sql_write(net: &Net, statement: &str) {
    let output = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(net.parent.layout().registry())
        .arg(statement)
        .output()
        .expect("sqlite3 runs");
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn forged_reports_that_an_agent_trusts_the_new_ca_do_not_move_a_rotation_on() {
    let net = Net::start(&[]);
    let (_one, _) = net.child("till-1", &[]);
    let (mut two, id) = net.child("till-2", &[]);
    net.generate_and_send();
    wait_for("two certificates", WAIT, || {
        (net.network()["children_with_certificates"] == 2).then_some(())
    });
    // till-2 is away when the rotation begins: its first phase waits for it.
    two.signal("TERM");
    two.wait_exit(WAIT);
    net.parent.cli_ok(&["ca", "rotate"]);
    let (old, new) = wait_for("the rotation", WAIT, || {
        let row = net.sql("SELECT old_ca || ' ' || new_ca FROM ca_rotations");
        let (old, new) = row.split_once(' ')?;
        Some((old.to_owned(), new.to_owned()))
    });
    wait_for("till-1 trusting the new CA", WAIT, || {
        let trusted = net.sql("SELECT trusted_cas FROM agents WHERE name = 'till-1'");
        trusted.contains(&new).then_some(())
    });
    let trusted = |net: &Net| net.sql(&format!("SELECT trusted_cas FROM agents WHERE id = '{id}'"));
    let before = trusted(&net);
    assert!(!before.contains(&new), "{before}");
    let events_before = net.security_events();
    // The attacker says, for till-2, that it trusts both CAs.
    let (key, _) = net.attacker_key("evil");
    let key = key.to_str().unwrap();
    let state = json!({"has_certificate": true, "ssl": false, "broker_tls": false,
                       "parent_key": net.network()["signing_key"], "trusted_cas": [old, new]});
    net.to_parent(&id, "Heartbeat", json!({ "state": state }), &[]);
    net.to_parent(
        &id,
        "Heartbeat",
        json!({ "state": state }),
        &["--sign-key", key],
    );
    let mut greeting = hello("till-2", "child", "hq", &[]);
    greeting["state"] = state.clone();
    net.to_parent(&id, "Hello", greeting, &["--sign-key", key]);
    wait_for("the three attempts counted", WAIT, || {
        (net.security_events() >= events_before + 3).then_some(())
    });
    let reasons = net.dead_reasons();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("impersonation"))
            .count(),
        2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("forged: unsigned")),
        "{reasons:?}"
    );
    // The registry did not take the attacker's word; the rotation waits.
    assert_eq!(trusted(&net), before);
    assert_eq!(net.sql("SELECT phase FROM ca_rotations"), "trust");
    assert_eq!(
        net.sql(&format!(
            "SELECT count(*) FROM certificates WHERE ca = '{new}'"
        )),
        "0"
    );
    // The real till-2, back, moves it on (the rotation could move).
    let _two = start_child(&net.vhost, net.dir.path(), "till-2", &[]);
    wait_for("the re-issue phase", WAIT, || {
        (net.sql("SELECT phase FROM ca_rotations") != "trust").then_some(())
    });
}

#[test]
fn a_captured_command_replayed_after_the_child_restarts_is_refused() {
    let net = Net::start(&[]);
    let (mut child, id) = net.child("till-1", &[]);
    let copy = tap(&net, &id);
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        (net.parent.agent("till-1")?["has_certificate"] == true).then_some(())
    });
    let (code, out, err) = net.parent.cli(&["verify", "--step-timeout", "30s"]);
    assert_eq!(code, 0, "{out}{err}");
    let commands = captured(&net, &copy, "5");
    let pick = |kind: &str| {
        commands
            .iter()
            .find(|m| kind_of(m) == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} captured: {commands:?}"))
            .clone()
    };
    let (step, issued, ready) = (
        pick("RunStep"),
        pick("CertificateIssued"),
        pick("CertificatesReady"),
    );
    let results = |net: &Net| {
        net.sql(&format!(
            "SELECT campaign, step, ok, at FROM step_results WHERE agent = '{id}'"
        ))
    };
    let steps_before = results(&net);
    assert!(!steps_before.is_empty());
    // The child restarts: what it obeyed before is still known to it.
    child.signal("TERM");
    child.wait_exit(WAIT);
    let before = snapshot(&net.data("till-1"));
    let mut child = start_child(&net.vhost, net.dir.path(), "till-1", &[]);
    net.parent.wait_online(&["till-1"]);
    let (forged, dead) = (forged_commands(&net, &id), net.dead_reasons().len());
    replay(&net, &id, &step, &[]);
    replay(&net, &id, &issued, &[]);
    replay(&net, &id, &ready, &[]);
    // The step again with a later deadline: the signature no longer holds.
    let later = format!("body.deadline={}", fleetls_proto::now_ms() + 600_000);
    replay(&net, &id, &step, &[&later]);
    net.wait_dead("four refused replays", "forged:", dead + 4);
    let reasons = net.dead_reasons();
    assert_eq!(
        reasons.iter().filter(|r| r.contains("replayed")).count(),
        3,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("bad signature")),
        "{reasons:?}"
    );
    wait_for("the four attempts counted", WAIT, || {
        (forged_commands(&net, &id) >= forged + 4).then_some(())
    });
    assert_eq!(snapshot(&net.data("till-1")), before);
    assert_eq!(results(&net), steps_before);
    // Laundered: while the child is away the attacker republishes the step
    // into its queue and takes it without an ack, so the broker hands it
    // back marked `redelivered` (what a lost ack looks like). Acked, not
    // reported, and still not obeyed.
    child.signal("TERM");
    child.wait_exit(WAIT);
    replay(&net, &id, &step, &[]);
    let queue = format!("fleetls.agent.{id}");
    let taken = attack(&["consume", "--broker", &net.url(), "--queue", &queue]);
    assert_eq!(taken["taken"], 1, "{taken}");
    let again = start_child(&net.vhost, net.dir.path(), "till-1", &[]);
    wait_for("the child to ack the redelivered copy", WAIT, || {
        again
            .output()
            .contains("obeyed before came again")
            .then_some(())
    });
    net.parent.wait_online(&["till-1"]);
    // Management counts a queue every few seconds: read until it shows the ack.
    wait_for("the redelivered copy gone from the queue", WAIT, || {
        (net.vhost.queue_depth(&queue) == Some(0)).then_some(())
    });
    assert_eq!(snapshot(&net.data("till-1")), before);
    assert_eq!(results(&net), steps_before);
}

#[test]
fn an_agent_whose_key_is_not_pinned_yet_is_spoken_for_by_nobody_but_its_hello() {
    let net = Net::start(&[]);
    let (mut child, id) = net.child("till-1", &[]);
    child.signal("TERM");
    child.wait_exit(WAIT);
    // As a registry of a release before signatures left it: no key pinned.
    sql_write(
        &net,
        &format!("UPDATE agents SET signing_key = NULL WHERE id = '{id}'"),
    );
    net.parent.cli_ok(&["certs", "generate"]);
    let (key, _) = net.attacker_key("evil");
    let key = key.to_str().unwrap();
    let dead = net.dead_reasons().len();
    // A CSR for till-1 on a key of the attacker's, a forged pass, a heartbeat.
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
    net.to_parent(
        &id,
        "Heartbeat",
        json!({"state": {"has_certificate": true, "ssl": true, "broker_tls": true,
                         "parent_key": net.network()["signing_key"], "trusted_cas": []}}),
        &["--sign-key", key],
    );
    net.wait_dead("two messages refused", "", dead + 2);
    assert_eq!(
        net.sql(&format!(
            "SELECT count(*) FROM certificates WHERE agent_id = '{id}'"
        )),
        "0"
    );
    assert_eq!(
        net.sql(&format!(
            "SELECT ssl, broker_tls, has_certificate FROM agents WHERE id = '{id}'"
        )),
        "0|0|0"
    );
    assert_eq!(
        net.sql(&format!(
            "SELECT signing_key IS NULL FROM agents WHERE id = '{id}'"
        )),
        "1"
    );
    // The agent itself, back, pins its key with its Hello and is served.
    let _child = start_child(&net.vhost, net.dir.path(), "till-1", &[]);
    net.parent.cli_ok(&["certs", "send"]);
    wait_for("till-1's certificate", WAIT, || {
        (net.parent.agent("till-1")?["has_certificate"] == true).then_some(())
    });
    assert_eq!(
        net.sql(&format!(
            "SELECT signing_key IS NULL FROM agents WHERE id = '{id}'"
        )),
        "0"
    );

    // Another such agent, till-2: its id went over plain AMQP, and an
    // attacker's Hello in its name, with a key of its own and no token, is
    // the first signed one. It pins that key but is no longer accepted: it
    // waits for an operator, and is certified nothing.
    let (mut till2, id2) = net.child("till-2", &[]);
    till2.signal("TERM");
    till2.wait_exit(WAIT);
    sql_write(
        &net,
        &format!("UPDATE agents SET signing_key = NULL WHERE id = '{id2}'"),
    );
    assert_eq!(
        net.sql(&format!("SELECT admission FROM agents WHERE id = '{id2}'")),
        "accepted"
    );
    net.to_parent(
        &id2,
        "Hello",
        hello("till-2", "child", "shop-x", &[]),
        &["--sign-key", key],
    );
    wait_for("the first signed Hello decided again", WAIT, || {
        (net.sql(&format!("SELECT admission FROM agents WHERE id = '{id2}'")) == "pending")
            .then_some(())
    });
    net.to_parent(&id2, "Csr", json!({ "pem": csr }), &["--sign-key", key]);
    wait_for("the CSR refused", WAIT, || {
        let why = net.sql(&format!(
            "SELECT reason FROM refusals WHERE agent_id = '{id2}'"
        ));
        why.contains("is pending").then_some(())
    });
    assert_eq!(
        net.sql(&format!(
            "SELECT count(*) FROM certificates WHERE agent_id = '{id2}'"
        )),
        "0"
    );
}

/// The local parent port of the settings.
fn local_parent_port(net: &Net) -> u16 {
    let shown = net.parent.cli_json(&["settings", "show"]);
    let port = &shown["settings"]["local-parent-port"];
    port.as_u64()
        .map(|p| p as u16)
        .or_else(|| port.as_str().and_then(|p| p.parse().ok()))
        .unwrap_or_else(|| panic!("no local parent port: {shown}"))
}

#[test]
fn a_crl_or_tls_policy_taken_from_the_queue_and_delivered_late_is_refused() {
    let net = Net::start(&[
        "--local-parent-names",
        "localhost",
        "--local-parent-ips",
        "127.0.0.1",
    ]);
    let lp_flags = [
        "--kind",
        "local-parent",
        "--location",
        "shop",
        "--hostnames",
        "localhost",
    ];
    let (mut lp_proc, lp) = net.child("lp-1", &lp_flags);
    let (_one, _) = net.child("till-1", &["--location", "shop"]);
    let (_eight, _) = net.child("till-8", &["--location", "shop"]);
    let (_nine, _) = net.child("till-9", &["--location", "shop"]);
    net.parent.cli_ok(&["agents", "accept", "lp-1"]);
    net.generate_and_send();
    wait_for("four certificates", WAIT, || {
        (net.network()["children_with_certificates"] == 4).then_some(())
    });
    let lp_port = local_parent_port(&net);
    let till = net.data("till-1");
    wait_for("the local parent's port", WAIT, || {
        s_client(lp_port, &till, &["-tls1_2"]).0.then_some(())
    });
    // The local parent is away; till-9 is revoked and the certificate
    // information (TLS 1.2 allowed) sent again: both wait in its queue, and
    // the attacker (the agents' shared user reads agent queues) takes them.
    lp_proc.signal("TERM");
    lp_proc.wait_exit(WAIT);
    net.parent
        .cli_ok(&["revoke", "till-9", "--reason", "key-compromise"]);
    net.parent.cli_ok(&["certs", "send", "--all"]);
    let queue = format!("fleetls.agent.{lp}");
    let mut stolen: Vec<Value> = Vec::new();
    let [crl, policy] = wait_for("the attacker to take both", WAIT, || {
        let got = attack(&[
            "capture",
            "--broker",
            &net.url(),
            "--queue",
            &queue,
            "--count",
            "0",
            "--timeout",
            "2",
        ]);
        stolen.extend(got["messages"].as_array()?.iter().cloned());
        let crl = stolen.iter().find(|m| kind_of(m) == Some("CrlUpdated"))?;
        let policy = stolen
            .iter()
            .find(|m| m["decoded"]["body"]["CertificatesReady"]["tls"]["min_version"] == "1.2")?;
        Some([crl.clone(), policy.clone()])
    });
    // till-8 is revoked too and the port set to TLS 1.3 only; the local
    // parent comes back and gets both.
    net.parent
        .cli_ok(&["revoke", "till-8", "--reason", "key-compromise"]);
    net.parent.cli_ok(&["settings", "set", "--min-tls", "1.3"]);
    let newest = std::fs::read_to_string(net.parent.cert_file(CertFile::Crl)).unwrap();
    let _lp = start_child(&net.vhost, net.dir.path(), "lp-1", &lp_flags);
    let crl_path = net.files("lp-1").crl();
    wait_for("the local parent's newest CRL", WAIT, || {
        (std::fs::read_to_string(&crl_path).ok()? == newest).then_some(())
    });
    wait_for("the local parent's port on TLS 1.3 only", WAIT, || {
        (!s_client(lp_port, &till, &["-tls1_2"]).0).then_some(())
    });
    // The older list and policy, genuine and never delivered, come now.
    let forged = forged_commands(&net, &lp);
    replay(&net, &lp, &crl, &[]);
    replay(&net, &lp, &policy, &[]);
    net.wait_dead(
        "the late CRL refused",
        "forged: replayed: a revocation list numbered",
        1,
    );
    net.wait_dead(
        "the late TLS policy refused",
        "forged: replayed: a TLS policy weaker",
        1,
    );
    wait_for("the attempts counted", WAIT, || {
        (forged_commands(&net, &lp) >= forged + 2).then_some(())
    });
    assert_eq!(std::fs::read_to_string(&crl_path).unwrap(), newest);
    let (ok, text) = s_client(lp_port, &till, &["-tls1_2"]);
    assert!(!ok, "the local parent's port took TLS 1.2 again: {text}");
    let (ok, text) = s_client(lp_port, &till, &["-tls1_3"]);
    assert!(ok, "{text}");
}

#[test]
fn a_captured_broker_switch_replayed_after_the_child_restarts_is_refused() {
    // Declared first, dropped last: the node outlives every process using
    // it. Its ports are this file's range (5620-5639).
    let node = fleetls_tests::PrivateNode {
        name: "secmore",
        amqp: 5620,
        mgmt: 5622,
        amqps: 5621,
        prometheus: 5623,
    };
    node.run("stop", None, None);
    node.run("start", None, None);
    let net = Net::start_on(fleetls_tests::Vhost::new_on(&node.addr()), &[]);
    let (mut child, id) = net.child("till-1", &[]);
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        (net.parent.agent("till-1")?["has_certificate"] == true).then_some(())
    });
    net.parent.cli_ok(&["verify", "--step-timeout", "20s"]);
    net.parent.cli_ok(&["switch", "--step-timeout", "20s"]);
    let tls = net.dir.path().join("broker-tls");
    net.parent.cli_ok(&[
        "broker-tls",
        "--out",
        tls.to_str().unwrap(),
        "--amqps-port",
        "5621",
        "--amqps-bind",
        "127.0.0.1",
    ]);
    node.run(
        "restart",
        Some(&tls),
        Some(&tls.join("rabbitmq-migration.conf")),
    );
    net.parent.wait_online(&["till-1"]);
    // Set up after the restart: the node keeps no copy queue of the attacker's.
    let copy = tap(&net, &id);
    let amqps = format!("amqps://guest:guest@127.0.0.1:5621/{}", net.vhost.name);
    net.parent
        .cli_ok(&["switch-broker", "--amqps", &amqps, "--step-timeout", "30s"]);
    wait_for("till-1 on AMQPS", WAIT, || {
        (net.parent.agent("till-1")?["broker_tls"] == true).then_some(())
    });
    let commands = captured(&net, &copy, "5");
    let order = commands
        .iter()
        .find(|m| kind_of(m) == Some("UseBrokerTls"))
        .unwrap_or_else(|| panic!("no UseBrokerTls captured: {commands:?}"))
        .clone();
    // The child restarts (back on AMQPS); the attacker sends the order again,
    // as it was and pointing at a broker of its own.
    child.signal("TERM");
    child.wait_exit(WAIT);
    let before = snapshot(&net.data("till-1"));
    let _child = start_child(&net.vhost, net.dir.path(), "till-1", &[]);
    net.parent.wait_online(&["till-1"]);
    let (forged, dead) = (forged_commands(&net, &id), net.dead_reasons().len());
    replay(&net, &id, &order, &[]);
    replay(
        &net,
        &id,
        &order,
        &["body.uri=\"amqps://guest:guest@evil.example:5671/%2f\""],
    );
    net.wait_dead("two refused broker orders", "forged:", dead + 2);
    let reasons = net.dead_reasons();
    assert!(
        reasons.iter().any(|r| r.contains("replayed")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("bad signature")),
        "{reasons:?}"
    );
    wait_for("the two attempts counted", WAIT, || {
        (forged_commands(&net, &id) >= forged + 2).then_some(())
    });
    assert_eq!(snapshot(&net.data("till-1")), before);
    assert_eq!(net.parent.agent("till-1").unwrap()["broker_tls"], true);
}

/// `fleetls-child import` of `pfx` into `data_dir`: (exit code, stderr).
fn import(data_dir: &Path, pfx: &Path, password_file: &Path) -> (i32, String) {
    let output = Command::new(fleetls_tests::program("fleetls-child"))
        .arg("import")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--pfx")
        .arg(pfx)
        .arg("--password-file")
        .arg(password_file)
        .env_remove("FLEETLS_DATA_DIR")
        .output()
        .expect("fleetls-child runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs openssl with `args`, panicking with its output when it fails.
fn openssl(args: &[&str]) {
    let output = Command::new("openssl").args(args).output().unwrap();
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
}

#[test]
fn an_identity_forged_for_an_mpos_device_is_not_imported() {
    let net = Net::start(&[]);
    let (mut mpos, id) = net.child("mpos-1", &["--kind", "mpos"]);
    net.parent.cli_ok(&["certs", "generate"]);
    let dir = net.dir.path();
    let password = dir.join("password");
    std::fs::write(&password, "a long export password\n").unwrap();
    let out = dir.join("export");
    net.parent.cli_ok(&[
        "export",
        "--out",
        out.to_str().unwrap(),
        "--agent",
        "mpos-1",
        "--password-file",
        password.to_str().unwrap(),
    ]);
    let device = net.data("mpos-1");
    mpos.signal("TERM");
    mpos.wait_exit(WAIT);
    let (code, err) = import(&device, &out.join("mpos-1.pfx"), &password);
    assert_eq!(code, 0, "the genuine identity: {err}");
    let before = snapshot(&device);
    // The attacker's own identity for the device: its CA, the device's id as
    // CN; once alone, once with the network's real CA put in the file too.
    let (_, evil_ca, evil_key) = foreign_ca(dir);
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (leaf_key, leaf_csr, leaf) = (
        dir.join("leaf.key"),
        dir.join("leaf.csr"),
        dir.join("leaf.pem"),
    );
    let ext = dir.join("leaf.ext");
    std::fs::write(
        &ext,
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={id}"),
        "-keyout",
        &s(&leaf_key),
        "-out",
        &s(&leaf_csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&leaf_csr),
        "-CA",
        &s(&evil_ca),
        "-CAkey",
        &s(&evil_key),
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&leaf),
    ]);
    let real_ca = net.parent.cert_file(CertFile::CaPem);
    let both = dir.join("both-cas.pem");
    std::fs::write(
        &both,
        format!(
            "{}{}",
            std::fs::read_to_string(&real_ca).unwrap(),
            std::fs::read_to_string(&evil_ca).unwrap()
        ),
    )
    .unwrap();
    let pass = format!("file:{}", s(&password));
    for (name, chain) in [
        ("evil.pfx", &evil_ca),
        ("evil-both.pfx", &both),
        ("evil-real.pfx", &real_ca),
    ] {
        let pfx = dir.join(name);
        openssl(&[
            "pkcs12",
            "-export",
            "-inkey",
            &s(&leaf_key),
            "-in",
            &s(&leaf),
            "-certfile",
            &s(chain),
            "-passout",
            &pass,
            "-out",
            &s(&pfx),
        ]);
        let (code, err) = import(&device, &pfx, &password);
        assert_ne!(code, 0, "{name} was imported: {err}");
        if chain != &real_ca {
            assert!(
                err.contains("is not the one this agent trusts"),
                "{name}: {err}"
            );
        }
        assert_eq!(
            snapshot(&device),
            before,
            "{name} changed the device's files"
        );
    }
}
