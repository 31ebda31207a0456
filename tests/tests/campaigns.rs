//! Verify and reverify campaigns against the real broker, with the parent,
//! children and swarms as processes: a mixed network ends with every child
//! counted once in the right figure of the summary (passed, with errors, did
//! not participate, version not supporting SSL, mPOS) with the right step,
//! message and cause; `reverify` re-runs only the children that did not
//! pass; the window is never exceeded, by the step reports the children
//! send (copied on their way) and by the parent's records; a parent killed
//! mid-campaign resumes it and every child ends exactly once, even after an
//! outage longer than `--offline-after` and the step timeout; and the
//! parent's SSL port speaks TLS with a client certificate to `openssl
//! s_client`, refusing a client without one with the "certificate required"
//! alert.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleetls_proto::{topology, Body};
use fleetls_tests::{
    child_layout, free_port, program, start_child, test_dir, wait_for, CertFile, Parent, Proc, Tap,
    Vhost,
};
use serde_json::Value;

/// The messages of passed steps, as the issue names them.
const CERT_OK: &str = "Certificates generated successfully!";
const SSL_OK: &str = "SSL communication switchover test completed successfully!";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The agents of a status, by name.
fn by_name(status: &Value) -> HashMap<String, Value> {
    status["agents"]
        .as_array()
        .expect("status has an agents list")
        .iter()
        .map(|a| (a["name"].as_str().unwrap_or_default().to_owned(), a.clone()))
        .collect()
}

/// Polls `status --json` until `check` holds; returns that status.
fn wait_status(
    parent: &Parent,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, within, || {
        let status = parent.status_json().ok()?;
        check(&status).then_some(status)
    })
}

fn wait_certificates(parent: &Parent, names: &[&str]) -> Value {
    wait_status(
        parent,
        &format!("{names:?} holding a certificate"),
        Duration::from_secs(60),
        |s| {
            let agents = by_name(s);
            names
                .iter()
                .all(|n| agents.get(*n).is_some_and(|a| a["has_certificate"] == true))
        },
    )
}

/// SSL port and local parent port of one test (each test its own, since
/// several parents run at once).
struct Ports {
    ssl: u16,
    local: u16,
}

/// `settings set` with a free SSL port, another free local parent port,
/// `localhost` and 127.0.0.1.
fn set_ssl_settings(parent: &Parent) -> Ports {
    let ssl = free_port();
    let local = loop {
        let port = free_port();
        if port != ssl {
            break port;
        }
    };
    parent.cli_ok(&[
        "settings",
        "set",
        "--port",
        &ssl.to_string(),
        "--local-parent-port",
        &local.to_string(),
        "--names",
        "localhost",
        "--ips",
        "127.0.0.1",
    ]);
    Ports { ssl, local }
}

fn generate_and_send(parent: &Parent, ignore_old: bool) {
    let mut args = vec!["certs", "generate", "--json"];
    if ignore_old {
        args.push("--ignore-old");
    }
    let report = json(&parent.cli_ok(&args));
    assert!(
        report["ca_fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:")),
        "{report}"
    );
    parent.cli_json(&["certs", "send"]);
}

/// `verify`/`reverify --step-timeout .. --concurrency K --json`, following
/// the campaign to its end: (exit code, the printed JSON).
fn run_campaign(
    parent: &Parent,
    command: &str,
    concurrency: usize,
    step_timeout: &str,
) -> (i32, Value) {
    let (code, out, err) = parent.cli(&[
        command,
        "--step-timeout",
        step_timeout,
        "--concurrency",
        &concurrency.to_string(),
        "--json",
    ]);
    let printed = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("{command} printed no JSON ({e}), exit {code}\nstdout: {out}\nstderr: {err}")
    });
    (code, printed)
}

/// The last result of an agent (panics when it has none).
fn last_result<'a>(agents: &'a HashMap<String, Value>, name: &str) -> &'a Value {
    let result = &agents
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the status"))["last_result"];
    assert!(result.is_object(), "{name} has no last_result: {result}");
    result
}

