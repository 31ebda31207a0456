//! The life of the programs as processes, against the real broker:
//! (a) SIGTERM stops a child and SIGINT stops the parent with exit code 0,
//! each closing its named broker connection, and the parent's registry
//! (`fleetls.db`) reopens with every agent still listed; (b) a restarted child
//! keeps its identity (same id, one agent of that name, `identity.toml`
//! untouched); (c) bad configuration stops either program with exit code 2
//! and a message naming the setting (or the config file), before anything is
//! written and without echoing a password; (d) `status` without a serving
//! parent fails and says it cannot reach the admin API.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleetls_tests::{
    child_layout, connection_names, free_port, program, start_child, wait_for, Parent,
    ParentLayout, Proc, Vhost,
};
use serde_json::Value;

/// Waits until management lists a connection named `name` in `vhost`.
fn wait_connection_listed(vhost: &Vhost, name: &str) {
    wait_for(
        &format!("connection {name} listed by management"),
        Duration::from_secs(30),
        || {
            connection_names(vhost)?
                .iter()
                .any(|n| n == name)
                .then_some(())
        },
    );
}

/// Waits until management answers with a list that no longer holds `name`.
fn wait_connection_gone(vhost: &Vhost, name: &str) {
    wait_for(
        &format!("connection {name} gone from management"),
        Duration::from_secs(30),
        || (!connection_names(vhost)?.iter().any(|n| n == name)).then_some(()),
    );
}

fn agent_id(agent: &Value) -> String {
    agent["id"].as_str().expect("an agent has an id").to_owned()
}

#[test]
fn signals_stop_the_programs_cleanly_and_the_registry_reopens() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(&vhost, dir.path(), &["--offline-after", "5"]);
    wait_connection_listed(&vhost, "fleetls-parent");
    let mut child = start_child(&vhost, dir.path(), "till-a", &["--location", "shop-a"]);
    let _other = start_child(&vhost, dir.path(), "till-b", &[]);
    let id = agent_id(&parent.wait_online(&["till-a"]).remove(0));
    parent.wait_online(&["till-b"]);
    // Management shows the agent's display name beside its id.
    let connection = format!("fleetls-child:{id} (till-a)");
    wait_connection_listed(&vhost, &connection);

    // SIGTERM: the child stops by itself, exit code 0, connection closed.
    child.signal("TERM");
    assert_eq!(
        child.wait_exit(Duration::from_secs(10)),
        Some(0),
        "the child did not exit 0 within 10 s after SIGTERM:\n{}",
        child.output()
    );
    wait_connection_gone(&vhost, &connection);
    // The other child is untouched.
    assert!(
        connection_names(&vhost)
            .unwrap_or_default()
            .iter()
            .any(|n| n.starts_with("fleetls-child:") && *n != connection),
        "the other child's connection went away too"
    );

    // SIGINT: the parent stops, exit code 0, connection closed.
    parent.proc.signal("INT");
    assert_eq!(
        parent.proc.wait_exit(Duration::from_secs(15)),
        Some(0),
        "the parent did not exit 0 after SIGINT:\n{}",
        parent.proc.output()
    );
    wait_connection_gone(&vhost, "fleetls-parent");
    assert!(
        std::net::TcpStream::connect(&parent.admin).is_err(),
        "the admin API still answers after the parent exited"
    );
    let db = parent.layout().registry();
    assert!(db.exists(), "{} is missing", db.display());

    // A new parent on the same data dir reopens the registry: both agents are
    // still there, as they registered.
    let again = Parent::start(&vhost, dir.path(), &["--offline-after", "5"]);
    assert_eq!(again.data_dir, parent.data_dir);
    let till_a = again.agent("till-a").expect("till-a still in the registry");
    assert_eq!(agent_id(&till_a), id);
    assert_eq!(till_a["location"], "shop-a");
    assert!(
        again.agent("till-b").is_some(),
        "till-b lost from the registry"
    );
    assert_eq!(again.status_json().unwrap()["network"]["agents"], 2);
    // And it works: the child still running is seen online through it.
    again.wait_online(&["till-b"]);
}

#[test]
fn a_restarted_child_keeps_its_identity() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "5"]);
    let mut child = start_child(&vhost, dir.path(), "bo-1", &["--kind", "child"]);
    let first = parent.wait_online(&["bo-1"]).remove(0);
    let id = agent_id(&first);
    let identity_file = child_layout(dir.path(), "bo-1").identity();
    let identity = std::fs::read_to_string(&identity_file).expect("identity.toml written");
    assert!(
        identity.contains(&id),
        "identity.toml does not hold {id}:\n{identity}"
    );

    child.signal("TERM");
    assert_eq!(child.wait_exit(Duration::from_secs(10)), Some(0));
    drop(child);
    let stopped_seen = parent.agent("bo-1").unwrap()["last_seen"].as_u64().unwrap();

    // Started again on the same data dir, this time without --name: the
    // stored identity is used as it is.
    let data_dir = dir.path().join("bo-1");
    let args: Vec<String> = [
        "run",
        "--broker",
        &vhost.url(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--heartbeat",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut restarted = Proc::spawn(
        &program("fleetls-child"),
        &args,
        dir.path().join("bo-1-again.log"),
    );
    wait_for(
        "the restarted child heard from",
        Duration::from_secs(30),
        || {
            let agent = parent.agent("bo-1")?;
            (agent["online"] == true && agent["last_seen"].as_u64()? > stopped_seen).then_some(())
        },
    );
    wait_connection_listed(&vhost, &format!("fleetls-child:{id} (bo-1)"));

    let status = parent.status_json().unwrap();
    let agents = status["agents"].as_array().unwrap();
    let named: Vec<&Value> = agents.iter().filter(|a| a["name"] == "bo-1").collect();
    assert_eq!(named.len(), 1, "agents named bo-1: {named:?}");
    assert_eq!(agent_id(named[0]), id, "the restarted child has another id");
    assert_eq!(agents.len(), 1, "{status}");
    assert_eq!(
        std::fs::read_to_string(&identity_file).unwrap(),
        identity,
        "identity.toml changed on restart"
    );
    assert_eq!(
        restarted.wait_exit(Duration::from_millis(200)),
        None,
        "the restarted child exited:\n{}",
        restarted.output()
    );
}

