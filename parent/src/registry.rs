//! The registry: every agent, what it reported and when it was last heard,
//! in one SQLite file. Each batch of messages is written in one transaction
//! before any of them is acked, and every message id is remembered so that a
//! redelivered message changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use fleetls_proto::AgentKind;

use crate::pki::Issued;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use uuid::Uuid;

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

pub use crate::admission::Admission;

/// One recorded security event.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SecurityEvent {
    /// When it was recorded (ms).
    pub at: u64,
    /// The agent it concerns (claimed, for a forged message), if known.
    pub agent: Option<String>,
    /// That agent's name, if registered.
    pub name: Option<String>,
    /// `impersonation`, `forged_command`, `compromised`, `banned_key`,
    /// `unsigned`, `bad_signature`, `too_large` or `invalid_input`.
    pub kind: String,
    /// What happened, in words.
    pub detail: String,
}

/// The most security events kept (the oldest go first; the counts by kind
/// are kept apart and never shrink).
pub const SECURITY_EVENTS_KEPT: i64 = 10_000;

/// Records a security event (an impersonation, a forged command reported by
/// a child, a banned key): kept for the operator, counted for `/metrics`.
pub fn record_security(
    tx: &rusqlite::Transaction<'_>,
    agent: Option<&Uuid>,
    kind: &str,
    detail: &str,
) -> Result<(), RegistryError> {
    let detail = crate::admission::printable(detail, 500);
    tx.execute(
        "INSERT INTO security_events (at, agent, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![
            fleetls_proto::now_ms() as i64,
            agent.map(|a| a.to_string()),
            kind,
            detail
        ],
    )?;
    tx.execute(
        "INSERT INTO security_counts (kind, count) VALUES (?1, 1)
         ON CONFLICT(kind) DO UPDATE SET count = count + 1",
        params![kind],
    )?;
    tx.execute(
        "DELETE FROM security_events WHERE id <= (SELECT max(id) FROM security_events) - ?1",
        params![SECURITY_EVENTS_KEPT],
    )?;
    Ok(())
}

/// An agent as the registry knows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Agent {
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
    /// DNS names it reported.
    pub hostnames: Vec<String>,
    /// IP addresses it reported.
    pub ips: Vec<String>,
    /// When it first registered (ms).
    pub first_seen: u64,
    /// When it was last heard (ms).
    pub last_seen: u64,
    /// It holds a certificate.
    pub has_certificate: bool,
    /// It is in SSL mode.
    pub ssl: bool,
    /// It says its broker connection is AMQPS.
    pub broker_tls: bool,
    /// Whether it may have certificates and take part in campaigns.
    pub admission: Admission,
    /// The key (hex) pinned for it at its first Hello (`None`: registered
    /// by a release before signatures; pinned at its next Hello).
    pub signing_key: Option<String>,
    /// The parent key fingerprint it says it pinned.
    pub parent_key: Option<String>,
    /// Kept on plain AMQP by an operator's decision, and why (`None`:
    /// included): it takes part in no campaign and no switch.
    pub excluded: Option<String>,
}

/// The registry, shareable between tasks; calls block, so run them on a
/// blocking thread when a batch is large.
#[derive(Clone)]
pub struct Registry {
    db: Arc<Mutex<Connection>>,
    changes: Arc<Mutex<Changes>>,
}

/// What was written to the registry since [`Registry::read_changes`] last
/// took it, as SQLite's update hook reports it (the message ids seen do not
/// count). The status list (`status::Cache`) reads it to re-read only the
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
            ("seen_messages", _) => {}
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
CREATE TABLE IF NOT EXISTS seen_messages (
    id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_messages_at ON seen_messages(at);
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

/// The `WITH` clause every query of agents with their last result starts
/// with (the status list, the console's pages, a campaign's choice of
/// children):
///
/// - `tests(id, kind, rank)`: the test campaigns (`verify`, `reverify`),
///   rank 1 the newest (by start, then by creation). An agent's last result
///   is its enrolment in the test of lowest rank;
/// - `agent_view`: the agents, each with `certified`: it holds a
///   certificate when it says so and the parent issued it one that is still
///   valid in the registry (not from a CA since reset), as
///   `registry::SELECT_AGENT` has it.
pub const DEFINITIONS: &str = "WITH
    tests(id, kind, rank) AS MATERIALIZED (
        SELECT id, kind, row_number() OVER (ORDER BY started_at DESC, rowid DESC)
        FROM campaigns WHERE kind IN ('verify', 'reverify')),
    agent_view AS (
        SELECT agents.*, has_certificate AND EXISTS (
            SELECT 1 FROM certificates c WHERE c.agent_id = agents.id AND c.revoked = 0)
            AS certified,
            (SELECT max(not_after) FROM certificates c
             WHERE c.agent_id = agents.id AND c.revoked = 0) AS cert_not_after,
            (SELECT c.ca FROM certificates c
             WHERE c.agent_id = agents.id AND c.revoked = 0
             ORDER BY c.issued_at DESC LIMIT 1) AS cert_ca
        FROM agents)";

/// Joins to the agents (`a`, as `status::AGENTS_FROM` has them) each agent's last result: its enrolment (`l`) in
/// the test of lowest rank it was enrolled in, and that campaign (`lt`). One
/// index lookup per agent: for the console's filtered pages and the
/// counters (the full list reads the enrolments once instead).
pub const LAST_ENROLMENT: &str = "LEFT JOIN campaign_children l ON l.rowid = (
        SELECT cc.rowid FROM campaign_children cc JOIN tests t ON t.id = cc.campaign
        WHERE cc.agent = a.id ORDER BY t.rank LIMIT 1)
    LEFT JOIN campaigns lt ON lt.id = l.campaign";

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 5;

