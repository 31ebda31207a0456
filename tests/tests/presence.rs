//! Presence from the broker: an agent is online while it consumes its
//! queue, as RabbitMQ's event exchange says, not while it chatters. The
//! parent runs with `--offline-after 600`: from reports alone a killed
//! child would stay online for ten minutes, so only the broker can make it
//! offline within the test's deadline. A child frozen with SIGSTOP keeps
//! its connection (and its consumer) but sends nothing: it is flagged
//! silent once its last report is older than `--silent-after`, and the flag
//! goes when it reports again.

use std::time::Duration;

use fleetls_tests::{start_child, wait_for, Parent, Vhost};
use serde_json::Value;

fn agent(parent: &Parent, name: &str) -> Option<Value> {
    let status = parent.status_json().ok()?;
    status["agents"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
}

#[test]
fn online_follows_the_consumer_and_a_connected_agent_that_stops_reporting_is_flagged() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &["--offline-after", "600", "--silent-after", "4s"],
    );
    let till = start_child(&vhost, dir.path(), "till-1", &[]);
    let _other = start_child(&vhost, dir.path(), "till-2", &[]);

    let connected = |name: &str| {
        let a = agent(&parent, name)?;
        (a["online"] == true && a["connected"] == true && a["silent"] == false).then_some(a)
    };
    wait_for("both children connected", Duration::from_secs(60), || {
        connected("till-1").and(connected("till-2"))
    });

    // Frozen: connected still, no report any more.
    till.signal("STOP");
    let frozen = wait_for(
        "the frozen child flagged silent",
        Duration::from_secs(60),
        || {
            let a = agent(&parent, "till-1")?;
            (a["silent"] == true).then_some(a)
        },
    );
    assert_eq!(frozen["connected"], true, "{frozen}");
    assert_eq!(frozen["online"], true, "{frozen}");
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["silent"], 1, "{}", status["network"]);
    let (code, table, _) = parent.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(table.contains("1 SILENT"), "{table}");
    assert!(
        parent
            .metrics()
            .contains("fleetls_agents{state=\"silent\"} 1"),
        "{}",
        parent.metrics()
    );
    // The other child is not flagged: silence is per agent.
    assert_eq!(agent(&parent, "till-2").unwrap()["silent"], false);

    // Thawed: it reports again, the flag goes.
    till.signal("CONT");
    wait_for(
        "the thawed child no longer silent",
        Duration::from_secs(60),
        || connected("till-1"),
    );

    // Gone: its connection closes, its consumer with it; offline within
    // seconds although its last report is fresh.
    till.signal("KILL");
    let gone = wait_for("the killed child offline", Duration::from_secs(30), || {
        let a = agent(&parent, "till-1")?;
        (a["online"] == false).then_some(a)
    });
    assert_eq!(gone["connected"], false, "{gone}");
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["online"], 1, "{}", status["network"]);
    assert_eq!(status["network"]["offline"], 1, "{}", status["network"]);
    // Presence cannot be forged: a `consumer.created` for the gone child,
    // published to the event exchange by the broker's own administrator
    // (the strongest broker user there is), is refused — the exchange is
    // internal — and the child stays offline.
    let till_id = gone["id"].as_str().unwrap().to_owned();
    let events = format!("{}/%2f", fleetls_tests::broker().amqp);
    let forged = fleetls_tests::attack::attack(&[
        "raw",
        "--broker",
        &events,
        "--exchange",
        "amq.rabbitmq.event",
        "--routing-key",
        "consumer.created",
        "--payload-hex",
        "00",
        "--headers",
        &serde_json::json!({
            "vhost": vhost.name,
            "queue": format!("fleetls.agent.{till_id}"),
        })
        .to_string(),
        "--refusal-ok",
    ]);
    assert_eq!(forged["refused"], true, "{forged}");
    assert_eq!(forged["code"], 403, "{forged}");
    // (Nothing to poll for: what must not happen is given a turn of the
    // presence task, 200 ms, five times over.)
    std::thread::sleep(Duration::from_secs(1));
    let still = agent(&parent, "till-1").unwrap();
    assert_eq!(
        (still["online"].clone(), still["connected"].clone()),
        (Value::Bool(false), Value::Bool(false)),
        "{still}"
    );
    // The console's offline filter agrees (SQL, not the status list).
    let page = parent.api_get("/api/agents?filter=offline");
    let names: Vec<&str> = page["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["till-1"], "{page}");

    // Back: a new process on the same data dir consumes again.
    let _again = start_child(&vhost, dir.path(), "till-1", &[]);
    wait_for(
        "the restarted child connected",
        Duration::from_secs(60),
        || connected("till-1"),
    );
}

#[test]
fn a_parent_started_after_its_children_sees_who_is_connected() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(&vhost, dir.path(), &["--offline-after", "600"]);
    let _till = start_child(&vhost, dir.path(), "till-1", &[]);
    let mut gone = start_child(&vhost, dir.path(), "till-2", &[]);
    wait_for("both children online", Duration::from_secs(60), || {
        let status = parent.status_json().ok()?;
        (status["network"]["online"] == 2).then_some(())
    });
    // One child leaves while the parent is down: no event reaches anyone.
    parent.proc.signal("TERM");
    gone.signal("KILL");
    gone.wait_exit(Duration::from_secs(10));
    parent.restart(&vhost, &["--offline-after", "600"]);
    // At start the parent looks at every agent's queue once.
    wait_for(
        "one online, one offline after the restart",
        Duration::from_secs(60),
        || {
            let till = agent(&parent, "till-1")?;
            let left = agent(&parent, "till-2")?;
            (till["connected"] == true && left["online"] == false).then_some(())
        },
    );
}
