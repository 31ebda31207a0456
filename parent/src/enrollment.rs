//! Who gets in: the admission of an agent at its Hello.
//!
//! The broker's credentials are shared by every till, so they prove
//! nothing. What admits a new agent is an enrollment token it proves
//! (`fleetls_bus::enroll`): the parent finds the token by its id, checks
//! that it is neither revoked, expired nor used up, that it admits the
//! agent's kind and name, and that the MAC covers this agent's id, signing
//! key, kind and name — a Hello copied off the wire and sent with another
//! key proves nothing. Without a valid token an agent is pending, unless the
//! operator chose open enrollment (`--auto-accept`). In every case a name an
//! accepted agent already holds, or one that looks like another agent's
//! (the same UTS #39 skeleton), is never accepted automatically: it waits
//! for an operator, flagged. At most `--max-pending` agents wait; past that
//! a new one is refused and recorded.
//!
//! Functions over a registry transaction and plain data: no I/O, no `App`.

use fleetls_proto::{AgentKind, EnrollProof, Hello};
use uuid::Uuid;

use crate::admission::{glob, skeleton, Admission, AutoAccept};
use crate::registry::{names, record_security, tokens, Agent, RegistryError};

/// What decides admission besides the Hello.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Which agents are accepted without a token (open enrollment).
    pub auto_accept: AutoAccept,
    /// The most agents that may wait for an operator.
    pub max_pending: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            auto_accept: AutoAccept::default(),
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

/// The default of `--max-pending`.
pub const DEFAULT_MAX_PENDING: u64 = 1000;

/// What a Hello comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Registered (or kept) with this admission.
    Admit {
        /// The admission it gets.
        admission: Admission,
        /// The token that admitted it now, if one did (count a use).
        token: Option<String>,
    },
    /// Not registered: the reason, dead-lettered and recorded.
    Refuse(String),
}

/// Decides the admission of `agent` (signing with `key`, hex) saying
/// `hello`, registered before as `before`; records what is wrong with its
/// name on its row afterwards ([`mark_name`]). A token's use is counted
/// here when it admits the agent.
pub fn decide(
    tx: &rusqlite::Transaction<'_>,
    agent: &Uuid,
    key: &str,
    hello: &Hello,
    before: Option<&Agent>,
    rules: &Rules,
    now: u64,
) -> Result<Verdict, RegistryError> {
    if let Some(before) = before {
        // Becoming a local parent (server certificates) needs an operator again.
        if hello.kind == AgentKind::LocalParent
            && before.kind != AgentKind::LocalParent
            && before.admission == Admission::Accepted
        {
            return Ok(admit(Admission::Pending));
        }
        let same = hello.kind == before.kind && hello.name == before.name;
        match before.admission {
            Admission::Pending => {}
            // An admission is for the identity it was given to: an accepted
            // agent that now says it is another kind or another name is
            // decided afresh, as a new one would be (a token for mPOS
            // devices admits no child, a token for `till-*` no other name).
            Admission::Accepted if !same => {
                let why = format!(
                    "accepted as a {} called {:?}, it now says it is a {} called {:?}: \
                     decided again (pending unless a token or --auto-accept admits the new identity)",
                    before.kind,
                    crate::admission::printable(&before.name, crate::admission::MAX_NAME),
                    hello.kind,
                    crate::admission::printable(&hello.name, crate::admission::MAX_NAME),
                );
                record_security(tx, Some(agent), "identity_changed", &why)?;
            }
            // Accepted by a release before signatures, it pins its first
            // key now: its id went over plain AMQP, so this Hello may be
            // anyone's. Decided afresh: its token (every child sends its
            // proof) or --auto-accept keeps it accepted, else an operator.
            Admission::Accepted if before.signing_key.is_none() => {}
            kept => return Ok(admit(kept)),
        }
    }
    let flag = name_flag(tx, agent, &hello.name)?;
    let token = match &hello.enroll {
        None => None,
        Some(proof) => match check_token(tx, proof, agent, key, hello, now)? {
            Ok(id) => Some(id),
            Err(why) => {
                record_security(tx, Some(agent), "enroll_refused", &why)?;
                None
            }
        },
    };
    let verdict = match (token, flag) {
        // A taken or look-alike name waits for an operator, token or not.
        (_, Some(_)) => admit(Admission::Pending),
        (Some(token), None) => {
            tokens::use_once(tx, &token, now)?;
            return Ok(Verdict::Admit {
                admission: Admission::Accepted,
                token: Some(token),
            });
        }
        (None, None) => admit(rules.auto_accept.decide(hello.kind, &hello.name)),
    };
    // Only so many may wait: past the cap a new agent that would wait is
    // refused (one with a valid token still gets in).
    let waits = verdict
        == Verdict::Admit {
            admission: Admission::Pending,
            token: None,
        };
    if waits && before.is_none() && names::pending_count(tx)? >= rules.max_pending {
        let why = format!(
            "pending_cap: {} agents already wait for an operator (--max-pending); \
             a new agent without a token is refused until they are accepted or rejected \
             (`fleetls-parent agents reject --pending-older-than 1d`)",
            rules.max_pending
        );
        record_security(tx, None, "pending_cap", &why)?;
        return Ok(Verdict::Refuse(why));
    }
    Ok(verdict)
}

