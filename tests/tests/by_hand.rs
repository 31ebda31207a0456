//! The README's "Running it by hand", run exactly as printed: its second
//! shell block (the first installs the programs with `cargo install`; here
//! the freshly built ones are put first on the PATH instead) runs in bash
//! from the repository, with a home of its own (data dirs a normal user can
//! write), on a RabbitMQ node of its own (`byhand`: AMQP 5844, management
//! 15844, AMQPS 5845, Prometheus 15845, given to `scripts/broker` through its
//! variables) and the admin API on 127.0.0.1:5846 (`FLEETLS_ADMIN`: 12380 may
//! belong to someone else on a test machine). The block must exit 0 with the
//! status table printed, and till-1 must then register with the parent it
//! started. Every process the block left in the background is stopped at
//! the end (its process group), and the node too, also on failure.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetls_tests::readme::{operator_env, shell_blocks, ProcessGroup};
use fleetls_tests::{program, repo, tail, wait_for, ParentLayout, PrivateNode};

/// The ports of this file's node and parent (5840-5879 is this file's range).
const AMQP_PORT: u16 = 5844;
const MGMT_PORT: u16 = 15844;
const AMQPS_PORT: u16 = 5845;
const PROMETHEUS_PORT: u16 = 15845;
const ADMIN: &str = "127.0.0.1:5846";

#[test]
fn the_readme_by_hand_section_runs_as_printed() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let blocks = shell_blocks(&readme, "### Running it by hand");
    assert!(
        blocks.len() >= 2,
        "the by-hand section has an install block and a run block: {blocks:?}"
    );
    for install in [
        "cargo install --locked --path parent",
        "cargo install --locked --path child",
    ] {
        assert!(
            blocks[0].contains(install),
            "the first block installs the programs ({install}):\n{}",
            blocks[0]
        );
    }
    let script = &blocks[1];
    assert!(
        !script.contains("_TEST_"),
        "the by-hand block names no test variable:\n{script}"
    );
    // The programs the block finds on the PATH are current.
    program("fleetls-parent");
    program("fleetls-child");

    // Declared first, dropped last: the node outlives the processes using it.
    let node = PrivateNode {
        name: "byhand",
        amqp: AMQP_PORT,
        mgmt: MGMT_PORT,
        amqps: AMQPS_PORT,
        prometheus: PROMETHEUS_PORT,
    };
    // A node left over from an interrupted run would hold the ports.
    node.run("stop", None, None);
    let home = tempfile::tempdir().unwrap();
    let output = home.path().join("block.out");
    let out = std::fs::File::create(&output).unwrap();
    let mut bash = Command::new("bash");
    bash.args(["-e", "-c", script]).current_dir(repo());
    operator_env(&mut bash, home.path());
    let mut block = {
        use std::os::unix::process::CommandExt;
        bash.env("FLEETLS_BROKER_NODE", node.name)
            .env("FLEETLS_AMQP_PORT", AMQP_PORT.to_string())
            .env("FLEETLS_MGMT_PORT", MGMT_PORT.to_string())
            .env("FLEETLS_AMQPS_PORT", AMQPS_PORT.to_string())
            .env("FLEETLS_PROMETHEUS_PORT", PROMETHEUS_PORT.to_string())
            .env("FLEETLS_ADMIN", ADMIN)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("bash runs")
    };
    let _group = ProcessGroup(block.id());
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = block.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the by-hand block did not finish within 240 s:\n{}",
            tail(&std::fs::read_to_string(&output).unwrap_or_default(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let said = std::fs::read_to_string(&output).unwrap_or_default();
    let logs = || {
        ["parent.log", "till-1.log"]
            .iter()
            .map(|f| {
                let log = std::fs::read_to_string(home.path().join("fleetls").join(f));
                format!("---- {f}\n{}", tail(&log.unwrap_or_default(), 20))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        status.success(),
        "the by-hand block failed ({status}):\n{said}\n{}",
        logs()
    );
    assert!(
        said.contains("NAME") && said.contains("network:"),
        "the block's last command prints the status table:\n{said}"
    );

    // till-1, started by the block, registers with the parent it started.
    let data_dir = home.path().join("fleetls/parent");
    wait_for(
        "till-1 online, by `status --data-dir` alone",
        Duration::from_secs(60),
        || {
            let mut status = Command::new("fleetls-parent");
            status
                .args(["status", "--json", "--data-dir"])
                .arg(&data_dir);
            operator_env(&mut status, home.path());
            let output = status.output().ok()?;
            let view: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            view["agents"]
                .as_array()?
                .iter()
                .any(|a| {
                    a["name"] == "till-1" && a["online"] == true && a["admission"] == "accepted"
                })
                .then_some(())
        },
    );
    let recorded = std::fs::read_to_string(ParentLayout::new(&data_dir).admin_addr()).unwrap();
    assert_eq!(recorded.trim(), ADMIN, "serve records where it listens");
}
