//! Bad messages sent to a running parent through the real broker are
//! dead-lettered, never requeued in a loop and never a crash: 1,000 garbage
//! payloads (random bytes of varied lengths including empty ones, JSON,
//! truncated envelopes) and 10 well-formed envelopes of protocol version 2 all
//! end up in `fleetls.dead` with their original bytes and an `x-fleetls-reason`
//! header (`unsupported_version` for the version-2 ones), `fleetls.parent`
//! drains, and a child started afterwards still registers. A parent → child
//! message kind sent to the parent is dead-lettered as `wrong_direction`.
//!
//! Every envelope here, whole or cut short, is built by the attacker's
//! client (`tests/attacks/fleetls_attack.py`, its own MessagePack), never by
//! `fleetls_proto`: the code under test must not make its own hostile input.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetls_tests::attack::attack;
use fleetls_tests::{start_child, wait_for, Parent, Vhost};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use uuid::Uuid;

/// A small xorshift generator: enough for garbage, no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Standard base64 with padding, as RabbitMQ management returns payloads.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_standard() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
}

/// Bytes from hex, as the attacker's client prints them.
fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A hex string of `bytes`, for the attacker's client.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `Hello`'s fields and a `Heartbeat`'s, alternately (`i` even: a Hello
/// named `name-i`).
fn hello_or_heartbeat(name: &str, i: usize) -> (&'static str, Value) {
    if i.is_multiple_of(2) {
        (
            "Hello",
            fleetls_tests::attack::hello(
                &format!("{name}-{i}"),
                "child",
                "shop-1",
                &["till-1.shop-1.example"],
            ),
        )
    } else {
        (
            "Heartbeat",
            serde_json::json!({"state": {"has_certificate": false, "ssl": false, "broker_tls": false}}),
        )
    }
}

/// An envelope of protocol version `v` from `from`, as the attacker's
/// client encodes it (nothing published).
fn envelope(kind: &str, fields: &Value, from: &Uuid, v: u8) -> Vec<u8> {
    let answer = attack(&[
        "envelope",
        "--kind",
        kind,
        "--fields",
        &fields.to_string(),
        "--from",
        &from.to_string(),
        "--v",
        &v.to_string(),
    ]);
    unhex(answer["payload_hex"].as_str().expect("payload_hex"))
}

/// Has the attacker's client send `kind` with `fields` from `from` to the
/// parent's exchange, with AMQP properties `properties`: the bytes it sent.
fn send_to_parent(
    vhost: &Vhost,
    kind: &str,
    fields: &Value,
    from: &Uuid,
    properties: &Value,
) -> Vec<u8> {
    let answer = attack(&[
        "send",
        "--broker",
        &vhost.url(),
        "--exchange",
        "fleetls.parent",
        "--routing-key",
        "fleetls.parent",
        "--kind",
        kind,
        "--fields",
        &fields.to_string(),
        "--from",
        &from.to_string(),
        "--properties",
        &properties.to_string(),
    ]);
    assert_eq!(answer["refused"], false, "{answer}");
    unhex(answer["payload_hex"].as_str().expect("payload_hex"))
}

/// Publishes every payload to exchange `fleetls.parent` (routing key
/// `fleetls.parent`, mandatory) with publisher confirms, and checks each was
/// confirmed and routed.
fn publish_to_parent(url: &str, payloads: &[Vec<u8>]) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("the test connects to the broker");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("publisher confirms");
        for (i, payload) in payloads.iter().enumerate() {
            let confirm = channel
                .basic_publish(
                    "fleetls.parent".into(),
                    "fleetls.parent".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    payload,
                    BasicProperties::default(),
                )
                .await
                .expect("publish")
                .await
                .expect("publisher confirm");
            assert!(confirm.is_ack(), "the broker nacked payload {i}");
            assert!(
                confirm.take_message().is_none(),
                "payload {i} was returned unroutable: is fleetls.parent bound?"
            );
        }
        connection.close(200, "done".into()).await.expect("close");
    });
}

/// Waits until the parent consumes `fleetls.parent` (so the topology exists).
fn wait_for_parent_consumer(vhost: &Vhost) {
    wait_for(
        "the parent consuming fleetls.parent",
        Duration::from_secs(30),
        || {
            let q = vhost.management_get("/api/queues/{vhost}/fleetls.parent");
            (q["consumers"].as_u64()? >= 1).then_some(())
        },
    );
}

