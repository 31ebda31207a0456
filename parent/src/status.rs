//! The status view: the network's phase and counters, the campaign summary
//! and every agent, computed from the registry. `GET /api/status` serves it
//! and `fleetls-parent status` prints it; `GET /api/summary` serves the same
//! without the agent list. The parent keeps the list between calls
//! ([`Cache`]) and reads again only what changed.
//!
//! What the status says of an agent is defined here once, in SQL
//! ([`DEFINITIONS`], [`AGENTS_FROM`], [`LAST_ENROLMENT`], [`STEP_RESULTS`]),
//! and the console's pages query the same definitions: whether it holds a
//! certificate, which test result is its last one, which step results count,
//! its last refusal. What the counters count is defined once, by `Tally`.
//!
//! The full list reads each table once (agents, enrolments, step results)
//! and joins them in memory: on a big network, an index lookup per agent
//! and table costs SQLite more than reading the tables whole.

use std::collections::HashMap;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::campaign::{ChildState, Kind, LastResult, Progress, StepResult};
use crate::config::Version;
use crate::registry::{Agent, Changes, Registry, RegistryError, AGENT_TABLES};
pub use crate::registry::{DEFINITIONS, LAST_ENROLMENT};
use fleetls_proto::AgentKind;

/// What `status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Where the network stands and its counters.
    pub network: Network,
    /// The figures of the last campaign.
    pub summary: Summary,
    /// The newest campaign's progress.
    pub campaign: Option<Progress>,
    /// Every agent.
    pub agents: Vec<AgentStatus>,
}

/// [`Status`] borrowed, to serialise the kept list without copying it
/// (the same JSON).
#[derive(Debug, Serialize)]
pub struct StatusRef<'a> {
    /// Where the network stands and its counters.
    pub network: &'a Network,
    /// The figures of the last campaign.
    pub summary: &'a Summary,
    /// The newest campaign's progress.
    pub campaign: Option<&'a Progress>,
    /// Every agent.
    pub agents: &'a [AgentStatus],
}

/// The status without the agent list: what `GET /api/summary` serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Overview {
    /// Where the network stands and its counters.
    pub network: Network,
    /// The figures of the last campaign.
    pub summary: Summary,
    /// The newest campaign's progress.
    pub campaign: Option<Progress>,
}

impl Overview {
    /// The whole status: this with the agent list.
    pub fn with_agents(self, agents: Vec<AgentStatus>) -> Status {
        Status {
            network: self.network,
            summary: self.summary,
            campaign: self.campaign,
            agents,
        }
    }
}

/// The network's phase and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// `plain`, `certificates`, `ssl` or `broker-tls`.
    pub phase: String,
    /// Registered agents.
    pub agents: usize,
    /// Agents heard from recently.
    pub online: usize,
    /// Agents not heard from recently.
    pub offline: usize,
    /// Children that can take part (SSL-capable and not mPOS).
    pub eligible: usize,
    /// Children holding a certificate.
    pub children_with_certificates: usize,
    /// Children switched to SSL.
    pub switched_to_ssl: usize,
    /// Children whose broker connection is AMQPS (by their own report).
    pub broker_tls: usize,
    /// The lowest SSL-capable version.
    pub min_ssl_version: String,
    /// Whether the CA and certificates were generated.
    pub certificates_generated: bool,
    /// The root CA fingerprint, once generated.
    pub ca_fingerprint: Option<String>,
    /// The SSL port, while it listens.
    pub ssl_port: Option<u16>,
    /// Agents waiting for an operator to accept them.
    #[serde(default)]
    pub pending: usize,
    /// Agents an operator rejected.
    #[serde(default)]
    pub rejected: usize,
    /// Agents that pinned another parent key than this parent's: they obey
    /// someone else.
    #[serde(default)]
    pub compromised: usize,
    /// Security events recorded (forged or replayed commands, impersonation,
    /// banned keys, oversized or invalid messages).
    #[serde(default)]
    pub security_events: u64,
    /// The fingerprint of the key the parent signs commands with (give it
    /// to children as `--parent-key`).
    #[serde(default)]
    pub signing_key: Option<String>,
    /// The soonest expiry of a valid agent certificate (seconds since the
    /// epoch): renewal keeps it ahead.
    #[serde(default)]
    pub soonest_expiry: Option<i64>,
    /// Certificates revoked (by `revoke`, rejection, deletion, or
    /// superseded by a renewal).
    #[serde(default)]
    pub revoked_certificates: u64,
    /// Renewals done: certificates issued to an agent that held one (the
    /// one replaced is revoked, superseded).
    #[serde(default)]
    pub renewals_done: u64,
    /// Renewals failed: CSRs refused from an agent that had been issued a
    /// certificate before.
    #[serde(default)]
    pub renewals_failed: u64,
    /// The newest CA rotation and how far it got.
    #[serde(default)]
    pub ca_rotation: Option<crate::rotation::RotationView>,
    /// The broker's nodes and their health, as management last showed them
    /// (with `--management`; see [`crate::cluster`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<crate::cluster::NodeHealth>,
    /// The type of `fleetls.parent` and `fleetls.dead` and why the parent
    /// chose it (see [`crate::queue_choice`]).
    #[serde(default)]
    pub queue_type: Option<crate::queue_choice::QueueChoice>,
}

