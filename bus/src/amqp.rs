//! RabbitMQ for both sides: named connections (plain and AMQPS) with a
//! capped frame size, the design's topology, publishing with confirms, and
//! dead-lettering with a reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetls_proto::{topology, Envelope, CONTENT_TYPE};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, FrameSize, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::brokers;
use crate::queue_type::QueueType;

pub use crate::error::{BusError, CONFIRM_DEADLINE};

/// Waits for a publisher confirm, at most [`CONFIRM_DEADLINE`]; `to` names
/// the destination in the error.
async fn confirmed(
    confirm: lapin::PublisherConfirm,
    what: &'static str,
    to: &str,
) -> Result<lapin::Confirmation, BusError> {
    match tokio::time::timeout(CONFIRM_DEADLINE, confirm).await {
        Ok(result) => result.map_err(amqp(what)),
        Err(_) => Err(BusError::Unconfirmed(to.to_owned())),
    }
}

/// Runs one broker operation (a publish, an ack) with a deadline of
/// [`CONFIRM_DEADLINE`]; `what` names it in the error
/// ([`BusError::NoAnswer`] when the broker does not answer in time).
pub async fn answered<T>(
    what: &'static str,
    operation: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(CONFIRM_DEADLINE, operation).await {
        Ok(result) => result.map_err(amqp(what)),
        Err(_) => Err(BusError::NoAnswer(what)),
    }
}

/// How long closing a channel or a connection may take: the close is a
/// courtesy to the broker, and a dead node never answers it.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// Closes a connection, waiting at most [`CLOSE_DEADLINE`] for the broker.
pub async fn close_connection(connection: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_DEADLINE, connection.close(200, reason.into())).await;
}

/// A connection that is closed when dropped: a task cut short (aborted, or
/// its future dropped by a timeout) keeps no connection open behind it —
/// lapin's connection lives on, heartbeats and all, until it is closed.
/// The close runs in the background, on the current runtime.
#[derive(Debug)]
pub struct ClosedOnDrop(Option<Connection>);

impl ClosedOnDrop {
    /// Takes charge of `connection`.
    pub fn new(connection: Connection) -> ClosedOnDrop {
        ClosedOnDrop(Some(connection))
    }

    /// The connection.
    pub fn get(&self) -> &Connection {
        self.0.as_ref().expect("held until taken or dropped")
    }

    /// Hands the connection back, no longer closed on drop.
    pub fn take(mut self) -> Connection {
        self.0.take().expect("held until taken or dropped")
    }
}

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        let Some(connection) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { close_connection(&connection, "cut short").await });
        }
    }
}

/// Closes a channel, waiting at most [`CLOSE_DEADLINE`] for the broker.
pub async fn close_channel(channel: &Channel, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_DEADLINE, channel.close(200, reason.into())).await;
}

/// Wraps a lapin error with what was being done.
pub fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> BusError {
    move |source| BusError::Amqp { what, source }
}

/// Parses a broker URL (`amqp://` or `amqps://`) and caps the frame size it
/// asks for at `frame_max` unless it names its own (see
/// [`fleetls_proto::broker_uri`]: lapin's buffers are sized by it).
pub fn connection_uri(url: &str, frame_max: FrameSize) -> Result<lapin::uri::AMQPUri, BusError> {
    fleetls_proto::broker_uri(url, frame_max).map_err(BusError::Url)
}

/// Opens a named plain connection to `url`, or to the first node that
/// answers when it is a comma-separated list (see [`crate::brokers`]).
pub async fn connect(url: &str, name: &str, frame_max: FrameSize) -> Result<Connection, BusError> {
    brokers::connect_any(url, |url| async move {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connect_uri(connection_uri(&url, frame_max)?, properties)
            .await
            .map_err(amqp("connecting to the broker"))
    })
    .await
}

/// The files an AMQPS connection needs: this agent's chain (leaf first)
/// and key, and the CAs the broker's certificate may chain to.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// PEM chain, leaf first.
    pub chain: &'a Path,
    /// PEM PKCS#8 private key.
    pub key: &'a Path,
    /// PEM CA bundles the broker must chain to (one of their
    /// certificates).
    pub ca: &'a [PathBuf],
}