fn assert_passed(agents: &HashMap<String, Value>, name: &str, campaign: &str) {
    let r = last_result(agents, name);
    assert_eq!(r["state"], "passed", "{name}: {r}");
    assert_eq!(r["campaign"], campaign, "{name}: {r}");
    assert_eq!(r["step"], "ssl-port", "{name}: {r}");
    assert_eq!(r["cert_test"]["ok"], true, "{name}: {r}");
    assert_eq!(r["cert_test"]["message"], CERT_OK, "{name}: {r}");
    assert_eq!(r["ssl_port"]["ok"], true, "{name}: {r}");
    assert_eq!(r["ssl_port"]["message"], SSL_OK, "{name}: {r}");
    assert!(r["cause"].is_null(), "{name}: {r}");
}

/// Starts `fleetls-child swarm --count N --prefix PREFIX --heartbeat H`.
fn start_swarm(vhost: &Vhost, dir: &Path, prefix: &str, count: usize, heartbeat: u64) -> Proc {
    let data = dir.join(format!("{prefix}-swarm"));
    let args: Vec<String> = [
        "swarm",
        "--broker",
        &vhost.url(),
        "--data-dir",
        data.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--prefix",
        prefix,
        "--heartbeat",
        &heartbeat.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::spawn(
        &program("fleetls-child"),
        &args,
        dir.join(format!("{prefix}-swarm.log")),
    )
}

/// The agents of a status whose name starts with `prefix-`.
fn swarm_agents(status: &Value, prefix: &str) -> Vec<Value> {
    let start = format!("{prefix}-");
    status["agents"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|a| a["name"].as_str().is_some_and(|n| n.starts_with(&start)))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn wait_swarm(parent: &Parent, prefix: &str, count: usize, field: &str) {
    wait_status(
        parent,
        &format!("{count} swarm children with {field}"),
        Duration::from_secs(240),
        |s| {
            let list = swarm_agents(s, prefix);
            list.len() == count && list.iter().all(|a| a[field] == true)
        },
    );
}

fn campaign_json(parent: &Parent) -> Option<Value> {
    let (code, out, _) = parent.cli(&["campaign", "--json"]);
    (code == 0).then(|| serde_json::from_str(&out).ok())?
}

fn count(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count in {value}"))
}

/// The most intervals `[start, end]` that overlap at one moment; an interval
/// ending at the very millisecond another starts does not overlap it.
fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut events: Vec<(u64, i32)> = Vec::new();
    for &(start, end) in intervals {
        events.push((start, 1));
        events.push((end, -1));
    }
    // Ends before starts at the same millisecond.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn max_overlap_counts_what_runs_at_once() {
    assert_eq!(max_overlap(&[]), 0);
    assert_eq!(max_overlap(&[(0, 10), (10, 20)]), 1);
    assert_eq!(max_overlap(&[(0, 10), (5, 20), (9, 12), (12, 13)]), 3);
}

/// The mixed network of the issue, verified once.
struct Mixed {
    /// Dropped first: the processes end before their vhost and folder go.
    children: HashMap<&'static str, Proc>,
    parent: Parent,
    vhost: Vhost,
    dir: tempfile::TempDir,
    ports: Ports,
    /// Exit code and JSON of `verify`.
    verify: (i32, Value),
    /// `status --json` right after it.
    status: Value,
}

const HEALTHY: [&str; 3] = ["till-1", "till-2", "till-3"];
const WRONG_CA: &str = "pinned-wrong";
const OFFLINE: &str = "gone-till";
const OLD: &str = "old-till";
const MPOS: &str = "mpos-1";
const FROZEN: &str = "frozen-till";
const LOCAL_PARENT: &str = "lp-shop-x";
const BEHIND_LOCAL: &str = "till-shop-x";
const OFFLINE_AFTER: &str = "15";

fn local_parent_flags() -> [&'static str; 8] {
    [
        "--kind",
        "local-parent",
        "--location",
        "shop-x",
        "--hostnames",
        "localhost",
        "--ips",
        "127.0.0.1",
    ]
}

/// Builds the mixed network, breaks what has to be broken and runs `verify
/// --concurrency 3 --step-timeout 5s` over it.
fn mixed_network() -> Mixed {
    let vhost = Vhost::new();
    let dir = test_dir();
    // The local parent serves on localhost: the names it may have.
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &[
            "--offline-after",
            OFFLINE_AFTER,
            "--local-parent-names",
            "localhost",
            "--local-parent-ips",
            "127.0.0.1",
        ],
    );
    let wrong_pin = format!("sha256:{}", "ab".repeat(32));
    let mut children: HashMap<&'static str, Proc> = HashMap::new();
    for name in HEALTHY {
        children.insert(
            name,
            start_child(&vhost, dir.path(), name, &["--location", "hq"]),
        );
    }
    let plain: [(&'static str, Vec<&str>); 7] = [
        (WRONG_CA, vec!["--ca-fingerprint", &wrong_pin]),
        (OFFLINE, vec!["--location", "hq"]),
        (OLD, vec!["--report-version", "0.9.0"]),
        (MPOS, vec!["--kind", "mpos"]),
        (FROZEN, vec!["--location", "hq"]),
        (LOCAL_PARENT, local_parent_flags().to_vec()),
        (
            BEHIND_LOCAL,
            vec!["--kind", "child", "--location", "shop-x"],
        ),
    ];
    for (name, flags) in &plain {
        children.insert(name, start_child(&vhost, dir.path(), name, flags));
    }
    let mut all: Vec<&str> = HEALTHY.to_vec();
    all.extend(plain.iter().map(|(n, _)| *n));
    parent.wait_online(&all);
    // A local parent is never accepted automatically: the operator does it.
    parent.cli_ok(&["agents", "accept", LOCAL_PARENT]);
    let ports = set_ssl_settings(&parent);

    // The local parent is registered (so it is shop-x's SSL target) but does
    // not serve: it stops before it could get a certificate.
    let lp = children.get_mut(LOCAL_PARENT).unwrap();
    lp.signal("TERM");
    assert!(
        lp.wait_exit(Duration::from_secs(30)).is_some(),
        "the local parent did not stop on SIGTERM"
    );

    generate_and_send(&parent, true);
    let with_certs = [
        HEALTHY[0],
        HEALTHY[1],
        HEALTHY[2],
        OFFLINE,
        FROZEN,
        BEHIND_LOCAL,
    ];
    wait_certificates(&parent, &with_certs);
    wait_status(
        &parent,
        "the pinned child's refusal of the CA",
        Duration::from_secs(60),
        |s| by_name(s)[WRONG_CA]["refusal"].is_string(),
    );

    // One child goes offline after it got its certificate.
    let gone = children.get_mut(OFFLINE).unwrap();
    gone.signal("TERM");
    assert!(
        gone.wait_exit(Duration::from_secs(30)).is_some(),
        "{OFFLINE} did not stop on SIGTERM"
    );
    wait_status(
        &parent,
        "the stopped child counted offline",
        Duration::from_secs(60),
        |s| by_name(s)[OFFLINE]["online"] == false,
    );

    // One child takes its commands and never answers.
    children[FROZEN].signal("STOP");
    let verify = run_campaign(&parent, "verify", 3, "5s");
    let status = parent.status_json().expect("status after verify");
    Mixed {
        vhost,
        dir,
        parent,
        ports,
        children,
        verify,
        status,
    }
}

#[test]
fn a_mixed_network_is_verified_and_every_child_counted_once() {
    let net = mixed_network();
    let (code, printed) = &net.verify;
    let status = &net.status;
    let agents = by_name(status);
    // Not every child passed: exit code 4.
    assert_eq!(*code, 4, "{printed}");

    let summary = &status["summary"];
    assert_eq!(count(summary, "passed"), 3, "{summary}");
    assert_eq!(count(summary, "with_errors"), 1, "{summary}");
    // Offline, frozen, the one refusing the CA and the local parent that
    // never got a certificate.
    assert_eq!(count(summary, "did_not_participate"), 4, "{summary}");
    assert_eq!(count(summary, "version_not_supporting_ssl"), 1, "{summary}");
    assert_eq!(count(summary, "mpos"), 1, "{summary}");
    assert_eq!(
        &printed["summary"], summary,
        "verify --json prints the summary"
    );

    let campaign = &status["campaign"];
    assert_eq!(campaign["kind"], "verify", "{campaign}");
    assert_eq!(campaign["state"], "finished", "{campaign}");
    assert_eq!(count(campaign, "window"), 3, "{campaign}");
    assert_eq!(count(campaign, "total"), 6, "{campaign}");
    assert_eq!(count(campaign, "passed"), 3, "{campaign}");
    assert_eq!(count(campaign, "failed"), 1, "{campaign}");
    assert_eq!(count(campaign, "did_not_participate"), 2, "{campaign}");
    assert_eq!(count(campaign, "acting") + count(campaign, "waiting"), 0);
    let most = count(campaign, "max_acting");
    assert!((1..=3).contains(&most), "max_acting {most}");
    assert_eq!(printed["campaign"]["id"], campaign["id"], "{printed}");
    let id = campaign["id"].as_str().unwrap();

    for name in HEALTHY {
        assert_passed(&agents, name, id);
    }

    // Refused the CA: no certificate, not in the campaign, the refusal shown.
    let pinned = &agents[WRONG_CA];
    assert_eq!(pinned["has_certificate"], false, "{pinned}");
    assert!(pinned["last_result"].is_null(), "{pinned}");
    let refusal = pinned["refusal"].as_str().unwrap();
    assert!(
        refusal.contains("does not match the pinned"),
        "{WRONG_CA}'s refusal: {refusal}"
    );

    let offline = last_result(&agents, OFFLINE);
    assert_eq!(offline["state"], "did_not_participate", "{offline}");
    assert_eq!(offline["campaign"], id, "{offline}");
    assert!(
        offline["message"]
            .as_str()
            .is_some_and(|m| m.contains("offline")),
        "{offline}"
    );
    assert!(offline["cert_test"].is_null(), "{offline}");

    for name in [OLD, MPOS] {
        let agent = &agents[name];
        assert!(agent["last_result"].is_null(), "{name}: {agent}");
        assert_eq!(agent["has_certificate"], false, "{name}: {agent}");
    }
    assert_eq!(agents[OLD]["ssl_capable"], false);
    assert_eq!(agents[MPOS]["kind"], "mpos");

    let frozen = last_result(&agents, FROZEN);
    assert_eq!(frozen["state"], "did_not_participate", "{frozen}");
    assert_eq!(frozen["cause"], "timeout", "{frozen}");
    assert_eq!(frozen["step"], "cert-test", "{frozen}");
    assert!(frozen["cert_test"].is_null(), "{frozen}");
    assert!(frozen["started_at"].is_u64() && frozen["finished_at"].is_u64());

    let behind = last_result(&agents, BEHIND_LOCAL);
    assert_eq!(behind["state"], "failed", "{behind}");
    assert_eq!(behind["step"], "ssl-port", "{behind}");
    assert_eq!(behind["cause"], "refused", "{behind}");
    let expected = format!(
        "Failed to establish connection over the SSL port {}.",
        net.ports.local
    );
    for message in [&behind["message"], &behind["ssl_port"]["message"]] {
        assert!(
            message.as_str().is_some_and(|m| m.starts_with(&expected)),
            "{BEHIND_LOCAL}: want {expected:?}, got {message}"
        );
    }
    assert_eq!(behind["ssl_port"]["ok"], false, "{behind}");
    assert_eq!(behind["ssl_port"]["cause"], "refused", "{behind}");
    assert_eq!(behind["cert_test"]["message"], CERT_OK, "{behind}");

    let lp = &agents[LOCAL_PARENT];
    assert_eq!(lp["has_certificate"], false, "{lp}");
    assert!(lp["last_result"].is_null(), "{lp}");

    // The table names the ones that did not pass, with their causes.
    let (code, table, _) = net.parent.cli(&["status"]);
    assert_eq!(code, 0);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{table}"))
            .to_owned()
    };
    let behind = line(BEHIND_LOCAL);
    assert!(
        behind.contains(" failed ") && behind.contains(" refused "),
        "{table}"
    );
    assert!(line(FROZEN).contains(" did_not_participate "), "{table}");
    assert!(line(OFFLINE).contains(" did_not_participate "), "{table}");
    assert!(line(HEALTHY[0]).contains(" passed "), "{table}");
    assert!(
        table.lines().next().is_some_and(|l| l.contains("network:")),
        "{table}"
    );
    assert!(
        table.contains(" RESULT ") && table.contains(" CAUSE "),
        "{table}"
    );
    net.children[FROZEN].signal("CONT");
}

