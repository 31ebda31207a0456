//! The operator's CLI as a process: every command of both programs, and
//! every subcommand below it, has `--help` text that explains it (a
//! description, its usage, a description for each option), the commands
//! listed are exactly the expected ones, `verify` shows its progress line
//! and summary and exits 4 when a child fails, `--json` prints JSON scripts
//! can read, and the campaign can be followed again with `campaign`.

use std::process::Command;
use std::time::Duration;

use fleetls_tests::{free_port, program, start_child, wait_for, Parent, Vhost};

/// The commands `fleetls-parent --help` lists, in its order.
const PARENT_COMMANDS: &[&str] = &[
    "serve",
    "status",
    "cluster",
    "settings",
    "verify",
    "reverify",
    "switch",
    "force-switch",
    "switch-broker",
    "without-ssl",
    "enroll",
    "agents",
    "ca",
    "revoke",
    "signing-key",
    "security",
    "broker-tls",
    "export",
    "doctor",
    "campaign",
    "certs",
    "help",
];

/// The commands `fleetls-child --help` lists, in its order.
const CHILD_COMMANDS: &[&str] = &["run", "swarm", "import", "doctor", "help"];

/// Runs `program ARGS`, which must exit 0 and print nothing on stderr; its stdout.
fn help(name: &str, args: &[&str]) -> String {
    let output = Command::new(program(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && err.is_empty(),
        "{name} {args:?} exited with {:?}: {err}",
        output.status.code()
    );
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// The entries of one section of clap's help (`Commands:`, `Options:`):
/// (name, description), the description empty when there is none. An entry
/// is indented less than 8 columns; its description follows two spaces or
/// comes on the deeper-indented lines below (clap's layout for long ones);
/// the section ends at the next line that is not indented.
fn section(help: &str, title: &str) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in help
        .lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
    {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        match entries.last_mut() {
            Some((_, what)) if indent >= 8 => {
                if !what.is_empty() {
                    what.push(' ');
                }
                what.push_str(text);
            }
            _ => {
                let (name, what) = text.split_once("  ").unwrap_or((text, ""));
                entries.push((name.trim().to_owned(), what.trim().to_owned()));
            }
        }
    }
    entries
}

/// `program PATH.. --help` explains itself: a description before its usage
/// line, the right usage line, a description for every option; and so does
/// every subcommand it lists, each opening with the description listed.
fn explains_itself(name: &str, path: &[&str]) {
    let args: Vec<&str> = path.iter().copied().chain(["--help"]).collect();
    let text = help(name, &args);
    let shown = [name]
        .iter()
        .chain(path)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let (about, rest) = text
        .split_once("\n\nUsage: ")
        .unwrap_or_else(|| panic!("`{shown} --help` has no description before its usage:\n{text}"));
    assert!(
        !about.trim().is_empty(),
        "`{shown} --help` has no description:\n{text}"
    );
    assert!(
        rest.starts_with(&format!("{shown} ")) || rest.starts_with(&format!("{shown}\n")),
        "`{shown} --help` shows another usage:\n{text}"
    );
    let options = section(&text, "Options:");
    assert!(
        !options.is_empty(),
        "`{shown} --help` lists no option:\n{text}"
    );
    for (option, what) in options {
        assert!(
            !what.is_empty(),
            "`{shown} --help`: {option} has no description:\n{text}"
        );
    }
    for (command, what) in section(&text, "Commands:") {
        assert!(
            !what.is_empty(),
            "`{shown} --help`: {command} has no description:\n{text}"
        );
        if command == "help" {
            continue;
        }
        let sub: Vec<&str> = path.iter().copied().chain([command.as_str()]).collect();
        let sub_text = help(name, &[&sub[..], &["--help"]].concat());
        assert!(
            sub_text.starts_with(what.as_str()),
            "`{shown} {command} --help` does not open with what `{shown} --help` says of it ({what:?}):\n{sub_text}"
        );
        explains_itself(name, &sub);
    }
}

#[test]
fn every_operation_explains_itself() {
    for (name, expected) in [
        ("fleetls-parent", PARENT_COMMANDS),
        ("fleetls-child", CHILD_COMMANDS),
    ] {
        let top = help(name, &["--help"]);
        let listed: Vec<String> = section(&top, "Commands:")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(listed, expected, "the commands of `{name} --help`:\n{top}");
        explains_itself(name, &[]);
        let unknown = Command::new(program(name))
            .arg("frobnicate")
            .output()
            .unwrap();
        assert_eq!(unknown.status.code(), Some(2), "{name} frobnicate");
    }
}

#[test]
fn verify_shows_progress_and_summary_and_json_reads_back() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "30"]);
    let _good = start_child(&vhost, dir.path(), "good-1", &[]);
    let _bad = start_child(&vhost, dir.path(), "bad-1", &["--location", "far"]);
    // A local parent registered at "far" that never serves: bad-1's SSL
    // port test goes to a closed port.
    let far = start_child(
        &vhost,
        dir.path(),
        "far-parent",
        &[
            "--kind",
            "local-parent",
            "--location",
            "far",
            "--hostnames",
            "localhost",
            "--report-version",
            "0.1.0",
        ],
    );
    wait_for("three agents online", Duration::from_secs(30), || {
        let status = parent.status_json().ok()?;
        (status["network"]["online"] == 3).then_some(())
    });
    // Accepted by the operator (a local parent never is automatically), so
    // it is bad-1's SSL target.
    let (code, _, err) = parent.cli(&["agents", "accept", "far-parent"]);
    assert_eq!(code, 0, "{err}");
    far.signal("TERM");
    let port = free_port().to_string();
    let lp_port = free_port().to_string();
    let (code, _, err) = parent.cli(&[
        "settings",
        "set",
        "--names",
        "localhost",
        "--ips",
        "127.0.0.1",
        "--port",
        &port,
        "--local-parent-port",
        &lp_port,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = parent.cli(&["certs", "generate", "--ignore-old"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = parent.cli(&["certs", "send", "--json"]);
    assert_eq!(code, 0, "{err}");
    let sent: serde_json::Value = serde_json::from_str(&out).expect("certs send --json is JSON");
    assert_eq!(sent["queued"], 2, "{sent}");
    assert_eq!(sent["not_eligible"], 1, "{sent}");
    wait_for("two certificates", Duration::from_secs(30), || {
        let status = parent.status_json().ok()?;
        (status["network"]["children_with_certificates"] == 2).then_some(())
    });

    // Not a terminal: the progress comes as whole lines on stderr.
    let (code, out, err) = parent.cli(&["verify", "--step-timeout", "10s", "--concurrency", "1"]);
    assert_eq!(code, 4, "one child fails, so verify exits 4\n{out}\n{err}");
    assert!(
        err.contains("2/2 done") && err.contains("passed 1") && err.contains("failed 1"),
        "{err}"
    );
    assert!(err.contains("elapsed") && err.contains("ETA"), "{err}");
    assert!(out.contains("Summary of the SSL switchover test"), "{out}");
    assert!(out.contains("properly passed:            1"), "{out}");
    assert!(out.contains("bad-1") && out.contains("refused"), "{out}");

    let (code, out, _) = parent.cli(&["campaign", "--json"]);
    assert_eq!(code, 0);
    let progress: serde_json::Value = serde_json::from_str(&out).expect("campaign --json is JSON");
    assert_eq!(progress["state"], "finished");
    assert_eq!(progress["total"], 2);
    assert_eq!(progress["max_acting"], 1);

    let (code, out, err) = parent.cli(&["reverify", "--json", "--step-timeout", "10s"]);
    assert_eq!(code, 4, "{err}");
    let result: serde_json::Value = serde_json::from_str(&out).expect("reverify --json is JSON");
    assert_eq!(
        result["campaign"]["total"], 1,
        "only the failed child: {result}"
    );
    assert_eq!(result["summary"]["with_errors"], 1, "{result}");
    assert_eq!(result["summary"]["passed"], 1, "{result}");
}

/// `fleetls-parent ARGS` with none of the caller's `FLEETLS_*` variables
/// and the given ones, stdin closed: (exit code, stdout, stderr).
fn parent_with_env(args: &[&str], vars: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(program("fleetls-parent"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FLEETLS_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .envs(vars.iter().copied())
        .stdin(std::process::Stdio::null());
    fleetls_tests::outcome(&mut command)
}

/// Every flag reads `FLEETLS_<FLAG>` (the README's promise): `settings set`
/// takes the port from `FLEETLS_PORT`, `status` prints JSON with
/// `FLEETLS_JSON=1`, the child's `doctor` too; `--yes` is never taken from
/// the environment. `serve` records its admin address in the data dir, so
/// `--data-dir` alone finds it; once it stopped, one error line says so
/// and names what to do.
#[test]
fn every_flag_reads_its_variable_and_the_data_dir_alone_finds_the_parent() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(&vhost, dir.path(), &[]);
    let data_dir = parent.data_dir.to_str().unwrap().to_owned();

    // The address serve recorded, and nothing but the data dir given.
    let recorded = std::fs::read_to_string(parent.layout().admin_addr()).unwrap();
    assert_eq!(
        recorded.trim(),
        parent.admin,
        "admin.addr holds the admin address"
    );
    let (code, out, err) = parent_with_env(
        &["settings", "set", "--data-dir", &data_dir],
        &[("FLEETLS_PORT", "12999")],
    );
    assert_eq!(code, 0, "settings set with FLEETLS_PORT: {out}{err}");
    let (code, out, err) = parent_with_env(
        &["settings", "show"],
        &[("FLEETLS_DATA_DIR", &data_dir), ("FLEETLS_JSON", "1")],
    );
    assert_eq!(code, 0, "settings show: {out}{err}");
    let shown: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("FLEETLS_JSON=1 gives JSON ({e}): {out}"));
    assert_eq!(shown["settings"]["port"], 12999, "{shown}");
    // A flag on the command line wins over its variable.
    let (code, out, _) = parent_with_env(
        &[
            "settings",
            "set",
            "--data-dir",
            &data_dir,
            "--port",
            "12998",
        ],
        &[("FLEETLS_PORT", "12999")],
    );
    assert_eq!(code, 0, "{out}");
    let shown = parent.cli_json(&["settings", "show"]);
    assert_eq!(shown["settings"]["port"], 12998, "{shown}");

    // A confirmation is never read from the environment.
    let (code, _, err) = parent_with_env(
        &["certs", "reset", "--data-dir", &data_dir],
        &[("FLEETLS_YES", "1")],
    );
    assert_eq!(code, 2, "certs reset with FLEETLS_YES=1 still asks: {err}");

    // The child's flags too.
    let mut doctor = Command::new(program("fleetls-child"));
    doctor
        .args([
            "doctor",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(dir.path().join("nobody"))
        .env("FLEETLS_JSON", "1");
    let (_, out, err) = fleetls_tests::outcome(&mut doctor);
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).is_ok(),
        "fleetls-child doctor with FLEETLS_JSON=1 prints JSON: {out}{err}"
    );

    // Stopped cleanly: the address is gone, and the error says so once.
    parent.proc.signal("TERM");
    assert_eq!(parent.proc.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        !parent.layout().admin_addr().exists(),
        "a parent that stopped cleanly leaves no admin.addr"
    );
    let (code, _, err) = parent_with_env(&["status", "--data-dir", &data_dir], &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(err.matches("127.0.0.1:12380").count(), 1, "{err}");
    for words in ["cannot reach the parent's admin API", "--admin", "serve"] {
        assert!(err.contains(words), "the error names {words:?}: {err}");
    }
}