/// The campaign summary (every figure a query over the registry).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Properly passed.
    pub passed: usize,
    /// Finished with errors.
    pub with_errors: usize,
    /// Did not participate (offline, silent, timed out).
    pub did_not_participate: usize,
    /// Version not supporting SSL.
    pub version_not_supporting_ssl: usize,
    /// mPOS devices (certificate by export).
    pub mpos: usize,
    /// Kept on plain AMQP by an operator's decision (`agents exclude`):
    /// never counted as an error or as absent.
    #[serde(default)]
    pub excluded: usize,
}

/// One agent in the status list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    /// Its id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Reported version.
    pub version: String,
    /// Site.
    pub location: Option<String>,
    /// DNS names.
    pub hostnames: Vec<String>,
    /// IP addresses.
    pub ips: Vec<String>,
    /// Heard from recently.
    pub online: bool,
    /// Last heard (ms since the epoch).
    pub last_seen: u64,
    /// Its version supports SSL.
    pub ssl_capable: bool,
    /// Holds a certificate.
    pub has_certificate: bool,
    /// In SSL mode.
    pub ssl: bool,
    /// Broker connection is AMQPS.
    pub broker_tls: bool,
    /// The last test result, if any.
    pub last_result: Option<LastResult>,
    /// The last command this agent refused or was refused, and why.
    pub refusal: Option<String>,
    /// `pending`, `accepted` or `rejected`.
    #[serde(default)]
    pub admission: crate::registry::Admission,
    /// It pinned another parent key than this parent's.
    #[serde(default)]
    pub compromised: bool,
    /// When its valid certificate expires (seconds since the epoch).
    #[serde(default)]
    pub certificate_not_after: Option<i64>,
    /// Kept on plain AMQP by an operator's decision, and why.
    #[serde(default)]
    pub excluded: Option<String>,
    /// `sha256:HEX` of the CA that signed its valid certificate (during a
    /// CA rotation: the old or the new one).
    #[serde(default)]
    pub certificate_ca: Option<String>,
}

/// What shaping an agent's row needs besides the row.
#[derive(Debug, Clone, Copy)]
pub struct ViewContext {
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// Agents not heard from for this long are offline.
    pub offline_after_ms: u64,
    /// The lowest SSL-capable version.
    pub min_ssl_version: Version,
}

impl ViewContext {
    fn new(min_ssl_version: Version, offline_after_ms: u64) -> ViewContext {
        ViewContext {
            now_ms: fleetls_proto::now_ms(),
            offline_after_ms,
            min_ssl_version,
        }
    }

    /// Whether an agent last heard at `last_seen` (ms) is online.
    pub fn online(&self, last_seen: u64) -> bool {
        self.now_ms.saturating_sub(last_seen) < self.offline_after_ms
    }
}

/// The agents (`a`) with their last refusal (`r`), after [`DEFINITIONS`].
pub const AGENTS_FROM: &str = "FROM agent_view a LEFT JOIN refusals r ON r.agent_id = a.id";

/// The status list's order: by name, then id (both as bytes, as Rust
/// compares `String`s and `Uuid`s).
pub const AGENTS_ORDER: &str = "ORDER BY a.name, a.id";

/// The columns of [`AGENTS_FROM`] that [`row_to_status`] reads.
pub const AGENT_COLUMNS: &str = "a.id, a.name, a.kind, a.version, a.location, a.hostnames,
    a.ips, a.last_seen, a.certified, a.ssl, a.broker_tls, r.reason, a.admission, a.compromised,
    a.cert_not_after, a.excluded, a.cert_ca";

/// How many columns [`AGENT_COLUMNS`] names: a query's own columns follow.
pub const AGENT_COLUMN_COUNT: usize = 17;

/// The columns of an enrolment (`l`) that [`row_to_last_result`] reads.
pub const LAST_COLUMNS: &str =
    "l.campaign, l.state, l.step, l.message, l.cause, l.started_at, l.finished_at";

/// The step results that count, for [`attach_step`]: those recorded while
/// the child was acting, not the late ones. No index covers `late`: with
/// no other condition this reads the table once.
pub const STEP_RESULTS: &str = "SELECT s.agent, s.campaign, s.step, s.ok, s.message, s.cause, s.at
    FROM step_results s WHERE s.late = 0";

/// Runs `f` in one read transaction: every query sees the same registry.
pub fn read<T>(
    registry: &Registry,
    f: impl FnOnce(&Connection) -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    registry.with_db(|db| {
        let tx = db.unchecked_transaction()?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    })
}

