//! The registry is the record, the broker is the wire: the parent's
//! commands are transient, so a broker restart drops every command waiting
//! in a queue, and a parent killed with SIGKILL forgets what it was sending.
//! Nothing may be lost either way. Each test runs on a RabbitMQ node of its
//! own (ports 5811-5818, so other tests are not disturbed) and checks, from
//! the registry and the children's own files, that every child ends holding
//! exactly one valid certificate — the one on its disk — and exactly one
//! result per step. Not timed: speed is `scripts/bench`'s job.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleetls_tests::{free_port, program, wait_for, Parent, PrivateNode, Proc, Vhost};

/// A node of this file: `dur-broker` restarts, `dur-parent` hosts the
/// parent that is killed.
fn node(name: &'static str, base: u16) -> PrivateNode {
    PrivateNode {
        name,
        amqp: base,
        mgmt: base + 10000,
        amqps: base + 1,
        prometheus: base + 10002,
    }
}

/// `count` simulated children on `vhost`, data under `dir/swarm`.
fn swarm(vhost: &Vhost, dir: &Path, count: usize) -> Proc {
    let args: Vec<String> = [
        "swarm",
        "--broker",
        &vhost.url(),
        "--data-dir",
        dir.join("swarm").to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--heartbeat",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::spawn(&program("fleetls-child"), &args, dir.join("swarm.log"))
}

/// Settings and a CA, then waits until `count` children are online.
fn prepare(parent: &Parent, count: usize) {
    wait_for("every child online", Duration::from_secs(300), || {
        let status = parent.status_json().ok()?;
        (status["network"]["online"] == count).then_some(())
    });
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
}

fn certified(parent: &Parent) -> u64 {
    parent
        .status_json()
        .ok()
        .and_then(|s| s["network"]["children_with_certificates"].as_u64())
        .unwrap_or(0)
}

/// Every child holds exactly one valid certificate in the registry, and it
/// is the one on the child's disk.
fn assert_one_valid_certificate_each(parent: &Parent, swarm_dir: &Path, count: usize) {
    let rows = parent.registry_query(
        "SELECT agent_id || '|' || count(*) FROM certificates WHERE revoked = 0 GROUP BY agent_id;",
    );
    let valid: BTreeMap<&str, &str> = rows.lines().filter_map(|l| l.split_once('|')).collect();
    assert_eq!(valid.len(), count, "agents with a valid certificate");
    let many: Vec<_> = valid.iter().filter(|(_, n)| **n != "1").collect();
    assert!(
        many.is_empty(),
        "agents with more than one valid certificate: {many:?}"
    );
    let chains = parent.registry_query(
        "SELECT agent_id || '|' || replace(chain_pem, char(10), '~') FROM certificates WHERE revoked = 0;",
    );
    let chains: BTreeMap<&str, &str> = chains.lines().filter_map(|l| l.split_once('|')).collect();
    let mut checked = 0;
    for entry in std::fs::read_dir(swarm_dir).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(identity) = std::fs::read_to_string(dir.join("identity.toml")) else {
            continue;
        };
        let identity: toml::Value = toml::from_str(&identity).unwrap();
        let id = identity["id"].as_str().unwrap();
        let on_disk = std::fs::read_to_string(dir.join("certs/agent.pem"))
            .unwrap_or_else(|e| panic!("{}: no certificate ({e})", dir.display()));
        assert_eq!(
            chains.get(id).copied(),
            Some(on_disk.replace('\n', "~").as_str()),
            "{}: the certificate on disk is the agent's one valid certificate",
            dir.display()
        );
        checked += 1;
    }
    assert_eq!(checked, count, "children checked on disk");
}

/// Every child of the last verify has exactly one result per step, all
/// passed, and the campaign counted each child once.
fn assert_one_result_per_step(parent: &Parent, count: usize) {
    let campaign = parent.registry_query(
        "SELECT id FROM campaigns WHERE kind = 'verify' ORDER BY started_at DESC LIMIT 1;",
    );
    let results = parent.registry_query(&format!(
        "SELECT count(*), count(DISTINCT agent || '/' || step), sum(ok) FROM step_results
         WHERE campaign = '{campaign}';"
    ));
    assert_eq!(
        results,
        format!("{0}|{0}|{0}", 2 * count),
        "step results (rows|distinct|passed)"
    );
    let children = parent.registry_query(&format!(
        "SELECT state || '=' || count(*) FROM campaign_children WHERE campaign = '{campaign}' GROUP BY state;"
    ));
    assert_eq!(
        children,
        format!("passed={count}"),
        "children of the campaign by state"
    );
}

