//! Helpers shared by the integration tests: a real RabbitMQ (started by
//! `scripts/broker` when none runs), one fresh virtual host per test so tests
//! run side by side, the programs as processes, and polling with a deadline.

pub mod company;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod attack;
pub mod link;
pub mod readme;
pub mod tools;

/// The files of a child's data dir, as the child names them.
pub use fleetls_child::layout::Layout as ChildLayout;
/// The files of the parent's data dir, as the parent names them.
pub use fleetls_parent::layout::{CertFile, Layout as ParentLayout};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_owned()
}

/// Where the built programs are (`FLEETLS_BIN_DIR`, else next to the test binary).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("FLEETLS_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_owned()
}

/// The path of a built program, current with the sources: the first call in
/// a test process runs `cargo build --workspace --bins` into the target
/// folder the tests were built in (a bare `cargo test -p fleetls-tests`
/// builds only this package's own programs, so the parent and the child
/// could otherwise be left over from older sources). With `FLEETLS_BIN_DIR`
/// the programs found there are used as they are. Panics, saying what to
/// do, when the build fails or the program is missing.
pub fn program(name: &str) -> PathBuf {
    if std::env::var_os("FLEETLS_BIN_DIR").is_none() {
        static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
        if let Err(why) = BUILT.get_or_init(build_programs) {
            panic!("{why}");
        }
    }
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// `cargo build --workspace --bins` with the profile and target folder of
/// the running test binary (a no-op when the programs are current).
fn build_programs() -> Result<(), String> {
    let bins = bin_dir();
    let profile = bins
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: no profile folder name", bins.display()))?
        .to_owned();
    let target_dir = bins
        .parent()
        .ok_or_else(|| format!("{}: not inside a target folder", bins.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    // What cargo set for this test process describes this package; a build
    // script that reads one of them (ring reads CARGO_MANIFEST_DIR) would
    // otherwise be rebuilt here and again by the next `cargo test`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_tests = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref());
        if set_for_tests {
            command.env_remove(key.as_ref());
        }
    }
    command
        .current_dir(repo())
        .args(["build", "--workspace", "--bins", "--quiet", "--target-dir"])
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cargo:?} to build the programs under test: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo build --workspace --bins` (profile {profile}, target {}) failed, so the \
             programs under test would not match the sources:\n{}",
            target_dir.display(),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Where a broker answers.
#[derive(Debug, Clone)]
pub struct BrokerAddr {
    /// AMQP base URL without vhost, e.g. `amqp://guest:guest@127.0.0.1:5672`.
    pub amqp: String,
    /// Management base URL without credentials.
    pub management: String,
    /// Management user.
    pub user: String,
    /// Management password.
    pub password: String,
}

impl BrokerAddr {
    /// From the `FLEETLS_TEST_BROKER` / `FLEETLS_TEST_MANAGEMENT` pair.
    pub fn from_urls(amqp: &str, management: &str) -> BrokerAddr {
        let amqp = amqp
            .trim_end_matches("/%2f")
            .trim_end_matches('/')
            .to_owned();
        let (scheme, rest) = management
            .split_once("://")
            .expect("management URL has a scheme");
        let (creds, host) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
        let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
        BrokerAddr {
            amqp,
            management: format!("{scheme}://{}", host.trim_end_matches('/')),
            user: user.into(),
            password: password.into(),
        }
    }
}

/// The shared test broker: the one named by `FLEETLS_TEST_BROKER` and
/// `FLEETLS_TEST_MANAGEMENT`, else the default private node, started by
/// `scripts/broker start` (a no-op when it already runs).
pub fn broker() -> &'static BrokerAddr {
    static BROKER: OnceLock<BrokerAddr> = OnceLock::new();
    BROKER.get_or_init(|| {
        if let (Ok(amqp), Ok(management)) = (
            std::env::var("FLEETLS_TEST_BROKER"),
            std::env::var("FLEETLS_TEST_MANAGEMENT"),
        ) {
            return BrokerAddr::from_urls(&amqp, &management);
        }
        let status = Command::new(repo().join("scripts/broker"))
            .arg("start")
            .status()
            .expect("scripts/broker runs");
        assert!(status.success(), "scripts/broker start failed");
        BrokerAddr::from_urls(
            "amqp://guest:guest@127.0.0.1:5672",
            "http://guest:guest@127.0.0.1:15672",
        )
    })
}