/// The agents a `WHERE` clause (over [`AGENTS_FROM`] and [`LAST_ENROLMENT`],
/// with what follows it: order, limit) selects, with `binds` for its
/// parameters, each with its last result and the step results that count:
/// one index lookup per agent and table, for a page or a few agents (the
/// whole list reads each table once instead, [`compute`]).
pub fn agents_where(
    db: &Connection,
    context: ViewContext,
    clause: &str,
    binds: &[rusqlite::types::Value],
) -> Result<Vec<AgentStatus>, RegistryError> {
    let mut stmt = db.prepare_cached(&format!(
        "{DEFINITIONS} SELECT {AGENT_COLUMNS}, lt.kind, {LAST_COLUMNS}
         {AGENTS_FROM} {LAST_ENROLMENT} {clause}"
    ))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(binds), |row| {
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
    let mut agents = Vec::new();
    for row in rows {
        agents.push(row??);
    }
    let mut steps = db.prepare_cached(&format!(
        "{STEP_RESULTS} AND s.campaign = ?1 AND s.agent = ?2"
    ))?;
    for agent in &mut agents {
        let Some(last) = agent.last_result.as_mut() else {
            continue;
        };
        let mut rows = steps.query([last.campaign.to_string(), agent.id.to_string()])?;
        while let Some(row) = rows.next()? {
            attach_step(last, row)?;
        }
    }
    Ok(agents)
}

/// Computes the status from the registry.
pub fn compute(
    registry: &Registry,
    min_ssl_version: Version,
    offline_after_ms: u64,
    ca_fingerprint: Option<&str>,
) -> Result<Status, RegistryError> {
    let context = ViewContext::new(min_ssl_version, offline_after_ms);
    let ((agents, _), campaign) = read(registry, |db| {
        Ok((agent_list(db, context)?, newest_campaign(db)?))
    })?;
    let overview = Tally::of(&agents).overview(context, ca_fingerprint, campaign);
    Ok(overview.with_agents(agents))
}

/// [`AGENTS_ORDER`] in Rust: by name, then id.
fn list_order(a: &AgentStatus, b: &AgentStatus) -> std::cmp::Ordering {
    (a.name.as_str(), a.id).cmp(&(b.name.as_str(), b.id))
}

/// Each agent's position in a list.
fn positions(agents: &[AgentStatus]) -> HashMap<Uuid, usize> {
    agents.iter().enumerate().map(|(i, a)| (a.id, i)).collect()
}

/// Every agent, with its last result and refusal, in the list's order, and
/// each one's position.
fn agent_list(
    db: &Connection,
    context: ViewContext,
) -> Result<(Vec<AgentStatus>, HashMap<Uuid, usize>), RegistryError> {
    let mut stmt = db.prepare_cached(&format!(
        "{DEFINITIONS} SELECT {AGENT_COLUMNS} {AGENTS_FROM}"
    ))?;
    let mut agents = Vec::new();
    for row in stmt.query_map([], |row| row_to_status(row, context))? {
        agents.push(row??);
    }
    // AGENTS_ORDER: the positions are sorted, then the rows moved in place
    // (no second list of rows).
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
    let index = positions(&agents);
    let agent_at = |row: &rusqlite::Row<'_>| -> rusqlite::Result<Option<usize>> {
        let id = row.get_ref(0)?.as_str()?;
        Ok(id.parse().ok().and_then(|id| index.get(&id).copied()))
    };

    // Each agent's enrolment in the test of lowest rank, as LAST_ENROLMENT
    // picks it.
    let mut tests: HashMap<String, (i64, Kind)> = HashMap::new();
    let mut stmt = db.prepare_cached(&format!("{DEFINITIONS} SELECT id, rank, kind FROM tests"))?;
    for row in stmt.query_map([], |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))? {
        let (id, test) = row?;
        tests.insert(id, test);
    }
    let mut ranks = vec![i64::MAX; agents.len()];
    // Newest enrolments first (by rowid, no sorting): an agent's first row
    // is then most often its last result, and the only one shaped.
    let mut stmt = db.prepare_cached(&format!(
        "SELECT l.agent, {LAST_COLUMNS} FROM campaign_children l ORDER BY l.rowid DESC"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let test = row.get_ref(1)?.as_str().ok().and_then(|id| tests.get(id));
        let Some((rank, kind)) = test else {
            continue;
        };
        let Some(i) = agent_at(row)? else {
            continue;
        };
        if *rank < ranks[i] {
            ranks[i] = *rank;
            agents[i].last_result = row_to_last_result(row, 1, *kind)?;
        }
    }

    let mut stmt = db.prepare_cached(STEP_RESULTS)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        if let Some(i) = agent_at(row)? {
            if let Some(last) = agents[i].last_result.as_mut() {
                attach_step(last, row)?;
            }
        }
    }
    Ok((agents, index))
}

/// The status list kept between calls, brought up to date from what the
/// registry says changed ([`Changes`]): the agents whose rows changed
/// (heartbeats, reports, registrations, a campaign's results, certificates,
/// refusals: what a live network does all the time) are read again, one by
/// one; when many changed, or a campaign began, or a row was deleted, the
/// whole list is read again, as [`compute`] does. Whether an agent is
/// online is worked out at each call, from the time it was last heard. Each
/// agent's JSON is kept too, until that agent changes: `GET /api/status`
/// shares it ([`KeptList::status_json`]).
#[derive(Default)]
pub struct Cache {
    list: std::sync::Mutex<Option<Listed>>,
    /// How many times the whole list was read (for the tests).
    #[cfg(test)]
    whole_reads: std::sync::atomic::AtomicUsize,
}

