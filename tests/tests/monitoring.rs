//! The monitoring shipped under `deploy/` plugs into what the parent really
//! exports: the Prometheus rules pass `promtool check rules`, their unit
//! tests (`promtool test rules`) fire every alert on made-up series, and
//! every metric — and every label value matched — named by a rule or a
//! panel of the Grafana dashboard is on the `/metrics` page of a running
//! parent that has certificates, a campaign, a CA rotation, a topology
//! repair and the broker's nodes to show.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fleetls_tests::{http, repo, start_child, tools, wait_for, Parent, Vhost, WAIT};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn prometheus_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

/// Runs promtool with `args` in deploy/prometheus; panics with its output
/// unless it succeeds.
fn promtool(args: &[&str]) -> String {
    tools::ensure("promtool");
    let output = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests_fire_every_alert() {
    let checked = promtool(&["check", "rules", "fleetls-rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "fleetls-rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert of the rules has a unit test that expects it to fire.
    let (rules, _) = rules();
    let tests = std::fs::read_to_string(prometheus_dir().join("fleetls-rules.test.yml")).unwrap();
    let tests = &YamlLoader::load_from_str(&tests).unwrap()[0];
    let mut fired = BTreeSet::new();
    for case in tests["tests"].as_vec().unwrap() {
        for check in case["alert_rule_test"].as_vec().unwrap() {
            if check["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()) {
                fired.insert(check["alertname"].as_str().unwrap().to_owned());
            }
        }
    }
    let alerts: BTreeSet<String> = rules
        .iter()
        .filter(|(kind, _, _)| kind == "alert")
        .map(|(_, name, _)| name.clone())
        .collect();
    let untested: Vec<&String> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts no unit test fires: {untested:?}"
    );
    for needed in [
        "FleetlsParentDown",
        "FleetlsAgentsOffline",
        "FleetlsAgentsSilent",
        "FleetlsCertificateRenewalOverdue",
        "FleetlsRenewalsFailing",
        "FleetlsSecurityEvents",
        "FleetlsTopologyRepaired",
        "FleetlsCaRotationStuck",
        "FleetlsOpenEnrollment",
    ] {
        assert!(alerts.contains(needed), "no alert {needed}");
    }
}

/// The rules of deploy/prometheus/fleetls-rules.yml: (`alert` or `record`,
/// name, expression), and the names recorded.
fn rules() -> (Vec<(String, String, String)>, BTreeSet<String>) {
    let text = std::fs::read_to_string(prometheus_dir().join("fleetls-rules.yml")).unwrap();
    let doc = &YamlLoader::load_from_str(&text).unwrap()[0];
    let mut rules = Vec::new();
    for group in doc["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            let (kind, name) = match (&rule["alert"], &rule["record"]) {
                (Yaml::String(a), _) => ("alert", a.clone()),
                (_, Yaml::String(r)) => ("record", r.clone()),
                _ => panic!("a rule is neither an alert nor a record: {rule:?}"),
            };
            rules.push((kind.to_owned(), name, expr));
        }
    }
    let recorded = rules
        .iter()
        .filter(|(kind, _, _)| kind == "record")
        .map(|(_, name, _)| name.clone())
        .collect();
    (rules, recorded)
}

/// Every query of the dashboard's panels: (panel title, expression).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/fleetls.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "fleetls");
    let mut queries = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "panel ids repeat"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "every query uses the dashboard's data source variable"
            );
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            queries.push((title, target["expr"].as_str().expect("expr").to_owned()));
        }
    }
    assert!(queries.len() > 10, "{queries:?}");
    queries
}

/// One vector selector of a PromQL expression: a metric name and its label
/// matchers (label, operator, value).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// PromQL's aggregations and the functions the rules and the dashboard may
/// call (an unknown name followed by `(` fails the test: it may be a
/// misspelt metric).
const FUNCTIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "clamp_min",
    "clamp_max",
    "increase",
    "rate",
    "delta",
    "changes",
    "time",
    "absent",
    "label_values",
];

/// Keywords followed by a list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Binary operators and modifiers spelt as words.
const WORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];

