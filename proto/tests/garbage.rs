//! Bad input to the fleetls codec: every kind of garbage gets its own typed
//! `DecodeError` (empty, truncated, malformed, unsupported version, unknown
//! kind) with its machine-readable `code()`, and nothing — no prefix, bit flip,
//! random byte string or 100 000-deep nesting — makes `decode` or `peek_kind`
//! panic or overflow the stack. Property tests
//! also check that random valid envelopes of every body variant round-trip
//! exactly.

use std::collections::BTreeMap;

use fleetls_proto::{
    decode, encode, peek_kind, AgentKind, AgentState, Body, BrokerAuth, BrokerSwitchReport, Cause,
    CertificateIssued, CertificatesReady, Csr, CsrRejected, DecodeError, Envelope, Heartbeat,
    Hello, Refused, RunStep, Step, StepReport, StepSpec, SwitchReport, UseBrokerTls, UseSsl, KINDS,
    PROTOCOL_VERSION,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde::Serialize;
use uuid::Uuid;

const AGENT: Uuid = Uuid::from_u128(0x6f1c_2a7e_93b4_4d0f_8a51_0c3e_7b29_d4a1);
const CAMPAIGN: Uuid = Uuid::from_u128(0x3b7a_90c2_1e5d_4f88_b6a0_4d2e_9c17_f305);
const MESSAGE_ID: Uuid = Uuid::from_u128(0xa4c8_5e21_7f03_4b9d_8c6e_12f0_5a3b_d789);
const SENT_AT: u64 = 1_752_573_600_123;
/// A child's replay counter (microseconds, as a child counts).
const SEQ: u64 = 1_752_573_600_123_456;

const CSR_PEM: &str = "-----BEGIN CERTIFICATE REQUEST-----\n\
MIHbMIGCAgEAMCAxHjAcBgNVBAMMFTZmMWMyYTdlLTkzYjQtNGQwZi04YTUxMFkw\n\
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEq3x0ZmxlZXRscy1jaGlsZC1rZXktcDI1\n\
-----END CERTIFICATE REQUEST-----\n";

fn envelope(body: Body) -> Envelope {
    Envelope {
        v: PROTOCOL_VERSION,
        id: MESSAGE_ID,
        re: Some(CAMPAIGN),
        to: None,
        from: AGENT,
        at: SENT_AT,
        seq: SEQ,
        body,
    }
}

fn csr_envelope() -> Envelope {
    envelope(Body::Csr(Csr {
        pem: CSR_PEM.into(),
    }))
}

fn position(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle on the wire")
}

fn is_truncated_or_malformed(result: &Result<impl std::fmt::Debug, DecodeError>) -> bool {
    matches!(
        result,
        Err(DecodeError::Truncated | DecodeError::Malformed(_))
    )
}

/// An envelope written field by field, so that any field can be wrong or missing.
#[derive(Serialize)]
struct RawEnvelope<V, B> {
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<V>,
    id: Uuid,
    from: Uuid,
    at: u64,
    body: B,
}

fn raw<V: Serialize, B: Serialize>(v: Option<V>, body: B) -> Vec<u8> {
    rmp_serde::to_vec_named(&RawEnvelope {
        v,
        id: MESSAGE_ID,
        from: AGENT,
        at: SENT_AT,
        body,
    })
    .expect("encode raw envelope")
}

/// A body map `{ kind: fields }` with any kind name.
fn body_of<F>(kind: &'static str, fields: F) -> BTreeMap<&'static str, F> {
    BTreeMap::from([(kind, fields)])
}

fn heartbeat() -> Heartbeat {
    Heartbeat::default()
}

// ------------------------------------------------------------ typed errors --

#[test]
fn empty_payload_is_empty() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    assert_eq!(peek_kind(&[]), Err(DecodeError::Empty));
}

#[test]
fn every_proper_prefix_is_truncated_or_malformed() {
    let bodies = [
        Body::Csr(Csr {
            pem: CSR_PEM.into(),
        }),
        Body::Hello(Hello {
            enroll: None,
            name: "till-07".into(),
            kind: AgentKind::LocalParent,
            version: "4.2.1".into(),
            location: Some("Store 112".into()),
            hostnames: vec!["till-07.example.com".into()],
            ips: vec!["10.12.0.7".into()],
            key_fingerprint: None,
            state: AgentState::default(),
        }),
        Body::RunStep(RunStep {
            campaign: CAMPAIGN,
            step: StepSpec::SslPort {
                host: "parent.example.com".into(),
                port: 12365,
            },
            deadline: SENT_AT,
        }),
        Body::UseSsl(UseSsl { campaign: CAMPAIGN }),
    ];
    for body in bodies {
        let bytes = encode(&envelope(body)).unwrap();
        assert!(decode(&bytes).is_ok());
        for cut in 1..bytes.len() {
            let prefix = &bytes[..cut];
            let decoded = decode(prefix);
            assert!(
                is_truncated_or_malformed(&decoded),
                "prefix of {cut}/{} bytes: {decoded:?}",
                bytes.len()
            );
            let peeked = peek_kind(prefix);
            assert!(
                is_truncated_or_malformed(&peeked),
                "prefix of {cut}/{} bytes: {peeked:?}",
                bytes.len()
            );
        }
    }
}

#[test]
fn cut_in_the_middle_of_a_string_is_truncated() {
    let bytes = encode(&csr_envelope()).unwrap();
    let start = position(&bytes, CSR_PEM.as_bytes());
    for cut in [
        start,
        start + 1,
        start + CSR_PEM.len() / 2,
        start + CSR_PEM.len() - 1,
    ] {
        assert_eq!(
            decode(&bytes[..cut]),
            Err(DecodeError::Truncated),
            "cut at {cut}"
        );
        assert_eq!(
            peek_kind(&bytes[..cut]),
            Err(DecodeError::Truncated),
            "cut at {cut}"
        );
    }
    // In the middle of a key name ("from").
    let key = position(&bytes, b"from");
    assert_eq!(decode(&bytes[..key + 2]), Err(DecodeError::Truncated));
}

#[test]
fn cut_in_the_middle_of_a_number_or_uuid_is_truncated() {
    let bytes = encode(&csr_envelope()).unwrap();
    // `at` is written as a u64: marker 0xcf then 8 bytes.
    let at = position(&bytes, &SENT_AT.to_be_bytes());
    assert_eq!(bytes[at - 1], 0xcf);
    assert_eq!(decode(&bytes[..at + 3]), Err(DecodeError::Truncated));
    // So is `seq`.
    let seq = position(&bytes, &SEQ.to_be_bytes());
    assert_eq!(bytes[seq - 1], 0xcf);
    assert_eq!(decode(&bytes[..seq + 5]), Err(DecodeError::Truncated));
    // A uuid is written as 16 raw bytes.
    let from = position(&bytes, AGENT.as_bytes());
    assert_eq!(decode(&bytes[..from + 8]), Err(DecodeError::Truncated));
    // Between the string marker and the string length.
    let pem = position(&bytes, CSR_PEM.as_bytes());
    assert_eq!(bytes[pem - 2], 0xd9, "str8 marker then a one-byte length");
    assert_eq!(decode(&bytes[..pem - 1]), Err(DecodeError::Truncated));
}

#[test]
fn version_2_is_unsupported() {
    let newer = Envelope {
        v: 2,
        ..csr_envelope()
    };
    let bytes = encode(&newer).unwrap();
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnsupportedVersion { got: 2 })
    );
    assert_eq!(
        peek_kind(&bytes),
        Err(DecodeError::UnsupportedVersion { got: 2 })
    );
}

