//! Campaigns: one run of remote actions over many children (`verify`,
//! `reverify`), with at most `window` children acting at once.
//!
//! Everything lives in the registry, so a parent killed mid-campaign
//! resumes where it was: the engine re-sends the step to children that were
//! acting, a duplicate or late report is recorded once and changes nothing,
//! and every child ends in exactly one of passed, failed or did not
//! participate. The engine fills the window; reports move children forward
//! inside the transaction that records them.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use fleetls_proto::{RunStep, Step, StepReport, StepSpec, ToChild, UseBrokerTls, UseSsl};

use crate::broker::Outgoing;
use crate::registry::RegistryError;

/// Which campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Every eligible child holding a certificate (and an empty
    /// [`Progress`]'s kind).
    #[default]
    Verify,
    /// Only the children whose last result was not a pass.
    Reverify,
    /// "Use SSL connection": the children that passed switch to SSL mode.
    Switch,
    /// "Force SSL Switchover": every eligible child switches, tested or not.
    ForceSwitch,
    /// "Use SSL connection for RabbitMQ": every switched child moves to AMQPS.
    SwitchBroker,
    /// A CA rotation: every agent gets a certificate from the new CA.
    Reissue,
}

impl Kind {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Verify => "verify",
            Kind::Reverify => "reverify",
            Kind::Switch => "switch",
            Kind::ForceSwitch => "force-switch",
            Kind::SwitchBroker => "switch-broker",
            Kind::Reissue => "reissue",
        }
    }

    /// Whether it is the two-step test.
    pub fn is_test(self) -> bool {
        matches!(self, Kind::Verify | Kind::Reverify)
    }

    /// The first (for switches, the only) step of a child.
    fn first_step(self) -> &'static str {
        match self {
            Kind::Verify | Kind::Reverify => "cert-test",
            Kind::Switch | Kind::ForceSwitch => "use-ssl",
            Kind::SwitchBroker => "use-broker-tls",
            Kind::Reissue => "reissue",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    /// A kind by its name; an unknown name is an error, never a default.
    fn from_str(text: &str) -> Result<Kind, String> {
        match text {
            "verify" => Ok(Kind::Verify),
            "reverify" => Ok(Kind::Reverify),
            "switch" => Ok(Kind::Switch),
            "force-switch" => Ok(Kind::ForceSwitch),
            "switch-broker" => Ok(Kind::SwitchBroker),
            "reissue" => Ok(Kind::Reissue),
            other => Err(format!(
                "unknown campaign kind {other:?}: verify, reverify, switch, force-switch, switch-broker or reissue"
            )),
        }
    }
}

/// Where a child stands in a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Enrolled, not started yet.
    #[default]
    Waiting,
    /// Counted in the window: a step was sent.
    Acting,
    /// Passed every step.
    Passed,
    /// Reported a failure.
    Failed,
    /// Did not answer, was offline, or the campaign ended first.
    DidNotParticipate,
}

impl ChildState {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Waiting => "waiting",
            ChildState::Acting => "acting",
            ChildState::Passed => "passed",
            ChildState::Failed => "failed",
            ChildState::DidNotParticipate => "did_not_participate",
        }
    }
}

impl std::str::FromStr for ChildState {
    type Err = String;

    fn from_str(text: &str) -> Result<ChildState, String> {
        [
            ChildState::Waiting,
            ChildState::Acting,
            ChildState::Passed,
            ChildState::Failed,
            ChildState::DidNotParticipate,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| format!("unknown child state {text:?}"))
    }
}

/// Where a campaign stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Children are still waiting or acting.
    #[default]
    Running,
    /// Every child ended.
    Finished,
    /// The campaign's deadline came first.
    TimedOut,
}

impl CampaignState {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Running => "running",
            CampaignState::Finished => "finished",
            CampaignState::TimedOut => "timed_out",
        }
    }
}

impl std::str::FromStr for CampaignState {
    type Err = String;

    fn from_str(text: &str) -> Result<CampaignState, String> {
        [
            CampaignState::Running,
            CampaignState::Finished,
            CampaignState::TimedOut,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| format!("unknown campaign state {text:?}"))
    }
}

/// Reads the enums above from the registry's text columns: a value this
/// build does not know is an error that names it, never a default.
macro_rules! text_column {
    ($($t:ty),*) => {$(
        impl rusqlite::types::FromSql for $t {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
    )*};
}
text_column!(Kind, ChildState, CampaignState);

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Kind, ChildState, CampaignState);

/// What a broker switch campaign tells the children.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerSwitchParams {
    /// The amqps:// address.
    pub uri: String,
    /// The CA chain the broker's certificate must chain to.
    pub ca_pem: String,
    /// How children authenticate.
    pub auth: fleetls_proto::BrokerAuth,
    /// The most children that may open AMQPS connections at once (the
    /// operator's `--concurrency`): the window starts small and grows up
    /// to this while the broker keeps pace ([`adapt_window`]). `None`
    /// (a campaign of an older release): the window stays as it is.
    #[serde(default)]
    pub ceiling: Option<usize>,
}

/// Where a broker switch's window starts: a few connections, to learn how
/// long one takes when the broker is not busy.
pub const BROKER_SWITCH_FIRST_WINDOW: usize = 8;

