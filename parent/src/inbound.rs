//! What the children's messages do to the registry: the inbound path.
//!
//! The service consumes `fleetls.parent` in batches; [`check`] takes each
//! delivery apart (size, encoding, direction, signature, fields) and turns
//! it into an [`Event`], and [`apply`] writes a batch in one transaction:
//! the key pinned for each agent and its admission first, then what the
//! message says — calling the registry (storage) and the campaign engine
//! below it, which return what to send. Nothing below calls back up.

use fleetls_proto::{
    AgentKind, AgentState, BrokerSwitchReport, CertificateIssued, CsrRejected, Directed, Envelope,
    Hello, StepReport, SwitchReport, ToChild, ToParent,
};
use lapin::message::Delivery;

use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

use crate::broker::Outgoing;
use crate::pki::Issued;
use crate::registry::{
    agent_in, json_list, record_security, Admission, Agent, Registry, RegistryError,
};

/// One change to apply, from one message.
#[derive(Debug, Clone)]
pub struct Event {
    /// The message id (for idempotence).
    pub message: Uuid,
    /// The agent that sent it.
    pub agent: Uuid,
    /// When it was sent (ms).
    pub at: u64,
    /// The public key (hex) whose signature the message carries: it must be
    /// the key pinned for `agent` (pinned by its first Hello).
    pub key: String,
    /// Which delivery of the batch it came from (to dead-letter it if the
    /// registry refuses it).
    pub delivery: usize,
    /// What it says.
    pub what: EventKind,
}

/// What a batch came to: the messages to send once committed, and the
/// deliveries refused (by their index) with the reason to dead-letter them.
#[derive(Debug, Default)]
pub struct Applied {
    /// Messages for agents.
    pub outgoing: Vec<Outgoing>,
    /// Deliveries the registry refused, and why.
    pub rejected: Vec<(usize, String)>,
    /// Certificates were superseded by new ones (revoked): the CRL must be
    /// signed again.
    pub revoked: bool,
    /// Agents that said Hello (a first start or any reconnect): they are
    /// sent again what they are still owed (`crate::owed`).
    pub greeted: Vec<Uuid>,
}

/// How far ahead of the parent's clock an agent's report may be dated and
/// still count as that much newer (see `agents.state_at`).
const MAX_AHEAD_MS: i64 = 60 * 1000;

/// What the registry needs to judge a batch besides the messages.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The fingerprint of the parent's own signing key: an agent that
    /// pinned any other is compromised.
    pub parent_key: String,
    /// Which new agents are accepted without an operator.
    pub auto_accept: crate::admission::AutoAccept,
    /// Since when this process's SSL port listens (ms; `u64::MAX` while it
    /// does not): a failed connection to it reported from before then was
    /// made while the port was down and says nothing about the child.
    pub ssl_port_open_since: u64,
}

/// What a message asks the registry to record.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A child introduced itself.
    Hello(Hello),
    /// A child is alive.
    Heartbeat(AgentState),
    /// A child asks for a certificate (PEM CSR).
    Csr(String),
    /// A child refused a command (`true`: a forged one, a security event).
    Refused(String, bool),
    /// The result of a test step.
    StepReport(StepReport),
    /// The result of "Use SSL connection".
    SwitchReport(SwitchReport),
    /// The result of "Use SSL connection for RabbitMQ".
    BrokerSwitchReport(BrokerSwitchReport),
}

/// Signs CSRs for [`Registry::apply`] (the CA, when one exists).
pub trait Signer {
    /// Signs `csr` for `agent`, or says why not.
    fn sign(&self, csr: &str, agent: &Agent) -> Result<Issued, String>;
}

