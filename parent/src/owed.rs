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

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Transaction};
use tracing::{debug, warn};
use uuid::Uuid;

use fleetls_proto::{AgentKind, CertificatesReady, ToChild};

use crate::app::App;
use crate::broker::Outgoing;
use crate::pki::Pki;
use crate::registry::{Admission, Agent, RegistryError};
use crate::settings::SslSettings;
use crate::shutdown::Shutdown;

/// How long certificate information may go unsettled by an online agent
/// before it is sent again: once its last copy has expired unread
/// ([`fleetls_proto::COMMAND_TTL_MS`]) — a copy still alive is in the
/// agent's queue, or was lost with the broker and then the agent's Hello
/// had it sent again at once. Sooner, a child merely slow to answer (a
/// network-wide renewal of 30,000 children takes minutes) got a second copy
/// and renewed twice: 4,785 extra renewals in one such run at 120 s.
pub const RESEND_AFTER: Duration = Duration::from_millis(fleetls_proto::COMMAND_TTL_MS + 30_000);

/// How often the sweep looks for what is overdue.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Records that `agents` were sent certificate information (`renew`: a
/// new certificate is wanted even where one is held). Until they settle
/// it, it is sent again after their Hello and when overdue.
pub fn owe_certificates(
    tx: &Transaction<'_>,
    agents: &[Uuid],
    renew: bool,
) -> Result<(), RegistryError> {
    let now = fleetls_proto::now_ms() as i64;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO owed_certificates (agent_id, renew, since, sent_at) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT(agent_id) DO UPDATE SET
             renew = max(owed_certificates.renew, excluded.renew), sent_at = excluded.sent_at",
    )?;
    for agent in agents {
        stmt.execute(params![agent.to_string(), renew, now])?;
    }
    Ok(())
}

/// The agent was issued a certificate: nothing more is owed.
pub fn settle(tx: &Transaction<'_>, agent: &Uuid) -> Result<(), RegistryError> {
    tx.prepare_cached("DELETE FROM owed_certificates WHERE agent_id = ?1")?
        .execute(params![agent.to_string()])?;
    Ok(())
}

/// The agent says it holds a certificate (`has_certificate`): when the
/// registry has a valid one for it and no renewal was asked, the
/// information it was sent is settled.
pub fn settle_if_certified(
    tx: &Transaction<'_>,
    agent: &Uuid,
    has_certificate: bool,
) -> Result<(), RegistryError> {
    if has_certificate {
        tx.prepare_cached(
            "DELETE FROM owed_certificates WHERE agent_id = ?1 AND renew = 0
                 AND EXISTS (SELECT 1 FROM certificates WHERE agent_id = ?1 AND revoked = 0)",
        )?
        .execute(params![agent.to_string()])?;
    }
    Ok(())
}

/// Where a child tests its SSL connection: its location's local parent if
/// there is one (among `agents`), else the parent.
pub fn ssl_target(agent: &Agent, agents: &[Agent], settings: &SslSettings) -> (String, u16) {
    if agent.kind == AgentKind::Child {
        let local = agents.iter().find(|a| {
            a.kind == AgentKind::LocalParent
                && a.admission == Admission::Accepted
                && a.location.is_some()
                && a.location == agent.location
        });
        if let Some(local) = local {
            let host = local.hostnames.first().or(local.ips.first());
            if let Some(host) = host {
                return (host.clone(), settings.local_parent_port);
            }
        }
    }
    (settings.ssl_host(), settings.port)
}

/// The certificate information for `agent` ("Send information"):
/// `local_parents` are where its location's SSL port may be.
pub fn certificates_ready(
    pki: &Pki,
    agent: &Agent,
    local_parents: &[Agent],
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

/// What the registry says is owed, for the agents chosen by `which`.
struct Due {
    /// Agents owed certificate information, and whether as a renewal.
    certificates: Vec<(Agent, bool)>,
    /// Campaign steps.
    steps: Vec<Outgoing>,
    /// Local parents among the agents (they get the revocation list).
    local_parents: Vec<Uuid>,
}

/// What agents that just said Hello are still owed.
pub async fn on_hello(app: &Arc<App>, agents: Vec<Uuid>) -> Vec<Outgoing> {
    if agents.is_empty() {
        return Vec::new();
    }
    let registry = app.registry.clone();
    let due = tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| {
            let mut due = Due {
                certificates: Vec::new(),
                steps: Vec::new(),
                local_parents: Vec::new(),
            };
            for agent in &agents {
                let Some(found) = crate::registry::agent_in(tx, agent)? else {
                    continue;
                };
                if found.admission != Admission::Accepted {
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
        })
    })
    .await;
    match due {
        Ok(Ok(due)) => outgoing(app, due),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot read what reconnected agents are owed");
            Vec::new()
        }
        Err(e) => {
            warn!(error = %e, "the owed-commands task failed");
            Vec::new()
        }
    }
}

