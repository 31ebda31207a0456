//! The README's "Migrating a network, step by step", run exactly as printed:
//! every `sh` block of the section but the first (it installs the programs
//! and jq; here the freshly built programs are put first on the PATH
//! instead, and jq must be there already: `scripts/test` installs it), in
//! order, in one bash (`-e -o pipefail`, from the repository, with a home of
//! its own), so that later blocks use the variables and background jobs of
//! earlier ones. Each block is written to a file and sourced by a small loop
//! that reads the next file's name from the test and notes each block done;
//! between blocks the test only reads the parent's state (`status --json`,
//! `without-ssl --json` through its admin API), it never runs an operator
//! command the README does not print.
//!
//! Its RabbitMQ node is its own (`walk`, with a fresh mnesia: an empty
//! machine), given to `scripts/broker` through its variables, and its ports
//! are 5880-5899: AMQP 5880, AMQPS 5881 (`FLEETLS_AMQPS_PORT`, which
//! `broker-tls --amqps-port` reads too), management 15880, Prometheus 15881,
//! the admin API 127.0.0.1:5882 (`FLEETLS_ADMIN`) and the parent's SSL port
//! 5883 (`FLEETLS_PORT`, read by `settings set`): the defaults (5672, 5671,
//! 12380, 12365) may belong to someone else on a test machine.
//!
//! It must end with till-1, till-2 and the mPOS device on AMQPS (the mPOS
//! holding the certificate it imported), till-3 — excluded, then switched
//! off and rejected so that plain AMQP can close — the one left off TLS,
//! the broker's plain AMQP port refusing connections, and `status` exiting
//! 0. Every process the blocks left in the background is stopped at the
//! end (their process group), and the node too, also on failure.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use fleetls_tests::readme::{operator_env, shell_blocks, ProcessGroup};
use fleetls_tests::{program, repo, tail, wait_until, ChildLayout, PrivateNode};

/// The node and the ports of this file (5880-5899 is its range).
const NODE: &str = "walk";
const AMQP_PORT: u16 = 5880;
const AMQPS_PORT: u16 = 5881;
const ADMIN: &str = "127.0.0.1:5882";
const SSL_PORT: u16 = 5883;
const MGMT_PORT: u16 = 15880;
const PROMETHEUS_PORT: u16 = 15881;

/// The section's heading.
const TITLE: &str = "## Migrating a network, step by step";

/// Why the README keeps till-3 on plain.
const REASON: &str = "pin pad firmware 2.1 cannot do TLS until the vendor update";

/// The longest one block may take (the slowest restarts the broker and
/// waits for everyone to come back).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// What bash runs: reads a block's file name from the test (fd 3, kept
/// from the programs the block starts), sources it in this one shell,
/// and notes it done in the file named by `$1`.
const DRIVER: &str = r#"exec 3<&0 </dev/null
while IFS= read -r -u 3 walkthrough_block; do
    . "$walkthrough_block" 3<&-
    printf '%s\n' "$walkthrough_block" >>"$1"
done
"#;

/// The one bash running the blocks, and where it says what it did.
struct Walk {
    bash: Child,
    /// Its stdin: the next block's file name goes there.
    next: Option<ChildStdin>,
    /// The blocks' files, and the list of those done.
    dir: PathBuf,
    done: PathBuf,
    /// Everything the blocks printed.
    output: PathBuf,
    /// The operator's home: `~/fleetls` holds the data dirs and the logs.
    home: PathBuf,
}

