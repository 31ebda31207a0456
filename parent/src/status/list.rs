//! The status list: each agent's row shaped as an [`AgentStatus`], with its
//! last result and the step results that count. The queries are the
//! registry's (`registry::views`); here, what a row says.
//!
//! The full list reads each table once (agents, enrolments, step results)
//! and joins them in memory: on a big network, an index lookup per agent
//! and table costs SQLite more than reading the tables whole.

use std::collections::HashMap;

use rusqlite::Connection;
use uuid::Uuid;

use super::{ssl_capable, AgentStatus, ViewContext};
use crate::campaign::{ChildStep, Kind, LastResult, Progress, StepResult};
use crate::registry::views::{self, AGENT_COLUMN_COUNT};
use crate::registry::RegistryError;

#[cfg(doc)]
use crate::registry::views::{
    AGENTS_FROM, AGENTS_ORDER, AGENT_COLUMNS, LAST_COLUMNS, LAST_ENROLMENT, STEP_RESULTS,
};

/// The agents a `WHERE` clause (over [`AGENTS_FROM`] and [`LAST_ENROLMENT`],
/// with what follows it: order, limit) selects, with `binds` for its
/// parameters, each with its last result and the step results that count:
/// one index lookup per agent and table, for a page or a few agents (the
/// whole list reads each table once instead, [`super::compute`]).
pub fn agents_where(
    db: &Connection,
    context: ViewContext,
    clause: &str,
    binds: &[rusqlite::types::Value],
) -> Result<Vec<AgentStatus>, RegistryError> {
    let mut agents = views::agents_where(db, clause, binds, |row| {
        // The test's kind and the last result follow the agent's columns.
        let last_result = match row.get::<_, Option<Kind>>(AGENT_COLUMN_COUNT)? {
            Some(kind) => row_to_last_result(row, AGENT_COLUMN_COUNT + 1, kind)?,
            None => None,
        };
        Ok(row_to_status(row, context)?.map(|agent| AgentStatus {
            last_result,
            ..agent
        }))
    })?;
    for agent in &mut agents {
        let Some(last) = agent.last_result.as_mut() else {
            continue;
        };
        let campaign = last.campaign;
        views::step_results_of(db, &campaign, &agent.id, |row| Ok(attach_step(last, row)?))?;
    }
    Ok(agents)
}

/// [`AGENTS_ORDER`] in Rust: by name, then id.
pub(super) fn list_order(a: &AgentStatus, b: &AgentStatus) -> std::cmp::Ordering {
    (a.name.as_str(), a.id).cmp(&(b.name.as_str(), b.id))
}

/// Each agent's position in a list.
pub(super) fn positions(agents: &[AgentStatus]) -> HashMap<Uuid, usize> {
    agents.iter().enumerate().map(|(i, a)| (a.id, i)).collect()
}

/// Every agent, with its last result and refusal, in the list's order, and
/// each one's position.
pub(super) fn agent_list(
    db: &Connection,
    context: ViewContext,
) -> Result<(Vec<AgentStatus>, HashMap<Uuid, usize>), RegistryError> {
    let mut agents = views::all_agents(db, |row| row_to_status(row, context))?;
    sort_in_place(&mut agents);
    let index = positions(&agents);
    let agent_at = |row: &rusqlite::Row<'_>| -> rusqlite::Result<Option<usize>> {
        let id = row.get_ref(0)?.as_str()?;
        Ok(id.parse().ok().and_then(|id| index.get(&id).copied()))
    };

    // Each agent's enrolment in the test of lowest rank, as LAST_ENROLMENT
    // picks it.
    let mut tests: HashMap<String, (i64, Kind)> = HashMap::new();
    views::each_test(db, |row| {
        tests.insert(row.get(0)?, (row.get(1)?, row.get(2)?));
        Ok(())
    })?;
    let mut ranks = vec![i64::MAX; agents.len()];
    // Newest enrolments first: an agent's first row is then most often its
    // last result, and the only one shaped.
    views::each_enrolment(db, |row| {
        let test = row.get_ref(1)?.as_str().ok().and_then(|id| tests.get(id));
        let Some((rank, kind)) = test else {
            return Ok(());
        };
        let Some(i) = agent_at(row)? else {
            return Ok(());
        };
        if *rank < ranks[i] {
            ranks[i] = *rank;
            agents[i].last_result = row_to_last_result(row, 1, *kind)?;
        }
        Ok(())
    })?;

    views::each_step_result(db, |row| {
        if let Some(i) = agent_at(row)? {
            if let Some(last) = agents[i].last_result.as_mut() {
                attach_step(last, row)?;
            }
        }
        Ok(())
    })?;
    Ok((agents, index))
}

