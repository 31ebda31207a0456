//! Each agent's replay counter (`agents.last_seq`): the highest `seq` of its
//! messages the parent handled, and the last [`WINDOW`] seqs handled
//! (`agents.recent_seqs`). A message of the agent whose `seq` is not above
//! the counter is a redelivery (the broker delivers again what was not
//! acked) or a replay (a captured message published again), and changes
//! nothing — unless it falls inside the window and was never handled: a
//! quorum queue hands back a channel's unacked messages out of order (seen
//! on RabbitMQ 3.10: after a channel closed mid-batch, 256–265 came back
//! after 266–599), and such a message is new, not replayed. Bounded per
//! agent, never a row per message: the registry grows with agents, never
//! with time.

use rusqlite::{params, OptionalExtension, Transaction};
use uuid::Uuid;

use super::RegistryError;

/// How many of an agent's last handled seqs are kept: how far back a
/// message handed back out of order is still taken.
pub const WINDOW: usize = 32;

/// An agent's replay counter and window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    /// The highest seq handled.
    pub last: u64,
    /// The last [`WINDOW`] seqs handled, ascending (`last` among them once
    /// any was handled since the window exists).
    pub recent: Vec<u64>,
}

impl Counter {
    /// Whether a message with `seq` is new: above the counter, or inside
    /// the window and not handled.
    pub fn fresh(&self, seq: u64) -> bool {
        if seq > self.last {
            return true;
        }
        match self.recent.first() {
            Some(&low) => seq > low && self.recent.binary_search(&seq).is_err(),
            None => false,
        }
    }

    /// The counter once `seq` is handled.
    fn with(mut self, seq: u64) -> Counter {
        self.last = self.last.max(seq);
        if let Err(at) = self.recent.binary_search(&seq) {
            self.recent.insert(at, seq);
        }
        let extra = self.recent.len().saturating_sub(WINDOW);
        self.recent.drain(..extra);
        self
    }
}

/// The agent's counter (`None`: it is not registered).
pub fn counter(tx: &Transaction<'_>, agent: &Uuid) -> Result<Option<Counter>, RegistryError> {
    let row: Option<(i64, String)> = tx
        .prepare_cached("SELECT last_seq, recent_seqs FROM agents WHERE id = ?1")?
        .query_row(params![agent.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    Ok(row.map(|(last, recent)| {
        let mut recent: Vec<u64> = recent
            .split_ascii_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        recent.sort_unstable();
        Counter {
            last: last.max(0) as u64,
            recent,
        }
    }))
}

/// The highest seq handled for `agent` (`None`: it is not registered).
pub fn last_seq(tx: &Transaction<'_>, agent: &Uuid) -> Result<Option<u64>, RegistryError> {
    Ok(counter(tx, agent)?.map(|c| c.last))
}

/// Records that the message `seq` of `agent` was handled (in the
/// transaction that handled it; nothing when the agent has no row, e.g. a
/// first Hello that was refused), from its counter `known` as read in the
/// same transaction (`None`: read it). `seq` is at most `i64::MAX`
/// (checked when the message was read).
pub fn advance(
    tx: &Transaction<'_>,
    agent: &Uuid,
    seq: u64,
    known: Option<Counter>,
) -> Result<(), RegistryError> {
    if i64::try_from(seq).is_err() {
        return Err(RegistryError::Corrupt(format!(
            "a seq above 2^63-1 reached the registry: {seq}"
        )));
    }
    let now = match known {
        Some(known) => Some(known),
        None => counter(tx, agent)?,
    };
    let Some(now) = now else {
        return Ok(());
    };
    let next = now.with(seq);
    let recent = next
        .recent
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    tx.prepare_cached("UPDATE agents SET last_seq = ?2, recent_seqs = ?3 WHERE id = ?1")?
        .execute(params![agent.to_string(), next.last as i64, recent])?;
    Ok(())
}

/// The migration that replaced the table of message ids seen
/// (`seen_messages`, a row per message kept a day) with the counter.
pub(super) const MIGRATION: &str = "
    ALTER TABLE agents ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN recent_seqs TEXT NOT NULL DEFAULT '';
    DROP INDEX IF EXISTS seen_messages_at;
    DROP TABLE IF EXISTS seen_messages;";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_handed_back_out_of_order_is_new_and_a_seq_handled_is_not() {
        let mut c = Counter::default();
        // Nothing handled since the window exists: not above is not new.
        assert!(!c.fresh(0));
        for seq in (10..20).chain(30..40) {
            assert!(c.fresh(seq), "{seq}");
            c = c.with(seq);
        }
        // 20..30 were handed back after 30..40: new, once each.
        for seq in 20..30 {
            assert!(c.fresh(seq), "{seq}");
            c = c.with(seq);
            assert!(!c.fresh(seq), "{seq} twice");
        }
        assert!(!c.fresh(39) && !c.fresh(35) && c.fresh(40));
        // The window holds the last WINDOW handled: older is a replay.
        for seq in 100..(100 + WINDOW as u64) {
            c = c.with(seq);
        }
        assert_eq!(c.recent.len(), WINDOW);
        assert!(!c.fresh(99), "below the window");
        assert!(!c.fresh(100), "the window's lowest, handled");
        assert_eq!(c.last, 100 + WINDOW as u64 - 1);
    }
}
