//! The campaign engine: one task that keeps the running campaign's window
//! full, times out what is late and finishes the campaign. It wakes when a
//! campaign starts, a child ends, the broker connection comes back, or the
//! next step deadline passes. After a restart its first turn re-sends the
//! current step to every child that was acting.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::app::App;
use crate::campaign;
use crate::registry::agent_reads;
use crate::shutdown::Shutdown;

/// The longest the engine sleeps without a reason to wake.
const IDLE: Duration = Duration::from_secs(1);

/// Runs the engine until `shutdown`.
pub async fn run(app: Arc<App>, mut shutdown: Shutdown) {
    let mut resend = true;
    let mut pace = campaign::Pace::default();
    loop {
        let mut sleep = IDLE;
        // While presence is being read nobody is known online: no child is
        // started or judged offline until it is.
        let channel = app.channel().filter(|_| !app.presence_pending());
        if let Some(channel) = channel {
            let registry = app.registry.clone();
            let liveness = app.liveness();
            let judging = liveness.for_judging();
            let returning_until = app
                .presence_returning_until
                .load(std::sync::atomic::Ordering::SeqCst);
            let resend_now = resend;
            let judge = app.drained.load(std::sync::atomic::Ordering::SeqCst);
            let mut learnt = std::mem::take(&mut pace);
            let turn = tokio::task::spawn_blocking(move || {
                let turn = registry.with_tx(|tx| {
                    let Some(id) = campaign::running(tx)? else {
                        return Ok(None);
                    };
                    if judge {
                        if let Some(window) = campaign::adapt_window(tx, id, &mut learnt)? {
                            info!(campaign = %id, window, "broker switch: the window follows the broker's pace");
                        }
                    }
                    let online = |agent: &uuid::Uuid| {
                        let now = fleetls_proto::now_ms();
                        let seen = agent_reads::last_seen(tx, agent).ok().flatten();
                        reach(now, seen, liveness, judging, returning_until)
                    };
                    campaign::tick(tx, id, &online, resend_now, judge).map(|t| Some((id, t)))
                });
                (turn, learnt)
            })
            .await
            .map(|(turn, learnt)| {
                pace = learnt;
                turn
            });
            match turn {
                Ok(Ok(Some((id, tick)))) => {
                    resend = false;
                    if !tick.outgoing.is_empty() {
                        if let Err(e) = app.send(&channel, tick.outgoing).await {
                            warn!(error = %e, "sending campaign steps failed; will re-send");
                            resend = true;
                            if e.is_stuck() {
                                // A stuck channel stays stuck: a new session.
                                app.reconnect.notify_one();
                            }
                        }
                    }
                    if !tick.running {
                        info!(campaign = %id, "campaign over");
                        // Last, the parent moves itself to AMQPS.
                        if let (Some(campaign::Kind::SwitchBroker), Some(uri)) =
                            (tick.kind, &tick.amqps)
                        {
                            app.move_to_amqps(uri);
                        }
                    }
                    if let Some(next) = tick.next_deadline {
                        let wait = next.saturating_sub(fleetls_proto::now_ms()) + 5;
                        sleep = sleep.min(Duration::from_millis(wait));
                    }
                }
                Ok(Ok(None)) => resend = false,
                Ok(Err(e)) => warn!(error = %e, "campaign engine turn failed"),
                Err(e) => warn!(error = %e, "campaign engine task failed"),
            }
        } else {
            // Without a broker nothing can be sent; re-send once it is back.
            resend = true;
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = app.campaign_changed.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Whether a waiting child can start now (`now`, ms), from its last report
/// and presence (`seen`: none when it has no row), how online is told
/// (`liveness`), the campaign's judging grace (`judging`) and the return
/// grace after the broker was lost (`returning_until`, ms): online starts;
/// heard a moment ago, or cut off with the broker and still within the
/// grace, keeps its place; otherwise it does not participate.
fn reach(
    now: u64,
    seen: Option<(u64, bool)>,
    liveness: crate::status::Liveness,
    judging: crate::status::Liveness,
    returning_until: u64,
) -> campaign::Reach {
    match seen {
        Some((seen, present)) if liveness.online(now, seen, present) => campaign::Reach::Online,
        Some((seen, present)) if judging.online(now, seen, present) || now < returning_until => {
            campaign::Reach::Away
        }
        _ => campaign::Reach::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::reach;
    use crate::campaign::Reach;
    use crate::status::Liveness;

    const NOW: u64 = 1_000_000_000;

    /// Presence decides: offline_after 0, as while the broker says.
    fn presence() -> Liveness {
        Liveness {
            offline_after_ms: 0,
            silent_after_ms: 0,
        }
    }

    #[test]
    fn a_connected_child_starts_and_one_long_gone_does_not_participate() {
        let (l, j) = (presence(), presence().for_judging());
        assert_eq!(
            reach(NOW, Some((NOW - 3_600_000, true)), l, j, 0),
            Reach::Online
        );
        assert_eq!(
            reach(NOW, Some((NOW - 3_600_000, false)), l, j, 0),
            Reach::Gone
        );
        assert_eq!(reach(NOW, None, l, j, 0), Reach::Gone);
    }

    #[test]
    fn a_child_heard_a_moment_ago_keeps_its_place() {
        let (l, j) = (presence(), presence().for_judging());
        assert_eq!(reach(NOW, Some((NOW - 1_000, false)), l, j, 0), Reach::Away);
    }

    #[test]
    fn after_the_broker_was_lost_every_unconnected_child_is_waited_for_within_the_grace() {
        let (l, j) = (presence(), presence().for_judging());
        let quiet = Some((NOW - 3_600_000, false));
        let until = NOW + crate::app::RETURN_GRACE_MS;
        assert_eq!(reach(NOW, quiet, l, j, until), Reach::Away);
        assert_eq!(reach(until - 1, quiet, l, j, until), Reach::Away);
        assert_eq!(reach(until, quiet, l, j, until), Reach::Gone);
        // An agent with no row is not waited for, grace or not.
        assert_eq!(reach(NOW, None, l, j, until), Reach::Gone);
    }
}