/// Opens a named AMQPS connection presenting a client certificate, to
/// `url` or to the first node that answers when it is a comma-separated
/// list (see [`crate::brokers`]). A missing or unreadable file is an error
/// that names it (never an empty identity that the broker would refuse for
/// a reason nobody can see).
pub async fn connect_tls(
    url: &str,
    name: &str,
    frame_max: FrameSize,
    files: TlsFiles<'_>,
) -> Result<Connection, BusError> {
    brokers::connect_any(url, |url| connect_tls_one(url, name, frame_max, files)).await
}

async fn connect_tls_one(
    url: String,
    name: &str,
    frame_max: FrameSize,
    files: TlsFiles<'_>,
) -> Result<Connection, BusError> {
    let uri = connection_uri(&url, frame_max)?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| BusError::Tls(format!("{}: {e}", path.display())))
    };
    let mut ca = String::new();
    for path in files.ca {
        let text = String::from_utf8(read(path)?)
            .map_err(|_| BusError::Tls(format!("{} is not a PEM text file", path.display())))?;
        ca.push_str(text.trim_end());
        ca.push('\n');
    }
    let config = OwnedTLSConfig {
        identity: Some(OwnedIdentity::PKCS8 {
            pem: read(files.chain)?,
            key: read(files.key)?,
        }),
        cert_chain: Some(ca),
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(amqp("starting the AMQP runtime"))?;
    Connection::connect_uri_with_config(uri, properties, config, runtime)
        .await
        .map_err(amqp("connecting to the broker over AMQPS"))
}

/// A channel with publisher confirms on.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BusError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("turning on publisher confirms"))?;
    Ok(channel)
}

/// Arguments every fleetls queue carries.
pub fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(topology::DEAD.into()),
    );
    args
}

/// The design's three exchanges and their kinds.
fn exchanges() -> [(&'static str, ExchangeKind); 3] {
    [
        (topology::PARENT, ExchangeKind::Direct),
        (topology::AGENTS, ExchangeKind::Direct),
        (topology::DEAD, ExchangeKind::Fanout),
    ]
}

/// Declares the three exchanges of the design (idempotent).
pub async fn declare_exchanges(channel: &Channel) -> Result<(), BusError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in exchanges() {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await
            .map_err(amqp("declaring an exchange"))?;
    }
    Ok(())
}

/// Declares `fleetls.parent` (of type `queue_type`) and binds it: children
/// do it too, so that a Hello sent before the parent ever started waits for it.
pub async fn declare_parent_queue(
    channel: &Channel,
    queue_type: QueueType,
) -> Result<(), BusError> {
    declare_bound(
        channel,
        topology::PARENT,
        topology::PARENT,
        topology::PARENT,
        (queue_type, queue_type.shared(queue_arguments())),
    )
    .await
}

/// Everything a child needs before its own queue: the exchanges and the
/// parent's queue.
pub async fn declare_shared(channel: &Channel, queue_type: QueueType) -> Result<(), BusError> {
    declare_exchanges(channel).await?;
    declare_parent_queue(channel, queue_type).await
}

/// Makes sure, on a channel of its own, that what every child needs before
/// its own queue exists: the exchanges and the parent's queue (see
/// [`shared_confirm_channel`], which does the same on the channel a child
/// then uses).
pub async fn ensure_shared(connection: &Connection, queue_type: QueueType) -> Result<(), BusError> {
    let channel = shared_confirm_channel(connection, queue_type).await?;
    close_channel(&channel, "checked").await;
    Ok(())
}

/// A channel with publisher confirms (as [`confirm_channel`]) on a
/// connection where what every child needs before its own queue is known to
/// exist: the exchanges and the parent's queue. It looks first, on that
/// channel (passive declares, which need no permission and do not compare
/// arguments: the parent may have chosen another queue type for
/// `fleetls.parent`, a cluster's quorum one); only when something is
/// missing does it declare them, on a channel of their own — refused, on a
/// channel RabbitMQ closes, for a child connecting as the agents'
/// least-privilege user. Looking first keeps a session open of a fleet
/// whose topology is in place to one channel and no refusal: every channel
/// opened and closed is two events that RabbitMQ hands to every
/// statistics collector and to the event exchange, and a refused declare a
/// line in its log.
pub async fn shared_confirm_channel(
    connection: &Connection,
    queue_type: QueueType,
) -> Result<Channel, BusError> {
    let channel = confirm_channel(connection).await?;
    if shared_exist(&channel).await.is_ok() {
        return Ok(channel);
    }
    // A failed passive declare closed that channel.
    declare_missing(connection, queue_type).await?;
    confirm_channel(connection).await
}

