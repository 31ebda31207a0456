//! The manual path of an mPOS device, which cannot send a CSR: the parent
//! exports its identity, `fleetls-child import` installs it on the device —
//! checked whole before anything is written (the password, the file, whose
//! identity it is) — and the running agent then holds a certificate the
//! parent counts; `without-ssl` says at each point what the operator must
//! do. (Its move to AMQPS and the final broker configuration are in
//! `broker_switch.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fleetls_tests::{
    free_port, pem_serial, program, start_child, tree, wait_for, ChildLayout, Parent, Vhost,
};
use serde_json::Value;

fn import(data_dir: &Path, pfx: &Path, password_file: &Path) -> (i32, String, String) {
    let output = Command::new(program("fleetls-child"))
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
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn why(parent: &Parent, name: &str) -> String {
    let without = parent.cli_json(&["without-ssl"]);
    without["not_switched"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["why"].as_str())
        .unwrap_or_else(|| panic!("{name} is not listed by without-ssl: {without}"))
        .to_owned()
}

#[test]
fn an_exported_identity_is_imported_on_the_mpos_device_and_counted() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _till = start_child(&vhost, dir.path(), "till-1", &[]);
    let _mpos = start_child(&vhost, dir.path(), "mpos-1", &["--kind", "mpos"]);
    parent.wait_online(&["till-1", "mpos-1"]);
    let port = free_port().to_string();
    parent.cli_ok(&[
        "settings",
        "set",
        "--names",
        "localhost",
        "--ips",
        "127.0.0.1",
        "--port",
        &port,
    ]);
    parent.cli_ok(&["certs", "generate"]);
    assert!(
        why(&parent, "mpos-1").contains("fleetls-child import --pfx"),
        "without-ssl says how to give the mPOS device its certificate"
    );

    let password = dir.path().join("password");
    std::fs::write(&password, "a long export password\n").unwrap();
    let out = dir.path().join("export");
    let report: Value = serde_json::from_str(&parent.cli_ok(&[
        "export",
        "--out",
        out.to_str().unwrap(),
        "--agent",
        "mpos-1",
        "--password-file",
        password.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let pfx = out.join("mpos-1.pfx");
    let mpos_dir = dir.path().join("mpos-1");
    let installed = |dir: &Path| ChildLayout::new(dir).key().exists();

    // Refused, nothing written: a wrong password, a file that is no PKCS#12,
    // another agent's identity.
    let till_dir = dir.path().join("till-1");
    let before = (tree(&mpos_dir), tree(&till_dir));
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not the password\n").unwrap();
    let (code, _, err) = import(&mpos_dir, &pfx, &wrong);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("check --password-file"), "{err}");
    let (code, _, err) = import(&mpos_dir, &password, &password);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a PKCS#12 file"), "{err}");
    let (code, _, err) = import(&till_dir, &pfx, &password);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("this identity is for agent"), "{err}");
    assert!(
        (tree(&mpos_dir), tree(&till_dir)) == before,
        "a refused import wrote to a data dir"
    );
    assert!(!installed(&mpos_dir), "a refused import wrote the key");

    let (code, printed, err) = import(&mpos_dir, &pfx, &password);
    assert_eq!(code, 0, "{err}");
    let serial = report["certificates"][0]["serial"].as_str().unwrap();
    assert!(
        printed.contains(&format!("certificate {serial}")),
        "{printed} names the serial {serial}"
    );
    // The certificate installed is the one exported.
    let installed_serial = pem_serial(&ChildLayout::new(&mpos_dir).chain());
    let digits = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    assert_eq!(
        digits(&installed_serial),
        digits(serial),
        "agent.pem holds {installed_serial}, the export {serial}"
    );
    let mode = std::fs::metadata(ChildLayout::new(&mpos_dir).key())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (ok, text) = {
        let o = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(ChildLayout::new(&mpos_dir).ca())
            .arg(ChildLayout::new(&mpos_dir).chain())
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert!(
        ok,
        "the installed certificate verifies against the installed CA: {text}"
    );

    // The running agent reports it; the parent counts it as certified.
    wait_for(
        "mpos-1 holding a certificate",
        Duration::from_secs(30),
        || (parent.agent("mpos-1")?["has_certificate"] == true).then_some(()),
    );
    assert!(
        why(&parent, "mpos-1").contains("switch-broker"),
        "without-ssl says the mPOS device moves with switch-broker"
    );
}
