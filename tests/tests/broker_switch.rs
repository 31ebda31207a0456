//! "Use SSL connection for RabbitMQ" end to end, on a RabbitMQ node of its own
//! (`bswitch`, restarted twice: other tests never see it), with the parent and
//! the children as processes. One scenario walks the acceptance in order:
//!
//! - `switch-broker` before `switch` is refused (exit 3, "not on SSL");
//!   `force-switch` without `--yes` and without a terminal exits 2, and
//!   `force-switch --yes` names the child that never passed as at risk;
//! - `broker-tls --out` writes the broker's files and both `rabbitmq.conf`
//!   fragments, the AMQPS listener on the port and address given
//!   (`--amqps-port`, `--amqps-bind`); the node is restarted with the
//!   migration fragment as written and everyone reconnects alone; a TLS client without a certificate is still accepted;
//! - an AMQPS address whose name the broker's certificate does not carry is
//!   refused before anything is sent (exit 3, the name in the message);
//! - `switch-broker` moves every child to AMQPS, with no ERROR in the logs of
//!   the parent and the children that moved — RabbitMQ management shows each
//!   `fleetls-child:<id> (<name>)` with `ssl: true` and `CN=<id>` as peer certificate,
//!   and the parent's own connection on TLS too — except one child whose key
//!   was spoilt beforehand: it stays connected on plain, is counted failed, is
//!   listed by `without-ssl`, and says why in its log;
//! - a switched child restarted comes back on AMQPS;
//! - once fixed, a second `switch-broker` takes only that child (total 1);
//!   `without-ssl` then lists nobody, and a third `switch-broker` is refused;
//! - with the post-migration fragment (client certificate required, plain
//!   listener off; `scripts/broker` then names no AMQP address) everyone
//!   comes back over TLS, a client without a
//!   certificate is refused, the parent restarted comes back over AMQPS, a new
//!   `verify` passes for all, and the plain AMQP port refuses connections;
//! - no log and no output carries the broker password.
//!
//! The node is stopped at the end, also on failure.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use fleetls_tests::{
    child_layout, free_port, start_child, tail, test_dir, wait_until, CertFile, Parent,
    PrivateNode, Proc, Vhost,
};

const NODE: &str = "bswitch";
const AMQP_PORT: u16 = 5792;
const MGMT_PORT: u16 = 15792;
const AMQPS_PORT: u16 = 5793;
const PROMETHEUS_PORT: u16 = 15794;

