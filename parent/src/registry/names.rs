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
    // `+admission`: the term is not for an index. Every agent of a settled
    // fleet is accepted, so SQLite's choice of `agents_admission` (it has
    // no statistics) read the whole table for each new agent's Hello —
    // 95% of the parent at 30,000 agents; `agents_name` finds one row.
    Ok(tx
        .prepare_cached(
            "SELECT id FROM agents WHERE name = ?1 AND id <> ?2 AND +admission = ?3
             ORDER BY first_seen LIMIT 1",
        )?
        .query_row(
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
    // `+admission`: see `accepted_holder`; `agents_name_skeleton` it is.
    Ok(tx
        .prepare_cached(
            "SELECT name, id FROM agents
             WHERE name_skeleton = ?1 AND name <> ?2 AND id <> ?3 AND +admission = ?4
             ORDER BY first_seen LIMIT 1",
        )?
        .query_row(
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use uuid::Uuid;

    use super::{accepted_holder, lookalike};
    use crate::registry::test_support::{insert_agent_row, AgentRow};
    use crate::registry::{Admission, Registry};

    /// How many SQLite virtual-machine steps `f` takes on `tx` (the
    /// progress handler is called at every step).
    fn steps(tx: &rusqlite::Transaction<'_>, f: impl FnOnce(&rusqlite::Transaction<'_>)) -> u64 {
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        tx.progress_handler(
            1,
            Some(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                false
            }),
        );
        f(tx);
        tx.progress_handler(1, None::<fn() -> bool>);
        count.load(Ordering::Relaxed)
    }

    /// A new agent's Hello asks who holds its name and who holds one that
    /// looks the same. In a settled fleet every agent is accepted: the
    /// answer must come from the name's index, not from reading each
    /// accepted agent (it did: 95% of the parent's CPU while 30,000
    /// children registered).
    #[test]
    fn a_name_is_looked_up_without_reading_every_accepted_agent() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let asking = Uuid::new_v4();
        registry
            .with_tx(|tx| {
                for i in 0..5_000 {
                    let name = format!("till-{i}");
                    insert_agent_row(
                        tx,
                        &AgentRow {
                            id: Uuid::new_v4(),
                            name: &name,
                            kind: "child",
                            version: "1.0.0",
                            location: "",
                            hostnames: "[]",
                            ips: "[]",
                            last_seen: 0,
                            has_certificate: false,
                        },
                    )?;
                }
                tx.execute(
                    "UPDATE agents SET admission = ?1, name_skeleton = name",
                    [Admission::Accepted.as_str()],
                )?;
                let holder = steps(tx, |tx| {
                    let found = accepted_holder(tx, "till-4321", &asking).unwrap();
                    assert!(found.is_some(), "till-4321 is held");
                });
                let alike = steps(tx, |tx| {
                    let found = lookalike(tx, "till-17", "tiII-17", &asking).unwrap();
                    assert_eq!(found.map(|(name, _)| name).as_deref(), Some("till-17"));
                });
                // An index lookup takes some dozens of steps; a scan of
                // 5,000 rows takes tens of thousands.
                assert!(holder < 500, "who holds a name: {holder} steps");
                assert!(alike < 500, "who looks like it: {alike} steps");
                Ok(())
            })
            .unwrap();
    }
}
