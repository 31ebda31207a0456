//! The status view's SQL: what the status says of an agent (whether it
//! holds a certificate, which test result is its last one, which step
//! results count, its last refusal), defined once here and queried by the
//! status list, the console's pages and a campaign's choice of children.
//! The queries hand each row to the caller, which shapes it
//! (`crate::status`): the registry does not know the status's types.
//!
//! The literals in these definitions (the test campaigns' kinds `verify`
//! and `reverify`, the admission `accepted`) are part of what is defined:
//! the definitions are fragments that every caller's statement starts with,
//! before the caller's own `?1`, `?2`…, so they hold no parameter of their
//! own. A test holds each literal to its enum's name.

use std::collections::BTreeSet;

use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use uuid::Uuid;

use super::{Changes, RegistryError, AGENT_TABLES};

/// The `WITH` clause every query of agents with their last result starts
/// with (the status list, the console's pages, a campaign's choice of
/// children):
///
/// - `tests(id, kind, rank)`: the test campaigns (`verify`, `reverify`),
///   rank 1 the newest (by start, then by creation). An agent's last result
///   is its enrolment in the test of lowest rank;
/// - `agent_view`: the agents, each with `certified`: it holds a
///   certificate when it says so and the parent issued it one that is still
///   valid in the registry (not from a CA since reset), as
///   `registry::agents` reads it.
pub const DEFINITIONS: &str = "WITH
    tests(id, kind, rank) AS MATERIALIZED (
        SELECT id, kind, row_number() OVER (ORDER BY started_at DESC, rowid DESC)
        FROM campaigns WHERE kind IN ('verify', 'reverify')),
    agent_view AS (
        SELECT agents.*, has_certificate AND EXISTS (
            SELECT 1 FROM certificates c WHERE c.agent_id = agents.id AND c.revoked = 0)
            AS certified,
            (SELECT max(not_after) FROM certificates c
             WHERE c.agent_id = agents.id AND c.revoked = 0) AS cert_not_after,
            (SELECT c.ca FROM certificates c
             WHERE c.agent_id = agents.id AND c.revoked = 0
             ORDER BY c.issued_at DESC LIMIT 1) AS cert_ca
        FROM agents)";

/// Joins to the agents (`a`, as [`AGENTS_FROM`] has them) each agent's last result: its enrolment (`l`) in
/// the test of lowest rank it was enrolled in, and that campaign (`lt`). One
/// index lookup per agent: for the console's filtered pages and the
/// counters (the full list reads the enrolments once instead).
pub const LAST_ENROLMENT: &str = "LEFT JOIN campaign_children l ON l.rowid = (
        SELECT cc.rowid FROM campaign_children cc JOIN tests t ON t.id = cc.campaign
        WHERE cc.agent = a.id ORDER BY t.rank LIMIT 1)
    LEFT JOIN campaigns lt ON lt.id = l.campaign";

/// The agents (`a`) with their last refusal (`r`), after [`DEFINITIONS`].
pub const AGENTS_FROM: &str = "FROM agent_view a LEFT JOIN refusals r ON r.agent_id = a.id";

/// The status list's order: by name, then id (both as bytes, as Rust
/// compares `String`s and `Uuid`s).
pub const AGENTS_ORDER: &str = "ORDER BY a.name, a.id";

/// The columns of [`AGENTS_FROM`] that `status::row_to_status` reads.
pub const AGENT_COLUMNS: &str = "a.id, a.name, a.kind, a.version, a.location, a.hostnames,
    a.ips, a.last_seen, a.certified,
    a.ssl AND a.certified AND a.admission = 'accepted',
    a.broker_tls AND a.certified AND a.admission = 'accepted',
    r.reason, a.admission, a.compromised,
    a.cert_not_after, a.excluded, a.cert_ca, a.present";

/// How many columns [`AGENT_COLUMNS`] names: a query's own columns follow.
pub const AGENT_COLUMN_COUNT: usize = 18;

/// The columns of an enrolment (`l`) that `status::row_to_last_result` reads.
pub const LAST_COLUMNS: &str =
    "l.campaign, l.state, l.step, l.message, l.cause, l.started_at, l.finished_at";

/// The step results that count, for `status::attach_step`: those recorded while
/// the child was acting, not the late ones. No index covers `late`: with
/// no other condition this reads the table once.
pub const STEP_RESULTS: &str = "SELECT s.agent, s.campaign, s.step, s.ok, s.message, s.cause, s.at
    FROM step_results s WHERE s.late = 0";

/// A `WHERE` clause for [`agents_where`]: the agents whose ids are in the
/// JSON list bound as `?1`.
pub const AMONG_IDS: &str = "WHERE a.id IN (SELECT value FROM json_each(?1))";

/// The agents a `WHERE` clause (over [`AGENTS_FROM`] and [`LAST_ENROLMENT`],
/// with what follows it: order, limit) selects, with `binds` for its
/// parameters: each row ([`AGENT_COLUMNS`], then the test's kind, then
/// [`LAST_COLUMNS`]) as `shape` makes it.
pub fn agents_where<T>(
    db: &Connection,
    clause: &str,
    binds: &[Value],
    shape: impl FnMut(&Row<'_>) -> rusqlite::Result<Result<T, RegistryError>>,
) -> Result<Vec<T>, RegistryError> {
    let mut stmt = db.prepare_cached(&format!(
        "{DEFINITIONS} SELECT {AGENT_COLUMNS}, lt.kind, {LAST_COLUMNS}
         {AGENTS_FROM} {LAST_ENROLMENT} {clause}"
    ))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(binds), shape)?;
    let mut shaped = Vec::new();
    for row in rows {
        shaped.push(row??);
    }
    Ok(shaped)
}

