//! Which commands a child obeys: only those signed by the parent key it
//! pinned, addressed to it, and never seen before.
//!
//! The parent's key is pinned up front (`--parent-key sha256:HEX`, as
//! `fleetls-parent signing-key` prints it) or, failing that, on the first
//! valid command, with a loud warning; the child reports the fingerprint it
//! pinned in every Hello and heartbeat, so that the parent flags any other.
//! What was pinned and which commands were obeyed is kept in
//! `DIR/trust.toml`, so a restart forgets neither.
//!
//! Replay: a command is refused when its id was obeyed before, or when it
//! is older (by the parent's own clock, `at`) than [`REPLAY_WINDOW_MS`]
//! before the newest command obeyed. Ids are kept for that window, so the
//! set stays small; no clock of the child's is involved.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fleetls_bus::seal::{self, PublicKey};
use fleetls_proto::{DecodeError, Envelope, TlsPolicy, TlsVersion};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use tracing::{error, info};
use uuid::Uuid;

use crate::identity::StoreError;
use crate::layout::Layout;

/// How much older than the newest obeyed command a command may be (the
/// longest a command waits in the queue: [`fleetls_proto::COMMAND_TTL_MS`]).
pub const REPLAY_WINDOW_MS: u64 = fleetls_proto::COMMAND_TTL_MS;

/// What `DIR/trust.toml` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Kept {
    /// The pinned parent key (hex), once pinned.
    #[serde(default)]
    parent_key: Option<String>,
    /// The `at` of the newest command obeyed.
    #[serde(default)]
    newest: u64,
    /// Commands obeyed within the window: `id@at`.
    #[serde(default)]
    seen: Vec<String>,
}

/// The child's trust in its parent.
pub struct Trust {
    path: PathBuf,
    /// The fingerprint given on the command line (hex digits), if any.
    configured: Option<String>,
    kept: Mutex<Kept>,
}

/// What to do with a delivery.
#[derive(Debug)]
pub enum Verdict {
    /// A genuine, fresh command for this agent (boxed: the other verdicts
    /// are small).
    Obey(Box<Envelope>),
    /// Signed by the parent, but not a message this build can read.
    Undecodable(DecodeError),
    /// Not from the parent, not for this agent, or replayed: refuse it,
    /// dead-letter it and report it as a security event.
    Forged(String),
    /// A genuine command for this agent whose id it obeyed before (why, as
    /// [`Verdict::Forged`] says it): the broker's own redelivery of a
    /// command whose ack a lost connection swallowed (a cluster node lost
    /// mid-command), or a copy someone published again — which one, only
    /// the delivery's `redelivered` flag tells (the broker sets it, a
    /// publisher cannot).
    ObeyedBefore(String),
}

impl Trust {
    /// Loads `DIR/trust.toml`. A pin there that contradicts `--parent-key`
    /// is an error: the operator must decide which is right.
    pub fn load(dir: &Path, configured: Option<String>) -> Result<Trust, StoreError> {
        let path = Layout::new(dir).trust();
        let kept: Kept = crate::identity::read_toml(&path)?.unwrap_or_default();
        if let (Some(pinned), Some(fingerprint)) = (&kept.parent_key, &configured) {
            let pinned_key = PublicKey::from_hex(pinned);
            if !pinned_key.is_some_and(|k| k.matches(&format!("sha256:{fingerprint}"))) {
                return Err(StoreError {
                    path,
                    why: format!(
                        "this agent pinned another parent key than --parent-key sha256:{fingerprint}; \
                         if the parent's key really changed, remove parent_key from this file"
                    ),
                });
            }
        }
        Ok(Trust {
            path,
            configured,
            kept: Mutex::new(kept),
        })
    }

