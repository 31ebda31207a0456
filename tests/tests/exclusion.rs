//! Keeping an agent on plain AMQP by decision (`agents exclude NAME
//! --reason TEXT`): the excluded child takes part in no campaign and no
//! switch, is counted as excluded (never as an error or absent), and
//! `without-ssl` lists it with the operator's reason; a bad reason is
//! refused with what to do; `agents include` takes it back.

use std::time::Duration;

use fleetls_tests::{start_child, Parent, Vhost};
use serde_json::Value;

const REASON: &str = "pin pad firmware 2.1 cannot do TLS until the vendor update";

fn agent<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == name))
        .unwrap_or_else(|| panic!("{name} is not in the status: {status}"))
}

#[test]
fn an_excluded_child_stays_plain_is_counted_as_excluded_and_comes_back_when_included() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let names = ["ex-1", "ex-2", "ex-3"];
    let _children: Vec<_> = names
        .iter()
        .map(|n| start_child(&vhost, dir.path(), n, &[]))
        .collect();
    parent.wait_online(&names);
    parent.settings_loopback(&[]);
    parent.certify(3, Duration::from_secs(60));

    // A reason is required, one plain line, not too long.
    let (code, _, err) = parent.cli(&["agents", "exclude", "ex-2", "--reason", "   "]);
    assert_ne!(code, 0);
    assert!(err.contains("--reason TEXT"), "{err}");
    let (code, _, err) = parent.cli(&["agents", "exclude", "ex-2", "--reason", "a\nb"]);
    assert_ne!(code, 0);
    assert!(err.contains("control characters"), "{err}");
    let long = "x".repeat(201);
    let (code, _, err) = parent.cli(&["agents", "exclude", "ex-2", "--reason", &long]);
    assert_ne!(code, 0);
    assert!(err.contains("keep it to 200"), "{err}");
    let (code, _, err) = parent.cli(&["agents", "exclude", "nobody", "--reason", REASON]);
    assert_ne!(code, 0);
    assert!(err.contains("no agent is called \"nobody\""), "{err}");
    let status = parent.status_json().unwrap();
    assert!(
        agent(&status, "ex-2")["excluded"].is_null(),
        "a refused exclusion changed nothing"
    );

    let out = parent.cli_ok(&["agents", "exclude", "ex-2", "--reason", REASON]);
    assert_eq!(out.trim(), "exclude: ex-2");

    // Verify takes the two others; the excluded one is counted as such.
    let (code, out, err) = parent.cli(&["verify", "--json", "--step-timeout", "30s"]);
    assert_eq!(code, 0, "{err}");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["campaign"]["total"], 2, "{result}");
    let summary = &result["summary"];
    assert_eq!(
        (
            &summary["passed"],
            &summary["excluded"],
            &summary["with_errors"],
            &summary["did_not_participate"]
        ),
        (
            &Value::from(2),
            &Value::from(1),
            &Value::from(0),
            &Value::from(0)
        ),
        "{summary}"
    );
    let status = parent.status_json().unwrap();
    assert_eq!(agent(&status, "ex-2")["excluded"], REASON);
    assert!(agent(&status, "ex-2")["last_result"].is_null());
    let table = parent.cli_ok(&["status"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("ex-2 "))
        .unwrap_or_else(|| panic!("no row for ex-2:\n{table}"));
    assert!(
        row.contains("excluded") && row.contains("pin pad firmware"),
        "{row}"
    );
    assert!(table.contains("excluded 1"), "{table}");

    // The switch leaves it on plain; without-ssl says why.
    let (code, _, err) = parent.cli(&["switch", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status = parent.status_json().unwrap();
    assert_eq!(agent(&status, "ex-1")["ssl"], true);
    assert_eq!(agent(&status, "ex-3")["ssl"], true);
    assert_eq!(agent(&status, "ex-2")["ssl"], false);
    let without = parent.cli_json(&["without-ssl"]);
    let listed: Vec<(&str, &str)> = without["not_switched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["why"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("ex-2", format!("excluded: {REASON}").as_str())]);

    // The final broker configuration is refused while the two others are
    // not on AMQPS; the excluded one is not among those it would cut off.
    let tls = dir.path().join("broker-tls");
    let out = parent.cli_ok(&[
        "broker-tls",
        "--out",
        tls.to_str().unwrap(),
        "--amqps-bind",
        "127.0.0.1",
    ]);
    assert!(out.contains("2 agent(s) would be cut off"), "{out}");
    assert!(
        out.contains("  ex-1: not on AMQPS yet") && out.contains("  ex-3: not on AMQPS yet"),
        "{out}"
    );
    assert!(!out.contains("ex-2"), "{out}");
    assert!(!tls.join("rabbitmq-final.conf").exists());
    assert!(tls.join("rabbitmq-migration.conf").exists());

    // Included again, it takes part in the next campaign.
    let out = parent.cli_ok(&["agents", "include", "ex-2"]);
    assert_eq!(out.trim(), "include: ex-2");
    let (code, out, err) = parent.cli(&["verify", "--json", "--step-timeout", "30s"]);
    assert_eq!(code, 0, "{err}");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["campaign"]["total"], 3, "{result}");
    assert_eq!(result["summary"]["excluded"], 0, "{result}");
}
