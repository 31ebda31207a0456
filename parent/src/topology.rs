//! The wire that heals: every broker user but the parent is hostile, and
//! with the shared credentials of a default install one of them can delete
//! `fleetls.agents` (every agent's binding goes with it), `fleetls.parent`
//! or `fleetls.dead`, or unbind the parent's queue. While a session lasts
//! the parent looks every few seconds, on a channel of its own: the three
//! exchanges and two queues are checked with passive declares (no message,
//! no permission needed), the parent's own bindings are asserted again
//! (idempotent), and when something was missing the whole topology is
//! declared again and every accepted agent's queue bound again. A deleted
//! `fleetls.agents` may have been declared again already (a child that
//! reconnects declares it) with none of the agents' bindings: a sentinel
//! queue of the session's own (exclusive, holding nothing) is bound to it,
//! and a mandatory probe that comes back unrouted tells. What was
//! rebuilt is logged and recorded as a `topology` security event (status,
//! console and `/metrics` count it). One agent's binding removed leaves
//! the exchanges whole: a message to that agent comes back unrouted
//! (`App::send` keeps its id), and at the next look its queue, if it
//! exists, is bound again ([`rebind`]) and what it was owed sent again —
//! recorded as `topology` when the queue had a consumer (an agent binds
//! its queue before it consumes it). A closed sending channel ends the
//! session, so that the reconnect loop opens a new one at once.

use std::time::Duration;

use fleetls_bus::amqp::{amqp, close_channel, BusError};
use fleetls_bus::queue_type::QueueType;
use fleetls_proto::topology;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use uuid::Uuid;

/// How often the topology is looked at.
pub const EVERY: Duration = Duration::from_secs(5);

/// What a look found missing (empty: nothing).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Damage(pub Vec<&'static str>);

/// What a repair rebuilt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The exchanges and queues found missing (declared again).
    pub missing: Vec<&'static str>,
    /// Agents' queues bound to `fleetls.agents` again.
    pub rebound: usize,
    /// Agents whose queue is gone (declared again at their next connection).
    pub queue_gone: usize,
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "missing {}: declared again; {} agent queue(s) bound again to {}{}",
            self.missing.join(", "),
            self.rebound,
            topology::AGENTS,
            if self.queue_gone > 0 {
                format!(
                    ", {} agent queue(s) gone (declared again at the agent's next connection)",
                    self.queue_gone
                )
            } else {
                String::new()
            }
        )
    }
}

async fn open(connection: &Connection) -> Result<Channel, BusError> {
    connection
        .create_channel()
        .await
        .map_err(amqp("opening a channel to check the topology"))
}

