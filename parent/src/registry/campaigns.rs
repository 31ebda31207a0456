//! The campaign tables: `campaigns` (one row a campaign: kind, state,
//! window, deadlines, the JSON of what its children are sent),
//! `campaign_children` (one row an enrolled child: where it stands, its
//! step and that step's deadline) and `step_results` (each report, once).
//! Every statement [`crate::campaign`] and the operations run over them;
//! states, kinds and steps are bound as the enums of
//! [`campaign_states`](super::campaign_states). Here: the reads of a
//! campaign as a whole and its creation; the statements of an engine turn
//! and of a report are in the two submodules, re-exported here.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::campaign_states::{CampaignState, ChildState, Kind};
use super::{RegistryError, DEFINITIONS, LAST_ENROLMENT};

mod reports;
mod turn;

pub use reports::{
    acting_on_ssl_port, end_child, end_child_with_cause, enrolled, is_at, record_step_result,
    set_step_deadline, to_ssl_port, Enrolled, StepReportRow,
};
pub use turn::{
    acting_steps, count_acting, extend_step_deadlines, finish, finished_since, head, mark_offline,
    next_step_deadline, next_waiting, note_acting, nudge_late, owed_step, set_window, start_child,
    time_out, time_out_steps, window_of, ActingStep, Head,
};

/// The progress of a campaign (a query over the registry).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Its id.
    pub id: Uuid,
    /// Which campaign.
    pub kind: Kind,
    /// Where it stands.
    pub state: CampaignState,
    /// Most children acting at once.
    pub window: usize,
    /// The most that ever acted at once (from the parent's own record).
    pub max_acting: usize,
    /// Children enrolled.
    pub total: usize,
    /// Not started yet.
    pub waiting: usize,
    /// Acting now.
    pub acting: usize,
    /// Passed both steps.
    pub passed: usize,
    /// Reported an error.
    pub failed: usize,
    /// Did not answer, was offline, or the campaign timed out first.
    pub did_not_participate: usize,
    /// Start, ms since the epoch.
    pub started_at: u64,
    /// Campaign deadline, ms since the epoch.
    pub deadline_at: u64,
    /// End, ms since the epoch.
    pub finished_at: Option<u64>,
}

impl Progress {
    /// Whether the campaign is over.
    pub fn is_over(&self) -> bool {
        self.state != CampaignState::Running
    }
}

/// A new campaign's row.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    /// Its id.
    pub id: Uuid,
    /// Which campaign.
    pub kind: Kind,
    /// Most children acting at once.
    pub window: i64,
    /// Start (ms).
    pub started_at: i64,
    /// The campaign's deadline (ms).
    pub deadline_at: i64,
    /// Each step's time (ms).
    pub step_timeout_ms: i64,
    /// The JSON of what its children are sent.
    pub params: Option<String>,
}

fn parse_id(id: Option<String>) -> Option<Uuid> {
    id.and_then(|id| id.parse().ok())
}

/// The running campaign, if any.
pub fn running(tx: &Connection) -> Result<Option<Uuid>, RegistryError> {
    let id: Option<String> = tx
        .query_row(
            "SELECT id FROM campaigns WHERE state = ?1 ORDER BY started_at LIMIT 1",
            params![CampaignState::Running],
            |row| row.get(0),
        )
        .optional()?;
    Ok(parse_id(id))
}

