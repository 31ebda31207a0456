//! The child agent's life: connect, declare its queue, say `Hello`, report
//! its state (at once when it changes, else every `--report-every`) and
//! answer commands; when the broker goes away, reconnect after a full-jitter
//! backoff (capped at `--reconnect-max`) and say `Hello` again. It stops
//! only when asked to.

use std::sync::Arc;
use std::time::Duration;

use fleetls_bus::reconnect::Ended;
use fleetls_proto::{
    topology, AgentKind, Body, Csr, Directed, Envelope, Refused, RunStep, StepReport, StepSpec,
    SwitchReport, ToChild, ToParent,
};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::Connection;
use tracing::{info, warn};

use crate::certs::CertStore;
use crate::config::RunConfig;
pub use crate::node::{Agent, Quirks, RunError};
use crate::session::amqp;
pub use crate::session::{connect, Obeyed, Outcome, Session, SessionError, FRAME_MAX};
use crate::shutdown::Shutdown;
use crate::steps;
use crate::trust::Verdict;

/// Runs a child until `shutdown` fires.
pub async fn run(config: RunConfig, shutdown: Shutdown) -> Result<(), RunError> {
    let agent = Arc::new(Agent::open(config)?);
    info!(id = %agent.identity.id, name = %agent.identity.name, "child starting");
    agent.serve_local_port(&shutdown, false);
    // Stores asked for now, of certificates installed before, are written at once.
    CertStore::new(&agent.config.data_dir)
        .with_stores(agent.config.trust_stores.clone())
        .keep_stores();
    if let Some(bundle) = &agent.config.trust_bundle {
        CertStore::new(&agent.config.data_dir)
            .store_trust_bundle(bundle)
            .map_err(|why| crate::identity::StoreError {
                path: CertStore::new(&agent.config.data_dir).trust_bundle_path(),
                why,
            })?;
    }
    let name = topology::child_connection_name(&agent.identity.id, &agent.identity.name);
    let backoff = agent.config.backoff();
    fleetls_bus::reconnect::run_with("child", backoff, shutdown.clone(), || {
        let (agent, name, shutdown) = (agent.clone(), name.clone(), shutdown.clone());
        async move { session(&agent, &name, shutdown).await }
    })
    .await;
    info!("child stopped");
    Ok(())
}

/// One broker session of the agent: connect (AMQPS once it moved there),
/// run until it ends; after a move to AMQPS go on over the new connection.
async fn session(agent: &Agent, name: &str, shutdown: Shutdown) -> Ended {
    let mut stop = shutdown.clone();
    let opened = tokio::select! {
        _ = stop.wait() => return Ended::Stopped,
        opened = async {
            let connection = connect_agent(agent, name).await?;
            let session = Session::open(&connection, agent, shutdown.clone()).await;
            Ok::<_, SessionError>((connection, session?))
        } => opened,
    };
    let (mut connection, mut session) = match opened {
        Ok(opened) => opened,
        Err(e) => return Ended::Unreachable(e.to_string()),
    };
    info!("connected to the broker");
    let ended = loop {
        match session.run(agent).await {
            Ok(Outcome::MoveTo(next, next_session)) => {
                // The new connection carries us now; only then close the old
                // one, its channel first (a planned close logs no ERROR).
                session.close().await;
                fleetls_bus::amqp::close_connection(&connection, "moved to AMQPS").await;
                info!("moved to AMQPS; the plain connection is closed");
                connection = *next;
                session = *next_session;
            }
            Ok(Outcome::Stopped) => break Ended::Stopped,
            Ok(Outcome::Reconnect) => {
                info!("reconnecting to the broker with the renewed certificate");
                break Ended::Again;
            }
            Err(e) => break Ended::Broke(e.to_string()),
        }
    };
    fleetls_bus::amqp::close_connection(&connection, "child stopping").await;
    ended
}

/// The longest time between two checks of whether the certificate is due
/// for renewal: a report interval of minutes must not let a short-lived
/// certificate (`serve --cert-lifetime 5m` in tests) pass its renewal time.
const RENEWAL_CHECK: Duration = Duration::from_secs(60);

/// How often the certificate's renewal time is checked: with every report,
/// at least every [`RENEWAL_CHECK`]. (A check reads the certificate's file;
/// it sends nothing unless a renewal is due.)
/// When the first state report of a session comes: uniformly random in
/// `(0, every]`.
fn first_report(every: Duration) -> Duration {
    let millis = every.as_millis().max(1) as u64;
    Duration::from_millis(rand::random_range(1..=millis))
}

