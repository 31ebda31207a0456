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
                        match agent_reads::last_seen(tx, agent).ok().flatten() {
                            Some((seen, present)) if liveness.online(now, seen, present) => {
                                campaign::Reach::Online
                            }
                            Some((seen, present)) if judging.online(now, seen, present) => {
                                campaign::Reach::Away
                            }
                            _ => campaign::Reach::Gone,
                        }
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
