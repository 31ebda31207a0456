//! A link to the broker that goes silent: a child (`run`) and a swarm group
//! reach the broker through a TCP link first in their broker list, the
//! broker itself second. The link then drops every byte in both directions
//! and closes nothing — no reset, no FIN, as a network that lost its route
//! — and keeps accepting new connections that go nowhere. Nothing in the
//! child's log or the kernel says the connection is dead: each program must
//! notice by itself (its heartbeat publish gets no answer within the
//! broker-operation deadline) and reconnect to the next address. Checked:
//! every child is heard by the parent again after the link fell silent, by
//! the same processes, over connections that do not pass through the link.
//! A child on the default report interval publishes nothing for minutes: it
//! notices by the AMQP heartbeat instead (the second test).

use std::time::{Duration, Instant};

use fleetls_tests::link::SilentLink;
use fleetls_tests::{program, test_dir, wait_until, Parent, Proc, Vhost};

/// The broker URL of `vhost` with its port replaced by `port`.
fn through(url: &str, port: u16) -> String {
    let (authority, rest) = url.rsplit_once(':').expect("the URL names a port");
    let (_, path) = rest.split_once('/').expect("the URL names a vhost");
    format!("{authority}:{port}/{path}")
}

/// Each named agent's `last_seen` (parent's clock, ms) from the registry.
fn last_seen(parent: &Parent, names: &[String]) -> Vec<(String, u64)> {
    let rows = parent.registry_query("SELECT name, last_seen FROM agents");
    names
        .iter()
        .map(|name| {
            let seen = rows
                .lines()
                .find_map(|row| {
                    let (n, seen) = row.split_once('|')?;
                    (n == name).then(|| seen.parse().ok()).flatten()
                })
                .unwrap_or(0);
            (name.clone(), seen)
        })
        .collect()
}

#[test]
fn children_reconnect_elsewhere_when_their_link_goes_silent() {
    let dir = test_dir();
    let vhost = Vhost::new();
    let direct = vhost.url();
    let broker_port: u16 = direct
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .expect("the broker URL names a port");
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "60"]);
    let link = SilentLink::to(broker_port);
    let list = format!("{},{direct}", through(&direct, link.port()));

    let arg = |s: &str| s.to_owned();
    let child = Proc::spawn(
        &program("fleetls-child"),
        &[
            arg("run"),
            arg("--broker"),
            list.clone(),
            arg("--data-dir"),
            dir.path().join("till-1").to_str().unwrap().to_owned(),
            arg("--name"),
            arg("till-1"),
            arg("--heartbeat"),
            arg("2"),
        ],
        dir.path().join("till-1.log"),
    );
    let swarm = Proc::spawn(
        &program("fleetls-child"),
        &[
            arg("swarm"),
            arg("--broker"),
            list,
            arg("--data-dir"),
            dir.path().join("swarm").to_str().unwrap().to_owned(),
            arg("--count"),
            arg("4"),
            arg("--per-connection"),
            arg("4"),
            arg("--prefix"),
            arg("sw"),
            arg("--heartbeat"),
            arg("2"),
        ],
        dir.path().join("swarm.log"),
    );
    let names: Vec<String> = std::iter::once("till-1".to_owned())
        .chain((0..4).map(|i| format!("sw-{i}")))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    parent.wait_online(&refs);
    // Both went through the link (the first address of their list).
    assert!(
        link.accepted() >= 2,
        "the child and the swarm group did not connect through the link ({} connections)",
        link.accepted()
    );

    link.go_silent();
    let silent_at = fleetls_proto::now_ms();
    let started = Instant::now();
    // A heartbeat every 2 s; a publish without an answer for 30 s ends the
    // session; the silent link then costs one connect timeout (20 s) before
    // the broker itself answers.
    let heard = wait_until(
        "every child heard again after the link went silent",
        Duration::from_secs(150),
        || {
            let seen = last_seen(&parent, &names);
            let missing: Vec<String> = seen
                .iter()
                .filter(|(_, at)| *at <= silent_at + 3_000)
                .map(|(name, at)| {
                    format!(
                        "{name} (last seen {} ms after)",
                        at.saturating_sub(silent_at)
                    )
                })
                .collect();
            if missing.is_empty() {
                Ok(seen)
            } else {
                Err(format!(
                    "not heard since: {missing:?}\nchild log:\n{}\nswarm log:\n{}",
                    fleetls_tests::tail(&child.output(), 30),
                    fleetls_tests::tail(&swarm.output(), 30)
                ))
            }
        },
    );
    eprintln!(
        "every child heard again {:.1} s after the link went silent: {heard:?}",
        started.elapsed().as_secs_f64()
    );
    // The same processes, still running, and they say why they left.
    let mut child = child;
    let mut swarm = swarm;
    assert_eq!(
        child.wait_exit(Duration::from_millis(100)),
        None,
        "the child exited"
    );
    assert_eq!(
        swarm.wait_exit(Duration::from_millis(100)),
        None,
        "the swarm exited"
    );
    for (what, log) in [("child", child.output()), ("swarm", swarm.output())] {
        assert!(
            log.contains("did not answer") || log.contains("no publisher confirm"),
            "the {what} does not say that the broker stopped answering:\n{}",
            fleetls_tests::tail(&log, 40)
        );
    }
    // Still heard after that (its new connection carries its heartbeats).
    let again = fleetls_proto::now_ms();
    wait_until(
        "every child heard on its new connection",
        Duration::from_secs(30),
        || {
            let stale: Vec<String> = last_seen(&parent, &names)
                .into_iter()
                .filter(|(_, at)| *at <= again)
                .map(|(name, _)| name)
                .collect();
            if stale.is_empty() {
                Ok(())
            } else {
                Err(format!("not heard again: {stale:?}"))
            }
        },
    );
}

