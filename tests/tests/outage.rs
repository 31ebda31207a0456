//! A broker outage heals by itself: on a RabbitMQ node of its own (so other
//! tests are not disturbed), a parent and three children are online; the node
//! is stopped — the parent's admin API stays up and shows them offline — and,
//! 10 s later, started again. Without any help the parent and the same three
//! child processes reconnect and are online again, and a child started after
//! the outage registers too. The node is stopped at the end, also on failure.

use std::time::{Duration, Instant};

use serde_json::Value;

use fleetls_tests::{connection_names, start_child, wait_for, Parent, PrivateNode, Proc, Vhost};

const AMQP_PORT: u16 = 5782;
const MGMT_PORT: u16 = 15782;
const PROMETHEUS_PORT: u16 = 15783;

/// The private node `outage`; stopped when dropped.
fn node() -> PrivateNode {
    PrivateNode {
        name: "outage",
        amqp: AMQP_PORT,
        mgmt: MGMT_PORT,
        amqps: 5781,
        prometheus: PROMETHEUS_PORT,
    }
}

/// Stops the node; its lock must not be held by another scripts/broker.
fn stop(node: &PrivateNode) {
    let (ok, out) = node.script("stop", None, None);
    assert!(
        !out.contains("another scripts/broker holds"),
        "scripts/broker stop (node outage) found its lock held by another scripts/broker:\n{out}"
    );
    assert!(ok, "scripts/broker stop (node outage) failed:\n{out}");
}

/// How many of `names` a status shows online.
fn online_count_in(status: &Value, names: &[&str]) -> usize {
    let agents = status["agents"].as_array().cloned().unwrap_or_default();
    names
        .iter()
        .filter(|name| {
            agents
                .iter()
                .any(|a| a["name"] == **name && a["online"] == true)
        })
        .count()
}

/// Polls the parent until `names` has `want` agents online; panics after
/// `within` with the last answer of the admin API (status or error).
fn wait_online_count(parent: &Parent, names: &[&str], want: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let last = match parent.status_json() {
            Ok(status) => {
                if online_count_in(&status, names) == want {
                    return;
                }
                status.to_string()
            }
            Err(e) => format!("admin API error: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {want} of {names:?} online; last answer: {last}\nparent log:\n{}",
            parent.proc.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agents_come_back_online_by_themselves_after_a_broker_outage() {
    // Declared first, dropped last: the node outlives every process using it.
    let node = node();
    node.run("start", None, None);
    let dir = tempfile::tempdir().unwrap();
    let vhost = Vhost::new_on(&node.addr());
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "3"]);
    let names = ["till-1", "till-2", "bo-1"];
    let mut children: Vec<Proc> = names
        .iter()
        .map(|name| start_child(&vhost, dir.path(), name, &[]))
        .collect();
    let pids: Vec<u32> = children.iter().map(Proc::pid).collect();
    wait_online_count(&parent, &names, 3, Duration::from_secs(30));
    let ids: Vec<String> = names
        .iter()
        .map(|n| parent.agent(n).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();

    // The broker goes away.
    stop(&node);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", AMQP_PORT)).is_err(),
        "the AMQP port still answers after scripts/broker stop"
    );
    // The parent's admin API stays up and sees them go offline.
    wait_online_count(&parent, &names, 0, Duration::from_secs(30));

    // The outage lasts 10 s (the scenario, not a synchronisation).
    std::thread::sleep(Duration::from_secs(10));
    node.run("start", None, None);

    // Everyone comes back without help: the same processes, online again.
    wait_online_count(&parent, &names, 3, Duration::from_secs(90));
    for ((child, pid), name) in children.iter_mut().zip(&pids).zip(&names) {
        assert_eq!(child.pid(), *pid);
        assert_eq!(
            child.wait_exit(Duration::from_millis(100)),
            None,
            "{name} exited instead of reconnecting:\n{}",
            child.output()
        );
    }
    for (name, id) in names.iter().zip(&ids) {
        assert_eq!(
            parent.agent(name).unwrap()["id"].as_str(),
            Some(id.as_str()),
            "{name} came back as another agent"
        );
    }
    // A child's connection is named `fleetls-child:<id> (<name>)`.
    let mut expected: Vec<String> = ids
        .iter()
        .map(|id| format!("fleetls-child:{id} ("))
        .collect();
    expected.push("fleetls-parent".into());
    wait_for(
        "the parent and the 3 children connected to the restarted node",
        Duration::from_secs(30),
        || {
            let listed = connection_names(&vhost)?;
            expected
                .iter()
                .all(|e| listed.iter().any(|l| l.starts_with(e.as_str())))
                .then_some(())
        },
    );

    // A child started after the outage registers too.
    let _late = start_child(&vhost, dir.path(), "after-outage", &[]);
    wait_for("the new child online", Duration::from_secs(30), || {
        (parent.agent("after-outage")?["online"] == true).then_some(())
    });
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["agents"], 4, "{status}");
}
