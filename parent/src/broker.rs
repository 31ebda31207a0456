//! The parent's side of RabbitMQ: its frame size, its connections (plain
//! and AMQPS with its own certificate), and how it signs and sends what
//! agents are owed. The mechanics are `fleetls_bus::amqp`, shared with the
//! child.

use std::path::Path;
use std::time::Duration;

use fleetls_bus::amqp::{Keep, TlsFiles, ToAgent};
use fleetls_bus::seal::SigningKey;
use fleetls_proto::{Envelope, ToChild};
use lapin::{Channel, Connection};
use tracing::warn;
use uuid::Uuid;

pub use fleetls_bus::amqp::{
    amqp, confirm_channel, dead_letter, declare_topology, BusError as BrokerError,
};

/// A message to send to one agent once the transaction is committed.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The agent.
    pub agent: Uuid,
    /// What to send: only a command can be.
    pub body: ToChild,
    /// The message it answers.
    pub re: Option<Uuid>,
}

/// The largest AMQP frame the parent asks for, unless its broker URL names
/// its own `frame_max` (see [`fleetls_proto::broker_uri`]): 2 MiB of
/// buffers for its connection instead of 8. The parent's messages are a few
/// KiB (a certificate chain at most).
pub const FRAME_MAX: lapin::types::FrameSize = 32 * 1024;

/// Parses a broker URL with the parent's frame size cap.
pub fn connection_uri(url: &str) -> Result<lapin::uri::AMQPUri, BrokerError> {
    fleetls_bus::amqp::connection_uri(url, FRAME_MAX)
}

/// Opens a named plain connection.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    fleetls_bus::amqp::connect(url, name, FRAME_MAX).await
}

/// Opens an AMQPS connection presenting the parent's certificate toward the
/// broker and trusting what the broker's certificate may chain to.
pub async fn connect_tls(
    data_dir: &Path,
    url: &str,
    name: &str,
) -> Result<Connection, BrokerError> {
    let (chain, key) = crate::own::client_identity(data_dir);
    fleetls_bus::amqp::connect_tls(
        url,
        name,
        FRAME_MAX,
        TlsFiles {
            chain: &chain,
            key: &key,
            ca: &crate::own::broker_trust_files(data_dir),
        },
    )
    .await
}

/// Signs and publishes the messages agents are owed, transient: a command
/// with a deadline expires with it in the child's queue, any other after
/// [`fleetls_proto::COMMAND_TTL_MS`]; what is lost on the way is sent again
/// from the registry (`crate::owed`). Each envelope names its addressee
/// (`to`), so that it is valid only in that agent's queue. Answers that
/// cannot be routed are dead-lettered and logged; their agents are
/// returned.
pub async fn send_all(
    channel: &Channel,
    key: &SigningKey,
    outgoing: impl IntoIterator<Item = Outgoing>,
) -> Result<Vec<uuid::Uuid>, BrokerError> {
    // Sealed one by one as the confirm window lets them go: a send to a
    // whole network never holds every message at once.
    let mut failure = None;
    let messages = outgoing.into_iter().map_while(|out| {
        let now = fleetls_proto::now_ms();
        let expiration = match out.body.deadline() {
            Some(deadline) => deadline.saturating_sub(now),
            None => fleetls_proto::COMMAND_TTL_MS,
        };
        let mut envelope = Envelope::new(crate::PARENT_ID, out.body.into()).to(out.agent);
        envelope.re = out.re;
        match key.seal(&envelope) {
            Ok(sealed) => {
                let keep = Keep::Transient {
                    expiration: Duration::from_millis(expiration),
                };
                let properties = fleetls_bus::amqp::properties(&envelope, &sealed, keep);
                Some(ToAgent {
                    agent: out.agent,
                    payload: sealed.payload,
                    properties,
                })
            }
            Err(e) => {
                failure = Some(e);
                None
            }
        }
    });
    let unroutable = fleetls_bus::amqp::send_many(channel, messages).await?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    for agent in &unroutable {
        warn!(%agent, "a message did not reach the agent's queue (no queue: dead-lettered; or refused by the broker); the registry sends it again");
    }
    Ok(unroutable)
}