fn renewal_check(report_every: Duration) -> Duration {
    report_every.min(RENEWAL_CHECK)
}

/// How much of a step's time is kept for its report to travel: a tenth,
/// at most 2 s.
fn report_margin(left_ms: u64) -> u64 {
    (left_ms / 10).min(2_000)
}

/// Runs one test step and says how it went.
pub async fn run_step(store: &CertStore, run: &RunStep) -> StepReport {
    let started_at = fleetls_proto::now_ms();
    let left = run.deadline.saturating_sub(fleetls_proto::now_ms());
    // The step ends with time left to report: a result sent at the deadline
    // itself reaches the parent after it judged the child silent.
    let limit = Duration::from_millis(
        left.saturating_sub(report_margin(left))
            .clamp(1_000, 30_000),
    );
    let result = match &run.step {
        StepSpec::CertTest => steps::cert_test(store).map(|_| steps::CERT_OK.to_owned()),
        StepSpec::SslPort { host, port } => match steps::cert_test(store) {
            Ok(loaded) => steps::ssl_port_test(&loaded, host, *port, limit).await,
            Err(failure) => Err(failure),
        },
    };
    let (ok, message, cause) = match result {
        Ok(message) => (true, message, None),
        Err(failure) => (false, failure.message, Some(failure.cause)),
    };
    StepReport {
        campaign: run.campaign,
        step: run.step.step(),
        ok,
        message,
        cause,
        started_at: Some(started_at),
    }
}

/// Opens the connection this agent should use: AMQPS when it moved there
/// (with its client certificate and the broker's CA), else plain.
pub async fn connect_agent(agent: &Agent, name: &str) -> Result<Connection, SessionError> {
    let tls = agent
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .broker_tls_uri
        .clone();
    match tls {
        Some(uri) => crate::broker_tls::connect(&agent.config.data_dir, &uri, name).await,
        None => Ok(fleetls_bus::amqp::connect(&agent.config.broker, name, FRAME_MAX).await?),
    }
}

impl Session {
    /// Says `Hello`, then reports its state every `--report-every`, checks
    /// whether its certificate is due for renewal and answers commands until
    /// shutdown (`Ok`) or a broker failure (`Err`: reconnect).
    pub async fn run(&self, agent: &Agent) -> Result<Outcome, SessionError> {
        let mut shutdown = self.shutdown.clone();
        self.send(agent, agent.hello(), None).await?;
        // The Hello carries the state: the first report comes after a
        // random part of the interval, so that a fleet that reconnected
        // together (a broker restart) does not report in waves for ever.
        let mut report = tokio::time::interval_at(
            tokio::time::Instant::now() + first_report(agent.config.report_every),
            agent.config.report_every,
        );
        let mut renewal = tokio::time::interval(renewal_check(agent.config.report_every));
        renewal.tick().await;
        let mut consumer = self.consumer.clone();
        loop {
            tokio::select! {
                _ = shutdown.wait() => return Ok(Outcome::Stopped),
                _ = report.tick() => self.beat(agent).await?,
                _ = renewal.tick() => self.renew_if_due(agent).await?,
                next = consumer.next() => {
                    let delivery = next.ok_or(SessionError::Cancelled)?.map_err(amqp("consuming"))?;
                    // A command runs beside the report, not in its place:
                    // an SSL-port test may take its whole step time, and a
                    // parent that still counts silence as offline must not
                    // lose the child meanwhile.
                    let handling = self.handle(agent, delivery);
                    if let Some(moved) = self.beating(agent, &mut report, handling).await? {
                        return Ok(moved);
                    }
                }
            }
        }
    }

