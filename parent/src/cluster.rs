//! The broker as RabbitMQ management sees it when it is a cluster: each
//! node's health (running, memory and disk alarms) and which node each
//! agent's connection is on: plain data, and [`observe`], which reads it.
//! The task `tasks::cluster::watch` keeps it in the `App`, so that `status`,
//! the console and `/metrics` show it without waiting on management.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Management;

/// One broker node and how it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeHealth {
    /// The node's name, e.g. `rabbit@host`.
    pub name: String,
    /// Whether it runs (a lost node stays listed by the others, not running).
    pub running: bool,
    /// Its memory alarm is on: publishers on the whole cluster are blocked.
    pub mem_alarm: bool,
    /// Its disk alarm is on: publishers on the whole cluster are blocked.
    pub disk_free_alarm: bool,
    /// fleetls connections (parent, children, swarms) of this network on it.
    pub connections: usize,
    /// Agents connected to it with a connection of their own.
    pub agents: usize,
}

/// The cluster as last read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterView {
    /// Every node, by name.
    pub nodes: Vec<NodeHealth>,
    /// The node of each agent with a connection of its own (a swarm's
    /// children share theirs and are not listed).
    pub agents: BTreeMap<Uuid, String>,
    /// The node of the parent's own connection.
    pub parent: Option<String>,
    /// When the nodes were read, ms since the epoch.
    pub at: u64,
    /// When the connections (each node's counts, `agents`, `parent`) were
    /// read: less often than the nodes on a big fleet (see
    /// [`connections_wait`]).
    #[serde(default)]
    pub connections_at: u64,
    /// The management address that answered (of `--management`'s list).
    #[serde(default)]
    pub management: Option<String>,
}

/// The connections of the vhost as management listed them, and when.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    /// Every connection of the vhost.
    pub list: Vec<crate::management::BrokerConnection>,
    /// When they were read, ms since the epoch.
    pub at: u64,
}

/// Reads the nodes' health from management (a row per node: cheap).
pub async fn read_nodes(management: &Management) -> Result<Vec<serde_json::Value>, String> {
    crate::management::get_json(
        management,
        "/api/nodes?columns=name,running,mem_alarm,disk_free_alarm",
    )
    .await
}

/// Reads the connections of `vhost` from management. Not cheap at size:
/// management builds the list from every connection's statistics — 4.4 s
/// for 6,400 AMQPS connections on a loaded three-node cluster, most of one
/// node's scheduler while it runs.
pub async fn read_connections(
    management: &Management,
    vhost: Option<&str>,
) -> Result<Connections, String> {
    Ok(Connections {
        list: crate::management::connections(management, vhost).await?,
        at: fleetls_proto::now_ms(),
    })
}

/// How long to wait before listing the connections again after a list
/// that took `took`: [`NODES_EVERY`] at the least, and twenty times what
/// the last list took, so that the parent keeps management busy at most
/// 5% of the time however many agents are connected (at 30,000 the list
/// is read every few minutes, the nodes' health still every 10 s).
pub fn connections_wait(took: std::time::Duration) -> std::time::Duration {
    NODES_EVERY.max(took.saturating_mul(20))
}

/// How often the nodes' health is read.
pub const NODES_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The view of `nodes` (as [`read_nodes`] answered) and `connections`,
/// read from `management`.
pub fn observed(
    management: &Management,
    nodes: &[serde_json::Value],
    connections: &Connections,
) -> ClusterView {
    let mut view = view(nodes, &connections.list);
    view.connections_at = connections.at;
    view.management = Some(management.base().to_owned());
    view
}