#[test]
fn the_version_is_checked_before_anything_else() {
    // A newer peer may change the rest: an unknown kind or a body this build
    // cannot read still reports the version, not the rest.
    let bytes = raw(Some(2u8), body_of("Bogus", 7u8));
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnsupportedVersion { got: 2 })
    );
    let bytes = raw(Some(7u32), "not a body at all");
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnsupportedVersion { got: 7 })
    );
    // Versions wider than the envelope's u16 field are reported as they are.
    for v in [0, 65_536, u64::MAX] {
        let bytes = raw(Some(v), body_of("Heartbeat", heartbeat()));
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion { got: v })
        );
    }
}

#[test]
fn missing_or_mistyped_version_is_malformed() {
    let missing = raw(None::<u8>, body_of("Heartbeat", heartbeat()));
    assert!(matches!(decode(&missing), Err(DecodeError::Malformed(_))));
    assert!(matches!(
        peek_kind(&missing),
        Err(DecodeError::Malformed(_))
    ));

    let as_string = raw(Some("1"), body_of("Heartbeat", heartbeat()));
    assert!(matches!(decode(&as_string), Err(DecodeError::Malformed(_))));
    let negative = raw(Some(-1i8), body_of("Heartbeat", heartbeat()));
    assert!(matches!(decode(&negative), Err(DecodeError::Malformed(_))));

    // The same envelope with v = 1 is fine: the version alone made it bad.
    let good = raw(Some(1u8), body_of("Heartbeat", heartbeat()));
    assert!(decode(&good).is_ok());
}

