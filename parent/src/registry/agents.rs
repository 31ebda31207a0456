//! The agents table: each agent's row (what its Hello said, the state its
//! reports say, when it was last heard, its admission and the key pinned
//! for it), and its last refusal. Inbound writes the rows, one message at
//! a time, inside the batch's transaction; operators' decisions (accept,
//! reject, exclude, delete) are written here too.

use fleetls_proto::{AgentKind, AgentState, Hello};
use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;
use uuid::Uuid;

use super::certificates::revoke_certificates;
use super::security::{ban_key, lift_ban};
use super::{Admission, Registry, RegistryError};

/// An agent as the registry knows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Agent {
    /// Its id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Reported version.
    pub version: String,
    /// Site.
    pub location: Option<String>,
    /// DNS names it reported.
    pub hostnames: Vec<String>,
    /// IP addresses it reported.
    pub ips: Vec<String>,
    /// When it first registered (ms).
    pub first_seen: u64,
    /// When it was last heard (ms).
    pub last_seen: u64,
    /// It holds a certificate.
    pub has_certificate: bool,
    /// It is in SSL mode.
    pub ssl: bool,
    /// It says its broker connection is AMQPS.
    pub broker_tls: bool,
    /// Whether it may have certificates and take part in campaigns.
    pub admission: Admission,
    /// The key (hex) pinned for it at its first Hello (`None`: registered
    /// by a release before signatures; pinned at its next Hello).
    pub signing_key: Option<String>,
    /// The parent key fingerprint it says it pinned.
    pub parent_key: Option<String>,
    /// Kept on plain AMQP by an operator's decision, and why (`None`:
    /// included): it takes part in no campaign and no switch.
    pub excluded: Option<String>,
    /// What is wrong with its name: taken by another accepted agent, or
    /// printing like another's (`None`: nothing).
    pub name_flag: Option<String>,
    /// The id of the enrollment token that admitted it, if one did.
    pub enrolled_by: Option<String>,
    /// It consumes its queue now, as the broker says (`crate::tasks::presence`).
    pub present: bool,
    /// COMPROMISED: it said it obeys another parent key. It is sent nothing
    /// (no certificate, no campaign step) until an operator accepts it again.
    pub compromised: bool,
}