/// Waits until `fleetls.parent` is empty and `fleetls.dead` holds at least
/// `count` messages, then reads `fleetls.dead` without removing anything.
/// An error of management fails the test at once: it must never read as an
/// empty queue.
fn drain_to_dead(vhost: &Vhost, count: u64) -> Vec<Value> {
    let depth = |queue: &str| {
        vhost
            .queue_depth_checked(queue)
            .unwrap_or_else(|e| panic!("management cannot count {queue}: {e}"))
    };
    let depths = wait_for(
        &format!("fleetls.parent empty and {count} messages in fleetls.dead"),
        Duration::from_secs(120),
        || {
            let parent = depth("fleetls.parent")?;
            let dead = depth("fleetls.dead")?;
            (parent == 0 && dead >= count).then_some((parent, dead))
        },
    );
    assert_eq!(depths, (0, count), "(fleetls.parent, fleetls.dead)");
    let left = vhost.peek_queue("fleetls.parent", 10);
    assert!(left.is_empty(), "fleetls.parent still holds {left:?}");
    vhost.peek_queue("fleetls.dead", count as usize + 90)
}

fn reason(message: &Value) -> &str {
    message["properties"]["headers"]["x-fleetls-reason"]
        .as_str()
        .unwrap_or("")
}

fn payload(message: &Value) -> String {
    assert_eq!(message["payload_encoding"], "base64", "{message}");
    message["payload"].as_str().unwrap_or_default().to_owned()
}

fn multiset<'a>(items: impl IntoIterator<Item = &'a String>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item.as_str()).or_insert(0) += 1;
    }
    counts
}

/// The machine-readable codes a decoding reason starts with.
const CODES: &[&str] = &[
    "empty",
    "truncated",
    "malformed",
    "unsupported_version",
    "unknown_kind",
];

/// What `a` has more of than `b`, and what `b` has more of than `a`.
fn difference<'a>(
    a: &BTreeMap<&'a str, usize>,
    b: &BTreeMap<&'a str, usize>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let more = |x: &BTreeMap<&'a str, usize>, y: &BTreeMap<&'a str, usize>| {
        x.iter()
            .filter(|(k, n)| y.get(*k).copied().unwrap_or(0) < **n)
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
    };
    (more(a, b), more(b, a))
}

/// What each sent payload is, to check its reason.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sort {
    Empty,
    Random,
    Json,
    Truncated,
    Version2,
}

fn garbage_and_version_2(rng: &mut Rng) -> Vec<(Sort, Vec<u8>)> {
    let mut sent = Vec::new();
    // Empty payloads.
    for _ in 0..5 {
        sent.push((Sort::Empty, Vec::new()));
    }
    // Random bytes of varied lengths, some starting like a MessagePack map.
    for i in 0..795 {
        let len = match i % 4 {
            0 => 1 + rng.below(8),
            1 => 1 + rng.below(64),
            2 => 1 + rng.below(1024),
            _ => 1 + rng.below(8192),
        } as usize;
        let mut bytes = rng.bytes(len);
        if i % 5 == 0 {
            bytes[0] = 0x80 | (rng.below(16) as u8); // fixmap
        }
        sent.push((Sort::Random, bytes));
    }
    // JSON: valid JSON, some of it shaped like an envelope.
    let agent = Uuid::new_v4();
    for i in 0..100 {
        let json = match i % 5 {
            0 => serde_json::json!({"v": 1, "id": Uuid::new_v4(), "from": agent,
                "at": 1_700_000_000_000u64 + i, "body": {"Heartbeat": {}}}),
            1 => serde_json::json!({"hello": "world", "n": i}),
            2 => serde_json::json!([1, 2, 3, i]),
            3 => serde_json::json!(format!("just a string {i}")),
            _ => serde_json::json!(null),
        };
        sent.push((Sort::Json, serde_json::to_vec(&json).unwrap()));
    }
    // Valid v1 envelopes cut short (never to nothing): ten of them, each
    // cut at ten places.
    for i in 0..10 {
        let (kind, fields) = hello_or_heartbeat("cut", i);
        let full = envelope(kind, &fields, &agent, 1);
        for _ in 0..10 {
            let cut = 1 + rng.below(full.len() as u64 - 1) as usize;
            sent.push((Sort::Truncated, full[..cut].to_vec()));
        }
    }
    assert_eq!(sent.len(), 1000);
    // Well-formed envelopes that carry protocol version 2.
    for i in 0..10 {
        let (kind, fields) = hello_or_heartbeat("from-the-future", i);
        sent.push((Sort::Version2, envelope(kind, &fields, &Uuid::new_v4(), 2)));
    }
    sent
}