/// Applies a batch of events in one transaction; a message id already
/// applied changes nothing (a CSR seen before gets its stored answer
/// again). First, each message must be signed by the key pinned for
/// its agent (a new agent's Hello pins the key it is signed with);
/// what fails that is refused, recorded as a security event, and
/// returned in [`Applied::rejected`] to be dead-lettered.
pub fn apply(
    registry: &Registry,
    events: &[Event],
    signer: Option<&dyn Signer>,
    policy: &Policy,
) -> Result<Applied, RegistryError> {
    registry.with_tx(|tx| {
    let mut applied = Applied::default();
    let outgoing = &mut applied.outgoing;
    for event in events {
        if let Err((reason, security)) = authenticate(tx, event)? {
            if let Some(kind) = security {
                record_security(tx, Some(&event.agent), kind, &reason)?;
            }
            applied.rejected.push((event.delivery, reason));
            continue;
        }
        let fresh = tx.execute(
            "INSERT OR IGNORE INTO seen_messages (id, at) VALUES (?1, ?2)",
            params![event.message.to_string(), fleetls_proto::now_ms() as i64],
        )?;
        if fresh == 0 {
            if let EventKind::Csr(_) = event.what {
                outgoing.extend(reissue(tx, event)?);
            }
            continue;
        }
        let agent = event.agent.to_string();
        // Online/offline follows the parent's clock, not the sender's.
        let at = fleetls_proto::now_ms() as i64;
        // Which of an agent's reports is newest follows its own clock
        // (state_at), but never further ahead than the parent's: a child
        // whose clock ran a day ahead, then was set right, would otherwise
        // have every later report counted as older and its state frozen.
        let reported = (event.at as i64).min(at + MAX_AHEAD_MS);
        match &event.what {
            EventKind::Hello(hello) => {
                let before = agent_in(tx, &event.agent)?;
                let admission = match &before {
                    None => policy.auto_accept.decide(hello.kind, &hello.name),
                    // Becoming a local parent (server certificates) needs an operator again.
                    Some(b)
                        if hello.kind == AgentKind::LocalParent
                            && b.kind != AgentKind::LocalParent
                            && b.admission == Admission::Accepted =>
                    {
                        Admission::Pending
                    }
                    Some(b) => b.admission,
                };
                tx.execute(
                    "INSERT INTO agents (id, name, kind, version, location, hostnames, ips,
                         key_fingerprint, first_seen, last_seen, has_certificate, ssl, broker_tls,
                         signing_key, admission, parent_key, state_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                     ON CONFLICT(id) DO UPDATE SET
                         name = excluded.name, kind = excluded.kind,
                         version = excluded.version, location = excluded.location,
                         hostnames = excluded.hostnames, ips = excluded.ips,
                         key_fingerprint = excluded.key_fingerprint,
                         last_seen = max(agents.last_seen, excluded.last_seen),
                         has_certificate = iif(excluded.state_at >= agents.state_at,
                             excluded.has_certificate, agents.has_certificate),
                         ssl = iif(excluded.state_at >= agents.state_at, excluded.ssl, agents.ssl),
                         broker_tls = iif(excluded.state_at >= agents.state_at,
                             excluded.broker_tls, agents.broker_tls),
                         signing_key = coalesce(agents.signing_key, excluded.signing_key),
                         admission = excluded.admission, parent_key = excluded.parent_key,
                         state_at = max(agents.state_at, excluded.state_at)",
                    params![
                        agent,
                        hello.name,
                        hello.kind.as_str(),
                        hello.version,
                        hello.location,
                        json_list(&hello.hostnames),
                        json_list(&hello.ips),
                        hello.key_fingerprint,
                        at,
                        hello.state.has_certificate,
                        hello.state.ssl,
                        hello.state.broker_tls,
                        event.key,
                        admission.as_str(),
                        hello.state.parent_key,
                        reported,
                    ],
                )?;
                crate::rotation::note_trust(tx, &event.agent, &hello.state.trusted_cas)?;
                note_parent_key(
                    tx,
                    &event.agent,
                    before.and_then(|b| b.parent_key),
                    &hello.state.parent_key,
                    policy,
                )?;
                crate::owed::settle_if_certified(tx, &event.agent, hello.state.has_certificate)?;
                applied.greeted.push(event.agent);
            }
            EventKind::Heartbeat(state) => {
                let before = agent_in(tx, &event.agent)?.and_then(|b| b.parent_key);
                tx.execute(
                    // Only the newest report (the agent's clock) sets the
                    // state: one sent earlier on another connection may
                    // arrive after it.
                    "UPDATE agents SET last_seen = max(last_seen, ?2),
                         has_certificate = iif(?7 >= state_at, ?3, has_certificate),
                         ssl = iif(?7 >= state_at, ?4, ssl),
                         broker_tls = iif(?7 >= state_at, ?5, broker_tls),
                         parent_key = iif(?7 >= state_at, ?6, parent_key),
                         state_at = max(state_at, ?7)
                     WHERE id = ?1",
                    params![
                        agent,
                        at,
                        state.has_certificate,
                        state.ssl,
                        state.broker_tls,
                        state.parent_key,
                        reported,
                    ],
                )?;
                note_parent_key(tx, &event.agent, before, &state.parent_key, policy)?;
                crate::owed::settle_if_certified(tx, &event.agent, state.has_certificate)?;
                crate::rotation::note_trust(tx, &event.agent, &state.trusted_cas)?;
            }
            EventKind::StepReport(report) => {
                // A test begun before this parent's SSL port opened says
                // nothing about the child (the port may have gone with the
                // parent before it): when it began, not when it was sent.
                let began = report.started_at.map_or(event.at, |t| t.min(event.at));
                crate::campaign::on_report(tx, event.agent, report, began, policy.ssl_port_open_since, outgoing)?;
            }
            EventKind::SwitchReport(report) => {
                if report.ok {
                    tx.execute(
                        "UPDATE agents SET ssl = 1, state_at = max(state_at, ?2) WHERE id = ?1",
                        params![agent, reported],
                    )?;
                }
                crate::campaign::on_single_report(
                    tx,
                    event.agent,
                    report.campaign,
                    "use-ssl",
                    report.ok,
                    &report.message,
                )?;
            }
            EventKind::BrokerSwitchReport(report) => {
                if report.tls {
                    tx.execute(
                        "UPDATE agents SET broker_tls = 1, state_at = max(state_at, ?2) WHERE id = ?1",
                        params![agent, reported],
                    )?;
                }
                let message = match &report.error {
                    None => format!(
                        "Connected to RabbitMQ over {}.",
                        report.protocol.as_deref().unwrap_or("TLS")
                    ),
                    Some(error) => format!("Stayed on plain AMQP: {error}"),
                };
                crate::campaign::on_single_report(
                    tx,
                    event.agent,
                    report.campaign,
                    "use-broker-tls",
                    report.tls,
                    &message,
                )?;
            }
            EventKind::Refused(reason, true) => {
                record_security(tx, Some(&event.agent), "forged_command", reason)?;
            }
            EventKind::Refused(reason, false) => {
                tx.execute(
                    "INSERT INTO refusals (agent_id, reason, at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(agent_id) DO UPDATE SET reason = excluded.reason, at = excluded.at
                     WHERE excluded.at >= refusals.at",
                    params![agent, reason, at],
                )?;
            }
            EventKind::Csr(pem) => {
                let registered = agent_in(tx, &event.agent)?;
                let result = match (registered, signer) {
                    (None, _) => Err("the CSR was refused: this agent is not registered; it must send Hello first".to_owned()),
                    (Some(_), None) => Err("the CSR was refused: the parent has no CA yet; run `fleetls-parent certs generate`".to_owned()),
                    (Some(registered), Some(_)) if registered.admission != Admission::Accepted => Err(format!(
                        "the CSR was refused: this agent is {}; an operator must run `fleetls-parent agents accept {}` first",
                        registered.admission.as_str(),
                        registered.name
                    )),
                    (Some(registered), Some(signer)) => signer.sign(pem, &registered),
                };
                if let Ok(issued) = &result {
                    // A CSR sent again on the same key (its answer was lost
                    // on the way) gets the same certificate, not a second.
                    if let Some(again) = issued_for_key(tx, event, &issued.key)? {
                        crate::owed::settle(tx, &event.agent)?;
                        outgoing.push(again);
                        continue;
                    }
                }
                // A key whose certificate was revoked is never certified
                // again: a child makes a new key for every CSR, so only an
                // old CSR asks for one — a late duplicate (a renewal sent
                // again while the child was slow to answer: seen at 30,000
                // children) or a replay once its message id is forgotten
                // (a day). Certifying it would revoke the child's current
                // certificate, which the child then still uses.
                let result = match result {
                    Ok(issued) => match revoked_key(tx, &event.agent, &issued.key)? {
                        // Superseded by a newer certificate of the same
                        // agent: ignored, unanswered (the child has moved on).
                        Some((serial, reason)) if reason == "superseded" => {
                            tracing::debug!(agent = %event.agent, serial, "a CSR on a key already renewed was ignored (a late duplicate, or a replay)");
                            continue;
                        }
                        Some((serial, reason)) => {
                            let why = format!(
                                "the CSR was refused: this key's certificate (serial {serial}) was revoked ({reason}); \
                                 a certificate needs a new key"
                            );
                            record_security(tx, Some(&event.agent), "revoked_key_csr", &why)?;
                            Err(why)
                        }
                        None => Ok(issued),
                    },
                    Err(e) => Err(e),
                };
                match result {
                    Ok(issued) => {
                        // The certificate it replaces is revoked, superseded.
                        let renewal = crate::registry::revoke_certificates(tx, &event.agent, "superseded")? > 0;
                        if renewal {
                            applied.revoked = true;
                        }
                        tx.execute(
                            "INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, csr_message, chain_pem, key_sha256, ca, renewal)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                            params![
                                issued.serial,
                                agent,
                                issued.subject,
                                issued.not_after,
                                fleetls_proto::now_ms() as i64,
                                event.message.to_string(),
                                issued.chain_pem,
                                issued.key,
                                issued.ca,
                                renewal,
                            ],
                        )?;
                        crate::owed::settle(tx, &event.agent)?;
                        crate::rotation::on_csr_answered(tx, &event.agent, Ok(&issued.ca))?;
                        tx.execute("DELETE FROM refusals WHERE agent_id = ?1", params![agent])?;
                        outgoing.push(Outgoing {
                            agent: event.agent,
                            body: ToChild::CertificateIssued(CertificateIssued {
                                chain_pem: issued.chain_pem,
                                serial: issued.serial,
                                not_after: issued.not_after,
                                ignored: issued.ignored,
                            }),
                            re: Some(event.message),
                        });
                    }
                    Err(reason) => {
                        tx.execute(
                            "INSERT INTO refusals (agent_id, reason, at) VALUES (?1, ?2, ?3)
                             ON CONFLICT(agent_id) DO UPDATE SET reason = excluded.reason, at = excluded.at",
                            params![agent, reason, at],
                        )?;
                        crate::rotation::on_csr_answered(tx, &event.agent, Err(&reason))?;
                        outgoing.push(Outgoing {
                            agent: event.agent,
                            body: ToChild::CsrRejected(CsrRejected { reason }),
                            re: Some(event.message),
                        });
                    }
                }
            }
        }
    }
    Ok(applied)
    })
}

