//! The certificates the parent issued: each one's record (serial, key,
//! CA, whether it renewed one), their revocation and the CRL's number,
//! what a key was certified for before (a revoked key is never certified
//! again), and the renewals counted.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::{Registry, RegistryError};
use crate::pki::Issued;

/// The revocation reason a renewal (or a certificate issued again by
/// export) revokes the certificates it replaces with, as
/// [`crate::pki::revocation_reason`] names it.
pub const SUPERSEDED: &str = "superseded";

/// The revocation reason of a certificate revoked without one recorded.
pub const UNSPECIFIED: &str = "unspecified";

/// A revoked certificate: its serial (hex), when (seconds) and why.
pub type Revocation = (String, i64, String);

impl Registry {
    /// Every revoked certificate (serial, when, why), for the CRL, and the
    /// number of the next CRL (each one numbered above the last).
    pub fn revocations(&self) -> Result<(Vec<Revocation>, u64), RegistryError> {
        self.with_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT serial, coalesce(revoked_at, issued_at / 1000), coalesce(revoke_reason, ?1)
                 FROM certificates WHERE revoked = 1 ORDER BY serial",
            )?;
            let rows = stmt.query_map([UNSPECIFIED], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
            let revoked = rows.collect::<Result<Vec<_>, _>>()?;
            tx.execute(
                "INSERT INTO crl (id, number) VALUES (1, 1)
                 ON CONFLICT(id) DO UPDATE SET number = number + 1",
                [],
            )?;
            let number: i64 =
                tx.query_row("SELECT number FROM crl WHERE id = 1", [], |r| r.get(0))?;
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
            revoke_certificates(tx, &agent, SUPERSEDED)?;
            record_issued(tx, &agent, issued, None, false)?;
            // Nothing more is owed (see `crate::owed`).
            super::owed::settle(tx, &agent)?;
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

/// Records the certificate issued to `agent` in answer to the CSR
/// `csr_message` (`None`: issued without one, by export); `renewal`: it
/// replaces one the agent held.
pub fn record_issued(
    tx: &Transaction<'_>,
    agent: &Uuid,
    issued: &Issued,
    csr_message: Option<&Uuid>,
    renewal: bool,
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, csr_message, chain_pem, key_sha256, ca, renewal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            issued.serial,
            agent.to_string(),
            issued.subject,
            issued.not_after,
            fleetls_proto::now_ms() as i64,
            csr_message.map(Uuid::to_string),
            issued.chain_pem,
            issued.key,
            issued.ca,
            renewal,
        ],
    )?;
    Ok(())
}

/// A certificate as it is sent again: its serial, expiry and chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its serial (hex).
    pub serial: String,
    /// When it expires (seconds since the epoch).
    pub not_after: i64,
    /// The chain (PEM).
    pub chain_pem: String,
}

fn stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        serial: row.get(0)?,
        not_after: row.get(1)?,
        chain_pem: row.get(2)?,
    })
}

/// The agent's valid certificate issued for the public key `key`, if any.
pub fn valid_for_key(
    tx: &Transaction<'_>,
    agent: &Uuid,
    key: &str,
) -> Result<Option<Stored>, RegistryError> {
    Ok(tx
        .query_row(
            "SELECT serial, not_after, chain_pem FROM certificates
             WHERE agent_id = ?1 AND key_sha256 = ?2 AND revoked = 0",
            params![agent.to_string(), key],
            stored,
        )
        .optional()?)
}

/// What the registry knows of a key a CSR asks to certify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHistory {
    /// Never certified (or only for this agent, still valid: answered
    /// before this is asked).
    Fresh,
    /// Certified for this agent and superseded by its renewal: a late
    /// duplicate of an old CSR.
    Superseded(String),
    /// Never to be certified again, and why: revoked for any other reason
    /// or for another agent, held by another agent, or banned.
    Dead(String),
}

/// A key whose certificate was revoked is dead for everyone: whichever
/// agent asks, under whatever id (a stolen key sent again from a new agent
/// id is refused). A key certified for another agent is not certified twice.
pub fn key_history(
    tx: &Transaction<'_>,
    agent: &Uuid,
    key: &str,
) -> Result<KeyHistory, RegistryError> {
    let me = agent.to_string();
    let dead: Option<(String, bool, bool, String)> = tx
        .query_row(
            "SELECT serial, agent_id IS ?2, revoked, coalesce(revoke_reason, ?4)
             FROM certificates
             WHERE key_sha256 = ?1
               AND (agent_id IS NOT ?2 OR (revoked = 1 AND coalesce(revoke_reason, '') <> ?3))
             ORDER BY revoked DESC, issued_at DESC LIMIT 1",
            params![key, me, SUPERSEDED, UNSPECIFIED],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    if let Some((serial, mine, revoked, reason)) = dead {
        return Ok(KeyHistory::Dead(match (revoked, mine) {
            (true, true) => {
                format!("this key's certificate (serial {serial}) was revoked ({reason})")
            }
            (true, false) => format!(
                "this key's certificate (serial {serial}), another agent's, was revoked ({reason})"
            ),
            (false, _) => format!("this key is certified for another agent (serial {serial})"),
        }));
    }
    let superseded: Option<String> = tx
        .query_row(
            "SELECT serial FROM certificates WHERE key_sha256 = ?1 AND agent_id = ?2 AND revoked = 1
             ORDER BY issued_at DESC LIMIT 1",
            params![key, me],
            |row| row.get(0),
        )
        .optional()?;
    Ok(superseded.map_or(KeyHistory::Fresh, KeyHistory::Superseded))
}

/// Whether the agent was ever issued a certificate.
pub fn ever_issued(tx: &Transaction<'_>, agent: &Uuid) -> Result<bool, RegistryError> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM certificates WHERE agent_id = ?1)",
        params![agent.to_string()],
        |row| row.get(0),
    )?)
}

/// The `counters` row of the failed renewals.
const RENEWALS_FAILED: &str = "renewals_failed";

/// Counts a failed renewal (the counter never shrinks).
pub fn count_failed_renewal(tx: &Transaction<'_>) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO counters (name, value) VALUES (?1, 1)
         ON CONFLICT(name) DO UPDATE SET value = value + 1",
        [RENEWALS_FAILED],
    )?;
    Ok(())
}

/// Renewals done and failed, counted from the registry: a renewal is a
/// certificate issued to an agent that held one (the one it replaces is
/// revoked, superseded); a failed renewal is a CSR refused from an agent
/// that was issued a certificate before.
pub fn renewal_counts(db: &Connection) -> Result<(u64, u64), RegistryError> {
    let done: i64 = db.query_row(
        "SELECT count(*) FROM certificates WHERE renewal = 1",
        [],
        |row| row.get(0),
    )?;
    let failed: i64 = db
        .query_row(
            "SELECT value FROM counters WHERE name = ?1",
            [RENEWALS_FAILED],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    Ok((done as u64, failed as u64))
}
