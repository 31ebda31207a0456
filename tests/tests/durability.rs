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

use fleetls_tests::{free_port, program, wait_for, ChildLayout, Parent, PrivateNode, Proc, Vhost};

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
        let files = ChildLayout::new(&dir);
        let Ok(identity) = std::fs::read_to_string(files.identity()) else {
            continue;
        };
        let identity: toml::Value = toml::from_str(&identity).unwrap();
        let id = identity["id"].as_str().unwrap();
        let on_disk = std::fs::read_to_string(files.chain())
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
    let failed = parent.registry_query(&format!(
        "SELECT step || ': ' || coalesce(cause, '-') || ': ' || message FROM step_results
         WHERE campaign = '{campaign}' AND ok = 0 LIMIT 5;"
    ));
    assert_eq!(
        results,
        format!("{0}|{0}|{0}", 2 * count),
        "step results (rows|distinct|passed); failed ones:\n{failed}"
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

/// Certificates issued and still valid, read from the registry: with the
/// broker or the parent down it is what was done before.
fn issued(parent: &Parent) -> u64 {
    parent
        .registry_query("SELECT count(*) FROM certificates WHERE revoked = 0;")
        .parse()
        .expect("a count")
}

/// Children holding a valid certificate by their own report, read from the
/// registry (what `children_with_certificates` counts), for when the parent
/// is down.
fn held(parent: &Parent) -> u64 {
    parent
        .registry_query(
            "SELECT count(*) FROM agents WHERE has_certificate AND EXISTS
               (SELECT 1 FROM certificates c WHERE c.agent_id = agents.id AND c.revoked = 0);",
        )
        .parse()
        .expect("a count")
}

/// The newest verify campaign's state and how many of its children
/// passed, from the registry.
fn verify_progress(parent: &Parent) -> (String, u64) {
    let row = parent.registry_query(
        "SELECT c.state || '|' || (SELECT count(*) FROM campaign_children k
           WHERE k.campaign = c.id AND k.state = 'passed')
         FROM campaigns c WHERE c.kind = 'verify' ORDER BY c.started_at DESC LIMIT 1;",
    );
    let (state, passed) = row.split_once('|').unwrap_or_else(|| panic!("{row:?}"));
    (state.to_owned(), passed.parse().expect("a count"))
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
    let swarm = swarm(&vhost, dir.path(), COUNT);
    prepare(&parent, COUNT);

    parent.cli_ok(&["certs", "send"]);
    let at_stop = wait_for("the first certificates", Duration::from_secs(120), || {
        let n = certified(&parent);
        (n > 0).then_some(n)
    });
    // The children are frozen first, so that the broker's stop (which
    // takes seconds) lands while they still have certificates to install
    // however fast this machine is; they go on after it is back.
    swarm.signal("STOP");
    node.run("stop", None, None);
    // With the broker down no child can report: what status counts now is
    // what was installed when it stopped (signing alone is quick: most
    // certificates are issued by then, and lost in the queues with it).
    let (held, signed) = (certified(&parent), issued(&parent));
    eprintln!(
        "the broker stopped with {held} of {COUNT} children holding a certificate ({at_stop} \
         before the stop), {signed} issued"
    );
    assert!(
        held < COUNT as u64,
        "the broker stopped after every child held its certificate: nothing was interrupted"
    );
    node.run("start", None, None);
    swarm.signal("CONT");
    wait_for("every child certified", Duration::from_secs(600), || {
        (certified(&parent) == COUNT as u64).then_some(())
    });
    assert_one_valid_certificate_each(&parent, &dir.path().join("swarm"), COUNT);

    let verify = parent
        .command(&VERIFY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let at_stop = wait_for("the first results", Duration::from_secs(120), || {
        let n = passed(&parent);
        (n > 0).then_some(n)
    });
    swarm.signal("STOP");
    node.run("stop", None, None);
    let (state, done) = verify_progress(&parent);
    eprintln!(
        "the broker stopped with {at_stop} of {COUNT} children passed per status, \
         {done} in the registry, campaign {state}"
    );
    assert!(
        done < COUNT as u64 && state != "finished",
        "the broker stopped after the verify ended ({done} of {COUNT} passed, {state}): \
         nothing was interrupted"
    );
    node.run("start", None, None);
    swarm.signal("CONT");
    let output = verify.wait_with_output().unwrap();
    let said = format!(
        "verify: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Every child has its result: none lost with the broker's queues. A
    // child frozen in the middle of its TLS handshake with the SSL port
    // (the port gives a handshake 10 s, the step at most 30 s) rightly
    // fails that step when it goes on — at most the 200 acting then, and
    // only at the connection over the SSL port; the operator's next verify
    // passes them.
    let campaign: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{said}"));
    assert_eq!(
        campaign["campaign"]["did_not_participate"], 0,
        "a child never got or never answered its step: {said}"
    );
    let frozen = frozen_mid_handshake(&parent, &campaign, 200);
    eprintln!("{frozen} children failed the SSL port step, frozen in its handshake");
    assert!(
        output.status.code() == Some(if frozen == 0 { 0 } else { 4 }),
        "{said}"
    );
    if frozen > 0 {
        let (code, out, err) = parent.cli(&VERIFY);
        let again: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let not_passed = not_passed(&parent, again["campaign"]["id"].as_str().unwrap_or(""));
        assert!(
            code == 0 && again["summary"]["passed"] == COUNT,
            "the next verify passes every child (exit {code}): {out}\n{err}\nnot passed:\n{not_passed}"
        );
    }
    assert_one_result_per_step(&parent, COUNT);
    assert_one_valid_certificate_each(&parent, &dir.path().join("swarm"), COUNT);
}

/// The verify of the broker-restart test: a step may wait out the stop.
const VERIFY: [&str; 6] = [
    "verify",
    "--json",
    "--step-timeout",
    "300s",
    "--concurrency",
    "200",
];

/// The children of campaign `id` that did not pass, one a line:
/// `agent: state at step: message`.
fn not_passed(parent: &Parent, id: &str) -> String {
    parent.registry_query(&format!(
        "SELECT k.agent || ': ' || k.state || ' at ' || coalesce(k.step, '-') || ': '
            || coalesce(k.message, '')
         FROM campaign_children k WHERE k.campaign = '{id}' AND k.state != 'passed';"
    ))
}

/// How many children of `campaign` (verify's JSON) failed; checks that
/// each failed at the connection over the SSL port and that they are at
/// most `acting` (those that can have been in the middle of it).
fn frozen_mid_handshake(parent: &Parent, campaign: &serde_json::Value, acting: u64) -> u64 {
    let id = campaign["campaign"]["id"].as_str().expect("a campaign id");
    let rows = not_passed(parent, id);
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(
        rows.len() as u64,
        campaign["campaign"]["failed"].as_u64().unwrap(),
        "the registry's failed children against the campaign's count: {rows:#?}"
    );
    for row in &rows {
        assert!(
            row.contains(": failed at ssl-port: Failed to establish connection over the SSL port"),
            "a child failed otherwise than by its frozen handshake: {row}"
        );
    }
    assert!(
        rows.len() as u64 <= acting,
        "{} children failed, more than the {acting} acting at once: {rows:#?}",
        rows.len()
    );
    rows.len() as u64
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

    // Kills the parent `after` ms and, while it is down, reads `at_kill`
    // from the registry (what was done when it died); then starts it again.
    let kill_and_restart =
        |parent: &mut Parent, phase: &str, after: u64, at_kill: &dyn Fn(&Parent) -> String| {
            std::thread::sleep(Duration::from_millis(after));
            parent.proc.signal("KILL");
            assert!(
                parent.proc.wait_exit(Duration::from_secs(30)).is_some(),
                "the parent survived SIGKILL"
            );
            let done = at_kill(parent);
            eprintln!("{phase}: SIGKILL after {after} ms: {done}");
            parent.restart(&vhost, &extra);
            done
        };
    // `certs send` until the parent takes it: the one refusal allowed is
    // that a parent just started is not connected to the broker yet.
    let send = |parent: &Parent| {
        wait_for("certs send accepted", Duration::from_secs(60), || {
            let (code, out, err) = parent.cli(&["certs", "send"]);
            if code != 0 && err.contains("not connected to the broker right now") {
                return None;
            }
            assert_eq!(code, 0, "certs send: {out}{err}");
            Some(())
        })
    };

    // Send information, then SIGKILL: an operator whose command was lost
    // runs it again. Each kill lands with the registry telling how far
    // issuance got; the first lands within 100 ms of the first certificate
    // signed (500 children are certified within a second on an idle
    // machine: a random moment of seconds would often come after it all),
    // the others at a random moment of up to 2.7 s.
    let mut held_at_kill = Vec::new();
    for kill in 0..KILLS {
        send(&parent);
        let after = if kill == 0 {
            let started = std::time::Instant::now();
            while issued(&parent) == 0 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no certificate was issued within 60 s of certs send"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            random_below(100)
        } else {
            200 + random_below(2500)
        };
        let n = kill_and_restart(&mut parent, "issuance", after, &|p| {
            format!("{} held, {} issued", held(p), issued(p))
        });
        held_at_kill.push(n);
    }
    // While issuing: something issued already, not yet held by everyone.
    let mid_issuance = |at: &String| {
        let numbers: Vec<u64> = at
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        let [held, issued] = numbers[..] else {
            panic!("{at:?} is not \"N held, M issued\"")
        };
        issued > 0 && held < COUNT as u64
    };
    assert!(
        held_at_kill.iter().any(mid_issuance),
        "no SIGKILL landed while certificates were being issued: {held_at_kill:?} of {COUNT}"
    );
    send(&parent);
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
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the campaign started", Duration::from_secs(60), || {
        let n = parent.registry_query("SELECT count(*) FROM campaigns WHERE kind = 'verify';");
        (n == "1").then_some(())
    });
    let mut at_kill = Vec::new();
    for kill in 0..KILLS {
        // The first within a second of the campaign's start, to land while
        // it runs however fast this machine is.
        let after = if kill == 0 {
            random_below(1000)
        } else {
            200 + random_below(2500)
        };
        at_kill.push(kill_and_restart(&mut parent, "verify", after, &|p| {
            let (state, passed) = verify_progress(p);
            format!("{passed} of {COUNT} passed, campaign {state}")
        }));
    }
    assert!(
        !at_kill[0].ends_with("finished"),
        "the first SIGKILL landed after the campaign finished: {at_kill:?}"
    );
    // The verify that started the campaign either follows it across the
    // parent's deaths to its end (0, every child passed) or loses the
    // parent under a request (1, saying so); nothing else. The campaign's
    // end is read from the registry below either way.
    let output = verify.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {
            let report: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("verify --json: {e}: {out}"));
            let campaign = &report["campaign"];
            assert_eq!(campaign["state"], "finished", "{report}");
            assert_eq!(campaign["passed"], COUNT, "{report}");
            assert_eq!(campaign["failed"], 0, "{report}");
        }
        Some(1) => assert!(
            err.contains("cannot reach the parent's admin API"),
            "verify exited 1 for another reason: {out}\n{err}"
        ),
        code => panic!("verify exited with {code:?}: {out}\n{err}"),
    }
    eprintln!("verify exited with {:?}", output.status.code());
    wait_for("every child passed", Duration::from_secs(600), || {
        let state = parent.registry_query(
            "SELECT state FROM campaigns WHERE kind = 'verify' ORDER BY started_at DESC LIMIT 1;",
        );
        (state == "finished").then_some(())
    });
    assert_one_result_per_step(&parent, COUNT);
    assert_one_valid_certificate_each(&parent, &dir.path().join("swarm"), COUNT);
}