fn admit(admission: Admission) -> Verdict {
    Verdict::Admit {
        admission,
        token: None,
    }
}

/// What is wrong with `name` for `agent`: held by another accepted agent,
/// or looking like another agent's name. `None`: nothing.
pub fn name_flag(
    tx: &rusqlite::Transaction<'_>,
    agent: &Uuid,
    name: &str,
) -> Result<Option<String>, RegistryError> {
    if let Some(holder) = names::accepted_holder(tx, name, agent)? {
        return Ok(Some(format!("name in use by {holder}")));
    }
    if let Some((other, id)) = names::lookalike(tx, &skeleton(name), name, agent)? {
        let other = crate::admission::printable(&other, crate::admission::MAX_NAME);
        return Ok(Some(format!(
            "looks like {:?} ({id}): the two names print alike",
            other.escape_default().to_string()
        )));
    }
    Ok(None)
}

/// Keeps `agent`'s name skeleton and flag (after its row is written).
pub fn mark_name(
    tx: &rusqlite::Transaction<'_>,
    agent: &Uuid,
    name: &str,
    flag: Option<&str>,
) -> Result<(), RegistryError> {
    names::mark(tx, agent, &skeleton(name), flag)
}

/// Whether `proof` admits this agent: `Ok` with the token's id, or `Err`
/// with why not (recorded as a security event by the caller).
fn check_token(
    tx: &rusqlite::Transaction<'_>,
    proof: &EnrollProof,
    agent: &Uuid,
    key: &str,
    hello: &Hello,
    now: u64,
) -> Result<Result<String, String>, RegistryError> {
    let shown = crate::admission::printable(&proof.token, 32);
    let Some((token, mac_key)) = tokens::find(tx, &proof.token)? else {
        return Ok(Err(format!("enrollment token {shown:?} is unknown")));
    };
    if let Some(why) = token.unusable(now) {
        return Ok(Err(format!("enrollment token {shown} is {why}")));
    }
    if !token.kinds.contains(&hello.kind) {
        return Ok(Err(format!(
            "enrollment token {shown} admits {}, not a {}",
            token
                .kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            hello.kind
        )));
    }
    if !glob(&token.name_pattern, &hello.name) {
        return Ok(Err(format!(
            "enrollment token {shown} admits names {:?}, not this one",
            token.name_pattern
        )));
    }
    if !fleetls_bus::enroll::verify(&mac_key, proof, *agent, key, hello.kind, &hello.name) {
        return Ok(Err(format!(
            "the proof of enrollment token {shown} does not hold for this agent's key, id, kind \
             and name (a copied Hello, or a token not given to this device)"
        )));
    }
    Ok(Ok(token.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::{apply, Event, EventKind, Policy};
    use crate::ops::enroll::{create, CreateRequest};
    use crate::registry::test_support::set_token_expiry;
    use crate::registry::Registry;
    use fleetls_bus::enroll::Token;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        (dir, registry)
    }

    fn policy(rules: Rules) -> Policy {
        Policy {
            parent_key: "sha256:parent".into(),
            enrollment: rules,
            ssl_port_open_since: u64::MAX,
        }
    }

    fn hello(name: &str, kind: AgentKind) -> Hello {
        Hello {
            enroll: None,
            name: name.into(),
            kind,
            version: "1.0.0".into(),
            location: None,
            hostnames: vec![],
            ips: vec![],
            key_fingerprint: None,
            state: Default::default(),
        }
    }

    /// A Hello from a new agent with key `key`, proving `token` if given
    /// (made for `proof_key`, which a copied proof does not match).
    fn says(
        registry: &Registry,
        rules: &Rules,
        name: &str,
        kind: AgentKind,
        key: &str,
        token: Option<(&Token, &str)>,
    ) -> (Uuid, Option<Admission>) {
        let agent = Uuid::new_v4();
        let mut hello = hello(name, kind);
        hello.enroll = token.map(|(t, proof_key)| t.proof(agent, proof_key, kind, name));
        let event = Event {
            message: Uuid::new_v4(),
            agent,
            at: fleetls_proto::now_ms(),
            key: key.into(),
            delivery: 0,
            seq: 1,
            what: EventKind::Hello(hello),
        };
        apply(registry, &[event], None, &policy(rules.clone())).unwrap();
        (agent, registry.agent(&agent).unwrap().map(|a| a.admission))
    }

    fn key(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn token(registry: &Registry, request: CreateRequest) -> Token {
        create(registry, &request).unwrap().token.parse().unwrap()
    }

    #[test]
    fn a_token_accepts_and_nothing_else_does() {
        let (_dir, registry) = registry();
        let rules = Rules::default();
        let token = token(
            &registry,
            CreateRequest {
                uses: Some(2),
                ..Default::default()
            },
        );
        // No token: pending.
        assert_eq!(
            says(&registry, &rules, "a", AgentKind::Child, &key(1), None).1,
            Some(Admission::Pending)
        );
        // A valid proof: accepted, the token counted and named.
        let (admitted, admission) = says(
            &registry,
            &rules,
            "b",
            AgentKind::Child,
            &key(2),
            Some((&token, &key(2))),
        );
        assert_eq!(admission, Some(Admission::Accepted));
        assert_eq!(
            registry
                .agent(&admitted)
                .unwrap()
                .unwrap()
                .enrolled_by
                .as_deref(),
            Some(token.id())
        );
        // A proof made for another key (a copied Hello): pending, recorded.
        assert_eq!(
            says(
                &registry,
                &rules,
                "c",
                AgentKind::Child,
                &key(3),
                Some((&token, &key(9)))
            )
            .1,
            Some(Admission::Pending)
        );
        // A kind the token does not admit: pending.
        assert_eq!(
            says(
                &registry,
                &rules,
                "d",
                AgentKind::LocalParent,
                &key(4),
                Some((&token, &key(4)))
            )
            .1,
            Some(Admission::Pending)
        );
        // An unknown token (never made here): pending.
        let stranger = Token::generate();
        assert_eq!(
            says(
                &registry,
                &rules,
                "e",
                AgentKind::Child,
                &key(5),
                Some((&stranger, &key(5)))
            )
            .1,
            Some(Admission::Pending)
        );
        // The second use, then used up.
        assert_eq!(
            says(
                &registry,
                &rules,
                "f",
                AgentKind::Child,
                &key(6),
                Some((&token, &key(6)))
            )
            .1,
            Some(Admission::Accepted)
        );
        assert_eq!(
            says(
                &registry,
                &rules,
                "g",
                AgentKind::Child,
                &key(7),
                Some((&token, &key(7)))
            )
            .1,
            Some(Admission::Pending)
        );
        let listed = crate::ops::enroll::list(&registry).unwrap();
        assert_eq!(
            (listed[0].info.uses, listed[0].state.as_str()),
            (2, "used up")
        );
        assert_eq!(listed[0].admitted, ["b", "f"]);
        let refused: u64 = registry
            .security_events(100)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "enroll_refused")
            .map(|e| e.count)
            .sum();
        assert_eq!(refused, 4);
    }

    #[test]
    fn an_expired_or_revoked_token_and_a_name_outside_its_pattern_admit_no_one() {
        let (_dir, registry) = registry();
        let rules = Rules::default();
        let named = token(
            &registry,
            CreateRequest {
                name: Some("till-*".into()),
                uses: Some(10),
                ..Default::default()
            },
        );
        assert_eq!(
            says(
                &registry,
                &rules,
                "laptop",
                AgentKind::Child,
                &key(1),
                Some((&named, &key(1)))
            )
            .1,
            Some(Admission::Pending)
        );
        assert_eq!(
            says(
                &registry,
                &rules,
                "till-9",
                AgentKind::Child,
                &key(2),
                Some((&named, &key(2)))
            )
            .1,
            Some(Admission::Accepted)
        );
        crate::ops::enroll::revoke(&registry, named.id()).unwrap();
        assert_eq!(
            says(
                &registry,
                &rules,
                "till-8",
                AgentKind::Child,
                &key(3),
                Some((&named, &key(3)))
            )
            .1,
            Some(Admission::Pending)
        );
        let expired = token(&registry, CreateRequest::default());
        registry
            .with_db(|db| set_token_expiry(db, expired.id(), 1))
            .unwrap();
        assert_eq!(
            says(
                &registry,
                &rules,
                "till-7",
                AgentKind::Child,
                &key(4),
                Some((&expired, &key(4)))
            )
            .1,
            Some(Admission::Pending)
        );
    }

    #[test]
    fn a_taken_or_look_alike_name_waits_for_an_operator_token_or_not() {
        let (_dir, registry) = registry();
        let open = Rules {
            auto_accept: "child:*".parse().unwrap(),
            ..Rules::default()
        };
        let token = token(
            &registry,
            CreateRequest {
                uses: Some(10),
                ..Default::default()
            },
        );
        let (first, admission) = says(&registry, &open, "till-1", AgentKind::Child, &key(1), None);
        assert_eq!(admission, Some(Admission::Accepted));
        // The same name again, open enrollment or a valid token: pending, flagged.
        for (n, token) in [(2, None), (3, Some((&token, &key(3).clone())))] {
            let (squatter, admission) = says(
                &registry,
                &open,
                "till-1",
                AgentKind::Child,
                &key(n),
                token.map(|(t, k)| (t, k.as_str())),
            );
            assert_eq!(admission, Some(Admission::Pending));
            let flag = registry
                .agent(&squatter)
                .unwrap()
                .unwrap()
                .name_flag
                .unwrap();
            assert!(flag.contains(&first.to_string()), "{flag}");
        }
        // A Cyrillic і: looks like till-1.
        let (lookalike, admission) = says(
            &registry,
            &open,
            "t\u{0456}ll-1",
            AgentKind::Child,
            &key(4),
            None,
        );
        assert_eq!(admission, Some(Admission::Pending));
        let flag = registry
            .agent(&lookalike)
            .unwrap()
            .unwrap()
            .name_flag
            .unwrap();
        assert!(
            flag.contains("looks like") && flag.contains("till-1"),
            "{flag}"
        );
        // The token was not spent on them.
        assert_eq!(crate::ops::enroll::list(&registry).unwrap()[0].info.uses, 0);
    }

    #[test]
    fn an_accepted_agent_that_changes_kind_or_name_is_decided_again() {
        let (_dir, registry) = registry();
        let mpos_only = Rules {
            auto_accept: "mpos:*".parse().unwrap(),
            ..Rules::default()
        };
        let (agent, admission) = says(
            &registry,
            &mpos_only,
            "mpos-1",
            AgentKind::Mpos,
            &key(1),
            None,
        );
        assert_eq!(admission, Some(Admission::Accepted));
        // Each Hello above the one before (the replay counter drops a seq
        // not above the last: two Hellos in one millisecond would share one).
        let seq = std::cell::Cell::new(fleetls_proto::now_ms() * 1000);
        let again = |name: &str, kind: AgentKind| {
            seq.set(seq.get() + 1);
            let event = Event {
                message: Uuid::new_v4(),
                agent,
                at: fleetls_proto::now_ms(),
                key: key(1),
                delivery: 0,
                seq: seq.get(),
                what: EventKind::Hello(hello(name, kind)),
            };
            apply(&registry, &[event], None, &policy(mpos_only.clone())).unwrap();
            registry.agent(&agent).unwrap().unwrap()
        };
        // The same identity keeps its admission.
        assert_eq!(
            again("mpos-1", AgentKind::Mpos).admission,
            Admission::Accepted
        );
        // Another kind: decided as a new child would be (pending here).
        let changed = again("mpos-1", AgentKind::Child);
        assert_eq!(changed.admission, Admission::Pending);
        assert_eq!(changed.kind, AgentKind::Child);
        let events = registry.security_events(100).unwrap();
        assert!(
            events.iter().any(
                |e| e.kind == "identity_changed" && e.detail.contains("now says it is a child")
            ),
            "{events:?}"
        );
    }

    #[test]
    fn past_the_cap_a_new_agent_is_refused_and_recorded() {
        let (_dir, registry) = registry();
        let rules = Rules {
            max_pending: 3,
            ..Rules::default()
        };
        for n in 0..3 {
            assert_eq!(
                says(
                    &registry,
                    &rules,
                    &format!("fake-{n}"),
                    AgentKind::Child,
                    &key(n),
                    None
                )
                .1,
                Some(Admission::Pending)
            );
        }
        assert_eq!(
            says(&registry, &rules, "fake-3", AgentKind::Child, &key(3), None).1,
            None
        );
        let counts = registry.security_counts().unwrap();
        assert!(
            counts.contains(&("pending_cap".to_owned(), 1)),
            "{counts:?}"
        );
        // A token still admits: the cap holds back only those who wait.
        let token = token(&registry, CreateRequest::default());
        assert_eq!(
            says(
                &registry,
                &rules,
                "till-1",
                AgentKind::Child,
                &key(9),
                Some((&token, &key(9)))
            )
            .1,
            Some(Admission::Accepted)
        );
    }
}
