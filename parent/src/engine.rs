//! The campaign engine: one task that keeps the running campaign's window
//! full, times out what is late and finishes the campaign. It wakes when a
//! campaign starts, a child ends, the broker connection comes back, or the
//! next step deadline passes. After a restart its first turn re-sends the
//! current step to every child that was acting.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use tracing::{info, warn};

use crate::app::App;
use crate::broker::send_all;
use crate::campaign;
use crate::registry::RegistryError;
use crate::shutdown::Shutdown;

/// The longest the engine sleeps without a reason to wake.
const IDLE: Duration = Duration::from_secs(1);

/// Runs the engine until `shutdown`.
pub async fn run(app: Arc<App>, mut shutdown: Shutdown) {
    let mut resend = true;
    let mut pace = campaign::Pace::default();
    loop {
        let mut sleep = IDLE;
        if let Some(channel) = app.channel() {
            let registry = app.registry.clone();
            let offline_after = app.config.offline_after.as_millis() as u64;
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
                        last_seen(tx, agent).is_some_and(|seen| {
                            fleetls_proto::now_ms().saturating_sub(seen) < offline_after
                        })
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
                        if let Err(e) = send_all(&channel, &app.signing_key, tick.outgoing).await {
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

fn last_seen(tx: &rusqlite::Connection, agent: &uuid::Uuid) -> Option<u64> {
    tx.query_row(
        "SELECT last_seen FROM agents WHERE id = ?1",
        params![agent.to_string()],
        |row| row.get::<_, i64>(0),
    )
    .optional()
    .map_err(RegistryError::from)
    .ok()
    .flatten()
    .map(|t| t as u64)
}
