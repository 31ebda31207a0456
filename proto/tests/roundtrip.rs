//! Round trips of the fleetls wire protocol: every v1 `Body` variant survives
//! `encode` → `decode` unchanged, `Body::kind()` is the key actually written on the
//! wire and `KINDS` lists exactly the variants' kinds, the envelope uses named
//! MessagePack fields (`re: None` omitted), a newer peer's extra fields are
//! ignored (forward compatibility), and enums carry their documented wire names
//! (`AgentKind` kebab-case, `Cause` snake_case, ...).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use fleetls_proto::{
    decode, encode, peek_kind, AgentKind, AgentState, Body, BrokerAuth, BrokerSwitchReport, Cause,
    CertificateIssued, CertificatesReady, CrlUpdated, Csr, CsrRejected, Envelope, Heartbeat, Hello,
    Refused, RunStep, Step, StepReport, StepSpec, SwitchReport, UseBrokerTls, UseSsl, KINDS,
    PROTOCOL_VERSION,
};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ---------------------------------------------------------------- fixtures --

const CHILD: Uuid = Uuid::from_u128(0x6f1c_2a7e_93b4_4d0f_8a51_0c3e_7b29_d4a1);
const PARENT: Uuid = Uuid::from_u128(0x0d9e_11f4_5c7a_4b62_9e03_f1a8_26cb_7e50);
const CAMPAIGN: Uuid = Uuid::from_u128(0x3b7a_90c2_1e5d_4f88_b6a0_4d2e_9c17_f305);
const MESSAGE_ID: Uuid = Uuid::from_u128(0xa4c8_5e21_7f03_4b9d_8c6e_12f0_5a3b_d789);
const COMMAND_ID: Uuid = Uuid::from_u128(0x52e0_b7d9_0a4c_4e13_9f28_6c71_e3b5_a0d6);
const SENT_AT: u64 = 1_752_573_600_123;
/// A child's replay counter (microseconds, as a child counts).
const SEQ: u64 = 1_752_573_600_123_456;

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBkTCCATegAwIBAgIUX1h3c2ZsZWV0bHMtdGVzdC1jYTAKBggqhkjOPQQDAjAa\n\
MRgwFgYDVQQDDA9mbGVldGxzIHRlc3QgQ0EwHhcNMjUwNzE1MDAwMDAwWhcNMzUw\n\
-----END CERTIFICATE-----\n";
const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBxzCCAW2gAwIBAgIQXzpjZmxlZXRscy10aWxsLTA3MAoGCCqGSM49BAMCMBox\n\
-----END CERTIFICATE-----\n";
const CSR_PEM: &str = "-----BEGIN CERTIFICATE REQUEST-----\n\
MIHbMIGCAgEAMCAxHjAcBgNVBAMMFTZmMWMyYTdlLTkzYjQtNGQwZi04YTUxMFkw\n\
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEq3x0ZmxlZXRscy1jaGlsZC1rZXktcDI1\n\
-----END CERTIFICATE REQUEST-----\n";
const CA_FINGERPRINT: &str =
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A child → parent envelope with fixed ids, so that the bytes are
/// reproducible; without its replay counter (see
/// `a_child_message_carries_its_seq_after_at`).
fn from_child(body: Body) -> Envelope {
    Envelope {
        v: PROTOCOL_VERSION,
        id: MESSAGE_ID,
        re: None,
        to: None,
        from: CHILD,
        at: SENT_AT,
        seq: 0,
        body,
    }
}

/// A parent → child envelope.
fn from_parent(body: Body) -> Envelope {
    Envelope {
        from: PARENT,
        to: Some(CHILD),
        ..from_child(body)
    }
}

fn hello() -> Hello {
    Hello {
        enroll: None,
        name: "till-07".into(),
        kind: AgentKind::Child,
        version: "4.2.1".into(),
        location: Some("Store 112 – Lyon Part-Dieu".into()),
        hostnames: vec!["till-07.store112.example.com".into(), "till-07".into()],
        ips: vec!["10.12.0.7".into(), "fe80::1c2b:3ff:fe4a:5b6c".into()],
        key_fingerprint: Some(
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
        ),
        state: AgentState {
            has_certificate: true,
            ssl: false,
            broker_tls: false,
            parent_key: None,
            trusted_cas: Vec::new(),
        },
    }
}

