//! CA rotation (`fleetls-parent ca rotate`): a new CA replaces the one in
//! use without a connected agent losing its connection.
//!
//! Three phases, each recorded in the registry (`ca_rotations`) before the
//! files follow it, so a restarted parent picks up where it was:
//!
//! 1. **trust** — the old CA still signs; every agent is sent a
//!    `CertificatesReady` whose `trust_pem` holds both CAs, and the SSL port
//!    and the broker's `ca.pem` accept client certificates from both. Agents
//!    say which CAs they trust in every heartbeat; when every accepted agent
//!    holding a certificate trusts the new one (or the operator says
//!    `--advance`), the next phase begins.
//! 2. **reissue** — the new CA signs. The parent's and the broker's server
//!    certificates come from it now (every agent trusts it), and a campaign
//!    (kind `reissue`, with the window and its progress) asks each agent for
//!    a CSR and answers with a certificate from the new CA. An agent that was
//!    offline is asked when it is back. When every agent is on the new CA (or
//!    `--advance`), the rotation finishes.
//! 3. **finished** — the old CA leaves `trust.pem`, the broker's `ca.pem` and
//!    the agents' bundles (a second push, until each agent says it trusts the
//!    new CA alone); it stays in `certificates/cas/` as an archive.
//!
//! What each agent is owed is computed from the registry at every turn (its
//! trusted CAs, its certificate's CA), and re-sent to online agents that have
//! not followed after a while: no command has to wait in a queue, and a
//! duplicate changes nothing on the child.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetls_proto::{AgentKind, CertificatesReady, ToChild};
use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

use crate::app::App;
use crate::broker::Outgoing;
use crate::files::write_atomic;
use crate::layout::{CertFile, Layout};
use crate::ops::OpError;
use crate::pki::{CompanyCa, Pki};
use crate::registry::{Admission, Registry, RegistryError};

/// How long an agent that has not followed waits before it is sent the
/// same command again.
const RESEND_AFTER: Duration = Duration::from_secs(20);
/// How often the rotation takes a turn.
const TURN: Duration = Duration::from_secs(2);

/// Where a CA rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every agent learns to trust the new CA; the old one signs.
    Trust,
    /// The new CA signs; every agent is re-issued under it.
    Reissue,
    /// The old CA is trusted no more (kept as an archive).
    Finished,
}

impl Phase {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Trust => "trust",
            Phase::Reissue => "reissue",
            Phase::Finished => "finished",
        }
    }

    fn next(self) -> Phase {
        match self {
            Phase::Trust => Phase::Reissue,
            Phase::Reissue | Phase::Finished => Phase::Finished,
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    fn from_str(text: &str) -> Result<Phase, String> {
        match text {
            "trust" => Ok(Phase::Trust),
            "reissue" => Ok(Phase::Reissue),
            "finished" => Ok(Phase::Finished),
            other => Err(format!(
                "unknown CA rotation phase {other:?}: trust, reissue or finished"
            )),
        }
    }
}

/// One CA rotation, as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Its number.
    pub id: i64,
    /// `sha256:HEX` of the CA it replaces.
    pub old_ca: String,
    /// `sha256:HEX` of the new CA.
    pub new_ca: String,
    /// Where it stands.
    pub phase: Phase,
    /// When it began (ms).
    pub started_at: i64,
    /// The re-issue campaign, once it began.
    pub campaign: Option<Uuid>,
}

/// The newest CA rotation, if there was one.
pub fn latest(db: &rusqlite::Connection) -> Result<Option<Rotation>, RegistryError> {
    let row = db
        .query_row(
            "SELECT id, old_ca, new_ca, phase, started_at, campaign FROM ca_rotations
             ORDER BY id DESC LIMIT 1",
            [],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, old_ca, new_ca, phase, started_at, campaign)) = row else {
        return Ok(None);
    };
    Ok(Some(Rotation {
        id,
        old_ca,
        new_ca,
        phase: phase.parse().map_err(RegistryError::Corrupt)?,
        started_at,
        campaign: match campaign {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| RegistryError::Corrupt(format!("campaign id {text:?}")))?,
            ),
            None => None,
        },
    }))
}

