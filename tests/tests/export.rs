//! Export for manual installation, checked from the outside with `openssl`
//! and `keytool`: the modern `.pfx` (AES-256, SHA-256 MAC) opens with the
//! password, the legacy one (3DES, SHA-1 MAC) opens with `openssl -legacy`,
//! both hold a key matching a certificate that verifies against `ca.pem`;
//! the JKS truststore lists the CA as one trusted entry; `ca.cer` is the CA
//! in DER; a wrong password opens nothing; keys are only in 0600 files in a
//! 0700 folder; the certificates are in the registry; mPOS without a DNS name
//! of the parent is refused before anything is issued.
//!
//! `fleetls-parent export` is also run as an operator runs it, against a
//! serving parent: exit 3 before `certs generate`; the files it writes (in
//! a relative `--out`) are the ones it prints, openable with the password of
//! `--password-file` (its final newline dropped; it wins over
//! `FLEETLS_EXPORT_PASSWORD`) and not with another; the password from
//! `FLEETLS_EXPORT_PASSWORD` with `--json`; and exit 2, naming why and
//! writing nothing, for a missing, empty or short password, a missing
//! password file, a `--password` flag and an unknown agent.
//!
//! Passwords reach the tools through files, never on a command line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fleetls_parent::export::{self, ExportError, ExportReport};
use fleetls_parent::inbound::{Event, EventKind};
use fleetls_parent::layout::{CertFile, Layout};
use fleetls_parent::pki::{fingerprint, Pki};
use fleetls_parent::registry::{Agent, Registry};
use fleetls_parent::settings::{SettingsChange, SslSettings};
use fleetls_proto::{AgentKind, AgentState, Hello};
use uuid::Uuid;

const PASSWORD: &str = "s3cret export pw";

/// Runs a tool: (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn openssl(args: &[&str]) -> (bool, String) {
    run("openssl", args)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A parent's CA and registry in a temporary folder.
struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    registry: Registry,
    settings: SslSettings,
    /// A file holding [`PASSWORD`], and one holding a wrong password.
    password_file: PathBuf,
    wrong_file: PathBuf,
}

impl Setup {
    fn new(settings: SslSettings) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let lifetime = fleetls_parent::config::parse_lifetime("398d").unwrap();
        let pki = Pki::generate(dir.path(), &settings, None, lifetime).unwrap();
        let registry = Registry::open(&Layout::new(dir.path()).registry()).unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        let wrong_file = dir.path().join("wrong-password");
        std::fs::write(&wrong_file, "not the password").unwrap();
        Setup {
            dir,
            pki,
            registry,
            settings,
            password_file,
            wrong_file,
        }
    }

    /// Registers an agent as its Hello would.
    fn register(&self, name: &str, kind: AgentKind) -> Agent {
        let id = Uuid::new_v4();
        let hello = Hello {
            enroll: None,
            name: name.into(),
            kind,
            version: "1.0.0".into(),
            location: Some("shop-1".into()),
            hostnames: Vec::new(),
            ips: Vec::new(),
            key_fingerprint: None,
            state: AgentState::default(),
        };
        fleetls_parent::inbound::apply(
            &self.registry,
            &[Event {
                message: Uuid::new_v4(),
                agent: id,
                at: fleetls_proto::now_ms(),
                key: format!("{:064x}", id.as_u128()),
                delivery: 0,
                seq: 1,
                what: EventKind::Hello(hello),
            }],
            None,
            &fleetls_parent::inbound::Policy {
                parent_key: "sha256:test".into(),
                enrollment: fleetls_parent::enrollment::Rules {
                    auto_accept: "child:*;mpos:*".parse().unwrap(),
                    ..Default::default()
                },
                ssl_port_open_since: u64::MAX,
            },
        )
        .unwrap();
        self.registry.agent(&id).unwrap().expect("registered")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("export").join("mpos")
    }

    fn export(&self, agents: &[Agent], legacy: bool) -> Result<ExportReport, ExportError> {
        export::export(
            &self.pki,
            &self.registry,
            &self.settings,
            agents,
            &self.out(),
            PASSWORD,
            legacy,
        )
    }

    fn passin(&self) -> String {
        format!("file:{}", s(&self.password_file))
    }

    fn wrong_passin(&self) -> String {
        format!("file:{}", s(&self.wrong_file))
    }
}