/// Which variant a body is. The match has no wildcard on purpose: a new `Body`
/// variant does not compile until it is added here and to `one_of_each`.
fn variant_index(body: &Body) -> usize {
    match body {
        Body::Hello(_) => 0,
        Body::Heartbeat(_) => 1,
        Body::Csr(_) => 2,
        Body::StepReport(_) => 3,
        Body::SwitchReport(_) => 4,
        Body::BrokerSwitchReport(_) => 5,
        Body::Refused(_) => 6,
        Body::CertificatesReady(_) => 7,
        Body::CertificateIssued(_) => 8,
        Body::CsrRejected(_) => 9,
        Body::RunStep(_) => 10,
        Body::UseSsl(_) => 11,
        Body::UseBrokerTls(_) => 12,
        Body::CrlUpdated(_) => 13,
    }
}
const VARIANTS: usize = 14;

/// One realistic sample of every body variant.
fn one_of_each() -> Vec<Body> {
    vec![
        Body::Hello(hello()),
        Body::Heartbeat(Heartbeat {
            state: AgentState {
                has_certificate: true,
                ssl: true,
                broker_tls: false,
                parent_key: Some(CA_FINGERPRINT.into()),
                trusted_cas: vec![CA_FINGERPRINT.into()],
            },
        }),
        Body::Csr(Csr {
            pem: CSR_PEM.into(),
        }),
        Body::StepReport(StepReport {
            campaign: CAMPAIGN,
            step: Step::SslPort,
            ok: false,
            message: "Failed to establish connection over the SSL port 12365.".into(),
            cause: Some(Cause::UnknownIssuer),
            started_at: Some(1_795_000_000_000),
        }),
        Body::SwitchReport(SwitchReport {
            campaign: CAMPAIGN,
            ok: true,
            message: "SSL communication switchover completed successfully!".into(),
        }),
        Body::BrokerSwitchReport(BrokerSwitchReport {
            campaign: CAMPAIGN,
            tls: true,
            protocol: Some("TLSv1.3".into()),
            error: None,
        }),
        Body::Refused(Refused {
            command: Some(COMMAND_ID),
            kind: Some("UseBrokerTls".into()),
            reason: "no certificate: cannot authenticate to amqps://broker:5671".into(),
            forged: false,
        }),
        Body::CertificatesReady(CertificatesReady {
            ca_chain_pem: CA_PEM.into(),
            ca_fingerprint: CA_FINGERPRINT.into(),
            ssl_host: "parent.corp.example.com".into(),
            ssl_port: 12365,
            serve_port: None,
            renew: false,
            tls: None,
            trust_pem: Some(CA_PEM.into()),
        }),
        Body::CertificateIssued(CertificateIssued {
            chain_pem: format!("{LEAF_PEM}{CA_PEM}"),
            serial: "5f3a9c0e7d21b4686c0a1e2f3b4c5d6e".into(),
            not_after: 1_786_924_800,
            ignored: vec!["CA:TRUE".into()],
        }),
        Body::CsrRejected(CsrRejected {
            reason: "the CSR's key is RSA-1024; a P-256 key is required".into(),
        }),
        Body::RunStep(RunStep {
            campaign: CAMPAIGN,
            step: StepSpec::SslPort {
                host: "parent.corp.example.com".into(),
                port: 12365,
            },
            deadline: SENT_AT + 30_000,
        }),
        Body::UseSsl(UseSsl { campaign: CAMPAIGN }),
        Body::UseBrokerTls(UseBrokerTls {
            campaign: CAMPAIGN,
            uri: "amqps://broker.corp.example.com:5671/%2f".into(),
            ca_pem: CA_PEM.into(),
            deadline: SENT_AT + 120_000,
            auth: BrokerAuth::External,
        }),
        Body::CrlUpdated(CrlUpdated {
            crl_pem: "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n".into(),
        }),
    ]
}

// ----------------------------------------------------------------- helpers --