#[test]
fn reverify_touches_only_the_children_that_did_not_pass() {
    let mut net = mixed_network();
    assert_eq!(net.verify.0, 4, "{}", net.verify.1);
    let first = net.status["campaign"]["id"].as_str().unwrap().to_owned();
    let before = by_name(&net.status);
    let not_passed: HashSet<String> = before
        .iter()
        .filter(|(_, a)| a["last_result"].is_object() && a["last_result"]["state"] != "passed")
        .map(|(n, _)| n.clone())
        .collect();
    let expected: HashSet<String> = [OFFLINE, FROZEN, BEHIND_LOCAL]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(not_passed, expected);

    // Remove every reason: the frozen child runs again, the offline one
    // comes back, the local parent comes back, gets its certificate and
    // serves its location's SSL port.
    net.children[FROZEN].signal("CONT");
    let dir = net.dir.path().to_owned();
    net.children.insert(
        OFFLINE,
        start_child(&net.vhost, &dir, OFFLINE, &["--location", "hq"]),
    );
    net.children.insert(
        LOCAL_PARENT,
        start_child(&net.vhost, &dir, LOCAL_PARENT, &local_parent_flags()),
    );
    net.parent.wait_online(&[FROZEN, OFFLINE, LOCAL_PARENT]);
    wait_certificates(&net.parent, &[LOCAL_PARENT]);
    let local = net.ports.local;
    wait_for(
        "the local parent serving its SSL port",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", local)).ok(),
    );
    // A late answer of the frozen child to the first campaign changes nothing.
    let status = net.parent.status_json().unwrap();
    assert_eq!(
        by_name(&status)[FROZEN]["last_result"]["state"],
        "did_not_participate"
    );

    let (code, printed) = run_campaign(&net.parent, "reverify", 3, "5s");
    assert_eq!(code, 0, "every reverified child passes: {printed}");
    let status = net.parent.status_json().unwrap();
    let campaign = &status["campaign"];
    assert_eq!(campaign["kind"], "reverify", "{campaign}");
    assert_eq!(campaign["state"], "finished", "{campaign}");
    let second = campaign["id"].as_str().unwrap();
    assert_ne!(second, first);
    assert_eq!(
        count(campaign, "total"),
        not_passed.len() as u64,
        "{campaign}"
    );
    assert_eq!(
        count(campaign, "passed"),
        not_passed.len() as u64,
        "{campaign}"
    );
    assert_eq!(
        count(campaign, "failed") + count(campaign, "did_not_participate"),
        0
    );

    let agents = by_name(&status);
    for name in HEALTHY {
        // Not touched: their last result is still the first campaign's.
        assert_passed(&agents, name, &first);
    }
    for name in &not_passed {
        assert_passed(&agents, name, second);
        assert_eq!(agents[name.as_str()]["last_result"]["kind"], "reverify");
    }
    let summary = &status["summary"];
    assert_eq!(count(summary, "passed"), 6, "{summary}");
    assert_eq!(count(summary, "with_errors"), 0, "{summary}");
    // Still without a test result: the child refusing the CA, and the local
    // parent, which only now holds a certificate.
    assert_eq!(count(summary, "did_not_participate"), 2, "{summary}");
    assert_eq!(count(summary, "version_not_supporting_ssl"), 1, "{summary}");
    assert_eq!(count(summary, "mpos"), 1, "{summary}");
    assert!(agents[WRONG_CA]["last_result"].is_null());
    assert!(agents[LOCAL_PARENT]["last_result"].is_null());

    // Nothing left to reverify: refused with exit code 3.
    let (code, _, err) = net.parent.cli(&["reverify", "--json"]);
    assert_eq!(code, 3, "{err}");
}