/// The public key of a PEM certificate or key, per openssl (PEM text).
fn public_key(dir: &Path, pem: &str, is_key: bool) -> String {
    let path = dir.join(if is_key { "k.pem" } else { "c.pem" });
    std::fs::write(&path, pem).unwrap();
    let (ok, out) = if is_key {
        openssl(&["pkey", "-in", s(&path), "-pubout"])
    } else {
        openssl(&["x509", "-in", s(&path), "-noout", "-pubkey"])
    };
    std::fs::remove_file(&path).unwrap();
    assert!(ok, "{out}");
    out
}

/// The PEM blocks of one kind (`CERTIFICATE`, `PRIVATE KEY`) in a text.
fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let stop = rest[start..].find(&end).expect("a PEM block ends") + start + end.len();
        blocks.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    blocks
}

/// Opens a `.pfx` with openssl and checks everything a device relies on.
fn check_pfx(setup: &Setup, pfx: &Path, legacy_flag: bool, expect: &[&str]) {
    let scratch = setup.dir.path();
    let passin = setup.passin();
    let mut info = vec![
        "pkcs12",
        "-info",
        "-in",
        s(pfx),
        "-passin",
        &passin,
        "-nokeys",
    ];
    if legacy_flag {
        info.push("-legacy");
    }
    let (ok, out) = openssl(&info);
    assert!(ok, "openssl {info:?}: {out}");
    for needle in expect {
        assert!(out.contains(needle), "{needle:?} missing from {out}");
    }

    // The key and the certificates, in the clear.
    let mut dump = vec!["pkcs12", "-in", s(pfx), "-passin", &passin, "-nodes"];
    if legacy_flag {
        dump.push("-legacy");
    }
    let (ok, out) = openssl(&dump);
    assert!(ok, "openssl {dump:?}: {out}");
    let keys = pem_blocks(&out, "PRIVATE KEY");
    let certs = pem_blocks(&out, "CERTIFICATE");
    assert_eq!(keys.len(), 1, "{out}");
    assert_eq!(certs.len(), 2, "the leaf and the CA: {out}");
    // openssl prints the leaf (the one with the key's localKeyID) first.
    let leaf = &certs[0];
    assert_eq!(
        public_key(scratch, &keys[0], true),
        public_key(scratch, leaf, false),
        "the key in the .pfx does not match its certificate"
    );
    let leaf_path = scratch.join("leaf.pem");
    std::fs::write(&leaf_path, leaf).unwrap();
    let ca = setup.out().join("ca.pem");
    let (ok, out) = openssl(&["verify", "-CAfile", s(&ca), s(&leaf_path)]);
    assert!(ok && out.contains(": OK"), "{out}");

    // A wrong password opens nothing.
    let wrong = setup.wrong_passin();
    let mut bad = vec!["pkcs12", "-in", s(pfx), "-passin", &wrong, "-nodes"];
    if legacy_flag {
        bad.push("-legacy");
    }
    let (ok, out) = openssl(&bad);
    assert!(!ok, "a wrong password opened {}: {out}", pfx.display());
    assert!(
        out.to_lowercase().contains("mac verify"),
        "expected a MAC failure: {out}"
    );
}

