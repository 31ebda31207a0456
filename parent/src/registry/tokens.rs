//! Enrollment tokens as the registry keeps them: the token's id, what it
//! admits (kinds, a name pattern), its uses and expiry, and only the key
//! that checks a proof (`fleetls_bus::enroll::Token::mac_key`) — never the
//! token itself, which is shown to the operator once, at creation.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use fleetls_proto::AgentKind;

use super::RegistryError;

/// The schema (migration 5 → 6): tokens, which token admitted each agent,
/// names flagged as taken or confusable, certificates found by key.
pub(super) const MIGRATION: &str = "
     CREATE TABLE IF NOT EXISTS enroll_tokens (
         id TEXT PRIMARY KEY,
         mac_key BLOB NOT NULL,
         kinds TEXT NOT NULL,
         name_pattern TEXT NOT NULL,
         max_uses INTEGER NOT NULL,
         uses INTEGER NOT NULL DEFAULT 0,
         created_at INTEGER NOT NULL,
         expires_at INTEGER NOT NULL,
         revoked_at INTEGER,
         last_used_at INTEGER
     );
     ALTER TABLE agents ADD COLUMN enrolled_by TEXT;
     ALTER TABLE agents ADD COLUMN name_flag TEXT;
     ALTER TABLE agents ADD COLUMN name_skeleton TEXT;
     CREATE INDEX IF NOT EXISTS agents_name ON agents(name);
     CREATE INDEX IF NOT EXISTS agents_name_skeleton ON agents(name_skeleton);
     CREATE INDEX IF NOT EXISTS agents_admission ON agents(admission);
     CREATE INDEX IF NOT EXISTS certificates_key ON certificates(key_sha256);
";

/// A token as listed (no secret, no key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its public id (the first part of the token).
    pub id: String,
    /// The kinds of agent it admits.
    pub kinds: Vec<AgentKind>,
    /// The names it admits (`*` and `?` wildcards).
    pub name_pattern: String,
    /// How many agents it may admit.
    pub max_uses: u64,
    /// How many it admitted.
    pub uses: u64,
    /// When it was made (ms).
    pub created_at: u64,
    /// When it stops admitting (ms).
    pub expires_at: u64,
    /// When an operator revoked it (ms), if they did.
    pub revoked_at: Option<u64>,
    /// When it last admitted an agent (ms).
    pub last_used_at: Option<u64>,
}

impl TokenInfo {
    /// Why it admits no one at `now` (ms), or `None` while it is usable.
    pub fn unusable(&self, now: u64) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("revoked")
        } else if now >= self.expires_at {
            Some("expired")
        } else if self.uses >= self.max_uses {
            Some("used up")
        } else {
            None
        }
    }
}

/// Writes a kinds list as stored (`child,mpos`).
fn kinds_text(kinds: &[AgentKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a stored kinds list.
fn parse_kinds(text: &str) -> Result<Vec<AgentKind>, RegistryError> {
    text.split(',')
        .map(|k| k.parse().map_err(RegistryError::Corrupt))
        .collect()
}

const SELECT: &str = "SELECT id, kinds, name_pattern, max_uses, uses, created_at, expires_at,
    revoked_at, last_used_at, mac_key FROM enroll_tokens";

fn row_to_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenInfo, String, Vec<u8>)> {
    Ok((
        TokenInfo {
            id: row.get(0)?,
            kinds: Vec::new(),
            name_pattern: row.get(2)?,
            max_uses: row.get::<_, i64>(3)? as u64,
            uses: row.get::<_, i64>(4)? as u64,
            created_at: row.get::<_, i64>(5)? as u64,
            expires_at: row.get::<_, i64>(6)? as u64,
            revoked_at: row.get::<_, Option<i64>>(7)?.map(|t| t as u64),
            last_used_at: row.get::<_, Option<i64>>(8)?.map(|t| t as u64),
        },
        row.get(1)?,
        row.get(9)?,
    ))
}

fn finish(
    (mut info, kinds, key): (TokenInfo, String, Vec<u8>),
) -> Result<(TokenInfo, Vec<u8>), RegistryError> {
    info.kinds = parse_kinds(&kinds)?;
    Ok((info, key))
}

/// Stores a new token: `info` (its uses 0) and the key that checks proofs.
pub fn insert(
    tx: &rusqlite::Transaction<'_>,
    info: &TokenInfo,
    mac_key: &[u8],
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO enroll_tokens (id, mac_key, kinds, name_pattern, max_uses, uses, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7)",
        params![
            info.id,
            mac_key,
            kinds_text(&info.kinds),
            info.name_pattern,
            info.max_uses as i64,
            info.created_at as i64,
            info.expires_at as i64,
        ],
    )?;
    Ok(())
}

/// Every token, newest first.
pub fn list(db: &rusqlite::Connection) -> Result<Vec<TokenInfo>, RegistryError> {
    let mut stmt = db.prepare_cached(&format!("{SELECT} ORDER BY created_at DESC, id"))?;
    let rows = stmt.query_map([], row_to_token)?;
    rows.map(|row| Ok(finish(row?)?.0)).collect()
}

/// The token `id` and the key that checks its proofs.
pub fn find(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
) -> Result<Option<(TokenInfo, Vec<u8>)>, RegistryError> {
    let mut stmt = tx.prepare_cached(&format!("{SELECT} WHERE id = ?1"))?;
    match stmt.query_row(params![id], row_to_token).optional()? {
        Some(row) => Ok(Some(finish(row)?)),
        None => Ok(None),
    }
}

/// Counts one admission by token `id` at `now` (ms).
pub fn use_once(tx: &rusqlite::Transaction<'_>, id: &str, now: u64) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE enroll_tokens SET uses = uses + 1, last_used_at = ?2 WHERE id = ?1",
        params![id, now as i64],
    )?;
    Ok(())
}

/// Revokes token `id` at `now` (ms): `false` when there is no such token.
/// Agents it admitted stay admitted.
pub fn revoke(tx: &rusqlite::Transaction<'_>, id: &str, now: u64) -> Result<bool, RegistryError> {
    Ok(tx.execute(
        "UPDATE enroll_tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
        params![id, now as i64],
    )? > 0)
}

/// The names of the agents token `id` admitted.
pub fn admitted_by(db: &rusqlite::Connection, id: &str) -> Result<Vec<String>, RegistryError> {
    let mut stmt =
        db.prepare_cached("SELECT name FROM agents WHERE enrolled_by = ?1 ORDER BY first_seen")?;
    let rows = stmt.query_map(params![id], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records that token `token` admitted `agent`.
pub fn mark_enrolled(
    tx: &rusqlite::Transaction<'_>,
    agent: &uuid::Uuid,
    token: &str,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE agents SET enrolled_by = ?2 WHERE id = ?1",
        params![agent.to_string(), token],
    )?;
    Ok(())
}
