//! The fleetls wire protocol: one envelope, a body per message kind, MessagePack
//! with named fields so that a newer peer can add fields an older one ignores.
//!
//! This crate has no runtime and no broker client: it turns messages into bytes
//! and bytes into messages, and decoding never panics. A payload that is not
//! MessagePack, is cut short, carries a protocol version this build does not
//! speak or a body kind it does not know each gives its own [`DecodeError`].

#![deny(missing_docs)]

mod body;
mod codec;

pub use body::*;
pub use codec::{decode, encode, peek_kind, DecodeError, EncodeError};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The protocol version this build speaks and writes into every envelope.
pub const PROTOCOL_VERSION: u16 = 1;

/// The AMQP `content_type` of every fleetls message.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// The longest a command waits in an agent's queue (its `expiration` when
/// it has no deadline of its own), and how much older than the newest
/// command a child obeyed a command may be: ten minutes. Past that the
/// parent sends what is still owed again, from its registry.
pub const COMMAND_TTL_MS: u64 = 10 * 60 * 1000;

/// Names of the broker objects of the design's topology.
pub mod topology {
    /// Exchange (direct) and queue for every child → parent message.
    pub const PARENT: &str = "fleetls.parent";
    /// Exchange (direct, routing key = agent id) for parent → child messages.
    pub const AGENTS: &str = "fleetls.agents";
    /// Exchange (fanout) and queue for rejected messages.
    pub const DEAD: &str = "fleetls.dead";
    /// Routing key on the `fleetls.parent` exchange that the parent binds to
    /// the `fleetls.dead` exchange: children dead-letter through it, so that
    /// the agents' user needs no right to publish to `fleetls.dead`.
    pub const DEAD_ROUTE: &str = "fleetls.dead";
    /// Header naming why a message was dead-lettered.
    pub const REASON_HEADER: &str = "x-fleetls-reason";

    /// The durable queue of one agent.
    pub fn agent_queue(id: &uuid::Uuid) -> String {
        format!("fleetls.agent.{id}")
    }

    /// The prefix of every child's AMQP connection name.
    pub const CHILD_CONNECTION_PREFIX: &str = "fleetls-child:";

    /// The AMQP connection name of a child, as RabbitMQ management shows it:
    /// `fleetls-child:<id> (<name>)`, its display name beside its id (control
    /// characters left out, at most 64 characters of it).
    pub fn child_connection_name(id: &uuid::Uuid, name: &str) -> String {
        let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
        format!("{CHILD_CONNECTION_PREFIX}{id} ({shown})")
    }

    /// The agent id in a child's connection name (`fleetls-child:<id>`,
    /// with or without ` (<name>)` after it); `None` for any other name.
    /// The id alone identifies an agent: the display name is for people.
    pub fn child_of_connection_name(connection_name: &str) -> Option<uuid::Uuid> {
        let rest = connection_name.strip_prefix(CHILD_CONNECTION_PREFIX)?;
        let id = rest.split(' ').next()?;
        uuid::Uuid::parse_str(id).ok()
    }

    /// The AMQP connection name of the parent.
    pub const PARENT_CONNECTION_NAME: &str = "fleetls-parent";
}

/// One message on the wire: who sent it, when, in reply to what, and its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version; a receiver refuses a version it does not speak.
    pub v: u16,
    /// Unique id of this message: what an answer names in its `re`.
    pub id: Uuid,
    /// The message this one answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<Uuid>,
    /// The agent a command is addressed to (every parent → child command
    /// names it, and the signature covers it: a command copied into another
    /// agent's queue is refused there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Uuid>,
    /// The agent that sent it.
    pub from: Uuid,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub at: u64,
    /// The sender's replay counter, on every child → parent message: strictly
    /// increasing over all the messages one agent ever sends (across
    /// restarts, whatever its clock does). The parent keeps the highest it
    /// handled for each agent and drops any message not above it: a
    /// redelivery or a replay. 0 (not written) on parent → child commands
    /// and in the messages of releases before it, which the parent refuses.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// What it says.
    pub body: Body,
}

/// Whether `seq` is 0 (then it is not written).
fn is_zero(seq: &u64) -> bool {
    *seq == 0
}

impl Envelope {
    /// A new envelope of the current protocol version with a fresh id, stamped now.
    pub fn new(from: Uuid, body: Body) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id: Uuid::new_v4(),
            re: None,
            to: None,
            from,
            at: now_ms(),
            seq: 0,
            body,
        }
    }

    /// The same envelope carrying the replay counter `seq` (a child's).
    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    /// The same envelope addressed to agent `to`.
    pub fn to(mut self, to: Uuid) -> Self {
        self.to = Some(to);
        self
    }

    /// The same envelope marked as an answer to `re`.
    pub fn in_reply_to(mut self, re: Uuid) -> Self {
        self.re = Some(re);
        self
    }
}

/// The largest payload a fleetls message may have (a certificate chain is
/// a few KiB): anything bigger is refused unread, as too large.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks DNS name syntax (RFC 1123 labels, no wildcard, not an IP address):
/// the one rule for the parent's settings and a child's host names.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err("a DNS name has 1 to 253 characters".into());
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("this is an IP address: give it in the IP list".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label must have 1 to 63 characters".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "label {label:?} may hold only letters, digits and '-'"
            ));
        }
    }
    Ok(())
}

/// Parses a broker URL (`amqp://` or `amqps://`) and caps the AMQP frame
/// size it asks for at `frame_max` when it does not say `frame_max=` itself.
///
/// lapin keeps a receive and a send ring buffer of 32 frames each per
/// connection, zero-filled at the frame size agreed with the broker: left
/// to RabbitMQ (128 KiB), 8 MiB resident per connection. A message larger
/// than a frame is split into several. The error names the URL without its
/// password.
pub fn broker_uri(url: &str, frame_max: u32) -> Result<amq_protocol_uri::AMQPUri, String> {
    let mut parsed: amq_protocol_uri::AMQPUri = url.parse().map_err(|e: String| {
        // The parser may quote the URL: never its password.
        let safe = redact_url(url);
        format!(
            "the broker URL {safe} is not valid: {}",
            e.replace(url, &safe)
        )
    })?;
    parsed.query.frame_max.get_or_insert(frame_max);
    Ok(parsed)
}

/// A URL with any password replaced by `***`, for messages and logs (the
/// one rule for the parent and the child: no secret in a log line). A
/// comma-separated list (a cluster's nodes) is redacted element by element.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..scheme + 3 + colon], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}
