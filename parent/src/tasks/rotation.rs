//! The CA rotation's task and its operation ([`crate::rotation`] has the
//! phases, the files and the views): `ca rotate` ([`rotate`]) begins a
//! rotation or takes the next phase, and [`run`] takes a turn every
//! `TURN` — it sends each agent what the phase asks of it, starts the
//! re-issue campaign, and takes the next phase once every agent followed
//! and the broker is ready.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetls_proto::{AgentKind, CertificatesReady, ToChild};
use tracing::{info, warn};
use uuid::Uuid;

use crate::app::App;
use crate::broker::Outgoing;
use crate::layout::{CertFile, Layout};
use crate::op_error::OpError;
use crate::pki::{CompanyCa, Pki};
use crate::registry::Admission;
use crate::rotation::{
    archive, archived, broker_accepts, broker_advice, end_turns, followers, latest, materialize,
    own_from, read, rewrite_broker_files, view, Follower, Phase, RotateReport, RotateRequest,
    Rotation,
};

/// How long an agent that has not followed waits before it is sent the
/// same command again.
const RESEND_AFTER: Duration = Duration::from_secs(20);
/// How often the rotation takes a turn.
const TURN: Duration = Duration::from_secs(2);

/// `ca rotate`: begins a rotation, or with `advance` takes the next phase
/// of the one under way.
pub async fn rotate(app: &App, request: &RotateRequest) -> Result<RotateReport, OpError> {
    let pki = app.pki().ok_or_else(|| {
        OpError::Refused(
            "there is no CA to rotate yet: run `fleetls-parent certs generate` first".into(),
        )
    })?;
    let current = app.registry.with_db(latest).map_err(internal)?;
    let data_dir = app.config.data_dir.clone();
    match current {
        Some(rotation) if rotation.phase != Phase::Finished => {
            if !request.advance {
                return Err(OpError::Refused(format!(
                    "a CA rotation is under way (phase {}); follow it in `fleetls-parent status`, \
                     or take the next phase now with `fleetls-parent ca rotate --advance`",
                    rotation.phase.as_str()
                )));
            }
            if request.ca_cert.is_some() {
                return Err(OpError::BadRequest(
                    "--advance takes no CA: the rotation under way has its new CA".into(),
                ));
            }
            advance(app, &rotation, rotation.phase.next()).await?;
        }
        _ if request.advance => {
            return Err(OpError::Refused(
                "no CA rotation is under way: start one with `fleetls-parent ca rotate`".into(),
            ))
        }
        _ => {
            let company = match (&request.ca_cert, &request.ca_key) {
                (Some(cert), Some(key)) => Some(CompanyCa {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                (None, None) => None,
                _ => {
                    return Err(OpError::BadRequest(
                        "a company CA needs both --ca-cert and --ca-key".into(),
                    ))
                }
            };
            let (chain, key) = match &company {
                Some(company) => crate::pki::read_company(company),
                None => crate::pki::make_ca(),
            }
            .map_err(|e| OpError::BadRequest(e.to_string()))?;
            let new = Pki::from_pem(&chain, &key, pki.lifetime)
                .map_err(|e| OpError::BadRequest(format!("the new CA cannot be used: {e}")))?;
            if new.signing_fingerprint == pki.signing_fingerprint {
                return Err(OpError::BadRequest(
                    "the new CA is the CA in use: give another one".into(),
                ));
            }
            let layout = Layout::new(&data_dir);
            let old_key = read(&layout.certificate(CertFile::CaKey)).map_err(internal)?;
            archive(
                &layout,
                &pki.signing_fingerprint,
                &pki.ca_chain_pem,
                &old_key,
            )
            .map_err(internal)?;
            archive(&layout, &new.signing_fingerprint, &new.ca_chain_pem, &key)
                .map_err(internal)?;
            let now = fleetls_proto::now_ms() as i64;
            let (old_ca, new_ca) = (pki.signing_fingerprint.clone(), new.signing_fingerprint);
            app.registry
                .with_tx(|tx| crate::rotation::begin(tx, &old_ca, &new_ca, now))
                .map_err(internal)?;
            info!(old = %old_ca, new = %new_ca, "CA rotation begins: every agent learns to trust the new CA");
            apply_phase(app, Phase::Trust).await?;
        }
    }
    let active_since = app.active_since();
    let rotation = app
        .registry
        .with_db(|db| view(db, active_since))
        .map_err(internal)?
        .ok_or_else(|| OpError::Internal("the rotation was not recorded".into()))?;
    Ok(RotateReport {
        rotation,
        broker: broker_advice(&data_dir),
    })
}

fn internal(e: impl std::fmt::Display) -> OpError {
    OpError::Internal(e.to_string())
}

/// Records the next phase, then makes the files, the CA, the SSL port and
/// the broker's files follow it.
async fn advance(app: &App, rotation: &Rotation, next: Phase) -> Result<(), OpError> {
    let now = fleetls_proto::now_ms() as i64;
    app.registry
        .with_tx(|tx| crate::rotation::record_phase(tx, rotation.id, next, now))
        .map_err(internal)?;
    info!(phase = next.as_str(), "CA rotation: next phase");
    apply_phase(app, next).await
}

/// Makes everything follow the phase the registry records.
async fn apply_phase(app: &App, phase: Phase) -> Result<(), OpError> {
    let rotation = app
        .registry
        .with_db(latest)
        .map_err(internal)?
        .ok_or_else(|| OpError::Internal("no rotation recorded".into()))?;
    let data_dir = app.config.data_dir.clone();
    let lifetime = app.config.cert_lifetime;
    let settings = app.settings();
    let pki = tokio::task::spawn_blocking(move || -> Result<Pki, String> {
        let layout = Layout::new(&data_dir);
        materialize(&layout, &rotation, phase)?;
        let pki = Pki::load(&data_dir, lifetime).map_err(|e| e.to_string())?;
        if phase == Phase::Reissue && !own_from(&layout, &pki.signing_fingerprint) {
            // Every agent trusts the new CA now: the servers move to it.
            pki.reissue_own(&data_dir, &settings)
                .map_err(|e| e.to_string())?;
        }
        rewrite_broker_files(&data_dir, &pki);
        Ok(pki)
    })
    .await
    .map_err(internal)?
    .map_err(OpError::Internal)?;
    *app.pki.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(pki));
    app.reload_ssl_port().await.map_err(internal)?;
    if let Err(e) = app.refresh_crl().await {
        // The phase is recorded and the files follow it; only the list's
        // way to the local parents failed (the next refresh sends it).
        warn!(error = %e, "CA rotation: the revocation list was not sent to every local parent");
    }
    Ok(())
}

/// Runs the rotation's turns until `shutdown`.
pub async fn run(app: Arc<App>, mut shutdown: crate::shutdown::Shutdown) {
    let mut sent: HashMap<Uuid, Instant> = HashMap::new();
    let mut phase_seen = None;
    // The same reason (the broker not ready yet) is logged once a minute.
    let mut last_error: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(TURN) => {}
        }
        match turn(&app, &mut sent, &mut phase_seen).await {
            Ok(()) => last_error = None,
            Err(e) => {
                let repeated = last_error
                    .as_ref()
                    .is_some_and(|(last, at)| *last == e && at.elapsed() < Duration::from_secs(60));
                if !repeated {
                    warn!(error = %e, "CA rotation turn did not move on");
                    last_error = Some((e, Instant::now()));
                }
            }
        }
    }
}

