//! The child agent's life: connect, declare its queue, say `Hello`, heartbeat
//! and answer commands; when the broker goes away, reconnect with backoff and
//! jitter and say `Hello` again. It stops only when asked to.

use std::sync::Arc;
use std::time::Duration;

use fleetls_bus::amqp::BusError;
use fleetls_bus::seal::SigningKey;
use fleetls_proto::{
    topology, AgentState, Body, Csr, Envelope, Heartbeat, Hello, Refused, RunStep, StepReport,
    StepSpec, SwitchReport,
};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tracing::{info, warn};

pub use fleetls_bus::backoff;

use crate::certs::CertStore;
use crate::config::RunConfig;
use crate::identity::{self, Identity, State, StoreError};
use crate::shutdown::Shutdown;
use crate::steps;
use crate::trust::{Trust, Verdict};

/// Why the child could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data dir could not be prepared.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A failure of one broker session (the agent reconnects after it).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Talking to the broker failed (see [`BusError`]).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The consumer was cancelled.
    #[error("the broker cancelled the consumer of this agent's queue")]
    Cancelled,
}

fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> SessionError {
    move |source| SessionError::Bus(BusError::Amqp { what, source })
}

/// A running child: its settings, identity and state.
pub struct Agent {
    /// The checked configuration.
    pub config: RunConfig,
    /// Who it is.
    pub identity: Identity,
    /// Where it stands.
    pub state: std::sync::Mutex<State>,
    /// Stops the local SSL port of a local parent, while it serves.
    local_port: std::sync::Mutex<Option<crate::shutdown::Trigger>>,
    /// How a simulated child misbehaves (swarm only).
    pub behaviour: Behaviour,
    /// The key this agent signs its messages with (`DIR/identity.key`):
    /// the parent pins it at the first Hello.
    pub key: SigningKey,
    /// Which commands it obeys.
    pub trust: Trust,
}

/// Misbehaviour of a simulated child, for load tests and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Takes commands and never answers them.
    pub silent: bool,
    /// Its SSL port test goes to a closed port.
    pub fail_ssl_port: bool,
}

impl Agent {
    /// Prepares the data dir and loads (or makes) the identity.
    pub fn open(config: RunConfig) -> Result<Agent, RunError> {
        fleetls_bus::files::create_private_dir(&config.data_dir).map_err(|e| StoreError {
            path: config.data_dir.clone(),
            why: e.to_string(),
        })?;
        let identity = identity::load_or_create_identity(&config.data_dir, config.name.as_deref())?;
        let state = identity::load_state(&config.data_dir)?;
        let key_path = config.data_dir.join("identity.key");
        let key = SigningKey::load_or_create(&key_path).map_err(|e| StoreError {
            path: key_path,
            why: e.to_string(),
        })?;
        let trust = Trust::load(&config.data_dir, config.parent_key.clone())?;
        Ok(Agent {
            config,
            identity,
            state: std::sync::Mutex::new(state),
            local_port: std::sync::Mutex::new(None),
            behaviour: Behaviour::default(),
            key,
            trust,
        })
    }

