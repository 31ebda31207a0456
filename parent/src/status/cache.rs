//! The status list kept between calls ([`Cache`]), brought up to date from
//! what the registry says changed, and its JSON written once per agent.

use std::collections::HashMap;

use rusqlite::Connection;
use uuid::Uuid;

use super::counters::Tally;
use super::list::{agent_list, agents_where, list_order, newest_campaign, positions};
use super::{AgentStatus, Overview, ViewContext};
use crate::campaign::Progress;
use crate::config::Version;
use crate::registry::{views, Changes, Registry, RegistryError};

#[cfg(doc)]
use super::{compute, StatusRef};

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
    pub(super) whole_reads: std::sync::atomic::AtomicUsize,
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
        liveness: super::Liveness,
        ca_fingerprint: Option<&str>,
        f: impl FnOnce(Overview, KeptList<'_>) -> T,
    ) -> Result<T, RegistryError> {
        let context = ViewContext::new(min_ssl_version, liveness);
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
            let online = context.online(agent.last_seen, agent.connected);
            let silent = context.silent(agent.last_seen, agent.connected);
            if (online, silent) != (agent.online, agent.silent) {
                (agent.online, agent.silent) = (online, silent);
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
    let Some(ids) = views::changed_agents(db, changes)? else {
        return Ok(None);
    };
    // One agent at a time costs about what the whole list costs for 1 in 8.
    if ids.len() > (listed.agents.len() / 8).max(64) {
        return Ok(None);
    }
    let mut moved = false;
    if !ids.is_empty() {
        let ids = serde_json::to_string(&ids).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        for agent in agents_where(db, context, views::AMONG_IDS, &[ids.into()])? {
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
