//! The parent's side of RabbitMQ: connecting (with backoff), declaring the
//! design's topology, publishing with confirms, and dead-lettering.

use std::time::Duration;

use fleetls_proto::{topology, Envelope, CONTENT_TYPE};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// A failure talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// An AMQP operation failed.
    #[error("{what}: {source}")]
    Amqp {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused (nacked) a published message.
    #[error("the broker refused or could not route a message to {0}")]
    Nacked(String),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] fleetls_proto::EncodeError),
    /// The broker URL cannot be read (said without its password).
    #[error("{0}")]
    Url(String),
}

/// Wraps a lapin error with what was being done.
pub fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> BrokerError {
    move |source| BrokerError::Amqp { what, source }
}

/// The largest AMQP frame the parent asks for, unless its broker URL names
/// its own `frame_max` (see [`fleetls_proto::broker_uri`]): 2 MiB of
/// buffers for its connection instead of 8. The parent's messages are a few
/// KiB (a certificate chain at most).
pub const FRAME_MAX: lapin::types::FrameSize = 32 * 1024;

/// Parses a broker URL (`amqp://` or `amqps://`) and caps its frame size at
/// [`FRAME_MAX`] when it does not say `frame_max=` itself.
pub fn connection_uri(url: &str) -> Result<lapin::uri::AMQPUri, BrokerError> {
    fleetls_proto::broker_uri(url, FRAME_MAX).map_err(BrokerError::Url)
}

/// Opens a named connection.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(connection_uri(url)?, properties)
        .await
        .map_err(amqp("connecting to the broker"))
}

/// The delay before reconnect attempt `attempt` (0-based): exponential from
/// 200 ms to 10 s, with full jitter so a fleet does not come back in step.
pub fn backoff(attempt: u32) -> Duration {
    let cap_ms = (200u64 << attempt.min(6)).min(10_000);
    Duration::from_millis(cap_ms / 2 + rand::random_range(0..=cap_ms / 2))
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

/// Declares the exchanges and queues of the design (idempotent).
pub async fn declare_topology(channel: &Channel) -> Result<(), BrokerError> {
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
    let queue = QueueDeclareOptions::durable();
    channel
        .queue_declare(topology::DEAD.into(), queue, FieldTable::default())
        .await
        .map_err(amqp("declaring fleetls.dead"))?;
    channel
        .queue_bind(
            topology::DEAD.into(),
            topology::DEAD.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("binding fleetls.dead"))?;
    channel
        .queue_declare(topology::PARENT.into(), queue, queue_arguments())
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

/// A channel with publisher confirms on.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
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

/// The AMQP properties of a fleetls message.
pub fn properties(envelope: &Envelope, expiration: Option<Duration>) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_type(envelope.body.kind().into())
        .with_message_id(envelope.id.to_string().as_str().into())
        .with_delivery_mode(2)
        .with_timestamp(envelope.at / 1000);
    if let Some(re) = envelope.re {
        props = props.with_correlation_id(re.to_string().as_str().into());
    }
    if let Some(ttl) = expiration {
        props = props.with_expiration(ttl.as_millis().to_string().as_str().into());
    }
    props
}

/// Publishes many messages to agents, then waits for every confirm: the
/// broker works on them together instead of one round trip each. They are
/// published `mandatory`: every registered child declared its durable queue
/// when it connected, so a message the broker cannot route is an error, not
/// a silent drop. A message that could not be routed (the agent's queue was
/// deleted) goes to `fleetls.dead` with the reason; the agents concerned are
/// returned, and nothing else fails because of them.
pub async fn send_many(
    channel: &Channel,
    messages: Vec<(uuid::Uuid, Envelope, Option<Duration>)>,
) -> Result<Vec<uuid::Uuid>, BrokerError> {
    let mut confirms = Vec::with_capacity(messages.len());
    for (agent, envelope, expiration) in &messages {
        let payload = fleetls_proto::encode(envelope)?;
        let confirm = channel
            .basic_publish(
                topology::AGENTS.into(),
                agent.to_string().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &payload,
                properties(envelope, *expiration),
            )
            .await
            .map_err(amqp("publishing to an agent"))?;
        confirms.push((agent, confirm));
    }
    let mut unroutable = Vec::new();
    for (agent, confirm) in confirms {
        let confirm = confirm
            .await
            .map_err(amqp("waiting for a publisher confirm"))?;
        if confirm.is_nack() {
            return Err(BrokerError::Nacked(topology::agent_queue(agent)));
        }
        if let Some(returned) = confirm.take_message() {
            let reason = format!(
                "unroutable: the queue {} of this agent does not exist; it is recreated when the agent connects",
                topology::agent_queue(agent)
            );
            dead_letter(channel, &returned.data, &returned.properties, &reason).await?;
            unroutable.push(*agent);
        }
    }
    Ok(unroutable)
}

/// Republishes a rejected delivery to `fleetls.dead` with its reason in the
/// `x-fleetls-reason` header, and waits for the confirm. Only then may the
/// caller ack the original: the message is never lost.
pub async fn dead_letter(
    channel: &Channel,
    payload: &[u8],
    original: &BasicProperties,
    reason: &str,
) -> Result<(), BrokerError> {
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
    let confirm = channel
        .basic_publish(
            topology::DEAD.into(),
            ShortString::from(""),
            BasicPublishOptions::default(),
            payload,
            props,
        )
        .await
        .map_err(amqp("dead-lettering"))?
        .await
        .map_err(amqp("waiting for a dead-letter confirm"))?;
    if confirm.is_nack() {
        return Err(BrokerError::Nacked(topology::DEAD.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_size_is_capped_unless_the_url_names_one() {
        let uri = connection_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let uri = connection_uri("amqps://u:p@broker:5671/%2f?frame_max=131072").unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let Err(BrokerError::Url(why)) = connection_uri("amqp://guest:s3cret@/%2f?frame_max=x")
        else {
            panic!("a bad frame_max is accepted");
        };
        assert!(why.contains("not valid"), "{why}");
        assert!(!why.contains("s3cret"), "{why}");
    }
}
