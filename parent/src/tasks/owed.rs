//! Sending agents what they are still owed ([`crate::owed`]): after their
//! Hello ([`on_hello`], called by the broker session) and by a sweep every
//! `SWEEP_EVERY` for what is overdue ([`run`]).

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};
use uuid::Uuid;

use fleetls_proto::{AgentKind, ToChild};

use crate::app::App;
use crate::broker::Outgoing;
use crate::owed::{certificates_ready, Due, LocalParents, RESEND_AFTER};
use crate::registry::RegistryError;
use crate::shutdown::Shutdown;

/// How often the sweep looks for what is overdue.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// What agents that just said Hello are still owed.
pub async fn on_hello(app: &Arc<App>, agents: Vec<Uuid>) -> Vec<Outgoing> {
    if agents.is_empty() {
        return Vec::new();
    }
    let registry = app.registry.clone();
    let due = tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| crate::owed::after_hello(tx, &agents))
    })
    .await;
    match due {
        Ok(Ok(due)) => outgoing(app, due),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot read what reconnected agents are owed");
            Vec::new()
        }
        Err(e) => {
            warn!(error = %e, "the owed-commands task failed");
            Vec::new()
        }
    }
}

/// Certificate information overdue for online, accepted agents: sent
/// more than [`RESEND_AFTER`] ago, or at all when `all` (after a start: a
/// parent stopped in the middle of a send does not know what went out).
async fn overdue(app: &Arc<App>, all: bool) -> Result<Vec<Outgoing>, RegistryError> {
    let registry = app.registry.clone();
    let now = fleetls_proto::now_ms() as i64;
    let online_since = now - app.liveness().offline_after_ms as i64;
    let sent_before = if all {
        i64::MAX
    } else {
        now - RESEND_AFTER.as_millis() as i64
    };
    let due = tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| crate::owed::overdue(tx, sent_before, online_since))
    })
    .await
    .map_err(|e| RegistryError::Corrupt(format!("registry task failed: {e}")))??;
    Ok(outgoing(app, due))
}

/// The commands for what is due: certificate information needs the CA and
/// the settings, the revocation list its file.
fn outgoing(app: &App, due: Due) -> Vec<Outgoing> {
    let mut out = due.steps;
    if !due.certificates.is_empty() {
        if let Some(pki) = app.pki() {
            let settings = app.settings();
            let local_parents = match local_parents(app) {
                Ok(found) => found,
                Err(e) => {
                    warn!(error = %e, "cannot list the local parents; certificate information waits");
                    LocalParents::default()
                }
            };
            for (agent, renew) in &due.certificates {
                out.push(Outgoing {
                    agent: agent.id,
                    body: certificates_ready(&pki, agent, &local_parents, &settings, *renew),
                    re: None,
                });
            }
        }
    }
    if !due.local_parents.is_empty() {
        let path = crate::layout::Layout::new(&app.config.data_dir)
            .certificate(crate::layout::CertFile::Crl);
        if let Ok(crl_pem) = std::fs::read_to_string(&path) {
            for agent in due.local_parents {
                out.push(Outgoing {
                    agent,
                    body: ToChild::CrlUpdated(fleetls_proto::CrlUpdated {
                        crl_pem: crl_pem.clone(),
                    }),
                    re: None,
                });
            }
        }
    }
    out
}

/// Where each location's local parent is (few: one per bigger site).
fn local_parents(app: &App) -> Result<LocalParents, RegistryError> {
    Ok(LocalParents::of(
        &app.registry.agents_of_kind(AgentKind::LocalParent)?,
    ))
}

/// Sends overdue certificate information every `SWEEP_EVERY` until
/// `shutdown`; the first time it is connected, everything still owed.
pub async fn run(app: Arc<App>, mut shutdown: Shutdown) {
    let mut started = true;
    loop {
        let wait = if started {
            Duration::from_secs(1)
        } else {
            SWEEP_EVERY
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(channel) = app.channel() else {
            continue;
        };
        let all = std::mem::take(&mut started);
        match overdue(&app, all).await {
            Ok(due) if due.is_empty() => {}
            Ok(due) => {
                debug!(
                    count = due.len(),
                    "sending overdue certificate information again"
                );
                if let Err(e) = app.send(&channel, due).await {
                    warn!(error = %e, "sending overdue certificate information failed; will retry");
                }
            }
            Err(e) => warn!(error = %e, "cannot read what is overdue"),
        }
    }
}
