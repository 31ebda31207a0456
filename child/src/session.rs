//! One agent's session on a broker connection: its channel with confirms,
//! its queue consumed, and what it publishes to the parent, signed.

use fleetls_bus::amqp::BusError;
use fleetls_proto::{topology, Envelope, Heartbeat, ToParent};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use crate::node::Agent;
use crate::shutdown::Shutdown;

/// A failure of one broker session (the agent reconnects after it).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Talking to the broker failed (see [`BusError`]).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A renewed certificate is installed: the session ends to open again
    /// with it (not a failure).
    #[error("reconnecting with a renewed certificate")]
    Renewed,
    /// The consumer was cancelled.
    #[error("the broker cancelled the consumer of this agent's queue")]
    Cancelled,
    /// The broker did not finish opening the session in time (seen on a
    /// cluster that just lost a node): it is opened again.
    #[error("the broker did not open this agent's session within {} s", OPEN_DEADLINE.as_secs())]
    Stuck,
}

/// How long opening a session (channel, queue, consumer) may take before
/// it is given up and opened again: a broker that never answers a
/// declaration must not keep an agent offline for ever. Generous: on a
/// busy cluster thousands of agents reconnecting at once queue their
/// declarations (seen: some 40 a second cluster-wide on three nodes of one
/// 2-core machine), and one given up too early only queues them again.
pub const OPEN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> SessionError {
    move |source| SessionError::Bus(BusError::Amqp { what, source })
}

/// How a session ended without a failure.
pub enum Outcome {
    /// Asked to stop.
    Stopped,
    /// Moved to AMQPS: go on with this connection and session; the old
    /// connection may be closed now.
    MoveTo(Box<Connection>, Box<Session>),
    /// A renewed certificate is installed: open the AMQPS connection again
    /// with it (now, between two commands: a quiet moment).
    Reconnect,
}

/// What came of a command.
pub enum Obeyed {
    /// Done (`Err`: refused, with the reason to report).
    Done(Result<(), String>),
    /// Moved to AMQPS.
    MoveTo(Box<Connection>, Box<Session>),
    /// Reconnect with the new certificate.
    Reconnect,
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
    pub(crate) channel: Channel,
    pub(crate) consumer: lapin::Consumer,
    pub(crate) shutdown: Shutdown,
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

    /// Like [`Session::open`]. With `shared` the shared topology
    /// (exchanges, `fleetls.parent`) is checked on the session's own channel
    /// ([`fleetls_bus::amqp::shared_confirm_channel`]); with `shared` false
    /// it is taken as declared already on this connection (see
    /// [`fleetls_bus::amqp::ensure_shared`]): a swarm declares it once per
    /// connection instead of once per child.
    pub async fn open_on(
        connection: &Connection,
        agent: &Agent,
        shutdown: Shutdown,
        shared: bool,
    ) -> Result<Session, SessionError> {
        let deadline = tokio::time::Instant::now() + OPEN_DEADLINE;
        let channel = tokio::time::timeout_at(deadline, async {
            Ok::<_, SessionError>(if shared {
                fleetls_bus::amqp::shared_confirm_channel(connection, agent.config.queue_type)
                    .await?
            } else {
                fleetls_bus::amqp::confirm_channel(connection).await?
            })
        })
        .await
        .map_err(|_| SessionError::Stuck)??;
        match tokio::time::timeout_at(deadline, Session::consume(channel.clone(), agent)).await {
            Ok(consumer) => Ok(Session {
                channel,
                consumer: consumer?,
                shutdown,
            }),
            Err(_) => {
                // Not left open on a connection that lives on (a swarm's).
                fleetls_bus::amqp::close_channel(&channel, "session not opened in time").await;
                Err(SessionError::Stuck)
            }
        }
    }

    /// Declares the agent's queue on `channel` and consumes it.
    async fn consume(channel: Channel, agent: &Agent) -> Result<lapin::Consumer, SessionError> {
        let id = agent.identity.id;
        fleetls_bus::amqp::declare_agent_queue(&channel, &id, agent.config.queue_type).await?;
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
        Ok(consumer)
    }

    /// The stop signal this session obeys.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Closes the channel (a swarm's connection lives on).
    pub async fn close(&self) {
        fleetls_bus::amqp::close_channel(&self.channel, "agent stopping").await;
    }
}

impl Session {
    /// One heartbeat with the agent's state.
    pub(crate) async fn beat(&self, agent: &Agent) -> Result<(), SessionError> {
        let beat = ToParent::Heartbeat(Heartbeat {
            state: agent.report_state(),
        });
        self.send(agent, beat, None).await
    }

    /// Publishes a message to the parent and waits for the broker's
    /// confirm. The agent's sends take turns (whichever of its sessions
    /// they go through): each takes the next seq of its replay counter and
    /// holds it until confirmed, so the parent's queue receives them in seq
    /// order (see [`crate::seq`]).
    pub async fn send(
        &self,
        agent: &Agent,
        body: ToParent,
        re: Option<uuid::Uuid>,
    ) -> Result<(), SessionError> {
        let mut counter = agent.sending.lock().await;
        let seq = agent.next_seq(&mut counter, crate::seq::now_us());
        let mut envelope = Envelope::new(agent.identity.id, body.into()).with_seq(seq);
        envelope.re = re;
        let sealed = agent.key.seal(&envelope).map_err(BusError::from)?;
        let properties =
            fleetls_bus::amqp::properties(&envelope, &sealed, fleetls_bus::amqp::Keep::Persistent);
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

    /// Sends a heartbeat now, so the parent's counters follow at once.
    pub(crate) async fn send_state(&self, agent: &Agent) -> Result<(), SessionError> {
        self.beat(agent).await
    }

    /// Runs `work` (a command being handled) and beats at every tick of
    /// `ticker` meanwhile. A beat waits its turn to send while `work` goes
    /// on: it may be waiting for `work`'s own message to be confirmed (a
    /// beat awaited alone would then wait for ever). A beat begun is
    /// finished before `work`'s result is returned.
    pub(crate) async fn beating<T>(
        &self,
        agent: &Agent,
        ticker: &mut tokio::time::Interval,
        work: impl std::future::Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticker.tick() => {
                    let beat = self.beat(agent);
                    tokio::pin!(beat);
                    let mut done = None;
                    loop {
                        tokio::select! {
                            beaten = &mut beat => {
                                beaten?;
                                break;
                            }
                            finished = &mut work, if done.is_none() => done = Some(finished),
                        }
                    }
                    if let Some(done) = done {
                        return done;
                    }
                }
            }
        }
    }
}