/// Each step takes the registry from version `i` to `i + 1`.
const MIGRATIONS: [&str; 5] = [
    // 0 → 1: the registry of release 1.0 (no version recorded).
    "",
    // 1 → 2: trust. Agents registered before are accepted (they were
    // eligible) and pinned at their next Hello.
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
    // 2 → 3: revocation. What was marked revoked before counts as revoked
    // now, for no stated reason.
    "ALTER TABLE certificates ADD COLUMN revoked_at INTEGER;
     ALTER TABLE certificates ADD COLUMN revoke_reason TEXT;
     UPDATE certificates SET revoked_at = issued_at / 1000, revoke_reason = 'unspecified'
         WHERE revoked = 1;
     CREATE TABLE IF NOT EXISTS crl (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         number INTEGER NOT NULL
     );",
    // 3 → 4: the registry is the record, the broker the wire; and
    // certificates that live. Commands are transient, so what an agent is
    // owed is kept here: certificate information sent and not yet settled
    // (`crate::owed`), the key each certificate was issued for (a CSR on the
    // same key gets the same certificate back), and whether a campaign step
    // was sent again; an operator's decision to keep an agent on plain,
    // with its reason. Which CA signed each certificate and whether it
    // renewed one the agent held; which CAs each agent trusts; the CA
    // rotations; counters that never shrink (failed renewals).
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
    // 4 → 5: when the agent said (its own clock) the state its row holds:
    // a report sent before another but delivered after it (two connections
    // during a move to AMQPS) no longer undoes it.
    "ALTER TABLE agents ADD COLUMN state_at INTEGER NOT NULL DEFAULT 0;",
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
        tx.execute_batch(MIGRATIONS[version as usize])?;
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
    /// statement here says so with [`Registry::mark_changed`].
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

    /// The last refusal of every agent that has one: (agent, reason, at ms).
    pub fn refusals(
        &self,
    ) -> Result<std::collections::HashMap<Uuid, (String, u64)>, RegistryError> {
        let db = self.lock();
        let mut stmt = db.prepare_cached("SELECT agent_id, reason, at FROM refusals")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (id, reason, at) = row?;
            if let Ok(id) = id.parse() {
                out.insert(id, (reason, at as u64));
            }
        }
        Ok(out)
    }

    /// Sets an agent's admission. Rejecting bans its key (it cannot register
    /// again under another id) and revokes its certificates; accepting a
    /// rejected agent lifts the ban.
    pub fn set_admission(&self, id: &Uuid, admission: Admission) -> Result<(), RegistryError> {
        self.with_tx(|tx| {
            let id_text = id.to_string();
            tx.execute(
                "UPDATE agents SET admission = ?2 WHERE id = ?1",
                params![id_text, admission.as_str()],
            )?;
            let key = signing_key_of(tx, &id_text)?;
            match admission {
                Admission::Rejected => {
                    if let Some(key) = key {
                        ban_key(tx, &key, id, "rejected by an operator")?;
                    }
                    revoke_certificates(tx, id, "affiliation-changed")?;
                }
                Admission::Accepted => {
                    tx.execute("DELETE FROM banned_keys WHERE agent = ?1", params![id_text])?;
                }
                Admission::Pending => {}
            }
            Ok(())
        })
    }

    /// Keeps an agent on plain AMQP by an operator's decision (`reason`),
    /// or takes it back into campaigns (`None`).
    pub fn set_excluded(&self, id: &Uuid, reason: Option<&str>) -> Result<(), RegistryError> {
        self.lock().execute(
            "UPDATE agents SET excluded = ?2 WHERE id = ?1",
            params![id.to_string(), reason],
        )?;
        self.mark_changed();
        Ok(())
    }

    /// Deletes an agent: its rows go, its certificates stay on record as
    /// revoked, and its key is banned (a stolen till cannot come back; a
    /// reinstalled one makes a new key).
    pub fn delete_agent(&self, id: &Uuid) -> Result<(), RegistryError> {
        self.with_tx(|tx| {
            let id_text = id.to_string();
            let key = signing_key_of(tx, &id_text)?;
            if let Some(key) = key {
                ban_key(tx, &key, id, "deleted by an operator")?;
            }
            revoke_certificates(tx, id, "cessation-of-operation")?;
            for (table, column) in [
                ("refusals", "agent_id"),
                ("owed_certificates", "agent_id"),
                ("step_results", "agent"),
                ("campaign_children", "agent"),
                ("agents", "id"),
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE {column} = ?1"),
                    params![id_text],
                )?;
            }
            Ok(())
        })?;
        self.mark_changed();
        Ok(())
    }

    /// Revokes every certificate of `agent` and bans its key (a stolen
    /// agent cannot register again); how many certificates.
    pub fn revoke_agent(&self, agent: &Uuid, reason: &str) -> Result<usize, RegistryError> {
        self.with_tx(|tx| {
            let key = signing_key_of(tx, &agent.to_string())?;
            if let Some(key) = key {
                ban_key(tx, &key, agent, &format!("revoked ({reason})"))?;
            }
            revoke_certificates(tx, agent, reason)
        })
    }

    /// Every revoked certificate (serial, when, why), for the CRL, and the
    /// number of the next CRL (each one numbered above the last).
    pub fn revocations(&self) -> Result<(Vec<Revocation>, u64), RegistryError> {
        self.with_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT serial, coalesce(revoked_at, issued_at / 1000), coalesce(revoke_reason, 'unspecified')
                 FROM certificates WHERE revoked = 1 ORDER BY serial",
            )?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
            let revoked = rows.collect::<Result<Vec<_>, _>>()?;
            tx.execute(
                "INSERT INTO crl (id, number) VALUES (1, 1)
                 ON CONFLICT(id) DO UPDATE SET number = number + 1",
                [],
            )?;
            let number: i64 = tx.query_row("SELECT number FROM crl WHERE id = 1", [], |r| r.get(0))?;
            Ok((revoked, number as u64))
        })
    }

    /// How many certificates were revoked (superseded ones included).
    pub fn revoked_count(&self) -> Result<u64, RegistryError> {
        let db = self.lock();
        Ok(db.query_row(
            "SELECT count(*) FROM certificates WHERE revoked = 1",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Security events recorded, by kind (never shrinks).
    pub fn security_counts(&self) -> Result<Vec<(String, u64)>, RegistryError> {
        let db = self.lock();
        let mut stmt =
            db.prepare_cached("SELECT kind, count FROM security_counts ORDER BY kind")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest security events, newest first.
    pub fn security_events(&self, limit: usize) -> Result<Vec<SecurityEvent>, RegistryError> {
        let db = self.lock();
        let mut stmt = db.prepare_cached(
            "SELECT e.at, e.agent, a.name, e.kind, e.detail FROM security_events e
             LEFT JOIN agents a ON a.id = e.agent ORDER BY e.id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |row| {
            Ok(SecurityEvent {
                at: row.get::<_, i64>(0)? as u64,
                agent: row.get(1)?,
                name: row.get(2)?,
                kind: row.get(3)?,
                detail: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets every certificate record (for `certs reset`).
    pub fn forget_certificates(&self) -> Result<(), RegistryError> {
        let db = self.lock();
        // A CA rotation belongs to the CA that goes too.
        db.execute_batch(
            "DELETE FROM certificates; DELETE FROM refusals; DELETE FROM owed_certificates; \
             DELETE FROM ca_rotations;",
        )?;
        self.mark_changed();
        Ok(())
    }

    /// Records a certificate the parent issued without a CSR (export); the
    /// ones it replaces are revoked (superseded): an agent holds one.
    pub fn record_certificate(&self, agent: Uuid, issued: &Issued) -> Result<(), RegistryError> {
        self.with_tx(|tx| {
            revoke_certificates(tx, &agent, "superseded")?;
            tx.execute(
                "INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, csr_message, chain_pem, key_sha256, ca)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?8)",
                params![
                    issued.serial,
                    agent.to_string(),
                    issued.subject,
                    issued.not_after,
                    fleetls_proto::now_ms() as i64,
                    issued.chain_pem,
                    issued.key,
                    issued.ca
                ],
            )?;
            // Nothing more is owed (see `crate::owed`).
            tx.execute(
                "DELETE FROM owed_certificates WHERE agent_id = ?1",
                params![agent.to_string()],
            )?;
            Ok(())
        })
    }

    /// How many certificates were issued to children.
    pub fn issued_count(&self) -> Result<u64, RegistryError> {
        let db = self.lock();
        Ok(db.query_row(
            "SELECT count(DISTINCT agent_id) FROM certificates WHERE agent_id IS NOT NULL AND revoked = 0",
            [],
            |row| row.get::<_, i64>(0),
        )? as u64)
    }

    /// Forgets message ids older than `age_ms` (a redelivery comes within minutes).
    pub fn prune_seen(&self, age_ms: u64) -> Result<usize, RegistryError> {
        let cutoff = fleetls_proto::now_ms().saturating_sub(age_ms) as i64;
        Ok(self
            .lock()
            .execute("DELETE FROM seen_messages WHERE at < ?1", params![cutoff])?)
    }

    /// Every agent, ordered by name.
    pub fn agents(&self) -> Result<Vec<Agent>, RegistryError> {
        let db = self.lock();
        let mut stmt = db.prepare_cached(&format!("{SELECT_AGENT} ORDER BY name, id"))?;
        let rows = stmt.query_map([], row_to_agent)?;
        let mut agents = Vec::new();
        for row in rows {
            agents.push(row??);
        }
        Ok(agents)
    }

    /// Every agent of one kind, ordered by name.
    pub fn agents_of_kind(&self, kind: AgentKind) -> Result<Vec<Agent>, RegistryError> {
        let db = self.lock();
        let mut stmt =
            db.prepare_cached(&format!("{SELECT_AGENT} WHERE kind = ?1 ORDER BY name, id"))?;
        let rows = stmt.query_map(params![kind.as_str()], row_to_agent)?;
        let mut agents = Vec::new();
        for row in rows {
            agents.push(row??);
        }
        Ok(agents)
    }

    /// One agent.
    pub fn agent(&self, id: &Uuid) -> Result<Option<Agent>, RegistryError> {
        let db = self.lock();
        let mut stmt = db.prepare_cached(&format!("{SELECT_AGENT} WHERE id = ?1"))?;
        match stmt
            .query_row(params![id.to_string()], row_to_agent)
            .optional()?
        {
            Some(agent) => Ok(Some(agent?)),
            None => Ok(None),
        }
    }
}

/// Revokes every valid certificate of `agent` (`reason` as
/// [`crate::pki::revocation_reason`] names it); how many.
pub fn revoke_certificates(
    tx: &rusqlite::Transaction<'_>,
    agent: &Uuid,
    reason: &str,
) -> Result<usize, RegistryError> {
    Ok(tx.execute(
        "UPDATE certificates SET revoked = 1, revoked_at = ?2, revoke_reason = ?3
         WHERE agent_id = ?1 AND revoked = 0",
        params![
            agent.to_string(),
            (fleetls_proto::now_ms() / 1000) as i64,
            reason
        ],
    )?)
}

/// A revoked certificate: its serial (hex), when (seconds) and why.
pub type Revocation = (String, i64, String);

/// The key pinned for an agent (`None`: unknown, or not pinned yet).
fn signing_key_of(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
) -> Result<Option<String>, RegistryError> {
    Ok(tx
        .query_row(
            "SELECT signing_key FROM agents WHERE id = ?1",
            params![id],
            |row| row.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// Bans a key from registering again.
pub(crate) fn ban_key(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    agent: &Uuid,
    reason: &str,
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO banned_keys (key, agent, reason, at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET reason = excluded.reason, at = excluded.at",
        params![
            key,
            agent.to_string(),
            reason,
            fleetls_proto::now_ms() as i64
        ],
    )?;
    Ok(())
}

/// One agent, read inside a transaction.
pub fn agent_in(tx: &rusqlite::Transaction<'_>, id: &Uuid) -> Result<Option<Agent>, RegistryError> {
    let mut stmt = tx.prepare_cached(&format!("{SELECT_AGENT} WHERE id = ?1"))?;
    match stmt
        .query_row(params![id.to_string()], row_to_agent)
        .optional()?
    {
        Some(agent) => Ok(Some(agent?)),
        None => Ok(None),
    }
}

/// An agent holds a certificate when it says so and the parent issued it
/// one that is still valid in the registry (not from a CA since reset).
const SELECT_AGENT: &str = "SELECT id, name, kind, version, location, hostnames, ips, first_seen,
    last_seen,
    has_certificate AND EXISTS (SELECT 1 FROM certificates c WHERE c.agent_id = agents.id AND c.revoked = 0),
    ssl, broker_tls, admission, signing_key, parent_key, excluded FROM agents";

/// A list as the registry stores it (JSON).
pub(crate) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

type RowResult = Result<Agent, RegistryError>;

fn row_to_agent(row: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let id: String = row.get(0)?;
    let kind: String = row.get(2)?;
    let hostnames: String = row.get(5)?;
    let ips: String = row.get(6)?;
    let parsed = (|| {
        Ok(Agent {
            id: id
                .parse()
                .map_err(|_| RegistryError::Corrupt(format!("agent id {id:?}")))?,
            name: row.get(1)?,
            kind: kind.parse().map_err(RegistryError::Corrupt)?,
            version: row.get(3)?,
            location: row.get(4)?,
            hostnames: serde_json::from_str(&hostnames)
                .map_err(|e| RegistryError::Corrupt(e.to_string()))?,
            ips: serde_json::from_str(&ips).map_err(|e| RegistryError::Corrupt(e.to_string()))?,
            first_seen: row.get::<_, i64>(7)? as u64,
            last_seen: row.get::<_, i64>(8)? as u64,
            has_certificate: row.get(9)?,
            ssl: row.get(10)?,
            broker_tls: row.get(11)?,
            admission: row
                .get::<_, String>(12)?
                .parse()
                .map_err(RegistryError::Corrupt)?,
            signing_key: row.get(13)?,
            parent_key: row.get(14)?,
            excluded: row.get(15)?,
        })
    })();
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::{apply, Event, EventKind, Policy};
    use fleetls_proto::{AgentState, Hello, ToChild};

    #[test]
    fn the_changes_kept_stay_bounded() {
        use rusqlite::hooks::Action;
        let mut changes = Changes::none();
        changes.record(Action::SQLITE_UPDATE, "agents", 7);
        changes.record(Action::SQLITE_INSERT, "step_results", 9);
        changes.record(Action::SQLITE_INSERT, "seen_messages", 1);
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
                what: EventKind::Hello(hello("bo-1")),
            }],
            None,
            &policy(),
        )
        .unwrap();
        let again = Registry::open(&path).unwrap();
        assert_eq!(again.agent(&agent).unwrap().unwrap().name, "bo-1");
    }

    const KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const OTHER_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn policy() -> Policy {
        Policy {
            parent_key: "sha256:parent".into(),
            auto_accept: Default::default(),
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

    #[test]
    fn a_registry_of_release_1_0_migrates_and_keeps_its_agents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetls.db");
        {
            // The 1.0 schema, as it wrote it: no version, no trust columns.
            let db = Connection::open(&path).unwrap();
            db.execute_batch(SCHEMA).unwrap();
            db.execute_batch(CAMPAIGN_SCHEMA).unwrap();
            db.execute(
                "INSERT INTO agents (id, name, kind, version, location, hostnames, ips,
                     first_seen, last_seen) VALUES (?1, 'old-till', 'child', '1.0.0', NULL, '[]', '[]', 1, 1)",
                [Uuid::nil().to_string()],
            )
            .unwrap();
        }
        let registry = Registry::open(&path).unwrap();
        let old = registry.agent(&Uuid::nil()).unwrap().unwrap();
        assert_eq!(old.admission, Admission::Accepted);
        assert_eq!(old.signing_key, None);
        let version: i64 = registry
            .with_db(|db| Ok(db.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Its next Hello pins its key; another key is refused after that.
        apply(
            &registry,
            &[hello_event(Uuid::nil(), KEY, hello("old-till"))],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!(
            registry
                .agent(&Uuid::nil())
                .unwrap()
                .unwrap()
                .signing_key
                .as_deref(),
            Some(KEY)
        );
        let applied = apply(
            &registry,
            &[hello_event(Uuid::nil(), OTHER_KEY, hello("old-till"))],
            None,
            &policy(),
        )
        .unwrap();
        assert_eq!(applied.rejected.len(), 1);
        // Opening again is a no-op; a newer registry is refused.
        drop(registry);
        let registry = Registry::open(&path).unwrap();
        registry
            .with_db(|db| Ok(db.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?))
            .unwrap();
        drop(registry);
        assert!(Registry::open(&path).is_err());
    }
}
