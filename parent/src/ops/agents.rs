//! `agents list | accept | reject | delete | exclude | include`: admission
//! of the agents that registered, and finding one by name or id.

use fleetls_proto::AgentKind;
use serde::{Deserialize, Serialize};

use super::cut_off::remove_agent_users;
use crate::app::App;
use crate::op_error::{internal, OpError};
use crate::registry::Agent;

/// One agent as `agents list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentEntry {
    /// Its id.
    pub id: uuid::Uuid,
    /// Display name (control characters replaced).
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Site (control characters replaced).
    pub location: Option<String>,
    /// `pending`, `accepted` or `rejected`.
    pub admission: crate::registry::Admission,
    /// Fingerprint of the key pinned for it (`None`: not pinned yet).
    pub key: Option<String>,
    /// The parent key it says it pinned.
    pub parent_key: Option<String>,
    /// Heard from recently.
    pub online: bool,
    /// What is wrong with its name: taken by another accepted agent, or
    /// printing like another's.
    #[serde(default)]
    pub name_flag: Option<String>,
    /// The enrollment token that admitted it.
    #[serde(default)]
    pub enrolled_by: Option<String>,
    /// When it first registered (ms).
    #[serde(default)]
    pub first_seen: u64,
}

/// `agents list`: every agent with its admission and keys.
pub fn agents_list(app: &App) -> Result<Vec<AgentEntry>, OpError> {
    let agents = app.registry.agents().map_err(internal)?;
    Ok(agents
        .into_iter()
        .map(|a| AgentEntry {
            id: a.id,
            name: crate::admission::printable(&a.name, crate::admission::MAX_NAME),
            kind: a.kind,
            location: a
                .location
                .as_deref()
                .map(|l| crate::admission::printable(l, crate::admission::MAX_NAME)),
            admission: a.admission,
            key: a
                .signing_key
                .as_deref()
                .and_then(fleetls_bus::seal::PublicKey::from_hex)
                .map(|k| k.fingerprint()),
            parent_key: a.parent_key,
            online: app.is_online(a.last_seen, a.present),
            name_flag: a.name_flag,
            enrolled_by: a.enrolled_by,
            first_seen: a.first_seen,
        })
        .collect())
}

/// Which agents an admission command is about.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentsRequest {
    /// Names or ids.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Every pending agent (accept only).
    #[serde(default)]
    pub all: bool,
    /// Why (exclude only: required there).
    #[serde(default)]
    pub reason: Option<String>,
    /// `accept --all`: yes, accept them all even when there are more than
    /// [`ACCEPT_ALL_UNASKED`].
    #[serde(default)]
    pub yes: bool,
    /// `reject --pending-older-than D`: every agent pending for longer
    /// than D (`30m`, `1d`).
    #[serde(default)]
    pub pending_older_than: Option<String>,
}

/// How many pending agents `agents accept --all` accepts without `--yes`:
/// beyond that it lists them and asks (fakes are cheap to register).
pub const ACCEPT_ALL_UNASKED: usize = 10;