/// The envelope's top-level keys and its body's kind and field names, read with
/// ad-hoc types that know nothing of `Envelope`: what is really on the wire.
fn wire_keys(bytes: &[u8]) -> (BTreeSet<String>, String, BTreeSet<String>) {
    let top: BTreeMap<String, IgnoredAny> =
        rmp_serde::from_slice(bytes).expect("the envelope is a map with string keys");

    #[derive(Deserialize)]
    struct BodyOnly {
        body: BTreeMap<String, BTreeMap<String, IgnoredAny>>,
    }
    let body = rmp_serde::from_slice::<BodyOnly>(bytes)
        .expect("the body is a map of kind → fields")
        .body;
    assert_eq!(body.len(), 1, "a body is a one-entry map");
    let (kind, fields) = body.into_iter().next().unwrap();
    (
        top.into_keys().collect(),
        kind,
        fields.into_keys().collect(),
    )
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Encodes, decodes, checks equality and the kind on the wire, and checks that
/// the body is written with exactly the field names `fields`.
fn assert_round_trip(envelope: &Envelope, fields: &[&str]) -> Vec<u8> {
    let bytes = encode(envelope).expect("encode");
    let back = decode(&bytes).expect("decode");
    assert_eq!(&back, envelope);
    assert_eq!(peek_kind(&bytes).as_deref(), Ok(envelope.body.kind()));

    let (top, kind, body_fields) = wire_keys(&bytes);
    let mut expected_top = names(&["v", "id", "from", "at", "body"]);
    if envelope.re.is_some() {
        expected_top.insert("re".into());
    }
    if envelope.to.is_some() {
        expected_top.insert("to".into());
    }
    if envelope.seq != 0 {
        expected_top.insert("seq".into());
    }
    assert_eq!(top, expected_top);
    assert_eq!(kind, envelope.body.kind());
    assert_eq!(body_fields, names(fields), "field names of {kind}");

    // Encoding is deterministic: the decoded copy encodes to the same bytes.
    assert_eq!(encode(&back).expect("re-encode"), bytes);
    bytes
}

/// Serializes one value alone and reads it back as a string.
fn wire_name<T: Serialize>(value: &T) -> String {
    let bytes = rmp_serde::to_vec_named(value).expect("encode");
    rmp_serde::from_slice::<String>(&bytes).expect("a unit variant is written as a string")
}

// ------------------------------------------------------- one per variant --

#[test]
fn hello_round_trips() {
    let bytes = assert_round_trip(
        &from_child(Body::Hello(hello())),
        &[
            "name",
            "kind",
            "version",
            "location",
            "hostnames",
            "ips",
            "key_fingerprint",
            "state",
        ],
    );
    assert!(contains(&bytes, b"till-07.store112.example.com"));
    assert!(contains(&bytes, "Store 112 – Lyon Part-Dieu".as_bytes()));
}

#[test]
fn hello_with_nothing_optional_round_trips() {
    let bare = Hello {
        enroll: None,
        name: "back-office".into(),
        kind: AgentKind::LocalParent,
        version: "3.9.0".into(),
        location: None,
        hostnames: vec![],
        ips: vec![],
        key_fingerprint: None,
        state: AgentState::default(),
    };
    assert_round_trip(
        &from_child(Body::Hello(bare)),
        &[
            "name",
            "kind",
            "version",
            "location",
            "hostnames",
            "ips",
            "key_fingerprint",
            "state",
        ],
    );
}

#[test]
fn heartbeat_round_trips() {
    for (has_certificate, ssl, broker_tls) in [(false, false, false), (true, true, true)] {
        let state = AgentState {
            has_certificate,
            ssl,
            broker_tls,
            parent_key: has_certificate.then(|| CA_FINGERPRINT.to_owned()),
            trusted_cas: Vec::new(),
        };
        assert_round_trip(
            &from_child(Body::Heartbeat(Heartbeat { state })),
            &["state"],
        );
    }
}

#[test]
fn csr_round_trips() {
    let bytes = assert_round_trip(
        &from_child(Body::Csr(Csr {
            pem: CSR_PEM.into(),
        })),
        &["pem"],
    );
    assert!(contains(&bytes, CSR_PEM.as_bytes()));
}

#[test]
fn step_report_round_trips() {
    let failed = from_child(Body::StepReport(StepReport {
        campaign: CAMPAIGN,
        step: Step::SslPort,
        ok: false,
        message: "Failed to establish connection over the SSL port 12365.".into(),
        cause: Some(Cause::NameMismatch),
        started_at: Some(1_795_000_000_000),
    }))
    .in_reply_to(COMMAND_ID);
    let fields = ["campaign", "step", "ok", "message", "cause", "started_at"];
    let bytes = assert_round_trip(&failed, &fields);
    assert!(contains(&bytes, b"name_mismatch"));
    assert!(contains(&bytes, b"ssl-port"));

    let passed = from_child(Body::StepReport(StepReport {
        campaign: CAMPAIGN,
        step: Step::CertTest,
        ok: true,
        message: "Certificates generated successfully!".into(),
        cause: None,
        started_at: None,
    }))
    .in_reply_to(COMMAND_ID);
    let bytes = assert_round_trip(&passed, &fields);
    assert!(contains(&bytes, b"cert-test"));
}

#[test]
fn switch_report_round_trips() {
    assert_round_trip(
        &from_child(Body::SwitchReport(SwitchReport {
            campaign: CAMPAIGN,
            ok: false,
            message: "cannot switch: no certificate".into(),
        }))
        .in_reply_to(COMMAND_ID),
        &["campaign", "ok", "message"],
    );
}

#[test]
fn broker_switch_report_round_trips() {
    let fields = ["campaign", "tls", "protocol", "error"];
    assert_round_trip(
        &from_child(Body::BrokerSwitchReport(BrokerSwitchReport {
            campaign: CAMPAIGN,
            tls: true,
            protocol: Some("TLSv1.3".into()),
            error: None,
        })),
        &fields,
    );
    assert_round_trip(
        &from_child(Body::BrokerSwitchReport(BrokerSwitchReport {
            campaign: CAMPAIGN,
            tls: false,
            protocol: None,
            error: Some("invalid peer certificate: UnknownIssuer".into()),
        })),
        &fields,
    );
}

#[test]
fn refused_round_trips() {
    let fields = ["command", "kind", "reason"];
    // `forged` is written only when set: an older parent reads the rest.
    assert_round_trip(
        &from_child(Body::Refused(Refused {
            command: Some(COMMAND_ID),
            kind: Some("RunStep".into()),
            reason: "deadline already passed".into(),
            forged: false,
        }))
        .in_reply_to(COMMAND_ID),
        &fields,
    );
    assert_round_trip(
        &from_child(Body::Refused(Refused {
            command: None,
            kind: None,
            reason: "truncated payload".into(),
            forged: true,
        })),
        &["command", "kind", "reason", "forged"],
    );
}

#[test]
fn certificates_ready_round_trips() {
    let bytes = assert_round_trip(
        &from_parent(Body::CertificatesReady(CertificatesReady {
            ca_chain_pem: CA_PEM.into(),
            ca_fingerprint: CA_FINGERPRINT.into(),
            ssl_host: "parent.corp.example.com".into(),
            ssl_port: 12365,
            serve_port: Some(12366),
            renew: false,
            tls: None,
            trust_pem: None,
        })),
        &[
            "ca_chain_pem",
            "ca_fingerprint",
            "ssl_host",
            "ssl_port",
            "serve_port",
        ],
    );
    assert!(contains(&bytes, CA_FINGERPRINT.as_bytes()));
}

#[test]
fn certificate_issued_round_trips() {
    let fields = ["chain_pem", "serial", "not_after", "ignored"];
    for not_after in [1_786_924_800, 0, -1, i64::MAX, i64::MIN] {
        assert_round_trip(
            &from_parent(Body::CertificateIssued(CertificateIssued {
                chain_pem: format!("{LEAF_PEM}{CA_PEM}"),
                serial: "5f3a9c0e7d21b4686c0a1e2f3b4c5d6e".into(),
                not_after,
                ignored: vec!["subject alternative name bank.example".into()],
            }))
            .in_reply_to(MESSAGE_ID),
            &fields,
        );
    }
}

#[test]
fn csr_rejected_round_trips() {
    assert_round_trip(
        &from_parent(Body::CsrRejected(CsrRejected {
            reason: "the CSR's subject is not this agent's id".into(),
        }))
        .in_reply_to(MESSAGE_ID),
        &["reason"],
    );
}

/// The `step` field of a `RunStep` envelope, read with ad-hoc types that
/// know nothing of `StepSpec`.
fn run_step_on_wire<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    #[derive(Deserialize)]
    struct Fields<T> {
        step: T,
    }
    #[derive(Deserialize)]
    struct BodyOf<T> {
        body: BTreeMap<String, Fields<T>>,
    }
    let mut body = rmp_serde::from_slice::<BodyOf<T>>(bytes)
        .expect("a RunStep body with a step field")
        .body;
    body.remove("RunStep").expect("the body is a RunStep").step
}