/// A blocking HTTP client for the management API.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client builds")
}

/// A virtual host of its own for one test, deleted when dropped.
pub struct Vhost {
    /// Its name.
    pub name: String,
    broker: BrokerAddr,
}

impl Vhost {
    /// Creates a fresh vhost on `broker` and gives its user every permission.
    pub fn new_on(broker: &BrokerAddr) -> Vhost {
        let name = format!("t-{}", uuid::Uuid::new_v4().simple());
        let client = http();
        let put = |url: String, body: Value| {
            let response = client
                .put(url)
                .basic_auth(&broker.user, Some(&broker.password))
                .json(&body)
                .send()
                .expect("management API answers");
            assert!(response.status().is_success(), "{:?}", response.text());
        };
        put(
            format!("{}/api/vhosts/{name}", broker.management),
            serde_json::json!({}),
        );
        put(
            format!(
                "{}/api/permissions/{name}/{}",
                broker.management, broker.user
            ),
            serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        );
        Vhost {
            name,
            broker: broker.clone(),
        }
    }

    /// A fresh vhost on the shared test broker.
    pub fn new() -> Vhost {
        Vhost::new_on(broker())
    }

    /// The AMQP URL of this vhost.
    pub fn url(&self) -> String {
        format!("{}/{}", self.broker.amqp, self.name)
    }

    /// The management base URL with credentials (for `--management`).
    pub fn management_url(&self) -> String {
        let (scheme, host) = self.broker.management.split_once("://").unwrap();
        format!(
            "{scheme}://{}:{}@{host}",
            self.broker.user, self.broker.password
        )
    }

    /// `GET` a management path (`{vhost}` is replaced by this vhost); `Null`
    /// when management fails to answer (for polls that simply try again).
    pub fn management_get(&self, path: &str) -> Value {
        self.management_try_get(path).unwrap_or(Value::Null)
    }