/// Looks at the exchanges and queues with passive declares, each on a
/// fresh channel when the one before was closed by a 404.
pub async fn look(connection: &Connection) -> Result<Damage, BusError> {
    let mut damage = Damage::default();
    let mut channel = open(connection).await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (topology::PARENT, ExchangeKind::Direct),
        (topology::AGENTS, ExchangeKind::Direct),
        (topology::DEAD, ExchangeKind::Fanout),
    ] {
        if channel
            .exchange_declare(name.into(), kind, passive, FieldTable::default())
            .await
            .is_err()
        {
            damage.0.push(name);
            channel = open(connection).await?;
        }
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::durable()
    };
    for name in [topology::PARENT, topology::DEAD] {
        if channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
            .is_err()
        {
            // Named apart from the exchanges of the same name.
            damage.0.push(if name == topology::PARENT {
                "queue fleetls.parent"
            } else {
                "queue fleetls.dead"
            });
            channel = open(connection).await?;
        }
    }
    if damage.0.is_empty() {
        // Unbinding the parent's queue loses every child's message
        // silently: bound again each time (idempotent, two calls).
        let bound = async {
            channel
                .queue_bind(
                    topology::PARENT.into(),
                    topology::PARENT.into(),
                    topology::PARENT.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    topology::DEAD.into(),
                    topology::DEAD.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            // Children dead-letter through fleetls.parent.
            channel
                .exchange_bind(
                    topology::DEAD.into(),
                    topology::PARENT.into(),
                    topology::DEAD_ROUTE.into(),
                    lapin::options::ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
        .await;
        if bound.is_err() {
            damage.0.push("a binding of fleetls.parent or fleetls.dead");
        }
    }
    close_channel(&channel, "topology checked").await;
    Ok(damage)
}

/// The parent's sentinel on `fleetls.agents`: an exclusive queue of this
/// connection that holds nothing (`x-max-length` 0), bound with a routing
/// key of its own. Its binding goes when the exchange goes.
#[derive(Debug, Clone)]
pub struct Sentinel {
    queue: String,
    key: String,
}

impl Sentinel {
    /// Declares the sentinel queue and binds it.
    pub async fn plant(connection: &Connection) -> Result<Sentinel, BusError> {
        let channel = open(connection).await?;
        let key = format!("fleetls.sentinel.{}", Uuid::new_v4());
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(0));
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(amqp("declaring the topology sentinel"))?
            .name()
            .to_string();
        let sentinel = Sentinel { queue, key };
        sentinel.bind(&channel).await?;
        close_channel(&channel, "sentinel planted").await;
        Ok(sentinel)
    }

    async fn bind(&self, channel: &Channel) -> Result<(), BusError> {
        channel
            .queue_bind(
                self.queue.as_str().into(),
                topology::AGENTS.into(),
                self.key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("binding the topology sentinel"))
    }

    /// Whether `fleetls.agents` still holds the sentinel's binding (an
    /// empty mandatory message routed, not returned).
    pub async fn holds(&self, connection: &Connection) -> Result<bool, BusError> {
        let channel = fleetls_bus::amqp::confirm_channel(connection).await?;
        let sent = fleetls_bus::amqp::publish_confirmed(
            &channel,
            topology::AGENTS,
            &self.key,
            b"",
            lapin::BasicProperties::default(),
        )
        .await;
        close_channel(&channel, "sentinel probed").await;
        match sent {
            Ok(()) => Ok(true),
            Err(BusError::Nacked(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Binds the sentinel again (after a repair).
    pub async fn replant(&self, connection: &Connection) -> Result<(), BusError> {
        let channel = open(connection).await?;
        let bound = self.bind(&channel).await;
        close_channel(&channel, "sentinel planted").await;
        bound
    }
}

/// Declares the topology again and binds every agent of `agents` whose
/// queue exists to `fleetls.agents` again.
pub async fn repair(
    connection: &Connection,
    queue_type: QueueType,
    damage: Damage,
    agents: &[Uuid],
) -> Result<Repair, BusError> {
    let channel = open(connection).await?;
    fleetls_bus::amqp::declare_topology(&channel, queue_type).await?;
    close_channel(&channel, "topology declared").await;
    let rebound = rebind(connection, agents).await?;
    Ok(Repair {
        missing: damage.0,
        rebound: rebound.consumed + rebound.idle,
        queue_gone: rebound.gone,
    })
}

/// What [`rebind`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rebound {
    /// Queues bound again that an agent consumes: it binds its queue before
    /// it consumes, so a message to it that came back unrouted means a
    /// broker user removed the binding.
    pub consumed: usize,
    /// Queues bound again that nobody consumes (an agent may be between
    /// declaring and binding its own: nothing is claimed).
    pub idle: usize,
    /// Agents whose queue is gone (declared again at their next connection).
    pub gone: usize,
    /// The agents whose queue was bound again.
    pub agents: Vec<Uuid>,
}

/// Binds the queue of each of `agents` that exists to `fleetls.agents`
/// again (idempotent), looking first whether it exists and is consumed.
pub async fn rebind(connection: &Connection, agents: &[Uuid]) -> Result<Rebound, BusError> {
    let mut rebound = Rebound::default();
    let mut channel = None;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::durable()
    };
    for agent in agents {
        let probe = match channel.take() {
            Some(c) => c,
            None => open(connection).await?,
        };
        let queue = topology::agent_queue(agent);
        let Ok(found) = probe
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        else {
            // Closed by the 404: the next agent gets a new channel.
            rebound.gone += 1;
            continue;
        };
        probe
            .queue_bind(
                queue.as_str().into(),
                topology::AGENTS.into(),
                agent.to_string().as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("binding an agent's queue again"))?;
        if found.consumer_count() > 0 {
            rebound.consumed += 1;
        } else {
            rebound.idle += 1;
        }
        rebound.agents.push(*agent);
        channel = Some(probe);
    }
    if let Some(channel) = channel {
        close_channel(&channel, "agents' queues bound again").await;
    }
    Ok(rebound)
}