#[test]
fn unknown_kind_is_reported_by_name() {
    #[derive(Serialize)]
    struct BogusFields {
        campaign: Uuid,
        colour: &'static str,
    }
    let bytes = raw(
        Some(1u8),
        body_of(
            "Bogus",
            BogusFields {
                campaign: CAMPAIGN,
                colour: "blue",
            },
        ),
    );
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnknownKind("Bogus".into()))
    );
    // peek_kind reads the kind even when this build does not know it.
    assert_eq!(peek_kind(&bytes), Ok("Bogus".to_string()));
    // Kind names are case-sensitive.
    let bytes = raw(Some(1u8), body_of("heartbeat", heartbeat()));
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnknownKind("heartbeat".into()))
    );
}

#[test]
fn json_is_malformed() {
    let json = br#"{"v":1,"id":"a4c85e21-7f03-4b9d-8c6e-12f05a3bd789","from":"6f1c2a7e-93b4-4d0f-8a51-0c3e7b29d4a1","at":1752573600123,"body":{"Heartbeat":{"state":{}}}}"#;
    assert!(matches!(decode(json), Err(DecodeError::Malformed(_))));
    assert!(matches!(peek_kind(json), Err(DecodeError::Malformed(_))));
    assert!(matches!(
        decode(b"[1, 2, 3]\n"),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn body_with_two_kinds_is_malformed() {
    #[derive(Serialize)]
    struct TwoKinds {
        #[serde(rename = "Heartbeat")]
        heartbeat: Heartbeat,
        #[serde(rename = "UseSsl")]
        use_ssl: UseSsl,
    }
    let bytes = raw(
        Some(1u8),
        TwoKinds {
            heartbeat: heartbeat(),
            use_ssl: UseSsl { campaign: CAMPAIGN },
        },
    );
    assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    assert!(matches!(peek_kind(&bytes), Err(DecodeError::Malformed(_))));
}

#[test]
fn body_that_is_not_a_one_entry_map_is_malformed() {
    let empty_map = raw(Some(1u8), BTreeMap::<String, u8>::new());
    assert!(matches!(decode(&empty_map), Err(DecodeError::Malformed(_))));
    let bare_kind = raw(Some(1u8), "Heartbeat");
    assert!(matches!(decode(&bare_kind), Err(DecodeError::Malformed(_))));
    let number = raw(Some(1u8), 42u8);
    assert!(matches!(decode(&number), Err(DecodeError::Malformed(_))));
    let missing = rmp_serde::to_vec_named(&BTreeMap::from([("v", 1u8)])).unwrap();
    assert!(matches!(decode(&missing), Err(DecodeError::Malformed(_))));
}

#[test]
fn known_kind_with_wrong_fields_is_malformed() {
    #[derive(Serialize)]
    struct BadCsr {
        pem: u32,
    }
    let bytes = raw(Some(1u8), body_of("Csr", BadCsr { pem: 5 }));
    assert_eq!(peek_kind(&bytes), Ok("Csr".to_string()));
    assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));

    #[derive(Serialize)]
    struct BadHello {
        name: &'static str,
        kind: &'static str,
        version: &'static str,
    }
    let bad_kind = BadHello {
        name: "till-07",
        kind: "LocalParent",
        version: "4.2.1",
    };
    let bytes = raw(Some(1u8), body_of("Hello", bad_kind));
    assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));

    #[derive(Serialize)]
    struct BadPort {
        ca_chain_pem: &'static str,
        ca_fingerprint: &'static str,
        ssl_host: &'static str,
        ssl_port: u32,
    }
    let too_big = BadPort {
        ca_chain_pem: "pem",
        ca_fingerprint: "sha256:00",
        ssl_host: "parent",
        ssl_port: 70_000,
    };
    let bytes = raw(Some(1u8), body_of("CertificatesReady", too_big));
    assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
}

