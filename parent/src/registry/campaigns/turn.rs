//! The statements of one engine turn over `campaigns` and
//! `campaign_children`: the campaign's row, the deadlines, the acting and
//! waiting children, the end; and those of a broker switch's window.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use fleetls_proto::Cause;

use crate::registry::campaign_states::{CampaignState, ChildState, ChildStep, Kind};
use crate::registry::RegistryError;

/// What a campaign's engine turn reads of its row.
#[derive(Debug, Clone)]
pub struct Head {
    /// Most children acting at once.
    pub window: i64,
    /// The campaign's deadline (ms).
    pub deadline_at: i64,
    /// Each step's time (ms).
    pub step_timeout_ms: i64,
    /// Which campaign.
    pub kind: Kind,
    /// The JSON of what its children are sent (broker switch, re-issue).
    pub params: Option<String>,
}

/// A child's current step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActingStep {
    /// The child.
    pub agent: Uuid,
    /// The step it is at.
    pub step: ChildStep,
    /// Host of its SSL port test.
    pub host: String,
    /// Port of its SSL port test.
    pub port: u16,
    /// The step's deadline (ms).
    pub deadline: u64,
}

/// What an engine turn reads of a campaign's row.
pub fn head(tx: &Connection, campaign: Uuid) -> Result<Head, RegistryError> {
    Ok(tx.query_row(
        "SELECT window, deadline_at, step_timeout_ms, kind, params FROM campaigns WHERE id = ?1",
        params![campaign.to_string()],
        |row| {
            Ok(Head {
                window: row.get(0)?,
                deadline_at: row.get(1)?,
                step_timeout_ms: row.get(2)?,
                kind: row.get(3)?,
                params: row.get(4)?,
            })
        },
    )?)
}

/// The campaign's deadline passed: every child still waiting or acting did
/// not participate, and the campaign timed out.
pub fn time_out(tx: &Transaction<'_>, campaign: Uuid, now: i64) -> Result<(), RegistryError> {
    let id = campaign.to_string();
    tx.execute(
        "UPDATE campaign_children SET state = ?3, finished_at = ?2,
             message = 'The campaign timed out before this child finished.', cause = ?6
         WHERE campaign = ?1 AND state IN (?4, ?5)",
        params![
            id,
            now,
            ChildState::DidNotParticipate,
            ChildState::Waiting,
            ChildState::Acting,
            Cause::Timeout.as_str()
        ],
    )?;
    tx.execute(
        "UPDATE campaigns SET state = ?3, finished_at = ?2 WHERE id = ?1",
        params![id, now, CampaignState::TimedOut],
    )?;
    Ok(())
}

/// Moves every acting child's step deadline on to at least `at` (ms).
pub fn extend_step_deadlines(
    tx: &Transaction<'_>,
    campaign: Uuid,
    at: i64,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaign_children SET step_deadline = max(step_deadline, ?2)
         WHERE campaign = ?1 AND state = ?3",
        params![campaign.to_string(), at, ChildState::Acting],
    )?;
    Ok(())
}

/// Every acting child whose step deadline passed did not participate.
pub fn time_out_steps(
    tx: &Transaction<'_>,
    campaign: Uuid,
    now: i64,
    step_timeout_ms: i64,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaign_children SET state = ?4, finished_at = ?2,
             message = 'No answer within the step timeout of ' || (?3 / 1000) || ' s.', cause = ?6
         WHERE campaign = ?1 AND state = ?5 AND step_deadline <= ?2",
        params![
            campaign.to_string(),
            now,
            step_timeout_ms,
            ChildState::DidNotParticipate,
            ChildState::Acting,
            Cause::Timeout.as_str()
        ],
    )?;
    Ok(())
}

/// The current step of every acting child.
pub fn acting_steps(
    tx: &Transaction<'_>,
    campaign: Uuid,
) -> Result<Vec<ActingStep>, RegistryError> {
    let mut acting = tx.prepare_cached(
        "SELECT agent, step, target_host, target_port, step_deadline FROM campaign_children
         WHERE campaign = ?1 AND state = ?2",
    )?;
    step_rows(
        &mut acting,
        params![campaign.to_string(), ChildState::Acting],
    )
}

/// Marks nudged, once, every acting child not answered by half its step
/// time, and returns their steps (to send once more).
pub fn nudge_late(
    tx: &Transaction<'_>,
    campaign: Uuid,
    now: i64,
    step_timeout_ms: i64,
) -> Result<Vec<ActingStep>, RegistryError> {
    let mut late = tx.prepare_cached(
        "UPDATE campaign_children SET nudged = 1
         WHERE campaign = ?1 AND state = ?4 AND nudged = 0
             AND step_deadline > ?2 AND step_deadline - ?2 <= ?3 / 2
         RETURNING agent, step, target_host, target_port, step_deadline",
    )?;
    step_rows(
        &mut late,
        params![
            campaign.to_string(),
            now,
            step_timeout_ms,
            ChildState::Acting
        ],
    )
}

/// The [`ActingStep`]s a statement over `campaign_children` returns; an
/// unreadable agent id is left out.
fn step_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<ActingStep>, RegistryError> {
    let rows = stmt.query_map(params, |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, ChildStep>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, u16>(3)?,
            row.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (agent, step, host, port, deadline) = row?;
        if let Ok(agent) = agent.parse() {
            out.push(ActingStep {
                agent,
                step,
                host,
                port,
                deadline: deadline as u64,
            });
        }
    }
    Ok(out)
}