    /// Asks for a new certificate, on a new key, once the share of its
    /// lifetime set by `--renew-at` (with jitter) has passed; again after a
    /// while if no answer came. The old certificate serves until the new one
    /// is installed.
    async fn renew_if_due(&self, agent: &Agent) -> Result<(), SessionError> {
        let store =
            CertStore::new(&agent.config.data_dir).with_stores(agent.config.trust_stores.clone());
        let Some((not_before, not_after)) = store.validity() else {
            return Ok(());
        };
        let now = (fleetls_proto::now_ms() / 1000) as i64;
        if !agent.renewal_due(now, not_before, not_after) {
            return Ok(());
        }
        let (id, kind) = (agent.identity.id, agent.config.kind);
        let (hostnames, ips) = (agent.config.hostnames.clone(), agent.config.ips.clone());
        let csr = tokio::task::spawn_blocking(move || store.csr(id, kind, &hostnames, &ips))
            .await
            .unwrap_or_else(|e| Err(format!("the CSR task failed: {e}")));
        match csr {
            Ok(pem) => {
                info!(not_after, "renewing this agent's certificate");
                self.send(agent, ToParent::Csr(Csr { pem }), None).await
            }
            Err(e) => {
                warn!(error = %e, "cannot make a CSR to renew the certificate");
                Ok(())
            }
        }
    }

    /// Carries out one command. The inner `Err` is a refusal to report.
    async fn obey(&self, agent: &Agent, envelope: Envelope) -> Result<Obeyed, SessionError> {
        let store =
            CertStore::new(&agent.config.data_dir).with_stores(agent.config.trust_stores.clone());
        let command = match envelope.body.directed() {
            Directed::ToChild(command) => command,
            Directed::ToParent(message) => {
                return Ok(Obeyed::Done(Err(format!(
                    "{} is a child → parent message, not a command",
                    Body::from(message).kind()
                ))))
            }
        };
        match command {
            ToChild::CertificatesReady(ready) => {
                self.on_certificates_ready(agent, store, ready, envelope.id, envelope.at)
                    .await
            }
            ToChild::CertificateIssued(issued) => {
                self.on_certificate_issued(agent, store, issued).await
            }
            ToChild::RunStep(run) if run.deadline < fleetls_proto::now_ms() => {
                // Its result would no longer count: the parent has moved on.
                warn!(campaign = %run.campaign, "a test step arrived after its deadline; skipped");
                Ok(Obeyed::Done(Ok(())))
            }
            ToChild::RunStep(run) => self.on_run_step(agent, &store, run, envelope.id).await,
            ToChild::CrlUpdated(update) => Ok(self.on_crl(agent, &store, &update)),
            ToChild::CsrRejected(rejected) => {
                warn!(reason = %rejected.reason, "the parent refused this agent's CSR");
                store.forget_pending();
                Ok(Obeyed::Done(Ok(())))
            }
            ToChild::UseSsl(cmd) => self.on_use_ssl(agent, &store, cmd, envelope.id).await,
            ToChild::UseBrokerTls(cmd) => {
                crate::broker_tls::obey(self, agent, &cmd, envelope.id).await
            }
        }
    }