#[test]
fn envelope_missing_a_field_is_malformed() {
    #[derive(Serialize)]
    struct NoFrom {
        v: u16,
        id: Uuid,
        at: u64,
        body: Body,
    }
    let bytes = rmp_serde::to_vec_named(&NoFrom {
        v: 1,
        id: MESSAGE_ID,
        at: SENT_AT,
        body: Body::UseSsl(UseSsl { campaign: CAMPAIGN }),
    })
    .unwrap();
    assert_eq!(peek_kind(&bytes), Ok("UseSsl".to_string()));
    match decode(&bytes) {
        Err(DecodeError::Malformed(why)) => assert!(why.contains("from"), "{why}"),
        other => panic!("expected Malformed naming `from`, got {other:?}"),
    }
}

#[test]
fn positional_encoding_and_non_maps_are_malformed() {
    // A struct written as an array (rmp_serde::to_vec) is not the wire format.
    let positional = rmp_serde::to_vec(&csr_envelope()).unwrap();
    assert!(matches!(
        decode(&positional),
        Err(DecodeError::Malformed(_))
    ));
    for bytes in [
        &[0xc0][..],
        &[0x01],
        &[0xc3],
        &[0xa1, b'x'],
        &[0x90],
        &[0x80],
    ] {
        let result = decode(bytes);
        assert!(
            matches!(result, Err(DecodeError::Malformed(_))),
            "{bytes:?}: {result:?}"
        );
    }
    // Reserved marker 0xc1 never appears in MessagePack.
    assert!(matches!(decode(&[0xc1]), Err(DecodeError::Malformed(_))));
}

/// Complete payloads nested far deeper than any message: `v: 1` then arrays
/// under an unknown key, maps inside the body, arrays inside a known kind.
fn deeply_nested_payloads() -> Vec<Vec<u8>> {
    const NESTING: usize = 100_000;
    let header = |entries: u8| {
        let mut bytes = vec![0x80 | entries, 0xa1, b'v', 0x01];
        bytes.extend_from_slice(&[0xa4, b'b', b'o', b'd', b'y']);
        bytes
    };
    let mut arrays = vec![0x82, 0xa1, b'v', 0x01, 0xa1, b'x'];
    arrays.extend(std::iter::repeat_n(0x91, NESTING));
    arrays.push(0xc0);

    let mut maps = header(2);
    for _ in 0..NESTING {
        maps.extend_from_slice(&[0x81, 0xa1, b'k']);
    }
    maps.push(0xc0);

    let mut in_kind = header(2);
    in_kind.extend_from_slice(&[0x81, 0xa5, b'H', b'e', b'l', b'l', b'o']);
    in_kind.extend(std::iter::repeat_n(0x91, NESTING));
    in_kind.push(0xc0);
    vec![arrays, maps, in_kind]
}

/// A message nested 100 000 deep (100 KB) must be refused, not crash the process:
/// a stack overflow aborts, and the unacked message would then be redelivered
/// to the restarted agent forever. The decoding runs on a thread with the usual
/// 2 MiB stack in a child process (this test binary, re-run on this test alone),
/// because an overflow cannot be caught in-process.
#[test]
fn deep_nesting_is_malformed_not_a_crash() {
    const CHILD_ENV: &str = "FLEETLS_PROTO_DEEP_NESTING_CHILD";
    if std::env::var_os(CHILD_ENV).is_some() {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                for bytes in deeply_nested_payloads() {
                    let decoded = decode(&bytes);
                    assert!(
                        matches!(decoded, Err(DecodeError::Malformed(_))),
                        "{decoded:?}"
                    );
                    let peeked = peek_kind(&bytes);
                    assert!(
                        matches!(peeked, Err(DecodeError::Malformed(_))),
                        "{peeked:?}"
                    );
                }
            })
            .expect("spawn decoder thread")
            .join()
            .expect("decoder thread");
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "deep_nesting_is_malformed_not_a_crash",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "decoding a deeply nested payload failed ({}): {stderr}{stdout}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child did not run the test: {stdout}"
    );
}

