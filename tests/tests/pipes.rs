//! No printing command panics when its reader goes away
//! (`fleetls-parent without-ssl | head -c 20` on a big network): the read end
//! of its stdout is closed before it writes, and it must end quietly —
//! never exit code 101 with "failed printing to stdout".

use std::process::{Command, Stdio};

use fleetls_tests::attack::{Net, WAIT};
use fleetls_tests::{program, wait_for};

/// Runs `command` with its stdout closed at once; its exit code and stderr.
fn closed_early(mut command: Command) -> (Option<i32>, String) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("the program starts");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("the program ends");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_printing_command_panics_when_its_reader_goes_away() {
    let net = Net::start(&[]);
    let (_till, _) = net.child("till-1", &[]);
    net.generate_and_send();
    wait_for("till-1's certificate", WAIT, || {
        net.parent.agent("till-1")?["has_certificate"]
            .as_bool()?
            .then_some(())
    });
    let parent: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["agents", "list"],
        &["agents", "list", "--json"],
        &["enroll", "list"],
        &["enroll", "create"],
        &["security"],
        &["security", "--json"],
        &["without-ssl"],
        &["without-ssl", "--json"],
        &["settings", "show"],
        &["settings", "show", "--json"],
        &["cluster"],
        &["certs", "send"],
        &["--help"],
    ];
    for args in parent {
        let (code, err) = closed_early(net.parent.command(args));
        assert!(
            code != Some(101) && !err.contains("panicked"),
            "fleetls-parent {args:?}: exit {code:?}\n{err}"
        );
        assert_eq!(code, Some(0), "fleetls-parent {args:?}: {err}");
    }
    let child: &[&[&str]] = &[
        &["--help"],
        &["doctor", "127.0.0.1:1", "--json"],
        &["doctor", "127.0.0.1:1"],
    ];
    for args in child {
        let mut command = Command::new(program("fleetls-child"));
        command.args(*args).stdin(Stdio::null());
        let (code, err) = closed_early(command);
        assert!(
            code != Some(101) && !err.contains("panicked"),
            "fleetls-child {args:?}: exit {code:?}\n{err}"
        );
    }
}
