//! What the children's messages do to the registry: the inbound path.
//!
//! The service consumes `fleetls.parent` in batches; [`check`] takes each
//! delivery apart (size, encoding, direction, signature, fields) and turns
//! it into an [`Event`], and [`apply`] writes a batch in one transaction:
//! the key pinned for each agent and its admission first, then its replay
//! counter (a message whose `seq` is not above the last one handled for
//! its agent is a redelivery or a replay, and changes nothing), then what
//! the message says — calling the registry (storage) and the campaign
//! engine below it, which return what to send. Nothing below calls back up.

use fleetls_proto::{
    AgentState, BrokerSwitchReport, Directed, Envelope, Hello, StepReport, SwitchReport, ToParent,
};
use lapin::message::Delivery;

use rusqlite::Transaction;
use uuid::Uuid;

mod csr;

pub use csr::CaSigner;

use crate::broker::Outgoing;
use crate::campaign::ChildStep;
use crate::pki::Issued;
use crate::registry::{agent_in, agents, replay, security};
use crate::registry::{record_security, Agent, Registry, RegistryError};

/// One change to apply, from one message.
#[derive(Debug, Clone)]
pub struct Event {
    /// The message id (answers name it).
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
    /// The agent's replay counter on it (never 0: checked on reading): it
    /// is handled only when above the last one handled for the agent.
    pub seq: u64,
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
    /// Messages dropped because their `seq` was not above their agent's
    /// counter: redeliveries and replays, acked and otherwise ignored.
    pub replayed: u64,
    /// Agents whose state report came while presence counted them not
    /// connected: their queue is looked at again. On RabbitMQ 3.10 a quorum
    /// queue whose leader does not answer within 250 ms (a busy cluster, a
    /// node just lost) says it has no consumer; an agent that still
    /// consumes there causes no new event, so without this it would stay
    /// offline until it reconnects.
    pub heard_absent: Vec<Uuid>,
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
    /// Who is admitted without an operator (tokens, open enrollment, the
    /// cap on pending agents).
    pub enrollment: crate::enrollment::Rules,
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

impl EventKind {
    /// The body kind it came from, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            EventKind::Hello(_) => "Hello",
            EventKind::Heartbeat(_) => "Heartbeat",
            EventKind::Csr(_) => "Csr",
            EventKind::Refused(..) => "Refused",
            EventKind::StepReport(_) => "StepReport",
            EventKind::SwitchReport(_) => "SwitchReport",
            EventKind::BrokerSwitchReport(_) => "BrokerSwitchReport",
        }
    }
}

/// Signs CSRs for [`apply`] (the CA, when one exists).
pub trait Signer {
    /// Signs `csr` for `agent`, or says why not.
    fn sign(&self, csr: &str, agent: &Agent) -> Result<Issued, String>;
}

/// Applies a batch of events in one transaction, in order. First, each
/// message must be signed by the key pinned for its agent (a new agent's
/// Hello pins the key it is signed with); what fails that is refused,
/// recorded as a security event, and returned in [`Applied::rejected`] to
/// be dead-lettered. Then its `seq` must be above the agent's replay
/// counter, as the transaction has it so far (two messages of one agent in
/// a batch: the second is compared with the first): else it is a
/// redelivery or a replay, changes nothing and is counted in
/// [`Applied::replayed`]. A message handled moves the counter to its `seq`.
pub fn apply(
    registry: &Registry,
    events: &[Event],
    signer: Option<&dyn Signer>,
    policy: &Policy,
) -> Result<Applied, RegistryError> {
    registry.with_tx(|tx| {
        let mut applied = Applied::default();
        for event in events {
            apply_one(tx, event, signer, policy, &mut applied)?;
        }
        Ok(applied)
    })
}

/// When a message is applied: by the parent's clock and by the agent's.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Now, by the parent's clock (ms): online/offline follows it, not the
    /// sender's.
    at: i64,
    /// When the agent sent it (ms), by its own clock, but never further
    /// ahead than the parent's: which of an agent's reports is newest
    /// follows this (`state_at`). A child whose clock ran a day ahead, then
    /// was set right, would otherwise have every later report counted as
    /// older and its state frozen.
    reported: i64,
}

impl Clock {
    fn of(event: &Event) -> Clock {
        let at = fleetls_proto::now_ms() as i64;
        Clock {
            at,
            reported: (event.at as i64).min(at + MAX_AHEAD_MS),
        }
    }
}