#[test]
fn run_step_round_trips_with_both_step_specs() {
    let fields = ["campaign", "step", "deadline"];
    let cert_test = from_parent(Body::RunStep(RunStep {
        campaign: CAMPAIGN,
        step: StepSpec::CertTest,
        deadline: SENT_AT + 30_000,
    }));
    let bytes = assert_round_trip(&cert_test, &fields);
    // A unit variant: its wire name alone.
    assert_eq!(run_step_on_wire::<String>(&bytes), "cert-test");

    let ssl_port = from_parent(Body::RunStep(RunStep {
        campaign: CAMPAIGN,
        step: StepSpec::SslPort {
            host: "10.12.0.1".into(),
            port: 12365,
        },
        deadline: u64::MAX,
    }));
    let bytes = assert_round_trip(&ssl_port, &fields);
    // A map of the wire name to exactly the fields `host` and `port` (a
    // search for the bytes "port" also finds them inside "ssl-port").
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SslPortFields {
        host: String,
        port: u16,
    }
    let step: BTreeMap<String, SslPortFields> = run_step_on_wire(&bytes);
    assert_eq!(
        step,
        BTreeMap::from([(
            "ssl-port".to_owned(),
            SslPortFields {
                host: "10.12.0.1".into(),
                port: 12365,
            }
        )])
    );
}

