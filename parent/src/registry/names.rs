//! Names as identities: who holds a name, who holds one that looks the
//! same (the same UTS #39 skeleton), and how many agents wait for an
//! operator — what admission asks before it lets a new agent in.

use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

use super::{Admission, RegistryError};

/// Another accepted agent than `except` called exactly `name`: its id.
pub fn accepted_holder(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    except: &Uuid,
) -> Result<Option<String>, RegistryError> {
    Ok(tx
        .query_row(
            "SELECT id FROM agents WHERE name = ?1 AND id <> ?2 AND admission = ?3
             ORDER BY first_seen LIMIT 1",
            params![name, except.to_string(), Admission::Accepted.as_str()],
            |row| row.get(0),
        )
        .optional()?)
}

/// Another accepted agent than `except` whose name is not `name` but has
/// the same skeleton: its name and id. Only accepted agents count: a
/// pending look-alike an attacker registered first must not push the
/// genuine device behind it into the queue (`accept --all` checks the
/// name again when it accepts).
pub fn lookalike(
    tx: &rusqlite::Transaction<'_>,
    skeleton: &str,
    name: &str,
    except: &Uuid,
) -> Result<Option<(String, String)>, RegistryError> {
    Ok(tx
        .query_row(
            "SELECT name, id FROM agents
             WHERE name_skeleton = ?1 AND name <> ?2 AND id <> ?3 AND admission = ?4
             ORDER BY first_seen LIMIT 1",
            params![
                skeleton,
                name,
                except.to_string(),
                Admission::Accepted.as_str()
            ],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

/// Keeps an agent's name skeleton and what is wrong with its name (`None`:
/// nothing).
pub fn mark(
    tx: &rusqlite::Transaction<'_>,
    agent: &Uuid,
    skeleton: &str,
    flag: Option<&str>,
) -> Result<(), RegistryError> {
    tx.prepare_cached("UPDATE agents SET name_skeleton = ?2, name_flag = ?3 WHERE id = ?1")?
        .execute(params![agent.to_string(), skeleton, flag])?;
    Ok(())
}

/// How many agents wait for an operator.
pub fn pending_count(tx: &rusqlite::Transaction<'_>) -> Result<u64, RegistryError> {
    Ok(tx
        .prepare_cached("SELECT count(*) FROM agents WHERE admission = ?1")?
        .query_row(params![Admission::Pending.as_str()], |row| {
            row.get::<_, i64>(0)
        })? as u64)
}

/// The pending agents first registered before `before` (ms).
pub fn pending_before(db: &rusqlite::Connection, before: u64) -> Result<Vec<Uuid>, RegistryError> {
    let mut stmt = db.prepare_cached(
        "SELECT id FROM agents WHERE admission = ?2 AND first_seen < ?1 ORDER BY first_seen",
    )?;
    let rows = stmt.query_map(params![before as i64, Admission::Pending.as_str()], |row| {
        row.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for id in rows {
        let id = id?;
        out.push(
            id.parse()
                .map_err(|_| RegistryError::Corrupt(format!("agent id {id:?}")))?,
        );
    }
    Ok(out)
}