/// What a broker switch has learnt about the broker's pace, kept by the
/// engine between turns (after a restart it learns again, from the window
/// the registry holds).
#[derive(Debug, Default, Clone)]
pub struct Pace {
    /// The campaign it is about.
    campaign: Option<Uuid>,
    /// The quickest median time from order to report seen, ms.
    baseline_ms: Option<i64>,
    /// Children that finished at or before this (ms) were counted already.
    since: i64,
}

/// Adjusts the window of a running broker switch from how long its
/// children take, order to report (an AMQPS connection opened with a TLS
/// handshake, a consumer and a report over it): once enough children
/// finished since the last change, it grows by half while their median
/// stays within twice the quickest median seen, halves when it passes four
/// times that, and holds between. Never above the ceiling, never below 1.
/// Returns the new window when it changed.
pub fn adapt_window(
    tx: &Transaction<'_>,
    id: Uuid,
    pace: &mut Pace,
) -> Result<Option<usize>, RegistryError> {
    let (kind, window, params): (Kind, i64, Option<String>) = tx.query_row(
        "SELECT kind, window, params FROM campaigns WHERE id = ?1",
        params![id.to_string()],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    let ceiling = params
        .and_then(|p| serde_json::from_str::<BrokerSwitchParams>(&p).ok())
        .and_then(|p| p.ceiling);
    let (Kind::SwitchBroker, Some(ceiling)) = (kind, ceiling) else {
        return Ok(None);
    };
    if pace.campaign != Some(id) {
        *pace = Pace {
            campaign: Some(id),
            ..Pace::default()
        };
    }
    let (mut took, mut last) = (Vec::new(), pace.since);
    {
        let mut stmt = tx.prepare_cached(
            "SELECT finished_at - started_at, finished_at FROM campaign_children
             WHERE campaign = ?1 AND state IN ('passed', 'failed') AND finished_at > ?2
                 AND started_at IS NOT NULL",
        )?;
        let rows = stmt.query_map(params![id.to_string(), pace.since], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (ms, finished) = row?;
            took.push(ms);
            last = last.max(finished);
        }
    }
    if (took.len() as i64) < (window / 2).max(BROKER_SWITCH_FIRST_WINDOW as i64) {
        return Ok(None);
    }
    took.sort_unstable();
    let median = took[took.len() / 2].max(1);
    pace.since = last;
    let baseline = *pace.baseline_ms.get_or_insert(median);
    let baseline = baseline.min(median);
    pace.baseline_ms = Some(baseline);
    let next = if median <= 2 * baseline {
        (window + window / 2 + 1).min(ceiling as i64)
    } else if median > 4 * baseline {
        (window / 2).max(1)
    } else {
        window
    };
    if next == window {
        return Ok(None);
    }
    tx.execute(
        "UPDATE campaigns SET window = ?2 WHERE id = ?1",
        params![id.to_string(), next],
    )?;
    Ok(Some(next as usize))
}

/// What a CA rotation's re-issue campaign sends each child: a
/// `CertificatesReady` with the new CA's chain (a child holding no
/// certificate from it asks for one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReissueParams {
    /// The new CA's chain.
    pub ca_chain_pem: String,
    /// Its root's fingerprint.
    pub ca_fingerprint: String,
    /// Every CA to trust meanwhile (the old and the new one).
    pub trust_pem: String,
    /// The port local parents serve on.
    pub serve_port: u16,
}

/// One child to enrol: the agent and where it tests its SSL connection.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The agent.
    pub agent: Uuid,
    /// Host of its SSL port test.
    pub host: String,
    /// Port of its SSL port test.
    pub port: u16,
}

/// Each agent's last test result (its enrolment in the newest verify or
/// reverify it took part in), read from the registry with the same
/// definitions as the status list: what `reverify` and the switches choose
/// children by.
pub fn last_results(
    db: &rusqlite::Connection,
) -> Result<std::collections::HashMap<Uuid, (ChildState, Option<String>)>, RegistryError> {
    use crate::registry::{DEFINITIONS, LAST_ENROLMENT};
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
    let mut last = std::collections::HashMap::new();
    for row in rows {
        let (id, state) = row?;
        let id = id
            .parse()
            .map_err(|_| RegistryError::Corrupt(format!("agent id {id:?}")))?;
        last.insert(id, state);
    }
    Ok(last)
}

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

fn step_name(step: Step) -> &'static str {
    match step {
        Step::CertTest => "cert-test",
        Step::SslPort => "ssl-port",
    }
}