    /// `GET` a management path (`{vhost}` is replaced by this vhost); `Err`
    /// with what management said when it answers with an error or not at all.
    pub fn management_try_get(&self, path: &str) -> Result<Value, String> {
        let path = path.replace("{vhost}", &self.name);
        let response = http()
            .get(format!("{}{path}", self.broker.management))
            .basic_auth(&self.broker.user, Some(&self.broker.password))
            .send()
            .map_err(|e| format!("management GET {path}: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .map_err(|e| format!("management GET {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("management GET {path}: {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("management GET {path}: {e}: {text}"))
    }

    /// `PUT` `body` to a management path (`{vhost}` is replaced by this
    /// vhost); panics when management refuses.
    pub fn management_put(&self, path: &str, body: &Value) {
        let path = path.replace("{vhost}", &self.name);
        let response = http()
            .put(format!("{}{path}", self.broker.management))
            .basic_auth(&self.broker.user, Some(&self.broker.password))
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("management PUT {path}: {e}"));
        let status = response.status();
        assert!(
            status.is_success(),
            "management PUT {path}: {status}: {}",
            response.text().unwrap_or_default()
        );
    }

    /// How many messages a queue of this vhost holds (ready + unacked), per
    /// management; `None` when management does not say (yet).
    pub fn queue_depth(&self, queue: &str) -> Option<u64> {
        let q = self.management_get(&format!("/api/queues/{{vhost}}/{queue}"));
        q.get("messages").and_then(Value::as_u64)
    }

    /// [`Vhost::queue_depth`] that tells an error of management from a
    /// queue whose counts are not published yet (`Ok(None)`).
    pub fn queue_depth_checked(&self, queue: &str) -> Result<Option<u64>, String> {
        let q = self.management_try_get(&format!("/api/queues/{{vhost}}/{queue}"))?;
        Ok(q.get("messages").and_then(Value::as_u64))
    }

    /// Fetches up to `count` messages of a queue without removing them;
    /// panics when management answers with an error (which must never read
    /// as an empty queue).
    pub fn peek_queue(&self, queue: &str, count: usize) -> Vec<Value> {
        let response = http()
            .post(format!(
                "{}/api/queues/{}/{queue}/get",
                self.broker.management, self.name
            ))
            .basic_auth(&self.broker.user, Some(&self.broker.password))
            .json(&serde_json::json!({
                "count": count, "ackmode": "ack_requeue_true", "encoding": "base64"
            }))
            .send()
            .expect("management API answers");
        let status = response.status();
        let text = response.text().expect("management API answers");
        assert!(
            status.is_success(),
            "management could not read {queue}: {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("management's messages of {queue} are not a list ({e}): {text}")
        })
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = http()
            .delete(format!(
                "{}/api/vhosts/{}",
                self.broker.management, self.name
            ))
            .basic_auth(&self.broker.user, Some(&self.broker.password))
            .send();
    }
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A program under test, killed when dropped; its output goes to a log file.
pub struct Proc {
    child: Option<Child>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`; output to `log`. A child agent or
    /// swarm started in a test's folder proves the enrollment token the
    /// test's parent made (see [`enroll_args`]), as a rolled-out till would.
    pub fn spawn(program: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .args(enroll_args(program, args))
            .env("RUST_LOG", "info,lapin=warn")
            .env_remove("FLEETLS_BROKER")
            .env_remove("FLEETLS_DATA_DIR")
            .env_remove("FLEETLS_ADMIN")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            child: Some(child),
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status();
    }

    /// Waits up to `within` for the process to end; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Its log so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to its end: (exit code, stdout, stderr); -1 for a signal.
pub fn outcome(command: &mut Command) -> (i32, String, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not run: {e}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `within`
/// with `what` and the last value seen.
pub fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` every 250 ms until it gives `Ok`; panics after `within`
/// with `what` and the last `Err` it gave (what was still missing).
pub fn wait_until<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; last seen: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How long anything the tests wait for may take to happen (an agent coming
/// online, a certificate arriving, a process stopping).
pub const WAIT: Duration = Duration::from_secs(60);

/// A scratch folder for one test; kept (and named on stderr) when
/// `FLEETLS_TEST_KEEP` is set, to read the logs after a failure.
pub fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("a scratch folder");
    if std::env::var_os("FLEETLS_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test folder kept: {}", dir.path().display());
    }
    dir
}

/// The last `lines` lines of a text.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every file and folder under `dir`, files with their content (folders
/// `None`), sorted by path: two snapshots are equal when nothing under it
/// was written, made or removed. A missing `dir` is empty.
pub fn tree(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable folder").path();
            let name = path.strip_prefix(dir).unwrap().to_owned();
            if path.is_dir() {
                stack.push(path);
                found.push((name, None));
            } else {
                let content =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                found.push((name, Some(content)));
            }
        }
    }
    found.sort();
    found
}

/// The serial of the first certificate in a PEM file, as openssl prints it
/// (`serial=` left off, upper-case hex).
pub fn pem_serial(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(path)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl x509 {}: {out:?}",
        path.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("openssl printed no serial: {text}"))
        .to_owned()
}

/// A running parent of one test: its data dir, admin address and process.
pub struct Parent {
    /// Its process.
    pub proc: Proc,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its admin address.
    pub admin: String,
}

