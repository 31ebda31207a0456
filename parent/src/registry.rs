//! The registry: every agent, what it reported and when it was last heard,
//! in one SQLite file. Each batch of messages is written in one transaction
//! before any of them is acked, with each agent's replay counter
//! (`registry::replay`), so that a redelivered or replayed message changes
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub mod agent_reads;
pub mod agent_states;
pub mod campaign_states;
pub mod campaigns;
pub mod names;
pub mod security;
pub mod tokens;

pub mod agents;
pub mod certificates;
pub mod owed;
pub mod presence;
pub mod replay;
pub mod rotations;
pub mod views;

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite failed.
    #[error("registry database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database holds a value this build cannot read.
    #[error("registry database holds an unreadable value: {0}")]
    Corrupt(String),
}

pub use agent_states::Admission;

pub use security::{record_security, SecurityEvent, SECURITY_EVENTS_PER_KIND};

pub use agents::{agent_in, is_compromised, Agent};
pub use certificates::{revoke_certificates, Revocation};
pub use views::{DEFINITIONS, LAST_ENROLMENT};

/// How many prepared statements the registry connection keeps.
const STATEMENT_CACHE: usize = 256;

/// The registry, shareable between tasks; calls block, so run them on a
/// blocking thread when a batch is large.
#[derive(Clone)]
pub struct Registry {
    db: Arc<Mutex<Connection>>,
    changes: Arc<Mutex<Changes>>,
}

/// What was written to the registry since [`Registry::read_changes`] last
/// took it, as SQLite's update hook reports it. The status list (`status::Cache`) reads it to re-read only the
/// agents that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Rowids of the `agents` rows inserted, updated or deleted.
    pub agents: BTreeSet<i64>,
    /// Rowids of the rows inserted or updated in the tables whose rows each
    /// belong to one agent ([`AGENT_TABLES`]), by table.
    pub rows: BTreeMap<&'static str, BTreeSet<i64>>,
    /// A campaign's own row was updated (its state, the most acting).
    pub campaigns: bool,
    /// Anything else changed (a campaign began, a row was deleted), or
    /// what changed is not known (as at start).
    pub other: bool,
}

/// The tables whose rows each belong to one agent, and the column naming it.
pub const AGENT_TABLES: [(&str, &str); 4] = [
    ("certificates", "agent_id"),
    ("refusals", "agent_id"),
    ("campaign_children", "agent"),
    ("step_results", "agent"),
];

impl Changes {
    fn none() -> Changes {
        Changes {
            agents: BTreeSet::new(),
            rows: BTreeMap::new(),
            campaigns: false,
            other: false,
        }
    }

    /// Most rowids kept: past them (nobody asked for the status for a long
    /// time), reading the whole list is cheaper than keeping count.
    const MOST_ROWIDS: usize = 50_000;

    /// What the update hook says: `action` on the row `rowid` of `table`.
    fn record(&mut self, action: rusqlite::hooks::Action, table: &str, rowid: i64) {
        use rusqlite::hooks::Action;
        if self.other {
            // The whole list is read next: which rows changed no longer matters.
            return;
        }
        match (table, action) {
            // A deleted agent is missed when the row is read again.
            ("agents", _) => {
                self.agents.insert(rowid);
            }
            // Whose row it was is gone with it.
            (_, Action::SQLITE_DELETE) => self.other = true,
            ("campaigns", Action::SQLITE_UPDATE) => self.campaigns = true,
            _ => match AGENT_TABLES.iter().find(|(name, _)| *name == table) {
                Some((name, _)) => {
                    self.rows.entry(name).or_default().insert(rowid);
                }
                None => self.other = true,
            },
        }
        let kept = self.agents.len() + self.rows.values().map(BTreeSet::len).sum::<usize>();
        if self.other || kept > Self::MOST_ROWIDS {
            *self = Changes::default();
        }
    }
}