/// The running campaign, if any.
pub fn running(tx: &rusqlite::Connection) -> Result<Option<Uuid>, RegistryError> {
    let id: Option<String> = tx
        .query_row(
            "SELECT id FROM campaigns WHERE state = 'running' ORDER BY started_at LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(id.and_then(|id| id.parse().ok()))
}

/// Creates a campaign over `children` (in that order).
pub fn create(
    tx: &Transaction<'_>,
    kind: Kind,
    window: usize,
    timeout_ms: u64,
    step_timeout_ms: u64,
    children: &[Enrolment],
    broker: Option<&BrokerSwitchParams>,
) -> Result<Uuid, RegistryError> {
    let params_json = broker.map(|b| serde_json::to_string(b).unwrap_or_default());
    create_with(
        tx,
        kind,
        window,
        timeout_ms,
        step_timeout_ms,
        children,
        params_json,
    )
}

/// Creates a CA rotation's re-issue campaign over `children`.
pub fn create_reissue(
    tx: &Transaction<'_>,
    window: usize,
    timeout_ms: u64,
    step_timeout_ms: u64,
    children: &[Enrolment],
    params: &ReissueParams,
) -> Result<Uuid, RegistryError> {
    let json = serde_json::to_string(params).unwrap_or_default();
    create_with(
        tx,
        Kind::Reissue,
        window,
        timeout_ms,
        step_timeout_ms,
        children,
        Some(json),
    )
}

fn create_with(
    tx: &Transaction<'_>,
    kind: Kind,
    window: usize,
    timeout_ms: u64,
    step_timeout_ms: u64,
    children: &[Enrolment],
    params_json: Option<String>,
) -> Result<Uuid, RegistryError> {
    let id = Uuid::new_v4();
    let now = fleetls_proto::now_ms();
    tx.execute(
        "INSERT INTO campaigns (id, kind, state, window, started_at, deadline_at, step_timeout_ms, params)
         VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7)",
        params![
            id.to_string(),
            kind.as_str(),
            window as i64,
            now as i64,
            now.saturating_add(timeout_ms) as i64,
            step_timeout_ms as i64,
            params_json
        ],
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO campaign_children (campaign, agent, seq, state, target_host, target_port)
         VALUES (?1, ?2, ?3, 'waiting', ?4, ?5)",
    )?;
    for (seq, child) in children.iter().enumerate() {
        insert.execute(params![
            id.to_string(),
            child.agent.to_string(),
            seq as i64,
            child.host,
            child.port
        ])?;
    }
    Ok(id)
}

/// What one engine tick decided.
#[derive(Debug, Default)]
pub struct Tick {
    /// Steps to send.
    pub outgoing: Vec<Outgoing>,
    /// Whether the campaign is still running.
    pub running: bool,
    /// The earliest moment something may time out (ms), to sleep until.
    pub next_deadline: Option<u64>,
    /// The campaign's kind.
    pub kind: Option<Kind>,
    /// The AMQPS address of a broker switch campaign.
    pub amqps: Option<String>,
}