/// How many children are acting.
pub fn count_acting(tx: &Transaction<'_>, campaign: Uuid) -> Result<i64, RegistryError> {
    Ok(tx.query_row(
        "SELECT count(*) FROM campaign_children WHERE campaign = ?1 AND state = ?2",
        params![campaign.to_string(), ChildState::Acting],
        |row| row.get(0),
    )?)
}

/// The next `limit` waiting children, in enrolment order: agent (as
/// stored), SSL port host, port.
pub fn next_waiting(
    tx: &Transaction<'_>,
    campaign: Uuid,
    limit: i64,
) -> Result<Vec<(String, String, u16)>, RegistryError> {
    let mut stmt = tx.prepare_cached(
        "SELECT agent, target_host, target_port FROM campaign_children
         WHERE campaign = ?1 AND state = ?3 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        params![campaign.to_string(), limit, ChildState::Waiting],
        |row| Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?)),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A child was offline when its turn came: it did not participate.
pub fn mark_offline(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: &str,
    now: i64,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaign_children SET state = ?4, finished_at = ?3,
             message = 'The child was offline when its turn came.'
         WHERE campaign = ?1 AND agent = ?2",
        params![
            campaign.to_string(),
            agent,
            now,
            ChildState::DidNotParticipate
        ],
    )?;
    Ok(())
}

/// A child starts acting on `step`, due by `step_deadline`.
pub fn start_child(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: &str,
    now: i64,
    step_deadline: i64,
    step: ChildStep,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaign_children SET state = ?6, step = ?5, started_at = ?3,
             step_deadline = ?4
         WHERE campaign = ?1 AND agent = ?2",
        params![
            campaign.to_string(),
            agent,
            now,
            step_deadline,
            step,
            ChildState::Acting
        ],
    )?;
    Ok(())
}

/// Records that `acting` children act at once, if that is the most yet.
pub fn note_acting(tx: &Transaction<'_>, campaign: Uuid, acting: i64) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaigns SET max_acting = max(max_acting, ?2) WHERE id = ?1",
        params![campaign.to_string(), acting],
    )?;
    Ok(())
}

/// Every child ended: the campaign finished.
pub fn finish(tx: &Transaction<'_>, campaign: Uuid, now: i64) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaigns SET state = ?3, finished_at = ?2 WHERE id = ?1",
        params![campaign.to_string(), now, CampaignState::Finished],
    )?;
    Ok(())
}

/// The earliest step deadline of an acting child (ms).
pub fn next_step_deadline(
    tx: &Transaction<'_>,
    campaign: Uuid,
) -> Result<Option<i64>, RegistryError> {
    Ok(tx.query_row(
        "SELECT min(step_deadline) FROM campaign_children WHERE campaign = ?1 AND state = ?2",
        params![campaign.to_string(), ChildState::Acting],
        |row| row.get::<_, Option<i64>>(0),
    )?)
}

/// An agent's step in `campaign` while it is acting and the step's
/// deadline is after `now`, with the campaign's kind and the JSON of what
/// its children are sent.
pub fn owed_step(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: Uuid,
    now: i64,
) -> Result<Option<(ActingStep, Kind, Option<String>)>, RegistryError> {
    let row: Option<(ChildStep, String, u16, i64, Kind, Option<String>)> = tx
        .query_row(
            "SELECT cc.step, cc.target_host, cc.target_port, cc.step_deadline, c.kind, c.params
             FROM campaign_children cc JOIN campaigns c ON c.id = cc.campaign
             WHERE cc.campaign = ?1 AND cc.agent = ?2 AND cc.state = ?4 AND cc.step_deadline > ?3",
            params![
                campaign.to_string(),
                agent.to_string(),
                now,
                ChildState::Acting
            ],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            },
        )
        .optional()?;
    Ok(row.map(|(step, host, port, deadline, kind, params)| {
        let step = ActingStep {
            agent,
            step,
            host,
            port,
            deadline: deadline as u64,
        };
        (step, kind, params)
    }))
}

/// A campaign's kind, window and the JSON of what its children are sent.
pub fn window_of(
    tx: &Transaction<'_>,
    campaign: Uuid,
) -> Result<(Kind, i64, Option<String>), RegistryError> {
    Ok(tx.query_row(
        "SELECT kind, window, params FROM campaigns WHERE id = ?1",
        params![campaign.to_string()],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?)
}

/// For each child that passed or failed after `since` (ms) and had
/// started: how long it took, order to report, and when it finished.
pub fn finished_since(
    tx: &Transaction<'_>,
    campaign: Uuid,
    since: i64,
) -> Result<Vec<(i64, i64)>, RegistryError> {
    let mut stmt = tx.prepare_cached(
        "SELECT finished_at - started_at, finished_at FROM campaign_children
         WHERE campaign = ?1 AND state IN (?3, ?4) AND finished_at > ?2
             AND started_at IS NOT NULL",
    )?;
    let rows = stmt.query_map(
        params![
            campaign.to_string(),
            since,
            ChildState::Passed,
            ChildState::Failed
        ],
        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sets a campaign's window.
pub fn set_window(tx: &Transaction<'_>, campaign: Uuid, window: i64) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaigns SET window = ?2 WHERE id = ?1",
        params![campaign.to_string(), window],
    )?;
    Ok(())
}
