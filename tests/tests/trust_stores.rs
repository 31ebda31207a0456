//! Trust stores in the formats an agent's neighbours read: three children
//! run with `--trust-store-format pkcs12`, `jks` and `pem`. Once their
//! certificates are installed, openssl opens `truststore.p12` and
//! `agent.p12` with the password (and refuses a wrong one), the identity in
//! `agent.p12` is the agent's own certificate and key, keytool lists the
//! CA in `truststore.jks` and the key entry in `agent.p12`; files holding a
//! key are 0600; the pem child gets no other file. After a renewal
//! (`certs renew --agent`) the stores hold the new certificate.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fleetls_tests::{child_layout, free_port, start_child, wait_for, CertFile, Parent, Vhost};

const WAIT: Duration = Duration::from_secs(60);

/// Runs a tool; (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The serial of a PEM certificate file, as openssl prints it.
fn serial_of(pem: &Path) -> Option<String> {
    let (ok, out) = run("openssl", &["x509", "-noout", "-serial", "-in", path(pem)]);
    ok.then(|| out.trim().to_owned())
}

/// The public key (PEM) of a private key file.
fn public_key_of(key: &Path) -> String {
    let (ok, out) = run("openssl", &["pkey", "-pubout", "-in", path(key)]);
    assert!(ok, "openssl pkey reads {}: {out}", key.display());
    out
}

/// The serial of the agent's certificate in `agent.p12` (`identity`), read
/// with openssl.
fn p12_serial(identity: &Path, password: &Path, scratch: &Path) -> Option<String> {
    let leaf = scratch.join("leaf.pem");
    let pass = format!("file:{}", path(password));
    let (ok, _) = run(
        "openssl",
        &[
            "pkcs12",
            "-in",
            path(identity),
            "-passin",
            &pass,
            "-nokeys",
            "-clcerts",
            "-out",
            path(&leaf),
        ],
    );
    if !ok {
        return None;
    }
    serial_of(&leaf)
}

fn mode(file: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn pkcs12_and_jks_stores_open_with_openssl_and_keytool_and_follow_a_renewal() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("store.pw");
    std::fs::write(&password, "store-password-1\n").unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let pw = path(&password);
    let store_args = |format: &'static str| {
        [
            "--trust-store-format",
            format,
            "--trust-store-password-file",
            pw,
        ]
    };
    let _p12 = start_child(&vhost, dir.path(), "till-p12", &store_args("pkcs12"));
    let _jks = start_child(&vhost, dir.path(), "till-jks", &store_args("jks"));
    let _pem = start_child(
        &vhost,
        dir.path(),
        "till-pem",
        &["--trust-store-format", "pem"],
    );
    parent.wait_online(&["till-p12", "till-jks", "till-pem"]);
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
    parent.cli_ok(&["certs", "send"]);

    let files = |name: &str| child_layout(dir.path(), name);
    let scratch = tempfile::tempdir().unwrap();
    // The stores follow the certificate: wait until agent.p12 holds the one installed.
    for name in ["till-p12", "till-jks"] {
        wait_for(
            &format!("{name}'s agent.p12 with its certificate"),
            WAIT,
            || {
                let installed = serial_of(&files(name).chain())?;
                (p12_serial(&files(name).identity_p12(), &password, scratch.path())? == installed)
                    .then_some(())
            },
        );
    }
    wait_for("till-pem's certificate", WAIT, || {
        serial_of(&files("till-pem").chain())
    });
    let pass = format!("file:{}", path(&password));

    // PKCS#12: openssl opens both with the password, and only with it.
    let truststore = files("till-p12").truststore_p12();
    let (ok, out) = run(
        "openssl",
        &[
            "pkcs12",
            "-info",
            "-nokeys",
            "-passin",
            &pass,
            "-in",
            path(&truststore),
        ],
    );
    assert!(ok, "openssl opens truststore.p12: {out}");
    let ca_subject = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-subject",
            "-in",
            path(&parent.cert_file(CertFile::CaPem)),
        ],
    )
    .1;
    let ca_cn = ca_subject.trim().rsplit("CN = ").next().unwrap().to_owned();
    assert!(
        out.contains(&ca_cn),
        "truststore.p12 holds the CA {ca_cn}: {out}"
    );
    let (ok, out) = run(
        "openssl",
        &[
            "pkcs12",
            "-info",
            "-nokeys",
            "-passin",
            "pass:not-the-password",
            "-in",
            path(&truststore),
        ],
    );
    assert!(!ok, "a wrong password opens truststore.p12: {out}");
    for name in ["till-p12", "till-jks"] {
        let identity = files(name).identity_p12();
        assert_eq!(mode(&identity), 0o600, "{name}'s agent.p12 holds a key");
        let key_out = scratch.path().join(format!("{name}.key"));
        let (ok, out) = run(
            "openssl",
            &[
                "pkcs12",
                "-in",
                path(&identity),
                "-passin",
                &pass,
                "-nocerts",
                "-nodes",
                "-out",
                path(&key_out),
            ],
        );
        assert!(ok, "openssl reads the key in {name}'s agent.p12: {out}");
        assert_eq!(
            public_key_of(&key_out),
            public_key_of(&files(name).key()),
            "{name}'s agent.p12 holds the agent's own key"
        );
        // keytool too: one key entry with its chain.
        let (ok, out) = run(
            "keytool",
            &[
                "-list",
                "-storetype",
                "PKCS12",
                "-keystore",
                path(&identity),
                "-storepass:file",
                path(&password),
            ],
        );
        assert!(ok, "keytool lists {name}'s agent.p12: {out}");
        assert!(
            out.contains("fleetls-agent") && out.contains("PrivateKeyEntry"),
            "{out}"
        );
    }

    // JKS: keytool lists the CA as a trusted certificate.
    let jks = files("till-jks").truststore_jks();
    let (ok, out) = run(
        "keytool",
        &[
            "-list",
            "-v",
            "-keystore",
            path(&jks),
            "-storepass:file",
            path(&password),
        ],
    );
    assert!(ok, "keytool opens truststore.jks: {out}");
    assert!(
        out.contains("fleetls-ca") && out.contains("trustedCertEntry") && out.contains(&ca_cn),
        "truststore.jks holds the CA {ca_cn}: {out}"
    );

    // pem: the PEM files alone.
    let pem = files("till-pem");
    for other in [
        pem.truststore_p12(),
        pem.truststore_jks(),
        pem.identity_p12(),
    ] {
        assert!(!other.exists(), "the pem child wrote {}", other.display());
    }

    // A renewal: the stores hold the new certificate.
    for name in ["till-p12", "till-jks"] {
        let before = serial_of(&files(name).chain()).unwrap();
        parent.cli_ok(&["certs", "renew", "--agent", name]);
        let renewed = wait_for(&format!("{name} renewed"), WAIT, || {
            let now = serial_of(&files(name).chain())?;
            (now != before).then_some(now)
        });
        wait_for(&format!("{name}'s agent.p12 renewed"), WAIT, || {
            (p12_serial(&files(name).identity_p12(), &password, scratch.path())? == renewed)
                .then_some(())
        });
        assert_eq!(mode(&files(name).identity_p12()), 0o600);
    }
}
