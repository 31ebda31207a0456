//! A broker switch's window follows the broker's pace: it grows while
//! children connect over AMQPS about as fast as at the smallest window, and
//! halves when they slow down — never below the window it started with.

use rusqlite::Transaction;
use uuid::Uuid;

use super::orders::BrokerSwitchParams;
use crate::registry::campaign_states::Kind;
use crate::registry::campaigns;
use crate::registry::RegistryError;

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
    /// The broker's pace when barely loaded: the quickest median time from
    /// order to report seen since the window was last at its floor (where
    /// it is learnt afresh), ms.
    baseline_ms: Option<i64>,
    /// Children that finished at or before this (ms) were counted already.
    since: i64,
}

/// Adjusts the window of a running broker switch from how long its
/// children take, order to report (an AMQPS connection opened with a TLS
/// handshake, a consumer and a report over it): once enough children
/// finished since the last change, it grows by half while their median
/// stays within twice the baseline, halves when it passes four times that,
/// and holds between. Never above the ceiling, never below the floor
/// ([`BROKER_SWITCH_FIRST_WINDOW`], or the ceiling when lower).
///
/// The baseline is the quickest median seen, learnt afresh whenever the
/// window is at its floor: a broker whose every connection got slower (a
/// cluster busy with 30,000 queues) sets a new baseline there instead of
/// holding the window at 1 against a pace it no longer has — with the
/// quickest median kept for good, a three-node cluster at 30,000 children
/// moved 1.5 children a second while it could open 150 AMQPS connections a
/// second. Returns the new window when it changed.
pub fn adapt_window(
    tx: &Transaction<'_>,
    id: Uuid,
    pace: &mut Pace,
) -> Result<Option<usize>, RegistryError> {
    let (kind, window, params) = campaigns::window_of(tx, id)?;
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
    for (ms, finished) in campaigns::finished_since(tx, id, pace.since)? {
        took.push(ms);
        last = last.max(finished);
    }
    if (took.len() as i64) < (window / 2).max(BROKER_SWITCH_FIRST_WINDOW as i64) {
        return Ok(None);
    }
    took.sort_unstable();
    let median = took[took.len() / 2].max(1);
    pace.since = last;
    let ceiling = (ceiling as i64).max(1);
    let floor = (BROKER_SWITCH_FIRST_WINDOW as i64).min(ceiling);
    let baseline = match pace.baseline_ms {
        Some(quickest) if window > floor => quickest.min(median),
        _ => median,
    };
    pace.baseline_ms = Some(baseline);
    let next = if median <= 2 * baseline {
        (window + window / 2 + 1).min(ceiling)
    } else if median > 4 * baseline {
        (window / 2).max(floor)
    } else {
        window
    };
    if next == window {
        return Ok(None);
    }
    campaigns::set_window(tx, id, next)?;
    Ok(Some(next as usize))
}

#[cfg(test)]
mod tests {
    //! The window against an in-memory registry.

    use super::*;
    use crate::campaign::create;
    use crate::campaign::test_support::*;
    use crate::registry::test_support::set_child_passed;

    #[test]
    fn a_broker_switch_window_grows_while_the_broker_keeps_pace_and_halves_when_it_slows() {
        let registry = registry();
        let enrolled = children(80);
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
                        set_child_passed(tx, id, child.agent, now - took, now)?;
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
        // Slower than four times the quickest: halves, down to the floor
        // and not below.
        finish(10, 1000);
        assert_eq!(adapt(&mut pace), Some(10));
        finish(8, 2000);
        assert_eq!(adapt(&mut pace), Some(BROKER_SWITCH_FIRST_WINDOW));
        // At the floor the broker's slower pace is its new baseline: children
        // that keep it let the window grow again (with the quickest median
        // kept for good, it would sit at the floor — or, before the floor,
        // at 1 — for the rest of the campaign).
        finish(8, 2000);
        assert_eq!(adapt(&mut pace), Some(13));
        finish(8, 2200);
        assert_eq!(adapt(&mut pace), Some(20));
    }
}