    /// Updates and saves the state.
    pub fn update_state(&self, f: impl FnOnce(&mut State)) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = state.clone();
        f(&mut next);
        if next != *state {
            identity::save_state(&self.config.data_dir, &next)?;
            *state = next;
        }
        Ok(())
    }

    /// A local parent with a certificate and a port serves TLS for its
    /// location (started once; restarted after a new certificate).
    pub fn serve_local_port(&self, shutdown: &Shutdown, restart: bool) {
        if self.config.kind != fleetls_proto::AgentKind::LocalParent {
            return;
        }
        let port = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .serve_port;
        let store = CertStore::new(&self.config.data_dir);
        let (Some(port), true) = (port, store.has_certificate()) else {
            return;
        };
        let mut running = self.local_port.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(trigger) = running.take() {
            if !restart {
                *running = Some(trigger);
                return;
            }
            trigger.fire();
        }
        let (trigger, own) = crate::shutdown::channel();
        let mut global = shutdown.clone();
        let (both_trigger, both) = crate::shutdown::channel();
        let mut own_wait = own.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = global.wait() => {}
                _ = own_wait.wait() => {}
            }
            both_trigger.fire();
        });
        tokio::spawn(crate::local_port::serve(store, port, both));
        *running = Some(trigger);
    }

    fn report_state(&self) -> AgentState {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        AgentState {
            has_certificate: CertStore::new(&self.config.data_dir).has_certificate(),
            ssl: state.ssl,
            broker_tls: state.broker_tls_uri.is_some(),
            parent_key: self.trust.pinned(),
        }
    }

    fn hello(&self) -> Body {
        Body::Hello(Hello {
            name: self.identity.name.clone(),
            kind: self.config.kind,
            version: self.config.version.clone(),
            location: self.config.location.clone(),
            hostnames: self.config.hostnames.clone(),
            ips: self.config.ips.iter().map(|ip| ip.to_string()).collect(),
            key_fingerprint: Some(self.key.public().fingerprint()),
            state: self.report_state(),
        })
    }
}

