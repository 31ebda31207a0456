//! Certificates that renew themselves: with a 90-second lifetime, twenty
//! children and a local parent each make a new key and get a new
//! certificate at about two thirds of it, twice, without going offline; each
//! renewed certificate verifies with openssl; the one it replaces is revoked
//! (superseded); a child that was offline at its renewal time renews when it
//! comes back; `certs renew --agent` renews at once; and a verify campaign
//! afterwards passes for everyone, the local parent serving its renewed
//! certificate to the children of its location.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fleetls_tests::{start_child, wait_for, Parent, Proc, Vhost};

const CHILDREN: usize = 20;
const WAIT: Duration = Duration::from_secs(60);

fn ok(parent: &Parent, args: &[&str]) -> String {
    let (code, out, err) = parent.cli(args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

/// The serial of the certificate a child holds now.
fn serial(dir: &Path, name: &str) -> Option<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(dir.join(name).join("certs/agent.pem"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn certificates_renew_twice_without_anyone_going_offline() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &[
            "--cert-lifetime",
            "90s",
            "--offline-after",
            "10",
            "--local-parent-names",
            "localhost",
            "--local-parent-ips",
            "127.0.0.1",
        ],
    );
    let names: Vec<String> = (0..CHILDREN).map(|i| format!("till-{i}")).collect();
    let mut procs: HashMap<String, Proc> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        // The first five live behind the local parent.
        let location = if i < 5 { "shop" } else { "hq" };
        procs.insert(
            name.clone(),
            start_child(&vhost, dir.path(), name, &["--location", location]),
        );
    }
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
    wait_for("everyone online", WAIT, || {
        let s = parent.status_json().ok()?;
        (s["network"]["online"] == (CHILDREN + 1) as u64).then_some(())
    });
    ok(&parent, &["agents", "accept", "lp-1"]);
    parent.settings_loopback(&[]);
    ok(&parent, &["certs", "generate"]);
    ok(&parent, &["certs", "send"]);
    let mut all: Vec<String> = names.clone();
    all.push("lp-1".into());
    let first: HashMap<String, String> = all
        .iter()
        .map(|n| {
            let s = wait_for("a first certificate", WAIT, || serial(dir.path(), n));
            (n.clone(), s)
        })
        .collect();
    let ca = parent.data_dir.join("certificates/ca.pem");

    // Forced at once: till-1.
    ok(&parent, &["certs", "renew", "--agent", "till-1"]);
    wait_for("till-1 renewed on demand", Duration::from_secs(20), || {
        (serial(dir.path(), "till-1")? != first["till-1"]).then_some(())
    });

    // till-0 is offline when its renewal comes.
    let mut gone = procs.remove("till-0").unwrap();
    gone.signal("TERM");
    gone.wait_exit(WAIT).expect("till-0 stops");

    // Two cycles for the others; everyone stays online all along.
    let mut seen: HashMap<String, Vec<String>> = all
        .iter()
        .map(|n| (n.clone(), vec![first[n].clone()]))
        .collect();
    let started = Instant::now();
    let mut restarted = false;
    wait_for(
        "two renewals for everyone online",
        Duration::from_secs(240),
        || {
            let status = parent.status_json().ok()?;
            for agent in status["agents"].as_array()? {
                let name = agent["name"].as_str()?;
                if name != "till-0" {
                    assert_eq!(agent["online"], true, "{name} went offline: {agent}");
                }
            }
            for name in all.iter().filter(|n| *n != "till-0") {
                if let Some(s) = serial(dir.path(), name) {
                    let list = seen.get_mut(name).unwrap();
                    if list.last() != Some(&s) {
                        list.push(s);
                    }
                }
            }
            // till-0 comes back after its renewal time passed.
            if !restarted && started.elapsed() > Duration::from_secs(75) {
                procs.insert(
                    "till-0".into(),
                    start_child(&vhost, dir.path(), "till-0", &["--location", "shop"]),
                );
                restarted = true;
            }
            seen.iter()
                .filter(|(n, _)| *n != "till-0")
                .all(|(_, serials)| serials.len() >= 3)
                .then_some(())
        },
    );
    let back = wait_for("till-0 renewed after coming back", WAIT, || {
        let s = serial(dir.path(), "till-0")?;
        (s != first["till-0"]).then_some(s)
    });
    assert_ne!(back, first["till-0"]);

    // Every certificate held now verifies; the replaced ones are revoked.
    for name in &all {
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(dir.path().join(name).join("certs/agent.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
    }
    let network = parent.status_json().unwrap()["network"].clone();
    let revoked = network["revoked_certificates"].as_u64().unwrap();
    // Each renewal revoked what it replaced: at least two for everyone but
    // till-0, which renewed once, after it came back.
    let at_least = 2 * (all.len() as u64 - 1) + 1;
    assert!(revoked >= at_least, "{revoked} < {at_least}: {network}");
    assert!(network["soonest_expiry"].as_i64().is_some(), "{network}");

    // Verify passes for everyone, behind the local parent too.
    let (code, out, err) = parent.cli(&["verify", "--step-timeout", "20s", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        summary["summary"]["passed"],
        (CHILDREN + 1) as u64,
        "{summary}"
    );
}