#[test]
fn use_ssl_round_trips() {
    assert_round_trip(
        &from_parent(Body::UseSsl(UseSsl { campaign: CAMPAIGN })),
        &["campaign"],
    );
}

#[test]
fn use_broker_tls_round_trips() {
    let fields = ["campaign", "uri", "ca_pem", "deadline", "auth"];
    for (auth, name) in [
        (BrokerAuth::Plain, &b"plain"[..]),
        (BrokerAuth::External, &b"external"[..]),
    ] {
        let bytes = assert_round_trip(
            &from_parent(Body::UseBrokerTls(UseBrokerTls {
                campaign: CAMPAIGN,
                uri: "amqps://broker.corp.example.com:5671/%2f".into(),
                ca_pem: CA_PEM.into(),
                deadline: SENT_AT + 120_000,
                auth,
            })),
            &fields,
        );
        assert!(contains(&bytes, name));
    }
}

// ------------------------------------------------------------------ kinds --

#[test]
fn one_of_each_covers_every_variant() {
    let covered: BTreeSet<usize> = one_of_each().iter().map(variant_index).collect();
    assert_eq!(covered, (0..VARIANTS).collect::<BTreeSet<_>>());
}

#[test]
fn kinds_lists_exactly_every_variant_kind() {
    let samples = one_of_each();
    let mut from_variants: Vec<&str> = samples.iter().map(Body::kind).collect();
    from_variants.sort_unstable();
    let mut listed = KINDS.to_vec();
    listed.sort_unstable();
    assert_eq!(from_variants, listed);

    let distinct: BTreeSet<&str> = KINDS.iter().copied().collect();
    assert_eq!(distinct.len(), KINDS.len(), "KINDS has a duplicate");
    assert_eq!(KINDS.len(), VARIANTS);
}

#[test]
fn kind_is_the_key_written_on_the_wire() {
    for body in one_of_each() {
        let bytes = encode(&from_child(body.clone())).expect("encode");
        let (_, on_wire, _) = wire_keys(&bytes);
        assert_eq!(on_wire, body.kind());
        assert_eq!(peek_kind(&bytes), Ok(on_wire));
        assert_eq!(decode(&bytes).expect("decode").body, body);
    }
}

// --------------------------------------------------------------- envelope --

#[test]
fn envelope_uses_named_fields() {
    let bytes = encode(&from_child(Body::UseSsl(UseSsl { campaign: CAMPAIGN }))).unwrap();
    // A MessagePack fixmap of five entries, not a positional array.
    assert_eq!(
        bytes[0], 0x85,
        "expected a 5-entry map, got {:#04x}",
        bytes[0]
    );
    for key in ["v", "id", "from", "at", "body"] {
        // fixstr marker + key
        let mut encoded_key = vec![0xa0 | key.len() as u8];
        encoded_key.extend_from_slice(key.as_bytes());
        assert!(
            contains(&bytes, &encoded_key),
            "key {key:?} not on the wire"
        );
    }
    assert!(contains(&bytes, b"campaign"));
}