/// Whether the exchanges and `fleetls.parent` exist (passive declares on
/// `channel`; the broker closes it when one does not).
async fn shared_exist(channel: &Channel) -> Result<(), lapin::Error> {
    let options = ExchangeDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    for (name, kind) in exchanges() {
        channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await?;
    }
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::durable()
    };
    channel
        .queue_declare(topology::PARENT.into(), options, FieldTable::default())
        .await
        .map(|_| ())
}

/// Declares the exchanges and `fleetls.parent` on a channel of their own,
/// after [`shared_exist`] found one missing (a broker started afresh, a
/// parent never started, an exchange a broker user deleted).
async fn declare_missing(connection: &Connection, queue_type: QueueType) -> Result<(), BusError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    let declared = declare_shared(&channel, queue_type).await;
    close_channel(&channel, "declared").await;
    declared
}

/// The whole topology, as the parent declares it: the exchanges,
/// `fleetls.dead` and `fleetls.parent`, both of type `queue_type`.
pub async fn declare_topology(channel: &Channel, queue_type: QueueType) -> Result<(), BusError> {
    declare_exchanges(channel).await?;
    declare_bound(
        channel,
        topology::DEAD,
        topology::DEAD,
        "",
        (queue_type, queue_type.shared(FieldTable::default())),
    )
    .await?;
    declare_parent_queue(channel, queue_type).await?;
    bind_dead_route(channel).await
}

/// Binds the `fleetls.dead` exchange to `fleetls.parent` by
/// [`topology::DEAD_ROUTE`] (idempotent): how children dead-letter.
pub async fn bind_dead_route(channel: &Channel) -> Result<(), BusError> {
    channel
        .exchange_bind(
            topology::DEAD.into(),
            topology::PARENT.into(),
            topology::DEAD_ROUTE.into(),
            lapin::options::ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("binding fleetls.dead to fleetls.parent"))
}

/// Declares one agent's durable queue (of type `queue_type`, its leader on
/// the agent's node for quorum), bound to `fleetls.agents` by its id.
pub async fn declare_agent_queue(
    channel: &Channel,
    id: &uuid::Uuid,
    queue_type: QueueType,
) -> Result<(), BusError> {
    let queue = topology::agent_queue(id);
    declare_bound(
        channel,
        &queue,
        topology::AGENTS,
        &id.to_string(),
        (queue_type, queue_type.agent(queue_arguments())),
    )
    .await
}

async fn declare_bound(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    (queue_type, arguments): (QueueType, FieldTable),
) -> Result<(), BusError> {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .map_err(|source| {
            match crate::queue_type::explain_mismatch(queue, queue_type, &source.to_string()) {
                Some(why) => BusError::QueueMismatch(why),
                None => amqp("declaring a queue")(source),
            }
        })?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("binding a queue"))
}

/// How the broker keeps a message (see DESIGN, "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// On disk until consumed (delivery mode 2): what a child tells the
    /// parent goes into the one durable queue `fleetls.parent` this way.
    Persistent,
    /// In memory only (delivery mode 1), dropped after `expiration`: the
    /// parent's commands. The registry is their durable copy; what a broker
    /// restart or an expiry loses, the parent sends again.
    Transient {
        /// How long the command may wait in the agent's queue.
        expiration: Duration,
    },
}