/// Hands `f` each of the step results that count ([`STEP_RESULTS`]) of
/// `agent` in `campaign`.
pub fn step_results_of(
    db: &Connection,
    campaign: &Uuid,
    agent: &Uuid,
    f: impl FnMut(&Row<'_>) -> Result<(), RegistryError>,
) -> Result<(), RegistryError> {
    let mut steps = db.prepare_cached(&format!(
        "{STEP_RESULTS} AND s.campaign = ?1 AND s.agent = ?2"
    ))?;
    let rows = steps.query([campaign.to_string(), agent.to_string()])?;
    each(rows, f)
}

/// Every agent, unordered, each row ([`AGENT_COLUMNS`]) as `shape` makes it (the outer error
/// SQLite's, the inner one a value the caller cannot read).
pub fn all_agents<T>(
    db: &Connection,
    shape: impl FnMut(&Row<'_>) -> rusqlite::Result<Result<T, RegistryError>>,
) -> Result<Vec<T>, RegistryError> {
    let mut stmt = db.prepare_cached(&format!(
        "{DEFINITIONS} SELECT {AGENT_COLUMNS} {AGENTS_FROM}"
    ))?;
    let rows = stmt.query_map([], shape)?;
    let mut shaped = Vec::new();
    for row in rows {
        shaped.push(row??);
    }
    Ok(shaped)
}

/// Hands `f` each test campaign: `(id, rank, kind)` as [`DEFINITIONS`]
/// ranks them.
pub fn each_test(
    db: &Connection,
    f: impl FnMut(&Row<'_>) -> Result<(), RegistryError>,
) -> Result<(), RegistryError> {
    let mut stmt = db.prepare_cached(&format!("{DEFINITIONS} SELECT id, rank, kind FROM tests"))?;
    let rows = stmt.query([])?;
    each(rows, f)
}

/// Hands `f` every enrolment, the newest first (by rowid, no sorting):
/// `l.agent`, then [`LAST_COLUMNS`].
pub fn each_enrolment(
    db: &Connection,
    f: impl FnMut(&Row<'_>) -> Result<(), RegistryError>,
) -> Result<(), RegistryError> {
    let mut stmt = db.prepare_cached(&format!(
        "SELECT l.agent, {LAST_COLUMNS} FROM campaign_children l ORDER BY l.rowid DESC"
    ))?;
    let rows = stmt.query([])?;
    each(rows, f)
}

/// Hands `f` every step result that counts ([`STEP_RESULTS`]).
pub fn each_step_result(
    db: &Connection,
    f: impl FnMut(&Row<'_>) -> Result<(), RegistryError>,
) -> Result<(), RegistryError> {
    let mut stmt = db.prepare_cached(STEP_RESULTS)?;
    let rows = stmt.query([])?;
    each(rows, f)
}

fn each(
    mut rows: rusqlite::Rows<'_>,
    mut f: impl FnMut(&Row<'_>) -> Result<(), RegistryError>,
) -> Result<(), RegistryError> {
    while let Some(row) = rows.next()? {
        f(row)?;
    }
    Ok(())
}

/// The ids of the agents whose rows `changes` names (their `agents` row,
/// or a row of theirs in one of [`AGENT_TABLES`]); `None` when an agent's
/// row is gone (deleted).
pub fn changed_agents(
    db: &Connection,
    changes: &Changes,
) -> Result<Option<BTreeSet<String>>, RegistryError> {
    let rowids = |set: &BTreeSet<i64>| {
        serde_json::to_string(set).map_err(|e| RegistryError::Corrupt(e.to_string()))
    };
    let mut ids = BTreeSet::new();
    let mut owners = |sql: String, set| -> Result<usize, RegistryError> {
        let mut stmt = db.prepare_cached(&sql)?;
        let mut rows = stmt.query([rowids(set)?])?;
        let mut found = 0;
        while let Some(row) = rows.next()? {
            ids.insert(row.get::<_, String>(0)?);
            found += 1;
        }
        Ok(found)
    };
    const CHANGED: &str = "rowid IN (SELECT value FROM json_each(?1))";
    if owners(
        format!("SELECT id FROM agents WHERE {CHANGED}"),
        &changes.agents,
    )? < changes.agents.len()
    {
        return Ok(None);
    }
    for (table, column) in AGENT_TABLES {
        if let Some(set) = changes.rows.get(table) {
            // (A row gone again, rolled back, has no owner to read.)
            owners(format!("SELECT {column} FROM {table} WHERE {CHANGED}"), set)?;
        }
    }
    Ok(Some(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_columns_are_counted() {
        assert_eq!(AGENT_COLUMNS.split(',').count(), AGENT_COLUMN_COUNT);
    }

    #[test]
    fn the_literals_are_the_names_of_their_enums() {
        use crate::registry::campaign_states::Kind;
        use crate::registry::Admission;
        let tests = format!("kind IN ('{}', '{}')", Kind::Verify, Kind::Reverify);
        assert!(DEFINITIONS.contains(&tests));
        let accepted = format!("a.admission = '{}'", Admission::Accepted.as_str());
        assert_eq!(AGENT_COLUMNS.matches(&accepted).count(), 2);
        assert_eq!(AGENT_COLUMNS.matches('\'').count(), 4);
    }
}
