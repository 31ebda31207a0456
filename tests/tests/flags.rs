//! One variable, one meaning. Every flag of both programs reads
//! `FLEETLS_<FLAG>` (`fleetls_bus::process::with_env`), so a flag name used
//! by two commands with two meanings is a trap: exported for one command,
//! the variable silently feeds the other (`FLEETLS_PARENT_KEY` once meant a
//! pin to children and a PEM path to `settings set`). This test walks every
//! command of `fleetls-parent` and `fleetls-child` as their `--help` prints
//! it, and fails when a variable is read by more than one command unless
//! [`SHARED`] says what its one meaning is; and it checks that
//! docs/variables.md lists every variable, once.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use fleetls_tests::{program, repo};

/// The variables several commands read, each with its one meaning.
const SHARED: &[(&str, &str)] = &[
    ("FLEETLS_ADMIN", "the parent's admin API address"),
    ("FLEETLS_AGENT", "an agent, by name or id"),
    ("FLEETLS_ALL", "every agent concerned"),
    (
        "FLEETLS_BROKER",
        "the broker's AMQP URL (or a cluster's list)",
    ),
    ("FLEETLS_CA", "the CA certificate file"),
    (
        "FLEETLS_CA_CERT",
        "a company CA certificate to sign with (PEM)",
    ),
    ("FLEETLS_CA_KEY", "that CA's private key (PEM)"),
    ("FLEETLS_CONCURRENCY", "how many children act at once"),
    ("FLEETLS_CONFIG", "the TOML config file"),
    (
        "FLEETLS_DATA_DIR",
        "the data dir of the program's own agent",
    ),
    ("FLEETLS_DETACH", "start and return without following"),
    (
        "FLEETLS_ENROLL_TOKEN",
        "the enrollment token an agent proves",
    ),
    ("FLEETLS_ENROLL_TOKEN_FILE", "the file holding that token"),
    (
        "FLEETLS_RECONNECT_MAX",
        "the cap of an agent's reconnect backoff",
    ),
    (
        "FLEETLS_REPORT_EVERY",
        "seconds between an agent's state reports",
    ),
    (
        "FLEETLS_IPS",
        "the IP addresses of the machine the program runs on",
    ),
    ("FLEETLS_JSON", "print JSON instead of text"),
    ("FLEETLS_OUT", "the folder to write into"),
    (
        "FLEETLS_PASSWORD_FILE",
        "the file holding an export's password",
    ),
    (
        "FLEETLS_QUEUE_TYPE",
        "the type of the queues fleetls declares",
    ),
    ("FLEETLS_STEP_TIMEOUT", "how long a child has for one step"),
    ("FLEETLS_TIMEOUT", "a campaign's deadline"),
    ("FLEETLS_TLS_VERSION", "the one TLS version a doctor offers"),
    ("FLEETLS_TOKEN_FILE", "the parent's admin token file"),
    (
        "FLEETLS_TRUST_STORE_FORMAT",
        "the store format kept beside the PEM files",
    ),
    (
        "FLEETLS_TRUST_STORE_PASSWORD_FILE",
        "the file holding the stores' password",
    ),
    (
        "FLEETLS_WAIT",
        "how long to wait for a parent still starting",
    ),
];

/// One flag of one command: (program, command path, value name, help).
type Use = (String, String, Option<String>, String);

