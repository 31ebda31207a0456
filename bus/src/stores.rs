//! Key and trust stores in the formats an agent's neighbours read: PKCS#12
//! (a key with its chain, or certificates alone) and Java's JKS truststore.
//! The parent writes them for `export`, a child keeps its own in step with
//! its certificates (`--trust-store-format`): one implementation for both.

use p12_keystore::{Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::pem_certs;

/// PBKDF2 / PKCS#12 KDF iterations of a modern `.pfx`.
const MODERN_ITERATIONS: u64 = 10_000;
/// Iterations of a legacy `.pfx`: what OpenSSL 1.x wrote, which every old
/// Windows imports.
const LEGACY_ITERATIONS: u64 = 2_048;

/// The shortest store password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Reads a store password from `path`: its content, one trailing newline
/// dropped; refused when empty or shorter than [`MIN_PASSWORD_CHARS`].
pub fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("the password file {} is empty", path.display()));
    }
    if text.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password in {} is too short: use at least {MIN_PASSWORD_CHARS} characters",
            path.display()
        ));
    }
    Ok(text)
}

/// A PKCS#12 file with the key (PEM, PKCS#8) and its chain (PEM, leaf
/// first), under `alias`, protected by `password`: PBES2 with
/// PBKDF2-HMAC-SHA256 and AES-256-CBC and an HMAC-SHA256 MAC, or with
/// `legacy` pbeWithSHAAnd3-KeyTripleDES-CBC and an HMAC-SHA1 MAC.
pub fn pkcs12(
    chain_pem: &str,
    key_pem: &str,
    alias: &str,
    password: &str,
    legacy: bool,
) -> Result<Vec<u8>, String> {
    let chain = pem_certs(chain_pem)?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) {
        Ok(PrivateKeyDer::Pkcs8(key)) => key,
        Ok(_) => return Err("the private key is not PKCS#8 \"PRIVATE KEY\"".into()),
        Err(e) => return Err(format!("unreadable private key: {e}")),
    };
    pkcs12_der(&chain, key.secret_pkcs8_der(), alias, password, legacy)
}