/// The list as last read, in the list's order.
struct Listed {
    /// The lowest SSL-capable version it was read with.
    min_ssl_version: Version,
    agents: Vec<AgentStatus>,
    /// Each agent's JSON, once written and until it changes.
    json: Vec<Option<bytes::Bytes>>,
    campaign: Option<Progress>,
    /// Each agent's position in `agents`.
    positions: HashMap<Uuid, usize>,
}

impl Listed {
    /// The whole list, read.
    fn read(db: &Connection, context: ViewContext) -> Result<Listed, RegistryError> {
        let (agents, positions) = agent_list(db, context)?;
        Ok(Listed {
            min_ssl_version: context.min_ssl_version,
            json: vec![None; agents.len()],
            agents,
            campaign: newest_campaign(db)?,
            positions,
        })
    }

    /// After agents came in or were renamed: back in the list's order.
    fn reorder(&mut self) {
        self.agents.sort_unstable_by(list_order);
        self.positions = positions(&self.agents);
        self.json = vec![None; self.agents.len()];
    }
}

/// The kept list, as [`Cache::with_status`] lends it.
pub struct KeptList<'a> {
    agents: &'a [AgentStatus],
    json: &'a mut [Option<bytes::Bytes>],
}

impl KeptList<'_> {
    /// Every agent, in the list's order.
    pub fn agents(&self) -> &[AgentStatus] {
        self.agents
    }

    /// The whole status as JSON, the same bytes `serde_json` makes of
    /// [`StatusRef`]; each agent's part is written once and kept, and the
    /// answer shares it rather than copying it.
    pub fn status_json(&mut self, overview: &Overview) -> serde_json::Result<StatusJson> {
        for (agent, json) in self.agents.iter().zip(self.json.iter_mut()) {
            if json.is_none() {
                *json = Some(serde_json::to_vec(agent)?.into());
            }
        }
        let mut head = Vec::with_capacity(4096);
        head.extend_from_slice(b"{\"network\":");
        serde_json::to_writer(&mut head, &overview.network)?;
        head.extend_from_slice(b",\"summary\":");
        serde_json::to_writer(&mut head, &overview.summary)?;
        head.extend_from_slice(b",\"campaign\":");
        serde_json::to_writer(&mut head, &overview.campaign)?;
        head.extend_from_slice(b",\"agents\":[");
        Ok(StatusJson {
            head: Some(head.into()),
            agents: self
                .json
                .iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .into_iter(),
            first: true,
            done: false,
        })
    }
}

/// The status's JSON in pieces of about [`StatusJson::PIECE`] bytes, for
/// an answer that is sent as it is written.
pub struct StatusJson {
    head: Option<bytes::Bytes>,
    agents: std::vec::IntoIter<bytes::Bytes>,
    first: bool,
    done: bool,
}

impl StatusJson {
    /// About how large a piece is.
    pub const PIECE: usize = 64 * 1024;

    /// All of it in one buffer.
    pub fn to_vec(self) -> Vec<u8> {
        self.flat_map(|piece| piece.to_vec()).collect()
    }
}

impl Iterator for StatusJson {
    type Item = bytes::Bytes;

    fn next(&mut self) -> Option<bytes::Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if self.done {
            return None;
        }
        let mut piece = bytes::BytesMut::with_capacity(Self::PIECE + 4096);
        for agent in self.agents.by_ref() {
            if !std::mem::take(&mut self.first) {
                piece.extend_from_slice(b",");
            }
            piece.extend_from_slice(&agent);
            if piece.len() >= Self::PIECE {
                return Some(piece.freeze());
            }
        }
        piece.extend_from_slice(b"]}");
        self.done = true;
        Some(piece.freeze())
    }
}

