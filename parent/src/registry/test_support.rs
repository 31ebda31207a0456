//! Rows written straight into the registry's tables, for the unit tests of
//! the modules above it: a test sets up the state it judges (an agent heard
//! long ago, a campaign already finished, a deadline passed) without the
//! messages that would lead there, and reads back what no product query
//! returns. Values are written as stored, unchecked: a test may write one
//! the product would refuse, to see that it is refused.
//!
//! Every function takes the connection (or a transaction, through `Deref`)
//! of [`Registry::with_tx`](super::Registry::with_tx) or
//! [`Registry::with_db`](super::Registry::with_db), so the update hook sees
//! each write as it would a product one.

use rusqlite::{params, Connection};
use uuid::Uuid;

use super::rotations::Phase;
use super::RegistryError;

/// An `agents` row, first seen at 0.
pub(crate) struct AgentRow<'a> {
    /// The agent's id.
    pub(crate) id: Uuid,
    /// Its name (two agents may share one).
    pub(crate) name: &'a str,
    /// Its kind as stored: `child`, `local-parent`, `mpos`.
    pub(crate) kind: &'a str,
    /// Its version as stored, e.g. `1.0.0`.
    pub(crate) version: &'a str,
    /// Its location.
    pub(crate) location: &'a str,
    /// Its hostnames, a JSON array.
    pub(crate) hostnames: &'a str,
    /// Its IP addresses, a JSON array.
    pub(crate) ips: &'a str,
    /// When it was last heard (ms).
    pub(crate) last_seen: i64,
    /// Whether it says it holds a certificate.
    pub(crate) has_certificate: bool,
}

/// Inserts `row` into `agents`.
pub(crate) fn insert_agent_row(db: &Connection, row: &AgentRow<'_>) -> Result<(), RegistryError> {
    db.execute(
        "INSERT INTO agents (id, name, kind, version, location, hostnames, ips,
             first_seen, last_seen, has_certificate)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9)",
        params![
            row.id.to_string(),
            row.name,
            row.kind,
            row.version,
            row.location,
            row.hostnames,
            row.ips,
            row.last_seen,
            row.has_certificate
        ],
    )?;
    Ok(())
}

/// Sets when `agent` was last heard (ms).
pub(crate) fn set_last_seen(db: &Connection, agent: Uuid, at: i64) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
        params![agent.to_string(), at],
    )?;
    Ok(())
}

/// Sets whether `agent` has switched to SSL.
pub(crate) fn set_ssl(db: &Connection, agent: Uuid, ssl: bool) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE agents SET ssl = ?2 WHERE id = ?1",
        params![agent.to_string(), ssl],
    )?;
    Ok(())
}

/// Sets the version `agent` reports, as stored.
pub(crate) fn set_version(
    db: &Connection,
    agent: Uuid,
    version: &str,
) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE agents SET version = ?2 WHERE id = ?1",
        params![agent.to_string(), version],
    )?;
    Ok(())
}

/// Renames `agent`.
pub(crate) fn set_name(db: &Connection, agent: Uuid, name: &str) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE agents SET name = ?2 WHERE id = ?1",
        params![agent.to_string(), name],
    )?;
    Ok(())
}

/// A `certificates` row.
pub(crate) struct CertificateRow<'a> {
    /// Its serial, unique.
    pub(crate) serial: &'a str,
    /// The agent it was issued to.
    pub(crate) agent: Uuid,
    /// Its subject.
    pub(crate) subject: &'a str,
    /// When it expires (ms).
    pub(crate) not_after: i64,
    /// When it was issued (ms).
    pub(crate) issued_at: i64,
    /// Whether it was revoked.
    pub(crate) revoked: bool,
    /// Its chain, PEM.
    pub(crate) chain_pem: &'a str,
    /// Whether it renewed an earlier certificate of the agent.
    pub(crate) renewal: bool,
}

/// Inserts `row` into `certificates`.
pub(crate) fn insert_certificate_row(
    db: &Connection,
    row: &CertificateRow<'_>,
) -> Result<(), RegistryError> {
    db.execute(
        "INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, revoked,
             chain_pem, renewal) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            row.serial,
            row.agent.to_string(),
            row.subject,
            row.not_after,
            row.issued_at,
            row.revoked,
            row.chain_pem,
            row.renewal
        ],
    )?;
    Ok(())
}

