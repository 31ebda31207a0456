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

use fleetls_tests::{child_layout, start_child, wait_for, CertFile, Parent, Proc, Vhost};

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
        .arg(child_layout(dir, name).chain())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One certificate the parent issued, as its registry keeps it.
#[derive(Debug)]
struct Issued {
    serial: String,
    /// When (ms).
    issued_at: u64,
    /// Why it was revoked (`None`: it was not).
    revoked: Option<String>,
    /// The sha256 of its public key.
    key: String,
    /// It replaced one the agent held.
    renewal: bool,
}

/// Every certificate issued to `name`, oldest first.
fn certificates_of(parent: &Parent, name: &str) -> Vec<Issued> {
    let rows = parent.registry_query(&format!(
        "SELECT c.serial, c.issued_at, c.revoked, coalesce(c.revoke_reason, ''),
                coalesce(c.key_sha256, ''), c.renewal
         FROM certificates c JOIN agents a ON a.id = c.agent_id
         WHERE a.name = '{name}' ORDER BY c.issued_at, c.rowid"
    ));
    rows.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 6, "{line}");
            Issued {
                serial: f[0].to_owned(),
                issued_at: f[1].parse().unwrap(),
                revoked: (f[2] == "1").then(|| f[3].to_owned()),
                key: f[4].to_owned(),
                renewal: f[5] == "1",
            }
        })
        .collect()
}

/// Whether openssl's `serial=0A1B…` and the registry's hex name one serial.
fn same_serial(openssl: &str, registry: &str) -> bool {
    let norm = |s: &str| {
        s.trim_start_matches("serial=")
            .trim_start_matches('0')
            .to_ascii_lowercase()
    };
    norm(openssl) == norm(registry)
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
    let ca = parent.cert_file(CertFile::CaPem);

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

    // Per agent, from the parent's registry: every certificate it was
    // issued verifies against the CA; each renewal is on a new key and
    // revoked the one before it, superseded; the last one is valid and is
    // the one the child holds; every certificate the child was seen holding
    // is among them, in order.
    for name in &all {
        // Renewals go on: what it holds is read first.
        let asked = fleetls_proto::now_ms();
        let held = serial(dir.path(), name).unwrap();
        let issued = certificates_of(&parent, name);
        let least = match name.as_str() {
            // Renewed once, after it came back.
            "till-0" => 2,
            _ => 3,
        };
        assert!(issued.len() >= least, "{name}: {issued:?}");
        for (i, cert) in issued.iter().enumerate() {
            let last = i + 1 == issued.len();
            if last {
                assert_eq!(
                    cert.revoked, None,
                    "{name}'s current certificate: {issued:?}"
                );
            } else {
                assert_eq!(
                    cert.revoked.as_deref(),
                    Some("superseded"),
                    "{name}'s certificate {i} was not superseded by its renewal: {issued:?}"
                );
            }
            assert_eq!(cert.renewal, i > 0, "{name}: {issued:?}");
            assert!(!cert.key.is_empty(), "{name}: {issued:?}");
            assert!(
                issued[..i].iter().all(|before| before.key != cert.key),
                "{name} renewed on a key it had before: {issued:?}"
            );
            let chain = dir.path().join(format!("issued-{}.pem", cert.serial));
            std::fs::write(
                &chain,
                parent.registry_query(&format!(
                    "SELECT chain_pem FROM certificates WHERE serial = '{}'",
                    cert.serial
                )),
            )
            .unwrap();
            // At its issue: the first ones have expired since.
            let out = Command::new("openssl")
                .args(["verify", "-attime"])
                .arg((cert.issued_at / 1000 + 1).to_string())
                .arg("-CAfile")
                .arg(&ca)
                .arg(&chain)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}'s certificate {}: {out:?}",
                cert.serial
            );
        }
        // The last one, or the one before when it renewed since.
        let current = match &issued[..] {
            [.., before, last] if last.issued_at >= asked => before,
            [.., last] => last,
            [] => unreachable!(),
        };
        assert!(
            same_serial(&held, &current.serial),
            "{name} holds {held}, not its last certificate: {issued:?}"
        );
        let mut held_over_time: Vec<&String> = seen[name].iter().collect();
        if name == "till-0" {
            held_over_time.push(&back);
        }
        let mut rest = issued.iter();
        for was in held_over_time {
            assert!(
                rest.any(|c| same_serial(was, &c.serial)),
                "{name} held {was}, not issued to it in that order: {issued:?}"
            );
        }
    }
    let network = parent.status_json().unwrap()["network"].clone();
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
