//! Reads of the agents table for the console and the campaign engine: the
//! status list's filters as SQL, one page's `WHERE` clause and count, the
//! distinct locations, and when an agent was last heard.

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use uuid::Uuid;

use fleetls_proto::AgentKind;

use super::campaign_states::ChildState;
use super::{RegistryError, DEFINITIONS, LAST_ENROLMENT};

/// The agents (`a`) with their last refusal (`r`), after [`DEFINITIONS`]
/// (the same text as `status::AGENTS_FROM`).
pub const AGENTS_FROM: &str = "FROM agent_view a LEFT JOIN refusals r ON r.agent_id = a.id";

/// The status list's order: by name, then id (the same text as
/// `status::AGENTS_ORDER`).
pub const AGENTS_ORDER: &str = "ORDER BY a.name, a.id";

/// Stands for the online cutoff (ms) in a filter's condition.
const CUTOFF: &str = "?cutoff";

/// Stands for the child state ([`Filter::state`]) in a filter's condition.
const STATE: &str = "?state";

/// Which agents a page of the status list holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    /// Every agent.
    #[default]
    All,
    /// The last test failed ("with errors").
    Failed,
    /// The last test passed.
    Passed,
    /// Did not take part in the last test it was enrolled in.
    DidNotParticipate,
    /// Never enrolled in a test.
    NotTested,
    /// Not heard from within `--offline-after`.
    Offline,
    /// Heard from within `--offline-after`.
    Online,
    /// Holds no certificate.
    NoCertificate,
    /// Not switched to SSL.
    NotSsl,
    /// Broker connection not on AMQPS.
    NotAmqps,
    /// Refused a command or was refused one.
    Refused,
}

impl std::str::FromStr for Filter {
    type Err = String;

    /// A filter by its name in the API (empty: every agent).
    fn from_str(text: &str) -> Result<Filter, String> {
        Ok(match text {
            "" | "all" => Filter::All,
            "failed" => Filter::Failed,
            "passed" => Filter::Passed,
            "did-not-participate" => Filter::DidNotParticipate,
            "not-tested" => Filter::NotTested,
            "offline" => Filter::Offline,
            "online" => Filter::Online,
            "no-certificate" => Filter::NoCertificate,
            "not-ssl" => Filter::NotSsl,
            "not-amqps" => Filter::NotAmqps,
            "refused" => Filter::Refused,
            other => {
                return Err(format!(
                    "filter {other:?} is unknown: give all, failed, passed, did-not-participate, \
                     not-tested, offline, online, no-certificate, not-ssl, not-amqps or refused"
                ))
            }
        })
    }
}

impl Filter {
    /// The state of its last test's enrolment that this filter selects.
    fn state(self) -> Option<ChildState> {
        match self {
            Filter::Failed => Some(ChildState::Failed),
            Filter::Passed => Some(ChildState::Passed),
            Filter::DidNotParticipate => Some(ChildState::DidNotParticipate),
            _ => None,
        }
    }

    /// The SQL condition (over [`AGENTS_FROM`] and [`LAST_ENROLMENT`]); [`CUTOFF`]
    /// stands for the online cutoff, [`STATE`] for the child state
    /// ([`Filter::state`]). Fixed text only: values are always bound.
    fn condition(self) -> Option<&'static str> {
        Some(match self {
            Filter::All => return None,
            Filter::Failed | Filter::Passed | Filter::DidNotParticipate => "l.state = ?state",
            Filter::NotTested => "l.state IS NULL",
            Filter::Offline => "NOT (a.present OR a.last_seen > ?cutoff)",
            Filter::Online => "(a.present OR a.last_seen > ?cutoff)",
            Filter::NoCertificate => "NOT a.certified",
            Filter::NotSsl => "a.ssl = 0",
            Filter::NotAmqps => "a.broker_tls = 0",
            Filter::Refused => "r.reason IS NOT NULL",
        })
    }
}