/// Records that `agent`'s CSR was refused for `reason` at `at` (ms).
pub(crate) fn insert_refusal(
    db: &Connection,
    agent: Uuid,
    reason: &str,
    at: i64,
) -> Result<(), RegistryError> {
    db.execute(
        "INSERT INTO refusals (agent_id, reason, at) VALUES (?1, ?2, ?3)",
        params![agent.to_string(), reason, at],
    )?;
    Ok(())
}

/// Deletes `agent`'s refusal, if any.
pub(crate) fn delete_refusal(db: &Connection, agent: Uuid) -> Result<(), RegistryError> {
    db.execute(
        "DELETE FROM refusals WHERE agent_id = ?1",
        params![agent.to_string()],
    )?;
    Ok(())
}

/// Inserts a finished campaign of `kind` (as stored), begun and due at
/// `started_at` (ms), with a window of 10 and a step timeout of 1 s, and
/// returns its id. It has no children: see [`insert_campaign_child`].
pub(crate) fn insert_finished_campaign(
    db: &Connection,
    kind: &str,
    started_at: i64,
) -> Result<Uuid, RegistryError> {
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO campaigns (id, kind, state, window, started_at, deadline_at,
             step_timeout_ms) VALUES (?1, ?2, 'finished', 10, ?3, ?3, 1000)",
        params![id.to_string(), kind, started_at],
    )?;
    Ok(id)
}

/// Inserts `agent` as the `seq`th child of `campaign`, in `state` (as
/// stored), at the `ssl-port` step against `target_host` port 1, with the
/// message `msg` and no cause.
pub(crate) fn insert_campaign_child(
    db: &Connection,
    campaign: Uuid,
    agent: Uuid,
    seq: usize,
    state: &str,
    target_host: &str,
) -> Result<(), RegistryError> {
    db.execute(
        "INSERT INTO campaign_children (campaign, agent, seq, state, step, target_host,
             target_port, message, cause)
         VALUES (?1, ?2, ?3, ?4, 'ssl-port', ?5, 1, 'msg', NULL)",
        params![
            campaign.to_string(),
            agent.to_string(),
            seq as i64,
            state,
            target_host
        ],
    )?;
    Ok(())
}

/// A `step_results` row, with no cause.
pub(crate) struct StepResultRow<'a> {
    /// The campaign it belongs to.
    pub(crate) campaign: Uuid,
    /// The child that reported it.
    pub(crate) agent: Uuid,
    /// The step, as stored: `cert-test`, `ssl-port`.
    pub(crate) step: &'a str,
    /// Whether the step passed.
    pub(crate) ok: bool,
    /// What the child said.
    pub(crate) message: &'a str,
    /// When it was reported (ms).
    pub(crate) at: i64,
    /// Whether it came after the child's turn had ended.
    pub(crate) late: bool,
}

/// Inserts `row` into `step_results`.
pub(crate) fn insert_step_result(
    db: &Connection,
    row: &StepResultRow<'_>,
) -> Result<(), RegistryError> {
    db.execute(
        "INSERT INTO step_results (campaign, agent, step, ok, message, at, late)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            row.campaign.to_string(),
            row.agent.to_string(),
            row.step,
            row.ok,
            row.message,
            row.at,
            row.late
        ],
    )?;
    Ok(())
}

/// Sets the state (as stored) and message of `agent` in every campaign it
/// is a child of.
pub(crate) fn set_children_state(
    db: &Connection,
    agent: Uuid,
    state: &str,
    message: &str,
) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE campaign_children SET state = ?2, message = ?3 WHERE agent = ?1",
        params![agent.to_string(), state, message],
    )?;
    Ok(())
}

/// Marks `agent`'s turn in `campaign` passed: ordered at `started_at`,
/// finished at `finished_at` (ms).
pub(crate) fn set_child_passed(
    db: &Connection,
    campaign: Uuid,
    agent: Uuid,
    started_at: i64,
    finished_at: i64,
) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE campaign_children SET state = 'passed', started_at = ?3, finished_at = ?4
         WHERE campaign = ?1 AND agent = ?2",
        params![
            campaign.to_string(),
            agent.to_string(),
            started_at,
            finished_at
        ],
    )?;
    Ok(())
}