    /// The fingerprint of the pinned parent key, once pinned.
    pub fn pinned(&self) -> Option<String> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.parent_key
            .as_deref()
            .and_then(PublicKey::from_hex)
            .map(|k| k.fingerprint())
    }

    /// Judges one delivery to agent `me`.
    pub fn check(&self, me: Uuid, payload: &[u8], headers: Option<&FieldTable>) -> Verdict {
        if payload.len() > fleetls_proto::MAX_PAYLOAD {
            return Verdict::Forged(format!(
                "too_large: {} bytes, more than the {} a fleetls message may have",
                payload.len(),
                fleetls_proto::MAX_PAYLOAD
            ));
        }
        let key = match seal::signer(payload, headers) {
            Ok(key) => key,
            Err(e) => return Verdict::Forged(format!("not signed by the parent: {e}")),
        };
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let pinned = kept.parent_key.as_deref().and_then(PublicKey::from_hex);
        let from_parent = match (&pinned, &self.configured) {
            (Some(pinned), _) => *pinned == key,
            (None, Some(fingerprint)) => key.matches(&format!("sha256:{fingerprint}")),
            (None, None) => true, // trust on first use, once the rest checks out
        };
        if !from_parent {
            return Verdict::Forged(format!(
                "signed by {}, not by the parent key this agent pinned",
                key.fingerprint()
            ));
        }
        let envelope = match fleetls_proto::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) if pinned.is_some() || self.configured.is_some() => {
                return Verdict::Undecodable(e)
            }
            Err(e) => {
                return Verdict::Forged(format!("undecodable before any key was pinned: {e}"))
            }
        };
        if envelope.to != Some(me) {
            return Verdict::Forged(match envelope.to {
                Some(other) => format!("addressed to agent {other}, not to this one"),
                None => "addressed to nobody: every command names its agent".into(),
            });
        }
        let id = envelope.id.to_string();
        if kept
            .seen
            .iter()
            .any(|s| s.split('@').next() == Some(id.as_str()))
        {
            return Verdict::ObeyedBefore(format!("replayed: command {id} was obeyed before"));
        }
        if envelope.at.saturating_add(REPLAY_WINDOW_MS) < kept.newest {
            return Verdict::Forged(format!(
                "replayed: command {id} is older than the newest command obeyed by more than {} minutes",
                REPLAY_WINDOW_MS / 60_000
            ));
        }
        let mut next = kept.clone();
        if pinned.is_none() {
            next.parent_key = Some(key.hex());
            if self.configured.is_some() {
                info!(parent_key = %key.fingerprint(), "pinned the parent key given with --parent-key");
            } else {
                error!(
                    parent_key = %key.fingerprint(),
                    "TRUST ON FIRST USE: pinned the key of the first signed command as the parent's; \
                     compare it with `fleetls-parent signing-key` and give it as --parent-key on every \
                     other agent, or anyone on the broker could have been first"
                );
            }
        }
        next.newest = next.newest.max(envelope.at);
        next.seen.push(format!("{id}@{}", envelope.at));
        let newest = next.newest;
        next.seen.retain(|s| {
            s.rsplit('@')
                .next()
                .and_then(|at| at.parse::<u64>().ok())
                .is_some_and(|at| at.saturating_add(REPLAY_WINDOW_MS) >= newest)
        });
        if let Err(e) = crate::identity::write_toml(&self.path, &next, 0o600) {
            // Obeying a command it could not record would let it be replayed.
            return Verdict::Forged(format!("cannot record the command, refused: {e}"));
        }
        *kept = next;
        Verdict::Obey(Box::new(envelope))
    }
}

/// Why a revocation list would roll back the one held: for a CA whose list
/// is held, the new list's CRL number is lower (a genuine but older
/// `CrlUpdated`, taken from the queue and delivered after a newer one,
/// would un-revoke what was revoked since). `None`: as new or newer, or
/// nothing comparable is held. During a CA rotation a file holds one list
/// per CA; each is compared with the list of the same issuer.
pub fn stale_crl(held: &str, new: &str) -> Option<String> {
    let new = crl_numbers(new);
    crl_numbers(held).into_iter().find_map(|(issuer, number)| {
        let (_, offered) = new.iter().find(|(i, _)| *i == issuer)?;
        (*offered < number).then(|| {
            format!(
                "replayed: a revocation list numbered {offered}, older than the one held (number {number})"
            )
        })
    })
}

/// Why a local parent's TLS policy must not be replaced by `offered`: it is
/// weaker than the one held (a lower version, or a suite the held list does
/// not allow) and comes in a command older (`at`, the parent's clock) than
/// the one that set the held policy. A policy at least as strict, or from a
/// newer command (the operator relaxed it), is taken.
pub fn stale_policy(
    held: Option<&TlsPolicy>,
    held_at: u64,
    offered: &TlsPolicy,
    at: u64,
) -> Option<String> {
    let default = TlsPolicy::default();
    let held = held.unwrap_or(&default);
    let rank = |v: TlsVersion| match v {
        TlsVersion::Tls12 => 0,
        TlsVersion::Tls13 => 1,
    };
    let suites_within = held.cipher_suites.is_empty()
        || (!offered.cipher_suites.is_empty()
            && offered
                .cipher_suites
                .iter()
                .all(|s| held.cipher_suites.contains(s)));
    let as_strict = rank(offered.min_version) >= rank(held.min_version) && suites_within;
    (!as_strict && at < held_at).then(|| {
        "replayed: a TLS policy weaker than the one held, from a command older than the one that set it"
            .to_owned()
    })
}

/// Why a revocation list must not be installed: a list is unreadable, none
/// is given, or one is not signed by a CA this agent trusts (`cas`). The
/// command that carries it is signed by the parent, so this guards against
/// a fault rather than a forger — but a list the port cannot check would
/// leave it checking nothing.
pub fn untrusted_crl(cas: &[rustls::pki_types::CertificateDer<'_>], pem: &str) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;
    let blocks: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|block| block.label == "X509 CRL")
        .collect();
    if blocks.is_empty() {
        return Some("the revocation list update holds no list".into());
    }
    let cas: Vec<X509Certificate<'_>> = cas
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .collect();
    for block in &blocks {
        let Ok((_, crl)) = CertificateRevocationList::from_der(&block.contents) else {
            return Some("the revocation list update holds an unreadable list".into());
        };
        let signed = cas.iter().any(|ca| {
            ca.subject() == crl.issuer() && crl.verify_signature(ca.public_key()).is_ok()
        });
        if !signed {
            return Some(format!(
                "a revocation list issued by \"{}\" is not signed by a CA this agent trusts",
                crl.issuer()
            ));
        }
    }
    None
}