fn passed(parent: &Parent) -> u64 {
    parent
        .status_json()
        .ok()
        .and_then(|s| s["summary"]["passed"].as_u64())
        .unwrap_or(0)
}

/// The broker stops in the middle of issuance, and again in the middle of a
/// verify campaign, losing every command in the children's queues; when it
/// is back, the parent sends again what each child is owed (after their
/// Hello, and from the campaign's own record) and nothing is lost.
#[test]
fn a_broker_restart_mid_issuance_and_mid_verify_loses_nothing() {
    const COUNT: usize = 2000;
    let node = node("dur-broker", 5811);
    node.run("start", None, None);
    let vhost = Vhost::new_on(&node.addr());
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "300"]);
    let _swarm = swarm(&vhost, dir.path(), COUNT);
    prepare(&parent, COUNT);

    parent.cli_ok(&["certs", "send"]);
    let at_stop = wait_for("the first certificates", Duration::from_secs(120), || {
        let n = certified(&parent);
        (n > 0).then_some(n)
    });
    node.run("stop", None, None);
    node.run("start", None, None);
    eprintln!("the broker stopped with {at_stop} of {COUNT} children certified");
    wait_for("every child certified", Duration::from_secs(600), || {
        (certified(&parent) == COUNT as u64).then_some(())
    });
    assert_one_valid_certificate_each(&parent, &dir.path().join("swarm"), COUNT);

    let verify = parent
        .command(&[
            "verify",
            "--json",
            "--step-timeout",
            "300s",
            "--concurrency",
            "200",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let at_stop = wait_for("the first results", Duration::from_secs(120), || {
        let n = passed(&parent);
        (n > 0).then_some(n)
    });
    node.run("stop", None, None);
    node.run("start", None, None);
    eprintln!("the broker stopped with {at_stop} of {COUNT} children passed");
    let output = verify.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_one_result_per_step(&parent, COUNT);
    assert_one_valid_certificate_each(&parent, &dir.path().join("swarm"), COUNT);
}

/// A pseudo-random number below `n` (the test prints its choices).
fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n)) as u64
}

/// The parent is killed with SIGKILL at random moments of issuance and of a
/// verify campaign, again and again, and started again each time: every
/// child still ends with one valid certificate and one result per step.
#[test]
fn a_parent_killed_at_random_points_loses_nothing() {
    const COUNT: usize = 500;
    const KILLS: usize = 3;
    let node = node("dur-parent", 5815);
    node.run("start", None, None);
    let vhost = Vhost::new_on(&node.addr());
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--offline-after", "300"];
    let mut parent = Parent::start(&vhost, dir.path(), &extra);
    let _swarm = swarm(&vhost, dir.path(), COUNT);
    prepare(&parent, COUNT);

    let kill_and_restart = |parent: &mut Parent, phase: &str| {
        let after = 200 + random_below(2500);
        eprintln!("{phase}: SIGKILL after {after} ms");
        std::thread::sleep(Duration::from_millis(after));
        parent.proc.signal("KILL");
        parent.restart(&vhost, &extra);
    };

    // Send information: an operator whose command failed runs it again.
    for _ in 0..KILLS {
        // It may fail: the parent was just restarted and is not connected
        // to the broker yet, or it is killed while answering.
        let _ = parent.cli(&["certs", "send"]);
        kill_and_restart(&mut parent, "issuance");
    }
    wait_for("certs send accepted", Duration::from_secs(60), || {
        (parent.cli(&["certs", "send"]).0 == 0).then_some(())
    });
    wait_for("every child certified", Duration::from_secs(600), || {
        (certified(&parent) == COUNT as u64).then_some(())
    });
    assert_one_valid_certificate_each(&parent, &dir.path().join("swarm"), COUNT);

    // A verify campaign survives the parent: it resumes where it was.
    let verify = parent
        .command(&[
            "verify",
            "--json",
            "--step-timeout",
            "300s",
            "--concurrency",
            "50",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the campaign started", Duration::from_secs(60), || {
        let n = parent.registry_query("SELECT count(*) FROM campaigns WHERE kind = 'verify';");
        (n == "1").then_some(())
    });
    for _ in 0..KILLS {
        kill_and_restart(&mut parent, "verify");
    }
    drop(verify);
    wait_for("every child passed", Duration::from_secs(600), || {
        let state = parent.registry_query(
            "SELECT state FROM campaigns WHERE kind = 'verify' ORDER BY started_at DESC LIMIT 1;",
        );
        (state == "finished").then_some(())
    });
    assert_one_result_per_step(&parent, COUNT);
    assert_one_valid_certificate_each(&parent, &dir.path().join("swarm"), COUNT);
}
