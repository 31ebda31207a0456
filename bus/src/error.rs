//! The error of every broker operation ([`BusError`]) and the deadline its
//! "no answer" cases name. Below both [`crate::amqp`] and
//! [`crate::brokers`]: each uses it, and neither is imported from here.

/// A failure talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// An AMQP operation failed.
    #[error("{what}: {source}")]
    Amqp {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused (nacked) a published message, or could not route it.
    #[error("the broker refused or could not route a message to {0}")]
    Nacked(String),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] fleetls_proto::EncodeError),
    /// The broker URL cannot be read (said without its password).
    #[error("{0}")]
    Url(String),
    /// The TLS material for AMQPS is missing or unusable.
    #[error("AMQPS: {0}")]
    Tls(String),
    /// No node of a broker list answered; each node and why.
    #[error("no node of the broker list answered: {0}")]
    NoNode(String),
    /// A queue exists with another type (or arguments) than asked for;
    /// what to do (see [`crate::queue_type::explain_mismatch`]).
    #[error("{0}")]
    QueueMismatch(String),
    /// The broker did not confirm a published message within
    /// [`CONFIRM_DEADLINE`]: the channel is not to be trusted any more (seen
    /// on a cluster after a node was killed); open the session again.
    #[error(
        "no publisher confirm within {secs} s for a message to {0}: the broker's channel is \
         stuck (a cluster node lost?); the connection is opened again",
        secs = CONFIRM_DEADLINE.as_secs()
    )]
    Unconfirmed(String),
    /// The broker did not answer an operation (named) within
    /// [`CONFIRM_DEADLINE`]: lapin can leave an operation pending for ever
    /// when its connection dies under it (amqp-rs/lapin#409: a publish that
    /// never returns once the node is gone), so every wait has a deadline
    /// and the session is opened again.
    #[error(
        "the broker did not answer ({0}) within {secs} s: the connection is not to be \
         trusted any more (a cluster node lost?); it is opened again",
        secs = CONFIRM_DEADLINE.as_secs()
    )]
    NoAnswer(&'static str),
}

impl BusError {
    /// Whether the connection is stuck (an operation or a confirm without
    /// an answer): the caller opens a new session instead of trying again
    /// on this one.
    pub fn is_stuck(&self) -> bool {
        matches!(self, BusError::Unconfirmed(_) | BusError::NoAnswer(_))
    }
}

/// How long a publisher confirm may take before the channel is given up
/// ([`BusError::Unconfirmed`]): every wait has a deadline.
pub const CONFIRM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