/// Applies one event of a batch, inside its transaction.
fn apply_one(
    tx: &Transaction<'_>,
    event: &Event,
    signer: Option<&dyn Signer>,
    policy: &Policy,
    applied: &mut Applied,
) -> Result<(), RegistryError> {
    if let Err((reason, security)) = authenticate(tx, event)? {
        if let Some(kind) = security {
            record_security(tx, Some(&event.agent), kind, &reason)?;
        }
        applied.rejected.push((event.delivery, reason));
        return Ok(());
    }
    let counter = replay::counter(tx, &event.agent)?;
    if let Some(counter) = &counter {
        if !counter.fresh(event.seq) {
            let last = counter.last;
            // A redelivery's answer, if one was lost, is sent again by what
            // the registry says is owed, or the agent asks again.
            tracing::debug!(agent = %event.agent, seq = event.seq, last_seq = last, kind = event.what.kind(),
                "a message not above its agent's replay counter was dropped (a redelivery or a replay)");
            applied.replayed += 1;
            return Ok(());
        }
    }
    handle(tx, event, signer, policy, applied)?;
    // The counter read above, unless this message registered the agent.
    replay::advance(tx, &event.agent, event.seq, counter)
}

/// What an authentic, new message does.
fn handle(
    tx: &Transaction<'_>,
    event: &Event,
    signer: Option<&dyn Signer>,
    policy: &Policy,
    applied: &mut Applied,
) -> Result<(), RegistryError> {
    let clock = Clock::of(event);
    match &event.what {
        EventKind::Hello(hello) => on_hello(tx, event, hello, clock, policy, applied),
        EventKind::Heartbeat(state) => on_heartbeat(tx, event, state, clock, policy, applied),
        EventKind::StepReport(report) => {
            // A test begun before this parent's SSL port opened says
            // nothing about the child (the port may have gone with the
            // parent before it): when it began, not when it was sent.
            let began = report.started_at.map_or(event.at, |t| t.min(event.at));
            crate::campaign::on_report(
                tx,
                event.agent,
                report,
                began,
                policy.ssl_port_open_since,
                &mut applied.outgoing,
            )?;
            Ok(())
        }
        EventKind::SwitchReport(report) => on_switch_report(tx, event, report, clock),
        EventKind::BrokerSwitchReport(report) => on_broker_switch_report(tx, event, report, clock),
        EventKind::Refused(reason, true) => {
            record_claim(tx, &event.agent, "forged_command", reason)
        }
        EventKind::Refused(reason, false) => {
            agents::note_refusal(tx, &event.agent, reason, clock.at)
        }
        EventKind::Csr(pem) => csr::on_csr(tx, event, pem, signer, clock, applied),
    }
}

/// A Hello: enrollment decides whether the agent is admitted (refused:
/// dead-lettered), then its row, its token, its name, what it trusts and
/// which parent key it obeys are recorded, and what it was owed settled.
fn on_hello(
    tx: &Transaction<'_>,
    event: &Event,
    hello: &Hello,
    clock: Clock,
    policy: &Policy,
    applied: &mut Applied,
) -> Result<(), RegistryError> {
    let before = agent_in(tx, &event.agent)?;
    let verdict = crate::enrollment::decide(
        tx,
        &event.agent,
        &event.key,
        hello,
        before.as_ref(),
        &policy.enrollment,
        clock.at as u64,
    )?;
    let (admission, token) = match verdict {
        crate::enrollment::Verdict::Admit { admission, token } => (admission, token),
        crate::enrollment::Verdict::Refuse(why) => {
            applied.rejected.push((event.delivery, why));
            return Ok(());
        }
    };
    agents::register(
        tx,
        &event.agent,
        hello,
        &event.key,
        admission,
        clock.at,
        clock.reported,
    )?;
    if let Some(token) = &token {
        crate::registry::tokens::mark_enrolled(tx, &event.agent, token)?;
    }
    let flag = crate::enrollment::name_flag(tx, &event.agent, &hello.name)?;
    crate::enrollment::mark_name(tx, &event.agent, &hello.name, flag.as_deref())?;
    agents::note_trust(tx, &event.agent, &hello.state.trusted_cas)?;
    note_parent_key(
        tx,
        &event.agent,
        before.and_then(|b| b.parent_key),
        &hello.state.parent_key,
        policy,
    )?;
    crate::owed::settle_if_certified(tx, &event.agent, hello.state.has_certificate)?;
    applied.greeted.push(event.agent);
    Ok(())
}

/// A heartbeat: the agent was heard, and the state it reports is kept if
/// it is the newest; one counted not connected is looked at again.
fn on_heartbeat(
    tx: &Transaction<'_>,
    event: &Event,
    state: &AgentState,
    clock: Clock,
    policy: &Policy,
    applied: &mut Applied,
) -> Result<(), RegistryError> {
    let (before, present) = agents::report_basis(tx, &event.agent)?.unwrap_or((None, true));
    if !present {
        applied.heard_absent.push(event.agent);
    }
    agents::report_state(tx, &event.agent, clock.at, state, clock.reported)?;
    note_parent_key(tx, &event.agent, before, &state.parent_key, policy)?;
    crate::owed::settle_if_certified(tx, &event.agent, state.has_certificate)?;
    agents::note_trust(tx, &event.agent, &state.trusted_cas)
}

/// The result of "Use SSL connection": the agent's state, and its turn in
/// the campaign.
fn on_switch_report(
    tx: &Transaction<'_>,
    event: &Event,
    report: &SwitchReport,
    clock: Clock,
) -> Result<(), RegistryError> {
    if report.ok {
        agents::mark_ssl(tx, &event.agent, clock.reported)?;
    }
    crate::campaign::on_single_report(
        tx,
        event.agent,
        report.campaign,
        ChildStep::UseSsl,
        report.ok,
        &report.message,
    )?;
    Ok(())
}