/// What each child says it did for campaign `id`, from copies of the step
/// reports it sent: (child, from when it began its first step to when it
/// sent its last report, by its own clock; the number of reports).
fn acted_by_children_reports(tap: &Tap, id: &str) -> HashMap<String, (u64, u64, usize)> {
    let mut acted: HashMap<String, (u64, u64, usize)> = HashMap::new();
    for envelope in tap.take() {
        let Body::StepReport(report) = &envelope.body else {
            continue;
        };
        if report.campaign.to_string() != id {
            continue;
        }
        let began = report
            .started_at
            .unwrap_or_else(|| panic!("a step report without started_at: {report:?}"));
        assert!(began <= envelope.at, "{report:?} sent at {}", envelope.at);
        let entry = acted
            .entry(envelope.from.to_string())
            .or_insert((began, envelope.at, 0));
        entry.0 = entry.0.min(began);
        entry.1 = entry.1.max(envelope.at);
        entry.2 += 1;
    }
    acted
}

#[test]
fn the_window_is_never_exceeded() {
    let vhost = Vhost::new();
    let dir = test_dir();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "30"]);
    let _swarm = start_swarm(&vhost, dir.path(), "w", 60, 1);
    wait_swarm(&parent, "w", 60, "online");
    set_ssl_settings(&parent);
    generate_and_send(&parent, false);
    wait_swarm(&parent, "w", 60, "has_certificate");

    // A copy of everything the children send the parent from now on.
    let tap = Tap::new(&vhost, topology::PARENT, topology::PARENT);
    let (code, printed) = run_campaign(&parent, "verify", 7, "20s");
    assert_eq!(code, 0, "every child passes: {printed}");
    let status = parent.status_json().unwrap();
    let campaign = &status["campaign"];
    let id = campaign["id"].as_str().unwrap();

    // The children's side: each child's two steps, from the start of its
    // first to the report of its second, as the children themselves stamp
    // their reports (one machine, one clock). The parent holds a child's
    // place in the window from before it sends the first step until after it
    // reads the last report, so these intervals lie inside the parent's.
    let acted = acted_by_children_reports(&tap, id);
    let ids: HashSet<String> = swarm_agents(&status, "w")
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        acted.keys().cloned().collect::<HashSet<_>>(),
        ids,
        "every child reported"
    );
    let intervals: Vec<(u64, u64)> = acted
        .values()
        .map(|&(began, ended, reports)| {
            assert_eq!(reports, 2, "two steps, one report each");
            (began, ended)
        })
        .collect();
    let overlap = max_overlap(&intervals);
    assert!(
        (1..=7).contains(&overlap),
        "{overlap} children acted at once by their own reports (window 7)"
    );

    // The parent's side: its count, and its records of each child.
    assert_eq!(count(campaign, "window"), 7, "{campaign}");
    assert_eq!(count(campaign, "total"), 60, "{campaign}");
    assert_eq!(count(campaign, "passed"), 60, "{campaign}");
    let most = count(campaign, "max_acting");
    assert!((1..=7).contains(&most), "max_acting {most} outside 1..=7");
    let intervals: Vec<(u64, u64)> = swarm_agents(&status, "w")
        .iter()
        .map(|a| {
            let r = &a["last_result"];
            assert_eq!(r["campaign"], id, "{a}");
            let start = r["started_at"].as_u64().expect("started_at");
            let end = r["finished_at"].as_u64().expect("finished_at");
            assert!(start <= end, "{r}");
            (start, end)
        })
        .collect();
    assert_eq!(intervals.len(), 60);
    let overlap = max_overlap(&intervals);
    assert!(
        (1..=7).contains(&overlap),
        "{overlap} children acted at once by the parent's records (window 7)"
    );
}

