//! The attacker's side of the security tests (`tests/security.rs`,
//! `tests/security_more.rs`): `tests/attacks/fleetls_attack.py` run as a
//! process, and a parent on a test's own virtual host with what an attack
//! needs to check from outside (its registry read with `sqlite3`, what
//! `fleetls.dead` holds, its counters).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{free_port, repo, start_child, wait_for, Parent, Proc, Vhost};

/// How long anything in these tests may take to happen.
pub const WAIT: Duration = Duration::from_secs(60);

/// Runs the attacker's client: its one JSON answer (panics on exit 1).
pub fn attack(args: &[&str]) -> Value {
    let output = Command::new("python3")
        .arg(repo().join("tests/attacks/fleetls_attack.py"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fleetls_attack.py {args:?} failed: {}{}",
        out,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON from {args:?}: {e}: {out}"))
}

/// The attacker declares `queue` and binds it to `exchange` with
/// `routing_key` on `broker`, to copy what is routed there: the client's
/// answer (the queue, or the broker's refusal).
pub fn capture_setup(broker: &str, exchange: &str, routing_key: &str, queue: &str) -> Value {
    attack(&[
        "capture-setup",
        "--broker",
        broker,
        "--exchange",
        exchange,
        "--routing-key",
        routing_key,
        "--queue",
        queue,
    ])
}

/// A parent with an SSL port on free ports, and its test folder.
pub struct Net {
    /// The test's own virtual host.
    pub vhost: Vhost,
    /// The test folder: the parent's and the children's data dirs.
    pub dir: tempfile::TempDir,
    /// The serving parent.
    pub parent: Parent,
}

impl Net {
    /// Starts a parent with `extra` flags and sets free SSL ports, `localhost` and `127.0.0.1`.
    pub fn start(extra: &[&str]) -> Net {
        Net::start_on(Vhost::new(), extra)
    }

    /// As [`Net::start`], on a virtual host of the test's choosing (on a
    /// private node).
    pub fn start_on(vhost: Vhost, extra: &[&str]) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let parent = Parent::start(&vhost, dir.path(), extra);
        let port = free_port().to_string();
        let local = free_port().to_string();
        let (code, _, err) = parent.cli(&[
            "settings",
            "set",
            "--port",
            &port,
            "--local-parent-port",
            &local,
            "--names",
            "localhost",
            "--ips",
            "127.0.0.1",
        ]);
        assert_eq!(code, 0, "{err}");
        Net { vhost, dir, parent }
    }

    /// The AMQP URL of the test's virtual host.
    pub fn url(&self) -> String {
        self.vhost.url()
    }

    /// `certs generate` then `certs send` — again while the parent is not
    /// connected to the broker yet (a parent just started): sending is
    /// harmless to repeat.
    pub fn generate_and_send(&self) {
        let (code, _, err) = self.parent.cli(&["certs", "generate"]);
        assert_eq!(code, 0, "{err}");
        wait_for("`certs send` to reach a connected parent", WAIT, || {
            let (code, _, err) = self.parent.cli(&["certs", "send"]);
            if code != 0 {
                assert!(err.contains("not connected"), "{err}");
            }
            (code == 0).then_some(())
        });
    }

    /// Starts child `name` with `extra` flags; its process and its id once registered.
    pub fn child(&self, name: &str, extra: &[&str]) -> (Proc, String) {
        let proc = start_child(&self.vhost, self.dir.path(), name, extra);
        let id = wait_for("the child to register", WAIT, || {
            self.parent.agent(name)?["id"].as_str().map(str::to_owned)
        });
        (proc, id)
    }

    /// The data dir of agent `name`.
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The files of agent `name`'s data dir.
    pub fn files(&self, name: &str) -> crate::ChildLayout {
        crate::child_layout(self.dir.path(), name)
    }

    /// `status --json`'s `network`.
    pub fn network(&self) -> Value {
        self.parent.status_json().expect("status")["network"].clone()
    }

    /// The security events counted by the parent.
    pub fn security_events(&self) -> u64 {
        self.network()["security_events"].as_u64().unwrap()
    }

    /// The text of `/metrics`.
    pub fn metrics(&self) -> String {
        self.parent.metrics()
    }

    /// The value of one series of `/metrics`, named exactly as printed
    /// (`name{labels}`), read whole from its line; `None` when it is not there.
    pub fn metric(&self, series: &str) -> Option<u64> {
        self.metrics().lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| {
                value
                    .parse()
                    .unwrap_or_else(|e| panic!("{line}: the value is no count: {e}"))
            })
        })
    }

    /// The `x-fleetls-reason` of every message in `fleetls.dead`.
    pub fn dead_reasons(&self) -> Vec<String> {
        self.vhost
            .peek_queue("fleetls.dead", 500)
            .iter()
            .filter_map(|m| {
                m["properties"]["headers"]["x-fleetls-reason"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Waits until `fleetls.dead` holds `count` messages whose reason starts with `prefix`.
    pub fn wait_dead(&self, what: &str, prefix: &str, count: usize) {
        wait_for(what, WAIT, || {
            let n = self
                .dead_reasons()
                .iter()
                .filter(|r| r.starts_with(prefix))
                .count();
            (n >= count).then_some(())
        });
    }

    /// `sqlite3 DATA_DIR/fleetls.db SQL`: the rows, one per line.
    pub fn sql(&self, query: &str) -> String {
        let output = Command::new("sqlite3")
            .arg(self.parent.layout().registry())
            .arg(query)
            .output()
            .expect("sqlite3 runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Sends a forged command to agent `to` through `fleetls.agents`.
    pub fn command(&self, to: &str, kind: &str, fields: Value, extra: &[&str]) -> Value {
        let fields = fields.to_string();
        let url = self.url();
        let mut args = vec![
            "send",
            "--broker",
            &url,
            "--exchange",
            "fleetls.agents",
            "--routing-key",
            to,
            "--kind",
            kind,
            "--fields",
            &fields,
            "--from",
            "nil",
        ];
        args.extend(extra);
        attack(&args)
    }

    /// Sends a forged message to the parent as agent `from`.
    pub fn to_parent(&self, from: &str, kind: &str, fields: Value, extra: &[&str]) -> Value {
        let fields = fields.to_string();
        let url = self.url();
        let mut args = vec![
            "send",
            "--broker",
            &url,
            "--exchange",
            "fleetls.parent",
            "--routing-key",
            "fleetls.parent",
            "--kind",
            kind,
            "--fields",
            &fields,
            "--from",
            from,
        ];
        args.extend(extra);
        attack(&args)
    }

    /// A key of the attacker's own.
    pub fn attacker_key(&self, name: &str) -> (PathBuf, Value) {
        let path = self.dir.path().join(format!("{name}.key"));
        let made = attack(&["keygen", "--out", path.to_str().unwrap()]);
        (path, made)
    }
}

/// Every file of a child's data dir with its content (keys included), to
/// show that an attack changed nothing. `trust.toml` is left out: it records
/// genuine commands, and forged ones never reach it (checked apart). So is
/// `state.toml`'s `seq_floor`: the reserve of the child's replay counter,
/// moved by its own messages (at each start and about once an hour).
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let layout = crate::ChildLayout::new(dir);
    let (trust, state) = (layout.trust(), layout.state());
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path == state {
                let text = std::fs::read_to_string(&path).unwrap();
                let kept: String = text
                    .lines()
                    .filter(|line| !line.starts_with("seq_floor ="))
                    .map(|line| format!("{line}\n"))
                    .collect();
                files.push((
                    path.strip_prefix(dir).unwrap().display().to_string(),
                    kept.into_bytes(),
                ));
            } else if path != trust {
                files.push((
                    path.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
    }
    files.sort();
    files
}

/// A key as the hex `trust.toml` keeps, and its `sha256:` fingerprint.
pub fn pinned_fingerprint(hex: &str) -> (Vec<u8>, String) {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let output = Command::new("openssl")
        .args(["dgst", "-sha256", "-hex"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let digest = text.rsplit(' ').next().unwrap().trim().to_owned();
    (bytes, format!("sha256:{digest}"))
}

/// A `Hello` body with no certificate.
pub fn hello(name: &str, kind: &str, location: &str, hostnames: &[&str]) -> Value {
    json!({
        "name": name, "kind": kind, "version": "1.0.0", "location": location,
        "hostnames": hostnames, "ips": [], "key_fingerprint": null,
        "state": {"has_certificate": false, "ssl": false, "broker_tls": false}
    })
}

/// A certificate and key of a CA that is not the network's, made by openssl.
pub fn foreign_ca(dir: &Path) -> (String, PathBuf, PathBuf) {
    let (key, cert) = (dir.join("evil-ca.key"), dir.join("evil-ca.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj", "/CN=evil-ca", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (std::fs::read_to_string(&cert).unwrap(), cert, key)
}
