//! Signed envelopes: who may speak for whom.
//!
//! Every fleetls message carries two AMQP headers: [`KEY_HEADER`], the raw
//! Ed25519 public key of the sender (hex), and [`SIG_HEADER`], its signature
//! (hex) over [`CONTEXT`] followed by the exact payload bytes. The payload
//! holds the message id, the sender (`from`), the addressee (`to`, on every
//! command), the time and the body, so a signature binds all of them: change
//! one byte, or send the message to another agent, and it no longer verifies.
//!
//! Whether the key that signed is the *right* key is the receiver's rule: a
//! child checks it against the parent key it pinned, the parent against the
//! key it pinned for that agent when it first registered. This module only
//! says which key signed, or that nobody validly did.

use std::path::Path;

use lapin::types::{AMQPValue, FieldTable, LongString};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use fleetls_proto::Envelope;

/// Header with the sender's public key (64 lowercase hex digits).
pub const KEY_HEADER: &str = "x-fleetls-key";
/// Header with the signature (128 lowercase hex digits).
pub const SIG_HEADER: &str = "x-fleetls-sig";
/// What is signed before the payload: a signature made for anything else
/// (another protocol, a TLS handshake) can never pass for a fleetls message.
pub const CONTEXT: &[u8] = b"fleetls-envelope-v1\0";

/// Why a message or a key cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The message carries no signature headers.
    #[error("unsigned: the message carries no {KEY_HEADER}/{SIG_HEADER} headers")]
    Unsigned,
    /// A header is there but is not what it must be.
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with the key given.
    #[error("bad signature: the payload was not signed by the key it names (forged or altered)")]
    BadSignature,
    /// A key file cannot be read or written.
    #[error("signing key {path}: {why}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong and what to do.
        why: String,
    },
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// The key as 64 lowercase hex digits (what [`KEY_HEADER`] carries).
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// Reads a key from 64 hex digits.
    pub fn from_hex(text: &str) -> Option<PublicKey> {
        let bytes = unhex(text)?;
        Some(PublicKey(bytes.try_into().ok()?))
    }

    /// `sha256:` and the SHA-256 of the raw key in hex: what an operator
    /// compares and pins.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        format!("sha256:{}", hex(digest.as_ref()))
    }

    /// Whether `fingerprint` (as [`PublicKey::fingerprint`] writes it;
    /// upper case and `:` between bytes accepted) names this key.
    pub fn matches(&self, fingerprint: &str) -> bool {
        normalize_fingerprint(fingerprint).as_deref() == Some(&self.fingerprint()[7..])
    }

    fn verify(&self, payload: &[u8], signature: &[u8]) -> bool {
        let mut signed = Vec::with_capacity(CONTEXT.len() + payload.len());
        signed.extend_from_slice(CONTEXT);
        signed.extend_from_slice(payload);
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&signed, signature)
            .is_ok()
    }
}

/// The hex digits of a `sha256:` fingerprint, lower case, or `None` when it
/// is not one. Use it to check a fingerprint given on a command line.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let digits: String = text
        .trim()
        .strip_prefix("sha256:")
        .or_else(|| text.trim().strip_prefix("SHA256:"))?
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (digits.len() == 64 && digits.chars().all(|c| c.is_ascii_hexdigit())).then_some(digits)
}

/// A private signing key (Ed25519), kept as a PKCS#8 file of mode 0600.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// A new random key and its PKCS#8 encoding (to store).
    pub fn generate() -> (SigningKey, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("the system's random source works")
            .as_ref()
            .to_vec();
        let key = SigningKey::from_pkcs8(&pkcs8).expect("a key ring just made is valid");
        (key, pkcs8)
    }

    /// A key from its PKCS#8 encoding.
    pub fn from_pkcs8(bytes: &[u8]) -> Option<SigningKey> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes).ok()?;
        let public = PublicKey(pair.public_key().as_ref().try_into().ok()?);
        Some(SigningKey { pair, public })
    }

    /// Loads the key at `path`, or makes one and writes it there (0600)
    /// when there is none. A file that is there but unreadable is an error,
    /// never silently replaced: agents have pinned the key it holds.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, SealError> {
        let failed = |why: String| SealError::KeyFile {
            path: path.display().to_string(),
            why,
        };
        match std::fs::read(path) {
            Ok(bytes) => SigningKey::from_pkcs8(&bytes).ok_or_else(|| {
                failed(
                    "not an Ed25519 PKCS#8 key; restore it from a backup (agents pinned it)".into(),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, pkcs8) = SigningKey::generate();
                let made = crate::files::write_new(path, &pkcs8, 0o600)
                    .map_err(|e| failed(format!("cannot write it: {e}")))?;
                if made {
                    Ok(key)
                } else {
                    // Another process made it meanwhile: its key is the one.
                    SigningKey::load_or_create(path)
                }
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// Its public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Encodes `envelope` and signs the bytes.
    pub fn seal(&self, envelope: &Envelope) -> Result<Sealed, fleetls_proto::EncodeError> {
        let payload = fleetls_proto::encode(envelope)?;
        let mut signed = Vec::with_capacity(CONTEXT.len() + payload.len());
        signed.extend_from_slice(CONTEXT);
        signed.extend_from_slice(&payload);
        let signature = hex(self.pair.sign(&signed).as_ref());
        Ok(Sealed {
            payload,
            key: self.public.hex(),
            signature,
        })
    }
}

/// A signed payload, ready to publish.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The encoded envelope.
    pub payload: Vec<u8>,
    key: String,
    signature: String,
}

impl Sealed {
    /// The two signature headers.
    pub fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(
            KEY_HEADER.into(),
            AMQPValue::LongString(LongString::from(self.key.as_str())),
        );
        headers.insert(
            SIG_HEADER.into(),
            AMQPValue::LongString(LongString::from(self.signature.as_str())),
        );
        headers
    }
}