/// Records which CAs an agent trusts (from its Hello and heartbeats; an
/// agent of an older release says nothing and nothing changes).
pub fn note_trust(tx: &Transaction<'_>, agent: &Uuid, cas: &[String]) -> Result<(), RegistryError> {
    if cas.is_empty() {
        return Ok(());
    }
    let json = crate::registry::json_list(cas);
    tx.execute(
        "UPDATE agents SET trusted_cas = ?2 WHERE id = ?1 AND trusted_cas != ?2",
        params![agent.to_string(), json],
    )?;
    Ok(())
}

/// What a CSR's answer means beyond the certificate: during a re-issue it
/// ends the agent's turn in the campaign; a refused renewal is counted.
pub fn on_csr_answered(
    tx: &Transaction<'_>,
    agent: &Uuid,
    result: Result<&str, &str>,
) -> Result<(), RegistryError> {
    if result.is_err() {
        let held: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM certificates WHERE agent_id = ?1)",
            params![agent.to_string()],
            |row| row.get(0),
        )?;
        if held {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('renewals_failed', 1)
                 ON CONFLICT(name) DO UPDATE SET value = value + 1",
                [],
            )?;
        }
    }
    let Some(rotation) = latest(tx)? else {
        return Ok(());
    };
    let (Phase::Reissue, Some(campaign)) = (rotation.phase, rotation.campaign) else {
        return Ok(());
    };
    match result {
        Ok(ca) if ca == rotation.new_ca => {
            crate::campaign::on_single_report(
                tx,
                *agent,
                campaign,
                "reissue",
                true,
                "Re-issued under the new CA.",
            )?;
        }
        Ok(_) => {}
        Err(reason) => {
            crate::campaign::on_single_report(tx, *agent, campaign, "reissue", false, reason)?;
        }
    }
    Ok(())
}

/// Renewals done and failed, counted from the registry: a renewal is a
/// certificate issued to an agent that held one (the one it replaces is
/// revoked, superseded); a failed renewal is a CSR refused from an agent
/// that was issued a certificate before.
pub fn renewal_counts(db: &rusqlite::Connection) -> Result<(u64, u64), RegistryError> {
    let done: i64 = db.query_row(
        "SELECT count(*) FROM certificates WHERE renewal = 1",
        [],
        |row| row.get(0),
    )?;
    let failed: i64 = db
        .query_row(
            "SELECT value FROM counters WHERE name = 'renewals_failed'",
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    Ok((done as u64, failed as u64))
}

/// A CA rotation as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationView {
    /// `trust`, `reissue` or `finished`.
    pub phase: Phase,
    /// The CA it replaces.
    pub old_ca: String,
    /// The new CA.
    pub new_ca: String,
    /// When it began (ms).
    pub started_at: i64,
    /// The agents it concerns: accepted, holding a certificate, not mPOS.
    pub agents: usize,
    /// Of those, the ones that trust the new CA.
    pub trusting_new: usize,
    /// Of those, the ones whose certificate comes from the new CA.
    pub on_new_ca: usize,
    /// Of those, the ones that still trust the old CA.
    pub trusting_old: usize,
    /// The re-issue campaign, once it began.
    pub campaign: Option<Uuid>,
    /// What the next phase waits for besides the agents (the broker), and
    /// what to do about it.
    #[serde(default)]
    pub waiting: Option<String>,
}

/// What each agent concerned says it trusts and which CA its certificate
/// comes from.
struct Follower {
    id: Uuid,
    last_seen: u64,
    trusted: Vec<String>,
    ca: Option<String>,
}

fn followers(db: &rusqlite::Connection) -> Result<Vec<Follower>, RegistryError> {
    let mut stmt = db.prepare_cached(
        "SELECT a.id, a.last_seen, a.trusted_cas,
             (SELECT c.ca FROM certificates c WHERE c.agent_id = a.id AND c.revoked = 0
              ORDER BY c.issued_at DESC LIMIT 1)
         FROM agents a
         WHERE a.admission = 'accepted' AND a.kind != 'mpos'
           AND EXISTS (SELECT 1 FROM certificates c WHERE c.agent_id = a.id AND c.revoked = 0)",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, Option<String>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, last_seen, trusted, ca) = row?;
        let id = id
            .parse()
            .map_err(|_| RegistryError::Corrupt(format!("agent id {id:?}")))?;
        out.push(Follower {
            id,
            last_seen: last_seen as u64,
            trusted: serde_json::from_str(&trusted).unwrap_or_default(),
            ca,
        });
    }
    Ok(out)
}

