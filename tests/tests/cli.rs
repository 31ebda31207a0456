//! The operator's CLI as a process: every operation has `--help` text that
//! explains it, `verify` shows its progress line and summary and exits 4
//! when a child fails, `--json` prints JSON scripts can read, and the
//! campaign can be followed again with `campaign`.

use std::process::Command;
use std::time::Duration;

use fleetls_tests::{free_port, program, start_child, wait_for, Parent, Vhost};

const OPERATIONS: &[&str] = &[
    "serve",
    "status",
    "settings",
    "certs",
    "verify",
    "reverify",
    "switch",
    "switch-broker",
    "force-switch",
    "without-ssl",
    "export",
    "broker-tls",
    "doctor",
    "campaign",
];

#[test]
fn every_operation_explains_itself() {
    let top = Command::new(program("fleetls-parent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(top.status.success());
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    for op in OPERATIONS {
        assert!(top.contains(op), "`--help` does not list {op}:\n{top}");
        let help = Command::new(program("fleetls-parent"))
            .args([op, "--help"])
            .output()
            .unwrap();
        assert!(help.status.success(), "{op} --help failed");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.lines().count() > 3,
            "{op} --help says too little:\n{text}"
        );
    }
    let child = Command::new(program("fleetls-child"))
        .arg("--help")
        .output()
        .unwrap();
    let child = String::from_utf8_lossy(&child.stdout).into_owned();
    for op in ["run", "swarm", "doctor"] {
        assert!(
            child.contains(op),
            "fleetls-child --help does not list {op}"
        );
    }
    let unknown = Command::new(program("fleetls-parent"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn verify_shows_progress_and_summary_and_json_reads_back() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "30"]);
    let _good = start_child(&vhost, dir.path(), "good-1", &[]);
    let _bad = start_child(&vhost, dir.path(), "bad-1", &["--location", "far"]);
    // A local parent registered at "far" that never serves: bad-1's SSL
    // port test goes to a closed port.
    let far = start_child(
        &vhost,
        dir.path(),
        "far-parent",
        &[
            "--kind",
            "local-parent",
            "--location",
            "far",
            "--hostnames",
            "localhost",
            "--report-version",
            "0.1.0",
        ],
    );
    wait_for("three agents online", Duration::from_secs(30), || {
        let status = parent.status_json().ok()?;
        (status["network"]["online"] == 3).then_some(())
    });
    // Accepted by the operator (a local parent never is automatically), so
    // it is bad-1's SSL target.
    let (code, _, err) = parent.cli(&["agents", "accept", "far-parent"]);
    assert_eq!(code, 0, "{err}");
    far.signal("TERM");
    let port = free_port().to_string();
    let lp_port = free_port().to_string();
    let (code, _, err) = parent.cli(&[
        "settings",
        "set",
        "--names",
        "localhost",
        "--ips",
        "127.0.0.1",
        "--port",
        &port,
        "--local-parent-port",
        &lp_port,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = parent.cli(&["certs", "generate", "--ignore-old"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = parent.cli(&["certs", "send", "--json"]);
    assert_eq!(code, 0, "{err}");
    let sent: serde_json::Value = serde_json::from_str(&out).expect("certs send --json is JSON");
    assert_eq!(sent["queued"], 2, "{sent}");
    assert_eq!(sent["not_eligible"], 1, "{sent}");
    wait_for("two certificates", Duration::from_secs(30), || {
        let status = parent.status_json().ok()?;
        (status["network"]["children_with_certificates"] == 2).then_some(())
    });

    // Not a terminal: the progress comes as whole lines on stderr.
    let (code, out, err) = parent.cli(&["verify", "--step-timeout", "10s", "--concurrency", "1"]);
    assert_eq!(code, 4, "one child fails, so verify exits 4\n{out}\n{err}");
    assert!(
        err.contains("2/2 done") && err.contains("passed 1") && err.contains("failed 1"),
        "{err}"
    );
    assert!(err.contains("elapsed") && err.contains("ETA"), "{err}");
    assert!(out.contains("Summary of the SSL switchover test"), "{out}");
    assert!(out.contains("properly passed:            1"), "{out}");
    assert!(out.contains("bad-1") && out.contains("refused"), "{out}");

    let (code, out, _) = parent.cli(&["campaign", "--json"]);
    assert_eq!(code, 0);
    let progress: serde_json::Value = serde_json::from_str(&out).expect("campaign --json is JSON");
    assert_eq!(progress["state"], "finished");
    assert_eq!(progress["total"], 2);
    assert_eq!(progress["max_acting"], 1);

    let (code, out, err) = parent.cli(&["reverify", "--json", "--step-timeout", "10s"]);
    assert_eq!(code, 4, "{err}");
    let result: serde_json::Value = serde_json::from_str(&out).expect("reverify --json is JSON");
    assert_eq!(
        result["campaign"]["total"], 1,
        "only the failed child: {result}"
    );
    assert_eq!(result["summary"]["with_errors"], 1, "{result}");
    assert_eq!(result["summary"]["passed"], 1, "{result}");
}
