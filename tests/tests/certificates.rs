//! Certificates for the whole network, against the real broker with the
//! parent and the children as processes, checked from the outside with
//! `openssl`: every issued certificate verifies against the CA and carries
//! only what the parent decides (CN = agent id, EKU, CA:FALSE, SANs,
//! `--cert-days`), whatever a crafted CSR asks for; keys are 0600; a child
//! offline during "Send information" gets its certificate when it comes back;
//! a pinned CA fingerprint is enforced; settings freeze until `certs reset`;
//! generation is refused while old children or mPOS without a DNS name exist;
//! resending is harmless; the counters follow; a company CA signs instead of
//! one made here, and a company "CA" that is not a CA is refused.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fleetls_proto::topology;
use fleetls_tests::attack::{attack, hello};
use fleetls_tests::{
    child_layout, start_child, test_dir, wait_for, CertFile, Parent, Proc, Tap, Vhost, WAIT,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// openssl as an outside tool
// ---------------------------------------------------------------------------

/// Runs `openssl ARGS`: (success, stdout + stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Asserts that `openssl verify -CAfile ca` accepts the first certificate of
/// `cert` (with the rest of `cert` as untrusted intermediates when asked).
fn assert_verifies(ca: &Path, cert: &Path, chain_in_file: bool) {
    let mut args = vec!["verify", "-CAfile", s(ca)];
    if chain_in_file {
        args.extend(["-untrusted", s(cert)]);
    }
    args.push(s(cert));
    let (ok, out) = openssl(&args);
    assert!(
        ok && out.contains(": OK"),
        "openssl verify -CAfile {} {} failed: {out}",
        ca.display(),
        cert.display()
    );
}

/// Asserts that `openssl verify -CAfile ca` refuses `cert`.
fn assert_does_not_verify(ca: &Path, cert: &Path) {
    let (ok, out) = openssl(&["verify", "-CAfile", s(ca), s(cert)]);
    assert!(
        !ok,
        "{} verified against the unrelated CA {}: {out}",
        cert.display(),
        ca.display()
    );
}

/// What `openssl x509 -text -noout` shows of the first certificate of a file.
struct CertText {
    text: String,
}

impl CertText {
    fn of_file(path: &Path) -> CertText {
        let (ok, text) = openssl(&["x509", "-in", s(path), "-noout", "-text"]);
        assert!(ok, "openssl x509 cannot read {}: {text}", path.display());
        CertText { text }
    }

    fn of_pem(pem: &str, scratch: &Path) -> CertText {
        let path = scratch.join(format!("cert-{}.pem", Uuid::new_v4().simple()));
        std::fs::write(&path, pem).unwrap();
        CertText::of_file(&path)
    }

    /// The value of a `Key: value` line (the first one).
    fn field(&self, key: &str) -> Option<String> {
        self.text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    }

    /// The line after an extension's header, e.g. `X509v3 Basic Constraints`.
    fn extension(&self, header: &str) -> Option<String> {
        let mut lines = self.text.lines().map(str::trim);
        lines.find(|l| l.starts_with(header))?;
        lines.next().map(str::to_owned)
    }

    /// The subject's CN.
    fn subject_cn(&self) -> String {
        let subject = self.field("Subject:").expect("a subject");
        subject
            .split(", ")
            .find_map(|part| part.strip_prefix("CN = "))
            .unwrap_or_default()
            .to_owned()
    }

    /// The SANs, e.g. `DNS:localhost`, `IP Address:127.0.0.1` (empty without the extension).
    fn sans(&self) -> BTreeSet<String> {
        self.extension("X509v3 Subject Alternative Name")
            .map(|line| line.split(", ").map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The extended key usages, e.g. `TLS Web Client Authentication`.
    fn ekus(&self) -> BTreeSet<String> {
        self.extension("X509v3 Extended Key Usage")
            .map(|line| line.split(", ").map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// `CA:FALSE` / `CA:TRUE...`.
    fn basic_constraints(&self) -> String {
        self.extension("X509v3 Basic Constraints")
            .unwrap_or_default()
    }

    /// Not After − Not Before, seconds.
    fn validity_seconds(&self) -> i64 {
        let before = parse_openssl_time(&self.field("Not Before:").expect("Not Before"));
        let after = parse_openssl_time(&self.field("Not After :").expect("Not After"));
        after - before
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `Jan  2 03:04:05 2026 GMT` → Unix seconds.
fn parse_openssl_time(text: &str) -> i64 {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(parts.len(), 5, "unexpected openssl time {text:?}");
    assert_eq!(parts[4], "GMT", "{text:?}");
    let month = MONTHS.iter().position(|m| *m == parts[0]).expect("a month") as i64 + 1;
    let day: i64 = parts[1].parse().unwrap();
    let year: i64 = parts[3].parse().unwrap();
    let hms: Vec<i64> = parts[2].split(':').map(|x| x.parse().unwrap()).collect();
    days_from_civil(year, month, day) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
}

#[test]
fn openssl_times_parse() {
    assert_eq!(parse_openssl_time("Jan  1 00:00:00 1970 GMT"), 0);
    assert_eq!(parse_openssl_time("Mar  1 00:00:01 2000 GMT"), 951_868_801);
    assert_eq!(
        parse_openssl_time("Feb  3 12:00:00 2027 GMT")
            - parse_openssl_time("Jan  4 12:00:00 2026 GMT"),
        395 * 86400
    );
}

/// `sha256:` + lowercase hex of a PEM certificate's DER, per openssl.
fn openssl_fingerprint(path: &Path) -> String {
    let (ok, out) = openssl(&["x509", "-in", s(path), "-noout", "-fingerprint", "-sha256"]);
    assert!(ok, "{out}");
    let hex = out
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(hex.len(), 64, "{out}");
    format!("sha256:{hex}")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs an openssl command line given as one string (no argument holds a
/// space: the paths are temporary folders); panics with its output when it fails.
fn openssl_line(line: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    let (ok, out) = openssl(&args);
    assert!(ok, "openssl {line}: {out}");
}

/// Makes a CA with openssl: (certificate, key), self-signed or signed by
/// `signer`. `ca = false` makes a certificate that is not a CA.
fn openssl_ca(
    dir: &Path,
    name: &str,
    ca: bool,
    signer: Option<(&Path, &Path)>,
) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let ext = dir.join(format!("{name}.ext"));
    let extensions = if ca {
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"
    } else {
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    };
    std::fs::write(&ext, extensions).unwrap();
    let (cert_s, key_s, ext_s) = (s(&cert), s(&key), s(&ext));
    let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let subject = format!("/O=Company/CN={name}");
    match signer {
        None => openssl_line(&format!(
            "req -x509 {new_key} -keyout {key_s} -out {cert_s} -days 30 -subj {subject} \
             -addext {} -addext {}",
            extensions.lines().next().unwrap(),
            extensions.lines().nth(1).unwrap(),
        )),
        Some((ca_cert, ca_key)) => {
            let csr = dir.join(format!("{name}.csr"));
            openssl_line(&format!(
                "req -new {new_key} -keyout {key_s} -out {} -subj {subject}",
                s(&csr)
            ));
            openssl_line(&format!(
                "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 30 -extfile {ext_s} -out {cert_s}",
                s(&csr),
                s(ca_cert),
                s(ca_key)
            ));
        }
    }
    (cert, key)
}

// ---------------------------------------------------------------------------
// The parent, the children and their files
// ---------------------------------------------------------------------------

/// The ids of agents as `status --json` lists them.
fn ids(agents: Vec<Value>) -> Vec<String> {
    agents
        .iter()
        .map(|a| a["id"].as_str().expect("an agent has an id").to_owned())
        .collect()
}

/// Waits until the agent reports a certificate in `status`.
fn wait_certificate(parent: &Parent, name: &str) -> Value {
    wait_for(&format!("{name} holding a certificate"), WAIT, || {
        parent.agent(name).filter(|a| a["has_certificate"] == true)
    })
}

fn generate(parent: &Parent, extra: &[&str]) -> Value {
    let mut args = vec!["certs", "generate"];
    args.extend(extra);
    parent.cli_json(&args)
}

fn send(parent: &Parent, all: bool) -> Value {
    if all {
        parent.cli_json(&["certs", "send", "--all"])
    } else {
        parent.cli_json(&["certs", "send"])
    }
}

/// Stops a child with SIGTERM and waits for it to exit.
fn stop(child: &mut Proc) {
    child.signal("TERM");
    let code = child.wait_exit(WAIT);
    assert!(code.is_some(), "the child did not stop on SIGTERM");
}

// ---------------------------------------------------------------------------
// A fake agent on the wire, to send crafted CSRs
// ---------------------------------------------------------------------------

/// An agent id with its own durable queue and signing key, played by the
/// attacker's client `tests/attacks/fleetls_attack.py` (pika, msgpack and
/// Ed25519 of its own): a fake that shares no code with the product, so a
/// bug in the product's encoding or signing cannot hide behind it.
struct FakeAgent {
    id: Uuid,
    /// The AMQP URL of the test's virtual host.
    url: String,
    /// Holds the agent's Ed25519 key file.
    keys: tempfile::TempDir,
    /// Its public key, hex, as a Hello's enrollment proof names it.
    public: String,
    /// The enrollment token its Hello proves, if any.
    token: Option<String>,
}

impl FakeAgent {
    /// Makes a key and declares and binds `fleetls.agent.<id>` as a child
    /// does (durable, dead-lettered to `fleetls.dead`), without saying Hello.
    fn connect(vhost: &Vhost) -> FakeAgent {
        let id = Uuid::new_v4();
        let keys = tempfile::tempdir().unwrap();
        let made = attack(&["keygen", "--out", s(&keys.path().join("agent.key"))]);
        let fake = FakeAgent {
            id,
            url: vhost.url(),
            keys,
            public: made["public_hex"]
                .as_str()
                .expect("a public key")
                .to_owned(),
            token: None,
        };
        let queue = fake.queue();
        let declared = attack(&[
            "declare",
            "--broker",
            &fake.url,
            "--queue",
            &queue,
            "--durable",
            "--arguments",
            r#"{"x-dead-letter-exchange": "fleetls.dead"}"#,
        ]);
        assert_eq!(declared["refused"], false, "{declared}");
        let bound = attack(&[
            "bind",
            "--broker",
            &fake.url,
            "--queue",
            &queue,
            "--exchange",
            "fleetls.agents",
            "--routing-key",
            &id.to_string(),
        ]);
        assert_eq!(bound["refused"], false, "{bound}");
        fake
    }

    /// `fleetls.agent.<id>`.
    fn queue(&self) -> String {
        format!("fleetls.agent.{}", self.id)
    }

    fn key(&self) -> PathBuf {
        self.keys.path().join("agent.key")
    }

    /// Publishes a `kind` message with `fields` from this agent to the
    /// parent, signed with its key; the envelope id.
    fn send(&self, kind: &str, fields: Value) -> String {
        let (fields, from, key) = (fields.to_string(), self.id.to_string(), self.key());
        let sent = attack(&[
            "send",
            "--broker",
            &self.url,
            "--exchange",
            "fleetls.parent",
            "--routing-key",
            "fleetls.parent",
            "--persistent",
            "--kind",
            kind,
            "--fields",
            &fields,
            "--from",
            &from,
            "--sign-key",
            s(&key),
        ]);
        assert_eq!(sent["refused"], false, "{sent}");
        sent["id"].as_str().expect("a message id").to_owned()
    }

    /// Proves the enrollment token the test's parent made (in `dir`) in
    /// its Hello, as a rolled-out child does.
    fn with_token(mut self, dir: &Path) -> FakeAgent {
        let text = std::fs::read_to_string(fleetls_tests::enroll_token_path(dir))
            .expect("the parent made an enrollment token");
        self.token = Some(text.trim().to_owned());
        self
    }

    /// Says Hello as `name` of `kind` (`child`, `local-parent`).
    fn hello(&self, name: &str, kind: &str, hostnames: &[&str], ips: &[&str]) -> String {
        let mut fields = hello(name, kind, "shop-fake", hostnames);
        fields["ips"] = ips.iter().map(|i| Value::from(*i)).collect();
        if let Some(token) = &self.token {
            fields["enroll"] = attack(&[
                "enroll-proof",
                "--token",
                token,
                "--agent",
                &self.id.to_string(),
                "--key-hex",
                &self.public,
                "--kind",
                kind,
                "--name",
                name,
            ])["enroll"]
                .clone();
        }
        self.send("Hello", fields)
    }

    /// Sends a CSR; its message id.
    fn csr(&self, pem: &str) -> String {
        self.send("Csr", json!({ "pem": pem }))
    }

    /// The messages in this agent's queue within `timeout` seconds (at
    /// most `count`, 0 = all), decoded, taken off the queue.
    fn take(&self, count: &str, timeout: &str) -> Vec<Value> {
        let queue = self.queue();
        let got = attack(&[
            "capture",
            "--broker",
            &self.url,
            "--queue",
            &queue,
            "--count",
            count,
            "--timeout",
            timeout,
        ]);
        assert_ne!(got["refused"], true, "{got}");
        got["messages"].as_array().expect("messages").clone()
    }

    /// The answer to the CSR `message`, decoded: it must refer to it.
    fn answer_to(&self, message: &str) -> Value {
        let wait = WAIT.as_secs().to_string();
        let answer = self
            .take("1", &wait)
            .pop()
            .unwrap_or_else(|| panic!("no answer in {} within {wait}s", self.queue()));
        let envelope = &answer["decoded"];
        assert_eq!(
            envelope["re"], message,
            "the answer names the CSR it answers: {answer}"
        );
        envelope["body"].clone()
    }

    /// Deletes the agent's queue, as an operator, a policy or a broker reset would.
    fn delete_queue(&self) {
        let queue = self.queue();
        let deleted = attack(&[
            "declare", "--broker", &self.url, "--queue", &queue, "--delete",
        ]);
        assert_eq!(deleted["deleted"], true, "{deleted}");
    }
}

/// What a `CertificateIssued` answer carries.
struct Issued {
    serial: String,
    chain_pem: String,
    ignored: Vec<String>,
}

fn issued(body: Value) -> Issued {
    let got = &body["CertificateIssued"];
    let text = |field: &str| {
        got[field]
            .as_str()
            .unwrap_or_else(|| panic!("expected CertificateIssued, got {body}"))
            .to_owned()
    };
    Issued {
        serial: text("serial"),
        chain_pem: text("chain_pem"),
        ignored: got["ignored"]
            .as_array()
            .unwrap_or_else(|| panic!("no `ignored` in {body}"))
            .iter()
            .map(|i| i.as_str().expect("an ignored item is text").to_owned())
            .collect(),
    }
}

fn rejected(body: Value) -> String {
    body["CsrRejected"]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("expected CsrRejected, got {body}"))
        .to_owned()
}

/// A PKCS#10 request from a fresh P-256 key, CN = `cn`, adjusted by `f`.
fn csr(cn: &str, f: impl FnOnce(&mut CertificateParams)) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    f(&mut params);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A CSR for `cn` whose signature does not match its content (one bit of
/// the signature flipped).
fn forged_csr(cn: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    let mut der = params.serialize_request(&key).unwrap().der().to_vec();
    let last = der.len() - 1; // the last byte of the signature's s INTEGER
    der[last] ^= 0x01;
    let body = base64(&der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}

#[test]
fn base64_matches_the_standard() {
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn issued_certificates_verify_and_carry_what_the_parent_decides() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &[
            "--cert-days",
            "30",
            "--local-parent-names",
            ".shop.test",
            "--local-parent-ips",
            "127.0.0.2",
        ],
    );
    let set = parent.cli_json(&[
        "settings",
        "set",
        "--names",
        "localhost;parent.test",
        "--ips",
        "127.0.0.1",
    ]);
    assert_eq!(set["frozen"], false);
    let _till = start_child(&vhost, dir.path(), "till-1", &["--kind", "child"]);
    let _lp = start_child(
        &vhost,
        dir.path(),
        "lp-1",
        &[
            "--kind",
            "local-parent",
            "--hostnames",
            "lp.shop.test",
            "--ips",
            "127.0.0.2",
        ],
    );
    let ids = ids(parent.wait_online(&["till-1", "lp-1"]));
    // A local parent is never accepted automatically.
    let (code, _, err) = parent.cli(&["agents", "accept", "lp-1"]);
    assert_eq!(code, 0, "{err}");

    let report = generate(&parent, &[]);
    let ca = parent.cert_file(CertFile::CaPem);
    assert_eq!(report["ca_fingerprint"], openssl_fingerprint(&ca).as_str());
    assert_eq!(report["company_ca"], false);
    let sent = send(&parent, false);
    assert_eq!(sent["queued"], 2, "{sent}");
    wait_certificate(&parent, "till-1");
    wait_certificate(&parent, "lp-1");

    // The parent's own files: the CA, the parent's and the broker's.
    for file in [CertFile::ParentPem, CertFile::BrokerPem] {
        assert_verifies(&ca, &parent.cert_file(file), false);
    }
    for key in [CertFile::CaKey, CertFile::ParentKey, CertFile::BrokerKey] {
        assert_eq!(mode(&parent.cert_file(key)), 0o600, "{}", key.name());
    }
    let ca_text = CertText::of_file(&ca);
    assert!(
        ca_text.basic_constraints().starts_with("CA:TRUE"),
        "{}",
        ca_text.text
    );
    let parent_cert = CertText::of_file(&parent.cert_file(CertFile::ParentPem));
    let expected: BTreeSet<String> = ["DNS:localhost", "DNS:parent.test", "IP Address:127.0.0.1"]
        .map(String::from)
        .into();
    assert_eq!(parent_cert.sans(), expected, "{}", parent_cert.text);
    assert!(
        parent_cert.ekus().contains("TLS Web Server Authentication"),
        "{}",
        parent_cert.text
    );
    assert_eq!(parent_cert.basic_constraints(), "CA:FALSE");
    let broker_cert = CertText::of_file(&parent.cert_file(CertFile::BrokerPem));
    assert!(
        broker_cert.sans().contains("IP Address:127.0.0.1"),
        "the broker's certificate names the host of --broker: {}",
        broker_cert.text
    );
    assert_eq!(parent_cert.validity_seconds() / 86400, 30);

    // A child: CN = its id, clientAuth only, CA:FALSE, no SAN, 30 days, key 0600.
    let till_certs = child_layout(dir.path(), "till-1");
    assert_verifies(&ca, &till_certs.chain(), false);
    assert_eq!(mode(&till_certs.key()), 0o600);
    let till = CertText::of_file(&till_certs.chain());
    assert_eq!(till.subject_cn(), ids[0], "{}", till.text);
    let client_only: BTreeSet<String> = ["TLS Web Client Authentication".to_owned()].into();
    assert_eq!(till.ekus(), client_only, "{}", till.text);
    assert_eq!(till.basic_constraints(), "CA:FALSE", "{}", till.text);
    assert!(till.sans().is_empty(), "{}", till.text);
    let seconds = till.validity_seconds();
    assert!(
        seconds >= 30 * 86400 && seconds / 86400 == 30,
        "Not After - Not Before = {seconds} s, not 30 days: {}",
        till.text
    );
    // The stored CA of the child is the parent's CA.
    assert_eq!(
        std::fs::read_to_string(till_certs.ca()).unwrap(),
        std::fs::read_to_string(&ca).unwrap()
    );

    // A local parent: server and client auth, exactly its own names.
    let lp_certs = child_layout(dir.path(), "lp-1");
    assert_verifies(&ca, &lp_certs.chain(), false);
    assert_eq!(mode(&lp_certs.key()), 0o600);
    let lp = CertText::of_file(&lp_certs.chain());
    assert_eq!(lp.subject_cn(), ids[1]);
    let both: BTreeSet<String> = [
        "TLS Web Server Authentication".to_owned(),
        "TLS Web Client Authentication".to_owned(),
    ]
    .into();
    assert_eq!(lp.ekus(), both, "{}", lp.text);
    let lp_sans: BTreeSet<String> = ["DNS:lp.shop.test", "IP Address:127.0.0.2"]
        .map(String::from)
        .into();
    assert_eq!(lp.sans(), lp_sans, "{}", lp.text);
    assert_eq!(lp.basic_constraints(), "CA:FALSE");

    // Two children never share a serial.
    let serial = |path: &Path| openssl(&["x509", "-in", s(path), "-noout", "-serial"]).1;
    assert_ne!(serial(&till_certs.chain()), serial(&lp_certs.chain()));

    // The counters.
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["eligible"], 2);
    assert_eq!(status["network"]["children_with_certificates"], 2);
    assert_eq!(status["network"]["certificates_generated"], true);
}

#[test]
fn the_parent_signs_only_what_it_decides_whatever_the_csr_asks() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(
        &vhost,
        dir.path(),
        &[
            "--local-parent-names",
            "lp.fake.test",
            "--local-parent-ips",
            "10.9.0.2",
        ],
    );
    generate(&parent, &[]);
    let ca = parent.cert_file(CertFile::CaPem);

    let child = FakeAgent::connect(&vhost).with_token(dir.path());
    child.hello("fake-till", "child", &["till.fake.test"], &["10.9.0.1"]);
    let local = FakeAgent::connect(&vhost);
    local.hello("fake-lp", "local-parent", &["lp.fake.test"], &["10.9.0.2"]);
    wait_for("the fake agents registered", WAIT, || {
        (parent.agent("fake-till").is_some() && parent.agent("fake-lp").is_some()).then_some(())
    });
    let (code, _, err) = parent.cli(&["agents", "accept", "fake-lp"]);
    assert_eq!(code, 0, "{err}");
    let id = child.id.to_string();

    // A greedy child: CA:TRUE, names of its own and someone else's, code signing.
    let greedy = csr(&id, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.subject_alt_names = vec![
            SanType::DnsName("bank.example".try_into().unwrap()),
            SanType::DnsName("till.fake.test".try_into().unwrap()),
            SanType::IpAddress("10.9.0.1".parse().unwrap()),
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    });
    let message = child.csr(&greedy);
    let got = issued(child.answer_to(&message));
    let leaf = CertText::of_pem(&got.chain_pem, dir.path());
    assert_eq!(leaf.subject_cn(), id);
    assert_eq!(leaf.basic_constraints(), "CA:FALSE", "{}", leaf.text);
    assert!(!leaf.text.contains("CA:TRUE"), "{}", leaf.text);
    assert!(leaf.sans().is_empty(), "a child gets no SAN: {}", leaf.text);
    let client_only: BTreeSet<String> = ["TLS Web Client Authentication".to_owned()].into();
    assert_eq!(leaf.ekus(), client_only, "{}", leaf.text);
    assert_eq!(leaf.validity_seconds() / 86400, 398);
    assert_eq!(
        leaf.extension("X509v3 Key Usage").as_deref(),
        Some("Digital Signature"),
        "{}",
        leaf.text
    );
    let ignored = got.ignored.join(" | ");
    for dropped in [
        "CA:TRUE",
        "bank.example",
        "till.fake.test",
        "10.9.0.1",
        "CodeSigning",
        "KeyCertSign",
        "CrlSign",
    ] {
        assert!(
            ignored.contains(dropped),
            "`ignored` does not list {dropped}: {ignored}"
        );
    }
    let chain_file = dir.path().join("greedy-chain.pem");
    std::fs::write(&chain_file, &got.chain_pem).unwrap();
    assert_verifies(&ca, &chain_file, false);
    let (_, serial) = openssl(&["x509", "-in", s(&chain_file), "-noout", "-serial"]);
    assert_eq!(
        serial
            .trim()
            .trim_start_matches("serial=")
            .to_ascii_lowercase(),
        got.serial.to_ascii_lowercase()
    );

    // A local parent gets exactly its registered names, whatever it asks.
    let lp_request = csr(&local.id.to_string(), |p| {
        p.subject_alt_names = vec![
            SanType::DnsName("lp.fake.test".try_into().unwrap()),
            SanType::DnsName("evil.example".try_into().unwrap()),
            SanType::IpAddress("192.0.2.66".parse().unwrap()),
        ];
    });
    let message = local.csr(&lp_request);
    let got = issued(local.answer_to(&message));
    let leaf = CertText::of_pem(&got.chain_pem, dir.path());
    let expected: BTreeSet<String> = ["DNS:lp.fake.test", "IP Address:10.9.0.2"]
        .map(String::from)
        .into();
    assert_eq!(leaf.sans(), expected, "{}", leaf.text);
    let ignored = got.ignored.join(" | ");
    assert!(ignored.contains("evil.example"), "{ignored}");
    assert!(ignored.contains("192.0.2.66"), "{ignored}");
    assert!(!ignored.contains("lp.fake.test"), "{ignored}");

    // Another agent's name: refused, naming why.
    let someone_elses = |cn: &str| {
        format!("the CSR was refused: its subject CN={cn:?} is not the agent that sent it ({id})")
    };
    let stranger = Uuid::new_v4().to_string();
    let message = child.csr(&csr(&stranger, |_| {}));
    assert_eq!(
        rejected(child.answer_to(&message)),
        someone_elses(&stranger)
    );
    // The other registered agent's name: refused as well.
    let message = child.csr(&csr(&local.id.to_string(), |_| {}));
    assert_eq!(
        rejected(child.answer_to(&message)),
        someone_elses(&local.id.to_string())
    );

    // Garbage PEM, no PEM and a forged signature: refused, each for what it is.
    let unreadable = |why: &str| {
        format!("the CSR was refused: it does not parse or its signature does not verify ({why})")
    };
    let message =
        child.csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    assert_eq!(
        rejected(child.answer_to(&message)),
        unreadable("Could not parse certificate signing request")
    );
    let message = child.csr("not even PEM");
    assert_eq!(
        rejected(child.answer_to(&message)),
        unreadable("Could not parse certificate signing request")
    );
    let message = child.csr(&forged_csr(&id));
    let forged = unreadable("Invalid CSR signature");
    assert_eq!(rejected(child.answer_to(&message)), forged);

    // The last refusal shows in the status list.
    wait_for("the forged CSR's refusal in status", WAIT, || {
        (parent.agent("fake-till")?["refusal"] == forged.as_str()).then_some(())
    });

    // An agent that never said Hello: dead-lettered, nothing issued.
    let unknown = FakeAgent::connect(&vhost);
    unknown.csr(&csr(&unknown.id.to_string(), |_| {}));
    let reason = wait_for("the unknown agent's CSR dead-lettered", WAIT, || {
        vhost
            .peek_queue("fleetls.dead", 50)
            .iter()
            .filter_map(|m| m["properties"]["headers"]["x-fleetls-reason"].as_str())
            .find(|r| r.starts_with("unknown_agent"))
            .map(str::to_owned)
    });
    assert!(reason.contains("must send Hello first"), "{reason}");
    let answers = unknown.take("0", "0");
    assert!(
        answers.is_empty(),
        "the unknown agent got an answer: {answers:?}"
    );
    assert!(
        parent.status_json().unwrap()["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["id"] != unknown.id.to_string().as_str()),
        "a CSR does not register an agent"
    );

    // The fake children hold no certificate per status (they never said so).
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["children_with_certificates"], 0);
    assert_eq!(status["network"]["eligible"], 2);
}

#[test]
fn a_child_offline_during_send_gets_its_certificate_when_it_comes_back() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "3"]);
    let mut child = start_child(&vhost, dir.path(), "till-away", &["--kind", "child"]);
    let id = ids(parent.wait_online(&["till-away"])).remove(0);
    generate(&parent, &[]);
    stop(&mut child);
    wait_for("till-away offline", WAIT, || {
        (parent.agent("till-away")?["online"] == false).then_some(())
    });

    let sent = send(&parent, false);
    assert_eq!(sent["queued"], 1, "{sent}");
    let queue = topology::agent_queue(&id.parse().unwrap());
    wait_for("the information waiting in the child's queue", WAIT, || {
        (vhost.queue_depth(&queue)? == 1).then_some(())
    });
    let certs = child_layout(dir.path(), "till-away");
    assert!(!certs.chain().exists());
    assert_eq!(parent.agent("till-away").unwrap()["has_certificate"], false);

    let _back = start_child(&vhost, dir.path(), "till-away", &["--kind", "child"]);
    let agent = wait_certificate(&parent, "till-away");
    assert_eq!(agent["id"], id.as_str(), "the same identity came back");
    assert!(certs.chain().exists());
    assert_verifies(&parent.cert_file(CertFile::CaPem), &certs.chain(), false);
    assert_eq!(CertText::of_file(&certs.chain()).subject_cn(), id);
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["children_with_certificates"], 1);
}

#[test]
fn a_pinned_fingerprint_is_checked() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    generate(&parent, &[]);
    let fingerprint = parent.status_json().unwrap()["network"]["ca_fingerprint"]
        .as_str()
        .expect("network.ca_fingerprint after generate")
        .to_owned();
    assert_eq!(
        fingerprint,
        openssl_fingerprint(&parent.cert_file(CertFile::CaPem))
    );
    let wrong = format!("sha256:{}", "ab".repeat(32));
    assert_ne!(wrong, fingerprint);
    // The right pin in the colon-separated upper-case form operators copy.
    let right_hex = fingerprint
        .trim_start_matches("sha256:")
        .to_ascii_uppercase();
    let right_colons: Vec<&str> = right_hex
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let right = format!("sha256:{}", right_colons.join(":"));
    let _wrong = start_child(
        &vhost,
        dir.path(),
        "till-wrong",
        &["--ca-fingerprint", &wrong],
    );
    let _right = start_child(
        &vhost,
        dir.path(),
        "till-right",
        &["--ca-fingerprint", &right],
    );
    parent.wait_online(&["till-wrong", "till-right"]);

    let sent = send(&parent, false);
    assert_eq!(sent["queued"], 2, "{sent}");
    wait_certificate(&parent, "till-right");
    assert_verifies(
        &parent.cert_file(CertFile::CaPem),
        &child_layout(dir.path(), "till-right").chain(),
        false,
    );
    let refusal = wait_for("till-wrong's refusal", WAIT, || {
        parent.agent("till-wrong")?["refusal"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(
        refusal.contains("does not match the pinned") && refusal.contains(&wrong),
        "{refusal}"
    );
    assert!(refusal.contains(&fingerprint), "{refusal}");
    let certs = child_layout(dir.path(), "till-wrong");
    assert!(!certs.chain().exists());
    assert!(!certs.key().exists());
    assert_eq!(
        parent.agent("till-wrong").unwrap()["has_certificate"],
        false
    );
    assert!(parent.agent("till-right").unwrap()["refusal"].is_null());
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["children_with_certificates"], 1);
    assert_eq!(status["network"]["eligible"], 2);
}

#[test]
fn settings_are_frozen_once_generated_until_certs_reset() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    parent.cli_json(&[
        "settings",
        "set",
        "--names",
        "localhost;parent.test",
        "--ips",
        "127.0.0.1",
    ]);
    let report = generate(&parent, &[]);
    let old_fingerprint = report["ca_fingerprint"].as_str().unwrap().to_owned();
    let shown = parent.cli_json(&["settings", "show"]);
    assert_eq!(shown["frozen"], true);

    for change in [
        &["settings", "set", "--port", "12366"][..],
        &["settings", "set", "--names", "other.test"][..],
        &["settings", "set", "--ips", "127.0.0.9"][..],
    ] {
        let (code, out, err) = parent.cli(change);
        assert_eq!(code, 3, "{change:?}: {out}{err}");
        assert!(
            err.contains("frozen") && err.contains("certs reset"),
            "{err}"
        );
    }
    let shown = parent.cli_json(&["settings", "show"]);
    assert_eq!(shown["settings"]["port"], 12365, "nothing changed");
    assert_eq!(shown["settings"]["names"][1], "parent.test");
    // Generating again is refused too while certificates exist.
    let (code, _, err) = parent.cli(&["certs", "generate"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("certs reset"), "{err}");

    // Without --yes and without a terminal, reset does nothing.
    let (code, _, err) = parent.cli(&["certs", "reset"]);
    assert_eq!(code, 2, "{err}");
    assert!(parent.cert_file(CertFile::CaPem).exists());

    let (code, out, err) = parent.cli(&["certs", "reset", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let moved: Vec<PathBuf> = std::fs::read_dir(&parent.data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("certificates.reset-"))
        })
        .collect();
    assert_eq!(moved.len(), 1, "one certificates.reset-* folder: {moved:?}");
    for file in [
        CertFile::CaPem,
        CertFile::CaKey,
        CertFile::ParentPem,
        CertFile::ParentKey,
        CertFile::BrokerPem,
        CertFile::BrokerKey,
    ] {
        let name = file.name();
        assert!(
            moved[0].join(name).exists(),
            "{name} moved aside, not deleted"
        );
    }
    assert_eq!(
        openssl_fingerprint(&moved[0].join(CertFile::CaPem.name())),
        old_fingerprint
    );
    assert!(!parent.layout().certificates().exists());
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["certificates_generated"], false);
    assert!(status["network"]["ca_fingerprint"].is_null());

    let set = parent.cli_json(&["settings", "set", "--port", "12366"]);
    assert_eq!(set["settings"]["port"], 12366);
    assert_eq!(set["frozen"], false);
    // A second reset has nothing to reset.
    let (code, _, err) = parent.cli(&["certs", "reset", "--yes"]);
    assert_eq!(code, 3, "{err}");

    // And a new CA can be made.
    let again = generate(&parent, &[]);
    assert_ne!(again["ca_fingerprint"], old_fingerprint.as_str());
    assert_eq!(parent.cli_json(&["settings", "show"])["frozen"], true);
}

#[test]
fn generate_is_refused_while_old_children_exist_unless_ignore_old() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _new = start_child(&vhost, dir.path(), "till-new", &[]);
    let _old = start_child(&vhost, dir.path(), "bo-old", &["--report-version", "0.9.0"]);
    let ids = ids(parent.wait_online(&["till-new", "bo-old"]));

    let (code, out, err) = parent.cli(&["certs", "generate"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("bo-old") && err.contains("0.9.0"), "{err}");
    assert!(err.contains("--ignore-old"), "{err}");
    assert!(
        !err.contains("till-new"),
        "only old children are listed: {err}"
    );
    assert!(!parent.layout().certificates().exists());
    assert_eq!(
        parent.status_json().unwrap()["network"]["certificates_generated"],
        false
    );
    let (code, _, err) = parent.cli(&["certs", "send"]);
    assert_eq!(code, 3, "send without certificates is refused: {err}");

    let report = generate(&parent, &["--ignore-old"]);
    let old_list = report["old_versions"].to_string();
    assert!(old_list.contains("bo-old"), "{report}");
    assert_eq!(report["old_versions"].as_array().unwrap().len(), 1);
    // A copy of everything the parent sends each child from now on: the
    // old child drains its own queue, so its queue's depth would say
    // nothing of what it was sent.
    let new_tap = Tap::new(&vhost, topology::AGENTS, &ids[0]);
    let old_tap = Tap::new(&vhost, topology::AGENTS, &ids[1]);
    let kinds =
        |tap: &Tap| -> Vec<&'static str> { tap.take().iter().map(|e| e.body.kind()).collect() };
    let sent = send(&parent, false);
    assert_eq!(sent["queued"], 1, "{sent}");
    assert_eq!(sent["not_eligible"], 1, "{sent}");
    wait_certificate(&parent, "till-new");
    // `certs send` returns once the broker confirmed every message: the
    // taps hold all it sent. The new child got the information (and then
    // its certificate); the old one nothing at all.
    assert_eq!(kinds(&new_tap), ["CertificatesReady", "CertificateIssued"]);
    assert_eq!(
        kinds(&old_tap),
        Vec::<&str>::new(),
        "the old child was sent something"
    );
    let old_certs = child_layout(dir.path(), "bo-old");
    assert!(!old_certs.ca().exists());
    assert!(!old_certs.chain().exists());
    let status = parent.status_json().unwrap();
    assert_eq!(status["summary"]["version_not_supporting_ssl"], 1);
    assert_eq!(status["network"]["eligible"], 1);
    assert_eq!(status["network"]["children_with_certificates"], 1);
    let old = parent.agent("bo-old").unwrap();
    assert_eq!(old["has_certificate"], false);
    assert_eq!(old["ssl_capable"], false);
    // Even --all does not send it to the old child.
    let sent = send(&parent, true);
    assert_eq!(sent["queued"], 1, "{sent}");
    assert_eq!(sent["not_eligible"], 1, "{sent}");
    assert_eq!(kinds(&new_tap).first(), Some(&"CertificatesReady"));
    assert_eq!(
        kinds(&old_tap),
        Vec::<&str>::new(),
        "--all sent the old child something"
    );
}

#[test]
fn generate_is_refused_for_mpos_without_a_dns_name() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let set = parent.cli_json(&["settings", "set", "--names", "", "--ips", "127.0.0.1"]);
    assert_eq!(
        set["settings"]["names"].as_array().map(Vec::len),
        Some(0),
        "{set}"
    );
    let _mpos = start_child(&vhost, dir.path(), "mpos-7", &["--kind", "mpos"]);
    parent.wait_online(&["mpos-7"]);

    let (code, out, err) = parent.cli(&["certs", "generate"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("mPOS") && err.contains("DNS name"), "{err}");
    assert!(err.contains("mpos-7"), "{err}");
    assert!(!parent.layout().certificates().exists());

    // With a DNS name it goes ahead; mPOS is not eligible for sending.
    parent.cli_json(&["settings", "set", "--names", "parent.test"]);
    generate(&parent, &[]);
    let sent = send(&parent, false);
    assert_eq!(sent["queued"], 0, "{sent}");
    assert_eq!(sent["not_eligible"], 1, "{sent}");
    let status = parent.status_json().unwrap();
    assert_eq!(status["summary"]["mpos"], 1);
    assert_eq!(status["network"]["eligible"], 0);
}

#[test]
fn sending_twice_is_harmless_and_certificates_last_398_days_by_default() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _a = start_child(&vhost, dir.path(), "till-a", &[]);
    let _b = start_child(&vhost, dir.path(), "till-b", &[]);
    parent.wait_online(&["till-a", "till-b"]);
    generate(&parent, &[]);
    let ca = parent.cert_file(CertFile::CaPem);
    let sent = send(&parent, false);
    assert_eq!(sent["queued"], 2, "{sent}");
    wait_certificate(&parent, "till-a");
    wait_certificate(&parent, "till-b");

    let chain = |name: &str| child_layout(dir.path(), name).chain();
    let text = CertText::of_file(&chain("till-a"));
    let seconds = text.validity_seconds();
    assert!(
        seconds >= 398 * 86400 && seconds / 86400 == 398,
        "default validity {seconds} s: {}",
        text.text
    );
    let parent_days =
        CertText::of_file(&parent.cert_file(CertFile::ParentPem)).validity_seconds() / 86400;
    assert_eq!(parent_days, 398);
    let before: Vec<String> = ["till-a", "till-b"]
        .iter()
        .map(|n| std::fs::read_to_string(chain(n)).unwrap())
        .collect();

    let again = send(&parent, false);
    assert_eq!(again["queued"], 0, "{again}");
    assert_eq!(again["already_have_certificate"], 2, "{again}");

    // --all sends again; each child sees the same CA and keeps its certificate.
    let ca_inode = |name: &str| {
        std::fs::metadata(child_layout(dir.path(), name).ca())
            .unwrap()
            .ino()
    };
    let inodes = [ca_inode("till-a"), ca_inode("till-b")];
    let all = send(&parent, true);
    assert_eq!(all["queued"], 2, "{all}");
    wait_for("both children handled the resent information", WAIT, || {
        (ca_inode("till-a") != inodes[0] && ca_inode("till-b") != inodes[1]).then_some(())
    });
    for (name, old) in ["till-a", "till-b"].iter().zip(&before) {
        assert_verifies(&ca, &chain(name), false);
        assert_eq!(
            &std::fs::read_to_string(chain(name)).unwrap(),
            old,
            "{name} kept its certificate"
        );
        let agent = parent.agent(name).unwrap();
        assert_eq!(agent["has_certificate"], true);
        assert!(agent["refusal"].is_null(), "{agent}");
        let pending = child_layout(dir.path(), name).pending_key();
        assert!(!pending.exists(), "{name} left a pending key behind");
    }
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["children_with_certificates"], 2);
    assert_eq!(status["network"]["agents"], 2, "no duplicate agents");
}

