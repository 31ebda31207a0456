//! The Debian packages, as an operator gets them (`scripts/package`, files
//! in deploy/debian/): built from the debug programs, looked into with
//! `dpkg-deb`, installed with `dpkg -i` on this machine, their units checked
//! with `systemd-analyze verify` (and `security --offline`), then the
//! *installed* programs run as their units run them — the unit's ExecStart,
//! WorkingDirectory and UMask, as its User with no capability and
//! no_new_privs, in a clean environment — with the packaged configuration
//! files pointed at the test broker: the parent serves, a child enrols with
//! the token file a roll-out drops into /etc/fleetls, gets its certificate
//! and passes a `verify` campaign. Then `dpkg -r` (data, configuration and
//! users stay) and `dpkg -P` (data and configuration go, users stay).
//!
//! systemd is not PID 1 here, so no `systemctl start`: what the sandbox of
//! the unit (ProtectSystem=, SystemCallFilter=, ...) does at run time is not
//! exercised, only its syntax and its exposure score.
//!
//! Installing needs root, as CI has; elsewhere that test says so and passes.
//! It installs into the real /usr, /etc/fleetls and /var/lib/fleetls, so it
//! refuses to run over fleetls packages it did not install itself (its
//! marker, [`MARKER`], says which).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetls_tests::{bin_dir, free_port, program, repo, tail, test_dir, wait_until, Vhost, WAIT};
use serde_json::Value;

/// The two packages, the parent's first: (package = program = user, role).
const PACKAGES: [(&str, &str); 2] = [("fleetls-parent", "parent"), ("fleetls-child", "child")];

/// Says that the fleetls packages on this machine were installed by this
/// test, which may then purge them when a run was interrupted.
const MARKER: &str = "/var/tmp/fleetls-packages-test.marker";

/// The PATH systemd gives a service (and the operator's shell has as root).
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the roll-out drops the child's enrollment token (the README's path).
const TOKEN_FILE: &str = "/etc/fleetls/enroll.token";

/// What the brief of every unit requires, `Key=value` as written.
const HARDENING: &[&str] = &[
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "ProtectHome=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
];

// ------------------------------------------------------------ without root

/// Every `#key = value` line of a packaged example, uncommented, is a key
/// the program reads from its config file, and every flag of `serve` /
/// `run` has such a line: the example is the list of the real keys.
#[test]
fn the_example_configurations_name_every_real_key() {
    use clap::Args;
    let dir = test_dir();
    for (role, flags, read) in [
        (
            "parent",
            fleetls_parent::config::RawServe::augment_args(clap::Command::new("serve")),
            Box::new(|p: &Path| fleetls_parent::config::read_file(p).map(|_| ()))
                as Box<dyn Fn(&Path) -> Result<(), fleetls_bus::ConfigError>>,
        ),
        (
            "child",
            fleetls_child::config::RawRun::augment_args(clap::Command::new("run")),
            Box::new(|p: &Path| fleetls_child::config::read_file(p).map(|_| ())),
        ),
    ] {
        let example = repo().join(format!("deploy/debian/{role}.toml"));
        let text = std::fs::read_to_string(&example).unwrap();
        let (uncommented, keys) = uncomment_keys(&text);
        let path = dir.path().join(format!("{role}.toml"));
        std::fs::write(&path, &uncommented).unwrap();
        if let Err(e) = read(&path) {
            panic!(
                "{}: its commented keys, uncommented, are not a config the {role} reads: {e}\n{uncommented}",
                example.display()
            );
        }
        let real: BTreeSet<String> = flags
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = real.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "{} names no `#key = ...` line for these settings of the {role}: {missing:?}",
            example.display()
        );
    }
}