/// The newest rotation with its counts, for the status.
pub fn view(db: &rusqlite::Connection) -> Result<Option<RotationView>, RegistryError> {
    let Some(rotation) = latest(db)? else {
        return Ok(None);
    };
    let followers = followers(db)?;
    let count = |f: &dyn Fn(&Follower) -> bool| followers.iter().filter(|x| f(x)).count();
    let waiting: Option<String> = db.query_row(
        "SELECT waiting FROM ca_rotations WHERE id = ?1",
        params![rotation.id],
        |row| row.get(0),
    )?;
    Ok(Some(RotationView {
        waiting,
        phase: rotation.phase,
        agents: followers.len(),
        trusting_new: count(&|f| f.trusted.contains(&rotation.new_ca)),
        on_new_ca: count(&|f| f.ca.as_deref() == Some(rotation.new_ca.as_str())),
        trusting_old: count(&|f| f.trusted.contains(&rotation.old_ca)),
        old_ca: rotation.old_ca,
        new_ca: rotation.new_ca,
        started_at: rotation.started_at,
        campaign: rotation.campaign,
    }))
}

/// The archived files of the CA named `fingerprint`: (chain, key).
fn archived(layout: &Layout, fingerprint: &str) -> (PathBuf, PathBuf) {
    let hex: String = fingerprint
        .trim_start_matches("sha256:")
        .chars()
        .take(16)
        .collect();
    let dir = layout.ca_archive();
    (
        dir.join(format!("ca-{hex}.pem")),
        dir.join(format!("ca-{hex}.key")),
    )
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_if_changed(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    write_atomic(path, text.as_bytes(), mode).map_err(|e| format!("{}: {e}", path.display()))
}

/// Keeps a CA in the archive (written once, never changed).
fn archive(layout: &Layout, fingerprint: &str, chain: &str, key: &str) -> Result<(), String> {
    let dir = layout.ca_archive();
    fleetls_bus::files::create_private_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (chain_path, key_path) = archived(layout, fingerprint);
    if !chain_path.exists() {
        write_atomic(&key_path, key.as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        write_atomic(&chain_path, chain.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", chain_path.display()))?;
    }
    Ok(())
}

/// Makes `ca.pem`, `ca.key` and `trust.pem` what `phase` says, from the
/// archive: the CA that signs, and every CA trusted. Idempotent: run again
/// at every start.
fn materialize(layout: &Layout, rotation: &Rotation, phase: Phase) -> Result<(), String> {
    let (signing, other) = match phase {
        Phase::Trust => (&rotation.old_ca, Some(&rotation.new_ca)),
        Phase::Reissue => (&rotation.new_ca, Some(&rotation.old_ca)),
        Phase::Finished => (&rotation.new_ca, None),
    };
    let (chain_path, key_path) = archived(layout, signing);
    let chain = read(&chain_path)?;
    write_if_changed(
        &layout.certificate(CertFile::CaKey),
        &read(&key_path)?,
        0o600,
    )?;
    write_if_changed(&layout.certificate(CertFile::CaPem), &chain, 0o644)?;
    let mut trust = chain;
    if let Some(other) = other {
        trust.push_str(&read(&archived(layout, other).0)?);
    }
    write_if_changed(&layout.certificate(CertFile::TrustPem), &trust, 0o644)
}

/// The CA of a rotation under way that does not sign now (to sign its
/// revocation list too: its certificates are still trusted).
pub fn other_ca(data_dir: &Path, registry: &Registry, signing: &str) -> Option<Pki> {
    let rotation = registry.with_db(latest).ok().flatten()?;
    let other = match rotation.phase {
        Phase::Finished => return None,
        _ if rotation.new_ca == signing => rotation.old_ca,
        _ => rotation.new_ca,
    };
    let (chain, key) = archived(&Layout::new(data_dir), &other);
    Pki::from_pem(
        &read(&chain).ok()?,
        &read(&key).ok()?,
        time::Duration::days(1),
    )
    .ok()
}

/// At start, before the CA is loaded: `trust.pem` exists (a data dir of an
/// older release has only `ca.pem`), and the files follow the phase the
/// registry recorded (a parent stopped between the two catches up here).
pub fn reconcile(data_dir: &Path, registry: &Registry) -> Result<(), String> {
    let layout = Layout::new(data_dir);
    let ca = layout.certificate(CertFile::CaPem);
    if !ca.exists() {
        return Ok(());
    }
    let trust = layout.certificate(CertFile::TrustPem);
    if !trust.exists() {
        write_atomic(&trust, read(&ca)?.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", trust.display()))?;
    }
    if let Some(rotation) = registry.with_db(latest).map_err(|e| e.to_string())? {
        materialize(&layout, &rotation, rotation.phase)?;
    }
    Ok(())
}

/// What `ca rotate` is asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RotateRequest {
    /// A new company CA certificate (PEM file on the parent's machine);
    /// without it a new CA is made here.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
    /// Take the next phase now, without waiting for the agents that have
    /// not followed (offline ones).
    #[serde(default)]
    pub advance: bool,
}

/// What `ca rotate` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateReport {
    /// The rotation as it stands now.
    pub rotation: RotationView,
    /// What the operator does for the broker.
    pub broker: String,
}

fn broker_advice(data_dir: &Path) -> String {
    match broker_out(data_dir) {
        Some(out) => format!(
            "the broker's files in {} were written again; make RabbitMQ read them: \
             rabbitmqctl eval 'ssl:clear_pem_cache().'",
            out.display()
        ),
        None => "if RabbitMQ serves AMQPS with the parent's certificates, run \
                 `fleetls-parent broker-tls --out DIR` into the folder it reads, then \
                 rabbitmqctl eval 'ssl:clear_pem_cache().'"
            .into(),
    }
}

/// Where `broker-tls --out` last wrote the broker's files, and how.
pub fn broker_record(data_dir: &Path) -> Option<crate::broker_switch::BrokerFilesRecord> {
    let text = std::fs::read_to_string(Layout::new(data_dir).broker_files()).ok()?;
    let record: crate::broker_switch::BrokerFilesRecord = toml::from_str(&text).ok()?;
    record.out.is_dir().then_some(record)
}

/// Where `broker-tls --out` last wrote the broker's files.
pub fn broker_out(data_dir: &Path) -> Option<PathBuf> {
    broker_record(data_dir).map(|r| r.out)
}

/// Writes the broker's files again where `broker-tls --out` last wrote
/// them, with the same AMQPS listener and nodes (their certificates issued
/// again by `pki`), if it ever did (after a renewal, at each phase of a
/// rotation, after an own broker certificate is given).
pub fn rewrite_broker_files(data_dir: &Path, pki: &Pki) {
    let Some(record) = broker_record(data_dir) else {
        return;
    };
    let broker_ips = crate::settings::SslSettings::load(data_dir)
        .ok()
        .flatten()
        .map(|s| s.broker_ips)
        .unwrap_or_default();
    let written = record.listener(&broker_ips).and_then(|listener| {
        crate::broker_switch::write_broker_files(
            data_dir,
            pki,
            &record.out,
            &listener,
            &record.nodes,
            &crate::broker_switch::FinalFragment::Untouched,
        )
    });
    if let Err(e) = written {
        warn!(error = %e, "cannot write the broker's files again");
    }
}

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
                .with_tx(|tx| {
                    tx.execute(
                        "INSERT INTO ca_rotations (old_ca, new_ca, phase, started_at, phase_at)
                         VALUES (?1, ?2, 'trust', ?3, ?3)",
                        params![old_ca, new_ca, now],
                    )?;
                    Ok(())
                })
                .map_err(internal)?;
            info!(old = %old_ca, new = %new_ca, "CA rotation begins: every agent learns to trust the new CA");
            apply_phase(app, Phase::Trust).await?;
        }
    }
    let rotation = app
        .registry
        .with_db(view)
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
        .with_tx(|tx| {
            tx.execute(
                "UPDATE ca_rotations SET phase = ?2, phase_at = ?3, waiting = NULL,
                     finished_at = CASE WHEN ?2 = 'finished' THEN ?3 END
                 WHERE id = ?1",
                params![rotation.id, next.as_str(), now],
            )?;
            Ok(())
        })
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

