//! CA rotation to a company CA: `ca rotate --ca-cert F --ca-key F` (as
//! `certs generate` takes one) replaces the CA, the child ends on it; a
//! certificate that is not a CA is refused and changes nothing, and so is
//! `--advance` with no rotation under way, or a rotation before there is a CA.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fleetls_tests::{
    child_layout, free_port, start_child, test_dir, tree, wait_for, CertFile, Parent, Vhost,
};
use serde_json::Value;

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

/// A CA of the company's, made with openssl (`ca`: basicConstraints CA:TRUE
/// or CA:FALSE): (certificate file, key file).
fn company_ca(dir: &Path, name: &str, ca: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let constraints = if ca {
        "basicConstraints=critical,CA:TRUE"
    } else {
        "basicConstraints=critical,CA:FALSE"
    };
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/O=company/CN={name}"),
        ])
        .args(["-addext", constraints, "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (cert, key)
}

#[test]
fn a_company_ca_given_again_replaces_the_ca_and_bad_input_is_refused() {
    let vhost = Vhost::new();
    let dir = test_dir();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "10"]);
    let _child = start_child(&vhost, dir.path(), "till-1", &[]);
    parent.wait_online(&["till-1"]);
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
    // Nothing to rotate before there is a CA, nothing to advance before a rotation.
    let (code, _, err) = parent.cli(&["ca", "rotate"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("certs generate"), "{err}");
    ok(&parent, &["certs", "generate"]);
    ok(&parent, &["certs", "send"]);
    wait_for("till-1's certificate", WAIT, || {
        (parent.agent("till-1")?["has_certificate"] == true).then_some(())
    });
    let (code, _, err) = parent.cli(&["ca", "rotate", "--advance"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no CA rotation is under way"), "{err}");
    // A certificate that is not a CA: refused, saying why; nothing changes:
    // no file of the parent's data dir (its registry aside, which
    // heartbeats write), no certificate, no rotation, nothing at the child.
    let (not_ca, not_ca_key) = company_ca(dir.path(), "not-a-ca", false);
    let registry = parent.layout().registry();
    let registry = registry.file_name().unwrap().to_string_lossy().into_owned();
    let files = || {
        let mut all = tree(&parent.data_dir);
        // The registry and its journal (`-wal`, `-shm`).
        all.retain(|(path, _)| !path.to_string_lossy().starts_with(&registry));
        all
    };
    let certificates =
        || parent.registry_query("SELECT serial, revoked FROM certificates ORDER BY serial");
    let rotations = || parent.registry_query("SELECT count(*) FROM ca_rotations");
    let child_files = || tree(child_layout(dir.path(), "till-1").dir());
    let before = (files(), certificates(), rotations(), child_files());
    let (code, _, err) = parent.cli(&[
        "ca",
        "rotate",
        "--ca-cert",
        not_ca.to_str().unwrap(),
        "--ca-key",
        not_ca_key.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a CA"), "{err}");
    assert!(
        (files(), certificates(), rotations(), child_files()) == before,
        "a refused rotation changed the parent's files, its certificates or rotations, or the child's files"
    );
    let status = parent.status_json().unwrap();
    assert!(status["network"]["ca_rotation"].is_null(), "{status}");

    // The company's CA: the network moves to it.
    let (company, company_key) = company_ca(dir.path(), "company-ca", true);
    let started: Value = serde_json::from_str(&ok(
        &parent,
        &[
            "ca",
            "rotate",
            "--ca-cert",
            company.to_str().unwrap(),
            "--ca-key",
            company_key.to_str().unwrap(),
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(started["rotation"]["phase"], "trust", "{started}");
    wait_for("the rotation to its end", WAIT, || {
        let r = parent.status_json().ok()?["network"]["ca_rotation"].clone();
        (r["phase"] == "finished" && r["trusting_old"] == 0).then_some(())
    });
    let till = child_layout(dir.path(), "till-1");
    assert!(verifies(&company, &till.chain()));
    assert_eq!(certificates_in(&till.ca()), 1);
    assert!(verifies(&company, &parent.cert_file(CertFile::ParentPem)));
    assert_eq!(
        std::fs::read_to_string(parent.cert_file(CertFile::TrustPem)).unwrap(),
        std::fs::read_to_string(&company).unwrap()
    );
    let network = parent.status_json().unwrap()["network"].clone();
    assert_eq!(network["renewals_done"], 1, "{network}");
    assert_eq!(network["renewals_failed"], 0, "{network}");
}