/// Runs a child until `shutdown` fires.
pub async fn run(config: RunConfig, shutdown: Shutdown) -> Result<(), RunError> {
    let agent = Arc::new(Agent::open(config)?);
    info!(id = %agent.identity.id, name = %agent.identity.name, "child starting");
    agent.serve_local_port(&shutdown, false);
    let mut attempt = 0u32;
    let mut shutdown_wait = shutdown.clone();
    let name = topology::child_connection_name(&agent.identity.id);
    while !shutdown.is_set() {
        let opened = tokio::select! {
            _ = shutdown_wait.wait() => break,
            opened = async {
                let connection = connect_agent(&agent, &name).await?;
                let session = Session::open(&connection, &agent, shutdown.clone()).await;
                Ok::<_, SessionError>((connection, session?))
            } => opened,
        };
        match opened {
            Ok((mut connection, mut session)) => {
                attempt = 0;
                info!("connected to the broker");
                let result = loop {
                    match session.run(&agent).await {
                        Ok(Outcome::MoveTo(next, next_session)) => {
                            // The new connection carries us now; only then close the old one.
                            let _ = connection.close(200, "moved to AMQPS".into()).await;
                            info!("moved to AMQPS; the plain connection is closed");
                            connection = *next;
                            session = *next_session;
                        }
                        Ok(Outcome::Stopped) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                let _ = connection.close(200, "child stopping".into()).await;
                match result {
                    Ok(()) => break,
                    Err(e) => warn!(error = %e, "broker session ended; reconnecting"),
                }
            }
            Err(e) => warn!(error = %e, attempt, "cannot reach the broker; retrying"),
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shutdown_wait.wait() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    info!("child stopped");
    Ok(())
}

/// Runs one test step and says how it went.
pub async fn run_step(store: &CertStore, run: &RunStep) -> StepReport {
    let started_at = fleetls_proto::now_ms();
    let left = run.deadline.saturating_sub(fleetls_proto::now_ms());
    let limit = Duration::from_millis(left.clamp(1_000, 30_000));
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

/// How a session ended without a failure.
pub enum Outcome {
    /// Asked to stop.
    Stopped,
    /// Moved to AMQPS: go on with this connection and session; the old
    /// connection may be closed now.
    MoveTo(Box<Connection>, Box<Session>),
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

/// What came of a command.
pub enum Obeyed {
    /// Done (`Err`: refused, with the reason to report).
    Done(Result<(), String>),
    /// Moved to AMQPS.
    MoveTo(Box<Connection>, Box<Session>),
}

/// The largest AMQP frame a child asks for, unless its broker URL names its
/// own `frame_max`: the smallest AMQP allows (see
/// [`fleetls_proto::broker_uri`]). At RabbitMQ's 128 KiB a swarm of
/// thousands of children, each with its own AMQPS connection, ran out of
/// memory at about 2,500 of them; at 4 KiB a connection's buffers are at
/// most 256 KiB. The agent's messages are a few KiB at most.
pub const FRAME_MAX: lapin::types::FrameSize = 4096;

/// Opens a named plain connection to the broker with the child's frame size.
pub async fn connect(url: &str, name: &str) -> Result<Connection, SessionError> {
    Ok(fleetls_bus::amqp::connect(url, name, FRAME_MAX).await?)
}

/// One agent's channel on a broker connection (its own, or shared in a swarm).
pub struct Session {
    channel: Channel,
    consumer: lapin::Consumer,
    shutdown: Shutdown,
}

impl Session {
    /// Opens the agent's channel: confirms on, topology declared, its queue consumed.
    pub async fn open(
        connection: &Connection,
        agent: &Agent,
        shutdown: Shutdown,
    ) -> Result<Session, SessionError> {
        Session::open_on(connection, agent, shutdown, true).await
    }

    /// Like [`Session::open`]; with `shared` false the shared topology
    /// (exchanges, `fleetls.parent`) is taken as declared already on this
    /// connection (see [`fleetls_bus::amqp::ensure_shared`]): a swarm declares it once per
    /// connection instead of once per child.
    pub async fn open_on(
        connection: &Connection,
        agent: &Agent,
        shutdown: Shutdown,
        shared: bool,
    ) -> Result<Session, SessionError> {
        let id = agent.identity.id;
        if shared {
            fleetls_bus::amqp::ensure_shared(connection).await?;
        }
        let channel = fleetls_bus::amqp::confirm_channel(connection).await?;
        fleetls_bus::amqp::declare_agent_queue(&channel, &id).await?;
        channel
            .basic_qos(16, BasicQosOptions::default())
            .await
            .map_err(amqp("setting the prefetch"))?;
        let queue = topology::agent_queue(&id);
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("consuming this agent's queue"))?;
        Ok(Session {
            channel,
            consumer,
            shutdown,
        })
    }

    /// The stop signal this session obeys.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Closes the channel (a swarm's connection lives on).
    pub async fn close(&self) {
        let _ = self.channel.close(200, "agent stopping".into()).await;
    }
}

impl Session {
    /// Says `Hello`, then heartbeats and answers commands until shutdown
    /// (`Ok`) or a broker failure (`Err`: reconnect).
    pub async fn run(&self, agent: &Agent) -> Result<Outcome, SessionError> {
        let mut shutdown = self.shutdown.clone();
        self.send(agent, agent.hello(), None).await?;
        let mut ticker = tokio::time::interval(agent.config.heartbeat);
        ticker.tick().await;
        let mut consumer = self.consumer.clone();
        loop {
            tokio::select! {
                _ = shutdown.wait() => return Ok(Outcome::Stopped),
                _ = ticker.tick() => {
                    let beat = Body::Heartbeat(Heartbeat { state: agent.report_state() });
                    self.send(agent, beat, None).await?;
                }
                next = consumer.next() => {
                    let delivery = next.ok_or(SessionError::Cancelled)?.map_err(amqp("consuming"))?;
                    if let Some(moved) = self.handle(agent, delivery).await? {
                        return Ok(moved);
                    }
                }
            }
        }
    }

    /// Publishes a message to the parent and waits for the broker's confirm.
    pub async fn send(
        &self,
        agent: &Agent,
        body: Body,
        re: Option<uuid::Uuid>,
    ) -> Result<(), SessionError> {
        let mut envelope = Envelope::new(agent.identity.id, body);
        envelope.re = re;
        let sealed = agent.key.seal(&envelope).map_err(BusError::from)?;
        let properties = fleetls_bus::amqp::properties(&envelope, &sealed, None);
        fleetls_bus::amqp::publish_confirmed(
            &self.channel,
            topology::PARENT,
            topology::PARENT,
            &sealed.payload,
            properties,
        )
        .await?;
        Ok(())
    }

    /// Carries out one command. The inner `Err` is a refusal to report.
    async fn obey(&self, agent: &Agent, envelope: Envelope) -> Result<Obeyed, SessionError> {
        let store = CertStore::new(&agent.config.data_dir);
        match envelope.body {
            Body::CertificatesReady(ready) => {
                if agent.config.kind == fleetls_proto::AgentKind::LocalParent {
                    if let Err(e) = agent.update_state(|s| s.serve_port = ready.serve_port) {
                        return Ok(Obeyed::Done(Err(e.to_string())));
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
                match csr {
                    Ok(Some(pem)) => {
                        self.send(agent, Body::Csr(Csr { pem }), Some(envelope.id))
                            .await?;
                    }
                    Ok(None) => self.send_state(agent).await?,
                    Err(reason) => return Ok(Obeyed::Done(Err(reason))),
                }
            }
            Body::CertificateIssued(issued) => {
                let installed = tokio::task::spawn_blocking(move || store.install(&issued))
                    .await
                    .unwrap_or_else(|e| Err(format!("the install task failed: {e}")));
                if let Err(reason) = installed {
                    return Ok(Obeyed::Done(Err(reason)));
                }
                agent.serve_local_port(&self.shutdown, true);
                self.send_state(agent).await?;
            }
            Body::RunStep(run) if run.deadline < fleetls_proto::now_ms() => {
                // Its result would no longer count: the parent has moved on.
                warn!(campaign = %run.campaign, "a test step arrived after its deadline; skipped");
            }
            Body::RunStep(mut run) => {
                if agent.behaviour.fail_ssl_port {
                    if let StepSpec::SslPort { host, port } = &mut run.step {
                        *host = "127.0.0.1".into();
                        *port = 1;
                    }
                }
                let report = run_step(&store, &run).await;
                self.send(agent, Body::StepReport(report), Some(envelope.id))
                    .await?;
            }
            Body::CsrRejected(rejected) => {
                warn!(reason = %rejected.reason, "the parent refused this agent's CSR");
                store.forget_pending();
            }
            Body::UseSsl(cmd) => {
                // Only with a certificate that still passes step 1.
                let report = match steps::cert_test(&store) {
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
                self.send(agent, Body::SwitchReport(report), Some(envelope.id))
                    .await?;
            }
            Body::UseBrokerTls(cmd) => {
                return crate::broker_tls::obey(self, agent, &cmd, envelope.id).await;
            }
            other => {
                return Ok(Obeyed::Done(Err(format!(
                    "{} is not supported by this agent version",
                    other.kind()
                ))))
            }
        }
        Ok(Obeyed::Done(Ok(())))
    }

    /// Sends a heartbeat now, so the parent's counters follow at once.
    async fn send_state(&self, agent: &Agent) -> Result<(), SessionError> {
        let beat = Body::Heartbeat(Heartbeat {
            state: agent.report_state(),
        });
        self.send(agent, beat, None).await
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
        if agent.behaviour.silent {
            // A silent child takes its commands and never answers.
            return delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map(|_| None)
                .map_err(amqp("acking a command"));
        }
        let verdict = agent.trust.check(
            agent.identity.id,
            &delivery.data,
            delivery.properties.headers().as_ref(),
        );
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
            Verdict::Obey(envelope) => {
                let id = envelope.id;
                let kind = envelope.body.kind();
                let result = match self.obey(agent, *envelope).await? {
                    Obeyed::Done(result) => result,
                    Obeyed::MoveTo(connection, session) => {
                        moved = Some(Outcome::MoveTo(connection, session));
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
                    self.send(agent, Body::Refused(refused), Some(id)).await?;
                }
            }
            Verdict::Undecodable(e) => {
                warn!(error = %e, "a command could not be decoded");
                let (command, kind) = claimed();
                let refused = Refused {
                    command,
                    kind,
                    reason: e.to_string(),
                    forged: false,
                };
                self.send(agent, Body::Refused(refused), None).await?;
            }
            Verdict::Forged(reason) => {
                warn!(reason = %reason, "SECURITY: a forged or replayed command was refused");
                fleetls_bus::amqp::dead_letter(
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
                self.send(agent, Body::Refused(refused), None).await?;
            }
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(amqp("acking a command"))?;
        Ok(moved)
    }
}