/// One turn of the engine: time out what is late, fill the window, finish
/// when nothing is left. `online` says whether an agent is online now;
/// `resend` re-sends the step of every acting child with a fresh step
/// deadline (after a restart or reconnect). Until `judge` (the backlog of
/// reports was read), nothing is timed out, nobody is judged offline and
/// nobody new starts: the reports and heartbeats may still be queued.
pub fn tick(
    tx: &Transaction<'_>,
    campaign: Uuid,
    online: &dyn Fn(&Uuid) -> bool,
    resend: bool,
    judge: bool,
) -> Result<Tick, RegistryError> {
    let id = campaign.to_string();
    let now = fleetls_proto::now_ms() as i64;
    let (window, deadline, step_timeout, kind, broker): (i64, i64, i64, Kind, Option<String>) =
        tx.query_row(
            "SELECT window, deadline_at, step_timeout_ms, kind, params FROM campaigns WHERE id = ?1",
            params![id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
        )?;
    let reissue: Option<ReissueParams> = match kind {
        Kind::Reissue => broker.as_deref().and_then(|b| serde_json::from_str(b).ok()),
        _ => None,
    };
    let broker: Option<BrokerSwitchParams> = match kind {
        Kind::SwitchBroker => broker.and_then(|b| serde_json::from_str(&b).ok()),
        _ => None,
    };
    let mut result = Tick {
        kind: Some(kind),
        amqps: broker.as_ref().map(|b| b.uri.clone()),
        ..Tick::default()
    };
    let command = |agent: Uuid, step: &str, host: String, port: u16, deadline: u64| {
        command(
            agent,
            campaign,
            step,
            host,
            port,
            deadline,
            broker.as_ref(),
            reissue.as_ref(),
        )
    };
    if judge && now >= deadline {
        tx.execute(
            "UPDATE campaign_children SET state = 'did_not_participate', finished_at = ?2,
                 message = 'The campaign timed out before this child finished.', cause = 'timeout'
             WHERE campaign = ?1 AND state IN ('waiting', 'acting')",
            params![id, now],
        )?;
        tx.execute(
            "UPDATE campaigns SET state = 'timed_out', finished_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        return Ok(result);
    }
    if resend {
        tx.execute(
            "UPDATE campaign_children SET step_deadline = max(step_deadline, ?2)
             WHERE campaign = ?1 AND state = 'acting'",
            params![id, now + step_timeout],
        )?;
    }
    if judge {
        tx.execute(
            "UPDATE campaign_children SET state = 'did_not_participate', finished_at = ?2,
                 message = 'No answer within the step timeout of ' || (?3 / 1000) || ' s.', cause = 'timeout'
             WHERE campaign = ?1 AND state = 'acting' AND step_deadline <= ?2",
            params![id, now, step_timeout],
        )?;
    }
    if resend {
        let mut acting = tx.prepare_cached(
            "SELECT agent, step, target_host, target_port, step_deadline FROM campaign_children
             WHERE campaign = ?1 AND state = 'acting'",
        )?;
        for (agent, step, host, port, deadline) in step_rows(&mut acting, params![id])? {
            result
                .outgoing
                .push(command(agent, &step, host, port, deadline));
        }
    }
    if judge {
        // Commands are transient: a step not answered by half its time is
        // sent once more (the child answers a duplicate from what it did).
        let mut late = tx.prepare_cached(
            "UPDATE campaign_children SET nudged = 1
             WHERE campaign = ?1 AND state = 'acting' AND nudged = 0
                 AND step_deadline > ?2 AND step_deadline - ?2 <= ?3 / 2
             RETURNING agent, step, target_host, target_port, step_deadline",
        )?;
        for (agent, step, host, port, deadline) in
            step_rows(&mut late, params![id, now, step_timeout])?
        {
            result
                .outgoing
                .push(command(agent, &step, host, port, deadline));
        }
    }
    let acting: i64 = tx.query_row(
        "SELECT count(*) FROM campaign_children WHERE campaign = ?1 AND state = 'acting'",
        params![id],
        |row| row.get(0),
    )?;
    if !judge {
        result.running = true;
        return Ok(result);
    }
    let mut free = (window - acting).max(0);
    let mut started = 0i64;
    while free > 0 {
        let next: Vec<(String, String, u16)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT agent, target_host, target_port FROM campaign_children
                 WHERE campaign = ?1 AND state = 'waiting' ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, free], |row| {
                Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        if next.is_empty() {
            break;
        }
        for (agent_text, host, port) in next {
            let Ok(agent) = agent_text.parse::<Uuid>() else {
                continue;
            };
            if !online(&agent) {
                tx.execute(
                    "UPDATE campaign_children SET state = 'did_not_participate', finished_at = ?3,
                         message = 'The child was offline when its turn came.'
                     WHERE campaign = ?1 AND agent = ?2",
                    params![id, agent_text, now],
                )?;
                continue;
            }
            let step_deadline = now + step_timeout;
            tx.execute(
                "UPDATE campaign_children SET state = 'acting', step = ?5, started_at = ?3,
                     step_deadline = ?4
                 WHERE campaign = ?1 AND agent = ?2",
                params![id, agent_text, now, step_deadline, kind.first_step()],
            )?;
            result.outgoing.push(command(
                agent,
                kind.first_step(),
                host,
                port,
                step_deadline as u64,
            ));
            free -= 1;
            started += 1;
        }
    }
    let now_acting = acting + started;
    tx.execute(
        "UPDATE campaigns SET max_acting = max(max_acting, ?2) WHERE id = ?1",
        params![id, now_acting],
    )?;
    if now_acting == 0 {
        tx.execute(
            "UPDATE campaigns SET state = 'finished', finished_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        return Ok(result);
    }
    result.running = true;
    result.next_deadline = tx.query_row(
        "SELECT min(step_deadline) FROM campaign_children WHERE campaign = ?1 AND state = 'acting'",
        params![id],
        |row| row.get::<_, Option<i64>>(0),
    )?
    .map(|d| d.min(deadline) as u64);
    Ok(result)
}

/// A child's current step: agent, step, target host, target port, deadline.
type StepRow = (Uuid, String, String, u16, u64);

/// The [`StepRow`]s a statement over `campaign_children` returns; an
/// unreadable agent id is left out.
fn step_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<StepRow>, RegistryError> {
    let rows = stmt.query_map(params, |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, u16>(3)?,
            row.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (agent, step, host, port, deadline) = row?;
        if let Ok(agent) = agent.parse() {
            out.push((agent, step, host, port, deadline as u64));
        }
    }
    Ok(out)
}

/// The command an agent is owed by the running campaign: the step it is
/// acting on, with its deadline, while that deadline has not passed (sent
/// again after the agent's Hello: the first copy may have been lost).
pub fn acting_command(
    tx: &Transaction<'_>,
    agent: Uuid,
) -> Result<Option<Outgoing>, RegistryError> {
    let Some(campaign) = running(tx)? else {
        return Ok(None);
    };
    let row: Option<(String, String, u16, i64, Kind, Option<String>)> = tx
        .query_row(
            "SELECT cc.step, cc.target_host, cc.target_port, cc.step_deadline, c.kind, c.params
             FROM campaign_children cc JOIN campaigns c ON c.id = cc.campaign
             WHERE cc.campaign = ?1 AND cc.agent = ?2 AND cc.state = 'acting' AND cc.step_deadline > ?3",
            params![campaign.to_string(), agent.to_string(), fleetls_proto::now_ms() as i64],
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
        let broker: Option<BrokerSwitchParams> = match kind {
            Kind::SwitchBroker => params.as_deref().and_then(|p| serde_json::from_str(p).ok()),
            _ => None,
        };
        let reissue: Option<ReissueParams> = match kind {
            Kind::Reissue => params.as_deref().and_then(|p| serde_json::from_str(p).ok()),
            _ => None,
        };
        command(
            agent,
            campaign,
            &step,
            host,
            port,
            deadline as u64,
            broker.as_ref(),
            reissue.as_ref(),
        )
    }))
}

/// The command for `step` of a campaign's child.
#[allow(clippy::too_many_arguments)]
fn command(
    agent: Uuid,
    campaign: Uuid,
    step: &str,
    host: String,
    port: u16,
    deadline: u64,
    broker: Option<&BrokerSwitchParams>,
    reissue: Option<&ReissueParams>,
) -> Outgoing {
    if let ("reissue", Some(r)) = (step, reissue) {
        return Outgoing {
            agent,
            body: ToChild::CertificatesReady(fleetls_proto::CertificatesReady {
                ca_chain_pem: r.ca_chain_pem.clone(),
                ca_fingerprint: r.ca_fingerprint.clone(),
                ssl_host: host,
                ssl_port: port,
                serve_port: Some(r.serve_port),
                // Not `renew`: a child that holds a certificate from this
                // CA already answers with its state, so a re-sent step
                // issues nothing twice.
                renew: false,
                trust_pem: Some(r.trust_pem.clone()),
                tls: None,
            }),
            re: None,
        };
    }
    let body = match (step, broker) {
        ("use-ssl", _) => ToChild::UseSsl(UseSsl { campaign }),
        ("use-broker-tls", Some(b)) => ToChild::UseBrokerTls(UseBrokerTls {
            campaign,
            uri: b.uri.clone(),
            ca_pem: b.ca_pem.clone(),
            deadline,
            auth: b.auth,
        }),
        ("ssl-port", _) => {
            return run_step(agent, campaign, StepSpec::SslPort { host, port }, deadline);
        }
        _ => return run_step(agent, campaign, StepSpec::CertTest, deadline),
    };
    Outgoing {
        agent,
        body,
        re: None,
    }
}

fn run_step(agent: Uuid, campaign: Uuid, step: StepSpec, deadline: u64) -> Outgoing {
    Outgoing {
        agent,
        body: ToChild::RunStep(RunStep {
            campaign,
            step,
            deadline,
        }),
        re: None,
    }
}

/// A one-step report (switch or broker switch): ends the child as passed or
/// failed, once. Returns whether it ended a child.
pub fn on_single_report(
    tx: &Transaction<'_>,
    agent: Uuid,
    campaign: Uuid,
    step: &str,
    ok: bool,
    message: &str,
) -> Result<bool, RegistryError> {
    let now = fleetls_proto::now_ms() as i64;
    let campaign = campaign.to_string();
    let agent_text = agent.to_string();
    let current: bool = tx
        .query_row(
            "SELECT state = 'acting' AND step = ?3 FROM campaign_children WHERE campaign = ?1 AND agent = ?2",
            params![campaign, agent_text, step],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(false);
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO step_results (campaign, agent, step, ok, message, cause, at, late)
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7)",
        params![campaign, agent_text, step, ok, message, now, !current],
    )?;
    if inserted == 0 || !current {
        return Ok(false);
    }
    tx.execute(
        "UPDATE campaign_children SET state = ?3, finished_at = ?4, message = ?5
         WHERE campaign = ?1 AND agent = ?2",
        params![
            campaign,
            agent_text,
            if ok { "passed" } else { "failed" },
            now,
            message
        ],
    )?;
    Ok(true)
}