/// The key whose valid signature `payload` carries in `headers`.
pub fn signer(payload: &[u8], headers: Option<&FieldTable>) -> Result<PublicKey, SealError> {
    let text = |name: &str| -> Result<Option<String>, SealError> {
        match headers.and_then(|h| h.inner().get(name)) {
            None => Ok(None),
            Some(AMQPValue::LongString(s)) => {
                Ok(Some(String::from_utf8_lossy(s.as_bytes()).into_owned()))
            }
            Some(AMQPValue::ShortString(s)) => Ok(Some(s.as_str().to_owned())),
            Some(AMQPValue::ByteArray(b)) => {
                Ok(Some(String::from_utf8_lossy(b.as_slice()).into_owned()))
            }
            Some(_) => Err(SealError::Malformed("a signature header is not a string")),
        }
    };
    let (key, signature) = match (text(KEY_HEADER)?, text(SIG_HEADER)?) {
        (None, None) => return Err(SealError::Unsigned),
        (Some(key), Some(signature)) => (key, signature),
        _ => {
            return Err(SealError::Malformed(
                "one of the two signature headers is missing",
            ))
        }
    };
    let key = PublicKey::from_hex(&key).ok_or(SealError::Malformed(
        "the key header is not 32 bytes of hex",
    ))?;
    let signature = unhex(&signature)
        .filter(|s| s.len() == 64)
        .ok_or(SealError::Malformed(
            "the signature header is not 64 bytes of hex",
        ))?;
    if key.verify(payload, &signature) {
        Ok(key)
    } else {
        Err(SealError::BadSignature)
    }
}

/// Lower-case hex of `bytes` (also for `crate::enroll`).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Bytes from hex digits; `None` when `text` is not an even run of them.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetls_proto::{Body, Heartbeat};

    fn envelope() -> Envelope {
        let mut e = Envelope::new(uuid::Uuid::new_v4(), Body::Heartbeat(Heartbeat::default()));
        e.to = Some(uuid::Uuid::new_v4());
        e
    }

    #[test]
    fn a_sealed_message_names_its_signer() {
        let (key, _) = SigningKey::generate();
        let sealed = key.seal(&envelope()).unwrap();
        let signer = signer(&sealed.payload, Some(&sealed.headers())).unwrap();
        assert_eq!(&signer, key.public());
        assert!(signer.matches(&key.public().fingerprint()));
        assert!(signer.matches(
            &key.public()
                .fingerprint()
                .to_uppercase()
                .replacen("SHA256", "sha256", 1)
        ));
    }

    #[test]
    fn an_altered_payload_or_another_key_does_not_verify() {
        let (key, _) = SigningKey::generate();
        let (other, _) = SigningKey::generate();
        let sealed = key.seal(&envelope()).unwrap();
        let mut altered = sealed.payload.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(
            signer(&altered, Some(&sealed.headers())),
            Err(SealError::BadSignature)
        );
        // The right signature, presented with another key.
        let mut headers = sealed.headers();
        headers.insert(
            KEY_HEADER.into(),
            AMQPValue::LongString(other.public().hex().as_str().into()),
        );
        assert_eq!(
            signer(&sealed.payload, Some(&headers)),
            Err(SealError::BadSignature)
        );
        assert_eq!(signer(&sealed.payload, None), Err(SealError::Unsigned));
    }

    #[test]
    fn the_signature_covers_the_replay_counter() {
        let (key, _) = SigningKey::generate();
        let sent = envelope().with_seq(1_000_000);
        let sealed = key.seal(&sent).unwrap();
        assert!(signer(&sealed.payload, Some(&sealed.headers())).is_ok());
        // The same message with a higher counter (a replay dressed as new):
        // the signature no longer verifies.
        let moved = fleetls_proto::encode(&sent.with_seq(2_000_000)).unwrap();
        assert_eq!(
            signer(&moved, Some(&sealed.headers())),
            Err(SealError::BadSignature)
        );
    }

    #[test]
    fn a_key_file_is_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let first = SigningKey::load_or_create(&path).unwrap();
        let again = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(first.public(), again.public());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            SigningKey::load_or_create(&path),
            Err(SealError::KeyFile { .. })
        ));
    }

    #[test]
    fn fingerprints_are_read_strictly() {
        assert!(normalize_fingerprint("sha256:abc").is_none());
        assert!(normalize_fingerprint(&format!("sha256:{}", "A".repeat(64))).is_some());
        assert!(normalize_fingerprint(&"a".repeat(64)).is_none());
    }
}
