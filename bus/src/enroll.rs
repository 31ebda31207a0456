//! Enrollment tokens: what admits a new device, in place of the broker
//! password every till shares.
//!
//! An operator makes a token on the parent (`fleetls-parent enroll create`)
//! and gives it to the devices it is for. A token reads
//! `fleetls-enroll.<id>.<secret>`: the id (16 hex digits) is public and names
//! the token; the secret (64 hex digits) never travels. A child proves it
//! holds the token in its Hello with an [`EnrollProof`]: the id and an
//! HMAC-SHA-256, keyed by a key derived from the secret, over the agent's
//! id, the public key it signs with, its kind and its name. The parent keeps
//! only the derived key ([`Token::mac_key`]), checks the MAC with
//! [`verify`], and so a Hello copied off the wire is worth nothing to
//! anyone with another key, id, kind or name.

use fleetls_proto::{AgentKind, EnrollProof};
use ring::hmac;

use crate::seal::{hex, unhex};
use uuid::Uuid;

/// What every token starts with.
const PREFIX: &str = "fleetls-enroll.";
/// Bytes of a token's id.
const ID_BYTES: usize = 8;
/// Bytes of a token's secret.
const SECRET_BYTES: usize = 32;
/// The domain of the key derived from a secret (never used for anything else).
const KEY_DOMAIN: &[u8] = b"fleetls-enroll-key-v1\0";
/// The domain of the MAC over an agent's claims.
const MAC_DOMAIN: &[u8] = b"fleetls-enroll-v1\0";

/// An enrollment token as the operator holds it: its id and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: [u8; SECRET_BYTES],
}

impl std::fmt::Debug for Token {
    /// The id only: a token's secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.id)
    }
}

/// Why a text is not an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this is not an enrollment token ({0}): a token reads fleetls-enroll.<16 hex digits>.<64 hex digits>, \
     as `fleetls-parent enroll create` prints it on its last line"
)]
pub struct TokenError(&'static str);

impl Token {
    /// A new token with a random id and secret.
    pub fn generate() -> Token {
        let id: [u8; ID_BYTES] = rand::random();
        Token {
            id: hex(&id),
            secret: rand::random(),
        }
    }

    /// The token's public id (how the parent names it in lists and logs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key the parent keeps to check proofs (derived from the secret;
    /// the token itself cannot be recovered from it).
    pub fn mac_key(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(KEY_DOMAIN);
        ctx.update(&self.secret);
        let digest = ctx.finish();
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// The whole token, to hand to the operator once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}.{}", self.id, hex(&self.secret))
    }

    /// What an agent puts in its Hello to prove it holds this token.
    pub fn proof(
        &self,
        agent: Uuid,
        signing_key_hex: &str,
        kind: AgentKind,
        name: &str,
    ) -> EnrollProof {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.mac_key());
        let tag = hmac::sign(&key, &claims(agent, signing_key_hex, kind, name));
        EnrollProof {
            token: self.id.clone(),
            mac: hex(tag.as_ref()),
        }
    }
}

impl std::str::FromStr for Token {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Token, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenError("it does not start with fleetls-enroll."))?;
        let (id, secret) = rest.split_once('.').ok_or(TokenError(
            "the id and the secret are not separated by a dot",
        ))?;
        if id.len() != ID_BYTES * 2 || unhex(id).is_none() {
            return Err(TokenError("the id is not 16 hex digits"));
        }
        let secret = unhex(secret)
            .and_then(|s| <[u8; SECRET_BYTES]>::try_from(s).ok())
            .ok_or(TokenError("the secret is not 64 hex digits"))?;
        Ok(Token {
            id: id.to_ascii_lowercase(),
            secret,
        })
    }
}

/// Whether `proof` was made with the token whose kept key is `mac_key`, by
/// agent `agent` signing with `signing_key_hex`, of `kind`, called `name`.
/// The comparison takes the same time whatever the MAC.
pub fn verify(
    mac_key: &[u8],
    proof: &EnrollProof,
    agent: Uuid,
    signing_key_hex: &str,
    kind: AgentKind,
    name: &str,
) -> bool {
    let Some(tag) = unhex(&proof.mac) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, mac_key);
    hmac::verify(&key, &claims(agent, signing_key_hex, kind, name), &tag).is_ok()
}

/// What the MAC covers: every field is length-prefixed, so no two claims
/// read the same.
fn claims(agent: Uuid, signing_key_hex: &str, kind: AgentKind, name: &str) -> Vec<u8> {
    let mut out = MAC_DOMAIN.to_vec();
    out.extend_from_slice(agent.as_bytes());
    for field in [
        signing_key_hex.to_ascii_lowercase().as_str(),
        kind.as_str(),
        name,
    ] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_never_prints_its_secret() {
        let token = Token::generate();
        let text = token.reveal();
        assert!(text.starts_with("fleetls-enroll."), "{text}");
        let again: Token = text.parse().unwrap();
        assert_eq!(again, token);
        let secret = text.rsplit('.').next().unwrap();
        assert!(!format!("{token:?}").contains(secret));
        for bad in [
            "",
            "fleetls-enroll.",
            "fleetls-enroll.zz.00",
            &text.replacen("fleetls-enroll.", "x.", 1),
            &text[..text.len() - 2],
        ] {
            assert!(bad.parse::<Token>().is_err(), "{bad:?} was read as a token");
        }
    }

    /// The vector the attacker's client (tests/attacks, Python, written
    /// from the README's description) computes for the same claims.
    #[test]
    fn a_proof_matches_the_written_description() {
        let token: Token = format!("fleetls-enroll.0011223344556677.{}", "ab".repeat(32))
            .parse()
            .unwrap();
        let agent: Uuid = "3f1c6a4e-0000-4000-8000-000000000001".parse().unwrap();
        let proof = token.proof(agent, &"cd".repeat(32), AgentKind::Child, "till-1");
        assert_eq!(proof.token, "0011223344556677");
        assert_eq!(
            proof.mac,
            "de401075f280ee653b387a9d62ed938c34de4dd87d66c1248c35150c473f1ee5"
        );
    }

    #[test]
    fn a_proof_holds_only_for_its_own_claims() {
        let token = Token::generate();
        let agent = Uuid::new_v4();
        let key = "ab".repeat(32);
        let proof = token.proof(agent, &key, AgentKind::Child, "till-1");
        let mac_key = token.mac_key();
        assert!(verify(
            &mac_key,
            &proof,
            agent,
            &key,
            AgentKind::Child,
            "till-1"
        ));
        // Another key, agent, kind or name: the copy is worth nothing.
        assert!(!verify(
            &mac_key,
            &proof,
            agent,
            &"cd".repeat(32),
            AgentKind::Child,
            "till-1"
        ));
        assert!(!verify(
            &mac_key,
            &proof,
            Uuid::new_v4(),
            &key,
            AgentKind::Child,
            "till-1"
        ));
        assert!(!verify(
            &mac_key,
            &proof,
            agent,
            &key,
            AgentKind::LocalParent,
            "till-1"
        ));
        assert!(!verify(
            &mac_key,
            &proof,
            agent,
            &key,
            AgentKind::Child,
            "till-2"
        ));
        // Another token's key.
        assert!(!verify(
            &Token::generate().mac_key(),
            &proof,
            agent,
            &key,
            AgentKind::Child,
            "till-1"
        ));
        let garbled = EnrollProof {
            mac: "zz".into(),
            ..proof
        };
        assert!(!verify(
            &mac_key,
            &garbled,
            agent,
            &key,
            AgentKind::Child,
            "till-1"
        ));
    }
}
