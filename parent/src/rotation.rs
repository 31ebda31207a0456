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
//!
//! Here: what the phases do (the registry records them,
//! `registry::rotations`), the CA files each phase makes, and the views the
//! status shows. The rotation's turns and `ca rotate` itself work
//! on the `App` and live in the task `tasks::rotation`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetls_bus::files::write_atomic;
use rusqlite::Transaction;
use serde::{Deserialize, Serialize};
use tracing::warn;
use uuid::Uuid;

use crate::campaign::ChildStep;
use crate::layout::{CertFile, Layout};
use crate::pki::Pki;
use crate::registry::{certificates, rotations, Registry, RegistryError};

pub use crate::registry::agents::note_trust;
pub use crate::registry::certificates::renewal_counts;
pub use crate::registry::rotations::{
    begin, latest, record_campaign, record_phase, record_waiting, Phase, Rotation,
};
pub(crate) use crate::registry::rotations::{followers, Follower};

/// What a CSR's answer means beyond the certificate: during a re-issue it
/// ends the agent's turn in the campaign; a refused renewal is counted.
pub fn on_csr_answered(
    tx: &Transaction<'_>,
    agent: &Uuid,
    result: Result<&str, &str>,
) -> Result<(), RegistryError> {
    if result.is_err() && certificates::ever_issued(tx, agent)? {
        certificates::count_failed_renewal(tx)?;
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
                ChildStep::Reissue,
                true,
                "Re-issued under the new CA.",
            )?;
        }
        Ok(_) => {}
        Err(reason) => {
            crate::campaign::on_single_report(
                tx,
                *agent,
                campaign,
                ChildStep::Reissue,
                false,
                reason,
            )?;
        }
    }
    Ok(())
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

/// The newest rotation with its counts, for the status.
pub fn view(
    db: &rusqlite::Connection,
    active_since: u64,
) -> Result<Option<RotationView>, RegistryError> {
    let Some(rotation) = latest(db)? else {
        return Ok(None);
    };
    let followers = followers(db, active_since)?;
    let count = |f: &dyn Fn(&Follower) -> bool| followers.iter().filter(|x| f(x)).count();
    let waiting = rotations::waiting(db, rotation.id)?;
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
pub(crate) fn archived(layout: &Layout, fingerprint: &str) -> (PathBuf, PathBuf) {
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

/// A file's text; the error names the file.
pub(crate) fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_if_changed(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    write_atomic(path, text.as_bytes(), mode).map_err(|e| format!("{}: {e}", path.display()))
}

/// Keeps a CA in the archive (written once, never changed).
pub(crate) fn archive(
    layout: &Layout,
    fingerprint: &str,
    chain: &str,
    key: &str,
) -> Result<(), String> {
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
pub(crate) fn materialize(
    layout: &Layout,
    rotation: &Rotation,
    phase: Phase,
) -> Result<(), String> {
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

/// What the operator does so that RabbitMQ reads the broker's files again.
pub(crate) fn broker_advice(data_dir: &Path) -> String {
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

/// Whether the parent's certificate toward the broker comes from the CA
/// `fingerprint`.
pub(crate) fn own_from(layout: &Layout, fingerprint: &str) -> bool {
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

/// A TLS handshake with `uri` trusting `roots_pem` and presenting
/// `chain_pem`/`key_pem`, then the AMQP protocol header and the first bytes
/// of the broker's answer (over TLS 1.3 a refused client certificate shows
/// only then).
pub(crate) async fn broker_accepts(
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
pub(crate) fn end_turns(
    tx: &Transaction<'_>,
    campaign: Uuid,
    on_new: &[Uuid],
) -> Result<bool, RegistryError> {
    let acting = rotations::acting_in(tx, campaign)?;
    let mut ended = false;
    for agent in on_new.iter().filter(|a| acting.contains(&a.to_string())) {
        ended |= crate::campaign::on_single_report(
            tx,
            *agent,
            campaign,
            ChildStep::Reissue,
            true,
            "Already holds a certificate from the new CA.",
        )?;
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::{
        insert_certificate_row, insert_rotation, set_rotation_phase, CertificateRow,
    };
    use crate::settings::SslSettings;
    use fleetls_proto::ToChild;

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
        let set_phase = |phase: Phase| {
            registry
                .with_tx(|tx| {
                    set_rotation_phase(
                        tx,
                        &old.signing_fingerprint,
                        &new.signing_fingerprint,
                        phase,
                    )
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
                insert_rotation(tx, "sha256:old", "sha256:new", Phase::Reissue, id)?;
                Ok(id)
            })
            .unwrap();
        let tick = registry
            .with_tx(|tx| campaign::tick(tx, id, &|_| campaign::Reach::Online, false, true))
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
            .with_tx(|tx| campaign::tick(tx, id, &|_| campaign::Reach::Online, false, true))
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
                let first = CertificateRow {
                    serial: "01",
                    agent: renewing,
                    subject: "s",
                    not_after: 0,
                    issued_at: 0,
                    revoked: false,
                    chain_pem: "",
                    renewal: false,
                };
                insert_certificate_row(tx, &first)?;
                insert_certificate_row(
                    tx,
                    &CertificateRow {
                        serial: "02",
                        issued_at: 1,
                        renewal: true,
                        ..first
                    },
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