/// What an admission command did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentsReport {
    /// The agents changed, by name.
    pub changed: Vec<String>,
    /// Their ids.
    #[serde(default)]
    pub ids: Vec<uuid::Uuid>,
    /// Agents left as they were, each with why (`accept --all`: a name
    /// taken or looking like another's since it registered).
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// Finds one agent by name or id; a name two agents share must be given
/// as an id.
pub(crate) fn find_agent(agents: &[Agent], wanted: &str) -> Result<Agent, OpError> {
    if let Ok(id) = wanted.parse::<uuid::Uuid>() {
        if let Some(agent) = agents.iter().find(|a| a.id == id) {
            return Ok(agent.clone());
        }
    }
    let named: Vec<&Agent> = agents.iter().filter(|a| a.name == wanted).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(OpError::BadRequest(format!(
            "no agent is called {:?}: see `fleetls-parent agents list`",
            crate::admission::printable(wanted, 80)
        ))),
        many => Err(OpError::BadRequest(format!(
            "{} agents are called {:?}; give the id instead: {}",
            many.len(),
            crate::admission::printable(wanted, 80),
            many.iter()
                .map(|a| a.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `agents accept|reject`: sets the admission of the agents named (or of
/// every pending agent with `all`, for accept).
pub fn agents_admit(
    app: &App,
    request: &AgentsRequest,
    admission: crate::registry::Admission,
) -> Result<AgentsReport, OpError> {
    use crate::registry::Admission;
    let agents = app.registry.agents().map_err(internal)?;
    let chosen: Vec<Agent> = if request.all {
        if admission != Admission::Accepted {
            return Err(OpError::BadRequest(
                "--all is for accept only: reject agents by name, or with --pending-older-than"
                    .into(),
            ));
        }
        accept_all(&agents, request.yes)?
    } else if let Some(age) = &request.pending_older_than {
        if admission != Admission::Rejected {
            return Err(OpError::BadRequest(
                "--pending-older-than is for reject only".into(),
            ));
        }
        let age = crate::duration::parse_duration(age)
            .map_err(|why| OpError::BadRequest(format!("--pending-older-than {age:?}: {why}")))?;
        let before = fleetls_proto::now_ms().saturating_sub(age.as_millis() as u64);
        agents
            .iter()
            .filter(|a| a.admission == Admission::Pending && a.first_seen < before)
            .cloned()
            .collect()
    } else if request.agents.is_empty() {
        return Err(OpError::BadRequest(
            "name at least one agent (or --all to accept every pending one)".into(),
        ));
    } else {
        request
            .agents
            .iter()
            .map(|w| find_agent(&agents, w))
            .collect::<Result<_, _>>()?
    };
    let mut report = AgentsReport::default();
    for agent in chosen {
        // A name is looked at again when all are accepted at once: a fake
        // that took a name before the genuine device was accepted, or one
        // accepted earlier in this same loop, makes it wait for a name.
        if request.all {
            let flag = app
                .registry
                .with_tx(|tx| {
                    let flag = crate::enrollment::name_flag(tx, &agent.id, &agent.name)?;
                    if flag.is_some() {
                        crate::enrollment::mark_name(tx, &agent.id, &agent.name, flag.as_deref())?;
                    }
                    Ok(flag)
                })
                .map_err(internal)?;
            if let Some(flag) = flag {
                tracing::warn!(agent = %agent.id, %flag, "left pending by accept --all: accept it by id");
                report.skipped.push(format!(
                    "{} ({}): {flag}",
                    crate::admission::printable(&agent.name, 80),
                    agent.id
                ));
                continue;
            }
        }
        app.registry
            .set_admission(&agent.id, admission)
            .map_err(internal)?;
        tracing::info!(agent = %agent.id, admission = admission.as_str(), "admission changed");
        report
            .changed
            .push(crate::admission::printable(&agent.name, 80));
        report.ids.push(agent.id);
    }
    Ok(report)
}

/// The agents `accept --all` takes: every pending one whose name is not
/// flagged (a taken or look-alike name is accepted only by name); more than
/// [`ACCEPT_ALL_UNASKED`] only with `yes`, else the refusal lists them.
fn accept_all(agents: &[Agent], yes: bool) -> Result<Vec<Agent>, OpError> {
    use crate::registry::Admission;
    let pending: Vec<Agent> = agents
        .iter()
        .filter(|a| a.admission == Admission::Pending && a.name_flag.is_none())
        .cloned()
        .collect();
    if pending.len() > ACCEPT_ALL_UNASKED && !yes {
        let mut names: Vec<String> = pending
            .iter()
            .take(20)
            .map(|a| {
                format!(
                    "{} ({}, {})",
                    crate::admission::printable(&a.name, 40),
                    a.kind,
                    a.id
                )
            })
            .collect();
        if pending.len() > names.len() {
            names.push(format!("… and {} more", pending.len() - names.len()));
        }
        return Err(OpError::Refused(format!(
            "{} agents are pending; anyone with the broker's credentials can register one, so look \
             before accepting them all: {}. Accept by name, reject the rest \
             (`agents reject --pending-older-than 1d`), or add --yes to accept all {}",
            pending.len(),
            names.join("; "),
            pending.len()
        )));
    }
    Ok(pending)
}

/// The longest reason an operator may give for an exclusion.
pub const MAX_REASON: usize = 200;

/// `agents exclude NAME --reason TEXT` (`reason` given) or `agents include
/// NAME` (`None`): keeps the agents on plain AMQP by decision — no
/// campaign, no switch, counted as excluded and listed with the reason by
/// `without-ssl` — or takes them back. A campaign already running keeps
/// the agents it enrolled.
pub fn agents_exclude(
    app: &App,
    request: &AgentsRequest,
    exclude: bool,
) -> Result<AgentsReport, OpError> {
    if request.agents.is_empty() {
        return Err(OpError::BadRequest("name at least one agent".into()));
    }
    let reason = match (exclude, request.reason.as_deref().map(str::trim)) {
        (false, _) => None,
        (true, None | Some("")) => {
            return Err(OpError::BadRequest(
                "say why the agent stays on plain: --reason TEXT (shown by status and without-ssl)"
                    .into(),
            ))
        }
        (true, Some(text)) if text.chars().count() > MAX_REASON => {
            return Err(OpError::BadRequest(format!(
                "the reason is {} characters long; keep it to {MAX_REASON}",
                text.chars().count()
            )))
        }
        (true, Some(text)) if text.chars().any(char::is_control) => {
            return Err(OpError::BadRequest(
                "the reason holds control characters (a newline, a tab, an escape); give one plain line"
                    .into(),
            ))
        }
        (true, Some(text)) => Some(text.to_owned()),
    };
    let agents = app.registry.agents().map_err(internal)?;
    let chosen: Vec<Agent> = request
        .agents
        .iter()
        .map(|w| find_agent(&agents, w))
        .collect::<Result<_, _>>()?;
    let mut report = AgentsReport::default();
    for agent in chosen {
        if agent.excluded.as_deref() == reason.as_deref() {
            continue;
        }
        app.registry
            .set_excluded(&agent.id, reason.as_deref())
            .map_err(internal)?;
        match &reason {
            Some(reason) => {
                tracing::info!(agent = %agent.id, reason, "agent kept on plain AMQP by decision")
            }
            None => tracing::info!(agent = %agent.id, "agent included again"),
        }
        report
            .changed
            .push(crate::admission::printable(&agent.name, 80));
        report.ids.push(agent.id);
    }
    Ok(report)
}

/// `agents delete NAME`: removes the agent's rows and its queue, revokes
/// its certificates and bans its key.
pub async fn agents_delete(app: &App, request: &AgentsRequest) -> Result<AgentsReport, OpError> {
    let agents = app.registry.agents().map_err(internal)?;
    if request.agents.is_empty() {
        return Err(OpError::BadRequest("name the agent to delete".into()));
    }
    let chosen: Vec<Agent> = request
        .agents
        .iter()
        .map(|w| find_agent(&agents, w))
        .collect::<Result<_, _>>()?;
    let channel = app.channel().ok_or_else(|| {
        OpError::Unavailable(
            "the parent is not connected to the broker right now (the agent's queue must be deleted too); try again in a moment".into(),
        )
    })?;
    let mut report = AgentsReport::default();
    for agent in chosen {
        let registry = app.registry.clone();
        let id = agent.id;
        tokio::task::spawn_blocking(move || registry.delete_agent(&id))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        channel
            .queue_delete(
                fleetls_proto::topology::agent_queue(&agent.id).as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .map_err(|e| {
                OpError::Unavailable(format!(
                    "the agent's rows are gone but its queue could not be deleted ({e}); run `agents delete {}` again",
                    agent.id
                ))
            })?;
        remove_agent_users(app, &[agent.id]).await?;
        tracing::info!(agent = %agent.id, "agent deleted; its key is banned");
        report
            .changed
            .push(crate::admission::printable(&agent.name, 80));
        report.ids.push(agent.id);
    }
    app.campaign_changed.notify_one();
    Ok(report)
}