/// Sets the step deadline (ms) of every child of `campaign`.
pub(crate) fn set_step_deadlines(
    db: &Connection,
    campaign: Uuid,
    at: i64,
) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE campaign_children SET step_deadline = ?2 WHERE campaign = ?1",
        params![campaign.to_string(), at],
    )?;
    Ok(())
}

/// Sets the step deadline (ms) of `agent` in `campaign`.
pub(crate) fn set_step_deadline(
    db: &Connection,
    campaign: Uuid,
    agent: Uuid,
    at: i64,
) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE campaign_children SET step_deadline = ?3 WHERE campaign = ?1 AND agent = ?2",
        params![campaign.to_string(), agent.to_string(), at],
    )?;
    Ok(())
}

/// Why each child of `campaign` ended, if it was said, in the children's
/// order.
pub(crate) fn child_causes(
    db: &Connection,
    campaign: Uuid,
) -> Result<Vec<Option<String>>, RegistryError> {
    let mut stmt =
        db.prepare("SELECT cause FROM campaign_children WHERE campaign = ?1 ORDER BY seq")?;
    let rows = stmt.query_map(params![campaign.to_string()], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether `agent`'s current step was sent again (the `nudged` column of
/// its first child row).
pub(crate) fn nudged(db: &Connection, agent: Uuid) -> Result<i64, RegistryError> {
    Ok(db.query_row(
        "SELECT nudged FROM campaign_children WHERE agent = ?1",
        params![agent.to_string()],
        |r| r.get(0),
    )?)
}

/// Sets the state of `campaign`, as stored.
pub(crate) fn set_campaign_state(
    db: &Connection,
    campaign: Uuid,
    state: &str,
) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE campaigns SET state = ?2 WHERE id = ?1",
        params![campaign.to_string(), state],
    )?;
    Ok(())
}

/// Sets the kind of `campaign`, as stored: any text, known or not.
pub(crate) fn set_campaign_kind(
    db: &Connection,
    campaign: Uuid,
    kind: &str,
) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE campaigns SET kind = ?2 WHERE id = ?1",
        params![campaign.to_string(), kind],
    )?;
    Ok(())
}

/// Sets when `campaign` is due to end (ms).
pub(crate) fn set_campaign_deadline(
    db: &Connection,
    campaign: Uuid,
    at: i64,
) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE campaigns SET deadline_at = ?2 WHERE id = ?1",
        params![campaign.to_string(), at],
    )?;
    Ok(())
}

/// Records CA rotation 1, from `old_ca` to `new_ca`, begun at 0, in
/// `phase`; if it is there already, only its phase changes.
pub(crate) fn set_rotation_phase(
    db: &Connection,
    old_ca: &str,
    new_ca: &str,
    phase: Phase,
) -> Result<(), RegistryError> {
    db.execute(
        "INSERT INTO ca_rotations (id, old_ca, new_ca, phase, started_at, phase_at)
         VALUES (1, ?1, ?2, ?3, 0, 0)
         ON CONFLICT(id) DO UPDATE SET phase = excluded.phase",
        params![old_ca, new_ca, phase.as_str()],
    )?;
    Ok(())
}

/// Inserts a CA rotation from `old_ca` to `new_ca`, begun at 0, in `phase`,
/// run by `campaign`.
pub(crate) fn insert_rotation(
    db: &Connection,
    old_ca: &str,
    new_ca: &str,
    phase: Phase,
    campaign: Uuid,
) -> Result<(), RegistryError> {
    db.execute(
        "INSERT INTO ca_rotations (old_ca, new_ca, phase, started_at, phase_at, campaign)
         VALUES (?1, ?2, ?3, 0, 0, ?4)",
        params![old_ca, new_ca, phase.as_str(), campaign.to_string()],
    )?;
    Ok(())
}

/// Sets when the enrolment token `token` (its id) expires (ms).
pub(crate) fn set_token_expiry(db: &Connection, token: &str, at: i64) -> Result<(), RegistryError> {
    db.execute(
        "UPDATE enroll_tokens SET expires_at = ?2 WHERE id = ?1",
        params![token, at],
    )?;
    Ok(())
}
