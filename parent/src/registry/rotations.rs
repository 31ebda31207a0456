//! The CA rotations (`ca_rotations`): each one's phase, what it waits
//! for and its re-issue campaign, and the agents it concerns with what they
//! trust and which CA their certificate comes from. What the phases mean
//! and the files they make are `crate::rotation`'s.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use fleetls_proto::AgentKind;

use super::campaign_states::ChildState;
use super::{Admission, RegistryError};

/// Where a CA rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every agent learns to trust the new CA; the old one signs.
    Trust,
    /// The new CA signs; every agent is re-issued under it.
    Reissue,
    /// The old CA is trusted no more (kept as an archive).
    Finished,
}

impl Phase {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Trust => "trust",
            Phase::Reissue => "reissue",
            Phase::Finished => "finished",
        }
    }

    /// The phase that follows it.
    pub(crate) fn next(self) -> Phase {
        match self {
            Phase::Trust => Phase::Reissue,
            Phase::Reissue | Phase::Finished => Phase::Finished,
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    fn from_str(text: &str) -> Result<Phase, String> {
        match text {
            "trust" => Ok(Phase::Trust),
            "reissue" => Ok(Phase::Reissue),
            "finished" => Ok(Phase::Finished),
            other => Err(format!(
                "unknown CA rotation phase {other:?}: trust, reissue or finished"
            )),
        }
    }
}

/// One CA rotation, as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Its number.
    pub id: i64,
    /// `sha256:HEX` of the CA it replaces.
    pub old_ca: String,
    /// `sha256:HEX` of the new CA.
    pub new_ca: String,
    /// Where it stands.
    pub phase: Phase,
    /// When it began (ms).
    pub started_at: i64,
    /// The re-issue campaign, once it began.
    pub campaign: Option<Uuid>,
}

/// The newest CA rotation, if there was one.
pub fn latest(db: &Connection) -> Result<Option<Rotation>, RegistryError> {
    let row = db
        .query_row(
            "SELECT id, old_ca, new_ca, phase, started_at, campaign FROM ca_rotations
             ORDER BY id DESC LIMIT 1",
            [],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, old_ca, new_ca, phase, started_at, campaign)) = row else {
        return Ok(None);
    };
    Ok(Some(Rotation {
        id,
        old_ca,
        new_ca,
        phase: phase.parse().map_err(RegistryError::Corrupt)?,
        started_at,
        campaign: match campaign {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| RegistryError::Corrupt(format!("campaign id {text:?}")))?,
            ),
            None => None,
        },
    }))
}

/// Records a new rotation, in its first phase (trust), begun `now` (ms).
pub fn begin(
    tx: &Transaction<'_>,
    old_ca: &str,
    new_ca: &str,
    now: i64,
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO ca_rotations (old_ca, new_ca, phase, started_at, phase_at)
         VALUES (?1, ?2, ?4, ?3, ?3)",
        params![old_ca, new_ca, now, Phase::Trust.as_str()],
    )?;
    Ok(())
}

/// Records that rotation `id` took phase `next` at `now` (ms): it waits
/// for nothing yet, and a finished one is finished then.
pub fn record_phase(
    tx: &Transaction<'_>,
    id: i64,
    next: Phase,
    now: i64,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE ca_rotations SET phase = ?2, phase_at = ?3, waiting = NULL,
             finished_at = CASE WHEN ?2 = ?4 THEN ?3 END
         WHERE id = ?1",
        params![id, next.as_str(), now, Phase::Finished.as_str()],
    )?;
    Ok(())
}

/// Records what rotation `id` waits for besides the agents (the broker),
/// or that it waits for nothing.
pub fn record_waiting(
    tx: &Transaction<'_>,
    id: i64,
    waiting: Option<&str>,
) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE ca_rotations SET waiting = ?2 WHERE id = ?1 AND waiting IS NOT ?2",
        params![id, waiting],
    )?;
    Ok(())
}

/// Records the re-issue campaign of rotation `id`.
pub fn record_campaign(tx: &Transaction<'_>, id: i64, campaign: Uuid) -> Result<(), RegistryError> {
    tx.execute(
        "UPDATE ca_rotations SET campaign = ?2 WHERE id = ?1",
        params![id, campaign.to_string()],
    )?;
    Ok(())
}

/// What each agent concerned says it trusts and which CA its certificate
/// comes from.
pub struct Follower {
    /// The agent.
    pub id: Uuid,
    /// When it was last heard from (ms).
    pub last_seen: u64,
    /// It consumes its queue now, as the broker says.
    pub present: bool,
    /// The CAs it says it trusts.
    pub trusted: Vec<String>,
    /// The CA of its valid certificate.
    pub ca: Option<String>,
}

/// Every agent a rotation concerns: accepted, holding a valid certificate,
/// not mPOS.
pub fn followers(db: &Connection, active_since: u64) -> Result<Vec<Follower>, RegistryError> {
    let mut stmt = db.prepare_cached(
        "SELECT a.id, a.last_seen, a.trusted_cas, a.present,
             (SELECT c.ca FROM certificates c WHERE c.agent_id = a.id AND c.revoked = 0
              ORDER BY c.issued_at DESC LIMIT 1)
         FROM agents a
         WHERE a.admission = ?2 AND a.kind != ?3 AND (a.present OR a.last_seen >= ?1)
           AND EXISTS (SELECT 1 FROM certificates c WHERE c.agent_id = a.id AND c.revoked = 0)",
    )?;
    let rows = stmt.query_map(
        params![
            active_since as i64,
            Admission::Accepted.as_str(),
            AgentKind::Mpos.as_str()
        ],
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (id, last_seen, trusted, present, ca) = row?;
        let id = id
            .parse()
            .map_err(|_| RegistryError::Corrupt(format!("agent id {id:?}")))?;
        out.push(Follower {
            id,
            last_seen: last_seen as u64,
            present,
            trusted: serde_json::from_str(&trusted).unwrap_or_default(),
            ca,
        });
    }
    Ok(out)
}

/// What rotation `id` waits for besides the agents (the broker), if anything.
pub fn waiting(db: &Connection, id: i64) -> Result<Option<String>, RegistryError> {
    Ok(db.query_row(
        "SELECT waiting FROM ca_rotations WHERE id = ?1",
        params![id],
        |row| row.get(0),
    )?)
}

/// The children acting in the re-issue campaign `campaign`.
pub fn acting_in(tx: &Transaction<'_>, campaign: Uuid) -> Result<Vec<String>, RegistryError> {
    let mut stmt = tx
        .prepare_cached("SELECT agent FROM campaign_children WHERE campaign = ?1 AND state = ?2")?;
    let rows = stmt.query_map(params![campaign.to_string(), ChildState::Acting], |row| {
        row.get(0)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