#[test]
fn re_none_is_omitted_and_some_is_written() {
    let plain = from_child(Body::Heartbeat(Heartbeat::default()));
    let bytes = encode(&plain).unwrap();
    let (top, _, _) = wire_keys(&bytes);
    assert!(!top.contains("re"), "re: None must not be written: {top:?}");
    assert_eq!(bytes[0], 0x85);

    let reply = plain.clone().in_reply_to(COMMAND_ID);
    let reply_bytes = encode(&reply).unwrap();
    let (top, _, _) = wire_keys(&reply_bytes);
    assert!(top.contains("re"));
    assert_eq!(reply_bytes[0], 0x86);
    assert!(contains(&reply_bytes, COMMAND_ID.as_bytes()));
    let back = decode(&reply_bytes).unwrap();
    assert_eq!(back.re, Some(COMMAND_ID));
    assert_eq!(back, reply);
}

#[test]
fn a_child_message_carries_its_seq_after_at() {
    let envelope = from_child(Body::Heartbeat(Heartbeat::default())).with_seq(SEQ);
    let bytes = assert_round_trip(&envelope, &["state"]);
    assert_eq!(bytes[0], 0x86, "v, id, from, at, seq, body");
    // Named, a u64, written after `at` and before `body` (the signature
    // covers these exact bytes).
    let mut key = vec![0xa3];
    key.extend_from_slice(b"seq");
    key.push(0xcf);
    key.extend_from_slice(&SEQ.to_be_bytes());
    let position = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("on the wire")
    };
    let seq = position(&key);
    assert!(position(b"\xa2at") < seq && seq < position(b"\xa4body"));
    assert_eq!(decode(&bytes).unwrap().seq, SEQ);
}

#[test]
fn seq_zero_is_not_written_and_a_missing_seq_reads_as_zero() {
    // A command carries none; nor did a child of an older release.
    let command = from_parent(Body::UseSsl(UseSsl { campaign: CAMPAIGN }));
    let bytes = encode(&command).unwrap();
    let (top, _, _) = wire_keys(&bytes);
    assert!(!top.contains("seq"), "{top:?}");
    assert_eq!(decode(&bytes).unwrap().seq, 0);
    assert_eq!(
        Envelope::new(CHILD, Body::Heartbeat(Heartbeat::default())).seq,
        0
    );
}

#[test]
fn new_envelope_is_current_version_fresh_and_stamped_now() {
    let before = fleetls_proto::now_ms();
    let a = Envelope::new(CHILD, Body::Heartbeat(Heartbeat::default()));
    let b = Envelope::new(CHILD, Body::Heartbeat(Heartbeat::default()));
    let after = fleetls_proto::now_ms();
    assert_eq!(a.v, PROTOCOL_VERSION);
    assert_eq!(a.re, None);
    assert_eq!(a.from, CHILD);
    assert!(
        before <= a.at && a.at <= after,
        "{before} <= {} <= {after}",
        a.at
    );
    assert_ne!(a.id, b.id, "every message gets its own id");
    assert_eq!(decode(&encode(&a).unwrap()).unwrap(), a);

    let reply = a.clone().in_reply_to(b.id);
    assert_eq!(reply.re, Some(b.id));
    assert_eq!(reply.id, a.id);
}

/// What a newer peer might send: the v1 fields in another order plus fields
/// this build has never heard of, at the top level and inside the body.
#[derive(Serialize)]
struct FutureEnvelope {
    trace_id: String,
    body: BTreeMap<&'static str, FutureHello>,
    hops: Vec<u32>,
    at: u64,
    from: Uuid,
    priority: Option<u8>,
    id: Uuid,
    v: u16,
    extensions: BTreeMap<String, Vec<String>>,
}

#[derive(Serialize)]
struct FutureHello {
    os: String,
    name: String,
    kind: AgentKind,
    version: String,
    tpm: bool,
    hostnames: Vec<String>,
    ips: Vec<String>,
    location: Option<String>,
    key_fingerprint: Option<String>,
    state: FutureState,
}

#[derive(Serialize)]
struct FutureState {
    has_certificate: bool,
    ssl: bool,
    broker_tls: bool,
    quic: bool,
}

