//! The statements of a child's report: where the child stands, the
//! report recorded once in `step_results`, the child moved on or ended.

use rusqlite::{params, OptionalExtension, Transaction};
use uuid::Uuid;

use crate::registry::campaign_states::{ChildState, ChildStep};
use crate::registry::RegistryError;

/// A child as a report finds it, with its campaign's step time.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Where it stands.
    pub state: ChildState,
    /// The step it is at or ended in.
    pub step: Option<ChildStep>,
    /// Host of its SSL port test.
    pub host: String,
    /// Port of its SSL port test.
    pub port: u16,
    /// The campaign's step time (ms).
    pub step_timeout_ms: i64,
}

/// A report to record in `step_results`.
#[derive(Debug, Clone, Copy)]
pub struct StepReportRow<'a> {
    /// The campaign.
    pub campaign: Uuid,
    /// The child.
    pub agent: Uuid,
    /// The step reported.
    pub step: ChildStep,
    /// Passed.
    pub ok: bool,
    /// The child's message.
    pub message: &'a str,
    /// Why it failed.
    pub cause: Option<&'a str>,
    /// When recorded (ms).
    pub at: i64,
    /// Whether the child was no longer at this step.
    pub late: bool,
}

/// Whether a child is acting on `step`.
pub fn is_at(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: Uuid,
    step: ChildStep,
) -> Result<bool, RegistryError> {
    Ok(tx
        .query_row(
            "SELECT state = ?4 AND step = ?3 FROM campaign_children WHERE campaign = ?1 AND agent = ?2",
            params![
                campaign.to_string(),
                agent.to_string(),
                step,
                ChildState::Acting
            ],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(false))
}

/// A child acting on the SSL port step: its target host and port and its
/// campaign's step time.
pub fn acting_on_ssl_port(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: Uuid,
) -> Result<Option<(String, u16, i64)>, RegistryError> {
    Ok(tx
        .query_row(
            "SELECT cc.target_host, cc.target_port, c.step_timeout_ms
             FROM campaign_children cc JOIN campaigns c ON c.id = cc.campaign
             WHERE cc.campaign = ?1 AND cc.agent = ?2 AND cc.state = ?3 AND cc.step = ?4",
            params![
                campaign.to_string(),
                agent.to_string(),
                ChildState::Acting,
                ChildStep::SslPort
            ],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?)
}

/// Sets a child's step deadline.
pub fn set_step_deadline(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: Uuid,
    step_deadline: i64,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaign_children SET step_deadline = ?3 WHERE campaign = ?1 AND agent = ?2",
        params![campaign.to_string(), agent.to_string(), step_deadline],
    )?;
    Ok(())
}

/// A child as a report finds it, if it is enrolled in `campaign`.
pub fn enrolled(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: Uuid,
) -> Result<Option<Enrolled>, RegistryError> {
    Ok(tx
        .query_row(
            "SELECT cc.state, cc.step, cc.target_host, cc.target_port, c.step_timeout_ms
             FROM campaign_children cc JOIN campaigns c ON c.id = cc.campaign
             WHERE cc.campaign = ?1 AND cc.agent = ?2",
            params![campaign.to_string(), agent.to_string()],
            |row| {
                Ok(Enrolled {
                    state: row.get(0)?,
                    step: row.get(1)?,
                    host: row.get(2)?,
                    port: row.get(3)?,
                    step_timeout_ms: row.get(4)?,
                })
            },
        )
        .optional()?)
}

/// Records a report, unless one for the same step is recorded already:
/// whether it was recorded.
pub fn record_step_result(
    tx: &Transaction<'_>,
    report: &StepReportRow<'_>,
) -> Result<bool, RegistryError> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO step_results (campaign, agent, step, ok, message, cause, at, late)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            report.campaign.to_string(),
            report.agent.to_string(),
            report.step,
            report.ok,
            report.message,
            report.cause,
            report.at,
            report.late
        ],
    )?;
    Ok(inserted != 0)
}

/// A child passed the certificate test: it moves on to the SSL port step,
/// due by `step_deadline`, not nudged yet.
pub fn to_ssl_port(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: Uuid,
    step_deadline: i64,
    message: &str,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaign_children SET step = ?5, step_deadline = ?3, message = ?4, nudged = 0
         WHERE campaign = ?1 AND agent = ?2",
        params![
            campaign.to_string(),
            agent.to_string(),
            step_deadline,
            message,
            ChildStep::SslPort
        ],
    )?;
    Ok(())
}

/// A child ends `state` with the message of its report (its cause left as
/// it is).
pub fn end_child(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: Uuid,
    state: ChildState,
    now: i64,
    message: &str,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaign_children SET state = ?3, finished_at = ?4, message = ?5
         WHERE campaign = ?1 AND agent = ?2",
        params![campaign.to_string(), agent.to_string(), state, now, message],
    )?;
    Ok(())
}

/// A child ends `state` with the message and cause of its report.
pub fn end_child_with_cause(
    tx: &Transaction<'_>,
    campaign: Uuid,
    agent: Uuid,
    state: ChildState,
    now: i64,
    message: &str,
    cause: Option<&str>,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE campaign_children SET state = ?3, finished_at = ?4, message = ?5, cause = ?6
         WHERE campaign = ?1 AND agent = ?2",
        params![
            campaign.to_string(),
            agent.to_string(),
            state,
            now,
            message,
            cause
        ],
    )?;
    Ok(())
}