/// The vector selectors of a PromQL expression (a small tokenizer: enough
/// for the expressions fleetls ships, and strict about anything else).
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            // A range or subquery: durations only.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '"' {
            panic!("a string outside a selector in {expr:?}");
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            skip_space(&mut j);
            let next = chars.get(j).copied();
            if LABEL_LISTS.contains(&word.as_str()) {
                assert_eq!(next, Some('('), "{word} without a label list in {expr:?}");
                while chars[j] != ')' {
                    j += 1;
                }
                i = j + 1;
            } else if WORDS.contains(&word.as_str()) {
            } else if FUNCTIONS.contains(&word.as_str()) {
                assert!(
                    matches!(next, Some('('))
                        || LABEL_LISTS.contains(&peek_word(&chars, j).as_str()),
                    "{word} is not called in {expr:?}"
                );
            } else {
                assert_ne!(next, Some('('), "unknown function {word} in {expr:?}");
                let mut matchers = Vec::new();
                if next == Some('{') {
                    let close = (j..chars.len()).find(|&k| chars[k] == '}').expect("}");
                    let body: String = chars[j + 1..close].iter().collect();
                    matchers = parse_matchers(&body, expr);
                    i = close + 1;
                }
                found.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else if c == '{' {
            panic!("a selector without a metric name in {expr:?}");
        } else {
            i += 1;
        }
    }
    found
}