/// The AMQP properties of a fleetls message, kept as `keep` says, with the
/// signature headers of `sealed`.
pub fn properties(
    envelope: &Envelope,
    sealed: &crate::seal::Sealed,
    keep: Keep,
) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_type(envelope.body.kind().into())
        .with_message_id(envelope.id.to_string().as_str().into())
        .with_timestamp(envelope.at / 1000)
        .with_headers(sealed.headers());
    if let Some(re) = envelope.re {
        props = props.with_correlation_id(re.to_string().as_str().into());
    }
    match keep {
        Keep::Persistent => props.with_delivery_mode(2),
        Keep::Transient { expiration } => props
            .with_delivery_mode(1)
            .with_expiration(expiration.as_millis().max(1).to_string().as_str().into()),
    }
}

/// Publishes one message `mandatory` and waits for its confirm: a nack or
/// a message the broker could not route is an error.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), BusError> {
    let confirm = answered(
        "publishing",
        channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            properties,
        ),
    )
    .await?;
    let confirm = confirmed(confirm, "waiting for a publisher confirm", exchange).await?;
    if confirm.is_nack() || confirm.take_message().is_some() {
        return Err(BusError::Nacked(exchange.to_owned()));
    }
    Ok(())
}

/// One message for one agent: its id, the signed payload and its properties.
pub struct ToAgent {
    /// The agent (routing key of `fleetls.agents`).
    pub agent: uuid::Uuid,
    /// The sealed envelope.
    pub payload: Vec<u8>,
    /// Its AMQP properties (see [`properties`]).
    pub properties: BasicProperties,
}

/// How many publisher confirms [`send_many`] lets be outstanding: enough to
/// keep the broker busy, few enough that a big send holds a bounded number
/// of messages in the client's and the broker's buffers.
pub const CONFIRM_WINDOW: usize = 1024;

/// Publishes many messages to agents without waiting for each confirm in
/// turn: up to [`CONFIRM_WINDOW`] are outstanding, the oldest is awaited
/// when the window is full. They are published `mandatory`: every
/// registered agent declared its durable queue when it connected, so a
/// message the broker cannot route is not silently dropped; it goes to
/// `fleetls.dead` with the reason, the agents concerned are returned, and
/// nothing else fails because of them. A message the broker refuses (a
/// nack: the agent's queue cannot take it now, e.g. a quorum queue that
/// lost its majority with a cluster node) is not delivered either: its
/// agent is returned too, and the others go on — one unreachable queue
/// never holds up a send to the rest (the registry sends it again).
pub async fn send_many(
    channel: &Channel,
    messages: impl IntoIterator<Item = ToAgent>,
) -> Result<Vec<uuid::Uuid>, BusError> {
    let mut outstanding = std::collections::VecDeque::with_capacity(CONFIRM_WINDOW);
    let mut unroutable = Vec::new();
    for message in messages {
        if outstanding.len() == CONFIRM_WINDOW {
            if let Some(oldest) = outstanding.pop_front() {
                settle(channel, oldest, &mut unroutable).await?;
            }
        }
        let confirm = answered(
            "publishing to an agent",
            channel.basic_publish(
                topology::AGENTS.into(),
                message.agent.to_string().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.payload,
                message.properties,
            ),
        )
        .await?;
        outstanding.push_back((message.agent, confirm));
    }
    for pending in outstanding {
        settle(channel, pending, &mut unroutable).await?;
    }
    Ok(unroutable)
}

/// Waits for one confirm of [`send_many`]: a nack is an error, a returned
/// message is dead-lettered and its agent noted in `unroutable`.
async fn settle(
    channel: &Channel,
    (agent, confirm): (uuid::Uuid, lapin::PublisherConfirm),
    unroutable: &mut Vec<uuid::Uuid>,
) -> Result<(), BusError> {
    let confirm = confirmed(
        confirm,
        "waiting for a publisher confirm",
        &topology::agent_queue(&agent),
    )
    .await?;
    if confirm.is_nack() {
        tracing::warn!(queue = %topology::agent_queue(&agent), "the broker refused a message to this agent's queue (nack); it is sent again later");
        unroutable.push(agent);
        return Ok(());
    }
    if let Some(returned) = confirm.take_message() {
        let reason = format!(
            "unroutable: the queue {} of this agent does not exist; it is recreated when the agent connects",
            topology::agent_queue(&agent)
        );
        // A full fleetls.dead refuses it (counted by the broker's nack only):
        // the agent is returned and sent again all the same.
        let _ = dead_letter(channel, &returned.data, &returned.properties, &reason).await?;
        unroutable.push(agent);
    }
    Ok(())
}