impl Cache {
    /// Brings the list up to date and lends it to `f` with the overview
    /// (`online` as of now); the list stays locked while `f` runs.
    pub fn with_status<T>(
        &self,
        registry: &Registry,
        min_ssl_version: Version,
        offline_after_ms: u64,
        ca_fingerprint: Option<&str>,
        f: impl FnOnce(Overview, KeptList<'_>) -> T,
    ) -> Result<T, RegistryError> {
        let context = ViewContext::new(min_ssl_version, offline_after_ms);
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let listed = registry.read_changes(|db, changes| {
            let tx = db.unchecked_transaction()?;
            let kept = match list.take() {
                Some(listed) if !changes.other && listed.min_ssl_version == min_ssl_version => {
                    refresh(&tx, context, listed, &changes)?
                }
                _ => None,
            };
            let listed = match kept {
                Some(listed) => listed,
                None => {
                    #[cfg(test)]
                    self.whole_reads
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Listed::read(&tx, context)?
                }
            };
            tx.commit()?;
            Ok(listed)
        })?;
        // (On failure the list stays empty: the changes taken are lost, and
        // the next call reads it whole.)
        let listed = list.insert(listed);
        for (agent, json) in listed.agents.iter_mut().zip(listed.json.iter_mut()) {
            let online = context.online(agent.last_seen);
            if online != agent.online {
                agent.online = online;
                *json = None;
            }
        }
        let overview =
            Tally::of(&listed.agents).overview(context, ca_fingerprint, listed.campaign.clone());
        let kept = KeptList {
            agents: &listed.agents,
            json: &mut listed.json,
        };
        Ok(f(overview, kept))
    }
}

/// Reads again the agents that changed (found from the rows that changed,
/// by rowid) and puts them in place, each whole: row, last result, step
/// results. `None` when that would cost more than reading the whole list,
/// or an agent's row is gone: the caller reads the whole list.
fn refresh(
    db: &Connection,
    context: ViewContext,
    mut listed: Listed,
    changes: &Changes,
) -> Result<Option<Listed>, RegistryError> {
    let rowids =
        |set: &std::collections::BTreeSet<i64>| serde_json::to_string(set).map_err(corrupt);
    let mut ids = std::collections::BTreeSet::new();
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
    // One agent at a time costs about what the whole list costs for 1 in 8.
    if ids.len() > (listed.agents.len() / 8).max(64) {
        return Ok(None);
    }
    let mut moved = false;
    if !ids.is_empty() {
        let ids = serde_json::to_string(&ids).map_err(corrupt)?;
        let clause = "WHERE a.id IN (SELECT value FROM json_each(?1))";
        for agent in agents_where(db, context, clause, &[ids.into()])? {
            match listed.positions.get(&agent.id) {
                Some(&i) => {
                    moved |= listed.agents[i].name != agent.name;
                    listed.agents[i] = agent;
                    listed.json[i] = None;
                }
                None => {
                    moved = true;
                    listed.agents.push(agent);
                }
            }
        }
    }
    if changes.campaigns || changes.rows.contains_key("campaign_children") {
        listed.campaign = newest_campaign(db)?;
    }
    if moved {
        listed.reorder();
    }
    Ok(Some(listed))
}

/// The newest campaign's progress.
fn newest_campaign(db: &Connection) -> Result<Option<Progress>, RegistryError> {
    match crate::campaign::latest(db)? {
        Some(id) => crate::campaign::progress(db, id),
        None => Ok(None),
    }
}

/// Agents alike in everything the counters depend on, and how many of them
/// are online, certified, and so on.
#[derive(Debug, Clone, Default)]
struct Group {
    soonest_expiry: Option<i64>,
    admission: Option<crate::registry::Admission>,
    compromised: usize,
    ssl_capable: bool,
    mpos: bool,
    excluded: bool,
    agents: usize,
    online: usize,
    certified: usize,
    ssl: usize,
    broker_tls: usize,
    passed: usize,
    failed: usize,
}

impl Group {
    /// One agent as a group of one.
    fn of(agent: &AgentStatus) -> Group {
        let state = agent.last_result.as_ref().map(|r| r.state);
        Group {
            soonest_expiry: agent.certificate_not_after,
            admission: Some(agent.admission),
            compromised: agent.compromised.into(),
            ssl_capable: agent.ssl_capable,
            mpos: agent.kind == AgentKind::Mpos,
            excluded: agent.excluded.is_some(),
            agents: 1,
            online: agent.online.into(),
            certified: agent.has_certificate.into(),
            ssl: agent.ssl.into(),
            broker_tls: agent.broker_tls.into(),
            passed: (state == Some(ChildState::Passed)).into(),
            failed: (state == Some(ChildState::Failed)).into(),
        }
    }
}

/// The counters of the status, and the one place that says what each
/// counts: certificates, test results and AMQPS count for eligible children
/// (SSL-capable, not mPOS) only.
#[derive(Debug, Clone, Default)]
struct Tally {
    agents: usize,
    online: usize,
    eligible: usize,
    eligible_certified: usize,
    switched: usize,
    broker_tls: usize,
    eligible_on_tls: usize,
    passed: usize,
    failed: usize,
    not_ssl_capable: usize,
    mpos: usize,
    excluded: usize,
    pending: usize,
    rejected: usize,
    compromised: usize,
    soonest_expiry: Option<i64>,
}

impl Tally {
    /// The counters of a list.
    fn of(agents: &[AgentStatus]) -> Tally {
        let mut tally = Tally::default();
        for agent in agents {
            tally.add(&Group::of(agent));
        }
        tally
    }

