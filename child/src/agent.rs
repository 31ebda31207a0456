//! The child agent's life: connect, declare its queue, say `Hello`, heartbeat
//! and answer commands; when the broker goes away, reconnect with backoff and
//! jitter and say `Hello` again. It stops only when asked to.

use std::sync::Arc;
use std::time::Duration;

use fleetls_proto::{
    topology, AgentState, Body, Csr, Envelope, Heartbeat, Hello, Refused, RunStep, StepReport,
    StepSpec, SwitchReport,
};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tracing::{info, warn};

use crate::certs::CertStore;
use crate::config::RunConfig;
use crate::identity::{self, Identity, State, StoreError};
use crate::shutdown::Shutdown;
use crate::steps;

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
    /// An AMQP operation failed.
    #[error("{what}: {source}")]
    Amqp {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused to store a message.
    #[error("the broker refused or could not route a message to the parent")]
    Nacked,
    /// The consumer was cancelled.
    #[error("the broker cancelled the consumer of this agent's queue")]
    Cancelled,
    /// The TLS material for AMQPS is missing or unusable.
    #[error("AMQPS: {0}")]
    Tls(String),
    /// The broker URL cannot be parsed (the message never holds its password).
    #[error("{0}")]
    Url(String),
}

fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> SessionError {
    move |source| SessionError::Amqp { what, source }
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
        create_private_dir(&config.data_dir).map_err(|e| StoreError {
            path: config.data_dir.clone(),
            why: e.to_string(),
        })?;
        let identity = identity::load_or_create_identity(&config.data_dir, config.name.as_deref())?;
        let state = identity::load_state(&config.data_dir)?;
        Ok(Agent {
            config,
            identity,
            state: std::sync::Mutex::new(state),
            local_port: std::sync::Mutex::new(None),
            behaviour: Behaviour::default(),
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
            key_fingerprint: None,
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

/// The delay before reconnect attempt `attempt`: exponential from 200 ms to
/// 10 s with full jitter, so a fleet does not come back in step.
pub fn backoff(attempt: u32) -> Duration {
    let cap_ms = (200u64 << attempt.min(6)).min(10_000);
    Duration::from_millis(cap_ms / 2 + rand::random_range(0..=cap_ms / 2))
}

fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
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
        None => connect(&agent.config.broker, name).await,
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

/// Parses a broker URL (`amqp://` or `amqps://`) and caps its frame size at
/// [`FRAME_MAX`] when it does not say `frame_max=` itself.
pub fn connection_uri(url: &str) -> Result<lapin::uri::AMQPUri, SessionError> {
    fleetls_proto::broker_uri(url, FRAME_MAX).map_err(SessionError::Url)
}

/// Opens a named connection to the broker.
pub async fn connect(url: &str, name: &str) -> Result<Connection, SessionError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(connection_uri(url)?, properties)
        .await
        .map_err(amqp("connecting to the broker"))
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
    /// connection (see [`declare_shared`]): a swarm declares it once per
    /// connection instead of once per child.
    pub async fn open_on(
        connection: &Connection,
        agent: &Agent,
        shutdown: Shutdown,
        shared: bool,
    ) -> Result<Session, SessionError> {
        let id = agent.identity.id;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp("turning on publisher confirms"))?;
        if shared {
            declare_shared(&channel).await?;
        }
        declare_own(&channel, &id).await?;
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

/// Declares the exchanges children use and the parent's queue (idempotent).
pub async fn declare_shared(channel: &Channel) -> Result<(), SessionError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (topology::PARENT, ExchangeKind::Direct),
        (topology::AGENTS, ExchangeKind::Direct),
        (topology::DEAD, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await
            .map_err(amqp("declaring an exchange"))?;
    }
    // The parent's queue too, so that a Hello sent before the parent ever
    // started waits for it instead of being dropped as unroutable.
    channel
        .queue_declare(
            topology::PARENT.into(),
            QueueDeclareOptions::durable(),
            queue_arguments(),
        )
        .await
        .map_err(amqp("declaring fleetls.parent"))?;
    channel
        .queue_bind(
            topology::PARENT.into(),
            topology::PARENT.into(),
            topology::PARENT.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("binding fleetls.parent"))?;
    Ok(())
}

/// Arguments every fleetls queue carries.
fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(topology::DEAD.into()),
    );
    args
}

/// Declares this child's own durable queue and binds it.
async fn declare_own(channel: &Channel, id: &uuid::Uuid) -> Result<(), SessionError> {
    let queue = topology::agent_queue(id);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            queue_arguments(),
        )
        .await
        .map_err(amqp("declaring this agent's queue"))?;
    channel
        .queue_bind(
            queue.as_str().into(),
            topology::AGENTS.into(),
            id.to_string().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("binding this agent's queue"))
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
        let payload = fleetls_proto::encode(&envelope).expect("fleetls messages always encode");
        let mut props = BasicProperties::default()
            .with_content_type(fleetls_proto::CONTENT_TYPE.into())
            .with_type(envelope.body.kind().into())
            .with_message_id(envelope.id.to_string().as_str().into())
            .with_delivery_mode(2);
        if let Some(re) = re {
            props = props.with_correlation_id(re.to_string().as_str().into());
        }
        let confirm = self
            .channel
            .basic_publish(
                topology::PARENT.into(),
                topology::PARENT.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &payload,
                props,
            )
            .await
            .map_err(amqp("publishing to the parent"))?
            .await
            .map_err(amqp("waiting for a publisher confirm"))?;
        if confirm.is_nack() || confirm.take_message().is_some() {
            return Err(SessionError::Nacked);
        }
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

    /// Handles one command from the parent, then acks it.
    async fn handle(
        &self,
        agent: &Agent,
        delivery: Delivery,
    ) -> Result<Option<Outcome>, SessionError> {
        let decoded = if agent.behaviour.silent {
            // A silent child takes its commands and never answers.
            return delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map(|_| None)
                .map_err(amqp("acking a command"));
        } else {
            fleetls_proto::decode(&delivery.data)
        };
        let mut moved = None;
        match decoded {
            Ok(envelope) => {
                let id = envelope.id;
                let kind = envelope.body.kind();
                let result = match self.obey(agent, envelope).await? {
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
                    };
                    self.send(agent, Body::Refused(refused), Some(id)).await?;
                }
            }
            Err(e) => {
                warn!(error = %e, "a command could not be decoded");
                let refused = Refused {
                    command: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .and_then(|id| id.as_str().parse().ok()),
                    kind: delivery.properties.kind().as_ref().map(|k| k.to_string()),
                    reason: e.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_is_capped_unless_the_url_names_one() {
        for url in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqps://guest:guest@127.0.0.1:5671/%2f",
        ] {
            assert_eq!(
                connection_uri(url).unwrap().query.frame_max,
                Some(FRAME_MAX)
            );
        }
        let uri = connection_uri(
            "amqps://guest:guest@127.0.0.1:5671/%2f?auth_mechanism=external&frame_max=131072",
        )
        .unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
        assert_eq!(uri.authority.port, 5671);
    }

    #[test]
    fn an_invalid_url_is_refused_without_its_password() {
        let Err(SessionError::Url(why)) = connection_uri("amqps://guest:s3cret@/%2f?frame_max=x")
        else {
            panic!("an invalid URL was accepted");
        };
        assert!(!why.contains("s3cret"), "{why}");
        assert!(why.contains("not valid"), "{why}");
    }
}