/// Runs a program with `args`, no `FLEETLS_*` variable in its environment;
/// (exit code, stderr).
fn run(name: &str, args: &[&str]) -> (i32, String) {
    let mut command = Command::new(program(name));
    command.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("FLEETLS_") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("the program runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a program that must refuse its configuration: exit code 2, stderr
/// holding every one of `needles`, and `data_dir` not created.
fn refused(name: &str, args: &[&str], needles: &[&str], data_dir: &Path) -> String {
    let (code, err) = run(name, args);
    assert_eq!(code, 2, "{name} {args:?} exit code; stderr:\n{err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{name} {args:?}: stderr does not name {needle:?}:\n{err}"
        );
    }
    assert!(
        !data_dir.exists(),
        "{name} {args:?} wrote {} although its configuration was refused",
        data_dir.display()
    );
    err
}

#[test]
fn bad_configuration_is_refused_with_exit_code_2_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let broker = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let admin = format!("127.0.0.1:{}", free_port());
    let parent = "fleetls-parent";
    let child = "fleetls-child";

    refused(
        parent,
        &[
            "serve",
            "--broker",
            "not-a-url",
            "--data-dir",
            d,
            "--admin",
            &admin,
        ],
        &["--broker"],
        &data,
    );
    let err = refused(
        parent,
        &[
            "serve",
            "--broker",
            "amqp://u:s3cr3t-pw@host:port/%2f",
            "--data-dir",
            d,
        ],
        &["--broker"],
        &data,
    );
    assert!(!err.contains("s3cr3t-pw"), "the password is echoed:\n{err}");
    refused(
        parent,
        &[
            "serve",
            "--broker",
            broker,
            "--data-dir",
            d,
            "--admin",
            "localhost",
        ],
        &["--admin"],
        &data,
    );
    refused(
        parent,
        &[
            "serve",
            "--broker",
            broker,
            "--data-dir",
            d,
            "--admin",
            &admin,
            "--window",
            "0",
        ],
        &["--window"],
        &data,
    );

    refused(
        child,
        &["run", "--broker", broker, "--data-dir", d, "--kind", "till"],
        &["--kind", "child", "local-parent", "mpos"],
        &data,
    );
    refused(
        child,
        &[
            "run",
            "--broker",
            broker,
            "--data-dir",
            d,
            "--ips",
            "300.1.1.1",
        ],
        &["--ips", "300.1.1.1"],
        &data,
    );
    refused(
        child,
        &[
            "run",
            "--broker",
            broker,
            "--data-dir",
            d,
            "--ca-fingerprint",
            "md5:00",
        ],
        &["--ca-fingerprint"],
        &data,
    );
    let err = refused(
        child,
        &[
            "run",
            "--broker",
            "amqp://u:s3cr3t-pw@host:port/%2f",
            "--data-dir",
            d,
        ],
        &["--broker"],
        &data,
    );
    assert!(!err.contains("s3cr3t-pw"), "the password is echoed:\n{err}");

    // An unknown key in a config file: refused, naming the file and the key.
    let file = dir.path().join("fleetls.toml");
    std::fs::write(
        &file,
        format!("broker = \"{broker}\"\ndata-dir = \"{d}\"\nno-such-key = 1\n"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    refused(
        parent,
        &["--config", f, "serve", "--admin", &admin],
        &[f, "no-such-key"],
        &data,
    );
    refused(child, &["--config", f, "run"], &[f, "no-such-key"], &data);

    // An unknown flag: clap's usage error.
    for (name, sub) in [(parent, "serve"), (child, "run")] {
        let (code, err) = run(name, &[sub, "--no-such-flag", "1"]);
        assert_eq!(code, 2, "{name} {sub} --no-such-flag:\n{err}");
        assert!(err.contains("--no-such-flag"), "{err}");
    }
    assert!(!data.exists());
}

#[test]
fn status_without_a_serving_parent_says_it_cannot_reach_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    // A data dir with a token, as a stopped parent leaves it.
    std::fs::write(ParentLayout::new(dir.path()).token(), "0123456789abcdef\n").unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    for json in [false, true] {
        let mut args = vec![
            "status",
            "--admin",
            &admin,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        let (code, err) = run("fleetls-parent", &args);
        assert_ne!(code, 0, "status {args:?} succeeded without a parent");
        assert!(
            err.contains("cannot reach") && err.contains("admin API") && err.contains(&admin),
            "status {args:?} does not say it cannot reach the admin API at {admin}:\n{err}"
        );
    }
}