/// The commands of `prog` under `path` (itself first), with their help.
fn commands(prog: &str, path: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let help = Command::new(program(prog))
        .args(&path)
        .arg("--help")
        .output()
        .expect("the program runs");
    let text = String::from_utf8_lossy(&help.stdout).into_owned();
    let subcommands: Vec<String> = text
        .split("\nCommands:\n")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .take_while(|line| !line.is_empty())
                .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
                .filter_map(|line| line.split_whitespace().next())
                .filter(|name| *name != "help")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    out.push((path.clone(), text));
    // Each subcommand's tree in a thread of its own: a debug build's
    // `--help` takes a while, and there are a hundred of them.
    let found: Vec<Vec<(Vec<String>, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = subcommands
            .into_iter()
            .map(|name| {
                let mut next = path.clone();
                next.push(name);
                scope.spawn(move || {
                    let mut found = Vec::new();
                    commands(prog, next, &mut found);
                    found
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a --help thread"))
            .collect()
    });
    out.extend(found.into_iter().flatten());
}

/// The flags that read a variable in one command's help, by variable.
fn flags(help: &str) -> Vec<(String, Option<String>, String)> {
    let Some(options) = help.split("\nOptions:\n").nth(1) else {
        return Vec::new();
    };
    // Each option starts on a line indented by at most six spaces with `-`.
    let mut entries: Vec<String> = Vec::new();
    for line in options.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('-') && indent <= 6 {
            entries.push(trimmed.to_owned());
        } else if let Some(last) = entries.last_mut() {
            last.push(' ');
            last.push_str(trimmed);
        }
    }
    entries
        .iter()
        .filter_map(|entry| {
            let var = entry.split("[env: ").nth(1)?.split('=').next()?.to_owned();
            let flag = entry.split("--").nth(1)?;
            let value = flag
                .split_once(" <")
                .and_then(|(_, v)| v.split('>').next())
                .map(str::to_owned);
            let help = entry.split("[env:").next().unwrap_or("").to_owned();
            Some((var, value, help))
        })
        .collect()
}

fn every_variable() -> BTreeMap<String, Vec<Use>> {
    let mut by_var: BTreeMap<String, Vec<Use>> = BTreeMap::new();
    for prog in ["fleetls-parent", "fleetls-child"] {
        let mut all = Vec::new();
        commands(prog, Vec::new(), &mut all);
        assert!(all.len() > 3, "{prog}: no subcommands read from --help");
        for (path, help) in all {
            for (var, value, text) in flags(&help) {
                by_var
                    .entry(var)
                    .or_default()
                    .push((prog.to_owned(), path.join(" "), value, text));
            }
        }
    }
    by_var
}

#[test]
fn every_variable_has_one_meaning_and_is_listed() {
    let by_var = every_variable();
    assert!(by_var.len() > 40, "too few variables found: {by_var:?}");
    let shared: BTreeMap<&str, &str> = SHARED.iter().copied().collect();
    let mut clashes = Vec::new();
    for (var, uses) in &by_var {
        let commands: BTreeSet<(&str, &str)> = uses
            .iter()
            .map(|(prog, path, _, _)| (prog.as_str(), path.as_str()))
            .collect();
        if commands.len() > 1 && !shared.contains_key(var.as_str()) {
            clashes.push(format!(
                "{var} is read by {} commands: {:?}",
                commands.len(),
                uses.iter()
                    .map(|(p, c, v, h)| format!(
                        "{p} {c} <{}>: {}",
                        v.as_deref().unwrap_or(""),
                        h.trim()
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        // One meaning also means one kind of value: a switch and a value,
        // or two different value names, are two meanings.
        let values: BTreeSet<&Option<String>> = uses.iter().map(|(_, _, v, _)| v).collect();
        if values.len() > 1 {
            clashes.push(format!(
                "{var} takes different values: {values:?} in {uses:?}"
            ));
        }
    }
    for (var, _) in SHARED {
        let commands = by_var.get(*var).map_or(0, |uses| {
            uses.iter()
                .map(|(prog, path, _, _)| (prog, path))
                .collect::<BTreeSet<_>>()
                .len()
        });
        if commands < 2 {
            clashes.push(format!(
                "{var} is in SHARED but read by {commands} command(s): take it out"
            ));
        }
    }
    assert!(
        clashes.is_empty(),
        "a variable with more than one meaning: rename one flag (keep the old spelling as an alias), \
         or, if the meaning is the same, say so in SHARED:\n{}",
        clashes.join("\n")
    );

    // docs/variables.md lists each one, once: `| FLEETLS_X | ... |`.
    let doc = std::fs::read_to_string(repo().join("docs/variables.md")).expect("docs/variables.md");
    let listed: Vec<&str> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| name.starts_with("FLEETLS_"))
        .collect();
    let listed_set: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        listed.len(),
        listed_set.len(),
        "docs/variables.md lists a variable twice"
    );
    let missing: Vec<String> = by_var
        .iter()
        .filter(|(var, _)| !listed_set.contains(var.as_str()))
        .map(|(var, uses)| {
            let (prog, path, _, help) = &uses[0];
            format!("| `{var}` | `{prog} {path}` | {} |", help.trim())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/variables.md does not list (add these lines, with the meaning in your words):\n{}",
        missing.join("\n")
    );
}