/// Whether `event` is signed by the key pinned for its agent: `Err` with
/// the reason to dead-letter it, and the kind of security event it is
/// (`None`: an ordinary refusal).
#[allow(clippy::type_complexity)]
fn authenticate(
    tx: &rusqlite::Transaction<'_>,
    event: &Event,
) -> Result<Result<(), (String, Option<&'static str>)>, RegistryError> {
    let banned: Option<String> = tx
        .query_row(
            "SELECT reason FROM banned_keys WHERE key = ?1",
            params![event.key],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(reason) = banned {
        return Ok(Err((
            format!("banned_key: this agent's key was {reason}; it cannot register again"),
            Some("banned_key"),
        )));
    }
    let pinned: Option<Option<String>> = tx
        .query_row(
            "SELECT signing_key FROM agents WHERE id = ?1",
            params![event.agent.to_string()],
            |row| row.get(0),
        )
        .optional()?;
    Ok(match pinned {
        None if matches!(event.what, EventKind::Hello(_)) => Ok(()),
        None => Err((
            format!(
                "unknown_agent: agent {} is not registered; it must send Hello first",
                event.agent
            ),
            None,
        )),
        // Registered by a release before signatures: pinned by this Hello.
        Some(None) if matches!(event.what, EventKind::Hello(_)) => Ok(()),
        // Nothing else speaks for it before its Hello pinned a key: else
        // anyone could get a certificate or report results in its name
        // (the agent sends Hello first at every connection).
        Some(None) => Err((
            format!(
                "impersonation: agent {} has no key pinned yet (registered by an older release); \
                 only its Hello may pin one, nothing else is believed before",
                event.agent
            ),
            Some("impersonation"),
        )),
        Some(Some(pinned)) if pinned == event.key => Ok(()),
        Some(Some(_)) => Err((
            format!(
                "impersonation: signed by key {}, not by the key pinned for agent {} at its registration",
                short_key(&event.key),
                event.agent
            ),
            Some("impersonation"),
        )),
    })
}

/// The first 16 hex digits of a key, for messages.
fn short_key(hex: &str) -> String {
    hex.chars().take(16).collect()
}

/// Records a security event when an agent starts reporting a parent key
/// other than the parent's own (it pinned an impostor's key).
fn note_parent_key(
    tx: &rusqlite::Transaction<'_>,
    agent: &Uuid,
    before: Option<String>,
    now: &Option<String>,
    policy: &Policy,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE agents SET compromised = ?2 WHERE id = ?1",
        params![
            agent.to_string(),
            now.as_ref().is_some_and(|k| *k != policy.parent_key)
        ],
    )?;
    if let Some(now) = now {
        if *now != policy.parent_key && before.as_ref() != Some(now) {
            record_security(
                tx,
                Some(agent),
                "compromised",
                &format!(
                    "the agent pinned parent key {now}, not this parent's {}: it obeys someone else; reinstall it with --parent-key",
                    policy.parent_key
                ),
            )?;
        }
    }
    Ok(())
}