    fn add(&mut self, group: &Group) {
        self.agents += group.agents;
        self.online += group.online;
        self.switched += group.ssl;
        self.broker_tls += group.broker_tls;
        self.compromised += group.compromised;
        self.soonest_expiry = match (self.soonest_expiry, group.soonest_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        use crate::registry::Admission;
        if group.admission == Some(Admission::Pending) {
            self.pending += group.agents;
        } else if group.admission == Some(Admission::Rejected) {
            self.rejected += group.agents;
        } else if !group.ssl_capable {
            self.not_ssl_capable += group.agents;
        } else if group.mpos {
            self.mpos += group.agents;
        } else if group.excluded {
            self.excluded += group.agents;
        } else {
            self.eligible += group.agents;
            self.eligible_certified += group.certified;
            self.eligible_on_tls += group.broker_tls;
            self.passed += group.passed;
            self.failed += group.failed;
        }
    }

    fn overview(
        &self,
        context: ViewContext,
        ca_fingerprint: Option<&str>,
        campaign: Option<Progress>,
    ) -> Overview {
        let phase = if self.eligible > 0 && self.eligible_on_tls == self.eligible {
            "broker-tls"
        } else if self.switched > 0 {
            "ssl"
        } else if self.eligible_certified > 0 {
            "certificates"
        } else {
            "plain"
        };
        Overview {
            network: Network {
                phase: phase.into(),
                agents: self.agents,
                online: self.online,
                offline: self.agents - self.online,
                eligible: self.eligible,
                children_with_certificates: self.eligible_certified,
                switched_to_ssl: self.switched,
                broker_tls: self.broker_tls,
                min_ssl_version: context.min_ssl_version.to_string(),
                certificates_generated: ca_fingerprint.is_some(),
                ca_fingerprint: ca_fingerprint.map(str::to_owned),
                ssl_port: None,
                pending: self.pending,
                rejected: self.rejected,
                compromised: self.compromised,
                security_events: 0,
                signing_key: None,
                soonest_expiry: self.soonest_expiry,
                revoked_certificates: 0,
                renewals_done: 0,
                renewals_failed: 0,
                ca_rotation: None,
                nodes: Vec::new(),
                queue_type: None,
            },
            summary: Summary {
                passed: self.passed,
                with_errors: self.failed,
                did_not_participate: if campaign.is_some() {
                    self.eligible - self.passed - self.failed
                } else {
                    0
                },
                version_not_supporting_ssl: self.not_ssl_capable,
                mpos: self.mpos,
                excluded: self.excluded,
            },
            campaign,
        }
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
            online: context.online(last_seen),
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
    let slot = match row.get_ref(2)?.as_str()? {
        "cert-test" => &mut last.cert_test,
        "ssl-port" => &mut last.ssl_port,
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

/// Whether a reported version supports SSL.
pub fn ssl_capable(version: &str, min: Version) -> bool {
    Version::parse(version).is_ok_and(|v| v >= min)
}

/// Whether an agent takes part in certificates and campaigns.
pub fn eligible(agent: &Agent, min: Version) -> bool {
    agent.admission == crate::registry::Admission::Accepted
        && agent.excluded.is_none()
        && agent.kind != AgentKind::Mpos
        && ssl_capable(&agent.version, min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::{self, RawPageQuery};
    use rusqlite::params;

    const MIN: Version = Version(1, 0, 0);
    const OFFLINE_AFTER_MS: u64 = 60_000;

    /// Inserts an agent row the way the registry stores it.
    fn agent(db: &Connection, name: &str, kind: &str, version: &str, claims_cert: bool) -> Uuid {
        let id = Uuid::new_v4();
        db.execute(
            "INSERT INTO agents (id, name, kind, version, location, hostnames, ips,
                 first_seen, last_seen, has_certificate)
             VALUES (?1, ?2, ?3, ?4, 'shop-1', '[\"till.shop\"]', '[\"10.0.0.1\"]', 0, ?5, ?6)",
            params![
                id.to_string(),
                name,
                kind,
                version,
                fleetls_proto::now_ms() as i64,
                claims_cert
            ],
        )
        .unwrap();
        id
    }

    fn certificate(db: &Connection, agent: Uuid, revoked: bool) {
        db.execute(
            "INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, revoked,
                 chain_pem) VALUES (?1, ?2, 'CN=x', 0, 0, ?3, 'PEM')",
            params![Uuid::new_v4().to_string(), agent.to_string(), revoked],
        )
        .unwrap();
    }

    fn campaign(db: &Connection, kind: &str, started: i64, children: &[(Uuid, &str)]) -> Uuid {
        let id = Uuid::new_v4();
        db.execute(
            "INSERT INTO campaigns (id, kind, state, window, started_at, deadline_at,
                 step_timeout_ms) VALUES (?1, ?2, 'finished', 10, ?3, ?3, 1000)",
            params![id.to_string(), kind, started],
        )
        .unwrap();
        for (seq, (agent, state)) in children.iter().enumerate() {
            db.execute(
                "INSERT INTO campaign_children (campaign, agent, seq, state, step, target_host,
                     target_port, message) VALUES (?1, ?2, ?3, ?4, 'ssl-port', 'h', 1, 'msg')",
                params![id.to_string(), agent.to_string(), seq as i64, state],
            )
            .unwrap();
        }
        id
    }

    fn step(db: &Connection, campaign: Uuid, agent: Uuid, step: &str, ok: bool, late: bool) {
        db.execute(
            "INSERT INTO step_results (campaign, agent, step, ok, message, at, late)
             VALUES (?1, ?2, ?3, ?4, ?5, 7, ?6)",
            params![
                campaign.to_string(),
                agent.to_string(),
                step,
                ok,
                format!("{step} {ok}"),
                late
            ],
        )
        .unwrap();
    }

    #[test]
    fn the_list_the_summary_and_the_pages_agree() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let ids = registry
            .with_tx(|db| {
                let a = agent(db, "till-a", "child", "1.2.0", true);
                let b = agent(db, "till-b", "child", "1.0.0", true);
                let c = agent(db, "till-c", "child", "1.0.0", false);
                agent(db, "bo-old", "child", "0.9.0", false);
                let mpos = agent(db, "mpos-1", "mpos", "1.0.0", true);
                // Two agents may share a name: the id orders them.
                let twin = agent(db, "till-a", "local-parent", "1.0.0", true);
                certificate(db, a, false);
                certificate(db, b, true);
                certificate(db, mpos, false);
                certificate(db, twin, false);
                let verify = campaign(db, "verify", 10, &[(a, "failed"), (b, "passed")]);
                let reverify = campaign(db, "reverify", 20, &[(a, "passed"), (twin, "passed")]);
                // Same start as the reverify, created later: the newer.
                let tie = campaign(db, "verify", 20, &[(twin, "failed")]);
                campaign(db, "switch", 30, &[(a, "failed"), (c, "failed")]);
                step(db, verify, a, "cert-test", false, false);
                step(db, reverify, a, "cert-test", true, false);
                step(db, reverify, a, "ssl-port", true, false);
                step(db, verify, b, "cert-test", true, false);
                // Reported after the child was ended: does not count.
                step(db, verify, b, "ssl-port", false, true);
                step(db, tie, twin, "cert-test", false, false);
                db.execute(
                    "INSERT INTO refusals (agent_id, reason, at) VALUES (?1, 'no', 1)",
                    params![c.to_string()],
                )?;
                Ok([a, b, c, twin, verify, reverify, tie])
            })
            .unwrap();
        let [a, b, c, twin, verify, reverify, tie] = ids;

        let status = compute(&registry, MIN, OFFLINE_AFTER_MS, Some("sha256:x")).unwrap();
        let names: Vec<&str> = status.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["bo-old", "mpos-1", "till-a", "till-a", "till-b", "till-c"]
        );
        let by_id = |id: Uuid| status.agents.iter().find(|x| x.id == id).unwrap();
        let last_a = by_id(a).last_result.as_ref().unwrap();
        assert_eq!(
            (last_a.campaign, last_a.kind.as_str()),
            (reverify, "reverify")
        );
        assert_eq!(last_a.state, ChildState::Passed);
        assert!(last_a.cert_test.as_ref().unwrap().ok && last_a.ssl_port.is_some());
        let last_b = by_id(b).last_result.as_ref().unwrap();
        assert_eq!((last_b.campaign, last_b.state.as_str()), (verify, "passed"));
        assert!(
            last_b.cert_test.is_some() && last_b.ssl_port.is_none(),
            "late"
        );
        let last_twin = by_id(twin).last_result.as_ref().unwrap();
        assert_eq!(
            (last_twin.campaign, last_twin.state.as_str()),
            (tie, "failed")
        );
        assert!(by_id(c).last_result.is_none(), "a switch is no test");
        assert_eq!(by_id(c).refusal.as_deref(), Some("no"));
        // A revoked certificate, or none issued, is no certificate.
        assert!(by_id(a).has_certificate && !by_id(b).has_certificate);
        assert_eq!(
            status.network,
            Network {
                phase: "certificates".into(),
                agents: 6,
                online: 6,
                offline: 0,
                eligible: 4,
                children_with_certificates: 2,
                switched_to_ssl: 0,
                broker_tls: 0,
                min_ssl_version: "1.0.0".into(),
                certificates_generated: true,
                ca_fingerprint: Some("sha256:x".into()),
                ssl_port: None,
                pending: 0,
                rejected: 0,
                compromised: 0,
                security_events: 0,
                signing_key: None,
                // The test's certificates carry not_after = 0.
                soonest_expiry: Some(0),
                revoked_certificates: 0,
                renewals_done: 0,
                renewals_failed: 0,
                ca_rotation: None,
                nodes: Vec::new(),
                queue_type: None,
            }
        );
        assert_eq!(
            status.summary,
            Summary {
                passed: 2,
                with_errors: 1,
                did_not_participate: 1,
                version_not_supporting_ssl: 1,
                mpos: 1,
                excluded: 0,
            }
        );