#[test]
fn unknown_fields_from_a_newer_peer_are_ignored() {
    let h = hello();
    let future = FutureEnvelope {
        trace_id: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        body: BTreeMap::from([(
            "Hello",
            FutureHello {
                os: "Windows 11".into(),
                name: h.name.clone(),
                kind: h.kind,
                version: h.version.clone(),
                tpm: true,
                hostnames: h.hostnames.clone(),
                ips: h.ips.clone(),
                location: h.location.clone(),
                key_fingerprint: h.key_fingerprint.clone(),
                state: FutureState {
                    has_certificate: h.state.has_certificate,
                    ssl: h.state.ssl,
                    broker_tls: h.state.broker_tls,
                    quic: true,
                },
            },
        )]),
        hops: vec![1, 2, 3],
        at: SENT_AT,
        from: CHILD,
        priority: Some(9),
        id: MESSAGE_ID,
        v: PROTOCOL_VERSION,
        extensions: BTreeMap::from([("x-site".into(), vec!["a".into(), "b".into()])]),
    };
    let bytes = rmp_serde::to_vec_named(&future).unwrap();
    assert!(contains(&bytes, b"trace_id") && contains(&bytes, b"quic"));

    assert_eq!(peek_kind(&bytes).as_deref(), Ok("Hello"));
    assert_eq!(decode(&bytes), Ok(from_child(Body::Hello(h))));
}

#[test]
fn unknown_nested_field_is_ignored() {
    // A newer peer's extra field may hold a structured value: 16 nested arrays.
    let envelope = from_child(Body::UseSsl(UseSsl { campaign: CAMPAIGN }));
    let mut bytes = encode(&envelope).unwrap();
    assert_eq!(bytes[0], 0x85);
    bytes[0] = 0x86; // one more entry, appended at the end
    bytes.extend_from_slice(&[0xa3, b'e', b'x', b't']);
    bytes.extend(std::iter::repeat_n(0x91, 16));
    bytes.push(0x2a);
    assert_eq!(peek_kind(&bytes).as_deref(), Ok("UseSsl"));
    assert_eq!(decode(&bytes), Ok(envelope));
}

#[test]
fn fields_with_defaults_may_be_missing() {
    // An older peer's Hello: only name, kind and version; a Heartbeat with no state.
    #[derive(Serialize)]
    struct OldHello {
        name: &'static str,
        kind: &'static str,
        version: &'static str,
    }
    #[derive(Serialize)]
    struct Empty {}
    #[derive(Serialize)]
    struct Raw<B> {
        v: u16,
        id: Uuid,
        from: Uuid,
        at: u64,
        body: BTreeMap<&'static str, B>,
    }
    fn raw<B>(kind: &'static str, fields: B) -> Raw<B> {
        Raw {
            v: 1,
            id: MESSAGE_ID,
            from: CHILD,
            at: SENT_AT,
            body: BTreeMap::from([(kind, fields)]),
        }
    }

    let old_hello = OldHello {
        name: "till-01",
        kind: "mpos",
        version: "2.0.0",
    };
    let bytes = rmp_serde::to_vec_named(&raw("Hello", old_hello)).unwrap();
    let expected = Hello {
        enroll: None,
        name: "till-01".into(),
        kind: AgentKind::Mpos,
        version: "2.0.0".into(),
        location: None,
        hostnames: vec![],
        ips: vec![],
        key_fingerprint: None,
        state: AgentState::default(),
    };
    assert_eq!(decode(&bytes), Ok(from_child(Body::Hello(expected))));

    let bytes = rmp_serde::to_vec_named(&raw("Heartbeat", Empty {})).unwrap();
    assert_eq!(
        decode(&bytes),
        Ok(from_child(Body::Heartbeat(Heartbeat::default())))
    );
}

// ---------------------------------------------------------- enum names --

#[test]
fn agent_kind_wire_names_are_kebab_case() {
    for (kind, name) in [
        (AgentKind::Child, "child"),
        (AgentKind::LocalParent, "local-parent"),
        (AgentKind::Mpos, "mpos"),
    ] {
        assert_eq!(wire_name(&kind), name);
        assert_eq!(kind.as_str(), name);
        assert_eq!(kind.to_string(), name);
        assert_eq!(AgentKind::from_str(name), Ok(kind));
        let bytes = rmp_serde::to_vec_named(name).unwrap();
        assert_eq!(rmp_serde::from_slice::<AgentKind>(&bytes).unwrap(), kind);
    }

    let mut local = hello();
    local.kind = AgentKind::LocalParent;
    let bytes = encode(&from_child(Body::Hello(local))).unwrap();
    assert!(contains(&bytes, b"local-parent"));
    assert!(!contains(&bytes, b"LocalParent"));
}