/// [`pkcs12`] from DER: the chain (leaf first) and the PKCS#8 key.
pub fn pkcs12_der(
    chain: &[CertificateDer<'_>],
    key_pkcs8: &[u8],
    alias: &str,
    password: &str,
    legacy: bool,
) -> Result<Vec<u8>, String> {
    let Some(leaf) = chain.first() else {
        return Err("no certificate for the key".into());
    };
    let certificates = chain
        .iter()
        .map(|der| Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // The usual localKeyId: the SHA-1 of the certificate the key belongs to.
    let local_key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, leaf);
    let entry = p12_keystore::PrivateKeyChain::new(key_pkcs8, local_key_id.as_ref(), certificates);
    let mut store = KeyStore::new();
    store.add_entry(alias, KeyStoreEntry::PrivateKeyChain(entry));
    seal(store, password, legacy)
}

/// A PKCS#12 truststore: each `(alias, DER certificate)` as a certificate
/// entry (no key), protected by `password` as [`pkcs12`] does it.
pub fn pkcs12_truststore(entries: &[(String, &[u8])], password: &str) -> Result<Vec<u8>, String> {
    let mut store = KeyStore::new();
    for (alias, der) in entries {
        let certificate =
            Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        store.add_entry(alias, KeyStoreEntry::Certificate(certificate));
    }
    seal(store, password, false)
}

/// The bytes of `store`, encrypted and MACed with `password`.
fn seal(store: KeyStore, password: &str, legacy: bool) -> Result<Vec<u8>, String> {
    let writer = store.writer(password);
    let writer = if legacy {
        writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .encryption_iterations(LEGACY_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .mac_iterations(LEGACY_ITERATIONS)
    } else {
        writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .encryption_iterations(MODERN_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha256)
            .mac_iterations(MODERN_ITERATIONS)
    };
    writer.write().map_err(|e| e.to_string())
}

/// The JKS magic number.
const JKS_MAGIC: u32 = 0xFEED_FEED;
/// The JKS version written (2: entries carry their certificate type).
const JKS_VERSION: u32 = 2;
/// The tag of a trusted-certificate entry.
const JKS_TRUSTED_CERT: u32 = 2;
/// What Java's JKS mixes into its integrity digest after the password.
const JKS_WHITENER: &[u8] = b"Mighty Aphrodite";

/// A Java KeyStore (JKS) truststore holding each `(alias, DER certificate)`
/// as a trusted-certificate entry, as `keytool -importcert` writes it.
///
/// The format, all integers big-endian: magic `0xFEEDFEED`, version 2, the
/// entry count; per entry the tag 2, the alias (u16 length, modified UTF-8;
/// lowercase, as JKS aliases are case-insensitive), the creation time (ms,
/// u64), the certificate type `"X.509"` (u16 length, bytes) and the
/// certificate (u32 length, DER); then the SHA-1 of the password as UTF-16BE,
/// the bytes `"Mighty Aphrodite"` and everything before it. A truststore
/// holds no secret: the password only protects its integrity.
pub fn jks_truststore(entries: &[(String, &[u8])], password: &str, created_ms: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&JKS_MAGIC.to_be_bytes());
    out.extend_from_slice(&JKS_VERSION.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (alias, der) in entries {
        out.extend_from_slice(&JKS_TRUSTED_CERT.to_be_bytes());
        java_utf(&mut out, &alias.to_lowercase());
        out.extend_from_slice(&created_ms.to_be_bytes());
        java_utf(&mut out, "X.509");
        out.extend_from_slice(&(der.len() as u32).to_be_bytes());
        out.extend_from_slice(der);
    }
    let digest = jks_digest(password, &out);
    out.extend_from_slice(digest.as_ref());
    out
}

/// The integrity digest of a JKS body.
fn jks_digest(password: &str, body: &[u8]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for unit in password.encode_utf16() {
        ctx.update(&unit.to_be_bytes());
    }
    ctx.update(JKS_WHITENER);
    ctx.update(body);
    ctx.finish()
}

/// Java's `DataOutput.writeUTF`: a u16 byte length, then modified UTF-8
/// (UTF-16 units; U+0000 as two bytes; no four-byte forms).
fn java_utf(out: &mut Vec<u8>, text: &str) {
    let mut bytes = Vec::new();
    for unit in text.encode_utf16() {
        match unit {
            0x0001..=0x007f => bytes.push(unit as u8),
            0x0000 | 0x0080..=0x07ff => {
                bytes.push(0xc0 | (unit >> 6) as u8);
                bytes.push(0x80 | (unit & 0x3f) as u8);
            }
            _ => {
                bytes.push(0xe0 | (unit >> 12) as u8);
                bytes.push(0x80 | ((unit >> 6) & 0x3f) as u8);
                bytes.push(0x80 | (unit & 0x3f) as u8);
            }
        }
    }
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a JKS truststore back: (aliases, certificates), checking the digest.
    fn read_jks(bytes: &[u8], password: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let (body, digest) = bytes.split_at(bytes.len() - 20);
        if jks_digest(password, body).as_ref() != digest {
            return Err("digest mismatch".into());
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let slice = &body[at..at + n];
            at += n;
            slice.to_vec()
        };
        let u32_of = |b: Vec<u8>| u32::from_be_bytes(b.try_into().unwrap());
        assert_eq!(u32_of(take(4)), JKS_MAGIC);
        assert_eq!(u32_of(take(4)), JKS_VERSION);
        let count = u32_of(take(4));
        let mut entries = Vec::new();
        for _ in 0..count {
            assert_eq!(u32_of(take(4)), JKS_TRUSTED_CERT);
            let len = u16::from_be_bytes(take(2).try_into().unwrap()) as usize;
            let alias = String::from_utf8(take(len)).unwrap();
            take(8);
            let len = u16::from_be_bytes(take(2).try_into().unwrap()) as usize;
            assert_eq!(take(len), b"X.509");
            let len = u32_of(take(4)) as usize;
            entries.push((alias, take(len)));
        }
        Ok(entries)
    }

    #[test]
    fn jks_round_trips_and_checks_the_password() {
        let certs = [b"first certificate".as_slice(), b"second".as_slice()];
        let entries = vec![
            ("Fleetls-CA".to_owned(), certs[0]),
            ("fleetls-ca-1".to_owned(), certs[1]),
        ];
        let jks = jks_truststore(&entries, "changeit", 1_700_000_000_000);
        assert_eq!(&jks[..4], &[0xfe, 0xed, 0xfe, 0xed]);
        let read = read_jks(&jks, "changeit").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].0, "fleetls-ca", "aliases are stored lowercase");
        assert_eq!(read[0].1, certs[0]);
        assert_eq!(read[1].1, certs[1]);
        assert!(read_jks(&jks, "changeiT").is_err());
    }

    #[test]
    fn jks_digest_is_sha1_of_utf16be_password_whitener_and_body() {
        // The password "ab" is 00 61 00 62 in UTF-16BE.
        let body = [1u8, 2, 3];
        let mut input = vec![0x00, 0x61, 0x00, 0x62];
        input.extend_from_slice(b"Mighty Aphrodite");
        input.extend_from_slice(&body);
        let expected = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
        assert_eq!(jks_digest("ab", &body).as_ref(), expected.as_ref());
    }

    #[test]
    fn java_utf_is_modified_utf8() {
        let mut out = Vec::new();
        java_utf(&mut out, "a\u{0}é€😀");
        let expected: &[u8] = &[
            0x00, 0x0e, // 14 bytes follow
            b'a', 0xc0, 0x80, // NUL as two bytes
            0xc3, 0xa9, // é
            0xe2, 0x82, 0xac, // €
            0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80, // 😀 as a surrogate pair
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn a_password_file_is_read_without_its_newline_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "correct horse\r\n").unwrap();
        assert_eq!(read_password_file(&file).unwrap(), "correct horse");
        std::fs::write(&file, "short\n").unwrap();
        assert!(read_password_file(&file).unwrap_err().contains("too short"));
        std::fs::write(&file, "\n").unwrap();
        assert!(read_password_file(&file).unwrap_err().contains("empty"));
        let missing = read_password_file(&dir.path().join("missing")).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