/// The result of "Use SSL connection for RabbitMQ": the agent's state, and
/// its turn in the campaign.
fn on_broker_switch_report(
    tx: &Transaction<'_>,
    event: &Event,
    report: &BrokerSwitchReport,
    clock: Clock,
) -> Result<(), RegistryError> {
    if report.tls {
        agents::mark_broker_tls(tx, &event.agent, clock.reported)?;
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
        ChildStep::UseBrokerTls,
        report.tls,
        &message,
    )?;
    Ok(())
}

fn authenticate(
    tx: &Transaction<'_>,
    event: &Event,
) -> Result<Result<(), (String, Option<&'static str>)>, RegistryError> {
    if let Some(reason) = security::ban_reason(tx, &event.key)? {
        return Ok(Err((
            format!("banned_key: this agent's key was {reason}; it cannot register again"),
            Some("banned_key"),
        )));
    }
    let pinned = agents::pinned_key(tx, &event.agent)?;
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
                "impersonation: signed by key {}, \
                 not by the key pinned for agent {} at its registration",
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
    tx: &Transaction<'_>,
    agent: &Uuid,
    before: Option<String>,
    now: &Option<String>,
    policy: &Policy,
) -> Result<(), RegistryError> {
    // Sticky: only an operator clears it (`agents accept`), after the
    // agent was reinstalled with the right key.
    agents::note_compromised(
        tx,
        agent,
        now.as_ref().is_some_and(|k| *k != policy.parent_key),
    )?;
    if let Some(now) = now {
        if *now != policy.parent_key && before.as_ref() != Some(now) {
            record_claim(
                tx,
                agent,
                "compromised",
                &format!(
                    "the agent pinned parent key {now}, not this parent's {}: \
                     it obeys someone else; reinstall it with --parent-key",
                    policy.parent_key
                ),
            )?;
        }
    }
    Ok(())
}

/// What an agent says happened to it (a forged command it was sent, a
/// parent key it obeys) is recorded under its kind only from an accepted
/// agent; from one not accepted it is kept as `unadmitted_claim`. Anyone
/// with the broker's credentials can register a thousand pending agents
/// that all report the same: they must not push the real `compromised` or
/// `forged_command` events out of the kept record.
fn record_claim(
    tx: &Transaction<'_>,
    agent: &Uuid,
    kind: &str,
    detail: &str,
) -> Result<(), RegistryError> {
    if agents::admission_in(tx, agent)? == Some(crate::admission::Admission::Accepted) {
        record_security(tx, Some(agent), kind, detail)
    } else {
        record_security(
            tx,
            Some(agent),
            "unadmitted_claim",
            &format!("{kind} (from an agent not accepted): {detail}"),
        )
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
    check_seq(envelope.seq).map_err(|reason| Refusal {
        reason,
        agent: Some(envelope.from),
        security: None,
    })?;
    to_event(envelope, key.hex(), index).map_err(|reason| Refusal {
        reason,
        agent: None,
        security: None,
    })
}

/// Why a message's replay counter cannot be used: missing (0, an agent of
/// a release before it, whose messages could be replayed for ever) or
/// beyond what the registry stores.
fn check_seq(seq: u64) -> Result<(), String> {
    if seq == 0 {
        return Err(
            "invalid_field: seq is missing (or 0): every message to the parent \
             carries its agent's replay counter; this agent runs a release older than \
             the parent's: upgrade it"
                .into(),
        );
    }
    if i64::try_from(seq).is_err() {
        return Err(format!(
            "invalid_field: seq {seq} is above 2^63-1, the most the registry keeps"
        ));
    }
    Ok(())
}

/// Why a command sent to the parent is dead-lettered.
fn wrong_direction(kind: &str) -> String {
    format!("wrong_direction: {kind} is a parent → child message and cannot be sent to the parent")
}

/// The registry change a message asks for (`None`: nothing to record), or
/// why it must be dead-lettered.
fn to_event(envelope: Envelope, key: String, delivery: usize) -> Result<Option<Event>, String> {
    let Envelope {
        id,
        from,
        at,
        seq,
        body,
        ..
    } = envelope;
    let event = |what| {
        Ok(Some(Event {
            message: id,
            agent: from,
            at,
            key,
            delivery,
            seq,
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

#[cfg(test)]
mod tests {
    use super::check_seq;

    #[test]
    fn a_message_without_a_usable_seq_is_refused_naming_it() {
        assert!(check_seq(1).is_ok());
        assert!(check_seq(i64::MAX as u64).is_ok());
        for bad in [0, i64::MAX as u64 + 1, u64::MAX] {
            let why = check_seq(bad).unwrap_err();
            assert!(why.starts_with("invalid_field: seq"), "{bad}: {why}");
        }
    }
}
