//! The TLS versions and cipher suites of the SSL port are settings (`settings
//! set --min-tls 1.2|1.3 --cipher-suites "A;B"`), inside no certificate, so
//! they change after `certs generate` too and take effect from the next
//! handshake: a TLS 1.3-only port refuses a TLS 1.2-only client (openssl),
//! the doctor names the mismatch and the setting behind it, a child (which
//! offers both) still passes verify, and a suite outside the list is
//! refused. Bad values are refused, naming the setting.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleetls_tests::{free_port, program, start_child, wait_for, ChildLayout, Parent, Vhost};
use serde_json::Value;

/// `openssl s_client` to the SSL port with the child's certificate and
/// `extra` options: whether the handshake completed, and what it printed.
fn s_client(port: u16, child: &Path, extra: &[&str]) -> (bool, String) {
    let files = ChildLayout::new(child);
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

#[test]
fn a_tls13_only_ssl_port_refuses_a_tls12_client_and_the_doctor_says_why() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _child = start_child(&vhost, dir.path(), "tls-1", &[]);
    parent.wait_online(&["tls-1"]);
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
    parent.cli_ok(&["certs", "generate"]);
    parent.cli_ok(&["certs", "send"]);
    wait_for("tls-1's certificate", Duration::from_secs(60), || {
        (parent.agent("tls-1")?["has_certificate"] == true).then_some(())
    });
    let child = dir.path().join("tls-1");
    let (ok, text) = s_client(port, &child, &["-tls1_2"]);
    assert!(ok, "by default TLS 1.2 is accepted: {text}");

    // Bad values name the setting; the frozen settings stay frozen.
    for (args, needle) in [
        (
            vec!["--min-tls", "1.1"],
            "min-tls: \"1.1\" is not a TLS version",
        ),
        (
            vec!["--cipher-suites", "TLS_NOPE"],
            "unknown cipher suite(s) [\"TLS_NOPE\"]",
        ),
        (
            vec![
                "--min-tls",
                "1.3",
                "--cipher-suites",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ],
            "works with TLS 1.3 and above",
        ),
        (
            vec!["--port", "12999"],
            "are inside no certificate issued so far",
        ),
    ] {
        let full: Vec<&str> = ["settings", "set"]
            .into_iter()
            .chain(args.clone())
            .collect();
        let (code, _, err) = parent.cli(&full);
        assert_ne!(code, 0, "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let shown = parent.cli_json(&["settings", "show"]);
    assert_eq!(shown["settings"]["min-tls"], "1.2", "{shown}");

    let set = parent.cli_json(&["settings", "set", "--min-tls", "1.3"]);
    assert_eq!(set["settings"]["min-tls"], "1.3", "{set}");
    let (ok, text) = s_client(port, &child, &["-tls1_2"]);
    assert!(
        !ok,
        "a TLS 1.2-only client got through a TLS 1.3-only port: {text}"
    );
    assert!(text.contains("protocol version"), "{text}");
    let (ok, text) = s_client(port, &child, &["-tls1_3"]);
    assert!(ok, "{text}");

    // The doctor, as a device that speaks only TLS 1.2, names it.
    let output = Command::new(program("fleetls-child"))
        .args([
            "doctor",
            &format!("127.0.0.1:{port}"),
            "--tls-version",
            "1.2",
            "--json",
        ])
        .arg("--data-dir")
        .arg(&child)
        .env_remove("FLEETLS_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let handshake = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "handshake")
        .unwrap_or_else(|| panic!("no handshake check: {report}"));
    assert_eq!(handshake["problem"], "protocol_mismatch", "{report}");
    assert!(
        handshake["fix"].as_str().unwrap().contains("--min-tls"),
        "{report}"
    );

    // A child offers both versions: it still passes.
    let (code, out, err) = parent.cli(&["verify", "--json", "--step-timeout", "30s"]);
    assert_eq!(code, 0, "{out}{err}");

    // Only the suites listed: another one is refused.
    parent.cli_ok(&[
        "settings",
        "set",
        "--cipher-suites",
        "TLS13_AES_256_GCM_SHA384",
    ]);
    let (ok, text) = s_client(
        port,
        &child,
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
    );
    assert!(!ok, "a suite outside the list was accepted: {text}");
    let (ok, text) = s_client(
        port,
        &child,
        &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
    );
    assert!(ok, "{text}");
}