#[test]
fn garbage_and_newer_versions_are_dead_lettered_with_a_reason() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(&vhost, dir.path(), &["--offline-after", "5"]);
    wait_for_parent_consumer(&vhost);

    let seed = now_ms() | 1;
    println!("garbage seed {seed}");
    let mut rng = Rng(seed);
    let sent = garbage_and_version_2(&mut rng);
    let payloads: Vec<Vec<u8>> = sent.iter().map(|(_, p)| p.clone()).collect();
    publish_to_parent(&vhost.url(), &payloads);

    let dead = drain_to_dead(&vhost, 1010);
    assert_eq!(dead.len(), 1010, "messages read back from fleetls.dead");

    // The payloads are the originals, each exactly as often as it was sent.
    let sent_b64: Vec<String> = payloads.iter().map(|p| base64(p)).collect();
    let dead_b64: Vec<String> = dead.iter().map(payload).collect();
    let (missing, extra) = difference(&multiset(&sent_b64), &multiset(&dead_b64));
    assert!(
        missing.is_empty() && extra.is_empty(),
        "fleetls.dead differs from what was sent (seed {seed}): missing {missing:?}, extra {extra:?}"
    );

    // Every one says why, and the reason fits what was wrong with it.
    let sort_of: BTreeMap<&str, Sort> = sent
        .iter()
        .zip(&sent_b64)
        .map(|((sort, _), b64)| (b64.as_str(), *sort))
        .collect();
    let mut version_2 = 0;
    for message in &dead {
        let why = reason(message);
        let b64 = payload(message);
        assert!(!why.trim().is_empty(), "no x-fleetls-reason on {message}");
        let sort = sort_of[b64.as_str()];
        match sort {
            Sort::Version2 => {
                version_2 += 1;
                assert!(
                    why.starts_with("unsupported_version") && why.contains('2'),
                    "a version-2 envelope was dead-lettered as {why:?}"
                );
            }
            Sort::Empty => assert!(why.starts_with("empty"), "empty payload: {why:?}"),
            Sort::Truncated => assert!(
                why.starts_with("truncated") || why.starts_with("malformed"),
                "truncated envelope: {why:?}"
            ),
            Sort::Json | Sort::Random => {
                let code = why.split(':').next().unwrap_or_default();
                assert!(
                    CODES.contains(&code),
                    "{sort:?} payload {b64}: reason {why:?} has no known code (seed {seed})"
                );
            }
        }
    }
    assert_eq!(version_2, 10, "version-2 envelopes in fleetls.dead");

    // Nothing in there registered an agent, and the parent still runs.
    let status = parent.status_json().expect("the parent still answers");
    assert_eq!(status["network"]["agents"], 0, "{status}");
    assert_eq!(
        parent.proc.wait_exit(Duration::from_millis(200)),
        None,
        "the parent exited:\n{}",
        parent.proc.output()
    );

    // A child started now registers as usual.
    let _child = start_child(&vhost, dir.path(), "after-garbage", &[]);
    wait_for("the new child online", Duration::from_secs(30), || {
        (parent.agent("after-garbage")?["online"] == true).then_some(())
    });
    // Its messages are not dead-lettered.
    assert_eq!(vhost.peek_queue("fleetls.dead", 1100).len(), 1010);
}