/// The agents of `status --json`, by name.
fn agents_by_name(status: &Value) -> HashMap<String, Value> {
    status["agents"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| (a["name"].as_str().unwrap_or_default().to_owned(), a.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `status --json` satisfies `check` (`Err` says what is missing).
fn wait_status(
    parent: &Parent,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> Result<(), String>,
) -> Value {
    wait_until(what, within, || {
        let status = parent.status_json()?;
        check(&status).map(|()| status)
    })
}

/// The connections of `vhost` as RabbitMQ management lists them.
fn connections(vhost: &Vhost) -> Result<Vec<Value>, String> {
    match vhost.management_get("/api/vhosts/{vhost}/connections") {
        Value::Array(list) => Ok(list),
        other => Err(format!("management did not answer with a list: {other}")),
    }
}

/// The connections named `name`, or (a child's) `name (<display name>)`.
fn named<'a>(all: &'a [Value], name: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|c| {
            c["client_properties"]["connection_name"]
                .as_str()
                .is_some_and(|n| n == name || n.starts_with(&format!("{name} (")))
        })
        .collect()
}

/// A short description of connections, for messages.
fn describe(list: &[&Value]) -> String {
    list.iter()
        .map(|c| {
            format!(
                "{{port {}, ssl {}, peer {}}}",
                c["port"], c["ssl"], c["peer_cert_subject"]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a named connection must look.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Want {
    /// Only TLS connections, on the AMQPS port, with this client certificate CN (if any).
    Tls,
    /// Only plain connections, on the AMQP port.
    Plain,
}

/// Checks that `name` has at least one connection and that every one is as `want`.
fn check_connection(all: &[Value], name: &str, want: Want, cn: Option<&str>) -> Result<(), String> {
    let list = named(all, name);
    if list.is_empty() {
        return Err(format!("no connection named {name}"));
    }
    for c in &list {
        let ok = match want {
            Want::Tls => {
                c["ssl"] == true
                    && c["port"] == AMQPS_PORT
                    && cn.is_none_or(|cn| {
                        c["peer_cert_subject"]
                            .as_str()
                            .is_some_and(|s| s.contains(&format!("CN={cn}")))
                    })
            }
            Want::Plain => c["ssl"] == false && c["port"] == AMQP_PORT,
        };
        if !ok {
            return Err(format!(
                "{name} should be {want:?} only, has: {}",
                describe(&list)
            ));
        }
    }
    Ok(())
}

/// Waits until every `(name, want, cn)` holds at once in management's view.
fn wait_connections(
    vhost: &Vhost,
    what: &str,
    within: Duration,
    wanted: &[(String, Want, Option<String>)],
) -> Vec<Value> {
    wait_until(what, within, || {
        let all = connections(vhost)?;
        for (name, want, cn) in wanted {
            check_connection(&all, name, *want, cn.as_deref())?;
        }
        Ok(all)
    })
}

/// The messages the parent dropped as not above their agent's replay
/// counter (`/metrics`).
fn replayed(parent: &fleetls_tests::Parent) -> u64 {
    let page = fleetls_tests::http()
        .get(format!("http://{}/metrics", parent.admin))
        .send()
        .and_then(|r| r.text())
        .expect("/metrics answers");
    page.lines()
        .find_map(|line| line.strip_prefix("fleetls_replayed_messages_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("/metrics has no fleetls_replayed_messages_total:\n{page}"))
}

fn child_conn(id: &str) -> String {
    format!("fleetls-child:{id}")
}

/// Whether something accepts a TCP connection on the port.
fn port_answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// The names listed under `list` of `without-ssl --json`.
fn listed(without: &Value, list: &str) -> Vec<String> {
    without[list]
        .as_array()
        .unwrap_or_else(|| panic!("without-ssl --json has no {list} list: {without}"))
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Whether a TLS 1.2 handshake with the AMQPS port completes (`openssl
/// s_client`, the broker checked against `ca`), presenting `client` (chain,
/// key) if given. TLS 1.2 so that a refused client certificate fails the
/// handshake itself (with 1.3 the refusal comes after it).
fn tls_handshake(ca: &Path, client: Option<(&Path, &Path)>) -> Result<(), String> {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-tls1_2", "-brief", "-verify_return_error"])
        .arg("-connect")
        .arg(format!("127.0.0.1:{AMQPS_PORT}"))
        .arg("-CAfile")
        .arg(ca)
        .stdin(std::process::Stdio::null());
    if let Some((cert, key)) = client {
        command.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let output = command.output().expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && text.contains("Verification: OK") {
        Ok(())
    } else {
        Err(text)
    }
}

#[test]
fn the_network_moves_to_amqps_child_by_child_and_survives_the_final_broker_config() {
    // Declared first, dropped last: the node outlives every process using it.
    let node = PrivateNode {
        name: NODE,
        amqp: AMQP_PORT,
        mgmt: MGMT_PORT,
        amqps: AMQPS_PORT,
        prometheus: PROMETHEUS_PORT,
    };
    // A node left over from an interrupted run may still run with another config.
    node.run("stop", None, None);
    node.run("start", None, None);
    let dir = test_dir();
    let vhost = Vhost::new_on(&node.addr());
    let mut parent = Parent::start(&vhost, dir.path(), &["--offline-after", "5"]);
    let amqps = format!("amqps://guest:guest@127.0.0.1:{AMQPS_PORT}/{}", vhost.name);

    // ---- a network with three children, tested and certified
    let first = ["till-1", "till-2", "till-3"];
    let mut children: HashMap<&str, Proc> = first
        .iter()
        .map(|n| (*n, start_child(&vhost, dir.path(), n, &[])))
        .collect();
    parent.wait_online(&first);
    let ssl_port = free_port().to_string();
    parent.cli_expect(
        &[
            "settings",
            "set",
            "--names",
            "localhost",
            "--ips",
            "127.0.0.1",
            "--port",
            &ssl_port,
        ],
        0,
    );
    parent.cli_expect(&["certs", "generate"], 0);
    parent.cli_expect(&["certs", "send"], 0);
    let has_certs = |names: &'static [&'static str]| {
        move |status: &Value| {
            let agents = agents_by_name(status);
            let missing: Vec<&&str> = names
                .iter()
                .filter(|n| agents.get(**n).is_none_or(|a| a["has_certificate"] != true))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("without a certificate: {missing:?}"))
            }
        }
    };
    wait_status(
        &parent,
        "three certificates",
        Duration::from_secs(30),
        has_certs(&["till-1", "till-2", "till-3"]),
    );
    parent.cli_expect(&["verify", "--step-timeout", "20s"], 0);

    // ---- switch-broker before switch: refused, nothing started
    let (_, err) = parent.cli_expect(
        &["switch-broker", "--amqps", &amqps, "--step-timeout", "20s"],
        3,
    );
    assert!(
        err.contains("not on SSL"),
        "switch-broker before switch should say the network is not on SSL yet: {err}"
    );
    let campaign = parent.cli_json(&["campaign"]);
    assert_eq!(
        campaign["kind"], "verify",
        "a refused switch-broker must not start a campaign: {campaign}"
    );

    // ---- switch: the three that passed
    parent.cli_expect(&["switch", "--step-timeout", "20s"], 0);
    let status = parent.status_json().expect("status");
    assert_eq!(
        status["network"]["switched_to_ssl"], 3,
        "after switch: {}",
        status["network"]
    );

    // ---- force-switch: a fourth child with a certificate that never took the test
    children.insert("till-4", start_child(&vhost, dir.path(), "till-4", &[]));
    let all = ["till-1", "till-2", "till-3", "till-4"];
    parent.wait_online(&all);
    parent.cli_expect(&["certs", "send"], 0);
    wait_status(
        &parent,
        "till-4's certificate",
        Duration::from_secs(30),
        has_certs(&["till-4"]),
    );
    // Without --yes and without a terminal (stdin is /dev/null): usage error, nothing done.
    let (_, err) = parent.cli_expect(&["force-switch"], 2);
    assert!(
        err.contains("--yes"),
        "force-switch without --yes should ask for it: {err}"
    );
    let till4 = parent.agent("till-4").expect("till-4 registered");
    assert_eq!(
        till4["ssl"], false,
        "force-switch without --yes switched till-4: {till4}"
    );
    // With --yes: done, and till-4 named as at risk on stderr (the others are already switched).
    let (_, err) = parent.cli_expect(&["force-switch", "--yes", "--step-timeout", "20s"], 0);
    let risk = err
        .split_once("may lose their connection")
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("force-switch --yes did not list children at risk: {err}"));
    assert!(
        risk.contains("till-4"),
        "till-4 never passed and should be listed at risk: {err}"
    );
    for passed in first {
        assert!(
            !risk.contains(passed),
            "{passed} passed the test but is listed at risk: {err}"
        );
    }
    let status = wait_status(
        &parent,
        "four switched to SSL",
        Duration::from_secs(30),
        |s| {
            (s["network"]["switched_to_ssl"] == 4)
                .then_some(())
                .ok_or_else(|| format!("{}", s["network"]))
        },
    );
    let ids: HashMap<String, String> = agents_by_name(&status)
        .into_iter()
        .map(|(name, a)| (name, a["id"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(ids.len(), 4, "four agents registered: {ids:?}");

    // ---- broker-tls: the broker's files and the migration fragment; the
    // final one (plain AMQP off) is refused while anyone would be cut off
    let tls = dir.path().join("broker-tls");
    // The node's own AMQPS port, on loopback only (5671 on every interface
    // may belong to someone else on a test machine).
    let broker_tls_args = [
        "broker-tls",
        "--out",
        tls.to_str().unwrap(),
        "--amqps-port",
        &AMQPS_PORT.to_string(),
        "--amqps-bind",
        "127.0.0.1",
    ];
    let (out, _) = parent.cli_expect(&broker_tls_args, 0);
    assert!(
        !tls.join("rabbitmq-final.conf").exists(),
        "the final fragment was written while no child is on AMQPS: {out}"
    );
    assert!(out.contains("4 agent(s) would be cut off"), "{out}");
    for child in all {
        assert!(
            out.contains(&format!("  {child}: not on AMQPS yet")),
            "{child} is not named as one that would be cut off: {out}"
        );
    }
    for file in [
        "broker.pem",
        "broker.key",
        "ca.pem",
        "rabbitmq-migration.conf",
        "rabbitmq-fleet.conf",
    ] {
        let path = tls.join(file);
        assert!(
            path.is_file(),
            "broker-tls did not write {}: {out}",
            path.display()
        );
        assert!(
            out.contains(file),
            "broker-tls does not name {file} in its output: {out}"
        );
    }
    let key_mode = std::fs::metadata(tls.join("broker.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        key_mode & 0o777,
        0o600,
        "broker.key mode is {:o}",
        key_mode & 0o777
    );
    let ca_written = std::fs::read_to_string(tls.join("ca.pem")).unwrap();
    let ca_parent = std::fs::read_to_string(parent.cert_file(CertFile::CaPem)).unwrap();
    assert_eq!(
        ca_written, ca_parent,
        "broker-tls's ca.pem is not the network's CA"
    );
    // The fleet's statistics settings, as the repository ships them.
    let fleet = std::fs::read_to_string(tls.join("rabbitmq-fleet.conf")).unwrap();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rabbitmq/fleet.conf"),
    )
    .unwrap();
    assert_eq!(
        fleet, shipped,
        "rabbitmq-fleet.conf is not deploy/rabbitmq/fleet.conf"
    );
    assert!(
        fleet
            .lines()
            .any(|l| l.trim() == "collect_statistics_interval = 30000"),
        "{fleet}"
    );
    let migration = std::fs::read_to_string(tls.join("rabbitmq-migration.conf")).unwrap();
    for (name, text) in [("migration", &migration)] {
        for line in [
            &format!("listeners.ssl.default = 127.0.0.1:{AMQPS_PORT}"),
            "ssl_options.verify = verify_peer",
            &format!("ssl_options.cacertfile = {}", tls.join("ca.pem").display()),
            &format!(
                "ssl_options.certfile = {}",
                tls.join("broker.pem").display()
            ),
            &format!("ssl_options.keyfile = {}", tls.join("broker.key").display()),
        ] {
            assert!(
                text.lines().any(|l| l.trim() == line),
                "the {name} fragment lacks `{line}`:\n{text}"
            );
        }
    }
    let has = |text: &str, line: &str| text.lines().any(|l| l.trim() == line);
    assert!(
        has(&migration, "ssl_options.fail_if_no_peer_cert = false"),
        "migration fragment:\n{migration}"
    );
    assert!(
        !has(&migration, "listeners.tcp = none"),
        "the migration fragment turns plain AMQP off:\n{migration}"
    );

    // ---- the node restarted with AMQPS (plain stays open); everyone comes back alone
    // The migration fragment itself is applied, as written, so RabbitMQ
    // checks every key it writes.
    let migration_conf = tls.join("rabbitmq-migration.conf");
    node.run("restart", Some(&tls), Some(&migration_conf));
    let mut plain_everyone: Vec<(String, Want, Option<String>)> = all
        .iter()
        .map(|n| (child_conn(&ids[*n]), Want::Plain, None))
        .collect();
    plain_everyone.push(("fleetls-parent".into(), Want::Plain, None));
    wait_connections(
        &vhost,
        "the parent and four children reconnected on plain AMQP",
        Duration::from_secs(90),
        &plain_everyone,
    );
    parent.wait_online(&all);
    assert!(
        port_answers(AMQPS_PORT),
        "the AMQPS port does not answer after the restart"
    );
    // During the migration a client certificate is optional.
    let ca = tls.join("ca.pem");
    tls_handshake(&ca, None).unwrap_or_else(|e| {
        panic!("the migration config should accept TLS without a client certificate:\n{e}")
    });

    // ---- an AMQPS name the broker's certificate does not carry: refused up front
    let by_localhost = format!("amqps://guest:guest@localhost:{AMQPS_PORT}/{}", vhost.name);
    let (_, err) = parent.cli_expect(
        &[
            "switch-broker",
            "--amqps",
            &by_localhost,
            "--step-timeout",
            "20s",
        ],
        3,
    );
    assert!(
        err.contains("does not name localhost"),
        "switch-broker to localhost (not in the broker's certificate) should name the mismatch: {err}"
    );
    let campaign = parent.cli_json(&["campaign"]);
    assert_eq!(
        campaign["kind"], "force-switch",
        "a refused switch-broker started a campaign: {campaign}"
    );

    // ---- switch-broker with till-3's key spoilt: its AMQPS connection cannot
    // be made (its TLS client identity does not load), so it must stay on plain
    // and be reported; the others move. (A child cut off from the AMQPS port
    // fails the same way, through the same path; spoiling the key is simply
    // the robust way to make exactly one child fail.)
    let till3_key = child_layout(dir.path(), "till-3").key();
    let good_key = std::fs::read(&till3_key).expect("till-3 has a key");
    std::fs::write(
        &till3_key,
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    // What the logs held before the planned move: it must add no ERROR.
    let logged_before: HashMap<&str, usize> = ["till-1", "till-2", "till-4"]
        .iter()
        .map(|n| (*n, children[n].output().len()))
        .chain([("parent", parent.proc.output().len())])
        .collect();
    let replayed_before = replayed(&parent);
    // No --amqps: the default is the --broker host on the port broker-tls
    // wrote the listener with (not 5671, where nothing listens here).
    let (out, err) = parent.cli_expect(&["switch-broker", "--step-timeout", "20s"], 4);
    assert!(
        err.contains(&format!("127.0.0.1:{AMQPS_PORT}"))
            || out.contains(&format!("127.0.0.1:{AMQPS_PORT}")),
        "switch-broker's default should be the recorded AMQPS port {AMQPS_PORT}: {out}{err}"
    );
    assert!(
        err.contains("answers with") && err.contains("certificate from the network's CA"),
        "switch-broker should say AMQPS answered with the CA's certificate: {err}"
    );
    assert!(
        !err.contains("guest:guest@") && !out.contains("guest:guest@"),
        "switch-broker prints the broker password:\n{out}\n{err}"
    );
    assert!(
        out.contains("1 failed"),
        "switch-broker should count one failure: {out}"
    );
    let campaign = parent.cli_json(&["campaign"]);
    assert_eq!(campaign["kind"], "switch-broker", "{campaign}");
    assert_eq!(campaign["state"], "finished", "{campaign}");
    assert_eq!(
        campaign["total"], 4,
        "the first switch-broker takes all four switched children: {campaign}"
    );
    assert_eq!(campaign["passed"], 3, "{campaign}");
    assert_eq!(campaign["failed"], 1, "till-3 should fail: {campaign}");

    // Acceptance 1 and 2, by RabbitMQ's own view: three children and the parent
    // on TLS with their certificates, till-3 still on plain.
    let mut moved: Vec<(String, Want, Option<String>)> = ["till-1", "till-2", "till-4"]
        .iter()
        .map(|n| (child_conn(&ids[*n]), Want::Tls, Some(ids[*n].clone())))
        .collect();
    moved.push((child_conn(&ids["till-3"]), Want::Plain, None));
    moved.push((
        "fleetls-parent".into(),
        Want::Tls,
        Some("fleetls-parent".into()),
    ));
    wait_connections(
        &vhost,
        "three children and the parent on AMQPS, till-3 on plain",
        Duration::from_secs(60),
        &moved,
    );
    // A planned move is no error: the moved children's and the parent's logs
    // gained no ERROR line.
    let mut errors = Vec::new();
    for (name, from) in &logged_before {
        let log = match *name {
            "parent" => parent.proc.output(),
            child => children[child].output(),
        };
        for line in log.get(*from..).unwrap_or_default().lines() {
            if line.contains(" ERROR ") {
                errors.push(format!("{name}: {line}"));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "ERROR logged during the planned move to AMQPS:\n{}",
        errors.join("\n")
    );
    // Each child's messages reached the parent's queue in the order of
    // their seq, across its two connections (its sends take turns): none of
    // the move was taken for a replay.
    assert_eq!(
        replayed(&parent),
        replayed_before,
        "messages of the move to AMQPS were dropped as replays"
    );
    let without = parent.cli_json(&["without-ssl"]);
    assert_eq!(
        without["broker_view"], true,
        "without-ssl must use RabbitMQ's view: {without}"
    );
    assert_eq!(
        listed(&without, "not_switched"),
        Vec::<String>::new(),
        "{without}"
    );
    assert_eq!(
        listed(&without, "not_on_tls"),
        vec!["till-3".to_owned()],
        "{without}"
    );
    let why = without["not_on_tls"][0]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("plain"),
        "till-3's reason should say it is on plain AMQP: {why}"
    );
    assert!(
        why.contains(&AMQP_PORT.to_string()),
        "till-3's reason should name the plain port: {why}"
    );
    let status = parent.status_json().expect("status");
    let agents = agents_by_name(&status);
    for name in ["till-1", "till-2", "till-4"] {
        assert_eq!(agents[name]["broker_tls"], true, "{name}: {}", agents[name]);
    }
    assert_eq!(
        agents["till-3"]["broker_tls"], false,
        "till-3: {}",
        agents["till-3"]
    );
    assert_eq!(status["network"]["broker_tls"], 3, "{}", status["network"]);
    // The child says why it stayed (the parent records it in the campaign; see the report).
    let log = children["till-3"].output();
    assert!(
        log.contains("staying on plain AMQP"),
        "till-3's log should say why it stayed on plain:\n{}",
        tail(&log, 30)
    );
    assert!(
        parent.layout().broker_state().is_file(),
        "the parent did not remember its AMQPS address"
    );

    // ---- acceptance 3: a switched child restarted comes back on AMQPS
    let till1 = children.get_mut("till-1").unwrap();
    till1.signal("TERM");
    assert!(
        till1.wait_exit(Duration::from_secs(30)).is_some(),
        "till-1 did not stop on SIGTERM"
    );
    let restarted_at = fleetls_proto::now_ms();
    children.insert("till-1", start_child(&vhost, dir.path(), "till-1", &[]));
    let id1 = ids["till-1"].clone();
    wait_until(
        "the restarted till-1 on AMQPS",
        Duration::from_secs(60),
        || {
            let all = connections(&vhost)?;
            check_connection(&all, &child_conn(&id1), Want::Tls, Some(&id1))?;
            let fresh = named(&all, &child_conn(&id1)).iter().any(|c| {
                c["connected_at"]
                    .as_u64()
                    .is_some_and(|t| t >= restarted_at)
            });
            fresh
                .then_some(())
                .ok_or_else(|| "only the old connection so far".to_owned())
        },
    );
    let till1 = parent.agent("till-1").expect("till-1");
    assert_eq!(till1["broker_tls"], true, "the restarted till-1: {till1}");

    // ---- acceptance 4: till-3 fixed; a second switch-broker takes only it
    std::fs::write(&till3_key, &good_key).unwrap();
    parent.cli_expect(
        &["switch-broker", "--amqps", &amqps, "--step-timeout", "20s"],
        0,
    );
    let campaign = parent.cli_json(&["campaign"]);
    assert_eq!(campaign["kind"], "switch-broker", "{campaign}");
    assert_eq!(
        campaign["total"], 1,
        "the second switch-broker should take only till-3: {campaign}"
    );
    assert_eq!(campaign["passed"], 1, "{campaign}");
    let everyone_tls: Vec<(String, Want, Option<String>)> = all
        .iter()
        .map(|n| (child_conn(&ids[*n]), Want::Tls, Some(ids[*n].clone())))
        .chain([(
            "fleetls-parent".to_owned(),
            Want::Tls,
            Some("fleetls-parent".to_owned()),
        )])
        .collect();
    wait_connections(
        &vhost,
        "every child and the parent on AMQPS",
        Duration::from_secs(60),
        &everyone_tls,
    );
    let without = parent.cli_json(&["without-ssl"]);
    assert_eq!(
        listed(&without, "not_on_tls"),
        Vec::<String>::new(),
        "nobody should be off TLS now: {without}"
    );
    let status = parent.status_json().expect("status");
    assert_eq!(status["network"]["broker_tls"], 4, "{}", status["network"]);
    assert_eq!(
        status["network"]["phase"], "broker-tls",
        "{}",
        status["network"]
    );

    // Nobody is left to move: a third switch-broker is refused.
    let (_, err) = parent.cli_expect(
        &["switch-broker", "--amqps", &amqps, "--step-timeout", "20s"],
        3,
    );
    assert!(
        err.contains("already on AMQPS"),
        "switch-broker with every child on AMQPS should say so: {err}"
    );

    // ---- acceptance 5: the post-migration config (client certificate
    // required, plain AMQP off): written now that nobody would be cut off;
    // everyone comes back and still works. The final fragment itself, as
    // written.
    let (out, _) = parent.cli_expect(&broker_tls_args, 0);
    assert!(!out.contains("would be cut off"), "{out}");
    let final_conf = tls.join("rabbitmq-final.conf");
    let last = std::fs::read_to_string(&final_conf)
        .unwrap_or_else(|e| panic!("no final fragment once everyone is on AMQPS ({e}): {out}"));
    let has = |text: &str, line: &str| text.lines().any(|l| l.trim() == line);
    for line in [
        "ssl_options.verify = verify_peer",
        "ssl_options.fail_if_no_peer_cert = true",
        "listeners.tcp = none",
        &format!("ssl_options.cacertfile = {}", tls.join("ca.pem").display()),
    ] {
        assert!(
            has(&last, line),
            "the final fragment lacks `{line}`:\n{last}"
        );
    }
    let (ok, said) = node.script("restart", Some(&tls), Some(&final_conf));
    assert!(
        ok,
        "scripts/broker restart with the final fragment failed:\n{said}"
    );
    assert!(
        said.contains("plain amqp off") && !said.contains(&format!("amqp://127.0.0.1:{AMQP_PORT}")),
        "scripts/broker names no AMQP address once plain AMQP is off:\n{said}"
    );
    assert!(
        !port_answers(AMQP_PORT),
        "the plain AMQP port {AMQP_PORT} still accepts connections with listeners.tcp = none"
    );
    wait_connections(
        &vhost,
        "every child and the parent back on AMQPS after the final config",
        Duration::from_secs(90),
        &everyone_tls,
    );
    parent.wait_online(&all);
    // Now a client certificate from the CA is required.
    let till2 = child_layout(dir.path(), "till-2");
    assert!(
        tls_handshake(&ca, None).is_err(),
        "the final config accepts a TLS client without a certificate"
    );
    tls_handshake(&ca, Some((&till2.chain(), &till2.key())))
        .unwrap_or_else(|e| panic!("the final config refuses till-2's certificate:\n{e}"));
    // The parent restarted comes back the way it left: over AMQPS (plain is
    // off now, so its plain --broker URL could not work anyway).
    parent.proc.signal("TERM");
    let parent_restarted_at = fleetls_proto::now_ms();
    parent.restart(&vhost, &["--offline-after", "5"]);
    wait_until(
        "the restarted parent on AMQPS",
        Duration::from_secs(60),
        || {
            let all = connections(&vhost)?;
            check_connection(&all, "fleetls-parent", Want::Tls, Some("fleetls-parent"))?;
            named(&all, "fleetls-parent")
                .iter()
                .any(|c| {
                    c["connected_at"]
                        .as_u64()
                        .is_some_and(|t| t >= parent_restarted_at)
                })
                .then_some(())
                .ok_or_else(|| "no new parent connection yet".to_owned())
        },
    );
    parent.wait_online(&all);
    parent.cli_expect(&["verify", "--step-timeout", "20s"], 0);
    let campaign = parent.cli_json(&["campaign"]);
    assert_eq!(campaign["kind"], "verify", "{campaign}");
    assert_eq!(
        campaign["total"], 4,
        "the verify campaign should take all four: {campaign}"
    );
    assert_eq!(campaign["passed"], 4, "{campaign}");
    assert!(
        !port_answers(AMQP_PORT),
        "the plain AMQP port answers again"
    );
    // No password in any log (the AMQPS URL carries guest's).
    let mut logs = vec![("parent".to_owned(), parent.proc.output())];
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            logs.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    for (name, text) in &logs {
        assert!(
            !text.contains("guest:guest@"),
            "{name} logs a broker password"
        );
    }
    for (name, child) in children.iter_mut() {
        assert_eq!(
            child.wait_exit(Duration::from_millis(10)),
            None,
            "{name} exited:\n{}",
            tail(&child.output(), 30)
        );
    }
}