/// The view made of management's `/api/nodes` answer and the connections.
fn view(
    nodes: &[serde_json::Value],
    connections: &[crate::management::BrokerConnection],
) -> ClusterView {
    let mut out = ClusterView {
        at: fleetls_proto::now_ms(),
        ..ClusterView::default()
    };
    let mut per_node: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in connections {
        let Some(node) = &c.node else { continue };
        let counts = per_node.entry(node.clone()).or_default();
        if c.name == fleetls_proto::topology::PARENT_CONNECTION_NAME {
            out.parent = Some(node.clone());
        }
        if !c.name.starts_with("fleetls-") {
            continue;
        }
        counts.0 += 1;
        let agent = fleetls_proto::topology::child_of_connection_name(&c.name);
        if let Some(agent) = agent {
            counts.1 += 1;
            out.agents.insert(agent, node.clone());
        }
    }
    for n in nodes {
        let Some(name) = n["name"].as_str() else {
            continue;
        };
        let (connections, agents) = per_node.get(name).copied().unwrap_or_default();
        out.nodes.push(NodeHealth {
            name: name.to_owned(),
            running: n["running"].as_bool().unwrap_or(false),
            mem_alarm: n["mem_alarm"].as_bool().unwrap_or(false),
            disk_free_alarm: n["disk_free_alarm"].as_bool().unwrap_or(false),
            connections,
            agents,
        });
    }
    out.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// How old management's figures are: the nodes read every 10 s by the
/// parent, the connections (`connections_at`, 0 when unknown) as often as
/// their cost allows ([`connections_wait`]), and management itself counts
/// connections every few seconds, so they lag what the agents did just now.
pub fn age_line(at: u64, connections_at: u64, now: u64) -> String {
    let connections = if connections_at == 0 || now.saturating_sub(connections_at) < 20_000 {
        String::new()
    } else {
        format!(
            ", its connections {} s ago (listed less often on a big fleet)",
            now.saturating_sub(connections_at) / 1000
        )
    };
    format!(
        "as RabbitMQ management showed it {} s ago{connections} (read every 10 s; management's own figures lag a few seconds more)",
        now.saturating_sub(at) / 1000
    )
}

/// The view as `fleetls-parent cluster` prints it: a line per node, then
/// each agent with its own connection and its node.
pub fn table(view: &ClusterView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        age_line(view.at, view.connections_at, fleetls_proto::now_ms())
    );
    for node in &view.nodes {
        let mut state = if node.running {
            "running"
        } else {
            "NOT RUNNING"
        }
        .to_owned();
        if node.mem_alarm {
            state.push_str(", MEMORY ALARM");
        }
        if node.disk_free_alarm {
            state.push_str(", DISK ALARM");
        }
        let parent = if view.parent.as_deref() == Some(node.name.as_str()) {
            "   (the parent is here)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{}: {state}   fleetls connections {}   agents {}{parent}",
            node.name, node.connections, node.agents
        );
    }
    let _ = writeln!(out, "{:<36} NODE", "AGENT");
    for (agent, node) in &view.agents {
        let _ = writeln!(out, "{agent:<36} {node}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::management::BrokerConnection;

    fn connection(name: &str, node: &str) -> BrokerConnection {
        BrokerConnection {
            name: name.into(),
            id: String::new(),
            vhost: "/".into(),
            ssl: false,
            ssl_protocol: None,
            peer_cert_subject: None,
            port: None,
            node: Some(node.into()),
        }
    }

    /// The list of connections, whose cost grows with the fleet, is read
    /// at most a twentieth of the time; the nodes' health every 10 s.
    #[test]
    fn the_connections_are_listed_at_most_a_twentieth_of_the_time() {
        use std::time::Duration;
        assert_eq!(connections_wait(Duration::from_millis(30)), NODES_EVERY);
        assert_eq!(
            connections_wait(Duration::from_millis(4_400)),
            Duration::from_secs(88)
        );
        assert_eq!(
            connections_wait(Duration::from_secs(20)),
            Duration::from_secs(400)
        );
        let now = 1_000_000_000;
        let fresh = age_line(now - 3_000, now - 13_000, now);
        assert!(
            fresh.starts_with("as RabbitMQ management showed it 3 s ago ("),
            "{fresh}"
        );
        let old = age_line(now - 3_000, now - 120_000, now);
        assert!(
            old.contains("showed it 3 s ago, its connections 120 s ago"),
            "{old}"
        );
    }

    #[test]
    fn nodes_carry_their_health_and_their_agents() {
        let nodes = serde_json::json!([
            {"name": "r@b", "running": false, "mem_alarm": null, "disk_free_alarm": null},
            {"name": "r@a", "running": true, "mem_alarm": true, "disk_free_alarm": false},
        ]);
        let agent = Uuid::new_v4();
        let connections = [
            connection("fleetls-parent", "r@a"),
            connection(
                &fleetls_proto::topology::child_connection_name(&agent, "till-1"),
                "r@a",
            ),
            connection("fleetls-swarm:0", "r@b"),
            connection("someone-else", "r@a"),
        ];
        let view = view(nodes.as_array().unwrap(), &connections);
        assert_eq!(view.parent.as_deref(), Some("r@a"));
        assert_eq!(view.agents.get(&agent).map(String::as_str), Some("r@a"));
        assert_eq!(
            view.nodes,
            [
                NodeHealth {
                    name: "r@a".into(),
                    running: true,
                    mem_alarm: true,
                    disk_free_alarm: false,
                    connections: 2,
                    agents: 1,
                },
                NodeHealth {
                    name: "r@b".into(),
                    running: false,
                    mem_alarm: false,
                    disk_free_alarm: false,
                    connections: 1,
                    agents: 0,
                },
            ]
        );
    }
}