/// Puts `agents` in [`AGENTS_ORDER`]: the positions are sorted, then the
/// rows moved in place (no second list of rows).
fn sort_in_place(agents: &mut [AgentStatus]) {
    let mut order: Vec<usize> = (0..agents.len()).collect();
    order.sort_unstable_by(|a, b| list_order(&agents[*a], &agents[*b]));
    for i in 0..order.len() {
        // Where the row meant for position i is now: earlier positions
        // were filled by swapping, so follow where their rows went.
        let mut j = order[i];
        while j < i {
            j = order[j];
        }
        agents.swap(i, j);
    }
}

/// The newest campaign's progress.
pub(super) fn newest_campaign(db: &Connection) -> Result<Option<Progress>, RegistryError> {
    match crate::campaign::latest(db)? {
        Some(id) => crate::campaign::progress(db, id),
        None => Ok(None),
    }
}

fn corrupt(what: impl std::fmt::Display) -> RegistryError {
    RegistryError::Corrupt(what.to_string())
}

/// Shapes the [`AGENT_COLUMNS`] of a row (without its last result); the
/// outer error is SQLite's, the inner one a value this build cannot read.
pub fn row_to_status(
    row: &rusqlite::Row<'_>,
    context: ViewContext,
) -> rusqlite::Result<Result<AgentStatus, RegistryError>> {
    let id: String = row.get(0)?;
    let kind: String = row.get(2)?;
    let version: String = row.get(3)?;
    let hostnames: String = row.get(5)?;
    let ips: String = row.get(6)?;
    let last_seen = row.get::<_, i64>(7)? as u64;
    let present: bool = row.get(17)?;
    let parsed = (|| {
        Ok(AgentStatus {
            id: id
                .parse()
                .map_err(|_| corrupt(format!("agent id {id:?}")))?,
            name: row.get(1)?,
            kind: kind.parse().map_err(RegistryError::Corrupt)?,
            ssl_capable: ssl_capable(&version, context.min_ssl_version),
            version,
            location: row.get(4)?,
            hostnames: serde_json::from_str(&hostnames).map_err(corrupt)?,
            ips: serde_json::from_str(&ips).map_err(corrupt)?,
            online: context.online(last_seen, present),
            connected: present,
            silent: context.silent(last_seen, present),
            last_seen,
            has_certificate: row.get(8)?,
            ssl: row.get(9)?,
            broker_tls: row.get(10)?,
            last_result: None,
            refusal: row.get(11)?,
            admission: row
                .get::<_, String>(12)?
                .parse()
                .map_err(RegistryError::Corrupt)?,
            compromised: row.get(13)?,
            certificate_not_after: row.get(14)?,
            excluded: row.get(15)?,
            certificate_ca: row.get(16)?,
        })
    })();
    Ok(parsed)
}

/// Shapes the [`LAST_COLUMNS`] of a row, from column `first` on, as a
/// result of a test of `kind`: none when the agent has no enrolment (or its
/// campaign id cannot be read), its step results still to attach.
pub fn row_to_last_result(
    row: &rusqlite::Row<'_>,
    first: usize,
    kind: Kind,
) -> rusqlite::Result<Option<LastResult>> {
    let Some(campaign) = row
        .get_ref(first)?
        .as_str_or_null()
        .ok()
        .flatten()
        .and_then(|id| id.parse::<Uuid>().ok())
    else {
        return Ok(None);
    };
    Ok(Some(LastResult {
        campaign,
        kind,
        state: row.get(first + 1)?,
        step: row.get(first + 2)?,
        message: row.get(first + 3)?,
        cause: row.get(first + 4)?,
        started_at: row.get::<_, Option<i64>>(first + 5)?.map(|t| t as u64),
        finished_at: row.get::<_, Option<i64>>(first + 6)?.map(|t| t as u64),
        cert_test: None,
        ssl_port: None,
    }))
}

/// Attaches one row of [`STEP_RESULTS`] to the last result it belongs to
/// (same campaign); other steps and campaigns change nothing.
pub fn attach_step(last: &mut LastResult, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
    let slot = match row.get_ref(2)?.as_str()?.parse::<ChildStep>() {
        Ok(ChildStep::CertTest) => &mut last.cert_test,
        Ok(ChildStep::SslPort) => &mut last.ssl_port,
        _ => return Ok(()),
    };
    let campaign = row.get_ref(1)?.as_str()?;
    if campaign.parse::<Uuid>().ok() != Some(last.campaign) {
        return Ok(());
    }
    *slot = Some(StepResult {
        ok: row.get(3)?,
        message: row.get(4)?,
        cause: row.get(5)?,
        at: row.get::<_, i64>(6)? as u64,
    });
    Ok(())
}
