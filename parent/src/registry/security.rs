//! The security record: one row per kind of event and source (the agent it
//! concerns, or none), with when it was first and last seen and how many
//! times; a quota per kind, so that a flood of one kind (20,000 bad
//! signatures) never pushes out another (the one `compromised` that
//! matters). The counts by kind are kept apart and never shrink. And the
//! keys banned from registering again (a rejected, deleted or revoked
//! agent's).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use uuid::Uuid;

use super::RegistryError;

/// One recorded security event (repeats from one source folded into it).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SecurityEvent {
    /// When it was last seen (ms).
    pub at: u64,
    /// When it was first seen (ms).
    #[serde(default)]
    pub first_at: u64,
    /// How many times it was seen from this source.
    #[serde(default = "one")]
    pub count: u64,
    /// The agent it concerns (claimed, for a forged message), if known.
    pub agent: Option<String>,
    /// That agent's name, if registered.
    pub name: Option<String>,
    /// `impersonation`, `forged_command`, `compromised`, `banned_key`,
    /// `unsigned`, `bad_signature`, `too_large`, `invalid_input`,
    /// `revoked_key_csr`, `enroll_refused`, `pending_cap`, `identity_changed`,
    /// `unadmitted_claim` (what a pending agent says about itself) …
    pub kind: String,
    /// What happened the last time, in words.
    pub detail: String,
}

fn one() -> u64 {
    1
}

/// The most events kept of each kind (the sources seen least recently go
/// first; the counts by kind are kept apart and never shrink).
pub const SECURITY_EVENTS_PER_KIND: i64 = 1_000;

/// The schema of the record (part of migration 5 → 6): rows of the same
/// kind and agent are folded into the newest.
pub(super) const MIGRATION: &str = "
     ALTER TABLE security_events ADD COLUMN first_at INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE security_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE security_events ADD COLUMN source TEXT NOT NULL DEFAULT '';
     UPDATE security_events SET source = coalesce(agent, ''), first_at = at;
     UPDATE security_events SET
         count = (SELECT count(*) FROM security_events d
                  WHERE d.kind = security_events.kind AND d.source = security_events.source),
         first_at = (SELECT min(at) FROM security_events d
                     WHERE d.kind = security_events.kind AND d.source = security_events.source);
     DELETE FROM security_events WHERE id <> (SELECT max(id) FROM security_events d
         WHERE d.kind = security_events.kind AND d.source = security_events.source);
     CREATE UNIQUE INDEX IF NOT EXISTS security_events_source ON security_events(kind, source);
     CREATE INDEX IF NOT EXISTS security_events_kind_at ON security_events(kind, at);
";

/// Records a security event (an impersonation, a forged command reported by
/// a child, a banned key …): a repeat from the same source is folded into
/// its row; counted by kind for `/metrics`.
pub fn record_security(
    tx: &rusqlite::Transaction<'_>,
    agent: Option<&Uuid>,
    kind: &str,
    detail: &str,
) -> Result<(), RegistryError> {
    let detail = crate::text::printable(detail, 500);
    let agent = agent.map(|a| a.to_string());
    let now = fleetls_proto::now_ms() as i64;
    tx.prepare_cached(
        "INSERT INTO security_events (at, first_at, count, agent, source, kind, detail)
         VALUES (?1, ?1, 1, ?2, coalesce(?2, ''), ?3, ?4)
         ON CONFLICT(kind, source) DO UPDATE SET
             at = excluded.at, count = security_events.count + 1, detail = excluded.detail",
    )?
    .execute(params![now, agent, kind, detail])?;
    tx.prepare_cached(
        "INSERT INTO security_counts (kind, count) VALUES (?1, 1)
         ON CONFLICT(kind) DO UPDATE SET count = count + 1",
    )?
    .execute(params![kind])?;
    trim_kind(tx, kind)
}

/// Keeps at most [`SECURITY_EVENTS_PER_KIND`] sources of `kind`: the ones
/// seen least recently go.
fn trim_kind(tx: &rusqlite::Transaction<'_>, kind: &str) -> Result<(), RegistryError> {
    tx.prepare_cached(
        "DELETE FROM security_events WHERE kind = ?1 AND id IN (
             SELECT id FROM security_events WHERE kind = ?1
             ORDER BY at DESC, id DESC LIMIT -1 OFFSET ?2)",
    )?
    .execute(params![kind, SECURITY_EVENTS_PER_KIND])?;
    Ok(())
}

/// An event from a row of `at, first_at, count, agent, name, kind, detail`.
fn event_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<SecurityEvent> {
    Ok(SecurityEvent {
        at: row.get::<_, i64>(0)? as u64,
        first_at: row.get::<_, i64>(1)? as u64,
        count: row.get::<_, i64>(2)? as u64,
        agent: row.get(3)?,
        name: row.get(4)?,
        kind: row.get(5)?,
        detail: row.get(6)?,
    })
}

/// The newest event of `kind` (its source seen last), if any.
pub(super) fn last_of_kind(
    db: &Connection,
    kind: &str,
) -> Result<Option<SecurityEvent>, RegistryError> {
    let mut stmt = db.prepare_cached(
        "SELECT e.at, e.first_at, e.count, e.agent, a.name, e.kind, e.detail
         FROM security_events e LEFT JOIN agents a ON a.id = e.agent
         WHERE e.kind = ?1 ORDER BY e.at DESC, e.id DESC LIMIT 1",
    )?;
    Ok(stmt.query_row(params![kind], event_of).optional()?)
}

/// The `limit` sources seen most recently of each kind, newest first: a
/// flood of one kind never hides the last of another.
pub(super) fn newest(db: &Connection, limit: usize) -> Result<Vec<SecurityEvent>, RegistryError> {
    let mut stmt = db.prepare_cached(
        "SELECT e.at, e.first_at, e.count, e.agent, a.name, e.kind, e.detail
         FROM (SELECT *, row_number() OVER (PARTITION BY kind ORDER BY at DESC, id DESC) AS rank
               FROM security_events) e
         LEFT JOIN agents a ON a.id = e.agent
         WHERE e.rank <= ?1
         ORDER BY e.at DESC, e.id DESC",
    )?;
    let rows = stmt.query_map(params![limit as i64], event_of)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Bans a key from registering again.
pub(crate) fn ban_key(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    agent: &Uuid,
    reason: &str,
) -> Result<(), RegistryError> {
    tx.prepare_cached(
        "INSERT INTO banned_keys (key, agent, reason, at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET reason = excluded.reason, at = excluded.at",
    )?
    .execute(params![
        key,
        agent.to_string(),
        reason,
        fleetls_proto::now_ms() as i64
    ])?;
    Ok(())
}

/// Lifts the bans on the keys of `agent` (an operator accepted it again).
pub(crate) fn lift_ban(tx: &rusqlite::Transaction<'_>, agent: &Uuid) -> Result<(), RegistryError> {
    tx.prepare_cached("DELETE FROM banned_keys WHERE agent = ?1")?
        .execute(params![agent.to_string()])?;
    Ok(())
}

/// Why `key` is banned, if it is.
pub fn ban_reason(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
) -> Result<Option<String>, RegistryError> {
    Ok(tx
        .prepare_cached("SELECT reason FROM banned_keys WHERE key = ?1")?
        .query_row(params![key], |row| row.get(0))
        .optional()?)
}