/// The issuer (DER) and CRL number of each list in a PEM file.
fn crl_numbers(pem: &str) -> Vec<(Vec<u8>, x509_parser::num_bigint::BigUint)> {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|block| block.label == "X509 CRL")
        .filter_map(|block| {
            let (_, crl) = CertificateRevocationList::from_der(&block.contents).ok()?;
            Some((crl.issuer().as_raw().to_vec(), crl.crl_number()?.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{stale_crl, untrusted_crl};
    use rcgen::{
        CertificateParams, CertificateRevocationListParams, IsCa, KeyIdMethod, KeyPair,
        SerialNumber,
    };

    fn crl(ca: &rcgen::Issuer<'_, KeyPair>, number: u64) -> String {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2027, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(ca)
        .unwrap()
        .pem()
        .unwrap()
    }

    fn ca(name: &str) -> rcgen::Issuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        rcgen::Issuer::new(params, KeyPair::generate().unwrap())
    }

    /// A CA's certificate (DER) and its issuer.
    fn ca_cert(
        name: &str,
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rcgen::Issuer<'static, KeyPair>,
    ) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        (der, rcgen::Issuer::new(params, key))
    }

    #[test]
    fn a_list_not_signed_by_a_trusted_ca_is_refused() {
        let (ours_der, ours) = ca_cert("fleetls CA");
        // Another CA, and one that only takes the name of ours.
        let (_, theirs) = ca_cert("attacker CA");
        let (_, namesake) = ca_cert("fleetls CA");
        let trusted = [ours_der];
        assert_eq!(untrusted_crl(&trusted, &crl(&ours, 1)), None);
        for foreign in [&theirs, &namesake] {
            let why = untrusted_crl(&trusted, &crl(foreign, 9)).unwrap();
            assert!(
                why.contains("not signed by a CA this agent trusts"),
                "{why}"
            );
            let mixed = format!("{}{}", crl(&ours, 2), crl(foreign, 2));
            assert!(untrusted_crl(&trusted, &mixed).is_some());
        }
        assert!(untrusted_crl(&trusted, "")
            .unwrap()
            .contains("holds no list"));
    }

    #[test]
    fn a_weaker_policy_from_an_older_command_is_stale() {
        use fleetls_proto::{TlsPolicy, TlsVersion};
        let strict = TlsPolicy {
            min_version: TlsVersion::Tls13,
            cipher_suites: vec!["TLS13_AES_256_GCM_SHA384".into()],
        };
        let weak = TlsPolicy::default();
        // Older and weaker: refused; newer (the operator relaxed it): taken.
        assert!(super::stale_policy(Some(&strict), 200, &weak, 100).is_some());
        assert!(super::stale_policy(Some(&strict), 200, &weak, 300).is_none());
        // As strict or stricter, whatever its age: taken.
        assert!(super::stale_policy(Some(&weak), 200, &strict, 100).is_none());
        assert!(super::stale_policy(Some(&strict), 200, &strict, 100).is_none());
        // Another suite, or every suite: weaker.
        let other = TlsPolicy {
            min_version: TlsVersion::Tls13,
            cipher_suites: vec!["TLS13_AES_128_GCM_SHA256".into()],
        };
        assert!(super::stale_policy(Some(&strict), 200, &other, 100).is_some());
        let all13 = TlsPolicy {
            min_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
        };
        assert!(super::stale_policy(Some(&strict), 200, &all13, 100).is_some());
        // Nothing held: the defaults, the weakest.
        assert!(super::stale_policy(None, 0, &weak, 100).is_none());
    }

    #[test]
    fn an_older_revocation_list_of_the_same_ca_is_stale() {
        let (old, new) = (ca("old"), ca("new"));
        assert!(stale_crl(&crl(&old, 5), &crl(&old, 4)).is_some());
        assert!(stale_crl(&crl(&old, 5), &crl(&old, 5)).is_none());
        assert!(stale_crl(&crl(&old, 5), &crl(&old, 6)).is_none());
        // Another CA's list, or nothing held: nothing to compare.
        assert!(stale_crl(&crl(&old, 5), &crl(&new, 1)).is_none());
        assert!(stale_crl("", &crl(&old, 1)).is_none());
        // During a rotation: one list per CA, each compared with its own.
        let both = format!("{}{}", crl(&old, 5), crl(&new, 2));
        assert!(stale_crl(&both, &format!("{}{}", crl(&old, 5), crl(&new, 1))).is_some());
        assert!(stale_crl(&both, &format!("{}{}", crl(&old, 6), crl(&new, 2))).is_none());
    }
}
