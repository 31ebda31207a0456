//! A 2,000-child swarm through issuance, verify and switch against the real
//! broker, with every child's outcome checked (not timed: speed is
//! `scripts/bench`'s job). The swarm's shares are slices in name order:
//! 1% old version, 1% mPOS, 2% failing (their SSL port test goes to a closed
//! port), 1% silent (they never answer), the rest healthy.

use std::time::Duration;

use fleetls_tests::{free_port, program, wait_for, Parent, Proc, Vhost};

const COUNT: usize = 2000;

fn group(i: usize) -> &'static str {
    match i * 100 / COUNT {
        0 => "old",
        1 => "mpos",
        2 | 3 => "failing",
        4 => "silent",
        _ => "healthy",
    }
}

#[test]
fn a_two_thousand_child_swarm_goes_through_issuance_verify_and_switch() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &["--offline-after", "600", "--window", "200"],
    );
    let args: Vec<String> = [
        "swarm",
        "--broker",
        &vhost.url(),
        "--data-dir",
        dir.path().join("swarm").to_str().unwrap(),
        "--count",
        &COUNT.to_string(),
        "--heartbeat",
        "120",
        "--old-share",
        "0.01",
        "--mpos-share",
        "0.01",
        "--failing-share",
        "0.02",
        "--silent-share",
        "0.01",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _swarm = Proc::spawn(
        &program("fleetls-child"),
        &args,
        dir.path().join("swarm.log"),
    );
    wait_for("2,000 children online", Duration::from_secs(300), || {
        let status = parent.status_json().ok()?;
        (status["network"]["online"] == COUNT).then_some(())
    });

    let port = free_port().to_string();
    let (code, _, err) = parent.cli(&[
        "settings",
        "set",
        "--names",
        "localhost",
        "--ips",
        "127.0.0.1",
        "--port",
        &port,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = parent.cli(&["certs", "generate"]);
    assert_eq!(code, 3, "20 old children must stop generation: {err}");
    assert!(err.contains("swarm-0 "), "{err}");
    let (code, _, err) = parent.cli(&["certs", "generate", "--ignore-old"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = parent.cli(&["certs", "send", "--json"]);
    assert_eq!(code, 0, "{err}");
    let sent: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent["queued"], 1960, "{sent}");
    assert_eq!(sent["not_eligible"], 40, "{sent}");
    // Silent children never answer, so 1,940 eligible children get one.
    wait_for("1,940 certificates", Duration::from_secs(300), || {
        let status = parent.status_json().ok()?;
        (status["network"]["children_with_certificates"] == 1940).then_some(())
    });

    let (code, out, err) = parent.cli(&[
        "verify",
        "--json",
        "--step-timeout",
        "60s",
        "--concurrency",
        "200",
    ]);
    assert_eq!(code, 4, "failing children make verify exit 4: {err}");
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["campaign"]["total"], 1940, "{result}");
    assert_eq!(result["summary"]["passed"], 1900, "{result}");
    assert_eq!(result["summary"]["with_errors"], 40, "{result}");
    assert_eq!(result["summary"]["did_not_participate"], 20, "{result}");
    assert_eq!(
        result["summary"]["version_not_supporting_ssl"], 20,
        "{result}"
    );
    assert_eq!(result["summary"]["mpos"], 20, "{result}");
    let most = result["campaign"]["max_acting"].as_u64().unwrap();
    assert!(
        (1..=200).contains(&most),
        "max_acting {most}: nobody acted, or more than the window (200)"
    );

    let (code, _, err) = parent.cli(&["switch", "--json", "--concurrency", "200"]);
    assert_eq!(code, 0, "{err}");

    let status = parent.status_json().unwrap();
    let agents = status["agents"].as_array().unwrap();
    assert_eq!(agents.len(), COUNT);
    for agent in agents {
        let name = agent["name"].as_str().unwrap();
        let i: usize = name.trim_start_matches("swarm-").parse().unwrap();
        let result = &agent["last_result"];
        match group(i) {
            "old" => {
                assert_eq!(agent["ssl_capable"], false, "{name}");
                assert!(result.is_null() && agent["ssl"] == false, "{name}: {agent}");
            }
            "mpos" => {
                assert_eq!(agent["kind"], "mpos", "{name}");
                assert!(result.is_null() && agent["ssl"] == false, "{name}: {agent}");
            }
            "silent" => {
                assert_eq!(agent["has_certificate"], false, "{name}");
                assert!(result.is_null() && agent["ssl"] == false, "{name}: {agent}");
            }
            "failing" => {
                assert_eq!(result["state"], "failed", "{name}: {result}");
                assert_eq!(result["cause"], "refused", "{name}: {result}");
                assert_eq!(result["cert_test"]["ok"], true, "{name}: {result}");
                assert_eq!(agent["ssl"], false, "{name}");
            }
            _ => {
                assert_eq!(result["state"], "passed", "{name}: {result}");
                assert_eq!(
                    result["ssl_port"]["message"],
                    "SSL communication switchover test completed successfully!",
                    "{name}"
                );
                assert_eq!(agent["ssl"], true, "{name} switched to SSL");
            }
        }
    }
    assert_eq!(status["network"]["switched_to_ssl"], 1900);

    // A reader that stops early (`status --json | head`) ends the output
    // quietly: 2,000 agents are far more than a pipe holds.
    let mut reader = std::process::Command::new(program("fleetls-parent"))
        .args(["status", "--json", "--admin", &parent.admin, "--data-dir"])
        .arg(&parent.data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 64];
    std::io::Read::read_exact(reader.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(reader.stdout.take());
    let output = reader.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !err.contains("panicked"),
        "{err}"
    );
}