impl Parent {
    /// Starts `fleetls-parent serve` on `vhost` with `extra` flags, data in
    /// `dir/parent`, output to `dir/parent.log`; waits until its admin API
    /// answers.
    pub fn start(vhost: &Vhost, dir: &Path, extra: &[&str]) -> Parent {
        let data_dir = dir.join("parent");
        let admin = format!("127.0.0.1:{}", free_port());
        let args = Parent::serve_args(vhost, &data_dir, &admin, extra);
        let proc = Proc::spawn(&program("fleetls-parent"), &args, dir.join("parent.log"));
        let parent = Parent {
            proc,
            data_dir,
            admin,
        };
        parent.wait_admin("the parent's admin API");
        parent.enroll_token(dir);
        parent
    }

    /// Makes the enrollment token the test's children prove (children and
    /// mPOS devices, many uses; local parents are left to an operator) and
    /// writes it to `dir/enroll.token`, where [`start_child`] and
    /// [`enroll_args`] find it.
    pub fn enroll_token(&self, dir: &Path) {
        let made = self.cli_json(&[
            "enroll",
            "create",
            "--kind",
            "child,mpos",
            "--uses",
            "1000000",
            "--expires",
            "30d",
        ]);
        let token = made["token"]
            .as_str()
            .expect("enroll create --json has a token");
        std::fs::write(enroll_token_path(dir), format!("{token}\n")).expect("write the token");
    }

    /// Starts `fleetls-parent serve` again on the same vhost, data dir and
    /// admin address, with `extra` flags, after the old process stopped or
    /// was killed (it waits up to 30 s for that); then waits until the admin
    /// API answers. The new output goes to `parent.restart-<ms>.log`.
    pub fn restart(&mut self, vhost: &Vhost, extra: &[&str]) {
        assert!(
            self.proc.wait_exit(Duration::from_secs(30)).is_some(),
            "the parent to restart is still running: stop or kill it first"
        );
        let args = Parent::serve_args(vhost, &self.data_dir, &self.admin, extra);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let log = self
            .data_dir
            .with_file_name(format!("parent.restart-{stamp}.log"));
        self.proc = Proc::spawn(&program("fleetls-parent"), &args, log);
        self.wait_admin("the restarted parent's admin API");
    }

