//! CA rotation on AMQPS: twenty children and a local parent, moved to AMQPS
//! on a private node, go through `ca rotate` to its end without one going
//! offline. The broker reads its files from a folder of its own, where the
//! operator installs what `broker-tls --out` writes: the parent waits for it
//! (before the re-issue it must accept the new CA, before the end present a
//! certificate from it) and says so in the status; installed, the broker
//! takes them without a restart (`scripts/broker reload-tls` clears its PEM
//! cache). One more child is offline when the
//! rotation begins: the first phase waits for it, a parent restarted then
//! finds the rotation where it was, and the child catches up when it comes
//! back. At the end every agent's certificate verifies with openssl against
//! the new CA alone and not against the old one, every agent trusts the new
//! CA alone, the old CA is archived, and a verify campaign passes for
//! everyone, the local parent serving its new certificate to the children
//! of its location.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fleetls_tests::{
    child_layout, start_child, test_dir, wait_for, CertFile, Parent, PrivateNode, Proc, Vhost,
};
use serde_json::Value;

// This test's node and ports (its range: 5900-5949 / 15900-15949).
const NODE: &str = "brot";
const AMQP_PORT: u16 = 5900;
const MGMT_PORT: u16 = 15900;
const AMQPS_PORT: u16 = 5901;
const PROMETHEUS_PORT: u16 = 15901;
const CHILDREN: usize = 20;
const WAIT: Duration = Duration::from_secs(90);