impl Walk {
    /// Starts bash in its own process group, in the repository, with an
    /// operator's environment and this file's node and ports.
    fn start(home: &Path, dir: &Path) -> Walk {
        let output = dir.join("blocks.out");
        let done = dir.join("done");
        let out = std::fs::File::create(&output).unwrap();
        let mut bash = Command::new("bash");
        bash.args(["-e", "-o", "pipefail", "-c", DRIVER, "walkthrough"])
            .arg(&done)
            .current_dir(repo());
        operator_env(&mut bash, home);
        let bash = {
            use std::os::unix::process::CommandExt;
            bash.env("FLEETLS_BROKER_NODE", NODE)
                .env("FLEETLS_AMQP_PORT", AMQP_PORT.to_string())
                .env("FLEETLS_MGMT_PORT", MGMT_PORT.to_string())
                .env("FLEETLS_AMQPS_PORT", AMQPS_PORT.to_string())
                .env("FLEETLS_PROMETHEUS_PORT", PROMETHEUS_PORT.to_string())
                .env("FLEETLS_ADMIN", ADMIN)
                .env("FLEETLS_PORT", SSL_PORT.to_string())
                .stdin(Stdio::piped())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .process_group(0)
                .spawn()
                .expect("bash runs")
        };
        let mut walk = Walk {
            bash,
            next: None,
            dir: dir.to_owned(),
            done,
            output,
            home: home.to_owned(),
        };
        walk.next = walk.bash.stdin.take();
        walk
    }

