//! Which kind of RabbitMQ queue fleetls declares: classic (one node holds
//! it) or quorum (replicated over a cluster's nodes, survives losing one).
//! A queue cannot change type once it exists: a declare with another type
//! is refused by RabbitMQ, and [`explain_mismatch`] turns that refusal into
//! what the operator should do.

use std::fmt;
use std::str::FromStr;

use lapin::types::{AMQPValue, FieldTable};

/// The type of the queues fleetls declares (`--queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// RabbitMQ's classic queue, on the node that declared it: the right
    /// choice for one node.
    #[default]
    Classic,
    /// A quorum queue, replicated on the cluster's nodes; its leader moves
    /// to another node when its own is lost.
    Quorum,
}

impl QueueType {
    /// The value of `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    /// `arguments` with this type for a shared queue (`fleetls.parent`,
    /// `fleetls.dead`). Classic adds nothing, so that queues declared before
    /// this setting existed stay equivalent.
    pub fn shared(self, mut arguments: FieldTable) -> FieldTable {
        if self == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }

    /// `arguments` with this type for an agent's own queue: a quorum queue
    /// gets its leader on the node the agent is connected to
    /// (`x-queue-leader-locator: client-local`, RabbitMQ 3.10 and later).
    /// A classic one is left as it always was: `x-queue-master-locator`
    /// would make every existing agent queue inequivalent, and a classic
    /// queue is created on the node of the connection that declares it
    /// anyway (RabbitMQ's default locator).
    pub fn agent(self, arguments: FieldTable) -> FieldTable {
        let mut arguments = self.shared(arguments);
        if self == QueueType::Quorum {
            arguments.insert(
                "x-queue-leader-locator".into(),
                AMQPValue::LongString("client-local".into()),
            );
        }
        arguments
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!(
                "unknown queue type {other:?}: use classic (one broker node) or quorum (a cluster)"
            )),
        }
    }
}

/// When RabbitMQ refused to declare `queue` as `wanted` because it exists
/// with other arguments (`inequivalent arg`), what to do about it; `None`
/// for any other error.
pub fn explain_mismatch(queue: &str, wanted: QueueType, refusal: &str) -> Option<String> {
    if !refusal.contains("inequivalent arg") {
        return None;
    }
    let other = match wanted {
        QueueType::Classic => QueueType::Quorum,
        QueueType::Quorum => QueueType::Classic,
    };
    Some(format!(
        "the queue {queue} exists with other arguments than a {wanted} queue of fleetls \
         (RabbitMQ: {refusal}); an existing queue cannot change type: run with \
         --queue-type {other} if that is the type it has, or stop the parent and the agents, \
         let the queue drain, delete it (rabbitmqctl delete_queue {queue}) and start again"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_parses_and_names_a_bad_value() {
        assert_eq!("quorum".parse::<QueueType>(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse::<QueueType>(), Ok(QueueType::Classic));
        let why = "Quorum".parse::<QueueType>().unwrap_err();
        assert!(
            why.contains("\"Quorum\"") && why.contains("classic"),
            "{why}"
        );
    }

    #[test]
    fn quorum_adds_its_type_and_a_local_leader_for_agents() {
        let shared = QueueType::Quorum.shared(FieldTable::default());
        assert!(shared.inner().contains_key("x-queue-type"));
        assert!(!shared.inner().contains_key("x-queue-leader-locator"));
        let agent = QueueType::Quorum.agent(FieldTable::default());
        assert!(agent.inner().contains_key("x-queue-leader-locator"));
        assert!(QueueType::Classic
            .agent(FieldTable::default())
            .inner()
            .is_empty());
    }

    #[test]
    fn a_type_mismatch_says_what_to_do() {
        let refusal = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'fleetls.parent' in vhost '/': received 'quorum' but current is 'classic'";
        let why = explain_mismatch("fleetls.parent", QueueType::Quorum, refusal).unwrap();
        assert!(why.contains("--queue-type classic"), "{why}");
        assert!(why.contains("delete_queue fleetls.parent"), "{why}");
        assert!(explain_mismatch("q", QueueType::Quorum, "NOT_FOUND").is_none());
    }
}