#[test]
fn counters_follow_the_eligible_children_holding_a_certificate() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "3"]);
    let _a = start_child(&vhost, dir.path(), "till-a", &[]);
    let mut b = start_child(&vhost, dir.path(), "till-b", &[]);
    let _lp = start_child(
        &vhost,
        dir.path(),
        "lp-1",
        &["--kind", "local-parent", "--hostnames", "lp.shop.test"],
    );
    let _old = start_child(&vhost, dir.path(), "bo-old", &["--report-version", "0.9.0"]);
    let _mpos = start_child(&vhost, dir.path(), "mpos-1", &["--kind", "mpos"]);
    parent.wait_online(&["till-a", "till-b", "lp-1", "bo-old", "mpos-1"]);
    let (code, _, err) = parent.cli(&["agents", "accept", "lp-1"]);
    assert_eq!(code, 0, "{err}");
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["agents"], 5);
    assert_eq!(status["network"]["eligible"], 3);
    assert_eq!(status["network"]["children_with_certificates"], 0);

    generate(&parent, &["--ignore-old"]);
    stop(&mut b);
    let sent = send(&parent, false);
    assert_eq!(sent["queued"], 3, "{sent}");
    assert_eq!(sent["not_eligible"], 2, "{sent}");
    wait_certificate(&parent, "till-a");
    wait_certificate(&parent, "lp-1");
    let holders = |status: &Value| {
        status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                a["has_certificate"] == true && a["ssl_capable"] == true && a["kind"] != "mpos"
            })
            .count()
    };
    let status = parent.status_json().unwrap();
    assert_eq!(holders(&status), 2);
    assert_eq!(status["network"]["children_with_certificates"], 2);
    assert_eq!(status["network"]["eligible"], 3);
    assert_eq!(status["summary"]["version_not_supporting_ssl"], 1);
    assert_eq!(status["summary"]["mpos"], 1);

    let _b = start_child(&vhost, dir.path(), "till-b", &[]);
    wait_certificate(&parent, "till-b");
    let status = wait_for("three certificates counted", WAIT, || {
        let status = parent.status_json().ok()?;
        (status["network"]["children_with_certificates"] == 3).then_some(status)
    });
    assert_eq!(holders(&status), 3);
    assert_eq!(status["network"]["eligible"], 3);
    for name in ["bo-old", "mpos-1"] {
        assert_eq!(
            parent.agent(name).unwrap()["has_certificate"],
            false,
            "{name}"
        );
        assert!(!child_layout(dir.path(), name).chain().exists(), "{name}");
    }
}