    /// `CertificatesReady`: a local parent keeps the TLS policy that comes
    /// with it; then a key and a CSR (or, holding a certificate of the CA
    /// that signs, just its state).
    async fn on_certificates_ready(
        &self,
        agent: &Agent,
        store: CertStore,
        ready: fleetls_proto::CertificatesReady,
        re: uuid::Uuid,
        at: u64,
    ) -> Result<Obeyed, SessionError> {
        if agent.config.kind == fleetls_proto::AgentKind::LocalParent {
            // A policy comes with the settings' information; a
            // command without one (a re-issue) keeps the one held.
            let held = agent
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .serve_tls
                .clone();
            let policy_changed = ready.tls.is_some() && held != ready.tls;
            if let Err(e) = agent.update_state(|s| {
                s.serve_port = ready.serve_port;
                if ready.tls.is_some() {
                    s.serve_tls = ready.tls.clone();
                    s.serve_tls_at = s.serve_tls_at.max(at);
                }
            }) {
                return Ok(Obeyed::Done(Err(e.to_string())));
            }
            if policy_changed {
                agent.serve_local_port(&self.shutdown, true);
            }
        }
        // Key generation and synced file writes: off the async workers.
        let (pin, id, kind) = (
            agent.config.ca_fingerprint.clone(),
            agent.identity.id,
            agent.config.kind,
        );
        let (hostnames, ips) = (agent.config.hostnames.clone(), agent.config.ips.clone());
        let csr = tokio::task::spawn_blocking(move || {
            store.prepare_csr(&ready, pin.as_deref(), id, kind, &hostnames, &ips)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the CSR task failed: {e}")));
        if csr.is_ok() {
            // The CAs it accepts may have changed (a CA rotation).
            agent.serve_local_port(&self.shutdown, true);
        }
        match csr {
            Ok(Some(pem)) => {
                self.send(agent, ToParent::Csr(Csr { pem }), Some(re))
                    .await?;
            }
            Ok(None) => self.send_state(agent).await?,
            Err(reason) => return Ok(Obeyed::Done(Err(reason))),
        }
        Ok(Obeyed::Done(Ok(())))
    }

    /// `CertificateIssued`: installs it, serves it, and reconnects when the
    /// broker saw the old one (on AMQPS).
    async fn on_certificate_issued(
        &self,
        agent: &Agent,
        store: CertStore,
        issued: fleetls_proto::CertificateIssued,
    ) -> Result<Obeyed, SessionError> {
        let installed = tokio::task::spawn_blocking(move || store.install(&issued))
            .await
            .unwrap_or_else(|e| Err(format!("the install task failed: {e}")));
        if let Err(reason) = installed {
            return Ok(Obeyed::Done(Err(reason)));
        }
        agent.serve_local_port(&self.shutdown, true);
        self.send_state(agent).await?;
        let on_amqps = agent
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .broker_tls_uri
            .is_some();
        if on_amqps {
            // The broker saw the old certificate: show it the new one.
            return Ok(Obeyed::Reconnect);
        }
        Ok(Obeyed::Done(Ok(())))
    }

    /// `RunStep`: runs the step (or answers from memory when it ran it).
    async fn on_run_step(
        &self,
        agent: &Agent,
        store: &CertStore,
        run: fleetls_proto::RunStep,
        re: uuid::Uuid,
    ) -> Result<Obeyed, SessionError> {
        let report = match agent.steps_done.recall(&run) {
            Some(report) => report,
            None => {
                let mut changed = run.clone();
                if let Some(quirks) = &agent.quirks {
                    quirks.step(&mut changed.step);
                }
                let report = run_step(store, &changed).await;
                agent.steps_done.remember(&run, &report);
                report
            }
        };
        self.send(agent, ToParent::StepReport(report), Some(re))
            .await?;
        Ok(Obeyed::Done(Ok(())))
    }

    /// `CrlUpdated`: keeps the CA's revocation list when a trusted CA signed it.
    fn on_crl(
        &self,
        agent: &Agent,
        store: &CertStore,
        update: &fleetls_proto::CrlUpdated,
    ) -> Obeyed {
        // Checked once a CA is trusted (before, no port serves it).
        let cas = store.trusted();
        if let Some(why) = (!cas.is_empty())
            .then(|| crate::trust::untrusted_crl(&cas, &update.crl_pem))
            .flatten()
        {
            return Obeyed::Done(Err(why));
        }
        let path = store.crl_path();
        if let Err(e) = crate::identity::write_atomic(&path, update.crl_pem.as_bytes(), 0o644) {
            return Obeyed::Done(Err(e.to_string()));
        }
        info!("the CA's revocation list was updated");
        agent.serve_local_port(&self.shutdown, true);
        Obeyed::Done(Ok(()))
    }

    /// `UseSsl`: only with a certificate that still passes step 1.
    async fn on_use_ssl(
        &self,
        agent: &Agent,
        store: &CertStore,
        cmd: fleetls_proto::UseSsl,
        re: uuid::Uuid,
    ) -> Result<Obeyed, SessionError> {
        // Only with a certificate that still passes step 1.
        let report = match steps::cert_test(store) {
            Ok(_) => match agent.update_state(|s| s.ssl = true) {
                Ok(()) => SwitchReport {
                    campaign: cmd.campaign,
                    ok: true,
                    message: "Switched to SSL connection.".into(),
                },
                Err(e) => SwitchReport {
                    campaign: cmd.campaign,
                    ok: false,
                    message: format!("Cannot switch to SSL: {e}"),
                },
            },
            Err(failure) => SwitchReport {
                campaign: cmd.campaign,
                ok: false,
                message: format!("Cannot switch to SSL: {}", failure.message),
            },
        };
        self.send(agent, ToParent::SwitchReport(report), Some(re))
            .await?;
        Ok(Obeyed::Done(Ok(())))
    }

    /// Handles one command from the parent, then acks it. A command that
    /// is not the parent's, not for this agent or replayed is not obeyed:
    /// it goes to `fleetls.dead` with the reason, and the parent hears of
    /// the attempt (a `Refused` marked forged).
    async fn handle(
        &self,
        agent: &Agent,
        delivery: Delivery,
    ) -> Result<Option<Outcome>, SessionError> {
        if agent.quirks.as_ref().is_some_and(|q| q.silent()) {
            // A silent child takes its commands and never answers.
            fleetls_bus::amqp::answered(
                "acking a command",
                delivery.acker.ack(BasicAckOptions::default()),
            )
            .await?;
            return Ok(None);
        }
        let verdict = agent.trust.check(
            agent.identity.id,
            &delivery.data,
            delivery.properties.headers().as_ref(),
        );
        // Genuine and fresh, but older than what it holds: refused like a replay.
        let verdict = match verdict {
            Verdict::Obey(envelope) => match undoes_newer(agent, &envelope) {
                Some(reason) => Verdict::Forged(reason),
                None => Verdict::Obey(envelope),
            },
            other => other,
        };
        let claimed = || {
            (
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|id| id.as_str().parse().ok()),
                delivery.properties.kind().as_ref().map(|k| k.to_string()),
            )
        };
        let mut moved = None;
        match verdict {
            Verdict::Obey(envelope) => moved = self.obey_and_report(agent, *envelope).await?,
            Verdict::Undecodable(e) => {
                warn!(error = %e, "a command could not be decoded");
                let (command, kind) = claimed();
                let refused = Refused {
                    command,
                    kind,
                    reason: e.to_string(),
                    forged: false,
                };
                self.send(agent, ToParent::Refused(refused), None).await?;
            }
            Verdict::ObeyedBefore(reason) if delivery.redelivered => {
                // Its ack was lost with the connection: obeyed, only acked now.
                info!(reason = %reason, "a command obeyed before came again after a reconnect; acked");
            }
            Verdict::Forged(reason) | Verdict::ObeyedBefore(reason) => {
                warn!(reason = %reason, "SECURITY: a forged or replayed command was refused");
                fleetls_bus::amqp::dead_letter_via_parent(
                    &self.channel,
                    &delivery.data,
                    &delivery.properties,
                    &format!("forged: {reason}"),
                )
                .await?;
                let (command, kind) = claimed();
                let refused = Refused {
                    command,
                    kind: kind.map(|k| k.chars().take(64).collect()),
                    reason,
                    forged: true,
                };
                self.send(agent, ToParent::Refused(refused), None).await?;
            }
        }
        fleetls_bus::amqp::answered(
            "acking a command",
            delivery.acker.ack(BasicAckOptions::default()),
        )
        .await?;
        Ok(moved)
    }

    /// Obeys a genuine command; a refusal goes back to the parent. Returns
    /// where the session moves to, if it does.
    async fn obey_and_report(
        &self,
        agent: &Agent,
        envelope: Envelope,
    ) -> Result<Option<Outcome>, SessionError> {
        let id = envelope.id;
        let kind = envelope.body.kind();
        let mut moved = None;
        let result = match self.obey(agent, envelope).await? {
            Obeyed::Done(result) => result,
            Obeyed::MoveTo(connection, session) => {
                moved = Some(Outcome::MoveTo(connection, session));
                Ok(())
            }
            Obeyed::Reconnect => {
                moved = Some(Outcome::Reconnect);
                Ok(())
            }
        };
        if let Err(reason) = result {
            warn!(kind, reason = %reason, "command refused");
            let refused = Refused {
                command: Some(id),
                kind: Some(kind.to_owned()),
                reason,
                forged: false,
            };
            self.send(agent, ToParent::Refused(refused), Some(id))
                .await?;
        }
        Ok(moved)
    }
}

/// Why a genuine command must not be obeyed because it would undo a newer
/// one the agent holds: a revocation list older than its own, or a weaker
/// TLS policy for its port than the one a later command set (a captured
/// command delivered late would un-revoke certificates or allow TLS 1.2
/// again).
fn undoes_newer(agent: &Agent, envelope: &Envelope) -> Option<String> {
    match &envelope.body {
        Body::CrlUpdated(update) => {
            let path = CertStore::new(&agent.config.data_dir).crl_path();
            let held = std::fs::read_to_string(path).ok()?;
            crate::trust::stale_crl(&held, &update.crl_pem)
        }
        Body::CertificatesReady(ready) if agent.config.kind == AgentKind::LocalParent => {
            let offered = ready.tls.as_ref()?;
            let state = agent.state.lock().unwrap_or_else(|p| p.into_inner());
            crate::trust::stale_policy(
                state.serve_tls.as_ref(),
                state.serve_tls_at,
                offered,
                envelope.at,
            )
        }
        _ => None,
    }
}