impl Registry {
    /// The last refusal of every agent that has one: (agent, reason, at ms).
    pub fn refusals(
        &self,
    ) -> Result<std::collections::HashMap<Uuid, (String, u64)>, RegistryError> {
        let db = self.lock();
        let mut stmt = db.prepare_cached("SELECT agent_id, reason, at FROM refusals")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (id, reason, at) = row?;
            if let Ok(id) = id.parse() {
                out.insert(id, (reason, at as u64));
            }
        }
        Ok(out)
    }

    /// Sets an agent's admission. Rejecting bans its key (it cannot register
    /// again under another id) and revokes its certificates; accepting a
    /// rejected agent lifts the ban on its identity key (never on a TLS key
    /// whose certificate was revoked), and clears COMPROMISED and the flag
    /// on its name (the operator looked).
    pub fn set_admission(&self, id: &Uuid, admission: Admission) -> Result<(), RegistryError> {
        self.with_tx(|tx| {
            let id_text = id.to_string();
            tx.prepare_cached("UPDATE agents SET admission = ?2 WHERE id = ?1")?
                .execute(params![id_text, admission.as_str()])?;
            let key = signing_key_of(tx, &id_text)?;
            match admission {
                Admission::Rejected => {
                    if let Some(key) = key {
                        ban_key(tx, &key, id, "rejected by an operator")?;
                    }
                    revoke_certificates(tx, id, "affiliation-changed")?;
                }
                Admission::Accepted => {
                    lift_ban(tx, id)?;
                    // An operator's acceptance clears COMPROMISED: it is
                    // set again at the agent's next report if it still
                    // obeys another parent key.
                    tx.prepare_cached(
                        "UPDATE agents SET compromised = 0, name_flag = NULL WHERE id = ?1",
                    )?
                    .execute(params![id_text])?;
                }
                Admission::Pending => {}
            }
            Ok(())
        })
    }

    /// Revokes every certificate of `agent` and bans its key (a stolen
    /// agent cannot register again); how many certificates.
    pub fn revoke_agent(&self, agent: &Uuid, reason: &str) -> Result<usize, RegistryError> {
        self.with_tx(|tx| {
            let key = signing_key_of(tx, &agent.to_string())?;
            if let Some(key) = key {
                ban_key(tx, &key, agent, &format!("revoked ({reason})"))?;
            }
            revoke_certificates(tx, agent, reason)
        })
    }

    /// Keeps an agent on plain AMQP by an operator's decision (`reason`),
    /// or takes it back into campaigns (`None`).
    pub fn set_excluded(&self, id: &Uuid, reason: Option<&str>) -> Result<(), RegistryError> {
        self.lock().execute(
            "UPDATE agents SET excluded = ?2 WHERE id = ?1",
            params![id.to_string(), reason],
        )?;
        self.mark_changed();
        Ok(())
    }

    /// Deletes an agent: its rows go, its certificates stay on record as
    /// revoked, and its key is banned (a stolen till cannot come back; a
    /// reinstalled one makes a new key).
    pub fn delete_agent(&self, id: &Uuid) -> Result<(), RegistryError> {
        self.with_tx(|tx| {
            let id_text = id.to_string();
            let key = signing_key_of(tx, &id_text)?;
            if let Some(key) = key {
                ban_key(tx, &key, id, "deleted by an operator")?;
            }
            revoke_certificates(tx, id, "cessation-of-operation")?;
            for (table, column) in [
                ("refusals", "agent_id"),
                ("owed_certificates", "agent_id"),
                ("step_results", "agent"),
                ("campaign_children", "agent"),
                ("agents", "id"),
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE {column} = ?1"),
                    params![id_text],
                )?;
            }
            Ok(())
        })?;
        self.mark_changed();
        Ok(())
    }

    /// Revokes every certificate of `agent` and bans its key (a stolen
    /// How many agents have a flag on their name (taken, or printing like
    /// another's).
    pub fn flagged_names(&self) -> Result<u64, RegistryError> {
        Ok(self.lock().query_row(
            "SELECT count(*) FROM agents WHERE name_flag IS NOT NULL",
            [],
            |row| row.get::<_, i64>(0),
        )? as u64)
    }

    /// Every agent, ordered by name.
    pub fn agents(&self) -> Result<Vec<Agent>, RegistryError> {
        let db = self.lock();
        let mut stmt = db.prepare_cached(&format!("{SELECT_AGENT} ORDER BY name, id"))?;
        let rows = stmt.query_map([], row_to_agent)?;
        let mut agents = Vec::new();
        for row in rows {
            agents.push(row??);
        }
        Ok(agents)
    }

    /// Every agent of one kind, ordered by name.
    pub fn agents_of_kind(&self, kind: AgentKind) -> Result<Vec<Agent>, RegistryError> {
        let db = self.lock();
        let mut stmt =
            db.prepare_cached(&format!("{SELECT_AGENT} WHERE kind = ?1 ORDER BY name, id"))?;
        let rows = stmt.query_map(params![kind.as_str()], row_to_agent)?;
        let mut agents = Vec::new();
        for row in rows {
            agents.push(row??);
        }
        Ok(agents)
    }

    /// One agent.
    pub fn agent(&self, id: &Uuid) -> Result<Option<Agent>, RegistryError> {
        let db = self.lock();
        let mut stmt = db.prepare_cached(&format!("{SELECT_AGENT} WHERE id = ?1"))?;
        match stmt
            .query_row(params![id.to_string()], row_to_agent)
            .optional()?
        {
            Some(agent) => Ok(Some(agent?)),
            None => Ok(None),
        }
    }
}

