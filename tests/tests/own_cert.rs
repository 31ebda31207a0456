//! The parent's SSL port with the operator's own certificate (a company or
//! public CA instead of fleetls's): `settings set --parent-cert F
//! --parent-cert-key F`. A bad one is refused with the reason and changes
//! nothing (a key of another certificate, a name of the settings missing, a
//! lifetime over 398 days, a chain that stops before its root); a good one
//! is served from the next handshake (openssl sees its issuer), a child
//! given its root (`--trust-bundle`) passes verify, and one without it fails
//! with `unknown_issuer` — which the doctor explains.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleetls_tests::company::{intermediate, root, server, write};
use fleetls_tests::{child_layout, free_port, program, start_child, CertFile, Parent, Vhost};
use serde_json::Value;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_ssl_port_serves_an_own_certificate_checked_first_and_children_trust_its_root() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let company = root("company root");
    let root_pem = write(dir.path(), "company-root.pem", &company.pem);
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _given = start_child(
        &vhost,
        dir.path(),
        "own-1",
        &["--trust-bundle", s(&root_pem)],
    );
    let _not_given = start_child(&vhost, dir.path(), "own-2", &[]);
    parent.wait_online(&["own-1", "own-2"]);
    let port = free_port();
    parent.cli_ok(&[
        "settings",
        "set",
        "--names",
        "localhost",
        "--ips",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]);

    let (leaf, key) = server(&company, "localhost", 365);
    let good_chain = write(dir.path(), "good.pem", &format!("{leaf}{}", company.pem));
    let good_key = write(dir.path(), "good.key", &key);
    let (code, _, err) = parent.cli(&[
        "settings",
        "set",
        "--parent-cert",
        s(&good_chain),
        "--parent-cert-key",
        s(&good_key),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("run `certs generate` first"), "{err}");
    parent.certify(2, Duration::from_secs(60));
    let served_before = std::fs::read(parent.cert_file(CertFile::ParentPem)).unwrap();

    // Refused, each with its reason, and nothing replaced.
    let (_, other_key) = server(&company, "localhost", 365);
    let wrong_key = write(dir.path(), "wrong.key", &other_key);
    let (elsewhere, elsewhere_key) = server(&company, "other.example", 365);
    let (long, long_key) = server(&company, "localhost", 800);
    let middle = intermediate("company issuing CA", &company);
    let (short, short_key) = server(&middle, "localhost", 365);
    for (chain, key, needle) in [
        (
            good_chain.clone(),
            wrong_key,
            "the key does not belong to the certificate",
        ),
        (
            write(
                dir.path(),
                "elsewhere.pem",
                &format!("{elsewhere}{}", company.pem),
            ),
            write(dir.path(), "elsewhere.key", &elsewhere_key),
            "does not name localhost",
        ),
        (
            write(dir.path(), "long.pem", &format!("{long}{}", company.pem)),
            write(dir.path(), "long.key", &long_key),
            "valid 800 days; 398 is the most",
        ),
        (
            write(dir.path(), "short.pem", &format!("{short}{}", middle.pem)),
            write(dir.path(), "short.key", &short_key),
            "add the certificates up to the root",
        ),
    ] {
        let (code, _, err) = parent.cli(&[
            "settings",
            "set",
            "--parent-cert",
            s(&chain),
            "--parent-key",
            s(&key),
        ]);
        assert_ne!(code, 0, "{} was accepted", chain.display());
        assert!(err.contains(needle), "{}: {err}", chain.display());
        assert_eq!(
            std::fs::read(parent.cert_file(CertFile::ParentPem)).unwrap(),
            served_before,
            "a refused certificate replaced the SSL port's"
        );
    }

    // The good one, served from the next handshake.
    parent.cli_ok(&[
        "settings",
        "set",
        "--parent-cert",
        s(&good_chain),
        "--parent-key",
        s(&good_key),
    ]);
    let child = child_layout(dir.path(), "own-1");
    let output = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(&root_pem)
        .arg("-cert")
        .arg(child.chain())
        .arg("-key")
        .arg(child.key())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(said.contains("Verification: OK"), "{said}");

    // The child given the root passes; the other cannot know the issuer.
    let (code, out, err) = parent.cli(&["verify", "--json", "--step-timeout", "30s"]);
    assert_eq!(
        code, 4,
        "one child cannot verify the own certificate: {out}{err}"
    );
    let status = parent.status_json().unwrap();
    let result = |name: &str| -> Value {
        status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["last_result"]
            .clone()
    };
    assert_eq!(result("own-1")["state"], "passed", "{}", result("own-1"));
    assert_eq!(result("own-2")["state"], "failed", "{}", result("own-2"));
    assert_eq!(
        result("own-2")["ssl_port"]["cause"],
        "unknown_issuer",
        "{}",
        result("own-2")
    );

    // The doctor, from the child without the root, says what to do.
    let output = Command::new(program("fleetls-child"))
        .args([
            "doctor",
            &format!("127.0.0.1:{port}"),
            "--json",
            "--data-dir",
        ])
        .arg(dir.path().join("own-2"))
        .env_remove("FLEETLS_DATA_DIR")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let fixes: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["fix"].as_str())
        .collect();
    assert!(
        fixes.iter().any(|f| f.contains("--trust-bundle")),
        "{report}"
    );
}