/// Records a step report and moves its child on: after a passed step 1 it
/// sends step 2; a failed step or a passed step 2 ends the child. A report
/// for a step already recorded changes nothing; one that comes after the
/// child was ended is recorded as late. Returns whether a child ended.
pub fn on_report(
    tx: &Transaction<'_>,
    agent: Uuid,
    report: &StepReport,
    sent_at: u64,
    ssl_port_open_since: u64,
    outgoing: &mut Vec<Outgoing>,
) -> Result<bool, RegistryError> {
    // A failed connection to the SSL port made while this parent was not
    // running says nothing about the child: run the step again.
    if !report.ok && report.step == Step::SslPort && sent_at < ssl_port_open_since {
        let retry: Option<(String, u16, i64)> = tx
            .query_row(
                "SELECT cc.target_host, cc.target_port, c.step_timeout_ms
                 FROM campaign_children cc JOIN campaigns c ON c.id = cc.campaign
                 WHERE cc.campaign = ?1 AND cc.agent = ?2 AND cc.state = 'acting' AND cc.step = 'ssl-port'",
                params![report.campaign.to_string(), agent.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        if let Some((host, port, step_timeout)) = retry {
            let step_deadline = fleetls_proto::now_ms() as i64 + step_timeout;
            tx.execute(
                "UPDATE campaign_children SET step_deadline = ?3 WHERE campaign = ?1 AND agent = ?2",
                params![report.campaign.to_string(), agent.to_string(), step_deadline],
            )?;
            outgoing.push(run_step(
                agent,
                report.campaign,
                StepSpec::SslPort { host, port },
                step_deadline as u64,
            ));
            return Ok(false);
        }
    }
    let campaign = report.campaign.to_string();
    let agent_text = agent.to_string();
    let step = step_name(report.step);
    let now = fleetls_proto::now_ms() as i64;
    let row: Option<(String, Option<String>, String, u16, i64)> = tx
        .query_row(
            "SELECT cc.state, cc.step, cc.target_host, cc.target_port, c.step_timeout_ms
             FROM campaign_children cc JOIN campaigns c ON c.id = cc.campaign
             WHERE cc.campaign = ?1 AND cc.agent = ?2",
            params![campaign, agent_text],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .optional()?;
    let current = matches!(&row, Some((state, Some(s), ..)) if state == "acting" && s == step);
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO step_results (campaign, agent, step, ok, message, cause, at, late)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            campaign,
            agent_text,
            step,
            report.ok,
            report.message,
            report.cause.map(|c| c.as_str()),
            now,
            !current
        ],
    )?;
    let Some((_, _, host, port, step_timeout)) = row else {
        return Ok(false);
    };
    if inserted == 0 || !current {
        return Ok(false);
    }
    if report.ok && report.step == Step::CertTest {
        let step_deadline = now + step_timeout;
        tx.execute(
            "UPDATE campaign_children SET step = 'ssl-port', step_deadline = ?3, message = ?4, nudged = 0
             WHERE campaign = ?1 AND agent = ?2",
            params![campaign, agent_text, step_deadline, report.message],
        )?;
        outgoing.push(run_step(
            agent,
            report.campaign,
            StepSpec::SslPort { host, port },
            step_deadline as u64,
        ));
        return Ok(false);
    }
    tx.execute(
        "UPDATE campaign_children SET state = ?3, finished_at = ?4, message = ?5, cause = ?6
         WHERE campaign = ?1 AND agent = ?2",
        params![
            campaign,
            agent_text,
            if report.ok { "passed" } else { "failed" },
            now,
            report.message,
            report.cause.map(|c| c.as_str())
        ],
    )?;
    Ok(true)
}

/// The progress of one campaign.
pub fn progress(
    db: &rusqlite::Connection,
    campaign: Uuid,
) -> Result<Option<Progress>, RegistryError> {
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

/// The newest campaign.
pub fn latest(db: &rusqlite::Connection) -> Result<Option<Uuid>, RegistryError> {
    let id: Option<String> = db
        .query_row(
            "SELECT id FROM campaigns ORDER BY started_at DESC, rowid DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(id.and_then(|id| id.parse().ok()))
}

/// The newest campaign of one kind.
pub fn latest_of(db: &rusqlite::Connection, kind: Kind) -> Result<Option<Uuid>, RegistryError> {
    let id: Option<String> = db
        .query_row(
            "SELECT id FROM campaigns WHERE kind = ?1 ORDER BY started_at DESC, rowid DESC LIMIT 1",
            params![kind.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    Ok(id.and_then(|id| id.parse().ok()))
}

/// One step's recorded result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepResult {
    /// Passed.
    pub ok: bool,
    /// The child's message.
    pub message: String,
    /// Why it failed.
    pub cause: Option<String>,
    /// When recorded (ms).
    pub at: u64,
}

/// A child's last campaign result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastResult {
    /// The campaign.
    pub campaign: Uuid,
    /// `verify` or `reverify`.
    pub kind: Kind,
    /// Where the child stands in it.
    pub state: ChildState,
    /// The step it is at or ended in.
    pub step: Option<String>,
    /// The last message.
    pub message: Option<String>,
    /// The cause of a failure.
    pub cause: Option<String>,
    /// When it started (ms).
    pub started_at: Option<u64>,
    /// When it ended (ms).
    pub finished_at: Option<u64>,
    /// Step 1, "certificate generation".
    pub cert_test: Option<StepResult>,
    /// Step 2, "connection over the SSL port".
    pub ssl_port: Option<StepResult>,
}

#[cfg(test)]
mod tests {
    //! The engine against an in-memory registry: the window, the step and
    //! campaign deadlines, offline children, reports (in and out of turn),
    //! and resuming after a restart.

    use super::*;
    use crate::registry::Registry;
    use fleetls_proto::Cause;

    fn registry() -> Registry {
        Registry::open(std::path::Path::new(":memory:")).unwrap()
    }

    fn children(n: usize) -> Vec<Enrolment> {
        (0..n)
            .map(|_| Enrolment {
                agent: Uuid::new_v4(),
                host: "parent.test".into(),
                port: 12365,
            })
            .collect()
    }

    fn start(registry: &Registry, kind: Kind, window: usize, enrolled: &[Enrolment]) -> Uuid {
        registry
            .with_tx(|tx| create(tx, kind, window, 3_600_000, 60_000, enrolled, None))
            .unwrap()
    }

    fn turn(registry: &Registry, id: Uuid, online: &dyn Fn(&Uuid) -> bool, resend: bool) -> Tick {
        registry
            .with_tx(|tx| tick(tx, id, online, resend, true))
            .unwrap()
    }

    fn report(registry: &Registry, id: Uuid, agent: Uuid, step: Step, ok: bool) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let report = StepReport {
            campaign: id,
            step,
            ok,
            message: if ok { "fine".into() } else { "broken".into() },
            cause: (!ok).then_some(Cause::Refused),
            started_at: None,
        };
        registry
            .with_tx(|tx| on_report(tx, agent, &report, fleetls_proto::now_ms(), 0, &mut out))
            .unwrap();
        out
    }

    fn progress_of(registry: &Registry, id: Uuid) -> Progress {
        registry.with_db(|db| progress(db, id)).unwrap().unwrap()
    }

    fn agents_of(out: &[Outgoing]) -> Vec<Uuid> {
        out.iter().map(|o| o.agent).collect()
    }

    const ONLINE: &dyn Fn(&Uuid) -> bool = &|_| true;

    #[test]
    fn the_window_bounds_who_acts_and_the_next_starts_when_one_ends() {
        let registry = registry();
        let enrolled = children(5);
        let id = start(&registry, Kind::Verify, 2, &enrolled);
        let first = turn(&registry, id, ONLINE, false);
        assert_eq!(
            agents_of(&first.outgoing),
            [enrolled[0].agent, enrolled[1].agent]
        );
        assert!(matches!(
            &first.outgoing[0].body,
            ToChild::RunStep(RunStep {
                step: StepSpec::CertTest,
                ..
            })
        ));
        // Nobody finished: nobody new starts.
        assert!(turn(&registry, id, ONLINE, false).outgoing.is_empty());
        // Step 1 passed: step 2 to the same child, still within the window.
        let next = report(&registry, id, enrolled[0].agent, Step::CertTest, true);
        assert!(matches!(
            &next[0].body,
            ToChild::RunStep(RunStep {
                step: StepSpec::SslPort { port: 12365, .. },
                ..
            })
        ));
        assert!(turn(&registry, id, ONLINE, false).outgoing.is_empty());
        // Step 2 passed: the child ends and the third starts.
        report(&registry, id, enrolled[0].agent, Step::SslPort, true);
        let third = turn(&registry, id, ONLINE, false);
        assert_eq!(agents_of(&third.outgoing), [enrolled[2].agent]);
        let p = progress_of(&registry, id);
        assert_eq!((p.passed, p.acting, p.waiting, p.max_acting), (1, 2, 2, 2));
        assert_eq!(p.state, CampaignState::Running);
    }

    #[test]
    fn a_failed_step_ends_the_child_and_a_late_report_changes_nothing() {
        let registry = registry();
        let enrolled = children(1);
        let child = enrolled[0].agent;
        let id = start(&registry, Kind::Verify, 1, &enrolled);
        turn(&registry, id, ONLINE, false);
        assert!(report(&registry, id, child, Step::CertTest, false).is_empty());
        // A second report for the same step, and one for a step never sent.
        report(&registry, id, child, Step::CertTest, true);
        report(&registry, id, child, Step::SslPort, true);
        let tick = turn(&registry, id, ONLINE, false);
        assert!(!tick.running);
        let p = progress_of(&registry, id);
        assert_eq!((p.failed, p.passed, p.total), (1, 0, 1));
        assert_eq!(p.state, CampaignState::Finished);
    }

    #[test]
    fn offline_children_and_silent_ones_do_not_participate() {
        let registry = registry();
        let enrolled = children(3);
        let offline = enrolled[0].agent;
        let id = start(&registry, Kind::Verify, 3, &enrolled);
        let online = move |a: &Uuid| *a != offline;
        let first = turn(&registry, id, &online, false);
        assert_eq!(
            first.outgoing.len(),
            2,
            "the offline child is not sent anything"
        );
        // The step deadline passes without an answer.
        registry
            .with_tx(|tx| {
                tx.execute(
                    "UPDATE campaign_children SET step_deadline = 0 WHERE campaign = ?1",
                    params![id.to_string()],
                )?;
                Ok(())
            })
            .unwrap();
        let last = turn(&registry, id, &online, false);
        assert!(!last.running);
        let p = progress_of(&registry, id);
        assert_eq!(p.did_not_participate, 3);
        let causes: Vec<Option<String>> = registry
            .with_db(|db| {
                let mut stmt = db.prepare(
                    "SELECT cause FROM campaign_children WHERE campaign = ?1 ORDER BY seq",
                )?;
                let rows = stmt.query_map(params![id.to_string()], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .unwrap();
        assert_eq!(
            causes,
            [None, Some("timeout".into()), Some("timeout".into())]
        );
    }

    #[test]
    fn an_unanswered_step_is_sent_once_more_at_half_time_and_after_a_hello() {
        let registry = registry();
        let enrolled = children(2);
        let (slow, other) = (enrolled[0].agent, enrolled[1].agent);
        let id = start(&registry, Kind::Verify, 2, &enrolled);
        let first = turn(&registry, id, ONLINE, false);
        let deadline_of = |out: &Outgoing| match &out.body {
            ToChild::RunStep(run) => run.deadline,
            other => panic!("not a step: {other:?}"),
        };
        let sent = deadline_of(&first.outgoing[0]);
        // Before half the step time nothing is sent again.
        assert!(turn(&registry, id, ONLINE, false).outgoing.is_empty());
        // Half the step time (60 s) has passed for the slow child only.
        registry
            .with_tx(|tx| {
                tx.execute(
                    "UPDATE campaign_children SET step_deadline = ?3 WHERE campaign = ?1 AND agent = ?2",
                    params![id.to_string(), slow.to_string(), fleetls_proto::now_ms() as i64 + 20_000],
                )?;
                Ok(())
            })
            .unwrap();
        let nudge = turn(&registry, id, ONLINE, false);
        assert_eq!(agents_of(&nudge.outgoing), [slow]);
        assert!(
            deadline_of(&nudge.outgoing[0]) < sent,
            "the same, earlier deadline"
        );
        // Once only.
        assert!(turn(&registry, id, ONLINE, false).outgoing.is_empty());
        // After a Hello, each acting child is owed its current step.
        let owed = registry
            .with_tx(|tx| acting_command(tx, other))
            .unwrap()
            .expect("the other child is acting");
        assert_eq!(deadline_of(&owed), sent);
        // Step 2 starts afresh: it may be nudged again.
        let next = report(&registry, id, slow, Step::CertTest, true);
        assert!(matches!(
            &next[0].body,
            ToChild::RunStep(RunStep {
                step: StepSpec::SslPort { .. },
                ..
            })
        ));
        let nudged: i64 = registry
            .with_db(|db| {
                Ok(db.query_row(
                    "SELECT nudged FROM campaign_children WHERE agent = ?1",
                    params![slow.to_string()],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(nudged, 0);
        // An ended child, or one whose step deadline passed, is owed nothing.
        report(&registry, id, slow, Step::SslPort, true);
        assert!(registry
            .with_tx(|tx| acting_command(tx, slow))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_broker_switch_window_grows_while_the_broker_keeps_pace_and_halves_when_it_slows() {
        let registry = registry();
        let enrolled = children(60);
        let params = BrokerSwitchParams {
            uri: "amqps://broker.test:5671".into(),
            ca_pem: String::new(),
            auth: fleetls_proto::BrokerAuth::Plain,
            ceiling: Some(20),
        };
        let id = registry
            .with_tx(|tx| {
                create(
                    tx,
                    Kind::SwitchBroker,
                    BROKER_SWITCH_FIRST_WINDOW,
                    3_600_000,
                    60_000,
                    &enrolled,
                    Some(&params),
                )
            })
            .unwrap();
        let mut pace = Pace::default();
        // `n` more children finish, each `took` ms from order to report.
        let (mut next, mut now) = (0, fleetls_proto::now_ms() as i64);
        let mut finish = |n: usize, took: i64| {
            now += 1_000;
            registry
                .with_tx(|tx| {
                    for child in &enrolled[next..next + n] {
                        tx.execute(
                            "UPDATE campaign_children SET state = 'passed', started_at = ?3, finished_at = ?4
                             WHERE campaign = ?1 AND agent = ?2",
                            params![id.to_string(), child.agent.to_string(), now - took, now],
                        )?;
                    }
                    Ok(())
                })
                .unwrap();
            next += n;
        };
        let adapt = |pace: &mut Pace| registry.with_tx(|tx| adapt_window(tx, id, pace)).unwrap();
        // Too few finished to judge.
        finish(3, 100);
        assert_eq!(adapt(&mut pace), None);
        // Quick: grows by half, then again, up to the ceiling only.
        finish(5, 100);
        assert_eq!(adapt(&mut pace), Some(13));
        finish(8, 150);
        assert_eq!(adapt(&mut pace), Some(20));
        finish(10, 120);
        assert_eq!(adapt(&mut pace), None, "at the ceiling");
        // Between twice and four times the quickest: holds.
        finish(10, 300);
        assert_eq!(adapt(&mut pace), None);
        // Slower than four times the quickest: halves.
        finish(10, 1000);
        assert_eq!(adapt(&mut pace), Some(10));
    }

    #[test]
    fn the_campaign_deadline_ends_everyone_left() {
        let registry = registry();
        let enrolled = children(4);
        let id = start(&registry, Kind::Verify, 1, &enrolled);
        turn(&registry, id, ONLINE, false);
        registry
            .with_tx(|tx| {
                tx.execute(
                    "UPDATE campaigns SET deadline_at = 0 WHERE id = ?1",
                    params![id.to_string()],
                )?;
                Ok(())
            })
            .unwrap();
        let tick = turn(&registry, id, ONLINE, false);
        assert!(!tick.running && tick.outgoing.is_empty());
        let p = progress_of(&registry, id);
        assert_eq!(
            (p.state, p.did_not_participate),
            (CampaignState::TimedOut, 4)
        );
    }

    #[test]
    fn a_restarted_engine_resends_what_is_acting_and_judges_nobody_early() {
        let registry = registry();
        let enrolled = children(3);
        let id = start(&registry, Kind::Switch, 2, &enrolled);
        let first = turn(&registry, id, ONLINE, false);
        assert!(matches!(first.outgoing[0].body, ToChild::UseSsl(_)));
        // After a restart, before the backlog is read: no judging, no new
        // child, nothing timed out — even past the step deadline.
        registry
            .with_tx(|tx| {
                tx.execute(
                    "UPDATE campaign_children SET step_deadline = 0 WHERE campaign = ?1",
                    params![id.to_string()],
                )?;
                Ok(())
            })
            .unwrap();
        let early = registry
            .with_tx(|tx| tick(tx, id, ONLINE, true, false))
            .unwrap();
        assert!(early.running);
        assert_eq!(
            agents_of(&early.outgoing),
            [enrolled[0].agent, enrolled[1].agent],
            "the acting children get their command again"
        );
        let p = progress_of(&registry, id);
        assert_eq!((p.acting, p.waiting, p.did_not_participate), (2, 1, 0));
        // Their step deadline moved on with the re-send.
        let later = turn(&registry, id, ONLINE, false);
        assert!(later.outgoing.is_empty(), "the window is still full");
        assert_eq!(progress_of(&registry, id).did_not_participate, 0);
    }

    #[test]
    fn an_unknown_kind_or_state_in_the_registry_is_an_error_not_a_default() {
        assert!("verify".parse::<Kind>().is_ok());
        assert!("frobnicate"
            .parse::<Kind>()
            .unwrap_err()
            .contains("frobnicate"));
        assert!("maybe".parse::<ChildState>().is_err());
        assert!("paused".parse::<CampaignState>().is_err());
        let registry = registry();
        let id = start(&registry, Kind::Verify, 1, &children(1));
        registry
            .with_tx(|tx| {
                tx.execute(
                    "UPDATE campaigns SET kind = 'frobnicate' WHERE id = ?1",
                    params![id.to_string()],
                )?;
                Ok(())
            })
            .unwrap();
        assert!(registry
            .with_tx(|tx| tick(tx, id, ONLINE, false, true))
            .is_err());
    }
}