#[test]
fn modern_export_opens_with_openssl_and_keytool() {
    let setup = Setup::new(SslSettings::defaults("127.0.0.1"));
    let mpos = setup.register("mpos-1", AgentKind::Mpos);
    let till = setup.register("till/2", AgentKind::Child);
    let report = setup.export(&[mpos.clone(), till.clone()], false).unwrap();
    let out = setup.out();
    let names: Vec<String> = report
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "ca.cer",
            "ca.pem",
            "truststore.jks",
            "mpos-1.pfx",
            "till_2.pfx"
        ]
    );
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("mpos-1.pfx")), 0o600);
    assert_eq!(mode(&out.join("till_2.pfx")), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // No key anywhere but inside the .pfx files.
    for file in ["ca.cer", "ca.pem", "truststore.jks"] {
        let bytes = std::fs::read(out.join(file)).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{file}"
        );
    }

    check_pfx(
        &setup,
        &out.join("mpos-1.pfx"),
        false,
        &[
            "PBES2, PBKDF2, AES-256-CBC",
            "PRF hmacWithSHA256",
            "MAC: sha256",
        ],
    );
    check_pfx(&setup, &out.join("till_2.pfx"), false, &["AES-256-CBC"]);

    // The certificates are the registry's.
    assert_eq!(report.certificates.len(), 2);
    assert_eq!(report.certificates[0].agent, mpos.id);
    assert_eq!(setup.registry.issued_count().unwrap(), 2);

    // ca.cer is the CA, DER.
    let (ok, text) = openssl(&[
        "x509",
        "-inform",
        "der",
        "-in",
        s(&out.join("ca.cer")),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    assert!(ok, "{text}");
    let hex = text
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(format!("sha256:{hex}"), setup.pki.root_fingerprint);
    let der = std::fs::read(out.join("ca.cer")).unwrap();
    assert_eq!(fingerprint(&der), setup.pki.root_fingerprint);

    // The JKS truststore: one trusted entry, the CA.
    let storepass = s(&setup.password_file);
    let (ok, text) = run(
        "keytool",
        &[
            "-list",
            "-v",
            "-keystore",
            s(&out.join("truststore.jks")),
            "-storetype",
            "JKS",
            "-storepass:file",
            storepass,
        ],
    );
    assert!(ok, "keytool: {text}");
    assert!(
        text.contains("Your keystore contains 1 entry"),
        "keytool: {text}"
    );
    assert!(text.contains("trustedCertEntry"), "keytool: {text}");
    assert!(text.contains("fleetls-ca"), "keytool: {text}");
    let keytool_sha256: String = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("SHA256:"))
        .expect("keytool prints a SHA256 fingerprint")
        .trim()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(
        format!("sha256:{keytool_sha256}"),
        setup.pki.root_fingerprint
    );
    // keytool refuses the store with a wrong password (integrity check).
    let (ok, text) = run(
        "keytool",
        &[
            "-list",
            "-keystore",
            s(&out.join("truststore.jks")),
            "-storetype",
            "JKS",
            "-storepass:file",
            s(&setup.wrong_file),
        ],
    );
    assert!(
        !ok,
        "keytool opened the truststore with a wrong password: {text}"
    );
    assert!(
        text.contains("Keystore was tampered with, or password was incorrect"),
        "keytool did not refuse the password: {text}"
    );
}

#[test]
fn legacy_export_is_3des_with_a_sha1_mac() {
    let setup = Setup::new(SslSettings::defaults("127.0.0.1"));
    let old = setup.register("old-windows", AgentKind::Child);
    setup.export(&[old], true).unwrap();
    let pfx = setup.out().join("old-windows.pfx");
    check_pfx(
        &setup,
        &pfx,
        true,
        &["pbeWithSHA1And3-KeyTripleDES-CBC", "MAC: sha1"],
    );
    // No RC2 or RC4 inside: OpenSSL 3 reads it without -legacy as well
    // (3DES and the PKCS#12 KDF are in its default provider), the certificates
    // and the key alike.
    check_pfx(
        &setup,
        &pfx,
        false,
        &["pbeWithSHA1And3-KeyTripleDES-CBC", "MAC: sha1"],
    );
    let passin = setup.passin();
    let (_, text) = openssl(&[
        "pkcs12",
        "-in",
        s(&pfx),
        "-passin",
        &passin,
        "-info",
        "-nodes",
    ]);
    // "PKCS7 Encrypted data: SCHEME, ..." (the certificates) and "Shrouded
    // Keybag: SCHEME, ..." (the key).
    let schemes: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("PKCS7 Encrypted data: ")
                .or_else(|| l.strip_prefix("Shrouded Keybag: "))
        })
        .collect();
    assert_eq!(schemes.len(), 2, "{text}");
    for scheme in schemes {
        assert!(
            scheme.starts_with("pbeWithSHA1And3-KeyTripleDES-CBC"),
            "a bag encrypted otherwise: {scheme}\n{text}"
        );
    }
}

