//! Which agents consume their queue now (`agents.present`), as the broker
//! says: written by `crate::tasks::presence` only, read with every agent's row.

use std::collections::HashSet;

use rusqlite::{params, Connection, Transaction};
use uuid::Uuid;

use super::RegistryError;

/// Migration 6 → 7: the column, 0 (not known to be connected) for all.
pub const MIGRATION: &str = "ALTER TABLE agents ADD COLUMN present INTEGER NOT NULL DEFAULT 0;";

/// Every registered agent's id.
pub fn ids(db: &Connection) -> Result<Vec<Uuid>, RegistryError> {
    let mut stmt = db.prepare("SELECT id FROM agents")?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    let mut ids = Vec::new();
    for row in rows {
        let id = row?;
        ids.push(
            id.parse()
                .map_err(|_| RegistryError::Corrupt(format!("agent id {id:?}")))?,
        );
    }
    Ok(ids)
}

/// Sets the whole picture: the agents in `present` are connected, no other.
/// Only the rows that change are written.
pub fn set_all(tx: &Transaction<'_>, present: &HashSet<Uuid>) -> Result<(), RegistryError> {
    let ids = serde_json::to_string(&present.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
    tx.prepare_cached(
        "UPDATE agents SET present = 0
         WHERE present = 1 AND id NOT IN (SELECT value FROM json_each(?1))",
    )?
    .execute(params![ids])?;
    tx.prepare_cached(
        "UPDATE agents SET present = 1
         WHERE present = 0 AND id IN (SELECT value FROM json_each(?1))",
    )?
    .execute(params![ids])?;
    Ok(())
}

/// Sets one agent's presence; whether the agent is registered (`false`: no
/// row yet — its Hello is still on the way).
pub fn set(tx: &Transaction<'_>, agent: &Uuid, present: bool) -> Result<bool, RegistryError> {
    let id = agent.to_string();
    tx.prepare_cached("UPDATE agents SET present = ?2 WHERE id = ?1 AND present <> ?2")?
        .execute(params![id, present])?;
    let known = tx
        .prepare_cached("SELECT 1 FROM agents WHERE id = ?1")?
        .exists(params![id])?;
    Ok(known)
}

/// Forgets every agent's presence (the broker no longer tells).
pub fn clear(db: &Connection) -> Result<(), RegistryError> {
    db.execute("UPDATE agents SET present = 0 WHERE present = 1", [])?;
    Ok(())
}