        let context = ViewContext::new(MIN, OFFLINE_AFTER_MS);
        let query = RawPageQuery::default().check().unwrap();
        let page = console::page(&registry, context, &query).unwrap();
        assert_eq!(page.agents, status.agents);
    }

    #[test]
    fn the_kept_list_follows_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let (a, b, verify) = registry
            .with_tx(|db| {
                let a = agent(db, "till-a", "child", "1.2.0", true);
                let b = agent(db, "till-b", "child", "1.0.0", true);
                certificate(db, a, false);
                let verify = campaign(db, "verify", 10, &[(a, "failed"), (b, "passed")]);
                step(db, verify, a, "cert-test", false, false);
                Ok((a, b, verify))
            })
            .unwrap();
        let cache = Cache::default();
        let whole_reads = || cache.whole_reads.load(std::sync::atomic::Ordering::Relaxed);
        // The kept list and overview, as the API serves them, against a
        // fresh computation.
        let check = |what: &str| {
            let fresh = compute(&registry, MIN, OFFLINE_AFTER_MS, Some("sha256:x")).unwrap();
            let (kept, json) = cache
                .with_status(
                    &registry,
                    MIN,
                    OFFLINE_AFTER_MS,
                    Some("sha256:x"),
                    |o, mut list| {
                        let value = serde_json::to_vec(&StatusRef {
                            network: &o.network,
                            summary: &o.summary,
                            campaign: o.campaign.as_ref(),
                            agents: list.agents(),
                        })
                        .unwrap();
                        (value, list.status_json(&o).unwrap().to_vec())
                    },
                )
                .unwrap();
            assert_eq!(kept, serde_json::to_vec(&fresh).unwrap(), "after {what}");
            assert_eq!(
                String::from_utf8(json).unwrap(),
                String::from_utf8(kept).unwrap(),
                "the kept JSON after {what}"
            );
        };
        check("the first call");
        assert_eq!(whole_reads(), 1);
        check("nothing");
        assert_eq!(whole_reads(), 1, "nothing changed: nothing read");