#[test]
fn a_parent_killed_mid_campaign_resumes_it_and_every_child_ends_once() {
    const COUNT: usize = 200;
    let vhost = Vhost::new();
    let dir = test_dir();
    let extra = ["--offline-after", "30"];
    let mut parent = Parent::start(&vhost, dir.path(), &extra);
    let swarm = start_swarm(&vhost, dir.path(), "c", COUNT, 1);
    wait_swarm(&parent, "c", COUNT, "online");
    set_ssl_settings(&parent);
    generate_and_send(&parent, false);
    wait_swarm(&parent, "c", COUNT, "has_certificate");

    let started = json(&parent.cli_ok(&[
        "verify",
        "--detach",
        "--concurrency",
        "20",
        "--step-timeout",
        "20s",
        "--json",
    ]));
    assert_eq!(count(&started, "total"), COUNT as u64, "{started}");
    assert_eq!(count(&started, "window"), 20, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();

    let done =
        |p: &Value| count(p, "passed") + count(p, "failed") + count(p, "did_not_participate");
    wait_for("some children done", Duration::from_secs(120), || {
        let progress = campaign_json(&parent)?;
        assert!(
            done(&progress) < COUNT as u64,
            "the campaign ended before the parent could be killed: {progress}"
        );
        (done(&progress) > 0).then_some(progress)
    });
    // Hold the children still for a moment so that the campaign cannot end
    // before the kill; what they already sent waits in the queue.
    swarm.signal("STOP");
    let progress = campaign_json(&parent).expect("campaign --json");
    assert_eq!(progress["id"], id.as_str());
    assert_eq!(progress["state"], "running", "{progress}");
    let done_before = done(&progress);
    assert!(done_before > 0 && done_before < COUNT as u64, "{progress}");
    parent.proc.signal("KILL");
    parent.restart(&vhost, &extra);
    swarm.signal("CONT");

    let progress = wait_for("the campaign to end", Duration::from_secs(300), || {
        let progress = campaign_json(&parent)?;
        (progress["state"] != "running").then_some(progress)
    });
    assert_eq!(progress["id"], id.as_str());
    assert_eq!(progress["state"], "finished", "{progress}");
    assert_eq!(count(&progress, "total"), COUNT as u64, "{progress}");
    let failures: Vec<String> = parent
        .status_json()
        .map(|status| {
            status["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["last_result"]["state"] != "passed")
                .map(|a| format!("{}: {}", a["name"], a["last_result"]))
                .collect()
        })
        .unwrap_or_default();
    // Every child ends exactly once. A handshake cut by the SIGKILL itself
    // may be reported by the dying parent before it goes: such a child ends
    // failed at step 2 (the parent retries only failures reported to the new
    // process); nothing else may fail.
    assert!(
        count(&progress, "passed") + failures.len() as u64 == COUNT as u64 && failures.len() <= 20,
        "{progress}\nnot passed:\n{}",
        failures.join("\n")
    );
    for failure in &failures {
        assert!(
            failure.contains("\"step\":\"ssl-port\"")
                && failure.contains("Failed to establish connection over the SSL port"),
            "only the kill may fail a child: {failure}"
        );
    }
    assert_eq!(done(&progress), COUNT as u64, "{progress}");
    assert_eq!(count(&progress, "acting") + count(&progress, "waiting"), 0);
    assert!(
        (1..=20).contains(&count(&progress, "max_acting")),
        "{progress}"
    );
    assert!(done(&progress) >= done_before);

    let status = parent.status_json().unwrap();
    let agents = swarm_agents(&status, "c");
    assert_eq!(agents.len(), COUNT, "each child listed once");
    let names: HashSet<&str> = agents.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names.len(), COUNT, "each child listed once");
    let map: HashMap<String, Value> = agents
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_owned(), a.clone()))
        .collect();
    for name in map.keys() {
        if map[name]["last_result"]["state"] == "passed" {
            assert_passed(&map, name, &id);
        }
    }
    assert_eq!(
        count(&status["summary"], "passed") + count(&status["summary"], "with_errors"),
        COUNT as u64
    );
    assert_eq!(
        count(&status["summary"], "with_errors"),
        failures.len() as u64
    );
    assert_eq!(count(&status["summary"], "did_not_participate"), 0);

    // The registry holds each step of each child once.
    let text = parent.registry_query(&format!(
        "SELECT count(*), count(DISTINCT agent || '/' || step), sum(ok) FROM step_results WHERE campaign = '{id}';"
    ));
    assert_eq!(
        text,
        format!("{0}|{0}|{1}", 2 * COUNT, 2 * COUNT - failures.len()),
        "step_results of the campaign (rows|distinct|passed)"
    );
    let passed = COUNT - failures.len();
    let text = parent.registry_query(&format!(
        "SELECT count(*), count(DISTINCT agent) FROM campaign_children WHERE campaign = '{id}' AND state = 'passed';"
    ));
    assert_eq!(text, format!("{passed}|{passed}"));
}

