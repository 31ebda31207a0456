//! What each agent is still owed, read from the registry. The broker is the
//! wire, not the record: the parent's commands are transient (they expire
//! in the agent's queue and do not survive a broker restart), so whatever
//! is lost on the way is sent again from here —
//! - after an agent's `Hello` (its first start or any reconnect): the
//!   certificate information it has not settled, the campaign step it is
//!   acting on, and, for a local parent, the current revocation list;
//! - by a sweep, for certificate information sent more than
//!   [`RESEND_AFTER`] ago (its copy expired) to an online agent that has
//!   not settled it.
//!
//! Campaign steps not answered by half their time are sent again by the
//! campaign engine itself (`campaign::tick`). A re-send is harmless: the
//! child answers a duplicate from what it holds, and a CSR on a key the
//! parent already certified gets the same certificate back.
//!
//! Here: what is owed, as functions over a registry transaction
//! ([`after_hello`], [`overdue`]; the registry records it,
//! `registry::owed`) and the commands made of it ([`certificates_ready`]). The task `tasks::owed` sends them.

use std::time::Duration;

use rusqlite::Transaction;
use uuid::Uuid;

use fleetls_proto::{AgentKind, CertificatesReady, ToChild};

use crate::broker::Outgoing;
use crate::pki::Pki;
use crate::registry::owed::{mark_sent, owed_certificate};
use crate::registry::{Admission, Agent, RegistryError};
use crate::settings::SslSettings;

pub use crate::registry::owed::{owe_certificates, settle, settle_if_certified};

/// How long certificate information may go unsettled by an online agent
/// before it is sent again: once its last copy has expired unread
/// ([`fleetls_proto::COMMAND_TTL_MS`]) — a copy still alive is in the
/// agent's queue, or was lost with the broker and then the agent's Hello
/// had it sent again at once. Sooner, a child merely slow to answer (a
/// network-wide renewal of 30,000 children takes minutes) got a second copy
/// and renewed twice: 4,785 extra renewals in one such run at 120 s.
pub const RESEND_AFTER: Duration = Duration::from_millis(fleetls_proto::COMMAND_TTL_MS + 30_000);

/// Where each location's children test their SSL connection when it has a
/// local parent: built once from a list of agents, so that a sweep over a
/// whole network looks each child's location up instead of reading the
/// list again for every child (at 30,000 agents that was 900 million
/// comparisons per `certs send`).
#[derive(Debug, Default)]
pub struct LocalParents {
    by_location: std::collections::HashMap<String, String>,
}

impl LocalParents {
    /// The accepted, uncompromised local parents among `agents` that have a
    /// location and a name or address to be reached at; where a location
    /// has several, the first in `agents` order.
    pub fn of(agents: &[Agent]) -> Self {
        let mut by_location = std::collections::HashMap::new();
        for a in agents {
            if a.kind != AgentKind::LocalParent
                || a.admission != Admission::Accepted
                || a.compromised
            {
                continue;
            }
            let (Some(location), Some(host)) = (&a.location, a.hostnames.first().or(a.ips.first()))
            else {
                continue;
            };
            by_location
                .entry(location.clone())
                .or_insert_with(|| host.clone());
        }
        LocalParents { by_location }
    }
}

/// Where a child tests its SSL connection: its location's local parent if
/// there is one (in `local`), else the parent.
pub fn ssl_target(agent: &Agent, local: &LocalParents, settings: &SslSettings) -> (String, u16) {
    if agent.kind == AgentKind::Child {
        if let Some(host) = agent
            .location
            .as_ref()
            .and_then(|location| local.by_location.get(location))
        {
            return (host.clone(), settings.local_parent_port);
        }
    }
    (settings.ssl_host(), settings.port)
}

/// The certificate information for `agent` ("Send information"):
/// `local_parents` are where its location's SSL port may be.
pub fn certificates_ready(
    pki: &Pki,
    agent: &Agent,
    local_parents: &LocalParents,
    settings: &SslSettings,
    renew: bool,
) -> ToChild {
    let (ssl_host, ssl_port) = ssl_target(agent, local_parents, settings);
    ToChild::CertificatesReady(CertificatesReady {
        ca_chain_pem: pki.ca_chain_pem.clone(),
        ca_fingerprint: pki.root_fingerprint.clone(),
        ssl_host,
        ssl_port,
        serve_port: (agent.kind == AgentKind::LocalParent).then_some(settings.local_parent_port),
        renew,
        tls: (agent.kind == AgentKind::LocalParent).then(|| settings.tls_policy()),
        trust_pem: Some(pki.trust_pem.clone()),
    })
}

/// What the registry says is owed to some agents.
#[derive(Debug, Default)]
pub struct Due {
    /// Agents owed certificate information, and whether as a renewal.
    pub certificates: Vec<(Agent, bool)>,
    /// Campaign steps.
    pub steps: Vec<Outgoing>,
    /// Local parents among the agents (they get the revocation list).
    pub local_parents: Vec<Uuid>,
}

/// What agents that just said Hello are still owed (accepted ones only),
/// recorded as sent now.
pub fn after_hello(tx: &Transaction<'_>, agents: &[Uuid]) -> Result<Due, RegistryError> {
    let mut due = Due::default();
    for agent in agents {
        let Some(found) = crate::registry::agent_in(tx, agent)? else {
            continue;
        };
        if found.admission != Admission::Accepted || found.compromised {
            continue;
        }
        if found.kind == AgentKind::LocalParent {
            due.local_parents.push(found.id);
        }
        if let Some(renew) = owed_certificate(tx, agent)? {
            due.certificates.push((found, renew));
        }
        due.steps
            .extend(crate::campaign::acting_command(tx, *agent)?);
    }
    mark_sent(tx, due.certificates.iter().map(|(a, _)| &a.id))?;
    Ok(due)
}

/// Certificate information sent before `sent_before` (ms) and not settled
/// by accepted agents seen since `online_since` (ms), recorded as sent now.
pub fn overdue(
    tx: &Transaction<'_>,
    sent_before: i64,
    online_since: i64,
) -> Result<Due, RegistryError> {
    let ids = crate::registry::owed::overdue(tx, sent_before, online_since)?;
    let mut due = Due {
        certificates: Vec::with_capacity(ids.len()),
        steps: Vec::new(),
        local_parents: Vec::new(),
    };
    for (id, renew) in ids {
        if let Some(agent) = crate::registry::agent_in(tx, &id)? {
            due.certificates.push((agent, renew));
        }
    }
    mark_sent(tx, due.certificates.iter().map(|(a, _)| &a.id))?;
    Ok(due)
}