    /// The arguments of `serve` on `vhost` (with management), `data_dir`
    /// and `admin`, then `extra`: one list for a start and a restart.
    fn serve_args(vhost: &Vhost, data_dir: &Path, admin: &str, extra: &[&str]) -> Vec<String> {
        let data_dir = data_dir.to_str().expect("test paths are UTF-8");
        [
            "serve",
            "--broker",
            &vhost.url(),
            "--management",
            &vhost.management_url(),
            "--data-dir",
            data_dir,
            "--admin",
            admin,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    }

    /// Waits up to 30 s until `status --json` answers.
    fn wait_admin(&self, what: &str) {
        wait_for(what, Duration::from_secs(30), || self.status_json().ok());
    }

    /// `fleetls-parent ARGS --admin .. --data-dir ..`, ready to run with
    /// stdin closed and none of the operator's `FLEETLS_*` variables (a
    /// test adds the ones it means).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(program("fleetls-parent"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FLEETLS_") {
                command.env_remove(key);
            }
        }
        command
            .args(args)
            .args(["--admin", &self.admin, "--data-dir"])
            .arg(&self.data_dir)
            .stdin(Stdio::null());
        command
    }

    /// Runs `fleetls-parent ARGS --admin .. --data-dir ..` as a process; (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        outcome(&mut self.command(args))
    }

    /// Runs an operator command and asserts its exit code (the message holds
    /// both outputs and the tail of the parent's log); (stdout, stderr).
    pub fn cli_expect(&self, args: &[&str], want: i32) -> (String, String) {
        let (code, out, err) = self.cli(args);
        assert_eq!(
            code,
            want,
            "fleetls-parent {args:?} exited with {code}, expected {want}\nstdout: {out}\nstderr: {err}\nparent log (tail):\n{}",
            tail(&self.proc.output(), 40)
        );
        (out, err)
    }

    /// Runs an operator command that must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        self.cli_expect(args, 0).0
    }

    /// Runs an operator command with `--json` added, expecting exit 0; the
    /// JSON it printed.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        let out = self.cli_ok(&args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("fleetls-parent {args:?} did not print JSON ({e}): {out}"))
    }

    /// `settings set` for a network on this machine: the names
    /// `localhost` and 127.0.0.1, the SSL port and the local parents' port
    /// on free ports, and `extra` settings; the two ports.
    pub fn settings_loopback(&self, extra: &[&str]) -> (u16, u16) {
        let (port, local) = (free_port(), free_port());
        let (port_text, local_text) = (port.to_string(), local.to_string());
        let mut args = vec![
            "settings",
            "set",
            "--names",
            "localhost",
            "--ips",
            "127.0.0.1",
            "--port",
            &port_text,
            "--local-parent-port",
            &local_text,
        ];
        args.extend_from_slice(extra);
        self.cli_ok(&args);
        (port, local)
    }

    /// `certs generate` and `certs send`, then waits `within` until
    /// `count` agents hold a certificate.
    pub fn certify(&self, count: u64, within: Duration) {
        self.cli_ok(&["certs", "generate"]);
        self.cli_ok(&["certs", "send"]);
        wait_for(&format!("{count} certificates"), within, || {
            let status = self.status_json().ok()?;
            (status["network"]["children_with_certificates"] == count).then_some(())
        });
    }

    /// `status --json`, parsed.
    pub fn status_json(&self) -> Result<Value, String> {
        let (code, out, err) = self.cli(&["status", "--json"]);
        if code != 0 {
            return Err(err);
        }
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    /// `GET path` of its admin API with its token, parsed.
    pub fn api_get(&self, path: &str) -> Value {
        let token = std::fs::read_to_string(self.layout().token()).expect("the admin token");
        http()
            .get(format!("http://{}{path}", self.admin))
            .bearer_auth(token.trim())
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The text of its `/metrics`.
    pub fn metrics(&self) -> String {
        http()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .and_then(|r| r.text())
            .expect("/metrics answers")
    }

    /// The files of its data dir.
    pub fn layout(&self) -> ParentLayout {
        ParentLayout::new(&self.data_dir)
    }

    /// One file of its certificates folder.
    pub fn cert_file(&self, file: CertFile) -> PathBuf {
        self.layout().certificate(file)
    }

    /// What `sql` reads from the parent's registry, as the sqlite3 program
    /// prints it (a read-only reader beside the running parent), trimmed.
    pub fn registry_query(&self, sql: &str) -> String {
        let out = Command::new("sqlite3")
            .arg("-readonly")
            .arg(self.layout().registry())
            .arg(sql)
            .output()
            .expect("sqlite3 runs (scripts/test installs it)");
        assert!(
            out.status.success(),
            "sqlite3 {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The agent of `status --json` with this name.
    pub fn agent(&self, name: &str) -> Option<Value> {
        let status = self.status_json().ok()?;
        status["agents"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
    }

    /// Waits (up to [`WAIT`]) until every named agent is registered and
    /// online, as one `status --json` shows them; the agents, in the order
    /// of `names`. On timeout it names the agents still missing.
    pub fn wait_online(&self, names: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let missing = match self.status_json() {
                Err(e) => format!("status --json failed: {e}"),
                Ok(status) => {
                    let agents = status["agents"].as_array().cloned().unwrap_or_default();
                    let found: Vec<Option<Value>> = names
                        .iter()
                        .map(|name| {
                            agents
                                .iter()
                                .find(|a| a["name"] == *name && a["online"] == true)
                                .cloned()
                        })
                        .collect();
                    if found.iter().all(Option::is_some) {
                        return found.into_iter().flatten().collect();
                    }
                    let missing: Vec<&&str> = names
                        .iter()
                        .zip(&found)
                        .filter(|(_, a)| a.is_none())
                        .map(|(n, _)| n)
                        .collect();
                    format!("not online (or not registered): {missing:?}")
                }
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for {names:?} online; {missing}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Where [`Parent::start`] writes the enrollment token of the test's
/// children.
pub fn enroll_token_path(dir: &Path) -> PathBuf {
    dir.join("enroll.token")
}

/// The enrollment token a child started with `args` proves: `fleetls-child
/// run` or `swarm` whose data dir lies in a folder where [`Parent::start`]
/// wrote a token, unless it is a local parent (an operator accepts those)
/// or `args` name a token already. A test that wants a child without one
/// puts its data dir one folder deeper.
fn enroll_args(program: &Path, args: &[String]) -> Vec<String> {
    let is_child = program.file_name().is_some_and(|n| n == "fleetls-child");
    let runs = matches!(args.first().map(String::as_str), Some("run" | "swarm"));
    let local_parent = args
        .windows(2)
        .any(|w| w[0] == "--kind" && w[1] == "local-parent");
    let own = args.iter().any(|a| a.starts_with("--enroll-token"));
    if !is_child || !runs || local_parent || own {
        return Vec::new();
    }
    let data_dir = args
        .windows(2)
        .find(|w| w[0] == "--data-dir")
        .map(|w| PathBuf::from(&w[1]));
    match data_dir
        .as_deref()
        .and_then(Path::parent)
        .map(enroll_token_path)
    {
        Some(token) if token.exists() => vec![
            "--enroll-token-file".to_owned(),
            token.to_str().expect("test paths are UTF-8").to_owned(),
        ],
        _ => Vec::new(),
    }
}

/// The files of the child `name` whose data is in `dir/name` (as
/// [`start_child`] puts it).
pub fn child_layout(dir: &Path, name: &str) -> ChildLayout {
    ChildLayout::new(&dir.join(name))
}

/// Starts `fleetls-child run` on `vhost` named `name`, data in `dir/name`
/// (it proves the test's enrollment token: see [`Proc::spawn`]).
pub fn start_child(vhost: &Vhost, dir: &Path, name: &str, extra: &[&str]) -> Proc {
    let data_dir = dir.join(name);
    let mut args: Vec<String> = [
        "run",
        "--broker",
        &vhost.url(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--name",
        name,
        "--heartbeat",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(
        &program("fleetls-child"),
        &args,
        dir.join(format!("{name}.log")),
    )
}

/// The `client_properties.connection_name` of every AMQP connection to
/// `vhost`, as RabbitMQ management lists them; `None` when management does not
/// answer with a list (so that "gone" is never concluded from an error).
pub fn connection_names(vhost: &Vhost) -> Option<Vec<String>> {
    let list = vhost.management_get("/api/vhosts/{vhost}/connections");
    Some(
        list.as_array()?
            .iter()
            .filter_map(|c| c["client_properties"]["connection_name"].as_str())
            .map(str::to_owned)
            .collect(),
    )
}

impl Default for Vhost {
    /// A fresh vhost on the shared test broker (as [`Vhost::new`]).
    fn default() -> Vhost {
        Vhost::new()
    }
}

/// A copy of every message published to one exchange with one routing key
/// of a vhost, from the moment the tap is made: a queue of the test's own
/// (exclusive, gone with the tap's connection) bound next to the real
/// ones, so the test sees what was sent whoever consumes the real queue.
///
/// It connects with plain lapin, not with `fleetls_bus`: how it reaches the
/// broker shares nothing with the code under test. It decodes what it sees
/// with `fleetls_proto::decode`: it is an observer, not an attacker, and a
/// message fleetls cannot decode fails the test ([`Tap::take`]).
pub struct Tap {
    runtime: tokio::runtime::Runtime,
    connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
}

impl Tap {
    /// Binds a fresh queue to `exchange` with `routing_key` on `vhost`
    /// (the exchange must exist: the parent declares fleetls's at start).
    pub fn new(vhost: &Vhost, exchange: &str, routing_key: &str) -> Tap {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        let (connection, channel, queue) = runtime.block_on(async {
            let properties = lapin::ConnectionProperties::default()
                .with_connection_name("fleetls-test-tap".into());
            let connection = lapin::Connection::connect(&vhost.url(), properties)
                .await
                .expect("the tap connects to the broker");
            let channel = connection
                .create_channel()
                .await
                .expect("the tap's channel");
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("the tap's queue")
                .name()
                .to_string();
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("the tap binds to {exchange} ({routing_key}): {e}"));
            (connection, channel, queue)
        });
        Tap {
            runtime,
            connection,
            channel,
            queue,
        }
    }

    /// Every message copied since the last call, decoded (panics on one that
    /// does not decode: fleetls sends nothing else).
    pub fn take(&self) -> Vec<fleetls_proto::Envelope> {
        use lapin::options::BasicGetOptions;
        let mut envelopes = Vec::new();
        self.runtime.block_on(async {
            while let Some(message) = self
                .channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get on the tap")
            {
                let envelope = fleetls_proto::decode(&message.delivery.data)
                    .unwrap_or_else(|e| panic!("a tapped message does not decode: {e}"));
                envelopes.push(envelope);
            }
        });
        envelopes
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self
            .runtime
            .block_on(self.connection.close(200, "tap done".into()));
    }
}

/// A private RabbitMQ node of one test (for tests that stop or restart the
/// broker), run with `scripts/broker`; stopped when dropped.
pub struct PrivateNode {
    /// Node name.
    pub name: &'static str,
    /// Plain AMQP port.
    pub amqp: u16,
    /// Management port.
    pub mgmt: u16,
    /// AMQPS port (used when a TLS folder is given).
    pub amqps: u16,
    /// Prometheus port (kept clear of other nodes').
    pub prometheus: u16,
}

impl PrivateNode {
    /// Runs `scripts/broker CMD` for this node, with a TLS folder and an
    /// extra config file when given: (success, its output).
    pub fn script(&self, cmd: &str, tls: Option<&Path>, extra: Option<&Path>) -> (bool, String) {
        let mut command = Command::new(repo().join("scripts/broker"));
        command.arg(cmd);
        for key in [
            "FLEETLS_BROKER_DIR",
            "FLEETLS_DIST_PORT",
            "FLEETLS_BROKER_TLS_DIR",
            "FLEETLS_BROKER_EXTRA_CONF",
            "FLEETLS_BROKER_ADVANCED_CONFIG",
        ] {
            command.env_remove(key);
        }
        if let Some(tls) = tls {
            command.env("FLEETLS_BROKER_TLS_DIR", tls);
        }
        if let Some(extra) = extra {
            command.env("FLEETLS_BROKER_EXTRA_CONF", extra);
        }
        let output = command
            .env("FLEETLS_BROKER_NODE", self.name)
            .env("FLEETLS_AMQP_PORT", self.amqp.to_string())
            .env("FLEETLS_MGMT_PORT", self.mgmt.to_string())
            .env("FLEETLS_AMQPS_PORT", self.amqps.to_string())
            .env("FLEETLS_PROMETHEUS_PORT", self.prometheus.to_string())
            .output()
            .expect("scripts/broker runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// Runs `scripts/broker CMD` and panics with its output when it fails.
    pub fn run(&self, cmd: &str, tls: Option<&Path>, extra: Option<&Path>) {
        let (ok, out) = self.script(cmd, tls, extra);
        assert!(
            ok,
            "scripts/broker {cmd} (node {}) failed:\n{out}",
            self.name
        );
    }

    /// Where the node answers.
    pub fn addr(&self) -> BrokerAddr {
        BrokerAddr::from_urls(
            &format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp),
            &format!("http://guest:guest@127.0.0.1:{}", self.mgmt),
        )
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let (ok, out) = self.script("stop", None, None);
        if !ok {
            eprintln!("scripts/broker stop (node {}) failed:\n{out}", self.name);
        }
    }
}