fn ok(parent: &Parent, args: &[&str]) -> String {
    let (code, out, err) = parent.cli(args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

/// Whether `cert` (a chain file, leaf first) verifies against `ca` alone.
fn verifies(ca: &Path, cert: &Path) -> bool {
    Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap()
        .status
        .success()
}

/// How many certificates a PEM file holds.
fn certificates_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches("BEGIN CERTIFICATE")
        .count()
}

#[test]
fn a_ca_rotation_moves_everyone_to_the_new_ca_without_anyone_going_offline() {
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
    let vhost = Vhost::new_on(&node.addr());
    let dir = test_dir();
    let flags = [
        "--offline-after",
        "10",
        "--local-parent-names",
        "localhost",
        "--local-parent-ips",
        "127.0.0.1",
    ];
    let mut parent = Parent::start(&vhost, dir.path(), &flags);
    let mut all: Vec<String> = (0..CHILDREN).map(|i| format!("till-{i}")).collect();
    let mut procs: Vec<Proc> = all
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // The first five live behind the local parent.
            let location = if i < 5 { "shop" } else { "hq" };
            start_child(&vhost, dir.path(), name, &["--location", location])
        })
        .collect();
    procs.push(start_child(
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
    ));
    all.push("lp-1".into());
    // Offline when the rotation begins.
    let late = "till-late";
    let mut late_proc = start_child(&vhost, dir.path(), late, &["--location", "hq"]);
    all.push(late.into());
    let everyone = all.len() as u64;
    wait_for("everyone online", WAIT, || {
        let s = parent.status_json().ok()?;
        (s["network"]["online"] == everyone).then_some(())
    });
    ok(&parent, &["agents", "accept", "lp-1"]);
    parent.settings_loopback(&[]);
    parent.certify(everyone, WAIT);
    ok(&parent, &["verify", "--step-timeout", "20s"]);
    ok(&parent, &["switch", "--step-timeout", "20s"]);

    // ---- AMQPS: the node restarted with the migration fragment of broker-tls
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
    let fragment = std::fs::read_to_string(tls.join("rabbitmq-migration.conf")).unwrap();
    // The broker reads its own copy (`live`): the operator installs into it.
    let live = dir.path().join("broker-live");
    std::fs::create_dir_all(&live).unwrap();
    let install = || {
        for name in ["ca.pem", "broker.pem", "broker.key"] {
            let staged = live.join(format!("{name}.new"));
            std::fs::copy(tls.join(name), &staged).unwrap();
            std::fs::rename(&staged, live.join(name)).unwrap();
        }
    };
    install();
    let fragment = fragment.replace(tls.to_str().unwrap(), live.to_str().unwrap());
    let conf = dir.path().join("migration-for-node.conf");
    std::fs::write(&conf, fragment).unwrap();
    node.run("restart", Some(&live), Some(&conf));
    wait_for("everyone back online", WAIT, || {
        let s = parent.status_json().ok()?;
        (s["network"]["online"] == everyone).then_some(())
    });
    let amqps = format!("amqps://guest:guest@127.0.0.1:{AMQPS_PORT}/{}", vhost.name);
    ok(
        &parent,
        &["switch-broker", "--amqps", &amqps, "--step-timeout", "30s"],
    );
    wait_for("everyone on AMQPS", WAIT, || {
        let s = parent.status_json().ok()?;
        (s["network"]["broker_tls"] == everyone).then_some(())
    });

    // ---- the rotation, one child offline
    late_proc.signal("TERM");
    late_proc.wait_exit(WAIT).expect("till-late stops");
    wait_for("till-late offline", WAIT, || {
        (parent.agent(late)?["online"] == false).then_some(())
    });
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(parent.cert_file(CertFile::CaPem), &old_ca).unwrap();
    let started: Value = serde_json::from_str(&ok(&parent, &["ca", "rotate", "--json"])).unwrap();
    assert_eq!(started["rotation"]["phase"], "trust", "{started}");
    let (old_fp, new_fp) = (
        started["rotation"]["old_ca"].as_str().unwrap().to_owned(),
        started["rotation"]["new_ca"].as_str().unwrap().to_owned(),
    );
    assert_ne!(old_fp, new_fp);
    // A second rotation while one is under way is refused.
    let (code, _, err) = parent.cli(&["ca", "rotate"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("under way"), "{err}");
    // The broker's ca.pem holds both CAs now.
    assert_eq!(certificates_in(&tls.join("ca.pem")), 2);
    let rotation = |parent: &Parent| -> Option<Value> {
        Some(parent.status_json().ok()?["network"]["ca_rotation"].clone())
    };
    wait_for("everyone online trusting both CAs", WAIT, || {
        (rotation(&parent)?["trusting_new"] == everyone - 1).then_some(())
    });
    // The first phase waits for the child that is offline, says so by
    // name, and a parent restarted then finds the rotation there: the
    // phase is the registry's.
    assert_eq!(rotation(&parent).unwrap()["phase"], "trust");
    wait_for("the rotation to name the one it waits for", WAIT, || {
        let waiting = rotation(&parent)?["waiting"].as_str()?.to_owned();
        (waiting.starts_with("1 agent(s) to trust the new CA") && waiting.contains(late))
            .then_some(())
    });
    parent.proc.signal("TERM");
    parent.restart(&vhost, &flags);
    wait_for(
        "everyone else online after the parent's restart",
        WAIT,
        || {
            let s = parent.status_json().ok()?;
            (s["network"]["online"] == everyone - 1).then_some(())
        },
    );
    assert_eq!(rotation(&parent).unwrap()["phase"], "trust");
    // The late child comes back (over AMQPS, with its old certificate) and
    // catches up.
    let _late = start_child(&vhost, dir.path(), late, &["--location", "hq"]);
    let mut late_back = false;

    let mut waited_in: Vec<String> = Vec::new();
    let mut installed_final = false;
    let rotation = wait_for("the rotation to its end", Duration::from_secs(240), || {
        let status = parent.status_json().ok()?;
        for agent in status["agents"].as_array()? {
            if agent["name"] == late && !late_back {
                // Once back, it stays online like the others.
                late_back = agent["online"] == true;
                continue;
            }
            assert_eq!(
                agent["online"], true,
                "{} went offline during the rotation: {agent}",
                agent["name"]
            );
        }
        let rotation = status["network"]["ca_rotation"].clone();
        let phase = rotation["phase"].as_str()?.to_owned();
        // The status says what the rotation waits for: agents (named), or
        // the broker's files.
        let why = rotation["waiting"].as_str().unwrap_or_default();
        let waits = why.contains("broker");
        assert!(
            why.is_empty() || waits || why.contains("agent(s) to"),
            "{why}"
        );
        if (waits && !waited_in.contains(&phase)) || (phase == "finished" && !installed_final) {
            if waits {
                waited_in.push(phase.clone());
            }
            installed_final = phase == "finished";
            // The operator installs the files and clears the PEM cache.
            install();
            node.run("reload-tls", None, None);
        }
        (installed_final && rotation["trusting_old"] == 0).then_some(rotation)
    });
    // Twice the broker held the rotation back until it was given its files.
    assert_eq!(waited_in, ["trust", "reissue"]);
    assert!(rotation["waiting"].is_null(), "{rotation}");
    assert_eq!(rotation["agents"], everyone, "{rotation}");
    assert_eq!(rotation["on_new_ca"], everyone, "{rotation}");
    assert_eq!(rotation["trusting_new"], everyone, "{rotation}");

    // ---- everyone on the new CA alone
    let new_ca = parent.cert_file(CertFile::CaPem);
    assert_ne!(
        std::fs::read(&new_ca).unwrap(),
        std::fs::read(&old_ca).unwrap(),
        "ca.pem is still the old CA"
    );
    assert_eq!(certificates_in(&parent.cert_file(CertFile::TrustPem)), 1);
    assert_eq!(certificates_in(&live.join("ca.pem")), 1);
    assert!(verifies(&new_ca, &live.join("broker.pem")));
    let status = parent.status_json().unwrap();
    for name in &all {
        let files = child_layout(dir.path(), name);
        assert!(
            verifies(&new_ca, &files.chain()),
            "{name}: not from the new CA"
        );
        assert!(
            !verifies(&old_ca, &files.chain()),
            "{name}: still verifies against the old CA"
        );
        assert_eq!(
            certificates_in(&files.ca()),
            1,
            "{name} trusts more than the new CA"
        );
        let agent = status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name.as_str())
            .unwrap();
        assert_eq!(agent["certificate_ca"], new_fp.as_str(), "{agent}");
        assert_eq!(agent["broker_tls"], true, "{agent}");
    }
    // The old CA is kept as an archive.
    let archived = std::fs::read_dir(parent.layout().ca_archive())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| std::fs::read(e.path()).ok() == std::fs::read(&old_ca).ok());
    assert!(archived, "the old CA is not in certificates/cas");
    // The table names each agent's CA.
    let table = ok(&parent, &["status"]);
    let short: String = new_fp
        .trim_start_matches("sha256:")
        .chars()
        .take(16)
        .collect();
    assert!(
        table.lines().filter(|l| l.contains(&short)).count() > all.len(),
        "{table}"
    );
    // Every child is still connected over TLS.
    let connections = vhost.management_get("/api/vhosts/{vhost}/connections");
    let on_tls = connections
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["ssl"] == true
                && c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("fleetls-child:"))
        })
        .count();
    assert_eq!(on_tls as u64, everyone, "{connections}");

    // ---- verify passes for everyone, behind the local parent too
    let (code, out, err) = parent.cli(&["verify", "--step-timeout", "20s", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["summary"]["passed"], everyone, "{summary}");
    drop(procs);
}