#[test]
fn a_company_ca_signs_and_a_certificate_that_is_not_a_ca_is_refused() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let company = dir.path().join("company");
    std::fs::create_dir_all(&company).unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);

    // Not a CA: refused, nothing written.
    let (leaf_cert, leaf_key) = openssl_ca(&company, "not-a-ca", false, None);
    let (code, out, err) = parent.cli(&[
        "certs",
        "generate",
        "--ca-cert",
        s(&leaf_cert),
        "--ca-key",
        s(&leaf_key),
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("not a CA"), "{err}");
    assert!(!parent.layout().certificates().exists());
    // A CA with a key that is not its own: refused too.
    let (root, root_key) = openssl_ca(&company, "company-ca", true, None);
    let (code, out, err) = parent.cli(&[
        "certs",
        "generate",
        "--ca-cert",
        s(&root),
        "--ca-key",
        s(&leaf_key),
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("does not belong"), "{err}");
    assert!(!parent.layout().certificates().exists());

    // The company's root signs.
    let _till = start_child(&vhost, dir.path(), "till-1", &[]);
    parent.wait_online(&["till-1"]);
    let report = generate(&parent, &["--ca-cert", s(&root), "--ca-key", s(&root_key)]);
    assert_eq!(report["company_ca"], true);
    assert_eq!(
        report["ca_fingerprint"],
        openssl_fingerprint(&root).as_str()
    );
    send(&parent, false);
    wait_certificate(&parent, "till-1");
    let agent_pem = child_layout(dir.path(), "till-1").chain();
    assert_verifies(&root, &agent_pem, false);
    for file in [CertFile::ParentPem, CertFile::BrokerPem] {
        assert_verifies(&root, &parent.cert_file(file), false);
    }
    let stranger = openssl_ca(&company, "stranger-ca", true, None).0;
    assert_does_not_verify(&stranger, &agent_pem);
    assert_eq!(mode(&parent.cert_file(CertFile::CaKey)), 0o600);
    let issuer = CertText::of_file(&agent_pem).field("Issuer:").unwrap();
    assert!(issuer.contains("company-ca"), "{issuer}");
}

#[test]
fn a_company_intermediate_signs_and_children_get_the_whole_chain() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let company = dir.path().join("company");
    std::fs::create_dir_all(&company).unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let (root, root_key) = openssl_ca(&company, "company-root", true, None);
    let (inter, inter_key) =
        openssl_ca(&company, "company-issuing", true, Some((&root, &root_key)));
    let chain = company.join("issuing-chain.pem");
    std::fs::write(
        &chain,
        std::fs::read_to_string(&inter).unwrap() + &std::fs::read_to_string(&root).unwrap(),
    )
    .unwrap();

    let _till = start_child(&vhost, dir.path(), "till-1", &[]);
    parent.wait_online(&["till-1"]);
    let report = generate(
        &parent,
        &["--ca-cert", s(&chain), "--ca-key", s(&inter_key)],
    );
    assert_eq!(report["company_ca"], true);
    let fingerprint = report["ca_fingerprint"].as_str().unwrap();
    assert_eq!(
        fingerprint,
        openssl_fingerprint(&root),
        "children pin the root"
    );
    send(&parent, false);
    wait_certificate(&parent, "till-1");
    let agent_pem = child_layout(dir.path(), "till-1").chain();
    // The chain in agent.pem leads to the company root.
    assert_verifies(&root, &agent_pem, true);
    assert_verifies(&root, &parent.cert_file(CertFile::ParentPem), true);
    let issuer = CertText::of_file(&agent_pem).field("Issuer:").unwrap();
    assert!(issuer.contains("company-issuing"), "{issuer}");
}