fn peek_word(chars: &[char], at: usize) -> String {
    chars[at.min(chars.len())..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
        .collect()
}

/// `label op "value", ...`.
fn parse_matchers(body: &str, expr: &str) -> Vec<(String, String, String)> {
    let mut matchers = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or_else(|| panic!("a label without an operator in {expr:?}"));
        let name = rest[..name_end].to_owned();
        rest = rest[name_end..].trim_start();
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .unwrap_or_else(|| panic!("no matcher operator after {name} in {expr:?}"));
        rest = rest[op.len()..].trim_start();
        assert!(rest.starts_with('"'), "an unquoted value in {expr:?}");
        let close = rest[1..].find('"').expect("closing quote") + 1;
        matchers.push((name, op.to_owned(), rest[1..close].to_owned()));
        rest = rest[close + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    matchers
}

#[test]
fn the_selector_reader_reads_what_the_rules_write() {
    let found = selectors(
        "sum by (job, instance) (fleetls_security_events_total{kind!=\"topology\"})\n\
         or on (job, instance) (up{job=\"fleetls-parent\"} * 0) and fleetls:x:total > 0.25 * \
         increase(fleetls_a[5m]) / ignoring (state) clamp_min(fleetls_b{state=~\"a|b\"}, 1)",
    );
    let names: Vec<&str> = found.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(
        names,
        [
            "fleetls_security_events_total",
            "up",
            "fleetls:x:total",
            "fleetls_a",
            "fleetls_b"
        ]
    );
    assert_eq!(
        found[4].matchers,
        [("state".to_owned(), "=~".to_owned(), "a|b".to_owned())]
    );
}

/// The series of a `/metrics` page: metric name → the label sets shown.
fn series(page: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (head, _value) = line.rsplit_once(' ').expect("name and value");
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let labels = parse_matchers(labels, line)
            .into_iter()
            .map(|(k, _, v)| (k, v))
            .collect();
        out.entry(name.to_owned()).or_default().push(labels);
    }
    out
}

/// What is wrong with `selector` against the page's `series` (`None`:
/// nothing): the metric is not exported, or a label it matches is not on
/// it, or a value it asks for is not among those shown.
fn mismatch(
    selector: &Selector,
    series: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
    recorded: &BTreeSet<String>,
) -> Option<String> {
    let metric = selector.metric.as_str();
    if metric == "up" {
        // Prometheus's own, per scrape target: the job the rules expect.
        let job = selector
            .matchers
            .iter()
            .any(|(l, op, v)| l == "job" && op == "=" && v == "fleetls-parent");
        return (!job).then(|| "up without job=\"fleetls-parent\"".to_owned());
    }
    if metric.contains(':') {
        return (!recorded.contains(metric)).then(|| format!("{metric} is recorded by no rule"));
    }
    let Some(shown) = series.get(metric) else {
        return Some(format!("{metric} is not on the parent's /metrics page"));
    };
    for (label, op, value) in &selector.matchers {
        // Prometheus adds these; Grafana's variables fill values in.
        if label == "job" || label == "instance" || value.contains('$') {
            continue;
        }
        if !shown.iter().any(|labels| labels.contains_key(label)) {
            return Some(format!("{metric} has no label {label}"));
        }
        let wanted: Vec<&str> = match op.as_str() {
            "=" => vec![value.as_str()],
            "=~" if value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|') =>
            {
                value.split('|').collect()
            }
            _ => Vec::new(),
        };
        for want in wanted {
            if !shown
                .iter()
                .any(|labels| labels.get(label).map(String::as_str) == Some(want))
            {
                return Some(format!(
                    "{metric}{{{label}=\"{want}\"}} is not on the parent's /metrics page"
                ));
            }
        }
    }
    None
}

/// Deletes a queue of the vhost through management, as a hostile broker
/// user with rights could.
fn delete_queue(vhost: &Vhost, queue: &str) {
    let broker = fleetls_tests::broker();
    let response = http()
        .delete(format!(
            "{}/api/queues/{}/{queue}",
            broker.management, vhost.name
        ))
        .basic_auth(&broker.user, Some(&broker.password))
        .send()
        .expect("management answers");
    assert!(response.status().is_success(), "{:?}", response.text());
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_on_a_running_parents_page() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _child = start_child(&vhost, dir.path(), "mon-1", &[]);
    parent.wait_online(&["mon-1"]);
    parent.settings_loopback(&[]);
    parent.certify(1, WAIT);
    // A campaign, finished.
    parent.cli_ok(&["verify", "--detach"]);
    wait_for("the verify campaign passed", WAIT, || {
        parent
            .metrics()
            .contains("children=\"passed\"} 1")
            .then_some(())
    });
    // A topology repair: a broker user deletes the dead-letter queue.
    delete_queue(&vhost, "fleetls.dead");
    wait_for("the topology repaired", WAIT, || {
        parent
            .metrics()
            .contains("fleetls_security_events_total{kind=\"topology\"}")
            .then_some(())
    });
    // A CA rotation.
    parent.cli_ok(&["ca", "rotate"]);
    let page = wait_for(
        "the rotation and the broker's nodes on /metrics",
        Duration::from_secs(60),
        || {
            let page = parent.metrics();
            (page.contains("fleetls_ca_rotation_phase{")
                && page.contains("fleetls_broker_node_running{")
                && page.contains("fleetls_certificate_soonest_expiry_seconds "))
            .then_some(page)
        },
    );
    let shown = series(&page);
    let (rules, recorded) = rules();

    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    let queries = rules
        .iter()
        .map(|(kind, name, expr)| (format!("rule {kind} {name}"), expr.clone()))
        .chain(
            dashboard_queries()
                .into_iter()
                .map(|(title, expr)| (format!("dashboard panel {title:?}"), expr)),
        );
    for (whose, expr) in queries {
        let found = selectors(&expr);
        assert!(!found.is_empty(), "{whose}: no metric in {expr:?}");
        for selector in found {
            used.insert(selector.metric.clone());
            if let Some(why) = mismatch(&selector, &shown, &recorded) {
                wrong.push(format!("{whose}: {why}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "names the parent does not export:\n{}\n\nthe page:\n{page}",
        wrong.join("\n")
    );
    // The alerts the issue asks for rest on these.
    for metric in [
        "fleetls_agents",
        "fleetls_certificate_soonest_expiry_seconds",
        "fleetls_certificate_lifetime_seconds",
        "fleetls_certificate_renewals",
        "fleetls_security_events_total",
        "fleetls_ca_rotation_phase",
        "fleetls_open_enrollment",
        "up",
    ] {
        assert!(used.contains(metric), "nothing uses {metric}");
    }
}