/// One turn: send what agents are owed, start the re-issue campaign, take
/// the next phase when everyone followed.
async fn turn(
    app: &App,
    sent: &mut HashMap<Uuid, Instant>,
    phase_seen: &mut Option<(i64, Phase)>,
) -> Result<(), String> {
    let Some(rotation) = app.registry.with_db(latest).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    if *phase_seen != Some((rotation.id, rotation.phase)) {
        sent.clear();
        *phase_seen = Some((rotation.id, rotation.phase));
    }
    let (Some(pki), Some(channel)) = (app.pki(), app.channel()) else {
        return Ok(());
    };
    if !app.drained.load(std::sync::atomic::Ordering::SeqCst) {
        // The agents' heartbeats may still be queued.
        return Ok(());
    }
    let active_since = app.active_since();
    let followers = app
        .registry
        .with_db(|db| followers(db, active_since))
        .map_err(|e| e.to_string())?;
    let agents = app.registry.agents().map_err(|e| e.to_string())?;
    let settings = app.settings();
    let by_id: HashMap<Uuid, &crate::registry::Agent> = agents.iter().map(|a| (a.id, a)).collect();
    let new = rotation.new_ca.as_str();
    let owed: Vec<&Follower> = match rotation.phase {
        Phase::Trust => {
            let missing: Vec<&Follower> = followers
                .iter()
                .filter(|f| !f.trusted.iter().any(|t| t == new))
                .collect();
            if missing.is_empty() {
                wait_for_broker(app, &rotation, Phase::Reissue).await?;
                return advance(app, &rotation, Phase::Reissue)
                    .await
                    .map_err(|e| e.to_string());
            }
            record_waiting(app, &rotation, "trust the new CA", &missing, &by_id)?;
            missing
        }
        Phase::Reissue => {
            let left: Vec<&Follower> = followers
                .iter()
                .filter(|f| f.ca.as_deref() != Some(new))
                .collect();
            if left.is_empty() {
                wait_for_broker(app, &rotation, Phase::Finished).await?;
                return advance(app, &rotation, Phase::Finished)
                    .await
                    .map_err(|e| e.to_string());
            }
            record_waiting(
                app,
                &rotation,
                "get a certificate from the new CA",
                &left,
                &by_id,
            )?;
            if reissue_in_hand(app, &rotation, &pki, &followers, &left, &agents)? {
                return Ok(());
            }
            left
        }
        Phase::Finished => followers
            .iter()
            .filter(|f| f.trusted.contains(&rotation.old_ca))
            .collect(),
    };
    let out = certificates_owed(
        &owed,
        sent,
        &crate::owed::LocalParents::of(&agents),
        &settings,
        &by_id,
        &pki,
        |at, present| app.is_online(at, present),
    );
    if !out.is_empty() {
        app.send(&channel, out).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The re-issue phase's campaign: started when none runs yet, and told
/// which agents got a certificate from the new CA otherwise. `true` when
/// the campaign has the turn in hand (nothing else to send now).
fn reissue_in_hand(
    app: &App,
    rotation: &Rotation,
    pki: &crate::pki::Pki,
    followers: &[Follower],
    left: &[&Follower],
    agents: &[crate::registry::Agent],
) -> Result<bool, String> {
    let new = rotation.new_ca.as_str();
    let running = app
        .registry
        .with_db(crate::campaign::running)
        .map_err(|e| e.to_string())?;
    if rotation.campaign.is_none() {
        if running.is_none() {
            start_campaign(app, pki, rotation, left, agents)?;
        }
        return Ok(true);
    }
    if let (Some(campaign), Some(_)) = (rotation.campaign, running) {
        // The campaign asks them, within its window; one that got a
        // certificate from the new CA otherwise (it renewed by
        // itself meanwhile) has had its turn.
        let on_new: Vec<Uuid> = followers
            .iter()
            .filter(|f| f.ca.as_deref() == Some(new))
            .map(|f| f.id)
            .collect();
        let ended = app
            .registry
            .with_tx(|tx| end_turns(tx, campaign, &on_new))
            .map_err(|e| e.to_string())?;
        if ended {
            app.campaign_changed.notify_one();
        }
        return Ok(true);
    }
    Ok(false)
}

/// What the agents `owed` are sent this turn: the certificate information
/// of the new CA, to each one online and not sent it within
/// `RESEND_AFTER`.
fn certificates_owed(
    owed: &[&Follower],
    sent: &mut HashMap<Uuid, Instant>,
    local: &crate::owed::LocalParents,
    settings: &crate::settings::SslSettings,
    by_id: &HashMap<Uuid, &crate::registry::Agent>,
    pki: &crate::pki::Pki,
    is_online: impl Fn(u64, bool) -> bool,
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    for follower in owed.iter().copied() {
        if !is_online(follower.last_seen, follower.present)
            || sent
                .get(&follower.id)
                .is_some_and(|at| at.elapsed() < RESEND_AFTER)
        {
            continue;
        }
        let Some(agent) = by_id.get(&follower.id) else {
            continue;
        };
        let (ssl_host, ssl_port) = crate::owed::ssl_target(agent, local, settings);
        sent.insert(follower.id, Instant::now());
        out.push(Outgoing {
            agent: follower.id,
            body: ToChild::CertificatesReady(CertificatesReady {
                ca_chain_pem: pki.ca_chain_pem.clone(),
                ca_fingerprint: pki.root_fingerprint.clone(),
                ssl_host,
                ssl_port,
                serve_port: (agent.kind == AgentKind::LocalParent)
                    .then_some(settings.local_parent_port),
                // A child asks for a certificate only when it holds none
                // from the CA that signs: a duplicate issues nothing.
                renew: false,
                trust_pem: Some(pki.trust_pem.clone()),
                tls: (agent.kind == AgentKind::LocalParent).then(|| settings.tls_policy()),
            }),
            re: None,
        });
    }
    out
}

/// Records, for the status, whom the phase waits for — by name, at most
/// ten, and how many — and the operator's ways out.
fn record_waiting(
    app: &App,
    rotation: &Rotation,
    to: &str,
    missing: &[&Follower],
    by_id: &HashMap<Uuid, &crate::registry::Agent>,
) -> Result<(), String> {
    let mut names: Vec<String> = missing
        .iter()
        .take(10)
        .map(|f| match by_id.get(&f.id) {
            Some(a) => format!("{} ({})", crate::admission::printable(&a.name, 40), f.id),
            None => f.id.to_string(),
        })
        .collect();
    if missing.len() > names.len() {
        names.push(format!("and {} more", missing.len() - names.len()));
    }
    let text = format!(
        "{} agent(s) to {to}: {}. An agent not heard for --stale-after ({}) is no longer \
         waited for; `fleetls-parent agents reject NAME` removes a fake; \
         `fleetls-parent ca rotate --advance` takes the next phase now",
        missing.len(),
        names.join(", "),
        crate::duration::text(app.config.stale_after),
    );
    app.registry
        .with_tx(|tx| crate::rotation::record_waiting(tx, rotation.id, Some(&text)))
        .map_err(|e| e.to_string())
}

/// [`broker_ready`], with what it waits for recorded for the status.
async fn wait_for_broker(app: &App, rotation: &Rotation, next: Phase) -> Result<(), String> {
    let ready = broker_ready(app, rotation, next).await;
    let waiting = ready.as_ref().err().cloned();
    app.registry
        .with_tx(|tx| crate::rotation::record_waiting(tx, rotation.id, waiting.as_deref()))
        .map_err(|e| e.to_string())?;
    ready
}

/// Whether the broker is ready for `next`, when the network is on AMQPS
/// (RabbitMQ reads its files only after its PEM cache is cleared):
/// before the re-issue it must accept client certificates from the new CA
/// (its `ca.pem` holds both); before the old CA is dropped it must present
/// a certificate from the new CA. `Err` says what the operator should do.
async fn broker_ready(app: &App, rotation: &Rotation, next: Phase) -> Result<(), String> {
    let Some(uri) = app.amqps.read().unwrap_or_else(|p| p.into_inner()).clone() else {
        return Ok(());
    };
    let layout = Layout::new(&app.config.data_dir);
    let (chain, key) = archived(&layout, &rotation.new_ca);
    let new_ca = Pki::from_pem(&read(&chain)?, &read(&key)?, time::Duration::hours(1))
        .map_err(|e| e.to_string())?;
    // An operator's own broker certificate is theirs: the broker keeps
    // presenting it, and only its acceptance of the new CA is waited for.
    let own_broker = crate::own::OwnRecord::load(&app.config.data_dir).broker;
    let (roots, client) = match next {
        Phase::Reissue => {
            // A throwaway client certificate from the new CA.
            let (issued, key) = new_ca
                .issue_with_new_key(Uuid::nil())
                .map_err(|e| e.to_string())?;
            (
                crate::own::broker_trust_pem(&app.config.data_dir)?,
                (issued.chain_pem, key),
            )
        }
        Phase::Trust | Phase::Finished => {
            let (chain, key) = crate::own::client_identity(&app.config.data_dir);
            let roots = if own_broker {
                read(&layout.broker_root())?
            } else {
                new_ca.ca_chain_pem.clone()
            };
            (roots, (read(&chain)?, read(&key)?))
        }
    };
    let what = match next {
        Phase::Reissue => "does not accept client certificates from the new CA yet",
        _ if own_broker => "does not present the operator's own certificate",
        _ => "does not present a certificate from the new CA yet",
    };
    broker_accepts(&uri, &roots, &client.0, &client.1)
        .await
        .map_err(|e| {
            format!(
                "the CA rotation waits for the broker: it {what} ({e}); {}",
                broker_advice(&app.config.data_dir)
            )
        })
}

/// Starts the re-issue campaign over the agents not on the new CA.
fn start_campaign(
    app: &App,
    pki: &Pki,
    rotation: &Rotation,
    left: &[&Follower],
    agents: &[crate::registry::Agent],
) -> Result<(), String> {
    let settings = app.settings();
    let by_id: HashMap<Uuid, &crate::registry::Agent> = agents.iter().map(|a| (a.id, a)).collect();
    let local = crate::owed::LocalParents::of(agents);
    let enrolled: Vec<crate::campaign::Enrolment> = left
        .iter()
        .filter_map(|f| by_id.get(&f.id).copied())
        .filter(|a| a.admission == Admission::Accepted)
        .map(|a| {
            let (host, port) = crate::owed::ssl_target(a, &local, &settings);
            crate::campaign::Enrolment {
                agent: a.id,
                host,
                port,
            }
        })
        .collect();
    let params = crate::campaign::ReissueParams {
        ca_chain_pem: pki.ca_chain_pem.clone(),
        ca_fingerprint: pki.root_fingerprint.clone(),
        trust_pem: pki.trust_pem.clone(),
        serve_port: settings.local_parent_port,
    };
    let id = app
        .registry
        .with_tx(|tx| {
            let id = crate::campaign::create_reissue(
                tx,
                app.config.window,
                crate::campaign::DEFAULT_CAMPAIGN_TIMEOUT_SECS * 1000,
                crate::campaign::DEFAULT_STEP_TIMEOUT_SECS * 1000,
                &enrolled,
                &params,
            )?;
            crate::rotation::record_campaign(tx, rotation.id, id)?;
            Ok(id)
        })
        .map_err(|e| e.to_string())?;
    info!(campaign = %id, agents = enrolled.len(), "CA rotation: the re-issue campaign begins");
    app.campaign_changed.notify_one();
    Ok(())
}