    /// Runs block `n` (its text as printed) and waits until bash notes it
    /// done; `Err` says how it failed.
    fn run(&mut self, n: usize, text: &str) -> Result<Duration, String> {
        let file = self.dir.join(format!("block-{n}.sh"));
        std::fs::write(&file, text).unwrap();
        let started = Instant::now();
        let next = self.next.as_mut().expect("bash's stdin is open");
        writeln!(next, "{}", file.display())
            .and_then(|()| next.flush())
            .map_err(|e| format!("bash no longer reads its blocks: {e}"))?;
        let line = file.display().to_string();
        loop {
            let done = std::fs::read_to_string(&self.done).unwrap_or_default();
            if done.lines().any(|l| l == line) {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.bash.try_wait().unwrap() {
                return Err(format!("bash exited ({status}) in block {n}"));
            }
            if started.elapsed() > BLOCK_TIMEOUT {
                return Err(format!(
                    "block {n} did not finish within {}s",
                    BLOCK_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Ends the loop (no next block) and waits for bash to exit.
    fn finish(&mut self) -> Result<(), String> {
        self.next = None;
        let started = Instant::now();
        loop {
            if let Some(status) = self.bash.try_wait().unwrap() {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("bash exited with {status} after the last block"))
                };
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err("bash did not exit after the last block".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the blocks printed so far.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The end of what the blocks printed and of every program's log.
    fn report(&self) -> String {
        let mut text = format!("---- the blocks printed\n{}", tail(&self.said(), 60));
        for name in ["parent", "till-1", "till-2", "till-3", "mpos-1"] {
            let log = std::fs::read_to_string(self.fleetls().join(format!("{name}.log")));
            text.push_str(&format!(
                "\n---- {name}.log\n{}",
                tail(&log.unwrap_or_default(), 15)
            ));
        }
        text
    }

    /// `~/fleetls`.
    fn fleetls(&self) -> PathBuf {
        self.home.join("fleetls")
    }

    /// Runs `fleetls-parent ARGS --data-dir ~/fleetls/parent` as the
    /// operator would (reading only): its exit code and stdout.
    fn parent(&self, args: &[&str]) -> (i32, String) {
        let mut command = Command::new("fleetls-parent");
        command
            .args(args)
            .arg("--data-dir")
            .arg(self.fleetls().join("parent"));
        operator_env(&mut command, &self.home);
        let output = command.output().expect("fleetls-parent runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// `status --json`, by agent name.
    fn agents(&self) -> Result<HashMap<String, Value>, String> {
        let (code, out) = self.parent(&["status", "--json"]);
        if code != 0 {
            return Err(format!("status --json exited {code}"));
        }
        let status: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        Ok(status["agents"]
            .as_array()
            .ok_or_else(|| format!("no agents list: {status}"))?
            .iter()
            .map(|a| (a["name"].as_str().unwrap_or_default().to_owned(), a.clone()))
            .collect())
    }

    /// Waits until every `(agent, field, value)` holds in `status --json`.
    fn wait_agents(&self, what: &str, want: &[(&str, &str, Value)]) {
        wait_until(what, Duration::from_secs(60), || {
            let agents = self.agents()?;
            for (name, field, value) in want {
                let agent = agents
                    .get(*name)
                    .ok_or_else(|| format!("{name} is not registered"))?;
                if agent[*field] != *value {
                    return Err(format!("{name}.{field} is {}: {agent}", agent[*field]));
                }
            }
            Ok(())
        });
    }
}

/// Whether something accepts a TCP connection on the loopback port.
fn port_answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// The state the README says each step leaves, read between blocks: the
/// block is known by a command it prints.
fn check_after(walk: &Walk, block: &str) {
    let yes = Value::Bool(true);
    let no = Value::Bool(false);
    if block.contains("agents exclude till-3") {
        walk.wait_agents(
            "four agents accepted by their tokens, till-3 excluded",
            &[
                ("till-1", "admission", "accepted".into()),
                ("till-2", "admission", "accepted".into()),
                ("till-3", "admission", "accepted".into()),
                ("mpos-1", "admission", "accepted".into()),
                ("mpos-1", "kind", "mpos".into()),
                ("till-3", "excluded", REASON.into()),
            ],
        );
    }
    if block.contains("certs send") {
        walk.wait_agents(
            "certificates for the two tills only",
            &[
                ("till-1", "has_certificate", yes.clone()),
                ("till-2", "has_certificate", yes.clone()),
                ("till-3", "has_certificate", no.clone()),
                ("mpos-1", "has_certificate", no.clone()),
            ],
        );
    }
    if block.contains("fleetls-parent switch --") {
        walk.wait_agents(
            "the two tills on SSL, till-3 not",
            &[
                ("till-1", "ssl", yes.clone()),
                ("till-2", "ssl", yes.clone()),
                ("till-3", "ssl", no.clone()),
            ],
        );
    }
    if block.contains("fleetls-child import") {
        walk.wait_agents(
            "the mPOS device holding its imported certificate",
            &[("mpos-1", "has_certificate", yes.clone())],
        );
    }
    if block.contains("fleetls-parent switch-broker") {
        walk.wait_agents(
            "the tills and the mPOS device on AMQPS, till-3 on plain",
            &[
                ("till-1", "broker_tls", yes.clone()),
                ("till-2", "broker_tls", yes.clone()),
                ("mpos-1", "broker_tls", yes.clone()),
                ("till-3", "broker_tls", no.clone()),
                ("till-3", "online", yes.clone()),
            ],
        );
        let said = walk.said();
        assert!(
            said.contains("excluded: pin pad firmware"),
            "without-ssl names till-3 with its reason:\n{}",
            tail(&said, 30)
        );
    }
    if block.contains("rabbitmq-final.conf scripts/broker restart") {
        // What made the README switch till-3 off: a final fragment written
        // while it was excluded and accepted kept plain AMQP open for it.
        let said = walk.said();
        assert!(
            said.contains("rabbitmq-final.conf keeps plain AMQP open for 1 agent(s)")
                && said.contains(&format!("  till-3: {REASON}")),
            "broker-tls should have named till-3 as keeping plain AMQP open:\n{}",
            tail(&said, 60)
        );
        let last = std::fs::read_to_string(walk.fleetls().join("broker-tls/rabbitmq-final.conf"))
            .expect("the final fragment was written");
        assert!(
            last.lines().any(|l| l.trim() == "listeners.tcp = none"),
            "the final fragment the node restarted with closes plain AMQP:\n{last}"
        );
    }
}

#[test]
fn the_readme_walkthrough_runs_as_printed_to_plain_amqp_off() {
    let started = Instant::now();
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let blocks = shell_blocks(&readme, TITLE);
    assert!(
        blocks.len() >= 10,
        "the walkthrough has its numbered steps, each with a block: {blocks:?}"
    );
    for install in [
        "cargo install --locked --path parent",
        "cargo install --locked --path child",
        "apt-get install -y jq",
    ] {
        assert!(
            blocks[0].contains(install),
            "the first block installs what the others use ({install}):\n{}",
            blocks[0]
        );
    }
    let all = blocks.concat();
    assert!(
        !all.contains("_TEST_"),
        "the walkthrough names no test variable:\n{all}"
    );
    assert!(
        all.contains(REASON),
        "the walkthrough's reason is {REASON:?}"
    );
    let jq = Command::new("jq").arg("--version").output();
    assert!(
        jq.is_ok_and(|o| o.status.success()),
        "jq is missing: the walkthrough's waits read `status --json` with it \
         (apt-get install jq; scripts/test installs it)"
    );
    // The programs the blocks find on the PATH are current.
    program("fleetls-parent");
    program("fleetls-child");

    // Declared first, dropped last: the node outlives the processes using it.
    let node = PrivateNode {
        name: NODE,
        amqp: AMQP_PORT,
        mgmt: MGMT_PORT,
        amqps: AMQPS_PORT,
        prometheus: PROMETHEUS_PORT,
    };
    // A node left over from an interrupted run would hold the ports, and
    // its queues and messages would not be an empty machine's.
    node.run("stop", None, None);
    let _ = std::fs::remove_dir_all(repo().join("target/broker").join(NODE).join("mnesia"));
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut walk = Walk::start(home.path(), scratch.path());
    let _group = ProcessGroup(walk.bash.id());

    let mut took = Vec::new();
    for (n, block) in blocks.iter().enumerate().skip(1) {
        match walk.run(n, block) {
            Ok(elapsed) => took.push(format!("block {n}: {:.1}s", elapsed.as_secs_f64())),
            Err(why) => panic!("{why}:\n{block}\n{}", walk.report()),
        }
        check_after(&walk, block);
    }
    if let Err(why) = walk.finish() {
        panic!("{why}\n{}", walk.report());
    }
    eprintln!("walkthrough: {}", took.join(", "));

    // ---- where everyone ends
    let (code, table) = walk.parent(&["status"]);
    assert_eq!(code, 0, "status exits 0 at the end:\n{table}");
    let agents = walk
        .agents()
        .unwrap_or_else(|e| panic!("{e}\n{}", walk.report()));
    for till in ["till-1", "till-2"] {
        let a = &agents[till];
        assert!(
            a["ssl"] == true && a["broker_tls"] == true && a["online"] == true,
            "{till} ends on SSL and AMQPS, online: {a}"
        );
    }
    let mpos = &agents["mpos-1"];
    assert!(
        mpos["has_certificate"] == true && mpos["broker_tls"] == true && mpos["online"] == true,
        "the mPOS device ends holding its certificate, on AMQPS: {mpos}"
    );
    let device = ChildLayout::new(&walk.fleetls().join("mpos-1"));
    assert!(
        device.key().is_file() && device.chain().is_file(),
        "the imported identity is in the device's data dir"
    );
    let till3 = &agents["till-3"];
    assert!(
        till3["excluded"] == REASON
            && till3["broker_tls"] == false
            && till3["ssl"] == false
            && till3["admission"] == "rejected"
            && till3["online"] == false,
        "till-3 ends excluded, switched off and rejected, never on TLS: {till3}"
    );
    // RabbitMQ's own view: only till-3 is not on TLS.
    let (code, out) = walk.parent(&["without-ssl", "--json"]);
    assert_eq!(code, 0, "without-ssl: {out}");
    let without: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = without["not_on_tls"]
        .as_array()
        .map(|l| l.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        (without["broker_view"].clone(), names),
        (Value::Bool(true), vec!["till-3"]),
        "{without}"
    );
    // Plain AMQP is off; AMQPS answers.
    assert!(
        !port_answers(AMQP_PORT),
        "the broker's plain AMQP port {AMQP_PORT} still accepts connections"
    );
    assert!(
        port_answers(AMQPS_PORT),
        "AMQPS {AMQPS_PORT} does not answer"
    );
    let said = walk.said();
    assert!(
        said.contains("plain amqp off"),
        "scripts/broker says it restarted with plain AMQP off:\n{}",
        tail(&said, 30)
    );
    eprintln!(
        "walkthrough: {} blocks in {:.0}s",
        blocks.len() - 1,
        started.elapsed().as_secs_f64()
    );
}