#[test]
fn error_codes() {
    let cases = [
        (DecodeError::Empty, "empty"),
        (DecodeError::Truncated, "truncated"),
        (DecodeError::Malformed("x".into()), "malformed"),
        (
            DecodeError::UnsupportedVersion { got: 2 },
            "unsupported_version",
        ),
        (DecodeError::UnknownKind("Bogus".into()), "unknown_kind"),
    ];
    for (error, code) in &cases {
        assert_eq!(error.code(), *code);
        assert!(!error.to_string().is_empty());
    }
    // Codes are distinct (they name dead-letter reasons and metrics).
    let codes: std::collections::BTreeSet<_> = cases.iter().map(|(e, _)| e.code()).collect();
    assert_eq!(codes.len(), cases.len());

    // The messages say what is wrong.
    let unsupported = DecodeError::UnsupportedVersion { got: 2 }.to_string();
    assert!(
        unsupported.contains('2') && unsupported.contains('1'),
        "{unsupported}"
    );
    assert!(DecodeError::UnknownKind("Bogus".into())
        .to_string()
        .contains("Bogus"));

    // And real failures carry the right code.
    assert_eq!(decode(&[]).unwrap_err().code(), "empty");
    let bytes = encode(&csr_envelope()).unwrap();
    assert_eq!(
        decode(&bytes[..bytes.len() - 1]).unwrap_err().code(),
        "truncated"
    );
    assert_eq!(decode(b"{}").unwrap_err().code(), "malformed");
}

// ---------------------------------------------------------- property tests --

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-zA-Z0-9 .:/_-]{0,64}", "\\PC{0,300}"]
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..5)
}

fn cause() -> impl Strategy<Value = Cause> {
    prop::sample::select(vec![
        Cause::Dns,
        Cause::Refused,
        Cause::Timeout,
        Cause::UnknownIssuer,
        Cause::NameMismatch,
        Cause::Expired,
        Cause::ClientCertRejected,
        Cause::NoCertificate,
        Cause::Other,
    ])
}

fn state() -> impl Strategy<Value = AgentState> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(text()),
    )
        .prop_map(
            |(has_certificate, ssl, broker_tls, parent_key)| AgentState {
                has_certificate,
                ssl,
                broker_tls,
                parent_key,
                trusted_cas: Vec::new(),
            },
        )
}

