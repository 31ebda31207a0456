//! The agent's replay counter: every message it sends carries a `seq`
//! strictly above the one before it, for the life of its identity, and the
//! parent keeps only the highest it handled for each agent (no row per
//! message): a redelivered or replayed message is not above it and changes
//! nothing.
//!
//! `seq` follows the clock in microseconds, `max(now, last + 1)`, so that it
//! stays close to real time and a restart needs no write to go on above the
//! last one — unless the clock went back. For that, the agent reserves a
//! stretch ahead in its state file (`state.toml`'s `seq_floor`): every seq
//! it sends is below the floor it saved, and after a restart it starts
//! above that floor, whatever its clock says. Reaching the floor saves a new
//! one an hour of microseconds further: a write at each start and about
//! once an hour.
//!
//! One agent's sends take turns (the counter sits in a `tokio` mutex held
//! from taking a seq until the broker confirmed the message, see
//! `crate::session::Session::send`): seq order is then the order the
//! messages enter `fleetls.parent`, even when the heartbeat and a command
//! send at once or while the agent has two connections (its move to
//! AMQPS). A seq taken for a message that is then not sent leaves a gap,
//! which is harmless.

/// How far ahead of the seq it sends an agent reserves in its state file:
/// an hour of microseconds.
pub const RESERVE_US: u64 = 3_600 * 1_000_000;

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The replay counter of one agent.
#[derive(Debug)]
pub struct Counter {
    /// The last seq handed out (or, at start, the floor saved before: every
    /// seq sent before the restart was below it).
    last: u64,
    /// The seq reserved in the state file: everything below it may be sent
    /// without writing; reaching it saves a new one first.
    floor: u64,
}

impl Counter {
    /// The counter of an agent whose state file reserved up to `floor`
    /// (0 for an agent that never sent anything).
    pub fn resume(floor: u64) -> Counter {
        Counter { last: floor, floor }
    }

    /// The next seq at `now_us` (microseconds since the epoch). When it
    /// reaches the reserved floor, `reserve` is asked to save a new one
    /// first; if it cannot, the seq is still given (the parent's check
    /// holds whatever happens here: only this agent's own messages after a
    /// restart with its clock set back could be dropped as old) and saving
    /// is tried again at the next one.
    pub fn next<E: std::fmt::Display>(
        &mut self,
        now_us: u64,
        reserve: impl FnOnce(u64) -> Result<(), E>,
    ) -> u64 {
        let seq = now_us.max(self.last.saturating_add(1));
        if seq >= self.floor {
            let floor = seq.saturating_add(RESERVE_US);
            match reserve(floor) {
                Ok(()) => self.floor = floor,
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot save the replay counter's reserve in the state file; \
                     after a restart with the clock set back, this agent's first messages \
                     could be taken for replays"
                ),
            }
        }
        self.last = seq;
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter and the floors it saved.
    fn counting(floor: u64) -> (Counter, Vec<u64>) {
        (Counter::resume(floor), Vec::new())
    }

    fn next(counter: &mut Counter, saved: &mut Vec<u64>, now: u64) -> u64 {
        counter.next(now, |floor| {
            saved.push(floor);
            Ok::<(), String>(())
        })
    }

    #[test]
    fn seq_follows_the_clock_and_never_repeats() {
        let (mut counter, mut saved) = counting(0);
        let t = 1_700_000_000_000_000;
        assert_eq!(next(&mut counter, &mut saved, t), t);
        // The same microsecond, and a clock that steps back: still above.
        assert_eq!(next(&mut counter, &mut saved, t), t + 1);
        assert_eq!(next(&mut counter, &mut saved, t - 5_000_000), t + 2);
        assert_eq!(next(&mut counter, &mut saved, t + 10), t + 10);
        // One save for the first, none more within the hour reserved.
        assert_eq!(saved, [t + RESERVE_US]);
        next(&mut counter, &mut saved, t + RESERVE_US);
        assert_eq!(saved, [t + RESERVE_US, t + 2 * RESERVE_US]);
    }

    #[test]
    fn a_failed_save_is_tried_again_and_the_seq_still_given() {
        let mut counter = Counter::resume(0);
        let t = 1_700_000_000_000_000;
        let failed = counter.next(t, |_| Err("disk full"));
        assert_eq!(failed, t);
        let mut saved = None;
        let again = counter.next(t, |floor| {
            saved = Some(floor);
            Ok::<(), String>(())
        });
        assert_eq!((again, saved), (t + 1, Some(t + 1 + RESERVE_US)));
    }
}