/// The newest campaign.
pub fn latest(db: &Connection) -> Result<Option<Uuid>, RegistryError> {
    let id: Option<String> = db
        .query_row(
            "SELECT id FROM campaigns ORDER BY started_at DESC, rowid DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(parse_id(id))
}

/// The newest campaign of one kind.
pub fn latest_of(db: &Connection, kind: Kind) -> Result<Option<Uuid>, RegistryError> {
    let id: Option<String> = db
        .query_row(
            "SELECT id FROM campaigns WHERE kind = ?1 ORDER BY started_at DESC, rowid DESC LIMIT 1",
            params![kind],
            |row| row.get(0),
        )
        .optional()?;
    Ok(parse_id(id))
}

/// The progress of one campaign.
pub fn progress(db: &Connection, campaign: Uuid) -> Result<Option<Progress>, RegistryError> {
    let id = campaign.to_string();
    let head = db
        .query_row(
            "SELECT kind, state, window, max_acting, started_at, deadline_at, finished_at
             FROM campaigns WHERE id = ?1",
            params![id],
            |row| {
                Ok(Progress {
                    id: campaign,
                    kind: row.get(0)?,
                    state: row.get(1)?,
                    window: row.get::<_, i64>(2)? as usize,
                    max_acting: row.get::<_, i64>(3)? as usize,
                    started_at: row.get::<_, i64>(4)? as u64,
                    deadline_at: row.get::<_, i64>(5)? as u64,
                    finished_at: row.get::<_, Option<i64>>(6)?.map(|t| t as u64),
                    ..Progress::default()
                })
            },
        )
        .optional()?;
    let Some(mut progress) = head else {
        return Ok(None);
    };
    let mut stmt = db.prepare_cached(
        "SELECT state, count(*) FROM campaign_children WHERE campaign = ?1 GROUP BY state",
    )?;
    let rows = stmt.query_map(params![id], |row| {
        Ok((row.get::<_, ChildState>(0)?, row.get::<_, i64>(1)? as usize))
    })?;
    for row in rows {
        let (state, n) = row?;
        progress.total += n;
        match state {
            ChildState::Waiting => progress.waiting = n,
            ChildState::Acting => progress.acting = n,
            ChildState::Passed => progress.passed = n,
            ChildState::Failed => progress.failed = n,
            ChildState::DidNotParticipate => progress.did_not_participate += n,
        }
    }
    Ok(Some(progress))
}

/// Each agent's last test result (its enrolment in the newest verify or
/// reverify it took part in), read from the registry with the same
/// definitions as the status list: what `reverify` and the switches choose
/// children by.
pub fn last_results(
    db: &Connection,
) -> Result<HashMap<Uuid, (ChildState, Option<String>)>, RegistryError> {
    let mut stmt = db.prepare_cached(&format!(
        "{DEFINITIONS} SELECT a.id, l.state, l.message FROM agents a {LAST_ENROLMENT}
         WHERE l.state IS NOT NULL"
    ))?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            (
                row.get::<_, ChildState>(1)?,
                row.get::<_, Option<String>>(2)?,
            ),
        ))
    })?;
    let mut last = HashMap::new();
    for row in rows {
        let (id, state) = row?;
        let id = id
            .parse()
            .map_err(|_| RegistryError::Corrupt(format!("agent id {id:?}")))?;
        last.insert(id, state);
    }
    Ok(last)
}

/// How many children passed a switch or a force-switch, over every
/// campaign: whether the network is on SSL yet.
pub fn switched_children(db: &Connection) -> Result<i64, RegistryError> {
    Ok(db.query_row(
        "SELECT count(*) FROM campaigns c JOIN campaign_children cc ON cc.campaign = c.id
         WHERE c.kind IN (?1, ?2) AND cc.state = ?3",
        params![Kind::Switch, Kind::ForceSwitch, ChildState::Passed],
        |row| row.get::<_, i64>(0),
    )?)
}

/// The agent and message of every child that failed a broker switch,
/// oldest campaign first (why each stayed on plain AMQP).
pub fn broker_switch_failures(db: &Connection) -> Result<Vec<(String, String)>, RegistryError> {
    let mut stmt = db.prepare(
        "SELECT cc.agent, cc.message FROM campaign_children cc JOIN campaigns c ON c.id = cc.campaign
         WHERE c.kind = ?1 AND cc.state = ?2 ORDER BY c.started_at",
    )?;
    let rows = stmt.query_map(params![Kind::SwitchBroker, ChildState::Failed], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records a new running campaign.
pub fn insert(tx: &Transaction<'_>, campaign: &NewCampaign) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO campaigns (id, kind, state, window, started_at, deadline_at, step_timeout_ms, params)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            campaign.id.to_string(),
            campaign.kind,
            CampaignState::Running,
            campaign.window,
            campaign.started_at,
            campaign.deadline_at,
            campaign.step_timeout_ms,
            campaign.params
        ],
    )?;
    Ok(())
}

/// Enrols `children` (agent, SSL port host, port) in `campaign`, waiting,
/// in that order.
pub fn enrol<'a>(
    tx: &Transaction<'_>,
    campaign: Uuid,
    children: impl IntoIterator<Item = (Uuid, &'a str, u16)>,
) -> Result<(), RegistryError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO campaign_children (campaign, agent, seq, state, target_host, target_port)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (seq, (agent, host, port)) in children.into_iter().enumerate() {
        insert.execute(params![
            campaign.to_string(),
            agent.to_string(),
            seq as i64,
            ChildState::Waiting,
            host,
            port
        ])?;
    }
    Ok(())
}