/// What one page of the status list is filtered by.
#[derive(Debug, Clone, Copy)]
pub struct PageFilter<'a> {
    /// Which agents.
    pub filter: Filter,
    /// Only this kind.
    pub kind: Option<AgentKind>,
    /// Only this location (exact).
    pub location: Option<&'a str>,
    /// Only names (or ids) containing this, case-insensitive.
    pub q: Option<&'a str>,
    /// Agents last heard at or before this (ms) are offline.
    pub cutoff_ms: u64,
}

/// A `WHERE` clause (over [`AGENTS_FROM`] and [`LAST_ENROLMENT`], empty for
/// every agent) and the values bound to its parameters.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The clause.
    pub clause: String,
    /// Its parameters' values, `?1` first.
    pub binds: Vec<SqlValue>,
}

impl PageFilter<'_> {
    /// The `WHERE` clause that selects these agents.
    pub fn selection(&self) -> Selection {
        let mut binds: Vec<SqlValue> = Vec::new();
        let mut conditions: Vec<String> = Vec::new();
        if let Some(condition) = self.filter.condition() {
            let mut condition = condition.to_owned();
            if condition.contains(CUTOFF) {
                binds.push(SqlValue::Integer(self.cutoff_ms as i64));
                condition = condition.replace(CUTOFF, &format!("?{}", binds.len()));
            }
            if let Some(state) = self.filter.state() {
                binds.push(SqlValue::Text(state.as_str().to_owned()));
                condition = condition.replace(STATE, &format!("?{}", binds.len()));
            }
            conditions.push(condition);
        }
        if let Some(kind) = self.kind {
            binds.push(SqlValue::Text(kind.as_str().to_owned()));
            conditions.push(format!("a.kind = ?{}", binds.len()));
        }
        if let Some(location) = self.location {
            binds.push(SqlValue::Text(location.to_owned()));
            conditions.push(format!("a.location = ?{}", binds.len()));
        }
        if let Some(q) = self.q {
            binds.push(SqlValue::Text(q.to_lowercase()));
            let n = binds.len();
            conditions.push(format!(
                "(instr(lower(a.name), ?{n}) > 0 OR instr(a.id, ?{n}) > 0)"
            ));
        }
        let clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        Selection { clause, binds }
    }
}

impl Selection {
    /// The clause of one page (`limit` agents after `offset`, in the status
    /// list's order) and its values: what `status::agents_where` takes.
    pub fn page(&self, limit: usize, offset: usize) -> Selection {
        let mut binds = self.binds.clone();
        binds.push(SqlValue::Integer(limit as i64));
        binds.push(SqlValue::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
        let n = binds.len();
        let clause = format!(
            "{} {AGENTS_ORDER} LIMIT ?{} OFFSET ?{n}",
            self.clause,
            n - 1
        );
        Selection { clause, binds }
    }
}

/// How many agents `selection` selects.
pub fn count(db: &Connection, selection: &Selection) -> Result<usize, RegistryError> {
    let from = format!("{AGENTS_FROM} {LAST_ENROLMENT} {}", selection.clause);
    Ok(db
        .prepare_cached(&format!("{DEFINITIONS} SELECT count(*) {from}"))?
        .query_row(params_from_iter(selection.binds.iter()), |row| {
            row.get::<_, i64>(0)
        })? as usize)
}

/// Every distinct location, sorted.
pub fn locations(db: &Connection) -> Result<Vec<String>, RegistryError> {
    let mut stmt = db.prepare_cached(
        "SELECT DISTINCT location FROM agents WHERE location IS NOT NULL ORDER BY location",
    )?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// When an agent was last heard (ms), if it is registered.
pub fn last_seen(db: &Connection, agent: &Uuid) -> Result<Option<(u64, bool)>, RegistryError> {
    Ok(db
        .query_row(
            "SELECT last_seen, present FROM agents WHERE id = ?1",
            params![agent.to_string()],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, bool>(1)?)),
        )
        .optional()?)
}
