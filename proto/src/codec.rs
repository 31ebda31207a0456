//! Envelope ⇄ bytes. Decoding reads in three passes so that each kind of bad
//! input gets its own error: the version first (a newer peer may change the
//! rest), then the body kind, then the whole message.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::{Envelope, KINDS, PROTOCOL_VERSION};

/// Why a payload is not a message this build can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is empty.
    #[error("empty payload: a fleetls message is a MessagePack map")]
    Empty,
    /// The payload ends in the middle of a value.
    #[error("truncated payload: the MessagePack data ends before the message does")]
    Truncated,
    /// The payload is not a fleetls envelope.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The envelope has a protocol version this build does not speak.
    #[error("unsupported protocol version {got}: this agent speaks version {PROTOCOL_VERSION}; upgrade the older side")]
    UnsupportedVersion {
        /// The version the message carries.
        got: u64,
    },
    /// The body kind is not one this build knows.
    #[error("unknown body kind {0:?}: this agent does not know that message; upgrade it")]
    UnknownKind(String),
}

impl DecodeError {
    /// A short machine-readable name of the error, for headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Truncated => "truncated",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::UnknownKind(_) => "unknown_kind",
        }
    }
}

/// A message that could not be written (only a bug can cause it).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

/// Encodes an envelope as MessagePack with named fields.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, EncodeError> {
    Ok(rmp_serde::to_vec_named(envelope)?)
}

/// Decodes and checks an envelope; never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let kind = peek_kind(bytes)?;
    if !KINDS.contains(&kind.as_str()) {
        return Err(DecodeError::UnknownKind(kind));
    }
    from_slice::<Envelope>(bytes).map_err(classify)
}

/// Reads the version and the body kind of a payload without decoding the rest:
/// the version must be the one this build speaks; the kind may be unknown.
pub fn peek_kind(bytes: &[u8]) -> Result<String, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    // A struct can also be read from an array or bin; an envelope is a map.
    if !matches!(bytes[0], 0x80..=0x8f | 0xde | 0xdf) {
        return Err(DecodeError::Malformed(
            "not a MessagePack map: a fleetls message is a map with named fields".into(),
        ));
    }
    let version = from_slice::<VersionOnly>(bytes).map_err(classify)?;
    if version.v != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnsupportedVersion { got: version.v });
    }
    let head = from_slice::<KindOnly>(bytes).map_err(classify)?;
    Ok(head.body.0)
}

/// A v1 message nests at most 5 levels; recursion (and so stack use) is
/// bounded far below rmp_serde's default of 1024, which can overflow a
/// thread's stack before it is reached.
const MAX_DEPTH: usize = 32;

fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut deserializer)
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

#[derive(Deserialize)]
struct KindOnly {
    body: KindName,
}

/// The key of a one-entry map, its value skipped.
struct KindName(String);

impl<'de> Deserialize<'de> for KindName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl<'de> Visitor<'de> for KindVisitor {
            type Value = KindName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a body: a map with one entry, kind → fields")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KindName, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("the body is an empty map"));
                };
                map.next_value::<IgnoredAny>()?;
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("the body has more than one kind"));
                }
                Ok(KindName(kind))
            }
        }
        deserializer.deserialize_map(KindVisitor)
    }
}

fn classify(error: rmp_serde::decode::Error) -> DecodeError {
    use rmp_serde::decode::Error;
    match &error {
        Error::InvalidMarkerRead(io) | Error::InvalidDataRead(io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            DecodeError::Truncated
        }
        _ => DecodeError::Malformed(error.to_string()),
    }
}
