//! Which queue type the parent declares `fleetls.parent` and `fleetls.dead`
//! with, and why: `--queue-type` when given; otherwise the type
//! `fleetls.parent` already has (a queue cannot change type); otherwise
//! quorum when RabbitMQ management lists more than one node (a cluster),
//! classic for one node or without management. Decided once at start
//! ([`choose`]), logged, and shown in `status` (`network.queue_type`).

use fleetls_bus::queue_type::QueueType;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::ServeConfig;

/// The queue type chosen and the reason, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueChoice {
    /// `classic` or `quorum`.
    #[serde(rename = "type")]
    pub queue_type: String,
    /// Why, in a sentence an operator can act on.
    pub why: String,
}

/// What management said at start, for [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The parent has no `--management`.
    NoManagement,
    /// Management did not answer, or answered something unreadable.
    Failed(String),
    /// Management answered.
    Seen {
        /// How many nodes `/api/nodes` lists.
        nodes: usize,
        /// The type of `fleetls.parent` when it exists.
        existing: Option<QueueType>,
    },
}

/// The decision, without I/O: `given` (`--queue-type`) wins; then the type
/// of an existing `fleetls.parent`; then the number of nodes.
pub fn decide(given: Option<QueueType>, observed: &Observed) -> (QueueType, String) {
    if let Some(given) = given {
        return (given, format!("given with --queue-type {given}"));
    }
    match observed {
        Observed::NoManagement => (
            QueueType::Classic,
            "the default without --management, which would tell a cluster \
             (on a cluster give --queue-type quorum)"
                .into(),
        ),
        Observed::Failed(why) => (
            QueueType::Classic,
            format!(
                "the default: RabbitMQ management could not tell whether the broker is a \
                 cluster ({why}); on a cluster give --queue-type quorum"
            ),
        ),
        Observed::Seen {
            existing: Some(existing),
            nodes,
        } => {
            let mut why = format!(
                "fleetls.parent exists as a {existing} queue and a queue cannot change type"
            );
            if *existing == QueueType::Classic && *nodes > 1 {
                why.push_str(&format!(
                    " (management lists {nodes} nodes: for quorum queues stop the parent \
                     and the agents, let fleetls.parent and fleetls.dead drain, delete them \
                     and start again)"
                ));
            }
            (*existing, why)
        }
        Observed::Seen {
            nodes,
            existing: None,
        } if *nodes > 1 => (
            QueueType::Quorum,
            format!(
                "RabbitMQ management lists {nodes} nodes: a cluster, where fleetls.parent \
                 and fleetls.dead must survive losing a node"
            ),
        ),
        Observed::Seen { nodes, .. } => (
            QueueType::Classic,
            format!("RabbitMQ management lists {nodes} node: one node, no cluster"),
        ),
    }
}

/// Asks management (when the parent has it and `--queue-type` is not
/// given) and decides; logs the choice and its reason once.
pub async fn choose(config: &ServeConfig) -> (QueueType, QueueChoice) {
    let observed = match (&config.queue_type, &config.management) {
        (Some(_), _) => Observed::NoManagement,
        (None, None) => Observed::NoManagement,
        (None, Some(management)) => observe(management, &config.broker).await,
    };
    if let Observed::Failed(why) = &observed {
        warn!(error = %why, "cannot ask RabbitMQ management whether the broker is a cluster");
    }
    let (queue_type, why) = decide(config.queue_type, &observed);
    info!(queue_type = %queue_type, why = %why, "queue type of fleetls.parent and fleetls.dead");
    (
        queue_type,
        QueueChoice {
            queue_type: queue_type.to_string(),
            why,
        },
    )
}

/// The node count and the type of `fleetls.parent` in the vhost of the
/// first `--broker` address (a cluster's nodes share their vhosts).
async fn observe(management: &crate::config::Management, broker: &str) -> Observed {
    let nodes: Vec<serde_json::Value> =
        match crate::management::get_json(management, "/api/nodes?columns=name").await {
            Ok(nodes) => nodes,
            Err(why) => return Observed::Failed(why),
        };
    let vhost = fleetls_bus::brokers::split(broker)[0]
        .parse::<lapin::uri::AMQPUri>()
        .map(|u| u.vhost)
        .unwrap_or_else(|_| "/".into());
    let path = format!(
        "/api/queues/{}/fleetls.parent?columns=name,type",
        crate::management::encode_vhost(&vhost)
    );
    let existing = match crate::management::send(management, |client, node| {
        Ok(client.get(format!("{}{path}", node.base)))
    })
    .await
    {
        Err(why) => return Observed::Failed(why),
        Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => None,
        Ok(response) if response.status().is_success() => {
            match response.json::<serde_json::Value>().await {
                Ok(queue) => match queue["type"].as_str().map(str::parse::<QueueType>) {
                    Some(Ok(kind)) => Some(kind),
                    _ => {
                        return Observed::Failed(format!(
                            "fleetls.parent has a type fleetls does not know: {}",
                            queue["type"]
                        ))
                    }
                },
                Err(e) => return Observed::Failed(format!("unreadable answer to {path}: {e}")),
            }
        }
        Ok(response) => {
            return Observed::Failed(format!("management refused {path}: {}", response.status()))
        }
    };
    Observed::Seen {
        nodes: nodes.len(),
        existing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_wins_over_what_management_shows() {
        let cluster = Observed::Seen {
            nodes: 3,
            existing: None,
        };
        let (kind, why) = decide(Some(QueueType::Classic), &cluster);
        assert_eq!(kind, QueueType::Classic);
        assert!(why.contains("--queue-type classic"), "{why}");
    }

    #[test]
    fn a_cluster_gets_quorum_and_one_node_classic() {
        let (kind, why) = decide(
            None,
            &Observed::Seen {
                nodes: 3,
                existing: None,
            },
        );
        assert_eq!(kind, QueueType::Quorum);
        assert!(why.contains("3 nodes") && why.contains("cluster"), "{why}");
        let (kind, why) = decide(
            None,
            &Observed::Seen {
                nodes: 1,
                existing: None,
            },
        );
        assert_eq!(kind, QueueType::Classic);
        assert!(why.contains("1 node"), "{why}");
    }

    #[test]
    fn an_existing_queue_keeps_its_type_and_says_how_to_change_it() {
        let (kind, why) = decide(
            None,
            &Observed::Seen {
                nodes: 3,
                existing: Some(QueueType::Classic),
            },
        );
        assert_eq!(kind, QueueType::Classic);
        assert!(
            why.contains("cannot change type") && why.contains("delete"),
            "{why}"
        );
        let (kind, _) = decide(
            None,
            &Observed::Seen {
                nodes: 1,
                existing: Some(QueueType::Quorum),
            },
        );
        assert_eq!(kind, QueueType::Quorum);
    }

    #[test]
    fn without_an_answer_it_is_classic_and_says_what_to_give() {
        for observed in [
            Observed::NoManagement,
            Observed::Failed("connection refused".into()),
        ] {
            let (kind, why) = decide(None, &observed);
            assert_eq!(kind, QueueType::Classic);
            assert!(why.contains("--queue-type quorum"), "{why}");
        }
    }
}