/// A parent that stays down longer than `--offline-after` while its children
/// keep heartbeating (and answering) into its queue must not take them for
/// offline, nor their answers for missing, before it has read that queue.
#[test]
fn a_parent_down_longer_than_offline_after_does_not_drop_waiting_children() {
    const COUNT: usize = 200;
    let vhost = Vhost::new();
    let dir = test_dir();
    let extra = ["--offline-after", "5"];
    let mut parent = Parent::start(&vhost, dir.path(), &extra);
    let swarm = start_swarm(&vhost, dir.path(), "o", COUNT, 1);
    wait_swarm(&parent, "o", COUNT, "online");
    set_ssl_settings(&parent);
    generate_and_send(&parent, false);
    wait_swarm(&parent, "o", COUNT, "has_certificate");

    // Hold the children so that the campaign is surely under way, not over,
    // when the parent dies.
    swarm.signal("STOP");
    let started = json(&parent.cli_ok(&[
        "verify",
        "--detach",
        "--concurrency",
        "10",
        "--step-timeout",
        "5s",
        "--json",
    ]));
    let id = started["id"].as_str().unwrap().to_owned();
    wait_for("ten children acting", Duration::from_secs(30), || {
        let progress = campaign_json(&parent)?;
        (count(&progress, "acting") == 10).then_some(())
    });
    parent.proc.signal("KILL");
    swarm.signal("CONT");
    // The outage has to outlast --offline-after (5 s) and the step timeout (5 s): the scenario needs a
    // fixed wait, during which every child heartbeats into the queue.
    std::thread::sleep(Duration::from_secs(10));
    parent.restart(&vhost, &extra);

    let progress = wait_for("the campaign to end", Duration::from_secs(180), || {
        let progress = campaign_json(&parent)?;
        (progress["state"] != "running").then_some(progress)
    });
    assert_eq!(progress["id"], id.as_str());
    let status = parent.status_json().unwrap();
    let not_passed: Vec<String> = swarm_agents(&status, "o")
        .iter()
        .filter(|a| a["last_result"]["state"] != "passed")
        .map(|a| format!("{}: {}", a["name"], a["last_result"]))
        .collect();
    assert!(
        not_passed.is_empty(),
        "{} of {COUNT} children, online all along, did not pass after the parent came back:\n{}",
        not_passed.len(),
        not_passed.join("\n")
    );
    assert_eq!(count(&progress, "passed"), COUNT as u64, "{progress}");
}