// ---------------------------------------------------------------------------
// Bugs found while writing these tests, since fixed in the parent: each
// test states the behaviour the fix gave (children of the old CA after
// `certs reset`, an answer that cannot be routed, a child without a queue)
// and runs with the others.
// ---------------------------------------------------------------------------

#[test]
fn after_certs_reset_children_of_the_old_ca_get_a_certificate_of_the_new_one() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let mut child = start_child(&vhost, dir.path(), "till-a", &[]);
    parent.wait_online(&["till-a"]);
    generate(&parent, &[]);
    send(&parent, false);
    wait_certificate(&parent, "till-a");

    let (code, out, err) = parent.cli(&["certs", "reset", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let status = parent.status_json().unwrap();
    assert_eq!(
        status["network"]["children_with_certificates"], 0,
        "the certificates were discarded with their CA: {}",
        status["network"]
    );

    let report = generate(&parent, &[]);
    let fingerprint = report["ca_fingerprint"].as_str().unwrap().to_owned();
    // The child trusted the old CA on first use: the operator pins the new one.
    stop(&mut child);
    let _child = start_child(
        &vhost,
        dir.path(),
        "till-a",
        &["--ca-fingerprint", &fingerprint],
    );
    parent.wait_online(&["till-a"]);
    let sent = send(&parent, false);
    assert_eq!(
        sent["queued"], 1,
        "the child holds no certificate of the current CA: {sent}"
    );
    let new_ca = parent.cert_file(CertFile::CaPem);
    let agent_pem = child_layout(dir.path(), "till-a").chain();
    wait_for("a certificate of the new CA", WAIT, || {
        openssl(&["verify", "-CAfile", s(&new_ca), s(&agent_pem)])
            .0
            .then_some(())
    });
}

#[test]
fn an_answer_that_cannot_be_routed_does_not_stall_the_parent() {
    let vhost = Vhost::new();
    let dir = test_dir();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    generate(&parent, &[]);
    let mut till = start_child(&vhost, dir.path(), "till-1", &[]);
    parent.wait_online(&["till-1"]);
    send(&parent, false);
    wait_certificate(&parent, "till-1");
    // till-1 stops: its state report every second would be, each time the
    // broker samples the queue (5 s after activity, so in step with the
    // reports), the one the parent holds for its batch (up to 250 ms) —
    // `messages` would read 1 at every look while nothing is stuck.
    stop(&mut till);
    // A registered agent whose queue was deleted (by an operator, a policy,
    // a broker reset) asks for a certificate.
    let gone = FakeAgent::connect(&vhost).with_token(dir.path());
    gone.hello("fake-gone", "child", &[], &[]);
    wait_for("fake-gone registered", WAIT, || parent.agent("fake-gone"));
    gone.delete_queue();
    gone.csr(&csr(&gone.id.to_string(), |_| {}));

    // The parent carries on: fleetls.parent drains (nothing stays unacked or
    // is redelivered in a loop).
    wait_for("fleetls.parent drained", WAIT, || {
        let q = vhost.management_get("/api/queues/{vhost}/fleetls.parent");
        (q["messages"].as_u64()? == 0 && q["consumers"].as_u64()? == 1).then_some(())
    });
    // ... and handles what comes after: a new child registers and is issued.
    let _later = start_child(&vhost, dir.path(), "till-later", &[]);
    parent.wait_online(&["till-later"]);
    send(&parent, false);
    wait_certificate(&parent, "till-later");
}

#[test]
fn send_succeeds_when_one_registered_child_has_lost_its_queue() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    generate(&parent, &[]);
    let gone = FakeAgent::connect(&vhost).with_token(dir.path());
    gone.hello("fake-gone", "child", &[], &[]);
    wait_for("fake-gone registered", WAIT, || parent.agent("fake-gone"));
    gone.delete_queue();
    let _till = start_child(&vhost, dir.path(), "till-1", &[]);
    parent.wait_online(&["till-1"]);
    let (code, out, err) = parent.cli(&["certs", "send", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let sent: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent["queued"], 2, "{sent}");
    wait_certificate(&parent, "till-1");
}

/// A CSR on a fresh key `key`, CN = `cn`.
fn csr_on(key: &KeyPair, cn: &str) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// The parent's commands are transient and sent again when their answer is
/// late, so a child may send the same CSR twice (new message, same key):
/// it gets the certificate it was already issued, not a second one that
/// would revoke the first behind its back. A new key gets a new
/// certificate, and the old one is revoked as superseded; a CSR on the old
/// key after that is ignored.
#[test]
fn a_csr_sent_again_on_the_same_key_gets_the_same_certificate() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    generate(&parent, &[]);
    let child = FakeAgent::connect(&vhost).with_token(dir.path());
    child.hello("resent-till", "child", &[], &[]);
    wait_for("the fake agent registered", WAIT, || {
        parent.agent("resent-till").map(|_| ())
    });
    let id = child.id.to_string();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let first = issued(child.answer_to(&child.csr(&csr_on(&key, &id))));
    let again = issued(child.answer_to(&child.csr(&csr_on(&key, &id))));
    assert_eq!(
        again.serial, first.serial,
        "the same key, the same certificate"
    );
    assert_eq!(again.chain_pem, first.chain_pem);
    let valid = |serial: &str| -> Option<i64> {
        parent
            .registry_query(&format!(
                "SELECT revoked FROM certificates WHERE serial = '{serial}'"
            ))
            .parse()
            .ok()
    };
    assert_eq!(valid(&first.serial), Some(0));
    let renewed_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let renewed = issued(child.answer_to(&child.csr(&csr_on(&renewed_key, &id))));
    assert_ne!(renewed.serial, first.serial, "a new key, a new certificate");
    assert_eq!(valid(&first.serial), Some(1), "the old one is superseded");
    assert_eq!(valid(&renewed.serial), Some(0));
    // The first key's CSR once more (a late duplicate of a renewal sent
    // twice, or a replay): ignored — certifying it would revoke the
    // certificate the child now uses. The parent reads its queue in order,
    // so once the CSR sent after it is answered, it was handled.
    child.csr(&csr_on(&key, &id));
    let current = issued(child.answer_to(&child.csr(&csr_on(&renewed_key, &id))));
    assert_eq!(current.serial, renewed.serial);
    assert_eq!(
        valid(&renewed.serial),
        Some(0),
        "a stale CSR revoked the current certificate"
    );
    assert_eq!(
        parent.registry_query(&format!(
            "SELECT count(*) FROM certificates WHERE agent_id = '{id}'"
        )),
        "2",
        "a stale CSR was certified"
    );
}