/// The agent's valid certificate issued for the public key `key`, if any,
/// as the answer to `event` (a CSR).
fn issued_for_key(
    tx: &rusqlite::Transaction<'_>,
    event: &Event,
    key: &str,
) -> Result<Option<Outgoing>, RegistryError> {
    let row = tx
        .query_row(
            "SELECT serial, not_after, chain_pem FROM certificates
             WHERE agent_id = ?1 AND key_sha256 = ?2 AND revoked = 0",
            params![event.agent.to_string(), key],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    Ok(
        row.map(|(serial, not_after, chain_pem)| {
            issued_answer(event, serial, not_after, chain_pem)
        }),
    )
}

/// The serial and revocation reason of the newest revoked certificate of
/// `agent` on the key `key` (`sha256:HEX`), if one exists.
fn revoked_key(
    tx: &rusqlite::Transaction<'_>,
    agent: &uuid::Uuid,
    key: &str,
) -> Result<Option<(String, String)>, RegistryError> {
    Ok(tx
        .query_row(
            "SELECT serial, coalesce(revoke_reason, 'unspecified') FROM certificates
             WHERE agent_id = ?1 AND key_sha256 = ?2 AND revoked = 1
             ORDER BY issued_at DESC LIMIT 1",
            params![agent.to_string(), key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

fn issued_answer(event: &Event, serial: String, not_after: i64, chain_pem: String) -> Outgoing {
    Outgoing {
        agent: event.agent,
        body: ToChild::CertificateIssued(CertificateIssued {
            chain_pem,
            serial,
            not_after,
            ignored: Vec::new(),
        }),
        re: Some(event.message),
    }
}

/// The answer to a CSR seen before: the certificate issued for it, if any.
fn reissue(
    tx: &rusqlite::Transaction<'_>,
    event: &Event,
) -> Result<Option<Outgoing>, RegistryError> {
    let row = tx
        .query_row(
            "SELECT serial, not_after, chain_pem FROM certificates WHERE csr_message = ?1",
            params![event.message.to_string()],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?;
    Ok(
        row.map(|(serial, not_after, chain_pem)| {
            issued_answer(event, serial, not_after, chain_pem)
        }),
    )
}

/// Signs CSRs with the CA for the registry. A local parent's server names
/// are only those the operator allowed; the rest are left out and listed.
pub struct CaSigner {
    /// The CA.
    pub pki: std::sync::Arc<crate::pki::Pki>,
    /// Names local parents may have.
    pub names: Vec<String>,
    /// IP addresses local parents may have.
    pub ips: Vec<String>,
}

impl Signer for CaSigner {
    fn sign(&self, csr: &str, agent: &Agent) -> Result<crate::pki::Issued, String> {
        if agent.kind != fleetls_proto::AgentKind::LocalParent {
            return self.pki.sign_csr(csr, agent.id, agent.kind, &[], &[]);
        }
        let (names, mut left_out) =
            crate::admission::allowed_server_names(&agent.hostnames, &self.names);
        let (ips, ips_out): (Vec<String>, Vec<String>) = agent
            .ips
            .iter()
            .cloned()
            .partition(|ip| self.ips.contains(ip));
        left_out.extend(ips_out);
        let mut issued = self.pki.sign_csr(csr, agent.id, agent.kind, &names, &ips)?;
        issued.ignored.extend(left_out.into_iter().map(|n| {
            format!("{n}: not among the names allowed for local parents (--local-parent-names / --local-parent-ips)")
        }));
        Ok(issued)
    }
}

/// Why a delivery is dead-lettered before it reaches the registry.
pub struct Refusal {
    /// Why, for the `x-fleetls-reason` header.
    pub reason: String,
    /// The agent it claims to come from, when it could be read.
    pub agent: Option<uuid::Uuid>,
    /// The kind of security event it is (`None`: merely undecodable).
    pub security: Option<&'static str>,
}

/// The stateless checks of one delivery: its size, its signature, its
/// encoding, its direction and its fields. Whether the key that signed is
/// the one pinned for the agent is the registry's check.
pub fn check(delivery: &Delivery, index: usize) -> Result<Option<Event>, Refusal> {
    let data = &delivery.data;
    if data.len() > fleetls_proto::MAX_PAYLOAD {
        return Err(Refusal {
            reason: format!(
                "too_large: {} bytes, more than the {} a fleetls message may have",
                data.len(),
                fleetls_proto::MAX_PAYLOAD
            ),
            agent: None,
            security: Some("too_large"),
        });
    }
    let key = fleetls_bus::seal::signer(data, delivery.properties.headers().as_ref());
    let mut envelope = match fleetls_proto::decode(data) {
        Ok(envelope) => envelope,
        Err(e) => {
            return Err(Refusal {
                reason: format!("{}: {e}", e.code()),
                agent: None,
                security: None,
            })
        }
    };
    // What is not a child's message at all is said first, signed or not.
    if !envelope.body.is_to_parent() {
        return Err(Refusal {
            reason: wrong_direction(envelope.body.kind()),
            agent: None,
            security: None,
        });
    }
    let key = key.map_err(|e| Refusal {
        reason: format!("forged: {e}; every message must be signed by its agent's key"),
        agent: Some(envelope.from),
        security: Some(match e {
            fleetls_bus::seal::SealError::Unsigned => "unsigned",
            _ => "bad_signature",
        }),
    })?;
    crate::admission::check_inbound(&mut envelope).map_err(|reason| Refusal {
        reason,
        agent: Some(envelope.from),
        security: Some("invalid_input"),
    })?;
    to_event(envelope, key.hex(), index).map_err(|reason| Refusal {
        reason,
        agent: None,
        security: None,
    })
}

/// Why a command sent to the parent is dead-lettered.
fn wrong_direction(kind: &str) -> String {
    format!("wrong_direction: {kind} is a parent → child message and cannot be sent to the parent")
}

/// The registry change a message asks for (`None`: nothing to record), or
/// why it must be dead-lettered.
fn to_event(envelope: Envelope, key: String, delivery: usize) -> Result<Option<Event>, String> {
    let Envelope {
        id, from, at, body, ..
    } = envelope;
    let event = |what| {
        Ok(Some(Event {
            message: id,
            agent: from,
            at,
            key,
            delivery,
            what,
        }))
    };
    let kind = body.kind();
    match body.directed() {
        Directed::ToParent(message) => match message {
            ToParent::Hello(hello) => event(EventKind::Hello(hello)),
            ToParent::Heartbeat(beat) => event(EventKind::Heartbeat(beat.state)),
            ToParent::Csr(csr) => event(EventKind::Csr(csr.pem)),
            ToParent::Refused(refused) => event(EventKind::Refused(refused.reason, refused.forged)),
            ToParent::StepReport(report) => event(EventKind::StepReport(report)),
            ToParent::SwitchReport(report) => event(EventKind::SwitchReport(report)),
            ToParent::BrokerSwitchReport(report) => event(EventKind::BrokerSwitchReport(report)),
        },
        Directed::ToChild(_) => Err(wrong_direction(kind)),
    }
}