/// Whether the parent's certificate toward the broker comes from the CA
/// `fingerprint`.
fn own_from(layout: &Layout, fingerprint: &str) -> bool {
    let (chain, _) = crate::own::client_identity(layout.dir());
    let Ok(pem) = std::fs::read_to_string(chain) else {
        return false;
    };
    // The chain written with the leaf is the signing CA's.
    crate::pki::pem_certs(&pem)
        .ok()
        .and_then(|certs| certs.get(1).map(|ca| crate::pki::fingerprint(ca)))
        .as_deref()
        == Some(fingerprint)
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
    let followers = app.registry.with_db(followers).map_err(|e| e.to_string())?;
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
            let running = app
                .registry
                .with_db(crate::campaign::running)
                .map_err(|e| e.to_string())?;
            if rotation.campaign.is_none() {
                if running.is_none() {
                    start_campaign(app, &pki, &rotation, &left, &agents)?;
                }
                return Ok(());
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
                return Ok(());
            }
            left
        }
        Phase::Finished => followers
            .iter()
            .filter(|f| f.trusted.contains(&rotation.old_ca))
            .collect(),
    };
    let mut out = Vec::new();
    for follower in owed {
        if !app.is_online(follower.last_seen)
            || sent
                .get(&follower.id)
                .is_some_and(|at| at.elapsed() < RESEND_AFTER)
        {
            continue;
        }
        let Some(agent) = by_id.get(&follower.id) else {
            continue;
        };
        let (ssl_host, ssl_port) = crate::owed::ssl_target(agent, &agents, &settings);
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
    if !out.is_empty() {
        crate::broker::send_all(&channel, &app.signing_key, out)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// [`broker_ready`], with what it waits for recorded for the status.
async fn wait_for_broker(app: &App, rotation: &Rotation, next: Phase) -> Result<(), String> {
    let ready = broker_ready(app, rotation, next).await;
    let waiting = ready.as_ref().err().cloned();
    app.registry
        .with_tx(|tx| {
            tx.execute(
                "UPDATE ca_rotations SET waiting = ?2 WHERE id = ?1 AND waiting IS NOT ?2",
                params![rotation.id, waiting],
            )?;
            Ok(())
        })
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

/// A TLS handshake with `uri` trusting `roots_pem` and presenting
/// `chain_pem`/`key_pem`, then the AMQP protocol header and the first bytes
/// of the broker's answer (over TLS 1.3 a refused client certificate shows
/// only then).
async fn broker_accepts(
    uri: &str,
    roots_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let parsed: lapin::uri::AMQPUri = uri.parse()?;
    let (host, port) = (parsed.authority.host.clone(), parsed.authority.port);
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::pki::pem_certs(roots_pem).map_err(|e| e.to_string())? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let chain = crate::pki::pem_certs(chain_pem).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host:?}: {e}"))?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
        tls.write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .map_err(|e| e.to_string())?;
        let mut first = [0u8; 1];
        match tls.read(&mut first).await {
            Ok(1) => Ok(()),
            Ok(_) => Err(format!("{host}:{port} closed the connection")),
            Err(e) => Err(format!("{host}:{port} refused the client certificate: {e}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| format!("{host}:{port} did not answer within 10 s"))?
}

/// Ends the turn of every acting child of the re-issue campaign that is
/// among `on_new` (already on the new CA); whether it ended one.
fn end_turns(tx: &Transaction<'_>, campaign: Uuid, on_new: &[Uuid]) -> Result<bool, RegistryError> {
    let acting: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT agent FROM campaign_children WHERE campaign = ?1 AND state = 'acting'",
        )?;
        let rows = stmt.query_map(params![campaign.to_string()], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut ended = false;
    for agent in on_new.iter().filter(|a| acting.contains(&a.to_string())) {
        ended |= crate::campaign::on_single_report(
            tx,
            *agent,
            campaign,
            "reissue",
            true,
            "Already holds a certificate from the new CA.",
        )?;
    }
    Ok(ended)
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
    let enrolled: Vec<crate::campaign::Enrolment> = left
        .iter()
        .filter_map(|f| agents.iter().find(|a| a.id == f.id))
        .filter(|a| a.admission == Admission::Accepted)
        .map(|a| {
            let (host, port) = crate::owed::ssl_target(a, agents, &settings);
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
                crate::ops::DEFAULT_CAMPAIGN_TIMEOUT_SECS * 1000,
                crate::ops::DEFAULT_STEP_TIMEOUT_SECS * 1000,
                &enrolled,
                &params,
            )?;
            tx.execute(
                "UPDATE ca_rotations SET campaign = ?2 WHERE id = ?1",
                params![rotation.id, id.to_string()],
            )?;
            Ok(id)
        })
        .map_err(|e| e.to_string())?;
    info!(campaign = %id, agents = enrolled.len(), "CA rotation: the re-issue campaign begins");
    app.campaign_changed.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SslSettings;

    fn count(path: &Path) -> usize {
        read(path).unwrap().matches("BEGIN CERTIFICATE").count()
    }

    #[test]
    fn the_files_follow_the_phase_the_registry_records() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let lifetime = time::Duration::days(30);
        let old = Pki::generate(data, &SslSettings::defaults("127.0.0.1"), None, lifetime).unwrap();
        let registry = Registry::open(&data.join("fleetls.db")).unwrap();
        let layout = Layout::new(data);
        // An older data dir: no trust.pem yet.
        std::fs::remove_file(layout.certificate(CertFile::TrustPem)).unwrap();
        reconcile(data, &registry).unwrap();
        assert_eq!(count(&layout.certificate(CertFile::TrustPem)), 1);

        let (chain, key) = crate::pki::make_ca().unwrap();
        let new = Pki::from_pem(&chain, &key, lifetime).unwrap();
        let old_key = read(&layout.certificate(CertFile::CaKey)).unwrap();
        archive(
            &layout,
            &old.signing_fingerprint,
            &old.ca_chain_pem,
            &old_key,
        )
        .unwrap();
        archive(&layout, &new.signing_fingerprint, &new.ca_chain_pem, &key).unwrap();
        let set_phase =
            |phase: Phase| {
                registry
                    .with_tx(|tx| {
                        tx.execute(
                        "INSERT INTO ca_rotations (id, old_ca, new_ca, phase, started_at, phase_at)
                         VALUES (1, ?1, ?2, ?3, 0, 0)
                         ON CONFLICT(id) DO UPDATE SET phase = excluded.phase",
                        params![old.signing_fingerprint, new.signing_fingerprint, phase.as_str()],
                    )?;
                        Ok(())
                    })
                    .unwrap();
            };
        let signing = || Pki::load(data, lifetime).unwrap().signing_fingerprint;
        let other = || other_ca(data, &registry, &signing()).map(|p| p.signing_fingerprint);

        set_phase(Phase::Trust);
        reconcile(data, &registry).unwrap();
        assert_eq!(signing(), old.signing_fingerprint);
        assert_eq!(count(&layout.certificate(CertFile::TrustPem)), 2);
        assert_eq!(other(), Some(new.signing_fingerprint.clone()));

        // A parent stopped after recording the next phase catches up at start.
        set_phase(Phase::Reissue);
        reconcile(data, &registry).unwrap();
        reconcile(data, &registry).unwrap();
        assert_eq!(signing(), new.signing_fingerprint);
        assert_eq!(count(&layout.certificate(CertFile::TrustPem)), 2);
        assert_eq!(other(), Some(old.signing_fingerprint.clone()));
        let loaded = Pki::load(data, lifetime).unwrap();
        assert!(loaded.trust_pem.contains(old.ca_chain_pem.trim()));
        let (issued, _) = loaded.issue_with_new_key(Uuid::new_v4()).unwrap();
        assert_eq!(issued.ca, new.signing_fingerprint);

        set_phase(Phase::Finished);
        reconcile(data, &registry).unwrap();
        assert_eq!(signing(), new.signing_fingerprint);
        assert_eq!(
            read(&layout.certificate(CertFile::TrustPem)).unwrap(),
            new.ca_chain_pem
        );
        assert_eq!(other(), None);
        // The old CA stays in the archive.
        assert_eq!(
            read(&archived(&layout, &old.signing_fingerprint).0).unwrap(),
            old.ca_chain_pem
        );
    }

    #[test]
    fn the_reissue_campaign_asks_for_the_new_ca_and_each_answer_ends_a_turn() {
        use crate::campaign::{self, Enrolment, ReissueParams};
        let registry = Registry::open(Path::new(":memory:")).unwrap();
        let agents: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let enrolled: Vec<Enrolment> = agents
            .iter()
            .map(|a| Enrolment {
                agent: *a,
                host: "parent.test".into(),
                port: 12365,
            })
            .collect();
        let params = ReissueParams {
            ca_chain_pem: "NEW".into(),
            ca_fingerprint: "sha256:new".into(),
            trust_pem: "OLD NEW".into(),
            serve_port: 12366,
        };
        let id = registry
            .with_tx(|tx| {
                let id = campaign::create_reissue(tx, 2, 3_600_000, 60_000, &enrolled, &params)?;
                tx.execute(
                    "INSERT INTO ca_rotations (old_ca, new_ca, phase, started_at, phase_at, campaign)
                     VALUES ('sha256:old', 'sha256:new', 'reissue', 0, 0, ?1)",
                    params![id.to_string()],
                )?;
                Ok(id)
            })
            .unwrap();
        let tick = registry
            .with_tx(|tx| campaign::tick(tx, id, &|_| true, false, true))
            .unwrap();
        // The window: two asked, each a CertificatesReady for the new CA
        // that trusts both and forces nothing.
        assert_eq!(tick.outgoing.len(), 2);
        for out in &tick.outgoing {
            let ToChild::CertificatesReady(ready) = &out.body else {
                panic!("not a CertificatesReady: {:?}", out.body);
            };
            assert_eq!(ready.ca_chain_pem, "NEW");
            assert_eq!(ready.trust_pem.as_deref(), Some("OLD NEW"));
            assert!(!ready.renew);
        }
        let (first, second) = (tick.outgoing[0].agent, tick.outgoing[1].agent);
        registry
            .with_tx(|tx| {
                // A certificate from the new CA ends one turn; a refusal the other.
                on_csr_answered(tx, &first, Ok("sha256:new"))?;
                on_csr_answered(tx, &second, Err("the CSR was refused: no"))?;
                // A certificate from the old CA ends nothing.
                on_csr_answered(tx, &first, Ok("sha256:old"))?;
                Ok(())
            })
            .unwrap();
        let progress = registry
            .with_db(|db| campaign::progress(db, id))
            .unwrap()
            .unwrap();
        assert_eq!(
            (progress.passed, progress.failed, progress.waiting),
            (1, 1, 1)
        );
        // The third starts; it renewed by itself meanwhile: its turn ends.
        let tick = registry
            .with_tx(|tx| campaign::tick(tx, id, &|_| true, false, true))
            .unwrap();
        let third = tick.outgoing[0].agent;
        assert!(registry.with_tx(|tx| end_turns(tx, id, &[third])).unwrap());
        assert!(!registry.with_tx(|tx| end_turns(tx, id, &[third])).unwrap());
        let progress = registry
            .with_db(|db| campaign::progress(db, id))
            .unwrap()
            .unwrap();
        assert_eq!(
            (progress.passed, progress.failed, progress.acting),
            (2, 1, 0)
        );
    }

    #[test]
    fn a_refused_csr_counts_as_a_failed_renewal_only_for_an_agent_that_held_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let (new_agent, renewing) = (Uuid::new_v4(), Uuid::new_v4());
        registry
            .with_tx(|tx| {
                tx.execute(
                    "INSERT INTO certificates (serial, agent_id, subject, not_after, issued_at, chain_pem, renewal)
                     VALUES ('01', ?1, 's', 0, 0, '', 0), ('02', ?1, 's', 0, 1, '', 1)",
                    params![renewing.to_string()],
                )?;
                on_csr_answered(tx, &new_agent, Err("no"))?;
                on_csr_answered(tx, &renewing, Err("no"))?;
                on_csr_answered(tx, &renewing, Ok("sha256:x"))?;
                Ok(())
            })
            .unwrap();
        assert_eq!(registry.with_db(renewal_counts).unwrap(), (1, 1));
    }
}