/// `openssl s_client` to the SSL port with stdin closed: `-ign_eof` keeps
/// it reading until the server ends the connection (after its greeting, or
/// with an alert); its whole output.
fn s_client(ssl_port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-ign_eof",
            "-connect",
            &format!("127.0.0.1:{ssl_port}"),
            "-CAfile",
        ])
        .arg(ca);
    if let Some((cert, key)) = client {
        command.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let output = command.stdin(Stdio::null()).output().expect("openssl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_ssl_port_answers_openssl_with_a_client_certificate_only() {
    let vhost = Vhost::new();
    let dir = test_dir();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "30"]);
    let _till = start_child(&vhost, dir.path(), "till-1", &[]);
    parent.wait_online(&["till-1"]);
    let ports = set_ssl_settings(&parent);
    generate_and_send(&parent, false);
    wait_certificates(&parent, &["till-1"]);
    let status = parent.status_json().unwrap();
    assert_eq!(
        status["network"]["ssl_port"], ports.ssl,
        "{}",
        status["network"]
    );

    let ca = parent.cert_file(CertFile::CaPem);
    let till = child_layout(dir.path(), "till-1");
    let greeting = format!("fleetls-parent {} ok", env!("CARGO_PKG_VERSION"));
    let with_cert = s_client(ports.ssl, &ca, Some((&till.chain(), &till.key())));
    // The greeting is a line of its own (the certificate's CN is
    // `fleetls-parent` too, so the whole line is what counts).
    assert!(
        with_cert.lines().any(|l| l.trim() == greeting),
        "no greeting:\n{with_cert}"
    );
    assert!(
        with_cert.contains("Verify return code: 0"),
        "the parent's certificate does not verify under ca.pem:\n{with_cert}"
    );
    assert!(!with_cert.contains(" alert "), "{with_cert}");

    // TLS 1.3 refuses a missing client certificate after the handshake,
    // with the alert made for it (116, certificate_required).
    let without = s_client(ports.ssl, &ca, None);
    assert!(
        without.contains(":tlsv13 alert certificate required:"),
        "no \"certificate required\" alert without a client certificate:\n{without}"
    );
    assert!(
        !without.lines().any(|l| l.contains(&greeting)),
        "the greeting came without a client certificate:\n{without}"
    );
}