/// Certificate information overdue for online, accepted agents: sent
/// more than [`RESEND_AFTER`] ago, or at all when `all` (after a start: a
/// parent stopped in the middle of a send does not know what went out).
async fn overdue(app: &Arc<App>, all: bool) -> Result<Vec<Outgoing>, RegistryError> {
    let registry = app.registry.clone();
    let now = fleetls_proto::now_ms() as i64;
    let online_since = now - app.config.offline_after.as_millis() as i64;
    let sent_before = if all {
        i64::MAX
    } else {
        now - RESEND_AFTER.as_millis() as i64
    };
    let due = tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| {
            let ids: Vec<(String, bool)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT o.agent_id, o.renew FROM owed_certificates o
                     JOIN agents a ON a.id = o.agent_id
                     WHERE o.sent_at < ?1 AND a.last_seen >= ?2 AND a.admission = 'accepted'
                     ORDER BY o.sent_at LIMIT 20000",
                )?;
                let rows = stmt.query_map(params![sent_before, online_since], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let mut due = Due {
                certificates: Vec::with_capacity(ids.len()),
                steps: Vec::new(),
                local_parents: Vec::new(),
            };
            for (id, renew) in ids {
                let Ok(id) = id.parse::<Uuid>() else { continue };
                if let Some(agent) = crate::registry::agent_in(tx, &id)? {
                    due.certificates.push((agent, renew));
                }
            }
            mark_sent(tx, due.certificates.iter().map(|(a, _)| &a.id))?;
            Ok(due)
        })
    })
    .await
    .map_err(|e| RegistryError::Corrupt(format!("registry task failed: {e}")))??;
    Ok(outgoing(app, due))
}

fn owed_certificate(tx: &Transaction<'_>, agent: &Uuid) -> Result<Option<bool>, RegistryError> {
    use rusqlite::OptionalExtension;
    Ok(tx
        .prepare_cached("SELECT renew FROM owed_certificates WHERE agent_id = ?1")?
        .query_row(params![agent.to_string()], |row| row.get(0))
        .optional()?)
}

fn mark_sent<'a>(
    tx: &Transaction<'_>,
    agents: impl Iterator<Item = &'a Uuid>,
) -> Result<(), RegistryError> {
    let now = fleetls_proto::now_ms() as i64;
    let mut stmt =
        tx.prepare_cached("UPDATE owed_certificates SET sent_at = ?2 WHERE agent_id = ?1")?;
    for agent in agents {
        stmt.execute(params![agent.to_string(), now])?;
    }
    Ok(())
}

/// The commands for what is due: certificate information needs the CA and
/// the settings, the revocation list its file.
fn outgoing(app: &App, due: Due) -> Vec<Outgoing> {
    let mut out = due.steps;
    if !due.certificates.is_empty() {
        if let Some(pki) = app.pki() {
            let settings = app.settings();
            let local_parents = match local_parents(app) {
                Ok(found) => found,
                Err(e) => {
                    warn!(error = %e, "cannot list the local parents; certificate information waits");
                    Vec::new()
                }
            };
            for (agent, renew) in &due.certificates {
                out.push(Outgoing {
                    agent: agent.id,
                    body: certificates_ready(&pki, agent, &local_parents, &settings, *renew),
                    re: None,
                });
            }
        }
    }
    if !due.local_parents.is_empty() {
        let path = crate::layout::Layout::new(&app.config.data_dir)
            .certificate(crate::layout::CertFile::Crl);
        if let Ok(crl_pem) = std::fs::read_to_string(&path) {
            for agent in due.local_parents {
                out.push(Outgoing {
                    agent,
                    body: ToChild::CrlUpdated(fleetls_proto::CrlUpdated {
                        crl_pem: crl_pem.clone(),
                    }),
                    re: None,
                });
            }
        }
    }
    out
}

/// The accepted local parents (few: one per bigger site).
fn local_parents(app: &App) -> Result<Vec<Agent>, RegistryError> {
    Ok(app
        .registry
        .agents_of_kind(AgentKind::LocalParent)?
        .into_iter()
        .filter(|a| a.admission == Admission::Accepted)
        .collect())
}

/// Sends overdue certificate information every [`SWEEP_EVERY`] until
/// `shutdown`; the first time it is connected, everything still owed.
pub async fn run(app: Arc<App>, mut shutdown: Shutdown) {
    let mut started = true;
    loop {
        let wait = if started {
            Duration::from_secs(1)
        } else {
            SWEEP_EVERY
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(channel) = app.channel() else {
            continue;
        };
        let all = std::mem::take(&mut started);
        match overdue(&app, all).await {
            Ok(due) if due.is_empty() => {}
            Ok(due) => {
                debug!(
                    count = due.len(),
                    "sending overdue certificate information again"
                );
                if let Err(e) = crate::broker::send_all(&channel, &app.signing_key, due).await {
                    warn!(error = %e, "sending overdue certificate information failed; will retry");
                }
            }
            Err(e) => warn!(error = %e, "cannot read what is overdue"),
        }
    }
}