#[test]
fn agent_kind_from_str_rejects_junk_and_lists_the_valid_kinds() {
    for junk in ["", "bogus", "local parent", "parent", "child "] {
        let err = AgentKind::from_str(junk).expect_err(junk);
        for valid in ["child", "local-parent", "mpos"] {
            assert!(err.contains(valid), "{err:?} should list {valid:?}");
        }
        assert!(
            err.contains(&format!("{junk:?}")),
            "{err:?} should quote the rejected input"
        );
    }
}

#[test]
fn cause_wire_names_are_snake_case() {
    let causes = [
        (Cause::Dns, "dns"),
        (Cause::Refused, "refused"),
        (Cause::Timeout, "timeout"),
        (Cause::UnknownIssuer, "unknown_issuer"),
        (Cause::NameMismatch, "name_mismatch"),
        (Cause::Expired, "expired"),
        (Cause::ClientCertRejected, "client_cert_rejected"),
        (Cause::NoCertificate, "no_certificate"),
        (Cause::Other, "other"),
    ];
    for (cause, name) in causes {
        assert_eq!(wire_name(&cause), name);
        assert_eq!(cause.as_str(), name, "as_str must match the wire name");

        let report = from_child(Body::StepReport(StepReport {
            campaign: CAMPAIGN,
            step: Step::SslPort,
            ok: false,
            message: "Failed to establish connection over the SSL port 12365.".into(),
            cause: Some(cause),
            started_at: None,
        }));
        let bytes = encode(&report).unwrap();
        assert!(contains(&bytes, name.as_bytes()));
        assert_eq!(decode(&bytes), Ok(report));
    }
}

#[test]
fn step_and_auth_wire_names() {
    assert_eq!(wire_name(&Step::CertTest), "cert-test");
    assert_eq!(wire_name(&Step::SslPort), "ssl-port");
    assert_eq!(wire_name(&StepSpec::CertTest), "cert-test");
    assert_eq!(StepSpec::CertTest.step(), Step::CertTest);
    let ssl_port = StepSpec::SslPort {
        host: "h".into(),
        port: 1,
    };
    assert_eq!(ssl_port.step(), Step::SslPort);
    assert_eq!(wire_name(&BrokerAuth::Plain), "plain");
    assert_eq!(wire_name(&BrokerAuth::External), "external");
}

#[test]
fn every_body_has_one_direction_and_comes_back_whole() {
    let mut to_parent = 0;
    for body in one_of_each() {
        let back = match body.clone().directed() {
            fleetls_proto::Directed::ToParent(message) => {
                to_parent += 1;
                assert!(body.is_to_parent(), "{}", body.kind());
                Body::from(message)
            }
            fleetls_proto::Directed::ToChild(command) => {
                assert!(!body.is_to_parent(), "{}", body.kind());
                let deadline = command.deadline();
                assert_eq!(
                    deadline.is_some(),
                    matches!(body, Body::RunStep(_) | Body::UseBrokerTls(_)),
                    "{}",
                    body.kind()
                );
                Body::from(command)
            }
        };
        assert_eq!(back, body);
    }
    assert_eq!(to_parent, 7);
}

#[test]
fn crl_updated_round_trips() {
    assert_round_trip(
        &from_parent(Body::CrlUpdated(CrlUpdated {
            crl_pem: "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n".into(),
        })),
        &["crl_pem"],
    );
}

#[test]
fn a_child_connection_name_carries_its_display_name_and_gives_back_its_id() {
    use fleetls_proto::topology::{child_connection_name, child_of_connection_name};
    let id = uuid::Uuid::new_v4();
    let name = child_connection_name(&id, "till-1\u{1b}[2J");
    assert_eq!(name, format!("fleetls-child:{id} (till-1[2J)"));
    assert_eq!(child_of_connection_name(&name), Some(id));
    // Names of older children (the id alone) are still understood.
    assert_eq!(
        child_of_connection_name(&format!("fleetls-child:{id}")),
        Some(id)
    );
    assert_eq!(child_of_connection_name("fleetls-parent"), None);
    assert_eq!(child_of_connection_name("fleetls-child:42 (x)"), None);
    let long = child_connection_name(&id, &"x".repeat(200));
    assert_eq!(long.len(), format!("fleetls-child:{id} ()").len() + 64);
}
