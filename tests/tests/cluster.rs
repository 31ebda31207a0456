//! A node lost in the middle of a verify campaign, on a RabbitMQ cluster of
//! three nodes run by `scripts/cluster` (its own name `clu16t` and ports
//! 5970-5972 AMQP, 15970-15972 management, 15973-15975 prometheus,
//! 5973-5975 AMQPS once the nodes have the broker's certificate; Erlang
//! distribution 25970-25972). A parent given no `--queue-type` (it asks
//! management, sees three nodes and chooses quorum queues) and the three
//! nodes' management addresses as one `--management` list, and three swarms
//! of children, each swarm given the broker list
//! starting at another node, so that children sit on all three, and one
//! child of its own (`solo`, on node 2 first). Node 2 is killed (SIGKILL of
//! its Erlang VM) while the campaign runs (held open by stopping one swarm): the campaign finishes, every
//! child is counted exactly once, the children that were on node 2 are back
//! online on the other nodes within a bound, `fleetls.dead` holds nothing,
//! and the parent's status, `cluster` and `/metrics` show node 2 down and
//! where `solo` went. Then node 2 is back and node 1 — the parent's — is
//! killed: the parent moves to another node, its view of the cluster comes
//! from the next management address, and a second verify counts every
//! child once. Then the move to AMQPS: the parent's `broker-tls` files, a
//! rolling restart of the nodes with them (`scripts/cluster restart 1..3`
//! with `FLEETLS_CLUSTER_TLS_DIR`), `switch` and `switch-broker` to the
//! nodes' AMQPS list, and the node with the most children is killed while
//! they move: the campaign completes, each child is counted once, every
//! child ends on AMQPS on a live node (a dry run with the killed node still
//! in the list names it as down), `fleetls.dead` holds nothing but
//! commands that expired in the stopped `solo`'s queue. The cluster is
//! stopped at the end, also on failure.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use fleetls_tests::{
    free_port, http, program, repo, test_dir, wait_for, wait_until, BrokerAddr, Parent, Proc, Vhost,
};

/// The cluster's name: nodes clu16t-1, -2, -3.
const NAME: &str = "clu16t";
/// Node N listens for AMQP on BASE + N - 1, management on BASE + 10000 + N - 1.
const BASE: u16 = 5970;
/// Children per swarm (one swarm per node): 300 in all, with `solo` 301.
const PER_SWARM: usize = 100;
const SWARMS: usize = 3;

/// The three-node cluster of this test; stopped (`scripts/cluster stop`)
/// when dropped.
struct Cluster;

impl Cluster {
    /// Runs `scripts/cluster ARGS` with this cluster's settings: (success,
    /// its output).
    fn script(args: &[&str]) -> (bool, String) {
        Cluster::script_tls(args, None)
    }

    /// [`Cluster::script`] with `FLEETLS_CLUSTER_TLS_DIR` = `tls` when given.
    fn script_tls(args: &[&str], tls: Option<&Path>) -> (bool, String) {
        let mut command = Command::new(repo().join("scripts/cluster"));
        command
            .args(args)
            .env("FLEETLS_CLUSTER_NAME", NAME)
            .env("FLEETLS_CLUSTER_BASE_PORT", BASE.to_string())
            .env_remove("FLEETLS_CLUSTER_DIR")
            .env_remove("FLEETLS_CLUSTER_TLS_DIR")
            .env_remove("FLEETLS_BROKER_EXTRA_CONF");
        if let Some(tls) = tls {
            command.env("FLEETLS_CLUSTER_TLS_DIR", tls);
        }
        let output = command.output().expect("scripts/cluster runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    fn run(args: &[&str]) -> String {
        let (ok, out) = Cluster::script(args);
        assert!(ok, "scripts/cluster {} failed:\n{out}", args.join(" "));
        out
    }

    /// A fresh cluster: what an earlier run left is stopped and removed.
    /// The guard exists before the start, so that a failed start is
    /// stopped too.
    fn start() -> Cluster {
        let (ok, out) = Cluster::script(&["stop"]);
        assert!(ok, "scripts/cluster stop (before start) failed:\n{out}");
        let dir = repo().join("target/cluster").join(NAME);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("the old cluster's folder can be removed");
        }
        let cluster = Cluster;
        Cluster::run(&["start"]);
        cluster
    }

    /// `FLEETLS_CLUSTER_BROKERS` of `scripts/cluster env`, one URL a node.
    fn brokers() -> Vec<String> {
        Cluster::env_list("FLEETLS_CLUSTER_BROKERS")
    }

    /// `FLEETLS_CLUSTER_AMQPS` of `scripts/cluster env`, one URL a node.
    fn amqps() -> Vec<String> {
        Cluster::env_list("FLEETLS_CLUSTER_AMQPS")
    }