#[test]
fn parent_to_child_kinds_sent_to_the_parent_are_wrong_direction() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    wait_for_parent_consumer(&vhost);

    let campaign = Uuid::new_v4();
    let from = Uuid::new_v4();
    let deadline = now_ms() + 60_000;
    let commands = [
        ("UseSsl", serde_json::json!({"campaign": campaign})),
        (
            "CertificatesReady",
            serde_json::json!({
                "ca_chain_pem": "-----BEGIN CERTIFICATE-----\n",
                "ca_fingerprint": format!("sha256:{}", "ab".repeat(32)),
                "ssl_host": "parent.example",
                "ssl_port": 12365,
            }),
        ),
        (
            "CertificateIssued",
            serde_json::json!({
                "chain_pem": "-----BEGIN CERTIFICATE-----\n",
                "serial": "01",
                "not_after": 2_000_000_000u64,
            }),
        ),
        ("CsrRejected", serde_json::json!({"reason": "no"})),
        (
            "RunStep",
            serde_json::json!({"campaign": campaign, "step": "cert-test", "deadline": deadline}),
        ),
        (
            "UseBrokerTls",
            serde_json::json!({
                "campaign": campaign,
                "uri": "amqps://127.0.0.1:5671",
                "ca_pem": "",
                "deadline": deadline,
                "auth": "external",
            }),
        ),
    ];
    let kinds: Vec<&str> = commands.iter().map(|(kind, _)| *kind).collect();
    let payloads: Vec<Vec<u8>> = commands
        .iter()
        .map(|(kind, fields)| send_to_parent(&vhost, kind, fields, &from, &serde_json::json!({})))
        .collect();

    let dead = drain_to_dead(&vhost, payloads.len() as u64);
    assert_eq!(dead.len(), payloads.len());
    for (kind, sent) in kinds.iter().zip(&payloads) {
        let message = dead
            .iter()
            .find(|m| payload(m) == base64(sent))
            .unwrap_or_else(|| panic!("{kind} is not in fleetls.dead with its original bytes"));
        let why = reason(message);
        assert!(
            why.starts_with("wrong_direction"),
            "{kind} was dead-lettered as {why:?}"
        );
        assert!(
            why.contains(kind),
            "the reason does not name {kind}: {why:?}"
        );
    }
    let status = parent.status_json().expect("the parent still answers");
    assert_eq!(status["network"]["agents"], 0, "{status}");
}

#[test]
fn a_payload_that_is_not_a_map_is_malformed_not_a_newer_version() {
    // A MessagePack blob or array is not an envelope (a map with named
    // fields), even when its first element happens to be a number: blaming
    // "protocol version 2" would send an operator upgrading agents.
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let _parent = Parent::start(&vhost, dir.path(), &[]);
    wait_for_parent_consumer(&vhost);
    let payloads = vec![
        vec![0xc4, 0x04, 0x02, 0x00, 0x00, 0x00], // bin 8: [2, 0, 0, 0]
        vec![0x94, 0x02, 0x00, 0x00, 0x00],       // fixarray [2, 0, 0, 0]
        vec![0x92, 0xbd, 0xc0],                   // fixarray [189, nil]
    ];
    publish_to_parent(&vhost.url(), &payloads);
    let dead = drain_to_dead(&vhost, payloads.len() as u64);
    for sent in &payloads {
        let message = dead
            .iter()
            .find(|m| payload(m) == base64(sent))
            .unwrap_or_else(|| panic!("{sent:02x?} is not in fleetls.dead"));
        let why = reason(message);
        assert!(
            why.starts_with("malformed"),
            "{sent:02x?} is not a map but was dead-lettered as {why:?}"
        );
    }
}

#[test]
fn a_dead_letter_does_not_expire_with_the_original() {
    // A command with a deadline carries `expiration`; sent to the wrong
    // place, its dead-lettered copy must stay in fleetls.dead for the
    // operator, not vanish when the original's TTL runs out.
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let _parent = Parent::start(&vhost, dir.path(), &[]);
    wait_for_parent_consumer(&vhost);
    let step = serde_json::json!({
        "campaign": Uuid::new_v4(),
        "step": "cert-test",
        "deadline": now_ms() + 600_000,
    });
    let expiring = serde_json::json!({"expiration": "600000"});
    send_to_parent(&vhost, "RunStep", &step, &Uuid::new_v4(), &expiring);
    let garbage = attack(&[
        "raw",
        "--broker",
        &vhost.url(),
        "--exchange",
        "fleetls.parent",
        "--routing-key",
        "fleetls.parent",
        "--payload-hex",
        &hex(b"garbage with a deadline"),
        "--properties",
        &expiring.to_string(),
    ]);
    assert_eq!(garbage["refused"], false, "{garbage}");
    let dead = drain_to_dead(&vhost, 2);
    for message in &dead {
        assert!(!reason(message).is_empty(), "{message}");
        assert!(
            message["properties"]["expiration"].is_null(),
            "the dead letter keeps the original's expiration, so it will expire from fleetls.dead: {}",
            message["properties"]
        );
    }
}