fn step_spec() -> impl Strategy<Value = StepSpec> {
    prop_oneof![
        Just(StepSpec::CertTest),
        (text(), any::<u16>()).prop_map(|(host, port)| StepSpec::SslPort { host, port }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    let hello = (
        text(),
        prop::sample::select(vec![
            AgentKind::Child,
            AgentKind::LocalParent,
            AgentKind::Mpos,
        ]),
        text(),
        prop::option::of(text()),
        texts(),
        texts(),
        prop::option::of(text()),
        state(),
    )
        .prop_map(
            |(name, kind, version, location, hostnames, ips, key_fingerprint, state)| {
                Body::Hello(Hello {
                    enroll: None,
                    name,
                    kind,
                    version,
                    location,
                    hostnames,
                    ips,
                    key_fingerprint,
                    state,
                })
            },
        );
    let step_report = (
        uuid(),
        prop::sample::select(vec![Step::CertTest, Step::SslPort]),
        any::<bool>(),
        text(),
        prop::option::of(cause()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(campaign, step, ok, message, cause, started_at)| {
            Body::StepReport(StepReport {
                campaign,
                step,
                ok,
                message,
                cause,
                started_at,
            })
        });
    prop_oneof![
        hello,
        state().prop_map(|state| Body::Heartbeat(Heartbeat { state })),
        text().prop_map(|pem| Body::Csr(Csr { pem })),
        step_report,
        (uuid(), any::<bool>(), text()).prop_map(|(campaign, ok, message)| {
            Body::SwitchReport(SwitchReport {
                campaign,
                ok,
                message,
            })
        }),
        (
            uuid(),
            any::<bool>(),
            prop::option::of(text()),
            prop::option::of(text())
        )
            .prop_map(|(campaign, tls, protocol, error)| {
                Body::BrokerSwitchReport(BrokerSwitchReport {
                    campaign,
                    tls,
                    protocol,
                    error,
                })
            }),
        (
            prop::option::of(uuid()),
            prop::option::of(text()),
            text(),
            any::<bool>()
        )
            .prop_map(|(command, kind, reason, forged)| Body::Refused(Refused {
                command,
                kind,
                reason,
                forged,
            })),
        (text(), text(), text(), any::<u16>(), any::<Option<u16>>()).prop_map(
            |(ca_chain_pem, ca_fingerprint, ssl_host, ssl_port, serve_port)| {
                Body::CertificatesReady(CertificatesReady {
                    ca_chain_pem,
                    ca_fingerprint,
                    ssl_host,
                    ssl_port,
                    serve_port,
                    renew: false,
                    tls: None,
                    trust_pem: None,
                })
            }
        ),
        (
            text(),
            text(),
            any::<i64>(),
            proptest::collection::vec(text(), 0..3)
        )
            .prop_map(|(chain_pem, serial, not_after, ignored)| {
                Body::CertificateIssued(CertificateIssued {
                    chain_pem,
                    serial,
                    not_after,
                    ignored,
                })
            }),
        text().prop_map(|reason| Body::CsrRejected(CsrRejected { reason })),
        (uuid(), step_spec(), any::<u64>()).prop_map(|(campaign, step, deadline)| {
            Body::RunStep(RunStep {
                campaign,
                step,
                deadline,
            })
        }),
        uuid().prop_map(|campaign| Body::UseSsl(UseSsl { campaign })),
        (
            uuid(),
            text(),
            text(),
            any::<u64>(),
            prop::sample::select(vec![BrokerAuth::Plain, BrokerAuth::External])
        )
            .prop_map(|(campaign, uri, ca_pem, deadline, auth)| {
                Body::UseBrokerTls(UseBrokerTls {
                    campaign,
                    uri,
                    ca_pem,
                    deadline,
                    auth,
                })
            }),
        text().prop_map(|crl_pem| Body::CrlUpdated(fleetls_proto::CrlUpdated { crl_pem })),
    ]
}

fn any_envelope() -> impl Strategy<Value = Envelope> {
    (
        uuid(),
        prop::option::of(uuid()),
        prop::option::of(uuid()),
        uuid(),
        any::<u64>(),
        any::<u64>(),
        body(),
    )
        .prop_map(|(id, re, to, from, at, seq, body)| Envelope {
            v: PROTOCOL_VERSION,
            id,
            re,
            to,
            from,
            at,
            seq,
            body,
        })
}

/// What must hold for any input: `decode` agrees with `peek_kind`, and whatever
/// `decode` accepts survives another round trip.
fn check_consistent(bytes: &[u8]) -> Result<(), TestCaseError> {
    let peeked = peek_kind(bytes);
    let decoded = decode(bytes);
    match peeked {
        Err(error) => prop_assert_eq!(decoded, Err(error)),
        Ok(kind) if !KINDS.contains(&kind.as_str()) => {
            prop_assert_eq!(decoded, Err(DecodeError::UnknownKind(kind)))
        }
        Ok(kind) => match decoded {
            Ok(envelope) => {
                prop_assert_eq!(envelope.v, PROTOCOL_VERSION);
                prop_assert_eq!(envelope.body.kind(), kind.as_str());
                let again = encode(&envelope).expect("a decoded envelope encodes");
                prop_assert_eq!(decode(&again), Ok(envelope));
            }
            Err(error) => prop_assert!(
                matches!(error, DecodeError::Truncated | DecodeError::Malformed(_)),
                "known kind {} but {:?}",
                kind,
                error
            ),
        },
    }
    prop_assert_eq!(
        bytes.is_empty(),
        peek_kind(bytes) == Err(DecodeError::Empty)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_envelopes_round_trip(envelope in any_envelope()) {
        let bytes = encode(&envelope).expect("encode");
        prop_assert_eq!(peek_kind(&bytes), Ok(envelope.body.kind().to_string()));
        prop_assert_eq!(decode(&bytes), Ok(envelope));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_consistent(&bytes)?;
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic(
        envelope in any_envelope(),
        keep in any::<Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = encode(&envelope).expect("encode");
        bytes.truncate(keep.index(bytes.len()));
        bytes.extend_from_slice(&tail);
        check_consistent(&bytes)?;
    }

    #[test]
    fn bit_flips_never_panic(
        envelope in any_envelope(),
        flips in prop::collection::vec((any::<Index>(), 0u8..8), 1..8),
    ) {
        let mut bytes = encode(&envelope).expect("encode");
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        check_consistent(&bytes)?;
    }

    #[test]
    fn random_truncation_is_an_error(envelope in any_envelope(), cut in any::<Index>()) {
        let bytes = encode(&envelope).expect("encode");
        let prefix = &bytes[..cut.index(bytes.len())];
        if prefix.is_empty() {
            prop_assert_eq!(decode(prefix), Err(DecodeError::Empty));
        } else {
            let decoded = decode(prefix);
            prop_assert!(is_truncated_or_malformed(&decoded), "{:?}", decoded);
            let peeked = peek_kind(prefix);
            prop_assert!(is_truncated_or_malformed(&peeked), "{:?}", peeked);
        }
        check_consistent(prefix)?;
    }
}