/// Republishes a rejected delivery to `fleetls.dead` with its reason in the
/// `x-fleetls-reason` header, and waits for the confirm. Only then may the
/// caller ack the original: the message is never lost.
pub async fn dead_letter(
    channel: &Channel,
    payload: &[u8],
    original: &BasicProperties,
    reason: &str,
) -> Result<Kept, BusError> {
    let props = dead_properties(original, reason);
    let confirm = answered(
        "dead-lettering",
        channel.basic_publish(
            topology::DEAD.into(),
            ShortString::from(""),
            BasicPublishOptions::default(),
            payload,
            props,
        ),
    )
    .await?;
    let confirm = confirmed(confirm, "waiting for a dead-letter confirm", topology::DEAD).await?;
    if confirm.is_nack() {
        // Its bound reached (`overflow: reject-publish`): the broker keeps
        // what it holds — a flood cannot push the oldest evidence out — and
        // refuses the newest. The caller counts it and goes on: a dead
        // letter refused must not stall the messages behind it.
        tracing::warn!(reason = %reason, "fleetls.dead is full (its bound): this dead letter was refused by the broker and is only counted");
        return Ok(Kept::Refused);
    }
    Ok(Kept::Stored)
}

/// What became of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Confirmed in `fleetls.dead`.
    Stored,
    /// Refused by the broker: `fleetls.dead` is at its bound.
    Refused,
}

/// A child's dead letter: like [`dead_letter`], but published to the
/// `fleetls.parent` exchange with the routing key
/// [`topology::DEAD_ROUTE`], which the parent binds to `fleetls.dead` (and
/// bounds): the agents' least-privilege user may not publish to
/// `fleetls.dead` itself. When no binding takes it (a parent of an older
/// release), the copy is dropped with a warning — the child reports the
/// refusal to the parent anyway.
pub async fn dead_letter_via_parent(
    channel: &Channel,
    payload: &[u8],
    original: &BasicProperties,
    reason: &str,
) -> Result<(), BusError> {
    let props = dead_properties(original, reason);
    match publish_confirmed(
        channel,
        topology::PARENT,
        topology::DEAD_ROUTE,
        payload,
        props,
    )
    .await
    {
        Err(BusError::Nacked(_)) => {
            tracing::warn!(
                "a dead letter was not routed to fleetls.dead (the parent has not bound {} yet); dropped",
                topology::DEAD_ROUTE
            );
            Ok(())
        }
        other => other,
    }
}

/// The properties of a dead letter: the original's that matter, and the
/// reason in [`topology::REASON_HEADER`].
fn dead_properties(original: &BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        topology::REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    // A fresh set of properties: the original's expiration must not make the
    // dead letter expire out of fleetls.dead (which has no dead-letter exchange).
    if let Some(expiration) = original.expiration() {
        headers.insert(
            "x-fleetls-original-expiration".into(),
            AMQPValue::LongString(LongString::from(expiration.as_str())),
        );
    }
    let mut props = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(v) = original.content_type() {
        props = props.with_content_type(v.clone());
    }
    if let Some(v) = original.kind() {
        props = props.with_type(v.clone());
    }
    if let Some(v) = original.message_id() {
        props = props.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        props = props.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        props = props.with_timestamp(*v);
    }
    if let Some(v) = original.app_id() {
        props = props.with_app_id(v.clone());
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_size_is_capped_unless_the_url_names_one() {
        let uri = connection_uri("amqp://guest:guest@127.0.0.1:5672/%2f", 4096).unwrap();
        assert_eq!(uri.query.frame_max, Some(4096));
        let uri = connection_uri("amqps://u:p@broker:5671/%2f?frame_max=131072", 4096).unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
        assert_eq!(uri.authority.port, 5671);
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let Err(BusError::Url(why)) = connection_uri("amqp://guest:s3cret@/%2f?frame_max=x", 4096)
        else {
            panic!("a bad frame_max is accepted");
        };
        assert!(why.contains("not valid"), "{why}");
        assert!(!why.contains("s3cret"), "{why}");
    }
}
