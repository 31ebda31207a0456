//! The certificate information each agent was sent and has not settled
//! (`owed_certificates`): recorded when it is sent, settled when the agent
//! is issued a certificate or says it holds one, read to send it again
//! (see `crate::owed`).

use rusqlite::{params, OptionalExtension, Transaction};
use uuid::Uuid;

use super::{Admission, RegistryError};

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

/// A CSR was answered with a certificate: a renewal owed is settled (the
/// child asks again by itself if the answer is lost); a first certificate
/// stays owed until the child says it holds it ([`settle_if_certified`]),
/// so that an answer lost with the broker is sent again after the child's
/// next Hello (its CSR on the same key then gets the same certificate).
pub fn settle_answered(tx: &Transaction<'_>, agent: &Uuid) -> Result<(), RegistryError> {
    tx.prepare_cached("DELETE FROM owed_certificates WHERE agent_id = ?1 AND renew = 1")?
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

/// Whether certificate information is owed to `agent`, and whether as a
/// renewal (`None`: nothing is owed).
pub fn owed_certificate(tx: &Transaction<'_>, agent: &Uuid) -> Result<Option<bool>, RegistryError> {
    Ok(tx
        .prepare_cached("SELECT renew FROM owed_certificates WHERE agent_id = ?1")?
        .query_row(params![agent.to_string()], |row| row.get(0))
        .optional()?)
}

/// The agents owed certificate information sent before `sent_before` (ms)
/// and not settled, accepted and connected or seen since `online_since` (ms), the
/// longest waiting first (at most 20,000), each with whether as a renewal.
/// Ids that cannot be read are left out.
pub fn overdue(
    tx: &Transaction<'_>,
    sent_before: i64,
    online_since: i64,
) -> Result<Vec<(Uuid, bool)>, RegistryError> {
    // `CROSS JOIN`: from what is owed (mostly nothing) to its agent, never
    // from every accepted agent (SQLite's choice without statistics: the
    // whole fleet read at every sweep).
    let mut stmt = tx.prepare_cached(
        "SELECT o.agent_id, o.renew FROM owed_certificates o
         CROSS JOIN agents a ON a.id = o.agent_id
         WHERE o.sent_at < ?1 AND (a.present OR a.last_seen >= ?2) AND a.admission = ?3
           AND NOT a.compromised
         ORDER BY o.sent_at LIMIT 20000",
    )?;
    let rows = stmt.query_map(
        params![sent_before, online_since, Admission::Accepted.as_str()],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
    )?;
    let ids: Vec<(String, bool)> = rows.collect::<Result<_, _>>()?;
    Ok(ids
        .into_iter()
        .filter_map(|(id, renew)| Some((id.parse().ok()?, renew)))
        .collect())
}

/// Records that the certificate information owed to `agents` never
/// reached them (their queue was unbound): the next sweep sends it again.
pub fn mark_unsent(tx: &Transaction<'_>, agents: &[Uuid]) -> Result<(), RegistryError> {
    let mut stmt =
        tx.prepare_cached("UPDATE owed_certificates SET sent_at = 0 WHERE agent_id = ?1")?;
    for agent in agents {
        stmt.execute(params![agent.to_string()])?;
    }
    Ok(())
}

/// Records that the certificate information owed to `agents` was sent now.
pub fn mark_sent<'a>(
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
