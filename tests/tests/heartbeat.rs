//! A child keeps its heartbeat while it runs a command: a test step that
//! hangs until its timeout must not make it look offline to the parent.

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use fleetls_tests::{free_port, start_child, wait_for, Parent, Vhost};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_child_stays_online_through_a_step_that_hangs() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    // Offline after 4 s without a word; the step below hangs for ~15 s.
    // Online from the reports alone: with the broker's presence a
    // connected child would be online whatever it says.
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &[
            "--presence-vhost",
            "off",
            "--offline-after",
            "4",
            "--local-parent-names",
            "localhost",
            "--local-parent-ips",
            "127.0.0.1",
        ],
    );
    // The local parent port answers TCP and then never says a word.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = black_hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in black_hole.incoming().flatten() {
            let mut s = stream;
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            held.push(s);
        }
    });
    let mut lp = start_child(
        &vhost,
        dir.path(),
        "lp-far",
        &[
            "--kind",
            "local-parent",
            "--location",
            "far",
            "--hostnames",
            "localhost",
        ],
    );
    let _slow = start_child(&vhost, dir.path(), "slow-1", &["--location", "far"]);
    wait_for("both online", WAIT, || {
        let s = parent.status_json().ok()?;
        (s["network"]["online"] == 2).then_some(())
    });
    let (code, _, err) = parent.cli(&["agents", "accept", "lp-far"]);
    assert_eq!(code, 0, "{err}");
    lp.signal("TERM");
    lp.wait_exit(WAIT).expect("the local parent stops");
    let port = free_port().to_string();
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
        &hole_port.to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    for args in [&["certs", "generate"][..], &["certs", "send"][..]] {
        let (code, _, err) = parent.cli(args);
        assert_eq!(code, 0, "{err}");
    }
    wait_for("slow-1's certificate", WAIT, || {
        parent.agent("slow-1")?["has_certificate"]
            .as_bool()?
            .then_some(())
    });
    let (code, _, err) = parent.cli(&["verify", "--step-timeout", "15s", "--detach"]);
    assert_eq!(code, 0, "{err}");
    // Until its result is in, the child must be online at every look.
    let mut looks = 0;
    let result = wait_for("slow-1's result", WAIT, || {
        let agent = parent.agent("slow-1")?;
        assert_eq!(
            agent["online"], true,
            "slow-1 went offline while its step ran: {agent}"
        );
        looks += 1;
        let last = &agent["last_result"];
        (last["state"] == "failed").then(|| last.clone())
    });
    assert_eq!(result["step"], "ssl-port", "{result}");
    assert_eq!(result["cause"], "timeout", "{result}");
    // The step ran long enough for the parent to have counted it offline.
    let took = result["finished_at"].as_u64().unwrap() - result["started_at"].as_u64().unwrap();
    assert!(took >= 8_000, "the step ended after {took} ms: {result}");
    assert!(looks > 10, "only {looks} looks");
}