impl Default for Changes {
    fn default() -> Changes {
        Changes {
            other: true,
            ..Changes::none()
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    location TEXT,
    hostnames TEXT NOT NULL,
    ips TEXT NOT NULL,
    key_fingerprint TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    has_certificate INTEGER NOT NULL DEFAULT 0,
    ssl INTEGER NOT NULL DEFAULT 0,
    broker_tls INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    agent_id TEXT,
    subject TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    csr_message TEXT,
    chain_pem TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_agent ON certificates(agent_id);
CREATE INDEX IF NOT EXISTS certificates_csr ON certificates(csr_message);
-- The status asks whether an agent holds a valid certificate without reading chains.
CREATE INDEX IF NOT EXISTS certificates_agent_valid ON certificates(agent_id) WHERE revoked = 0;
CREATE TABLE IF NOT EXISTS refusals (
    agent_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);
";

/// The campaigns: each child's place in one, and every step result.
const CAMPAIGN_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    window INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    deadline_at INTEGER NOT NULL,
    step_timeout_ms INTEGER NOT NULL,
    finished_at INTEGER,
    max_acting INTEGER NOT NULL DEFAULT 0,
    params TEXT
);
CREATE TABLE IF NOT EXISTS campaign_children (
    campaign TEXT NOT NULL,
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    step TEXT,
    target_host TEXT NOT NULL,
    target_port INTEGER NOT NULL,
    step_deadline INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    message TEXT,
    cause TEXT,
    PRIMARY KEY (campaign, agent)
);
CREATE INDEX IF NOT EXISTS campaign_children_state ON campaign_children(campaign, state, seq);
CREATE INDEX IF NOT EXISTS campaign_children_agent ON campaign_children(agent);
CREATE TABLE IF NOT EXISTS step_results (
    campaign TEXT NOT NULL,
    agent TEXT NOT NULL,
    step TEXT NOT NULL,
    ok INTEGER NOT NULL,
    message TEXT NOT NULL,
    cause TEXT,
    at INTEGER NOT NULL,
    late INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign, agent, step)
);
";

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 8;

/// Each step takes the registry from version `i` to `i + 1`.
const MIGRATIONS: [&[&str]; 8] = [
    // 0 → 1: the registry of release 1.0 (no version recorded).
    &[""],
    // 1 → 2: trust. Agents registered before are accepted (they were
    // eligible) and pinned at their next Hello.
    &["ALTER TABLE agents ADD COLUMN signing_key TEXT;
     ALTER TABLE agents ADD COLUMN admission TEXT NOT NULL DEFAULT 'accepted';
     ALTER TABLE agents ADD COLUMN parent_key TEXT;
     ALTER TABLE agents ADD COLUMN compromised INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX IF NOT EXISTS agents_signing_key ON agents(signing_key);
     CREATE TABLE IF NOT EXISTS security_events (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         at INTEGER NOT NULL,
         agent TEXT,
         kind TEXT NOT NULL,
         detail TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS security_counts (
         kind TEXT PRIMARY KEY,
         count INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS banned_keys (
         key TEXT PRIMARY KEY,
         agent TEXT,
         reason TEXT NOT NULL,
         at INTEGER NOT NULL
     );"],
    // 2 → 3: revocation. What was marked revoked before counts as revoked
    // now, for no stated reason.
    &["ALTER TABLE certificates ADD COLUMN revoked_at INTEGER;
     ALTER TABLE certificates ADD COLUMN revoke_reason TEXT;
     UPDATE certificates SET revoked_at = issued_at / 1000, revoke_reason = 'unspecified'
         WHERE revoked = 1;
     CREATE TABLE IF NOT EXISTS crl (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         number INTEGER NOT NULL
     );"],
    // 3 → 4: the registry is the record, the broker the wire; and
    // certificates that live. Commands are transient, so what an agent is
    // owed is kept here: certificate information sent and not yet settled
    // (`crate::owed`), the key each certificate was issued for (a CSR on the
    // same key gets the same certificate back), and whether a campaign step
    // was sent again; an operator's decision to keep an agent on plain,
    // with its reason. Which CA signed each certificate and whether it
    // renewed one the agent held; which CAs each agent trusts; the CA
    // rotations; counters that never shrink (failed renewals).
    &["CREATE TABLE IF NOT EXISTS owed_certificates (
         agent_id TEXT PRIMARY KEY,
         renew INTEGER NOT NULL,
         since INTEGER NOT NULL,
         sent_at INTEGER NOT NULL
     );
     ALTER TABLE certificates ADD COLUMN key_sha256 TEXT;
     ALTER TABLE campaign_children ADD COLUMN nudged INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE agents ADD COLUMN excluded TEXT;
     ALTER TABLE certificates ADD COLUMN ca TEXT;
     ALTER TABLE certificates ADD COLUMN renewal INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE agents ADD COLUMN trusted_cas TEXT NOT NULL DEFAULT '[]';
     CREATE TABLE IF NOT EXISTS ca_rotations (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         old_ca TEXT NOT NULL,
         new_ca TEXT NOT NULL,
         phase TEXT NOT NULL,
         started_at INTEGER NOT NULL,
         phase_at INTEGER NOT NULL,
         campaign TEXT,
         finished_at INTEGER,
         waiting TEXT
     );
     CREATE TABLE IF NOT EXISTS counters (
         name TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     );"],
    // 4 → 5: when the agent said (its own clock) the state its row holds:
    // a report sent before another but delivered after it (two connections
    // during a move to AMQPS) no longer undoes it.
    &["ALTER TABLE agents ADD COLUMN state_at INTEGER NOT NULL DEFAULT 0;"],
    // 5 → 6: enrollment. The tokens that admit devices (only the key that
    // checks a proof is kept, never the token); which token admitted each
    // agent; a flag on a name that is taken or looks like another's, and
    // the name's confusable skeleton to find those. A revoked key is dead
    // for every agent: certificates are found by key. Security events are
    // one row per kind and source (first and last seen, how many), kept by
    // a quota per kind: a flood of one kind cannot push out another.
    &[tokens::MIGRATION, security::MIGRATION],
    // 6 → 7: presence. Whether the agent consumes its queue now, as the
    // broker says (`crate::tasks::presence`); 0 everywhere when the broker does
    // not say (no event exchange), and online is then from the last report.
    &[presence::MIGRATION],
    // 7 → 8: one replay counter per agent (`agents.last_seq`), instead of
    // a row per message id seen (`seen_messages`, kept a day: at 10,000
    // children some 1,000 rows a second). A registry of release 1.0 had
    // that table; one made since is born without it.
    &[replay::MIGRATION],
];

/// Brings the registry to [`SCHEMA_VERSION`], one step per transaction; a
/// registry written by a newer release is refused, not damaged.
fn migrate(db: &Connection) -> Result<(), RegistryError> {
    let mut version: i64 = db.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(RegistryError::Corrupt(format!(
            "the registry has schema version {version}, newer than this release's {SCHEMA_VERSION}: \
             run the fleetls-parent release that wrote it"
        )));
    }
    if version == 0 {
        // Release 1.0 wrote no version: its tables are created here when
        // missing, which is also how a new registry starts.
        db.execute_batch(SCHEMA)?;
        db.execute_batch(CAMPAIGN_SCHEMA)?;
    }
    while version < SCHEMA_VERSION {
        let tx = db.unchecked_transaction()?;
        tx.execute_batch(&MIGRATIONS[version as usize].concat())?;
        version += 1;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

impl Registry {
    /// Opens (creating if needed) the registry file.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        // Every statement of the message path stays prepared (the default
        // cache of 16 is smaller than that path's statements).
        db.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&db)?;
        let changes = Arc::new(Mutex::new(Changes::default()));
        let hook = changes.clone();
        db.update_hook(Some(
            move |action: rusqlite::hooks::Action, _: &str, table: &str, rowid: i64| {
                let mut changes = hook.lock().unwrap_or_else(|p| p.into_inner());
                changes.record(action, table, rowid);
            },
        ));
        Ok(Registry {
            db: Arc::new(Mutex::new(db)),
            changes,
        })
    }

    /// Runs `f` with the connection and what changed since the last call
    /// (all of it on the first). The changes are taken: a caller that
    /// fails must start again from nothing. SQLite's hook does not see a
    /// `DELETE` without `WHERE` (its truncate optimisation): every such
    /// statement here says so with `Registry::mark_changed`.
    pub fn read_changes<T>(
        &self,
        f: impl FnOnce(&Connection, Changes) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let db = self.lock();
        // Taken under the connection's lock, so no write is half counted.
        let changes = std::mem::replace(
            &mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()),
            Changes::none(),
        );
        f(&db, changes)
    }

    /// Records that something changed that the update hook does not see.
    fn mark_changed(&self) {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).other = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` in one transaction, committed when it returns `Ok`.
    pub fn with_tx<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut db = self.lock();
        let tx = db.transaction()?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs a read-only `f` on the database.
    pub fn with_db<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        f(&self.lock())
    }

    /// Security events recorded, by kind (never shrinks).
    pub fn security_counts(&self) -> Result<Vec<(String, u64)>, RegistryError> {
        let db = self.lock();
        let mut stmt =
            db.prepare_cached("SELECT kind, count FROM security_counts ORDER BY kind")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest `limit` security events of each kind (by when last
    /// seen), newest first.
    pub fn security_events(&self, limit: usize) -> Result<Vec<SecurityEvent>, RegistryError> {
        security::newest(&self.lock(), limit)
    }

    /// The newest security event of `kind`, if any was recorded.
    pub fn last_security_event(&self, kind: &str) -> Result<Option<SecurityEvent>, RegistryError> {
        security::last_of_kind(&self.lock(), kind)
    }
}

// Test code only from here on: the tests' own rows (`test_support`), so that
// the modules above the registry write no SQL of their own, and its tests.
#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::{apply, Event, EventKind, Policy};
    use fleetls_proto::{AgentKind, AgentState, Hello, ToChild};
    use rusqlite::params;
    use uuid::Uuid;

    #[test]
    fn the_changes_kept_stay_bounded() {
        use rusqlite::hooks::Action;
        let mut changes = Changes::none();
        changes.record(Action::SQLITE_UPDATE, "agents", 7);
        changes.record(Action::SQLITE_INSERT, "step_results", 9);
        changes.record(Action::SQLITE_UPDATE, "campaigns", 2);
        assert_eq!(changes.agents, BTreeSet::from([7]));
        assert_eq!(changes.rows["step_results"], BTreeSet::from([9]));
        assert!(changes.campaigns && !changes.other);
        // A deleted row: the whole list next, and nothing more counted.
        changes.record(Action::SQLITE_DELETE, "refusals", 3);
        assert_eq!(changes, Changes::default());
        changes.record(Action::SQLITE_UPDATE, "agents", 8);
        assert!(changes.agents.is_empty());
        // Nobody asked for a long time: past the bound, the whole list.
        let mut changes = Changes::none();
        for rowid in 0..=Changes::MOST_ROWIDS as i64 {
            changes.record(Action::SQLITE_INSERT, "campaign_children", rowid);
        }
        assert_eq!(changes, Changes::default());
    }

    fn hello(name: &str) -> Hello {
        Hello {
            enroll: None,
            name: name.into(),
            kind: AgentKind::Child,
            version: "1.0.0".into(),
            location: Some("shop-1".into()),
            hostnames: vec!["till-1.shop".into()],
            ips: vec!["10.0.0.5".into()],
            key_fingerprint: None,
            state: AgentState::default(),
        }
    }

    #[test]
    fn hello_registers_and_duplicates_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let agent = Uuid::new_v4();
        let message = Uuid::new_v4();
        let event = Event {
            message,
            agent,
            at: 1000,
            key: KEY.into(),
            delivery: 0,
            seq: next_seq(),
            what: EventKind::Hello(hello("till-1")),
        };
        apply(&registry, std::slice::from_ref(&event), None, &policy()).unwrap();
        let mut renamed = hello("till-renamed");
        renamed.version = "2.0.0".into();
        // A redelivery of the same message id changes nothing.
        apply(
            &registry,
            &[Event {
                what: EventKind::Hello(renamed),
                ..event
            }],
            None,
            &policy(),
        )
        .unwrap();
        let beat = |at, has_certificate| Event {
            message: Uuid::new_v4(),
            agent,
            at,
            key: KEY.into(),
            delivery: 0,
            seq: next_seq(),
            what: EventKind::Heartbeat(AgentState {
                has_certificate,
                ..Default::default()
            }),
        };
        apply(&registry, &[beat(5000, true)], None, &policy()).unwrap();
        apply(&registry, &[beat(3000, true)], None, &policy()).unwrap();
        let agents = registry.agents().unwrap();
        assert_eq!(agents.len(), 1);
        let a = &agents[0];
        // The redelivered Hello changed nothing; times are the parent's clock.
        // The child's claim alone is no certificate: none was issued here.
        assert_eq!(
            (a.name.as_str(), a.version.as_str(), a.has_certificate),
            ("till-1", "1.0.0", false)
        );
        let now = fleetls_proto::now_ms();
        assert!(a.first_seen <= a.last_seen && a.last_seen <= now && now - a.first_seen < 60_000);
        assert_eq!(a.location.as_deref(), Some("shop-1"));
        assert_eq!(a.ips, vec!["10.0.0.5".to_string()]);
    }

    #[test]
    fn a_message_not_above_its_agents_counter_changes_nothing_even_within_a_batch() {
        let (_dir, registry, agent) = registered();
        let beat = |seq, tls| Event {
            seq,
            ..heartbeat(agent, fleetls_proto::now_ms(), tls)
        };
        // Sent earlier, handed back late (a quorum queue after a channel
        // closed): new, but its older state does not win.
        let late = |seq, tls| Event {
            seq,
            ..heartbeat(agent, fleetls_proto::now_ms() - 60_000, tls)
        };
        let last = || {
            registry
                .with_tx(|tx| crate::registry::replay::last_seq(tx, &agent))
                .unwrap()
        };
        let first = last().expect("registered");
        assert!(first > 0, "the first Hello set the counter");
        let tls = || registry.agent(&agent).unwrap().unwrap().broker_tls;
        // One batch: a report, the same report again (a redelivery), an
        // older one never handled (handed back out of order: new), the
        // same again (now a redelivery), and two newer; the counter and
        // its window move within the batch.
        let (a, b) = (first + 10, first + 20);
        let applied = apply(
            &registry,
            &[
                beat(a, true),
                beat(a, false),
                late(first + 5, false),
                late(first + 5, false),
                beat(b, true),
                beat(b, false),
            ],
            None,
            &policy(),
        )
        .unwrap();
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
        assert_eq!(applied.replayed, 3);
        assert_eq!(last(), Some(b));
        assert!(tls(), "a replayed or late report changed the state");
        // A later batch: the counter and its window were committed.
        let applied = apply(
            &registry,
            &[beat(a, false), late(first + 5, false)],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!((applied.replayed, last(), tls()), (2, Some(b), true));
        // Below the window's first seq handled: a replay.
        let applied = apply(&registry, &[beat(first, false)], None, &policy()).unwrap();
        assert_eq!((applied.replayed, last(), tls()), (1, Some(b), true));
        let applied = apply(&registry, &[beat(b + 1, false)], None, &policy()).unwrap();
        assert_eq!((applied.replayed, last(), tls()), (0, Some(b + 1), false));
        // A replayed Hello neither re-registers nor greets.
        let applied = apply(
            &registry,
            &[Event {
                seq: first,
                ..hello_event(agent, KEY, hello("renamed"))
            }],
            None,
            &policy(),
        )
        .unwrap();
        assert!(applied.greeted.is_empty() && applied.replayed == 1);
        assert_eq!(registry.agent(&agent).unwrap().unwrap().name, "till-1");
        // Another agent's counter is its own: a seq below this agent's is
        // new for it, in the same batch.
        let other = Uuid::new_v4();
        let applied = apply(
            &registry,
            &[
                beat(b + 2, true),
                Event {
                    seq: 1,
                    ..hello_event(other, OTHER_KEY, hello("till-2"))
                },
            ],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!(applied.replayed, 0);
        assert_eq!(registry.agent(&other).unwrap().unwrap().name, "till-2");
        let theirs = registry
            .with_tx(|tx| crate::registry::replay::last_seq(tx, &other))
            .unwrap();
        assert_eq!((last(), theirs), (Some(b + 2), Some(1)));
    }

    #[test]
    fn registry_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetls.db");
        let agent = Uuid::new_v4();
        apply(
            &Registry::open(&path).unwrap(),
            &[Event {
                message: Uuid::new_v4(),
                agent,
                at: 1,
                key: KEY.into(),
                delivery: 0,
                seq: next_seq(),
                what: EventKind::Hello(hello("bo-1")),
            }],
            None,
            &policy(),
        )
        .unwrap();
        let again = Registry::open(&path).unwrap();
        assert_eq!(again.agent(&agent).unwrap().unwrap().name, "bo-1");
    }

    /// A seq above every one handed out before in this process: events
    /// made in turn are in seq order, as an agent's messages are.
    fn next_seq() -> u64 {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    const KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const OTHER_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn policy() -> Policy {
        Policy {
            parent_key: "sha256:parent".into(),
            enrollment: crate::enrollment::Rules {
                auto_accept: "child:*;mpos:*".parse().unwrap(),
                ..Default::default()
            },
            ssl_port_open_since: u64::MAX,
        }
    }

    fn hello_event(agent: Uuid, key: &str, hello: Hello) -> Event {
        Event {
            message: Uuid::new_v4(),
            agent,
            at: 1,
            key: key.into(),
            delivery: 7,
            seq: next_seq(),
            what: EventKind::Hello(hello),
        }
    }

    /// A heartbeat of `agent` sent at `at` (its clock), on TLS or not.
    fn heartbeat(agent: Uuid, at: u64, tls: bool) -> Event {
        Event {
            at,
            what: EventKind::Heartbeat(AgentState {
                broker_tls: tls,
                ssl: tls,
                ..AgentState::default()
            }),
            ..hello_event(agent, KEY, hello("till-1"))
        }
    }

    /// A fresh registry with one agent registered by its Hello (the folder
    /// must outlive the registry).
    fn registered() -> (tempfile::TempDir, Registry, Uuid) {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let agent = Uuid::new_v4();
        apply_accepted(&registry, hello_event(agent, KEY, hello("till-1")));
        (dir, registry, agent)
    }

    /// Applies one event, which must not be refused.
    fn apply_accepted(registry: &Registry, event: Event) {
        let applied = apply(registry, &[event], None, &policy()).unwrap();
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    }

    #[test]
    fn a_report_sent_earlier_but_delivered_later_does_not_undo_a_newer_one() {
        let (_dir, registry, agent) = registered();
        let beat = |at, tls| heartbeat(agent, at, tls);
        let apply_one = |event| apply_accepted(&registry, event);
        // On AMQPS at 100; the plain connection's heartbeat of 50 comes after.
        apply_one(beat(100, true));
        apply_one(beat(50, false));
        let stored = registry.agent(&agent).unwrap().unwrap();
        assert!(
            stored.broker_tls && stored.ssl,
            "a late report undid a newer one"
        );
        // A Hello sent before that, delivered late, neither.
        apply_one(Event {
            at: 60,
            ..hello_event(agent, KEY, hello("till-1"))
        });
        assert!(registry.agent(&agent).unwrap().unwrap().broker_tls);
        // A newer report does set it.
        apply_one(beat(150, false));
        assert!(!registry.agent(&agent).unwrap().unwrap().broker_tls);
    }

    #[test]
    fn a_report_from_an_agent_counted_not_connected_asks_presence_to_look_again() {
        let (_dir, registry, agent) = registered();
        let now = fleetls_proto::now_ms();
        let set_present = |present| {
            registry
                .with_tx(|tx| crate::registry::presence::set(tx, &agent, present))
                .unwrap()
        };
        assert!(set_present(false));
        let applied = apply(&registry, &[heartbeat(agent, now, false)], None, &policy()).unwrap();
        assert_eq!(applied.heard_absent, vec![agent]);
        assert!(set_present(true));
        let applied = apply(&registry, &[heartbeat(agent, now, false)], None, &policy()).unwrap();
        assert!(
            applied.heard_absent.is_empty(),
            "{:?}",
            applied.heard_absent
        );
    }

    #[test]
    fn a_report_dated_far_ahead_does_not_freeze_the_state() {
        let (_dir, registry, agent) = registered();
        let beat = |at, tls| heartbeat(agent, at, tls);
        let apply_one = |event| apply_accepted(&registry, event);
        // The child's clock runs a year ahead, then is set right: its
        // reports count again once the parent's clock passes the bound
        // (a minute ahead; here, its report of a minute and a bit later).
        let now = fleetls_proto::now_ms();
        apply_one(beat(now + 365 * 24 * 3600 * 1000, false));
        apply_one(beat(fleetls_proto::now_ms() + 61_000, true));
        assert!(
            registry.agent(&agent).unwrap().unwrap().broker_tls,
            "a report dated a year ahead froze the agent's state"
        );
    }

    /// Signs every CSR; the "CSR" text is the key it is on.
    struct KeySigner;

    impl crate::inbound::Signer for KeySigner {
        fn sign(&self, csr: &str, agent: &Agent) -> Result<crate::pki::Issued, String> {
            Ok(crate::pki::Issued {
                chain_pem: format!("cert of {csr}"),
                serial: Uuid::new_v4().simple().to_string(),
                subject: agent.id.to_string(),
                not_after: 0,
                ignored: Vec::new(),
                key: csr.to_owned(),
                ca: "sha256:ca".into(),
            })
        }
    }

    #[test]
    fn a_key_whose_certificate_was_revoked_is_never_certified_again() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let agent = Uuid::new_v4();
        let csr = |key: &str| Event {
            what: EventKind::Csr(key.into()),
            ..hello_event(agent, KEY, hello("till-1"))
        };
        let answers = |event: Event| {
            let applied = apply(&registry, &[event], Some(&KeySigner), &policy()).unwrap();
            assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
            applied
                .outgoing
                .into_iter()
                .map(|o| o.body)
                .collect::<Vec<_>>()
        };
        let current = || {
            registry
                .with_db(|db| {
                    Ok(db.query_row(
                        "SELECT group_concat(key_sha256) FROM certificates WHERE agent_id = ?1 AND revoked = 0",
                        params![agent.to_string()],
                        |row| row.get::<_, Option<String>>(0),
                    )?)
                })
                .unwrap()
        };
        let events = || -> i64 {
            registry
                .with_db(|db| {
                    Ok(db.query_row(
                        "SELECT count(*) FROM security_events WHERE kind = 'revoked_key_csr'",
                        [],
                        |row| row.get(0),
                    )?)
                })
                .unwrap()
        };
        answers(hello_event(agent, KEY, hello("till-1")));
        assert!(matches!(
            answers(csr("sha256:k1"))[..],
            [ToChild::CertificateIssued(_)]
        ));
        // The renewal, on a new key, supersedes the first certificate.
        assert!(matches!(
            answers(csr("sha256:k2"))[..],
            [ToChild::CertificateIssued(_)]
        ));
        assert_eq!(current().as_deref(), Some("sha256:k2"));
        // A CSR on the superseded key (a late duplicate, or a replay once
        // its message id is forgotten: a new message here): ignored,
        // unanswered, and the current certificate stays.
        assert!(answers(csr("sha256:k1")).is_empty());
        assert_eq!(current().as_deref(), Some("sha256:k2"));
        assert_eq!(events(), 0);
        // The current key's CSR sent again still gets its certificate back.
        assert!(matches!(
            answers(csr("sha256:k2"))[..],
            [ToChild::CertificateIssued(_)]
        ));
        assert_eq!(current().as_deref(), Some("sha256:k2"));
        // Revoked by an operator (a key compromised): refused, recorded.
        registry
            .with_tx(|tx| revoke_certificates(tx, &agent, "keyCompromise"))
            .unwrap();
        let [ToChild::CsrRejected(rejected)] = &answers(csr("sha256:k2"))[..] else {
            panic!("a CSR on a key revoked by an operator was certified again");
        };
        assert!(
            rejected.reason.contains("keyCompromise"),
            "{}",
            rejected.reason
        );
        assert_eq!(current(), None);
        assert_eq!(events(), 1);
        // A new key is certified.
        assert!(matches!(
            answers(csr("sha256:k3"))[..],
            [ToChild::CertificateIssued(_)]
        ));
        assert_eq!(current().as_deref(), Some("sha256:k3"));
    }

    #[test]
    fn a_message_signed_by_another_key_is_refused_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let agent = Uuid::new_v4();
        let applied = apply(
            &registry,
            &[hello_event(agent, KEY, hello("till-1"))],
            None,
            &policy(),
        )
        .unwrap();
        assert!(applied.rejected.is_empty());
        // Another process speaks for till-1 with its own key: refused.
        let applied = apply(
            &registry,
            &[hello_event(agent, OTHER_KEY, hello("evil"))],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!(applied.rejected.len(), 1);
        assert_eq!(applied.rejected[0].0, 7);
        assert!(
            applied.rejected[0].1.starts_with("impersonation"),
            "{:?}",
            applied.rejected
        );
        let stored = registry.agent(&agent).unwrap().unwrap();
        assert_eq!(stored.name, "till-1");
        assert_eq!(stored.signing_key.as_deref(), Some(KEY));
        assert_eq!(
            registry.security_counts().unwrap(),
            [("impersonation".to_owned(), 1)]
        );
        // A message from an agent never registered is refused, not recorded.
        let stranger = Event {
            what: EventKind::Heartbeat(AgentState::default()),
            ..hello_event(Uuid::new_v4(), KEY, hello("x"))
        };
        let applied = apply(&registry, &[stranger], None, &policy()).unwrap();
        assert!(applied.rejected[0].1.starts_with("unknown_agent"));
    }

    #[test]
    fn local_parents_wait_for_an_operator_and_rejected_keys_stay_out() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let (lp, till) = (Uuid::new_v4(), Uuid::new_v4());
        let mut local = hello("lp-1");
        local.kind = AgentKind::LocalParent;
        apply(
            &registry,
            &[
                hello_event(lp, KEY, local),
                hello_event(till, OTHER_KEY, hello("till-1")),
            ],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!(
            registry.agent(&lp).unwrap().unwrap().admission,
            Admission::Pending
        );
        assert_eq!(
            registry.agent(&till).unwrap().unwrap().admission,
            Admission::Accepted
        );
        // A child that turns into a local parent needs an operator again.
        let mut promoted = hello("till-1");
        promoted.kind = AgentKind::LocalParent;
        apply(
            &registry,
            &[hello_event(till, OTHER_KEY, promoted)],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!(
            registry.agent(&till).unwrap().unwrap().admission,
            Admission::Pending
        );
        registry.set_admission(&lp, Admission::Rejected).unwrap();
        // The rejected key cannot come back under a new id.
        let applied = apply(
            &registry,
            &[hello_event(Uuid::new_v4(), KEY, hello("lp-again"))],
            None,
            &policy(),
        )
        .unwrap();
        assert!(
            applied.rejected[0].1.starts_with("banned_key"),
            "{:?}",
            applied.rejected
        );
        registry.delete_agent(&till).unwrap();
        assert!(registry.agent(&till).unwrap().is_none());
        let applied = apply(
            &registry,
            &[hello_event(till, OTHER_KEY, hello("till-1"))],
            None,
            &policy(),
        )
        .unwrap();
        assert!(applied.rejected[0].1.starts_with("banned_key"));
    }

    #[test]
    fn an_agent_that_pinned_another_parent_key_is_compromised() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let agent = Uuid::new_v4();
        let mut h = hello("till-1");
        h.state.parent_key = Some("sha256:impostor".into());
        apply(&registry, &[hello_event(agent, KEY, h)], None, &policy()).unwrap();
        let compromised: bool = registry
            .with_db(|db| {
                Ok(db.query_row(
                    "SELECT compromised FROM agents WHERE id = ?1",
                    [agent.to_string()],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert!(compromised);
        assert_eq!(registry.security_counts().unwrap()[0].0, "compromised");
    }

    /// The registry of release 1.0, as that release wrote it (its `SCHEMA`
    /// and `CAMPAIGN_SCHEMA`, no version recorded). Frozen here: a later
    /// edit of the live schema must not change what the migrations are
    /// tested from.
    const RELEASE_1_0_SCHEMA: &str = "
        CREATE TABLE IF NOT EXISTS agents (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            version TEXT NOT NULL,
            location TEXT,
            hostnames TEXT NOT NULL,
            ips TEXT NOT NULL,
            key_fingerprint TEXT,
            first_seen INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            has_certificate INTEGER NOT NULL DEFAULT 0,
            ssl INTEGER NOT NULL DEFAULT 0,
            broker_tls INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS certificates (
            serial TEXT PRIMARY KEY,
            agent_id TEXT,
            subject TEXT NOT NULL,
            not_after INTEGER NOT NULL,
            issued_at INTEGER NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0,
            csr_message TEXT,
            chain_pem TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS certificates_agent ON certificates(agent_id);
        CREATE INDEX IF NOT EXISTS certificates_csr ON certificates(csr_message);
        CREATE INDEX IF NOT EXISTS certificates_agent_valid ON certificates(agent_id) WHERE revoked = 0;
        CREATE TABLE IF NOT EXISTS refusals (
            agent_id TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            at INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS seen_messages (
            id TEXT PRIMARY KEY,
            at INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS seen_messages_at ON seen_messages(at);
        CREATE TABLE IF NOT EXISTS campaigns (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            window INTEGER NOT NULL,
            started_at INTEGER NOT NULL,
            deadline_at INTEGER NOT NULL,
            step_timeout_ms INTEGER NOT NULL,
            finished_at INTEGER,
            max_acting INTEGER NOT NULL DEFAULT 0,
            params TEXT
        );
        CREATE TABLE IF NOT EXISTS campaign_children (
            campaign TEXT NOT NULL,
            agent TEXT NOT NULL,
            seq INTEGER NOT NULL,
            state TEXT NOT NULL,
            step TEXT,
            target_host TEXT NOT NULL,
            target_port INTEGER NOT NULL,
            step_deadline INTEGER,
            started_at INTEGER,
            finished_at INTEGER,
            message TEXT,
            cause TEXT,
            PRIMARY KEY (campaign, agent)
        );
        CREATE INDEX IF NOT EXISTS campaign_children_state ON campaign_children(campaign, state, seq);
        CREATE INDEX IF NOT EXISTS campaign_children_agent ON campaign_children(agent);
        CREATE TABLE IF NOT EXISTS step_results (
            campaign TEXT NOT NULL,
            agent TEXT NOT NULL,
            step TEXT NOT NULL,
            ok INTEGER NOT NULL,
            message TEXT NOT NULL,
            cause TEXT,
            at INTEGER NOT NULL,
            late INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (campaign, agent, step)
        );";

    /// The till and the mPOS device of the 1.0 fixture, and its campaign.
    const OLD_TILL: &str = "00000000-0000-0000-0000-00000000000a";
    const OLD_MPOS: &str = "00000000-0000-0000-0000-00000000000b";
    const OLD_CAMPAIGN: &str = "00000000-0000-0000-0000-0000000000c1";

    /// A row in every table of release 1.0: a till holding a certificate
    /// that replaced a revoked one, whose verify passed; an mPOS device
    /// whose CSR was refused; a message seen (release 1.0 kept their ids).
    const RELEASE_1_0_ROWS: &str = "
        INSERT INTO agents (id, name, kind, version, location, hostnames, ips, key_fingerprint,
                            first_seen, last_seen, has_certificate, ssl, broker_tls)
        VALUES ('00000000-0000-0000-0000-00000000000a', 'old-till', 'child', '1.0.0', 'shop-1',
                '[\"till-1.shop\"]', '[\"10.0.0.5\"]', 'sha256:old', 1000, 2000, 1, 1, 0),
               ('00000000-0000-0000-0000-00000000000b', 'old-mpos', 'mpos', '1.0.0', NULL,
                '[]', '[]', NULL, 1100, 2100, 0, 0, 0);
        INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, revoked,
                                  csr_message, chain_pem)
        VALUES ('0a01', '00000000-0000-0000-0000-00000000000a', 'CN=old-till', 9999999999,
                1000000, 1, 'msg-1', 'chain one'),
               ('0a02', '00000000-0000-0000-0000-00000000000a', 'CN=old-till', 9999999999,
                2000000, 0, 'msg-2', 'chain two');
        INSERT INTO refusals (agent_id, reason, at)
        VALUES ('00000000-0000-0000-0000-00000000000b', 'csr refused: not allowed', 3000);
        INSERT INTO seen_messages (id, at) VALUES ('msg-2', 4000);
        INSERT INTO campaigns (id, kind, state, window, started_at, deadline_at, step_timeout_ms,
                               finished_at, max_acting, params)
        VALUES ('00000000-0000-0000-0000-0000000000c1', 'verify', 'finished', 10, 5000, 9000,
                20000, 6000, 3, NULL);
        INSERT INTO campaign_children (campaign, agent, seq, state, step, target_host, target_port,
                                       step_deadline, started_at, finished_at, message, cause)
        VALUES ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-00000000000a', 0,
                'passed', 'ssl-port', 'localhost', 8443, NULL, 5100, 5900, 'all good', NULL);
        INSERT INTO step_results (campaign, agent, step, ok, message, cause, at, late)
        VALUES ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-00000000000a',
                'cert-test', 1, 'certificate valid', NULL, 5500, 0);";

    /// Each released migration as its release shipped it (found with
    /// `git log -p parent/src/registry*`; none was edited after its release):
    /// step `i` takes a registry from version `i` to `i + 1`. Frozen here like
    /// the 1.0 schema, and the fixtures of later versions are built with
    /// them: a released migration edited in the product leaves the
    /// registries of the versions before the edit unlike the others, and
    /// unlike a new one.
    const RELEASED_MIGRATIONS: [&str; 8] = [
        // 0 → 1
        "",
        // 1 → 2
        "ALTER TABLE agents ADD COLUMN signing_key TEXT;
         ALTER TABLE agents ADD COLUMN admission TEXT NOT NULL DEFAULT 'accepted';
         ALTER TABLE agents ADD COLUMN parent_key TEXT;
         ALTER TABLE agents ADD COLUMN compromised INTEGER NOT NULL DEFAULT 0;
         CREATE INDEX IF NOT EXISTS agents_signing_key ON agents(signing_key);
         CREATE TABLE IF NOT EXISTS security_events (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             at INTEGER NOT NULL,
             agent TEXT,
             kind TEXT NOT NULL,
             detail TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS security_counts (
             kind TEXT PRIMARY KEY,
             count INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS banned_keys (
             key TEXT PRIMARY KEY,
             agent TEXT,
             reason TEXT NOT NULL,
             at INTEGER NOT NULL
         );",
        // 2 → 3
        "ALTER TABLE certificates ADD COLUMN revoked_at INTEGER;
         ALTER TABLE certificates ADD COLUMN revoke_reason TEXT;
         UPDATE certificates SET revoked_at = issued_at / 1000, revoke_reason = 'unspecified'
             WHERE revoked = 1;
         CREATE TABLE IF NOT EXISTS crl (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             number INTEGER NOT NULL
         );",
        // 3 → 4
        "CREATE TABLE IF NOT EXISTS owed_certificates (
             agent_id TEXT PRIMARY KEY,
             renew INTEGER NOT NULL,
             since INTEGER NOT NULL,
             sent_at INTEGER NOT NULL
         );
         ALTER TABLE certificates ADD COLUMN key_sha256 TEXT;
         ALTER TABLE campaign_children ADD COLUMN nudged INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE agents ADD COLUMN excluded TEXT;
         ALTER TABLE certificates ADD COLUMN ca TEXT;
         ALTER TABLE certificates ADD COLUMN renewal INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE agents ADD COLUMN trusted_cas TEXT NOT NULL DEFAULT '[]';
         CREATE TABLE IF NOT EXISTS ca_rotations (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             old_ca TEXT NOT NULL,
             new_ca TEXT NOT NULL,
             phase TEXT NOT NULL,
             started_at INTEGER NOT NULL,
             phase_at INTEGER NOT NULL,
             campaign TEXT,
             finished_at INTEGER,
             waiting TEXT
         );
         CREATE TABLE IF NOT EXISTS counters (
             name TEXT PRIMARY KEY,
             value INTEGER NOT NULL
         );",
        // 4 → 5
        "ALTER TABLE agents ADD COLUMN state_at INTEGER NOT NULL DEFAULT 0;",
        // 5 → 6 (`tokens::MIGRATION`, then `security::MIGRATION`)
        "CREATE TABLE IF NOT EXISTS enroll_tokens (
             id TEXT PRIMARY KEY,
             mac_key BLOB NOT NULL,
             kinds TEXT NOT NULL,
             name_pattern TEXT NOT NULL,
             max_uses INTEGER NOT NULL,
             uses INTEGER NOT NULL DEFAULT 0,
             created_at INTEGER NOT NULL,
             expires_at INTEGER NOT NULL,
             revoked_at INTEGER,
             last_used_at INTEGER
         );
         ALTER TABLE agents ADD COLUMN enrolled_by TEXT;
         ALTER TABLE agents ADD COLUMN name_flag TEXT;
         ALTER TABLE agents ADD COLUMN name_skeleton TEXT;
         CREATE INDEX IF NOT EXISTS agents_name ON agents(name);
         CREATE INDEX IF NOT EXISTS agents_name_skeleton ON agents(name_skeleton);
         CREATE INDEX IF NOT EXISTS agents_admission ON agents(admission);
         CREATE INDEX IF NOT EXISTS certificates_key ON certificates(key_sha256);
         ALTER TABLE security_events ADD COLUMN first_at INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE security_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
         ALTER TABLE security_events ADD COLUMN source TEXT NOT NULL DEFAULT '';
         UPDATE security_events SET source = coalesce(agent, ''), first_at = at;
         UPDATE security_events SET
             count = (SELECT count(*) FROM security_events d
                      WHERE d.kind = security_events.kind AND d.source = security_events.source),
             first_at = (SELECT min(at) FROM security_events d
                         WHERE d.kind = security_events.kind AND d.source = security_events.source);
         DELETE FROM security_events WHERE id <> (SELECT max(id) FROM security_events d
             WHERE d.kind = security_events.kind AND d.source = security_events.source);
         CREATE UNIQUE INDEX IF NOT EXISTS security_events_source ON security_events(kind, source);
         CREATE INDEX IF NOT EXISTS security_events_kind_at ON security_events(kind, at);",
        // 6 → 7
        "ALTER TABLE agents ADD COLUMN present INTEGER NOT NULL DEFAULT 0;",
        // 7 → 8
        "ALTER TABLE agents ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE agents ADD COLUMN recent_seqs TEXT NOT NULL DEFAULT '';
         DROP INDEX IF EXISTS seen_messages_at;
         DROP TABLE IF EXISTS seen_messages;",
    ];

    /// What each release wrote, in what its version added (index: the
    /// version it recorded): 1.0 a row in each of its tables; later
    /// releases a row in each table they created and a value other than
    /// the default in each column they added. Release 1 added nothing.
    const RELEASED_ROWS: [&str; 9] = [
        RELEASE_1_0_ROWS,
        "",
        // The till pinned; the device pending and compromised, its old key banned.
        "UPDATE agents SET signing_key = 'till-key-v2', parent_key = 'sha256:parent-v2'
             WHERE id = '00000000-0000-0000-0000-00000000000a';
         UPDATE agents SET admission = 'pending', compromised = 1
             WHERE id = '00000000-0000-0000-0000-00000000000b';
         INSERT INTO security_events (at, agent, kind, detail) VALUES
             (100, '00000000-0000-0000-0000-00000000000a', 'impersonation', 'first'),
             (200, '00000000-0000-0000-0000-00000000000a', 'impersonation', 'second'),
             (300, NULL, 'unsigned', 'once');
         INSERT INTO security_counts (kind, count) VALUES ('impersonation', 2), ('unsigned', 1);
         INSERT INTO banned_keys (key, agent, reason, at)
         VALUES ('banned-key-v2', '00000000-0000-0000-0000-00000000000b',
                 'rejected by an operator', 2500);",
        // A certificate of the device revoked, with its reason; the CRL numbered.
        "INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, revoked,
                                   csr_message, chain_pem, revoked_at, revoke_reason)
         VALUES ('0b01', '00000000-0000-0000-0000-00000000000b', 'CN=old-mpos', 9999999999,
                 3000000, 1, 'msg-3', 'chain three', 3100, 'keyCompromise');
         INSERT INTO crl (id, number) VALUES (1, 7);",
        // A renewal of the till, owed; its step nudged; the device excluded;
        // a CA rotation waiting for the broker; a failed renewal counted.
        "INSERT INTO owed_certificates (agent_id, renew, since, sent_at)
         VALUES ('00000000-0000-0000-0000-00000000000a', 1, 4000, 4100);
         INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, revoked,
                                   csr_message, chain_pem, key_sha256, ca, renewal)
         VALUES ('0c01', '00000000-0000-0000-0000-00000000000a', 'CN=old-till', 9999999999,
                 4000000, 0, 'msg-4', 'chain four', 'key-v4', 'ca-v4', 1);
         UPDATE campaign_children SET nudged = 1;
         UPDATE agents SET excluded = 'vendor keeps it on plain'
             WHERE id = '00000000-0000-0000-0000-00000000000b';
         UPDATE agents SET trusted_cas = '[\"ca-v4\"]'
             WHERE id = '00000000-0000-0000-0000-00000000000a';
         INSERT INTO ca_rotations (old_ca, new_ca, phase, started_at, phase_at, campaign,
                                   finished_at, waiting)
         VALUES ('ca-v4', 'ca-v4b', 'trust', 4200, 4300, NULL, NULL, 'broker');
         INSERT INTO counters (name, value) VALUES ('renewals_failed', 3);",
        "UPDATE agents SET state_at = 1999 WHERE id = '00000000-0000-0000-0000-00000000000a';",
        // An enrollment token that admitted the device, whose name is
        // flagged; a flood of unsigned messages from one source.
        "INSERT INTO enroll_tokens (id, mac_key, kinds, name_pattern, max_uses, uses, created_at,
                                    expires_at, revoked_at, last_used_at)
         VALUES ('tok-v6', x'00ff', '[\"mpos\"]', 'old-*', 5, 1, 6000, 9000000, NULL, 6100);
         UPDATE agents SET enrolled_by = 'tok-v6', name_flag = 'similar to old-till',
                           name_skeleton = 'o1d-mpos'
             WHERE id = '00000000-0000-0000-0000-00000000000b';
         INSERT INTO security_events (at, agent, kind, detail, first_at, count, source)
         VALUES (650, NULL, 'unsigned', 'flood', 610, 40, '10.0.0.9');
         UPDATE security_counts SET count = 41 WHERE kind = 'unsigned';",
        "UPDATE agents SET present = 1 WHERE id = '00000000-0000-0000-0000-00000000000a';",
        "UPDATE agents SET last_seq = 42, recent_seqs = '40 41 42'
             WHERE id = '00000000-0000-0000-0000-00000000000a';",
    ];

    /// A registry file as the release that recorded `version` left it:
    /// the 1.0 fixture, then each released migration up to `version` and
    /// what the release that recorded it wrote (0: release 1.0 itself).
    fn registry_at(path: &Path, version: i64) {
        let db = Connection::open(path).unwrap();
        db.execute_batch(RELEASE_1_0_SCHEMA).unwrap();
        db.execute_batch(RELEASED_ROWS[0]).unwrap();
        for reached in 1..=version as usize {
            db.execute_batch(RELEASED_MIGRATIONS[reached - 1]).unwrap();
            db.execute_batch(RELEASED_ROWS[reached]).unwrap();
        }
        db.pragma_update(None, "user_version", version).unwrap();
    }

    /// `then` in a registry written by the release of `version` or a later
    /// one (`from`), else `before` (what the migrations put there).
    fn since<T>(from: i64, version: i64, then: T, before: T) -> T {
        if from >= version {
            then
        } else {
            before
        }
    }

    /// Every row `sql` selects, its columns as SQLite holds them joined by
    /// `|` (NULL for null, a blob in hex).
    fn dump(registry: &Registry, sql: &str) -> Vec<String> {
        use rusqlite::types::ValueRef;
        registry
            .with_db(|db| {
                let mut stmt = db.prepare(sql)?;
                let columns = stmt.column_count();
                let rows = stmt.query_map([], |r| {
                    let mut row = Vec::new();
                    for i in 0..columns {
                        row.push(match r.get_ref(i)? {
                            ValueRef::Null => "NULL".to_owned(),
                            ValueRef::Integer(n) => n.to_string(),
                            ValueRef::Real(x) => x.to_string(),
                            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                            ValueRef::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
                        });
                    }
                    Ok(row.join("|"))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .unwrap()
    }

    /// The tables, indexes and views of `registry`, their SQL with the
    /// whitespace folded.
    fn schema(registry: &Registry) -> Vec<String> {
        dump(
            registry,
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name",
        )
        .iter()
        .map(|row| row.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
    }

    /// What every migrated registry must hold, whatever version it came from.
    fn check_migrated(registry: &Registry, from: i64) {
        let version: i64 = registry
            .with_db(|db| Ok(db.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION, "from {from}");
        let till: Uuid = OLD_TILL.parse().unwrap();
        let mpos: Uuid = OLD_MPOS.parse().unwrap();
        // The agents, readable; accepted when registered before admission
        // (they were eligible), pinned at their next Hello.
        let old = registry.agent(&till).unwrap().unwrap();
        assert_eq!(
            (
                old.name.as_str(),
                old.kind,
                old.version.as_str(),
                old.location.as_deref()
            ),
            ("old-till", AgentKind::Child, "1.0.0", Some("shop-1")),
            "from {from}"
        );
        assert_eq!(old.hostnames, ["till-1.shop"], "from {from}");
        assert_eq!(old.ips, ["10.0.0.5"], "from {from}");
        assert_eq!((old.first_seen, old.last_seen), (1000, 2000), "from {from}");
        assert!(
            old.has_certificate && old.ssl && !old.broker_tls,
            "from {from}"
        );
        assert_eq!(old.admission, Admission::Accepted, "from {from}");
        assert_eq!(
            (
                old.signing_key.as_deref(),
                old.parent_key.as_deref(),
                old.excluded,
                old.name_flag,
                old.enrolled_by,
                old.present,
                old.compromised,
            ),
            (
                since(from, 2, Some("till-key-v2"), None),
                since(from, 2, Some("sha256:parent-v2"), None),
                None,
                None,
                None,
                from >= 7,
                false,
            ),
            "from {from}"
        );
        let device = registry.agent(&mpos).unwrap().unwrap();
        assert_eq!(
            (
                device.name.as_str(),
                device.kind,
                device.admission,
                device.compromised,
                device.excluded.as_deref(),
                device.enrolled_by.as_deref(),
                device.name_flag.as_deref(),
                device.present,
            ),
            (
                "old-mpos",
                AgentKind::Mpos,
                since(from, 2, Admission::Pending, Admission::Accepted),
                from >= 2,
                since(from, 4, Some("vendor keeps it on plain"), None),
                since(from, 6, Some("tok-v6"), None),
                since(from, 6, Some("similar to old-till"), None),
                false,
            ),
            "from {from}"
        );
        assert_eq!(registry.agents().unwrap().len(), 2, "from {from}");
        // Every table, row by row. The message ids seen (release 1.0) are
        // gone, for a replay counter per agent that starts at 0: any message
        // of the agent's next release is above. The certificate revoked in
        // 1.0 is revoked for no stated reason, at its issue (seconds).
        let c = OLD_CAMPAIGN;
        let tables: [(&str, &str, Vec<String>); 14] = [
            (
                "agents",
                "SELECT id, key_fingerprint, trusted_cas, state_at, name_skeleton, last_seq,
                        recent_seqs
                 FROM agents ORDER BY id",
                vec![
                    format!(
                        "{OLD_TILL}|sha256:old|{}|{}|NULL|{}|{}",
                        since(from, 4, "[\"ca-v4\"]", "[]"),
                        since(from, 5, "1999", "0"),
                        since(from, 8, "42", "0"),
                        since(from, 8, "40 41 42", ""),
                    ),
                    format!(
                        "{OLD_MPOS}|NULL|[]|0|{}|0|",
                        since(from, 6, "o1d-mpos", "NULL")
                    ),
                ],
            ),
            (
                "certificates",
                "SELECT serial, agent_id, subject, not_after, issued_at, revoked, csr_message,
                        chain_pem, revoked_at, revoke_reason, key_sha256, ca, renewal
                 FROM certificates ORDER BY serial",
                [
                    Some(format!(
                        "0a01|{OLD_TILL}|CN=old-till|9999999999|1000000|1|msg-1|chain one|1000|unspecified|NULL|NULL|0"
                    )),
                    Some(format!(
                        "0a02|{OLD_TILL}|CN=old-till|9999999999|2000000|0|msg-2|chain two|NULL|NULL|NULL|NULL|0"
                    )),
                    (from >= 3).then(|| format!(
                        "0b01|{OLD_MPOS}|CN=old-mpos|9999999999|3000000|1|msg-3|chain three|3100|keyCompromise|NULL|NULL|0"
                    )),
                    (from >= 4).then(|| format!(
                        "0c01|{OLD_TILL}|CN=old-till|9999999999|4000000|0|msg-4|chain four|NULL|NULL|key-v4|ca-v4|1"
                    )),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            (
                "refusals",
                "SELECT * FROM refusals",
                vec![format!("{OLD_MPOS}|csr refused: not allowed|3000")],
            ),
            (
                "campaigns",
                "SELECT * FROM campaigns",
                vec![format!("{c}|verify|finished|10|5000|9000|20000|6000|3|NULL")],
            ),
            (
                "campaign_children",
                "SELECT * FROM campaign_children",
                vec![format!(
                    "{c}|{OLD_TILL}|0|passed|ssl-port|localhost|8443|NULL|5100|5900|all good|NULL|{}",
                    since(from, 4, 1, 0)
                )],
            ),
            (
                "step_results",
                "SELECT * FROM step_results",
                vec![format!(
                    "{c}|{OLD_TILL}|cert-test|1|certificate valid|NULL|5500|0"
                )],
            ),
            // Written from version 2 on: one row per kind and source (the
            // two of one kind from one source folded), counting them, first
            // and last seen.
            (
                "security_events",
                "SELECT kind, source, count, first_at, at, agent, detail
                 FROM security_events ORDER BY kind, source",
                [
                    (from >= 2).then(|| {
                        format!("impersonation|{OLD_TILL}|2|100|200|{OLD_TILL}|second")
                    }),
                    (from >= 2).then(|| "unsigned||1|300|300|NULL|once".to_owned()),
                    (from >= 6).then(|| "unsigned|10.0.0.9|40|610|650|NULL|flood".to_owned()),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            (
                "security_counts",
                "SELECT * FROM security_counts ORDER BY kind",
                since(
                    from,
                    2,
                    vec![
                        "impersonation|2".to_owned(),
                        format!("unsigned|{}", since(from, 6, 41, 1)),
                    ],
                    vec![],
                ),
            ),
            (
                "banned_keys",
                "SELECT * FROM banned_keys",
                since(
                    from,
                    2,
                    vec![format!(
                        "banned-key-v2|{OLD_MPOS}|rejected by an operator|2500"
                    )],
                    vec![],
                ),
            ),
            (
                "crl",
                "SELECT * FROM crl",
                since(from, 3, vec!["1|7".to_owned()], vec![]),
            ),
            (
                "owed_certificates",
                "SELECT * FROM owed_certificates",
                since(from, 4, vec![format!("{OLD_TILL}|1|4000|4100")], vec![]),
            ),
            (
                "ca_rotations",
                "SELECT * FROM ca_rotations",
                since(
                    from,
                    4,
                    vec!["1|ca-v4|ca-v4b|trust|4200|4300|NULL|NULL|broker".to_owned()],
                    vec![],
                ),
            ),
            (
                "counters",
                "SELECT * FROM counters",
                since(from, 4, vec!["renewals_failed|3".to_owned()], vec![]),
            ),
            (
                "enroll_tokens",
                "SELECT * FROM enroll_tokens",
                since(
                    from,
                    6,
                    vec!["tok-v6|00ff|[\"mpos\"]|old-*|5|1|6000|9000000|NULL|6100".to_owned()],
                    vec![],
                ),
            ),
        ];
        for (table, sql, rows) in &tables {
            assert_eq!(&dump(registry, sql), rows, "{table}, from {from}");
        }
        // Those are all the tables: one added later needs rows in the
        // fixture of the version that adds it.
        let mut checked: Vec<&str> = tables.iter().map(|(table, _, _)| *table).collect();
        checked.sort_unstable();
        assert_eq!(
            dump(
                registry,
                "SELECT name FROM sqlite_master
                 WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ),
            checked,
            "from {from}"
        );
        assert_eq!(registry.issued_count().unwrap(), 1, "from {from}");
        assert_eq!(
            registry.revoked_count().unwrap(),
            since(from, 3, 2, 1),
            "from {from}"
        );
        // The refusal.
        assert_eq!(
            registry.refusals().unwrap().get(&mpos),
            Some(&("csr refused: not allowed".to_owned(), 3000)),
            "from {from}"
        );
        // The campaign, its child and step, as the status and the campaign engine read them.
        let campaign: Uuid = OLD_CAMPAIGN.parse().unwrap();
        let progress = registry
            .with_db(|db| crate::campaign::progress(db, campaign))
            .unwrap()
            .expect("the campaign is kept");
        assert_eq!(
            (
                progress.kind,
                progress.state,
                progress.window,
                progress.max_acting
            ),
            (
                crate::campaign::Kind::Verify,
                crate::campaign::CampaignState::Finished,
                10,
                3
            ),
            "from {from}"
        );
        assert_eq!(
            (progress.total, progress.passed, progress.finished_at),
            (1, 1, Some(6000)),
            "from {from}"
        );
        let status = crate::status::compute(
            registry,
            crate::config::Version(1, 0, 0),
            crate::status::Liveness::heard_within(u64::MAX),
            None,
        )
        .unwrap();
        let shown = status.agents.iter().find(|a| a.id == till).unwrap();
        assert!(shown.has_certificate, "from {from}: {shown:?}");
        let last = shown
            .last_result
            .as_ref()
            .expect("the verify result is kept");
        assert_eq!(
            (last.campaign, last.state, last.message.as_deref()),
            (
                campaign,
                crate::campaign::ChildState::Passed,
                Some("all good")
            ),
            "from {from}"
        );
        let step = last.cert_test.as_ref().expect("the step result is kept");
        assert_eq!(
            (step.ok, step.message.as_str(), step.at),
            (true, "certificate valid", 5500),
            "from {from}"
        );
        let shown = status.agents.iter().find(|a| a.id == mpos).unwrap();
        assert_eq!(
            shown.refusal.as_deref(),
            Some("csr refused: not allowed"),
            "from {from}"
        );
        if from >= 2 {
            assert_eq!(
                registry.security_counts().unwrap(),
                [
                    ("impersonation".to_owned(), 2),
                    ("unsigned".to_owned(), since(from, 6, 41, 1))
                ],
                "from {from}"
            );
        }
    }

    #[test]
    fn a_registry_of_every_released_version_migrates_and_keeps_its_rows() {
        assert_eq!(
            RELEASED_MIGRATIONS.len() as i64,
            SCHEMA_VERSION,
            "a released migration is frozen in RELEASED_MIGRATIONS, with rows in RELEASED_ROWS"
        );
        let dir = tempfile::tempdir().unwrap();
        let new = schema(&Registry::open(&dir.path().join("new.db")).unwrap());
        for from in 0..=SCHEMA_VERSION {
            let path = dir.path().join(format!("fleetls-{from}.db"));
            registry_at(&path, from);
            let registry = Registry::open(&path).unwrap();
            check_migrated(&registry, from);
            // The same tables, columns and indexes as a registry made new.
            assert_eq!(schema(&registry), new, "from {from}");
            // Opening again is a no-op.
            drop(registry);
            check_migrated(&Registry::open(&path).unwrap(), from);
        }
    }

    #[test]
    fn a_migrated_agent_is_pinned_at_its_next_hello_and_a_newer_registry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetls.db");
        registry_at(&path, 0);
        let registry = Registry::open(&path).unwrap();
        let till: Uuid = OLD_TILL.parse().unwrap();
        // Its next Hello pins its key; another key is refused after that.
        apply(
            &registry,
            &[hello_event(till, KEY, hello("old-till"))],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!(
            registry
                .agent(&till)
                .unwrap()
                .unwrap()
                .signing_key
                .as_deref(),
            Some(KEY)
        );
        let applied = apply(
            &registry,
            &[hello_event(till, OTHER_KEY, hello("old-till"))],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!(applied.rejected.len(), 1);
        // A registry written by a newer release is refused.
        registry
            .with_db(|db| Ok(db.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?))
            .unwrap();
        drop(registry);
        assert!(Registry::open(&path).is_err());
    }
}