    fn env_list(key: &str) -> Vec<String> {
        let env = Cluster::run(&["env"]);
        let prefix = format!("{key}=");
        let line = env
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {key} in:\n{env}"));
        line.split(',').map(str::to_owned).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (ok, out) = Cluster::script(&["stop"]);
        if !ok {
            eprintln!("scripts/cluster stop failed:\n{out}");
        }
    }
}

/// The broker list for `vhost`, starting at node `first` (0-based).
fn list_from(brokers: &[String], vhost: &Vhost, first: usize) -> String {
    (0..brokers.len())
        .map(|i| {
            let url = &brokers[(first + i) % brokers.len()];
            format!("{}/{}", url.trim_end_matches("/%2f"), vhost.name)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The node (e.g. `clu16t-2@localhost`) of each connection to `vhost`
/// whose name starts with `prefix`; `None` when management does not answer.
fn connection_nodes(vhost: &Vhost, prefix: &str) -> Option<Vec<String>> {
    let list = vhost
        .management_try_get("/api/vhosts/{vhost}/connections")
        .ok()?;
    Some(
        list.as_array()?
            .iter()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .filter_map(|c| c["node"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// Node `n`'s (1-3) management base URL, without credentials.
fn management_of(n: u16) -> String {
    format!("http://127.0.0.1:{}", BASE + 10000 + n - 1)
}

/// GET `path` from the first node's management that answers (3, 2, 1):
/// the test's own view must survive a lost node too.
fn live_get(path: &str) -> Option<Value> {
    [3, 2, 1].into_iter().find_map(|n| {
        let response = http()
            .get(format!("{}{path}", management_of(n)))
            .basic_auth("guest", Some("guest"))
            .send()
            .ok()?;
        response
            .status()
            .is_success()
            .then(|| response.json().ok())
            .flatten()
    })
}

/// The fleetls connections of `vhost` whose name starts with `prefix`, as
/// any live node's management lists them.
fn live_connections(vhost: &Vhost, prefix: &str) -> Option<Vec<Value>> {
    let list = live_get(&format!("/api/vhosts/{}/connections", vhost.name))?;
    Some(
        list.as_array()?
            .iter()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .cloned()
            .collect(),
    )
}

/// The first certificate the TLS port `port` on 127.0.0.1 presents, PEM,
/// once it verifies against `ca`.
fn served_leaf(port: u16, ca: &Path) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-showcerts", "-verify_return_error", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate on :{port}: {text}"));
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    assert!(
        text.contains("Verify return code: 0"),
        "the certificate on :{port} does not verify against the CA: {text}"
    );
    format!("{}-----END CERTIFICATE-----\n", &text[start..end])
}

/// The DNS names of a PEM certificate, as `openssl x509` lists them.
fn leaf_names(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Up to `count` messages of `queue` (left in it), as any live node's
/// management shows them.
fn peek_live(vhost: &Vhost, queue: &str, count: usize) -> Vec<Value> {
    [3, 2, 1]
        .into_iter()
        .find_map(|n| {
            let response = http()
                .post(format!(
                    "{}/api/queues/{}/{queue}/get",
                    management_of(n),
                    vhost.name
                ))
                .basic_auth("guest", Some("guest"))
                .json(&serde_json::json!({
                    "count": count, "ackmode": "ack_requeue_true", "encoding": "base64"
                }))
                .send()
                .ok()?;
            response
                .status()
                .is_success()
                .then(|| response.json::<Value>().ok())
                .flatten()
        })
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Polls `f` until it gives a value or `limit` passes (`None` then): for
/// a condition the test acts on rather than fails on.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sends SIGCONT to a held process when dropped (also on failure).
struct Resume<'a>(&'a Proc);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

/// Children connected through node `n` (1-3) now: 25 a swarm connection,
/// one a child's own connection.
fn children_on(vhost: &Vhost, n: u16) -> usize {
    let node = format!("{NAME}-{n}@localhost");
    let on = |prefix: &str| {
        live_connections(vhost, prefix)
            .expect("management answers")
            .iter()
            .filter(|c| c["node"] == node.as_str())
            .count()
    };
    25 * on("fleetls-swarm:") + on("fleetls-child:")
}

/// The children of campaign `campaign` (its JSON) that did not pass, as
/// `name: state at step: cause: message` from the registry, after checking
/// that they are as many as the campaign counts, that each says why, and
/// that at most `may_fail` of them are not named in `allowed` (children
/// known not to take part, e.g. stopped ones).
fn did_not_pass(
    parent: &Parent,
    what: &str,
    campaign: &Value,
    allowed: &[&str],
    may_fail: usize,
) -> Vec<String> {
    let id = campaign["id"].as_str().expect("a campaign id");
    let rows = parent.registry_query(&format!(
        "SELECT coalesce(a.name, k.agent) || ': ' || k.state || ' at ' || coalesce(k.step, '-')
            || ': ' || coalesce(k.cause, '-') || ': ' || replace(coalesce(k.message, ''), char(10), ' ')
         FROM campaign_children k LEFT JOIN agents a ON a.id = k.agent
         WHERE k.campaign = '{id}' AND k.state != 'passed' ORDER BY 1;"
    ));
    let rows: Vec<String> = rows.lines().map(str::to_owned).collect();
    eprintln!(
        "{what}: {} passed, {} did not: {rows:#?}",
        count(campaign, "passed"),
        rows.len()
    );
    assert_eq!(
        rows.len() as u64,
        count(campaign, "failed") + count(campaign, "did_not_participate"),
        "{what}: the registry's children that did not pass, against the campaign's counts: {campaign}"
    );
    for row in &rows {
        assert!(
            !row.ends_with(": "),
            "{what}: a child did not pass and no reason was kept: {row}"
        );
    }
    let others = rows
        .iter()
        .filter(|r| !allowed.iter().any(|a| r.starts_with(&format!("{a}: "))))
        .count();
    assert!(
        others <= may_fail,
        "{what}: {others} children did not pass, at most {may_fail} may: {rows:#?}"
    );
    rows
}

/// The names of [`did_not_pass`]'s rows.
fn names_of(rows: &[String]) -> Vec<String> {
    rows.iter()
        .map(|r| r.split_once(": ").map_or(r.as_str(), |(n, _)| n).to_owned())
        .collect()
}

fn count(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

#[test]
fn a_node_lost_during_verify_the_campaign_completes_and_its_children_move() {
    let cluster = Cluster::start();
    let brokers = Cluster::brokers();
    assert_eq!(brokers.len(), 3, "{brokers:?}");
    let node1 = BrokerAddr::from_urls(
        &brokers[0],
        &format!("http://guest:guest@127.0.0.1:{}", BASE + 10000),
    );
    let vhost = Vhost::new_on(&node1);
    let dir = test_dir();
    let total = PER_SWARM * SWARMS + 1;

    // The parent on node 1 first (node 2 is the one lost), no --queue-type:
    // it asks management. Management is the three nodes', node 1's first.
    let data_dir = dir.path().join("parent");
    let admin = format!("127.0.0.1:{}", free_port());
    let managements = (1..=3)
        .map(|n| management_of(n).replace("http://", "http://guest:guest@"))
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<String> = [
        "serve",
        "--broker",
        &list_from(&brokers, &vhost, 0),
        "--management",
        &managements,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--admin",
        &admin,
        "--offline-after",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proc = Proc::spawn(
        &program("fleetls-parent"),
        &args,
        dir.path().join("parent.log"),
    );
    let parent = Parent {
        proc,
        data_dir,
        admin,
    };
    let status = wait_for("the parent's admin API", Duration::from_secs(60), || {
        parent.status_json().ok()
    });
    // The children prove a token, as in every test (`Parent::start` makes it).
    parent.enroll_token(dir.path());
    let choice = &status["network"]["queue_type"];
    assert_eq!(choice["type"], "quorum", "{choice}");
    assert!(
        choice["why"]
            .as_str()
            .is_some_and(|why| why.contains("3 nodes")),
        "{choice}"
    );
    let log = parent.proc.output();
    assert!(
        log.contains("queue type") && log.contains("lists 3 nodes"),
        "the parent's log does not say which queue type it chose and why:\n{log}"
    );
    for name in ["fleetls.parent", "fleetls.dead"] {
        let queue = wait_for(name, Duration::from_secs(60), || {
            let queue = vhost.management_get(&format!("/api/queues/{{vhost}}/{name}"));
            queue.get("type").is_some().then_some(queue)
        });
        assert_eq!(queue["type"], "quorum", "{queue}");
    }

    // Swarm k starts its list at node k: children on all three nodes.
    let swarms: Vec<Proc> = (0..SWARMS)
        .map(|k| {
            let args: Vec<String> = [
                "swarm",
                "--broker",
                &list_from(&brokers, &vhost, k),
                "--data-dir",
                dir.path().join(format!("swarm{k}")).to_str().unwrap(),
                "--count",
                &PER_SWARM.to_string(),
                "--prefix",
                &format!("n{k}"),
                "--per-connection",
                "25",
                "--heartbeat",
                "5",
                "--queue-type",
                "quorum",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            Proc::spawn(
                &program("fleetls-child"),
                &args,
                dir.path().join(format!("swarm{k}.log")),
            )
        })
        .collect();
    // Its own connection, node 2 first (`start_child` takes one URL).
    let solo_args = [
        "run",
        "--broker",
        &list_from(&brokers, &vhost, 1),
        "--data-dir",
        dir.path().join("solo").to_str().unwrap(),
        "--name",
        "solo",
        "--heartbeat",
        "1",
        "--queue-type",
        "quorum",
    ]
    .map(String::from);
    let solo = Proc::spawn(
        &program("fleetls-child"),
        &solo_args,
        dir.path().join("solo.log"),
    );
    wait_for("301 children online", Duration::from_secs(300), || {
        let status = parent.status_json().ok()?;
        (status["network"]["online"] == total).then_some(())
    });
    let nodes = connection_nodes(&vhost, "fleetls-swarm:").expect("management answers");
    for n in 1..=3 {
        let node = format!("{NAME}-{n}@localhost");
        assert!(
            nodes.contains(&node),
            "no swarm connection on {node}: {nodes:?}"
        );
    }
    let agent_queue = vhost
        .management_get("/api/queues/{vhost}")
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|q| {
                    q["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("fleetls.agent."))
                })
                .cloned()
        })
        .expect("an agent queue");
    assert_eq!(agent_queue["type"], "quorum", "{agent_queue}");
    assert_eq!(
        agent_queue["arguments"]["x-queue-leader-locator"], "client-local",
        "{agent_queue}"
    );

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
    wait_for("301 certificates", Duration::from_secs(300), || {
        let status = parent.status_json().ok()?;
        (status["network"]["children_with_certificates"] == total).then_some(())
    });

    parent.cli_ok(&[
        "verify",
        "--detach",
        "--step-timeout",
        "60s",
        "--concurrency",
        "150",
    ]);
    // Swarm 2's children are held (SIGSTOP) until node 2 is gone: the
    // campaign cannot end before (at most 100 of the 150 places are theirs,
    // so the others go on). Node 2 goes once 120 children are done.
    let held = &swarms[2];
    held.signal("STOP");
    let resume = Resume(held);
    wait_for("120 children done", Duration::from_secs(300), || {
        let status = parent.status_json().ok()?;
        let campaign = &status["campaign"];
        let done = campaign["passed"].as_u64()? + campaign["failed"].as_u64()?;
        (done >= 120).then_some(())
    });
    // Only the children the loss touches may fail: those connected
    // through node 2 (swarm 1's and solo's). The held swarm (on node 3)
    // must pass once it is let go.
    let on_node2 = children_on(&vhost, 2);
    Cluster::run(&["kill", "2"]);
    eprintln!("killed node 2 with {on_node2} children connected through it");
    let lost = format!("{NAME}-2@localhost");
    let status = parent.status_json().expect("status");
    assert_eq!(
        status["campaign"]["state"], "running",
        "node 2 was killed during the campaign: {}",
        status["campaign"]
    );
    drop(resume);

    let campaign = wait_for("the campaign to finish", Duration::from_secs(600), || {
        let status = parent.status_json().ok()?;
        (status["campaign"]["state"] == "finished").then(|| status["campaign"].clone())
    });
    assert_eq!(count(&campaign, "total"), total as u64, "{campaign}");
    assert_eq!(
        count(&campaign, "passed")
            + count(&campaign, "failed")
            + count(&campaign, "did_not_participate"),
        total as u64,
        "each child counted once: {campaign}"
    );
    assert_eq!(
        count(&campaign, "acting") + count(&campaign, "waiting"),
        0,
        "{campaign}"
    );
    let failed = did_not_pass(&parent, "verify with node 2 lost", &campaign, &[], on_node2);
    // And those are children of node 2: none of the held swarm (n2-*, on
    // node 3 and let go after the loss), none of swarm 0 (n0-*, on node 1
    // with the parent); the loss touched neither.
    let untouched: Vec<&String> = failed
        .iter()
        .filter(|row| row.starts_with("n2-") || row.starts_with("n0-"))
        .collect();
    assert!(
        untouched.is_empty(),
        "children not connected through node 2 did not pass the verify that lost it: {untouched:#?}"
    );

    // The children of node 2 are back, on nodes 1 and 3.
    wait_for(
        "301 children online again",
        Duration::from_secs(120),
        || {
            let status = parent.status_json().ok()?;
            (status["network"]["online"] == total).then_some(())
        },
    );
    wait_for(
        "every swarm connection on nodes 1 and 3",
        Duration::from_secs(120),
        || {
            let nodes = connection_nodes(&vhost, "fleetls-swarm:")?;
            // 100 children, 25 a connection: 4 connections a swarm.
            (nodes.len() == SWARMS * PER_SWARM / 25 && !nodes.contains(&lost)).then_some(())
        },
    );

    let status = parent.status_json().expect("status");
    let agents = status["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), total, "each child once in the registry");
    let mut names: Vec<&str> = agents.iter().filter_map(|a| a["name"].as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "no child twice");
    for agent in agents {
        assert!(
            !agent["last_result"].is_null(),
            "{} has no result of the campaign: {agent}",
            agent["name"]
        );
    }
    eprintln!("verify with node 2 lost: {campaign}");

    // Nothing was dead-lettered: no message refused, none unroutable.
    let dead = wait_for("fleetls.dead's count", Duration::from_secs(60), || {
        vhost.queue_depth("fleetls.dead")
    });
    assert_eq!(
        dead,
        0,
        "fleetls.dead: {:?}",
        vhost.peek_queue("fleetls.dead", 5)
    );

    // The parent's view of the cluster: node 2 down, solo moved on.
    let solo_id = parent.agent("solo").expect("solo registered")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = wait_for(
        "the parent's view without node 2",
        Duration::from_secs(60),
        || {
            let view = parent.cli_json(&["cluster"]);
            let down = view["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["name"] == lost.as_str() && n["running"] == false);
            let moved = view["agents"][&solo_id]
                .as_str()
                .is_some_and(|node| node != lost);
            (down && moved).then_some(view)
        },
    );
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(3), "{view}");
    let status = parent.status_json().expect("status");
    let nodes = status["network"]["nodes"]
        .as_array()
        .expect("network.nodes");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let metrics = http()
        .get(format!("http://{}/metrics", parent.admin))
        .send()
        .and_then(|r| r.text())
        .expect("/metrics answers");
    let down = format!("fleetls_broker_node_running{{node=\"{lost}\"}} 0");
    assert!(metrics.contains(&down), "{metrics}");
    drop(solo);

    // Node 2 comes back into the cluster.
    Cluster::run(&["restart", "2"]);
    assert!(
        Cluster::script(&["status"]).0,
        "three nodes after restart 2"
    );

    // The parent's own node (and its management) goes: the parent moves on,
    // as do the children there, and a second campaign runs through.
    let on_node1 = children_on(&vhost, 1);
    Cluster::run(&["kill", "1"]);
    eprintln!("killed node 1 with {on_node1} children connected through it");
    let node3 = format!("http://127.0.0.1:{}", BASE + 10002);
    wait_for(
        "the parent on another node",
        Duration::from_secs(120),
        || {
            let list: Value = http()
                .get(format!("{node3}/api/vhosts/{}/connections", vhost.name))
                .basic_auth("guest", Some("guest"))
                .send()
                .ok()?
                .json()
                .ok()?;
            list.as_array()?
                .iter()
                .any(|c| {
                    c["client_properties"]["connection_name"] == "fleetls-parent"
                        && c["node"] != format!("{NAME}-1@localhost").as_str()
                })
                .then_some(())
        },
    );
    // Its view of the cluster comes from the next management address.
    let node1 = format!("{NAME}-1@localhost");
    let view = wait_for(
        "the cluster view from another node's management",
        Duration::from_secs(120),
        || {
            let view = parent.cli_json(&["cluster"]);
            let down = view["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["name"] == node1.as_str() && n["running"] == false);
            let from = view["management"].as_str()?.to_owned();
            (down && from != management_of(1)).then_some(view)
        },
    );
    eprintln!("cluster view with node 1 lost: from {}", view["management"]);
    let (code, out, err) = parent.cli(&[
        "verify",
        "--json",
        "--step-timeout",
        "60s",
        "--concurrency",
        "150",
    ]);
    // `solo` is stopped: it cannot pass, so verify says 4 and names it.
    assert_eq!(code, 4, "verify after node 1 was lost: {out}{err}");
    let again: Value = serde_json::from_str(&out).expect("verify --json prints JSON");
    let campaign = &again["campaign"];
    eprintln!("verify with node 1 lost: {campaign}");
    let rows = did_not_pass(
        &parent,
        "verify with node 1 lost",
        campaign,
        &["solo"],
        on_node1,
    );
    assert!(
        names_of(&rows).iter().any(|n| n == "solo"),
        "the stopped solo passed: {rows:#?}"
    );
    assert_eq!(count(campaign, "total"), total as u64, "{campaign}");
    assert_eq!(
        count(campaign, "passed")
            + count(campaign, "failed")
            + count(campaign, "did_not_participate"),
        total as u64,
        "each child counted once: {campaign}"
    );

    // `solo` was stopped above: the swarms' children move to AMQPS, with a
    // node lost, every time this test runs.
    switch_broker_with_a_node_lost(&parent, &vhost, dir.path(), PER_SWARM * SWARMS);

    drop(swarms);
    drop(parent);
    drop(vhost);
    drop(cluster);
}

/// The move to AMQPS on the cluster of the test above (node 1 lost, nodes
/// 2 and 3 running, every child registered and verified; `solo` stopped,
/// so `total` is the swarms' children): any of them that did not pass is
/// tested again, they all switch to the SSL port, the
/// nodes get the broker's certificate by a rolling restart, and
/// `switch-broker` moves everyone to the AMQPS list while the node with the
/// most children is killed.
fn switch_broker_with_a_node_lost(parent: &Parent, vhost: &Vhost, dir: &Path, total: usize) {
    let campaign_args = ["--step-timeout", "60s", "--concurrency", "150", "--json"];
    // Runs campaign `kind` to its end: its exit code and campaign JSON.
    let run_campaign = |kind: &str, extra: &[&str]| -> (i32, Value) {
        let args: Vec<&str> = [kind]
            .into_iter()
            .chain(extra.iter().copied())
            .chain(campaign_args)
            .collect();
        let (code, out, err) = parent.cli(&args);
        assert!(code == 0 || code == 4, "{kind}: {out}{err}");
        let report: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{kind} --json: {e}: {out}{err}"));
        (code, report["campaign"].clone())
    };
    // A campaign run again for the children the first run left must leave
    // none of them (`solo`, stopped, only counts as did not participate).
    let again_for_all = |kind: &str, extra: &[&str]| {
        let (code, run) = run_campaign(kind, extra);
        let rows = did_not_pass(parent, &format!("{kind} again"), &run, &["solo"], 0);
        assert_eq!(
            code == 4,
            !rows.is_empty(),
            "{kind} again: exit {code}: {run}"
        );
    };
    let summary = parent.status_json().expect("status")["summary"].clone();
    // (`solo` counts as did not participate, offline.) The verify with node
    // 1 lost bounded how many did not pass; they are tested again, once.
    let behind = total as u64 - count(&summary, "passed").min(total as u64);
    eprintln!("{behind} of {total} swarm children did not pass verify: reverify");
    if behind > 0 {
        again_for_all("reverify", &[]);
    }
    // The switch with node 1 lost: a child whose (quorum) queue lost its
    // majority with node 1 could not be switched (the broker refused its
    // command) and says so; at most a node's share of them.
    let (_, first) = run_campaign("switch", &[]);
    let switch_left = did_not_pass(
        parent,
        "switch with node 1 lost",
        &first,
        &["solo"],
        PER_SWARM,
    );
    let switch_left: Vec<String> = names_of(&switch_left)
        .into_iter()
        .filter(|n| n != "solo")
        .collect();

    // The broker's files, a certificate and a folder per node (`--node`:
    // scripts/cluster reads node1/..node3/), then a rolling restart that
    // opens AMQPS on each node; node 1, lost above, comes back with it.
    let tls = dir.join("broker-tls");
    parent.cli_ok(&[
        "broker-tls",
        "--out",
        tls.to_str().unwrap(),
        "--amqps-bind",
        "127.0.0.1",
        "--node",
        "node1=clu16t-1.localhost;127.0.0.1",
        "--node",
        "node2=clu16t-2.localhost;127.0.0.1",
        "--node",
        "node3=clu16t-3.localhost;127.0.0.1",
    ]);
    for n in ["1", "2", "3"] {
        let (ok, out) = Cluster::script_tls(&["restart", n], Some(&tls));
        assert!(ok, "scripts/cluster restart {n} with TLS failed:\n{out}");
    }
    // Each node serves its own certificate, with its own name, from the CA.
    for n in 1..=3u16 {
        let own = std::fs::read_to_string(tls.join(format!("node{n}/broker.pem"))).unwrap();
        let own_leaf = own
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap()
            .to_owned();
        assert!(
            leaf_names(&own_leaf).contains(&format!("clu16t-{n}.localhost")),
            "node {n}'s certificate lacks its own name"
        );
        let served = served_leaf(BASE + 3 + n - 1, &tls.join("ca.pem"));
        assert_eq!(
            served.trim(),
            own_leaf.trim(),
            "node {n} does not serve its own certificate"
        );
    }
    assert!(
        Cluster::script(&["status"]).0,
        "three nodes after the rolling restart"
    );
    wait_for(
        "the swarms' children online after the rolling restart",
        Duration::from_secs(300),
        || {
            let status = parent.status_json().ok()?;
            (status["network"]["online"] == total).then_some(())
        },
    );
    // The children the switch left (each said why, above): node 1 is back,
    // the operator runs switch again, once, and everyone is on SSL.
    eprintln!(
        "{} of {total} children left by switch with node 1 lost: switch again",
        switch_left.len()
    );
    if !switch_left.is_empty() {
        again_for_all("switch", &[]);
    }
    wait_for(
        "the swarms' children on SSL",
        Duration::from_secs(300),
        || {
            let status = parent.status_json().ok()?;
            (status["network"]["switched_to_ssl"] == total).then_some(())
        },
    );

    let amqps = Cluster::amqps();
    assert_eq!(amqps.len(), 3, "{amqps:?}");
    let list = list_from(&amqps, vhost, 0);
    // No child is held here: switch-broker opens AMQPS connections at the
    // broker's pace (its window starts at 8), so 300 children take long
    // enough for the node to go in the middle. (A held swarm would miss its
    // heartbeats and count as did not participate.)
    parent.cli_ok(&[
        "switch-broker",
        "--amqps",
        &list,
        "--detach",
        "--step-timeout",
        "60s",
        "--concurrency",
        "150",
    ]);
    wait_for("100 children moved", Duration::from_secs(300), || {
        let status = parent.status_json().ok()?;
        let campaign = &status["campaign"];
        let done = campaign["passed"].as_u64()? + campaign["failed"].as_u64()?;
        (done >= 100).then_some(())
    });
    // The node with the most swarm connections (plain or AMQPS) goes.
    let connections = live_connections(vhost, "fleetls-swarm:").expect("management answers");
    let (victim, on_it) = (1..=3)
        .map(|n| {
            let node = format!("{NAME}-{n}@localhost");
            let on = connections
                .iter()
                .filter(|c| c["node"] == node.as_str())
                .count();
            (n, on)
        })
        .max_by_key(|(_, on)| *on)
        .expect("three nodes");
    // The children its loss may cut short: those still on plain there, 25
    // a swarm connection at most and no more than are not on AMQPS yet (a
    // moved child has a connection of its own, and has passed).
    let on_amqps_now = parent.status_json().expect("status")["network"]["broker_tls"]
        .as_u64()
        .expect("network.broker_tls") as usize;
    let on_victim = (25 * on_it).min(total.saturating_sub(on_amqps_now));
    Cluster::run(&["kill", &victim.to_string()]);
    let lost = format!("{NAME}-{victim}@localhost");
    let status = parent.status_json().expect("status");
    assert_eq!(
        status["campaign"]["state"], "running",
        "node {victim} was killed during switch-broker: {}",
        status["campaign"]
    );
    eprintln!(
        "switch-broker: killed node {victim} with {on_it} swarm connections, \
         at most {on_victim} children still on plain, on it"
    );

    // The AMQPS list with the lost node in it is still accepted: the node
    // is named as down (children try the list in turn and use it once it
    // is back). A dry run shows it without starting anything (now, while
    // children are still to move: with none left it says so instead).
    let token = std::fs::read_to_string(parent.layout().token()).unwrap();
    let response = http()
        .post(format!("http://{}/api/campaigns", parent.admin))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"kind": "switch-broker", "amqps": list, "dry_run": true}))
        .send()
        .expect("the admin API answers");
    let ok = response.status().is_success();
    let answer: Value = response.json().expect("a JSON answer");
    assert!(
        ok,
        "a dry run of switch-broker with node {victim} lost: {answer}"
    );
    let down: Vec<String> = answer["plan"]["amqps_down"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let victim_port = format!(":{}", BASE + 3 + victim - 1);
    assert!(
        down.len() == 1 && down[0].contains(&victim_port) && down[0].contains("nothing answers"),
        "the dry run names node {victim} ({victim_port}) as down, and only it: {answer}"
    );

    let campaign = wait_for("switch-broker to finish", Duration::from_secs(600), || {
        let status = parent.status_json().ok()?;
        let campaign = &status["campaign"];
        (campaign["kind"] == "switch-broker" && campaign["state"] == "finished")
            .then(|| campaign.clone())
    });
    eprintln!("switch-broker with node {victim} lost: {campaign}");
    // Only a child on the lost node may have had its move cut short.
    let cut_short = did_not_pass(
        parent,
        "switch-broker with a node lost",
        &campaign,
        &[],
        on_victim,
    );
    let cut_short = names_of(&cut_short);
    assert_eq!(count(&campaign, "total"), total as u64, "{campaign}");
    assert_eq!(
        count(&campaign, "passed")
            + count(&campaign, "failed")
            + count(&campaign, "did_not_participate"),
        total as u64,
        "each child counted once: {campaign}"
    );
    assert_eq!(
        count(&campaign, "acting") + count(&campaign, "waiting"),
        0,
        "{campaign}"
    );

    // Every child ends on AMQPS on a live node: those that were on AMQPS
    // on the lost node reconnect to another node's AMQPS by themselves. A
    // child whose move the loss cut short stayed on plain and said why: the
    // operator runs switch-broker again for those, as the test does, with
    // the same list (switch-broker checks every address it is given; a
    // node that does not answer at all is only named, as long as another
    // does).
    let on_amqps = |parent: &Parent| {
        let status = parent.status_json().ok()?;
        (status["network"]["broker_tls"] == total).then_some(())
    };
    if poll(Duration::from_secs(120), || on_amqps(parent)).is_none() {
        // Those still on plain: each one a child whose move was cut short
        // (named with its reason above), never one that passed.
        let status = parent.status_json().expect("status");
        let plain: Vec<String> = status["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .filter(|a| a["broker_tls"] == false && a["name"] != "solo")
            .filter_map(|a| a["name"].as_str().map(str::to_owned))
            .collect();
        eprintln!(
            "after switch-broker {} of {total} on AMQPS: switch-broker again for {plain:?}",
            status["network"]["broker_tls"]
        );
        let passed_yet_plain: Vec<&String> =
            plain.iter().filter(|n| !cut_short.contains(n)).collect();
        assert!(
            passed_yet_plain.is_empty(),
            "children that passed switch-broker are not on AMQPS: {passed_yet_plain:?}"
        );
        // The whole list: the lost node is only named as down. Once.
        again_for_all("switch-broker", &["--amqps", &list]);
        wait_for(
            "the swarms' children on AMQPS",
            Duration::from_secs(300),
            || on_amqps(parent),
        );
    }
    // The broker's own view agrees: once moved, each child of a swarm has
    // a connection of its own (`fleetls-child:<id> (<name>)`); every one
    // uses TLS and none is on the lost node, and `without-ssl`'s broker
    // list (every node's connections) names only the stopped `solo`.
    wait_until(
        "every child on AMQPS on a live node",
        Duration::from_secs(120),
        || {
            let connections = live_connections(vhost, "fleetls-child:")
                .ok_or("no live node's management answered")?;
            let good = |c: &&Value| c["ssl"] == true && c["node"] != lost.as_str();
            if connections.len() == total && connections.iter().all(|c| good(&c)) {
                return Ok(());
            }
            // Who is missing, for the failure message.
            let named: Vec<&str> = connections
                .iter()
                .filter(good)
                .filter_map(|c| c["client_properties"]["connection_name"].as_str())
                .collect();
            let status = parent.status_json().unwrap_or_default();
            let missing: Vec<String> = status["agents"]
                .as_array()
                .map(|agents| {
                    agents
                        .iter()
                        .filter(|a| a["name"] != "solo")
                        .filter(|a| {
                            let id = a["id"].as_str().unwrap_or_default();
                            !named.iter().any(|n| n.contains(id))
                        })
                        .map(|a| {
                            format!(
                                "{} (online {}, broker_tls {})",
                                a["name"], a["online"], a["broker_tls"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Err(format!(
                "{} TLS connections on live nodes of {total}; without one: {missing:?}",
                named.len()
            ))
        },
    );
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|e| e["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let without = wait_for(
        "without-ssl from the broker's view",
        Duration::from_secs(120),
        || {
            let without = parent.cli_json(&["without-ssl"]);
            (without["broker_view"] == true && names(&without["not_on_tls"]) == ["solo"])
                .then_some(without)
        },
    );
    assert_eq!(names(&without["not_switched"]), ["solo"], "{without}");

    // Nothing was dead-lettered but commands that expired unread in the
    // queue of `solo`, stopped since the first campaign (the second one
    // sent it its steps; commands are transient with their deadline as
    // expiration, the registry is their record); each one is shown.
    let solo_queue = format!(
        "fleetls.agent.{}",
        parent.agent("solo").expect("solo registered")["id"]
            .as_str()
            .expect("an id")
    );
    let path = format!("/api/queues/{}/fleetls.dead", vhost.name);
    let dead = wait_for("fleetls.dead's count", Duration::from_secs(60), || {
        live_get(&path)?.get("messages")?.as_u64()
    });
    if dead > 0 {
        let messages = peek_live(vhost, "fleetls.dead", 50);
        for m in &messages {
            let props = &m["properties"];
            let death = &props["headers"]["x-death"][0];
            eprintln!(
                "fleetls.dead after switch-broker: type {} reason {} from {} ({})",
                props["type"],
                death["reason"],
                death["queue"],
                props["headers"]["x-fleetls-reason"]
            );
        }
        let unexpected: Vec<&Value> = messages
            .iter()
            .filter(|m| {
                let death = &m["properties"]["headers"]["x-death"][0];
                !(death["reason"] == "expired" && death["queue"] == solo_queue.as_str())
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "fleetls.dead holds {dead} message(s) after switch-broker, these not commands to the stopped solo that expired: {unexpected:?}"
        );
    }
}

/// On the shared broker (one node: quorum queues work there too): a parent
/// with quorum queues and a child with the default classic queue work
/// together; a parent started again as classic on the quorum
/// `fleetls.parent` says what to do instead of failing without a word.
#[test]
fn queue_types_mix_and_a_mismatch_says_what_to_do() {
    let vhost = Vhost::new();
    let dir = test_dir();
    let mut parent = Parent::start(&vhost, dir.path(), &["--queue-type", "quorum"]);
    let _child = fleetls_tests::start_child(&vhost, dir.path(), "till-1", &[]);
    let agents = parent.wait_online(&["till-1"]);
    let id = agents[0]["id"].as_str().expect("an id").to_owned();
    let queue = |name: &str| vhost.management_get(&format!("/api/queues/{{vhost}}/{name}"));
    assert_eq!(queue("fleetls.parent")["type"], "quorum");
    assert_eq!(queue(&format!("fleetls.agent.{id}"))["type"], "classic");

    // The topology is declared `fleetls.dead` first: that is the queue named.
    parent.proc.signal("TERM");
    parent.restart(&vhost, &["--queue-type", "classic"]);
    let log = wait_for("the parent's explanation", Duration::from_secs(60), || {
        let log = parent.proc.output();
        log.contains("cannot change type").then_some(log)
    });
    assert!(
        log.contains("--queue-type quorum") && log.contains("delete_queue fleetls.dead"),
        "{log}"
    );
}