/// A child on the default report interval (`--report-every` 300 s) may
/// send nothing for minutes, so a publish deadline need not tell it that
/// its link went silent: lapin's AMQP heartbeat does (a connection that
/// hears nothing from the broker for twice the negotiated timeout —
/// RabbitMQ offers 60 s — is closed). Its first state report comes at a
/// random moment of the interval, so in about two runs of five it falls in
/// those two minutes and its confirm deadline (30 s) tells it first; either
/// way it reconnects through the next address of its list. Checked: it is
/// heard again (its Hello) after the link fell silent, by the same process,
/// and it says which of the two told it.
#[test]
fn a_child_on_the_default_report_interval_notices_a_silent_link_too() {
    let dir = test_dir();
    let vhost = Vhost::new();
    let direct = vhost.url();
    let broker_port: u16 = direct
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .expect("the broker URL names a port");
    // Online from its Hello until long after: presence by heartbeat must
    // not decide this test.
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "900"]);
    let link = SilentLink::to(broker_port);
    let list = format!("{},{direct}", through(&direct, link.port()));
    let name = "till-quiet".to_owned();
    let mut child = Proc::spawn(
        &program("fleetls-child"),
        &[
            "run".to_owned(),
            "--broker".to_owned(),
            list,
            "--data-dir".to_owned(),
            dir.path().join(&name).to_str().unwrap().to_owned(),
            "--name".to_owned(),
            name.clone(),
        ],
        dir.path().join("till-quiet.log"),
    );
    parent.wait_online(&[name.as_str()]);
    assert!(
        link.accepted() >= 1,
        "the child did not connect through the link"
    );

    link.go_silent();
    let silent_at = fleetls_proto::now_ms();
    let started = Instant::now();
    // Two missed heartbeat periods (120 s), then one connect timeout on
    // the silent link (20 s) before the broker itself answers.
    let names = [name];
    wait_until(
        "the quiet child heard again after the link went silent",
        Duration::from_secs(240),
        || match last_seen(&parent, &names)[0] {
            (_, at) if at > silent_at + 3_000 => Ok(()),
            (_, at) => Err(format!(
                "last seen {} ms after the link went silent\nchild log:\n{}",
                at.saturating_sub(silent_at),
                fleetls_tests::tail(&child.output(), 30)
            )),
        },
    );
    eprintln!(
        "the quiet child was heard again {:.1} s after the link went silent",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        child.wait_exit(Duration::from_millis(100)),
        None,
        "the child exited"
    );
    let log = child.output();
    let heartbeat = log.contains("no heartbeat received")
        || log.contains("haven't received anything from the server");
    let confirm = log.contains("no publisher confirm within 30 s");
    assert!(
        heartbeat || confirm,
        "the child does not say that the broker's heartbeats stopped or that its report went \
         unconfirmed:\n{}",
        fleetls_tests::tail(&log, 40)
    );
    eprintln!(
        "it was told by {}",
        if heartbeat {
            "the missed AMQP heartbeats"
        } else {
            "its state report's confirm deadline"
        }
    );
}
