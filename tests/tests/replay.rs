//! The parent's replay counter, attacked and measured from outside.
//!
//! Every child → parent message carries its agent's `seq`, strictly
//! increasing and covered by the agent's signature; the parent keeps only
//! the highest it handled for each agent (`agents.last_seq`). A captured
//! message of a genuine child, replayed exactly through raw AMQP by
//! `tests/attacks/fleetls_attack.py`, is acked and changes nothing, and is
//! counted; raising its `seq` breaks the signature. And since nothing is
//! kept per message, the registry does not grow while children report.

use fleetls_tests::attack::{attack, capture_setup, hello, Net, WAIT};
use fleetls_tests::wait_for;
use serde_json::{json, Value};

/// The replayed messages the parent counted (`/metrics`).
fn replayed(net: &Net) -> u64 {
    net.metric("fleetls_replayed_messages_total")
        .expect("/metrics counts replayed messages")
}

/// The replay counter the registry holds for agent `id`.
fn last_seq(net: &Net, id: &str) -> u64 {
    let text = net.sql(&format!("SELECT last_seq FROM agents WHERE id = '{id}'"));
    text.parse()
        .unwrap_or_else(|e| panic!("last_seq of {id}: {text:?}: {e}"))
}

/// How many rows the registry holds, over all its tables.
fn total_rows(net: &Net) -> u64 {
    let tables =
        net.sql("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'");
    let counts: Vec<String> = tables
        .lines()
        .map(|table| format!("(SELECT count(*) FROM \"{table}\")"))
        .collect();
    assert!(!counts.is_empty(), "the registry has tables");
    let text = net.sql(&format!("SELECT {}", counts.join(" + ")));
    text.parse()
        .unwrap_or_else(|e| panic!("row count {text:?}: {e}"))
}

#[test]
fn a_captured_child_message_replayed_changes_nothing_and_is_counted() {
    let net = Net::start(&[]);
    let url = net.url();
    // The attacker copies everything sent to the parent.
    let spy = capture_setup(&url, "fleetls.parent", "fleetls.parent", "spy");
    assert_eq!(spy["refused"], false, "{spy}");
    let (mut till, id) = net.child("till-1", &["--location", "shop-1"]);
    let captured: Value = wait_for("the till's Hello in the spy queue", WAIT, || {
        let got = attack(&[
            "capture", "--broker", &url, "--queue", "spy", "--count", "0",
        ]);
        got["messages"]
            .as_array()?
            .iter()
            .find(|m| {
                m["decoded"]["from"] == id.as_str() && m["decoded"]["body"]["Hello"].is_object()
            })
            .cloned()
    });
    let old_seq = captured["decoded"]["seq"]
        .as_u64()
        .expect("a child's message carries its seq");
    // The till moves to another shop: its new Hello says so.
    till.signal("TERM");
    assert!(till.wait_exit(WAIT).is_some(), "the till did not stop");
    let (_till, _) = net.child("till-1", &["--location", "shop-2"]);
    let location = || net.sql(&format!("SELECT location FROM agents WHERE id = '{id}'"));
    wait_for("the till's move to shop-2", WAIT, || {
        (location() == "shop-2").then_some(())
    });
    assert!(last_seq(&net, &id) > old_seq);
    let (counted, dead) = (replayed(&net), net.dead_reasons().len());
    // The captured Hello, replayed exactly: the till's own signature, but
    // a seq the parent has passed.
    let payload = captured["payload_hex"].as_str().unwrap();
    let headers = captured["headers"].to_string();
    let replay = |edit: &[&str]| {
        let mut args = vec![
            "replay",
            "--broker",
            &url,
            "--exchange",
            "fleetls.parent",
            "--routing-key",
            "fleetls.parent",
            "--payload-hex",
            payload,
            "--headers",
            &headers,
        ];
        args.extend(edit);
        attack(&args)
    };
    let sent = replay(&[]);
    assert_eq!(sent["changed"], false, "{sent}");
    wait_for("the replay counted", WAIT, || {
        (replayed(&net) > counted).then_some(())
    });
    assert_eq!(
        location(),
        "shop-2",
        "the replayed Hello took the till back to shop-1"
    );
    assert_eq!(
        net.dead_reasons().len(),
        dead,
        "a replay is acked and dropped, not dead-lettered"
    );
    // Made new by a higher seq, or stripped of it: the signature no longer
    // holds.
    let higher = format!("seq={}", u64::MAX >> 2);
    replay(&["--set", &higher]);
    replay(&["--unset", "seq"]);
    net.wait_dead("the two altered replays", "forged:", 2);
    let reasons = net.dead_reasons();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("bad signature"))
            .count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(location(), "shop-2");
    assert!(last_seq(&net, &id) < u64::MAX >> 2);
}

#[test]
fn the_registry_does_not_grow_with_messages() {
    let net = Net::start(&[]);
    // A till reporting its state every second, and an agent of the
    // attacker's client (its own key) sending reports in bulk.
    let (_till, till) = net.child("till-1", &[]);
    let (key, _) = net.attacker_key("bulk");
    let key = key.to_str().unwrap();
    let bulk = uuid::Uuid::new_v4().to_string();
    net.to_parent(
        &bulk,
        "Hello",
        hello("bulk-1", "child", "shop-b", &[]),
        &["--sign-key", key],
    );
    wait_for("both agents registered", WAIT, || {
        (net.sql("SELECT count(*) FROM agents") == "2").then_some(())
    });
    let first = last_seq(&net, &till);
    wait_for("a state report of the till handled", WAIT, || {
        (last_seq(&net, &till) > first).then_some(())
    });
    let rows = total_rows(&net);
    let state = json!({ "state": { "has_certificate": false, "ssl": false, "broker_tls": false } });
    let sent = net.to_parent(
        &bulk,
        "Heartbeat",
        state,
        &["--sign-key", key, "--repeat", "300"],
    );
    let last = sent["seq"].as_u64().expect("the last seq sent");
    wait_for("the 300 reports handled", WAIT, || {
        (last_seq(&net, &bulk) == last).then_some(())
    });
    // And five more of the till's own.
    let mut seen = vec![last_seq(&net, &till)];
    wait_for("five more reports of the till handled", WAIT, || {
        let now = last_seq(&net, &till);
        if now != *seen.last().unwrap() {
            seen.push(now);
        }
        (seen.len() > 5).then_some(())
    });
    assert_eq!(
        total_rows(&net),
        rows,
        "the registry grew with the messages"
    );
    assert!(net.dead_reasons().is_empty(), "{:?}", net.dead_reasons());
}