/// The example with its `#key = value` lines uncommented, and those keys.
fn uncomment_keys(text: &str) -> (String, BTreeSet<String>) {
    let mut keys = BTreeSet::new();
    let mut out = String::new();
    for line in text.lines() {
        let key = line.strip_prefix('#').and_then(|rest| {
            let (key, _) = rest.split_once(" = ")?;
            let word = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            word.then_some(key)
        });
        match key {
            Some(key) => {
                keys.insert(key.to_owned());
                out.push_str(&line[1..]);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    (out, keys)
}

// ------------------------------------------------------------ as root

#[test]
fn the_packages_install_run_enrol_verify_and_go_away() {
    if !is_root() {
        eprintln!(
            "SKIPPED: installing the .deb packages needs root (dpkg -i into /usr, /etc, /var/lib); \
             CI runs as root"
        );
        return;
    }
    let dir = test_dir();
    ensure_tool("systemd-analyze", "systemd");
    clear_leftovers();

    let debs = build_packages(dir.path());
    for (package, role) in PACKAGES {
        check_contents(&debs[package], package, role);
    }

    std::fs::write(
        MARKER,
        "fleetls packages installed by tests/tests/packages.rs\n",
    )
    .unwrap();
    let _purge = Purge;
    let mut dpkg = Command::new("dpkg");
    dpkg.arg("-i").args(PACKAGES.map(|(p, _)| &debs[p]));
    ok(&mut dpkg);
    for (package, role) in PACKAGES {
        check_installed(package, role);
    }
    check_units();

    let (parent, child) = serve_enrol_verify(dir.path());
    // SIGTERM, as systemd stops them: a clean exit.
    for service in [child, parent] {
        service.stop();
    }

    remove_then_purge();
    let _ = std::fs::remove_file(MARKER);
}

/// `systemd-analyze verify` has nothing to say about the installed units,
/// and `systemd-analyze security` scores their exposure at most 2.0 ("OK").
fn check_units() {
    let units = PACKAGES.map(|(package, _)| unit_path(package));
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").args(&units).current_dir("/");
    let said = ok(&mut verify);
    assert!(
        !said.contains("fleetls"),
        "systemd-analyze verify has something to say about the units:\n{said}"
    );
    for unit in &units {
        // The threshold is the exposure (0-10) times ten.
        let mut security = Command::new("systemd-analyze");
        security
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(unit)
            .current_dir("/");
        ok(&mut security);
    }
}

/// The installed parent serves with its packaged configuration; a child,
/// configured and given its token file as a roll-out would, is accepted by
/// the token, gets its certificate and passes `verify`. Both still run.
fn serve_enrol_verify(dir: &Path) -> (Service, Service) {
    let vhost = Vhost::new();
    let admin = format!("127.0.0.1:{}", free_port());
    adapt_config(
        "parent",
        &[
            ("broker", vhost.url()),
            ("management", vhost.management_url()),
            ("admin", admin),
        ],
    );
    let mut parent = Service::start("fleetls-parent", dir);
    wait_until("the installed parent answers `status`", WAIT, || {
        parent.assert_running();
        status().map(|_| ())
    });
    let (ssl, local) = (free_port().to_string(), free_port().to_string());
    operator_ok(&[
        "settings",
        "set",
        "--names",
        "localhost",
        "--ips",
        "127.0.0.1",
        "--port",
        &ssl,
        "--local-parent-port",
        &local,
    ]);
    let key = operator_ok(&["signing-key"]).trim().to_owned();
    let made = operator_ok(&[
        "enroll",
        "create",
        "--name",
        "till-pkg-*",
        "--uses",
        "1",
        "--expires",
        "1h",
    ]);
    let token = made.lines().last().expect("enroll create prints the token");

    // The roll-out: configuration and token file, as the README says.
    let dropped = dir.join("token");
    std::fs::write(&dropped, format!("{token}\n")).unwrap();
    ok(Command::new("install")
        .args(["-m", "0600", "-o", "fleetls-child", "-g", "fleetls-child"])
        .arg(&dropped)
        .arg(TOKEN_FILE));
    std::fs::remove_file(&dropped).unwrap();
    adapt_config(
        "child",
        &[
            ("broker", vhost.url()),
            ("name", "till-pkg-1".into()),
            ("location", "shop-1".into()),
            ("ips", "127.0.0.1".into()),
            ("parent-key", key),
            ("enroll-token-file", TOKEN_FILE.into()),
        ],
    );
    let mut child = Service::start("fleetls-child", dir);
    // Accepted by its token: the parent has no open enrollment.
    wait_until("till-pkg-1 online and accepted", WAIT, || {
        child.assert_running();
        let agent = agent(&status()?, "till-pkg-1")?;
        if agent["online"] == true && agent["admission"] == "accepted" {
            Ok(())
        } else {
            Err(agent.to_string())
        }
    });

    operator_ok(&["certs", "generate"]);
    operator_ok(&["certs", "send"]);
    wait_until("till-pkg-1 holds its certificate", WAIT, || {
        let view = status()?;
        match view["network"]["children_with_certificates"].as_u64() {
            Some(1) => Ok(()),
            _ => Err(view["network"].to_string()),
        }
    });
    let certs = Path::new("/var/lib/fleetls/child/certs");
    assert_owned(&certs.join("agent.pem"), "fleetls-child", None);
    assert_owned(&certs.join("agent.key"), "fleetls-child", Some(0o600));
    let out = operator(&["verify", "--step-timeout", "20s", "--json"])
        .unwrap_or_else(|e| panic!("verify did not pass: {e}\n{}", child.log_tail()));
    let summary: Value = serde_json::from_str(&out).expect("verify --json prints JSON");
    assert_eq!(summary["summary"]["passed"], 1, "{summary}");
    let view = status().unwrap();
    let result = &agent(&view, "till-pkg-1").unwrap()["last_result"];
    assert_eq!(result["state"], "passed", "{result}");

    // Everything the services wrote belongs to their users.
    for (package, role) in PACKAGES {
        for path in walk(&Path::new("/var/lib/fleetls").join(role)) {
            assert_owned(&path, package, None);
        }
    }
    (parent, child)
}

/// `dpkg -r`: programs and units go (and an enabled unit's link); data,
/// configuration, token and users stay. Then `dpkg -P`: data,
/// configuration and token go too; the users stay.
fn remove_then_purge() {
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants");
    let enabled = ok(Command::new("systemctl").args(["enable", "fleetls-child"]));
    assert!(
        wants.join("fleetls-child.service").is_symlink(),
        "systemctl enable made no link: {enabled}"
    );
    ok(Command::new("dpkg").args(["-r", "fleetls-child", "fleetls-parent"]));
    for (package, role) in PACKAGES {
        assert!(!Path::new("/usr/bin").join(package).exists());
        assert!(!unit_path(package).exists());
        assert_eq!(dpkg_status(package), "deinstall ok config-files");
        assert!(Path::new(&format!("/etc/fleetls/{role}.toml")).exists());
        assert!(user_exists(package), "{package}: the user stays on remove");
    }
    assert!(
        !wants.join("fleetls-child.service").is_symlink(),
        "dpkg -r leaves no enable link to a unit that is gone"
    );
    for kept in [
        "/var/lib/fleetls/parent/fleetls.db",
        "/var/lib/fleetls/parent/certificates/ca.key",
        "/var/lib/fleetls/child/certs/agent.key",
        TOKEN_FILE,
    ] {
        assert!(Path::new(kept).exists(), "dpkg -r keeps {kept}");
    }

    ok(Command::new("dpkg").args(["-P", "fleetls-child", "fleetls-parent"]));
    for (package, _) in PACKAGES {
        assert_eq!(dpkg_status(package), "not installed");
        assert!(user_exists(package), "{package}: the user stays on purge");
    }
    for gone in ["/etc/fleetls", "/var/lib/fleetls"] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is left after dpkg -P: {:?}",
            walk(Path::new(gone))
        );
    }
}

/// What `status --json` of the installed parent prints, parsed.
fn status() -> Result<Value, String> {
    let out = operator(&["status", "--json"])?;
    serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
}

/// Purges both packages when dropped (a failed run leaves nothing
/// installed), unless `FLEETLS_TEST_KEEP` asks to look at them.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let left = PACKAGES
            .iter()
            .any(|(p, _)| dpkg_status(p) != "not installed");
        if !left {
            let _ = std::fs::remove_file(MARKER);
            return;
        }
        if std::env::var_os("FLEETLS_TEST_KEEP").is_some() {
            eprintln!("packages left installed (FLEETLS_TEST_KEEP); {MARKER} marks them");
            return;
        }
        let _ = Command::new("dpkg")
            .args(["-P", "fleetls-child", "fleetls-parent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(MARKER);
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Installs the Debian package that provides `tool` when it is missing.
fn ensure_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return;
    }
    eprintln!("installing {package} ({tool}) with apt-get");
    ok(Command::new("sh")
        .args([
            "-c",
            &format!("apt-get update -qq && apt-get install -y -qq {package}"),
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"));
}

/// `dpkg-query`'s status of a package, or "not installed".
fn dpkg_status(package: &str) -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .expect("dpkg-query runs");
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || status.is_empty() || status.ends_with("not-installed") {
        "not installed".into()
    } else {
        status
    }
}

/// Fleetls packages on this machine before the test: purged when this test
/// left them (its marker is there), else the test stops.
fn clear_leftovers() {
    let present: Vec<(&str, String)> = PACKAGES
        .iter()
        .map(|(p, _)| (*p, dpkg_status(p)))
        .filter(|(_, s)| s != "not installed")
        .collect();
    if present.is_empty() {
        return;
    }
    assert!(
        Path::new(MARKER).exists(),
        "fleetls packages are on this machine and not from this test ({present:?}, no {MARKER}): \
         it would overwrite and purge them; remove them first (dpkg -P fleetls-child fleetls-parent)"
    );
    eprintln!("purging the packages an earlier run of this test left: {present:?}");
    ok(Command::new("dpkg").args(["-P", "fleetls-child", "fleetls-parent"]));
}

/// `scripts/package --profile PROFILE --no-build` over the programs the
/// tests run (built by [`program`]); the two .deb files by package name.
fn build_packages(dir: &Path) -> std::collections::HashMap<&'static str, PathBuf> {
    for (package, _) in PACKAGES {
        program(package);
    }
    let bins = bin_dir();
    let profile = bins.file_name().unwrap().to_str().unwrap().to_owned();
    let out = dir.join("debs");
    let mut script = Command::new(repo().join("scripts/package"));
    script
        .args(["--profile", &profile, "--no-build", "--out"])
        .arg(&out)
        .env("CARGO_TARGET_DIR", bins.parent().unwrap());
    let printed = ok(&mut script);
    let version = env!("CARGO_PKG_VERSION").replace('-', "~");
    let arch = ok(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_owned();
    let mut debs = std::collections::HashMap::new();
    for (package, _) in PACKAGES {
        let deb = out.join(format!("{package}_{version}_{arch}.deb"));
        assert!(
            printed.lines().any(|l| Path::new(l) == deb),
            "scripts/package printed no {}:\n{printed}",
            deb.display()
        );
        debs.insert(package, deb);
    }
    debs
}

/// What `dpkg-deb -I` and `-c` show of one package.
fn check_contents(deb: &Path, package: &str, role: &str) {
    let field = |name: &str| {
        ok(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), package);
    assert_eq!(
        field("Version"),
        env!("CARGO_PKG_VERSION").replace('-', "~")
    );
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    let depends = field("Depends");
    for needed in ["adduser", "libc6 (>= "] {
        assert!(depends.contains(needed), "{package} Depends: {depends}");
    }
    let info = ok(Command::new("dpkg-deb").arg("-I").arg(deb));
    for script in ["postinst", "prerm", "postrm", "conffiles", "md5sums"] {
        assert!(info.contains(script), "{package} has no {script}:\n{info}");
    }
    let conffiles = ok(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"));
    assert_eq!(conffiles.trim(), format!("/etc/fleetls/{role}.toml"));

    // Every file, with its mode and owner; nothing else.
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    let files: BTreeSet<(String, String, String)> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[5].to_owned(), cols[0].to_owned(), cols[1].to_owned())
        })
        .collect();
    let root = "root/root".to_owned();
    let want: BTreeSet<(String, String, String)> = [
        (format!("./usr/bin/{package}"), "-rwxr-xr-x"),
        (
            format!("./usr/lib/systemd/system/{package}.service"),
            "-rw-r--r--",
        ),
        (format!("./etc/fleetls/{role}.toml"), "-rw-r-----"),
        (format!("./usr/share/doc/{package}/copyright"), "-rw-r--r--"),
        (
            format!("./usr/share/doc/{package}/README.Debian"),
            "-rw-r--r--",
        ),
    ]
    .into_iter()
    .map(|(path, mode)| (path, mode.to_owned(), root.clone()))
    .collect();
    assert_eq!(files, want, "dpkg-deb -c {}:\n{listing}", deb.display());
}

fn unit_path(package: &str) -> PathBuf {
    Path::new("/usr/lib/systemd/system").join(format!("{package}.service"))
}

/// The `Key=value` lines of a unit file, in order (comments and section
/// headers left out).
fn unit_lines(package: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(unit_path(package)).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The one value of `key` in a unit.
fn unit_value(lines: &[(String, String)], key: &str) -> String {
    let values: Vec<&String> = lines
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values.len(), 1, "the unit has one {key}=: {values:?}");
    values[0].clone()
}

/// The installed package as its unit and the brief want it: user, folders,
/// modes, hardening.
fn check_installed(package: &str, role: &str) {
    assert!(user_exists(package), "postinst made no user {package}");
    let passwd = ok(Command::new("getent").args(["passwd", package]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "{package} is a system user: {passwd}");
    assert_eq!(fields[5], format!("/var/lib/fleetls/{role}"), "{passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    let data = PathBuf::from(format!("/var/lib/fleetls/{role}"));
    assert_owned(&data, package, Some(0o750));
    let conf = PathBuf::from(format!("/etc/fleetls/{role}.toml"));
    let meta = std::fs::metadata(&conf).unwrap();
    assert_eq!(meta.uid(), 0, "{} belongs to root", conf.display());
    assert_eq!(
        meta.gid(),
        id("-g", package),
        "{}: group {package}",
        conf.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o640,
        "{}",
        conf.display()
    );

    let lines = unit_lines(package);
    let service_key = |key: &str, want: &str| {
        assert_eq!(unit_value(&lines, key), want, "{package}.service {key}=");
    };
    service_key("User", package);
    service_key("ReadWritePaths", &format!("/var/lib/fleetls/{role}"));
    let exec = unit_value(&lines, "ExecStart");
    assert!(
        exec.contains(&format!("--config /etc/fleetls/{role}.toml"))
            && exec.contains(&format!("--data-dir /var/lib/fleetls/{role}")),
        "{package}.service ExecStart={exec}"
    );
    for line in HARDENING {
        let (key, value) = line.split_once('=').unwrap();
        assert!(
            lines.iter().any(|(k, v)| k == key && v == value),
            "{package}.service has no {line}"
        );
    }
}

fn user_exists(user: &str) -> bool {
    Command::new("getent")
        .args(["passwd", user])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `id FLAG USER` (`-u` or `-g`).
fn id(flag: &str, user: &str) -> u32 {
    ok(Command::new("id").args([flag, user]))
        .trim()
        .parse()
        .unwrap()
}

/// `path` belongs to `user` (and its group), with `mode` when given.
fn assert_owned(path: &Path, user: &str, mode: Option<u32>) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (meta.uid(), meta.gid()),
        (id("-u", user), id("-g", user)),
        "{} belongs to {user}",
        path.display()
    );
    if let Some(mode) = mode {
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            mode,
            "{}: mode {mode:o}",
            path.display()
        );
    }
}

/// Every file and folder below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

/// Puts the test's settings at the top of the installed, packaged
/// configuration file (above its commented keys, so that they sit at the
/// top level of the TOML), as an operator's editor would.
fn adapt_config(role: &str, settings: &[(&str, String)]) {
    let path = PathBuf::from(format!("/etc/fleetls/{role}.toml"));
    let packaged = std::fs::read_to_string(&path).unwrap();
    let mut text = String::from("# set by tests/tests/packages.rs\n");
    for (key, value) in settings {
        text.push_str(&format!("{key} = {}\n", toml::Value::String(value.clone())));
    }
    text.push_str(&packaged);
    // Written in place: owner and mode stay as the postinst set them.
    std::fs::write(&path, text).unwrap();
}

/// An installed program run as its unit runs it.
struct Service {
    name: &'static str,
    process: Child,
    log: PathBuf,
}

impl Service {
    /// Starts the unit's ExecStart as its User and Group with no capability
    /// and no_new_privs (NoNewPrivileges=, CapabilityBoundingSet=,
    /// AmbientCapabilities=), in its WorkingDirectory with its UMask, in
    /// the environment systemd gives a service; output to `dir/NAME.log`
    /// (the journal's stand-in).
    fn start(name: &'static str, dir: &Path) -> Service {
        let lines = unit_lines(name);
        let exec = unit_value(&lines, "ExecStart");
        assert!(
            !exec.contains(['"', '\'', '$', '%']),
            "ExecStart is run word by word here: {exec}"
        );
        let user = unit_value(&lines, "User");
        let group = unit_value(&lines, "Group");
        let umask = unit_value(&lines, "UMask");
        let home = ok(Command::new("getent").args(["passwd", &user]));
        let home = home.trim().split(':').nth(5).unwrap().to_owned();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        // sh sets the umask and execs setpriv, which execs the program: the
        // pid is the program's own.
        let process = Command::new("/bin/sh")
            .args(["-c", "umask \"$0\" && exec \"$@\"", &umask, "setpriv"])
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={group}"))
            .args([
                "--init-groups",
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--",
            ])
            .args(exec.split_whitespace())
            .current_dir(unit_value(&lines, "WorkingDirectory"))
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("HOME", home)
            .env("USER", &user)
            .env("LOGNAME", &user)
            .env("RUST_LOG", "info,lapin=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Service { name, process, log }
    }

    /// Panics with its log when it has stopped: waiting is pointless then.
    fn assert_running(&mut self) {
        if let Some(status) = self.process.try_wait().unwrap() {
            panic!("{} stopped ({status}):\n{}", self.name, self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        format!(
            "---- {} (tail)\n{}",
            self.name,
            tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
        )
    }

    /// SIGTERM, as `systemctl stop` sends it: the program ends by itself,
    /// with exit code 0.
    fn stop(mut self) {
        ok(Command::new("kill").args(["-TERM", &self.process.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within 30 s of SIGTERM:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "{} ended on SIGTERM with {status}:\n{}",
            self.name,
            self.log_tail()
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// An operator command of the installed parent, as the README has it:
/// `runuser -u fleetls-parent -- fleetls-parent ARGS --data-dir
/// /var/lib/fleetls/parent`; its stdout, or its exit code and stderr.
fn operator(args: &[&str]) -> Result<String, String> {
    let out = Command::new("runuser")
        .args(["-u", "fleetls-parent", "--", "/usr/bin/fleetls-parent"])
        .args(args)
        .args(["--data-dir", "/var/lib/fleetls/parent"])
        .current_dir("/")
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .stdin(Stdio::null())
        .output()
        .expect("runuser runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "fleetls-parent {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn operator_ok(args: &[&str]) -> String {
    operator(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The agent called `name` in what `status --json` printed.
fn agent(view: &Value, name: &str) -> Result<Value, String> {
    view["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["name"] == name).cloned())
        .ok_or_else(|| format!("no agent {name} yet"))
}

/// Runs a command that must succeed; its stdout and stderr together.
fn ok(command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not run: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{said}",
        out.status
    );
    said
}