        // Agents' own rows: read again one by one, last results kept.
        let now = fleetls_proto::now_ms() as i64;
        registry
            .with_tx(|db| {
                db.execute(
                    "UPDATE agents SET last_seen = 0, ssl = 1 WHERE id = ?1",
                    params![a.to_string()],
                )?;
                db.execute(
                    "UPDATE agents SET version = '0.9.0', last_seen = ?2 WHERE id = ?1",
                    params![b.to_string(), now],
                )?;
                Ok(())
            })
            .unwrap();
        check("a heartbeat and a new version");
        registry
            .with_tx(|db| {
                db.execute(
                    "UPDATE agents SET name = 'a-first' WHERE id = ?1",
                    params![b.to_string()],
                )?;
                agent(db, "new-till", "child", "1.0.0", false);
                Ok(())
            })
            .unwrap();
        check("a new name and a new agent");
        assert_eq!(whole_reads(), 1, "agents' rows are read one by one");

        // A campaign's results, certificates and refusals: the agents they
        // belong to are read again.
        registry
            .with_tx(|db| {
                certificate(db, b, false);
                db.execute(
                    "UPDATE campaign_children SET state = 'passed', message = 'again'
                     WHERE agent = ?1",
                    params![a.to_string()],
                )?;
                step(db, verify, a, "ssl-port", true, false);
                db.execute(
                    "INSERT INTO refusals (agent_id, reason, at) VALUES (?1, 'no', 1)",
                    params![b.to_string()],
                )?;
                db.execute(
                    "UPDATE campaigns SET state = 'timed_out' WHERE id = ?1",
                    params![verify.to_string()],
                )?;
                Ok(())
            })
            .unwrap();
        check("results, a certificate, a refusal and a campaign's end");
        assert_eq!(whole_reads(), 1, "only the agents concerned are read");

        // A new campaign, a deleted row: the whole list again.
        registry
            .with_tx(|db| {
                campaign(db, "reverify", 20, &[(b, "failed")]);
                Ok(())
            })
            .unwrap();
        check("a new campaign");
        assert_eq!(whole_reads(), 2);
        registry
            .with_tx(|db| {
                db.execute(
                    "DELETE FROM refusals WHERE agent_id = ?1",
                    params![b.to_string()],
                )?;
                Ok(())
            })
            .unwrap();
        check("a refusal cleared");
        assert_eq!(whole_reads(), 3);
        registry.forget_certificates().unwrap();
        check("certs reset (a DELETE the update hook does not see)");
        assert_eq!(whole_reads(), 4);
        // A rolled back write changes nothing but is read again, safely.
        let _ = registry.with_tx(|db| {
            agent(db, "rolled-back", "child", "1.0.0", false);
            Err::<(), _>(RegistryError::Corrupt("no".into()))
        });
        check("a rolled back registration");
    }

    #[test]
    fn the_agent_columns_are_counted() {
        assert_eq!(AGENT_COLUMNS.split(',').count(), AGENT_COLUMN_COUNT);
    }

    #[test]
    fn an_empty_registry_is_plain() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let status = compute(&registry, MIN, OFFLINE_AFTER_MS, None).unwrap();
        let overview = Cache::default()
            .with_status(&registry, MIN, OFFLINE_AFTER_MS, None, |o, _| o)
            .unwrap();
        assert_eq!(status.network.phase, "plain");
        assert!(status.agents.is_empty() && status.campaign.is_none());
        assert_eq!(overview.network, status.network);
        assert_eq!(overview.summary, Summary::default());
    }
}