/// The key pinned for an agent (`None`: unknown, or not pinned yet).
fn signing_key_of(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
) -> Result<Option<String>, RegistryError> {
    Ok(tx
        .prepare_cached("SELECT signing_key FROM agents WHERE id = ?1")?
        .query_row(params![id], |row| row.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

/// Whether the agent is shown COMPROMISED (it pinned another parent key).
pub fn is_compromised(tx: &rusqlite::Transaction<'_>, id: &Uuid) -> Result<bool, RegistryError> {
    Ok(tx
        .prepare_cached("SELECT compromised FROM agents WHERE id = ?1")?
        .query_row(params![id.to_string()], |row| row.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
}

/// An agent's admission, read inside a transaction (`None`: not registered).
pub fn admission_in(
    tx: &rusqlite::Transaction<'_>,
    id: &Uuid,
) -> Result<Option<Admission>, RegistryError> {
    let text: Option<String> = tx
        .prepare_cached("SELECT admission FROM agents WHERE id = ?1")?
        .query_row(params![id.to_string()], |row| row.get(0))
        .optional()?;
    text.map(|t| {
        t.parse::<Admission>()
            .map_err(|_| RegistryError::Corrupt(format!("admission {t:?}")))
    })
    .transpose()
}

/// One agent, read inside a transaction.
pub fn agent_in(tx: &rusqlite::Transaction<'_>, id: &Uuid) -> Result<Option<Agent>, RegistryError> {
    let mut stmt = tx.prepare_cached(&format!("{SELECT_AGENT} WHERE id = ?1"))?;
    match stmt
        .query_row(params![id.to_string()], row_to_agent)
        .optional()?
    {
        Some(agent) => Ok(Some(agent?)),
        None => Ok(None),
    }
}

/// An agent holds a certificate when it says so and the parent issued it
/// one that is still valid in the registry (not from a CA since reset).
const SELECT_AGENT: &str = "SELECT id, name, kind, version, location, hostnames, ips, first_seen,
    last_seen,
    has_certificate AND EXISTS (SELECT 1 FROM certificates c WHERE c.agent_id = agents.id AND c.revoked = 0),
    ssl, broker_tls, admission, signing_key, parent_key, excluded, name_flag, enrolled_by, present,
    compromised
    FROM agents";

/// A list as the registry stores it (JSON).
pub(crate) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

type RowResult = Result<Agent, RegistryError>;

fn row_to_agent(row: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let id: String = row.get(0)?;
    let kind: String = row.get(2)?;
    let hostnames: String = row.get(5)?;
    let ips: String = row.get(6)?;
    let parsed = (|| {
        Ok(Agent {
            id: id
                .parse()
                .map_err(|_| RegistryError::Corrupt(format!("agent id {id:?}")))?,
            name: row.get(1)?,
            kind: kind.parse().map_err(RegistryError::Corrupt)?,
            version: row.get(3)?,
            location: row.get(4)?,
            hostnames: serde_json::from_str(&hostnames)
                .map_err(|e| RegistryError::Corrupt(e.to_string()))?,
            ips: serde_json::from_str(&ips).map_err(|e| RegistryError::Corrupt(e.to_string()))?,
            first_seen: row.get::<_, i64>(7)? as u64,
            last_seen: row.get::<_, i64>(8)? as u64,
            has_certificate: row.get(9)?,
            ssl: row.get(10)?,
            broker_tls: row.get(11)?,
            admission: row
                .get::<_, String>(12)?
                .parse()
                .map_err(RegistryError::Corrupt)?,
            signing_key: row.get(13)?,
            parent_key: row.get(14)?,
            excluded: row.get(15)?,
            name_flag: row.get(16)?,
            enrolled_by: row.get(17)?,
            present: row.get(18)?,
            compromised: row.get(19)?,
        })
    })();
    Ok(parsed)
}

/// Registers an agent by its Hello, or updates its row: `key` is the key
/// the Hello is signed with (pinned when none is), `admission` what
/// enrollment decided, `at` the parent's clock (last heard) and `reported`
/// the agent's (the state it says is kept only when no newer one is).
pub fn register(
    tx: &Transaction<'_>,
    agent: &Uuid,
    hello: &Hello,
    key: &str,
    admission: Admission,
    at: i64,
    reported: i64,
) -> Result<(), RegistryError> {
    tx.prepare_cached(
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
    )?
    .execute(params![
        agent.to_string(),
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
        key,
        admission.as_str(),
        hello.state.parent_key,
        reported,
    ])?;
    Ok(())
}

/// Records a heartbeat: heard at `at` (the parent's clock); the state it
/// reports, sent at `reported` (the agent's clock), only when it is the
/// newest (one sent earlier on another connection may arrive after it).
pub fn report_state(
    tx: &Transaction<'_>,
    agent: &Uuid,
    at: i64,
    state: &AgentState,
    reported: i64,
) -> Result<(), RegistryError> {
    tx.prepare_cached(
        "UPDATE agents SET last_seen = max(last_seen, ?2),
             has_certificate = iif(?7 >= state_at, ?3, has_certificate),
             ssl = iif(?7 >= state_at, ?4, ssl),
             broker_tls = iif(?7 >= state_at, ?5, broker_tls),
             parent_key = iif(?7 >= state_at, ?6, parent_key),
             state_at = max(state_at, ?7)
         WHERE id = ?1",
    )?
    .execute(params![
        agent.to_string(),
        at,
        state.has_certificate,
        state.ssl,
        state.broker_tls,
        state.parent_key,
        reported,
    ])?;
    Ok(())
}

/// The agent reported (at `reported`, its clock) that it switched to SSL.
pub fn mark_ssl(tx: &Transaction<'_>, agent: &Uuid, reported: i64) -> Result<(), RegistryError> {
    tx.prepare_cached("UPDATE agents SET ssl = 1, state_at = max(state_at, ?2) WHERE id = ?1")?
        .execute(params![agent.to_string(), reported])?;
    Ok(())
}

/// The agent reported (at `reported`, its clock) that its broker
/// connection is AMQPS.
pub fn mark_broker_tls(
    tx: &Transaction<'_>,
    agent: &Uuid,
    reported: i64,
) -> Result<(), RegistryError> {
    tx.prepare_cached(
        "UPDATE agents SET broker_tls = 1, state_at = max(state_at, ?2) WHERE id = ?1",
    )?
    .execute(params![agent.to_string(), reported])?;
    Ok(())
}

/// Marks the agent COMPROMISED when `compromised` (it pinned another
/// parent key). Sticky: only an operator clears it (`agents accept`); a
/// report that says nothing of the kind writes nothing.
pub fn note_compromised(
    tx: &Transaction<'_>,
    agent: &Uuid,
    compromised: bool,
) -> Result<(), RegistryError> {
    if compromised {
        tx.prepare_cached("UPDATE agents SET compromised = 1 WHERE id = ?1 AND compromised = 0")?
            .execute(params![agent.to_string()])?;
    }
    Ok(())
}

/// What a state report is weighed against: the parent key the agent last
/// reported, and whether presence counts it connected (`None`: the agent
/// is not registered).
pub fn report_basis(
    tx: &Transaction<'_>,
    agent: &Uuid,
) -> Result<Option<(Option<String>, bool)>, RegistryError> {
    Ok(tx
        .prepare_cached("SELECT parent_key, present FROM agents WHERE id = ?1")?
        .query_row(params![agent.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?)
}

/// The key pinned for an agent: `None` when it is not registered,
/// `Some(None)` when it is but no key is pinned yet (registered by a
/// release before signatures).
pub fn pinned_key(
    tx: &Transaction<'_>,
    agent: &Uuid,
) -> Result<Option<Option<String>>, RegistryError> {
    Ok(tx
        .prepare_cached("SELECT signing_key FROM agents WHERE id = ?1")?
        .query_row(params![agent.to_string()], |row| row.get(0))
        .optional()?)
}

/// Records which CAs an agent trusts (from its Hello and heartbeats; an
/// agent of an older release says nothing and nothing changes).
pub fn note_trust(tx: &Transaction<'_>, agent: &Uuid, cas: &[String]) -> Result<(), RegistryError> {
    if cas.is_empty() {
        return Ok(());
    }
    let json = json_list(cas);
    tx.prepare_cached("UPDATE agents SET trusted_cas = ?2 WHERE id = ?1 AND trusted_cas != ?2")?
        .execute(params![agent.to_string(), json])?;
    Ok(())
}

/// Records a command the agent refused (at `at`, the parent's clock),
/// unless a newer refusal is recorded.
pub fn note_refusal(
    tx: &Transaction<'_>,
    agent: &Uuid,
    reason: &str,
    at: i64,
) -> Result<(), RegistryError> {
    tx.prepare_cached(
        "INSERT INTO refusals (agent_id, reason, at) VALUES (?1, ?2, ?3)
         ON CONFLICT(agent_id) DO UPDATE SET reason = excluded.reason, at = excluded.at
         WHERE excluded.at >= refusals.at",
    )?
    .execute(params![agent.to_string(), reason, at])?;
    Ok(())
}

/// Records that the parent refused the agent's CSR (at `at`), and why.
pub fn record_refusal(
    tx: &Transaction<'_>,
    agent: &Uuid,
    reason: &str,
    at: i64,
) -> Result<(), RegistryError> {
    tx.prepare_cached(
        "INSERT INTO refusals (agent_id, reason, at) VALUES (?1, ?2, ?3)
         ON CONFLICT(agent_id) DO UPDATE SET reason = excluded.reason, at = excluded.at",
    )?
    .execute(params![agent.to_string(), reason, at])?;
    Ok(())
}

/// Forgets the agent's last refusal (it was issued a certificate).
pub fn clear_refusal(tx: &Transaction<'_>, agent: &Uuid) -> Result<(), RegistryError> {
    tx.prepare_cached("DELETE FROM refusals WHERE agent_id = ?1")?
        .execute(params![agent.to_string()])?;
    Ok(())
}