#[test]
fn mpos_without_a_dns_name_is_refused_before_anything_is_issued() {
    let settings = SslSettings::defaults("127.0.0.1")
        .apply(&SettingsChange {
            names: Some(String::new()),
            ips: Some("10.0.0.1".into()),
            ..SettingsChange::default()
        })
        .unwrap();
    assert!(settings.names.is_empty());
    let setup = Setup::new(settings);
    let mpos = setup.register("mpos-2", AgentKind::Mpos);
    let till = setup.register("till-3", AgentKind::Child);
    let err = setup.export(&[till.clone(), mpos], false).unwrap_err();
    assert!(matches!(err, ExportError::Refused(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("mPOS cannot use an IP") && text.contains("settings set --names"),
        "{text}"
    );
    assert!(text.contains("mpos-2"), "{text}");
    assert!(!setup.out().exists(), "nothing is written");
    assert_eq!(setup.registry.issued_count().unwrap(), 0);
    // A plain child exports fine with IP addresses only.
    setup.export(&[till], false).unwrap();
}

#[test]
fn selection_and_password_rules() {
    let setup = Setup::new(SslSettings::defaults("127.0.0.1"));
    let mpos = setup.register("mpos-9", AgentKind::Mpos);
    let till = setup.register("till-9", AgentKind::Child);
    let local = setup.register("lp-9", AgentKind::LocalParent);
    let all = setup.registry.agents().unwrap();
    let chosen = export::select_agents(&all, &[till.id.to_string()], true).unwrap();
    let ids: Vec<Uuid> = chosen.iter().map(|a| a.id).collect();
    assert_eq!(ids, [till.id, mpos.id]);
    let err = export::select_agents(&all, &["nobody".into()], false).unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
    let err = setup.export(&[local], false).unwrap_err();
    assert!(err.to_string().contains("local parent"), "{err}");
    let err = export::export(
        &setup.pki,
        &setup.registry,
        &setup.settings,
        &[till],
        &setup.out(),
        "short",
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
    assert!(!setup.out().exists());
}

// ---------------------------------------------------------------------------
// `fleetls-parent export` as an operator runs it
// ---------------------------------------------------------------------------

/// What `export --mpos --agent till-1` writes, in the order it says so:
/// the CA files, the agents named, then the mPOS devices.
const EXPORTED: [&str; 5] = [
    "ca.cer",
    "ca.pem",
    "truststore.jks",
    "till-1.pfx",
    "mpos-1.pfx",
];

/// A serving parent with an mPOS device and a till registered; the
/// processes end before their vhost and folder go.
struct Served {
    children: Vec<fleetls_tests::Proc>,
    parent: fleetls_tests::Parent,
    _vhost: fleetls_tests::Vhost,
    dir: tempfile::TempDir,
}

impl Served {
    fn new() -> Served {
        let vhost = fleetls_tests::Vhost::new();
        let dir = fleetls_tests::test_dir();
        let parent = fleetls_tests::Parent::start(&vhost, dir.path(), &[]);
        let (port, local) = (fleetls_tests::free_port(), fleetls_tests::free_port());
        parent.cli_ok(&[
            "settings",
            "set",
            "--port",
            &port.to_string(),
            "--local-parent-port",
            &local.to_string(),
            "--names",
            "parent.test;localhost",
            "--ips",
            "127.0.0.1",
        ]);
        let children = vec![
            fleetls_tests::start_child(&vhost, dir.path(), "mpos-1", &["--kind", "mpos"]),
            fleetls_tests::start_child(&vhost, dir.path(), "till-1", &[]),
        ];
        parent.wait_online(&["mpos-1", "till-1"]);
        Served {
            children,
            parent,
            _vhost: vhost,
            dir,
        }
    }

    /// A file of the test's folder holding `text`.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `export ARGS` with `FLEETLS_EXPORT_PASSWORD` set to `env` (or
    /// unset): (exit code, stdout, stderr).
    fn export(&self, args: &[&str], env: Option<&str>) -> (i32, String, String) {
        let mut command = self.parent.command(&[&["export"][..], args].concat());
        if let Some(password) = env {
            command.env("FLEETLS_EXPORT_PASSWORD", password);
        }
        fleetls_tests::outcome(command.current_dir(self.dir.path()))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.children.clear();
    }
}

/// Whether openssl opens a `.pfx` with the password held in `password_file`.
fn opens_with(pfx: &Path, password_file: &Path) -> Result<String, String> {
    let passin = format!("file:{}", s(password_file));
    let (ok, out) = openssl(&["pkcs12", "-in", s(pfx), "-passin", &passin, "-nodes"]);
    if ok {
        Ok(out)
    } else {
        Err(out)
    }
}

/// The files of a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn export_as_a_process_writes_the_files_it_names_with_the_password_of_the_file() {
    let served = Served::new();
    // Nothing to export before the CA exists: refused, exit 3.
    let password_file = served.file("password", &format!("{PASSWORD}\n"));
    let pw = s(&password_file);
    let (code, out, err) =
        served.export(&["--out", "early", "--mpos", "--password-file", pw], None);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("certs generate"), "{err}");
    assert!(!served.dir.path().join("early").exists());
    served.parent.cli_ok(&["certs", "generate"]);

    // A relative --out is the operator's folder; the password file's final
    // newline is not part of the password; FLEETLS_EXPORT_PASSWORD, set as
    // well, gives way to the file.
    let (code, out, err) = served.export(
        &[
            "--out",
            "devices",
            "--mpos",
            "--agent",
            "till-1",
            "--password-file",
            pw,
        ],
        Some("the environment's password"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let folder = served.dir.path().join("devices");
    let mut expected: Vec<String> = EXPORTED.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(listing(&folder), expected);
    assert_eq!(mode(&folder), 0o700);
    for pfx in ["mpos-1.pfx", "till-1.pfx"] {
        assert_eq!(mode(&folder.join(pfx)), 0o600, "{pfx}");
    }
    // It prints every file it wrote, then a line per certificate.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    for (line, name) in lines.iter().zip(EXPORTED) {
        assert_eq!(*line, s(&folder.join(name)), "{out}");
    }
    for (line, name) in lines[5..].iter().zip(["till-1", "mpos-1"]) {
        assert!(
            line.starts_with(&format!("{name}: certificate "))
                && line.ends_with(&format!(" in {}", s(&folder.join(format!("{name}.pfx"))))),
            "{out}"
        );
        // Its expiry as a date (`valid until 2027-01-05 10:00:00 UTC`), not Unix seconds.
        let until = line
            .split("(valid until ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("no expiry in {line}"));
        assert!(
            until.len() == 23 && until.ends_with(" UTC") && until.as_bytes()[4] == b'-',
            "the expiry is printed as a date: {line}"
        );
    }

    // openssl reads the first line of a password file: had the newline been
    // kept, the password would not match.
    let exact = served.file("password-exact", PASSWORD);
    let environment = served.file("password-env", "the environment's password");
    for pfx in ["mpos-1.pfx", "till-1.pfx"] {
        let pfx = folder.join(pfx);
        let dump = opens_with(&pfx, &exact).unwrap_or_else(|e| panic!("{}: {e}", pfx.display()));
        assert_eq!(pem_blocks(&dump, "PRIVATE KEY").len(), 1, "{dump}");
        let err = opens_with(&pfx, &environment).expect_err("the environment's password opened it");
        assert!(err.to_lowercase().contains("mac verify"), "{err}");
    }
    // ca.cer and ca.pem are the parent's CA.
    let parent_ca = std::fs::read_to_string(served.parent.cert_file(CertFile::CaPem)).unwrap();
    assert_eq!(
        std::fs::read_to_string(folder.join("ca.pem")).unwrap(),
        parent_ca
    );
}

#[test]
fn export_as_a_process_takes_the_password_from_the_environment() {
    let served = Served::new();
    served.parent.cli_ok(&["certs", "generate"]);
    let out = served.dir.path().join("mpos");
    let password = "a password from the environment";
    let (code, printed, err) = served.export(
        &["--out", s(&out), "--agent", "mpos-1", "--json"],
        Some(password),
    );
    assert_eq!(code, 0, "{printed}{err}");
    let report: ExportReport = serde_json::from_str(&printed)
        .unwrap_or_else(|e| panic!("export --json printed no report ({e}): {printed}"));
    let files: Vec<PathBuf> = ["ca.cer", "ca.pem", "truststore.jks", "mpos-1.pfx"]
        .iter()
        .map(|n| out.join(n))
        .collect();
    assert_eq!(report.files, files);
    assert_eq!(report.certificates.len(), 1);
    assert_eq!(report.certificates[0].name, "mpos-1");
    assert_eq!(report.certificates[0].file, out.join("mpos-1.pfx"));
    let mut written = listing(&out);
    written.sort();
    let mut named: Vec<String> = ["ca.cer", "ca.pem", "truststore.jks", "mpos-1.pfx"]
        .iter()
        .map(|n| n.to_string())
        .collect();
    named.sort();
    assert_eq!(written, named);
    let right = served.file("right", password);
    let wrong = served.file("wrong", PASSWORD);
    opens_with(&out.join("mpos-1.pfx"), &right).unwrap_or_else(|e| panic!("{e}"));
    let err = opens_with(&out.join("mpos-1.pfx"), &wrong).expect_err("another password opened it");
    assert!(err.to_lowercase().contains("mac verify"), "{err}");
    // The truststore too is locked with it.
    let storepass = s(&right);
    let (ok, text) = run(
        "keytool",
        &[
            "-list",
            "-keystore",
            s(&out.join("truststore.jks")),
            "-storetype",
            "JKS",
            "-storepass:file",
            storepass,
        ],
    );
    assert!(
        ok && text.contains("Your keystore contains 1 entry"),
        "keytool: {text}"
    );
}

#[test]
fn export_as_a_process_refuses_a_missing_or_bad_password_before_writing() {
    let served = Served::new();
    served.parent.cli_ok(&["certs", "generate"]);
    let out = served.dir.path().join("refused");
    let out = s(&out);
    let short = served.file("short", "short");
    let empty = served.file("empty", "\n");
    let missing = served.dir.path().join("no-such-password-file");
    let good = served.file("good", PASSWORD);
    for (args, env, says) in [
        (
            vec!["--mpos"],
            None,
            "no export password: give --password-file FILE or set FLEETLS_EXPORT_PASSWORD",
        ),
        (
            vec!["--mpos"],
            Some("short"),
            "the export password is too short: use at least 8 characters",
        ),
        (vec!["--mpos"], Some(""), "the export password is empty"),
        (
            vec!["--mpos", "--password-file", s(&short)],
            None,
            "the export password is too short",
        ),
        (
            vec!["--mpos", "--password-file", s(&empty)],
            None,
            "the export password is empty",
        ),
        (
            vec!["--mpos", "--password-file", s(&missing)],
            None,
            "cannot read the password file",
        ),
        // A password given on the command line is not a flag at all.
        (
            vec!["--mpos", "--password", PASSWORD],
            None,
            "unexpected argument '--password'",
        ),
        // A good password, an agent nobody knows.
        (
            vec!["--agent", "nobody", "--password-file", s(&good)],
            None,
            "nobody",
        ),
    ] {
        let all: Vec<&str> = ["--out", out]
            .iter()
            .copied()
            .chain(args.iter().copied())
            .collect();
        let (code, printed, err) = served.export(&all, env);
        assert_eq!(
            code, 2,
            "export {all:?} (FLEETLS_EXPORT_PASSWORD {env:?}): {printed}{err}"
        );
        assert!(
            err.contains(says),
            "export {all:?}: expected {says:?} in: {err}"
        );
        assert!(!err.contains(PASSWORD), "the password is echoed: {err}");
        assert!(!Path::new(out).exists(), "export {all:?} wrote {out}");
    }
}
