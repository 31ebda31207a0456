//! RabbitMQ management's own view of the connections: which use TLS, by
//! connection name. The broker switch is checked against it instead of
//! trusting what the children say. On a cluster `--management` lists each
//! node's management: [`send`] asks the one that answered last and moves
//! on to the next when it does not answer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Management, ManagementNode};

/// How long a management node may take to accept a connection before the
/// next one is tried (a lost node's host may not refuse at once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Management {
    /// The base URL of the node that answered last (the next request starts
    /// there).
    pub fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.nodes.len();
        &self.nodes[i].base
    }
}

/// Sends the request `build` makes for one node to the node that answered
/// last, then to each other one in turn while a node does not answer (no
/// connection, a timeout, or a 5xx: a node that is shutting down or lost
/// its cluster). The first answer is returned, whatever its status, and its
/// node becomes the one asked first next time.
pub async fn send<F>(management: &Management, build: F) -> Result<reqwest::Response, String>
where
    F: Fn(&reqwest::Client, &ManagementNode) -> Result<reqwest::RequestBuilder, String>,
{
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot make an HTTP client for RabbitMQ management: {e}"))?;
    let count = management.nodes.len();
    let first = management.current.load(Ordering::Relaxed) % count;
    let mut failures = Vec::new();
    for step in 0..count {
        let i = (first + step) % count;
        let node = &management.nodes[i];
        let request = build(&client, node)?.basic_auth(&node.user, Some(&node.password));
        match request.send().await {
            Ok(response) if !response.status().is_server_error() || step + 1 == count => {
                management.current.store(i, Ordering::Relaxed);
                return Ok(response);
            }
            Ok(response) => failures.push(format!("{}: {}", node.base, response.status())),
            Err(e) => failures.push(format!("{}: {}", node.base, without_url(&e))),
        }
    }
    Err(format!(
        "RabbitMQ management does not answer ({}); check --management and that a node runs",
        failures.join("; ")
    ))
}

/// A reqwest error without the URL it carries (the base is named already).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Sends a GET of `path` (from `/api/...`) with [`send`] and reads the JSON
/// answer; a refusal names the path and what to check.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    management: &Management,
    path: &str,
) -> Result<T, String> {
    let response = send(management, |client, node| {
        Ok(client.get(format!("{}{path}", node.base)))
    })
    .await?;
    if !response.status().is_success() {
        return Err(format!(
            "RabbitMQ management refused {path}: {} (check --management and its credentials)",
            response.status()
        ));
    }
    response
        .json()
        .await
        .map_err(|e| format!("unreadable answer from RabbitMQ management to {path}: {e}"))
}

/// One connection as RabbitMQ sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BrokerConnection {
    /// `client_properties.connection_name`.
    pub name: String,
    /// Management's own name of the connection (what closes it).
    #[serde(default)]
    pub id: String,
    /// The virtual host.
    pub vhost: String,
    /// Whether it uses TLS.
    pub ssl: bool,
    /// The TLS version, e.g. `tlsv1.3`.
    pub ssl_protocol: Option<String>,
    /// The subject of the client certificate, if one was presented.
    pub peer_cert_subject: Option<String>,
    /// The broker port it came in on.
    pub port: Option<u16>,
    /// The broker node it is on (a cluster has several).
    #[serde(default)]
    pub node: Option<String>,
}

/// One connection as management lists it: only what fleetls reads (the
/// rest of each entry is skipped while parsing, not kept).
#[derive(Deserialize)]
struct RawConnection {
    name: String,
    #[serde(default)]
    vhost: String,
    #[serde(default)]
    ssl: bool,
    #[serde(default)]
    ssl_protocol: Option<String>,
    #[serde(default)]
    peer_cert_subject: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    client_properties: RawClientProperties,
}

#[derive(Default, Deserialize)]
struct RawClientProperties {
    #[serde(default)]
    connection_name: String,
}

/// The columns asked of management: with 10,000 agents on AMQPS the full
/// list is tens of MB of statistics fleetls never reads.
const CONNECTION_COLUMNS: &str =
    "name,vhost,ssl,ssl_protocol,peer_cert_subject,port,node,client_properties.connection_name";

/// Lists the connections of `vhost` (every vhost when `None`).
pub async fn connections(
    management: &Management,
    vhost: Option<&str>,
) -> Result<Vec<BrokerConnection>, String> {
    let path = match vhost {
        Some(vhost) => format!(
            "/api/vhosts/{}/connections?columns={CONNECTION_COLUMNS}",
            encode_vhost(vhost)
        ),
        None => format!("/api/connections?columns={CONNECTION_COLUMNS}"),
    };
    let raw: Vec<RawConnection> = get_json(management, &path).await?;
    Ok(raw
        .into_iter()
        .map(|c| BrokerConnection {
            id: c.name,
            name: c.client_properties.connection_name,
            vhost: c.vhost,
            ssl: c.ssl,
            ssl_protocol: c.ssl_protocol,
            peer_cert_subject: c.peer_cert_subject,
            port: c.port,
            node: c.node,
        })
        .collect())
}

/// The RabbitMQ permissions (configure, write, read) of one agent's own
/// user, once agents authenticate with their certificates: its own queue,
/// publishing to `fleetls.parent` (and dead-lettering to `fleetls.dead`),
/// binding from `fleetls.agents`. No other agent's queue, no exchange.
pub fn agent_permissions(agent: &uuid::Uuid) -> [String; 3] {
    let queue = format!(r"fleetls\.agent\.{}", agent.to_string().replace('-', r"\-"));
    [
        format!("^{queue}$"),
        // fleetls.dead: RabbitMQ checks write access to a queue's
        // dead-letter exchange when the queue is declared.
        format!(r"^(fleetls\.parent|fleetls\.dead|{queue})$"),
        format!(r"^(fleetls\.agents|{queue})$"),
    ]
}

/// Creates (or updates) the RabbitMQ user of one agent — named by its
/// certificate's CN, its id, with no password: it can only log in with its
/// certificate (SASL EXTERNAL) — and gives it [`agent_permissions`] on
/// `vhost` only.
pub async fn ensure_agent_user(
    management: &Management,
    vhost: &str,
    agent: &uuid::Uuid,
) -> Result<(), String> {
    let put = |path: String, body: serde_json::Value| async move {
        let response = send(management, |client, node| {
            Ok(client.put(format!("{}{path}", node.base)).json(&body))
        })
        .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "RabbitMQ management refused {path}: {} (its user needs the administrator tag)",
                response.status()
            ))
        }
    };
    put(
        format!("/api/users/{agent}"),
        serde_json::json!({ "password_hash": "", "tags": "" }),
    )
    .await?;
    let [configure, write, read] = agent_permissions(agent);
    put(
        format!("/api/permissions/{}/{agent}", encode_vhost(vhost)),
        serde_json::json!({ "configure": configure, "write": write, "read": read }),
    )
    .await
}

/// The most messages `fleetls.dead` keeps (then new ones are refused).
pub const DEAD_MAX_LENGTH: u64 = 100_000;
/// The most bytes `fleetls.dead` keeps (then new ones are refused).
pub const DEAD_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Bounds `fleetls.dead` on `vhost` with a policy (`fleetls-dead`): at most
/// [`DEAD_MAX_LENGTH`] messages and [`DEAD_MAX_BYTES`] — a broker user
/// flooding it with 4 MiB messages cannot fill the broker's disk or memory.
/// Past the bound the broker refuses what comes (`reject-publish`) and keeps
/// what it holds: a flood cannot push the oldest evidence out, and the
/// parent counts each dead letter refused
/// (`fleetls_dead_letters_refused_total`). A policy, not queue arguments:
/// the queue of an existing install keeps its arguments.
pub async fn bound_dead_queue(management: &Management, vhost: &str) -> Result<(), String> {
    let path = format!("/api/policies/{}/fleetls-dead", encode_vhost(vhost));
    let body = serde_json::json!({
        "pattern": "^fleetls\\.dead$",
        "apply-to": "queues",
        "priority": 10,
        "definition": {
            "max-length": DEAD_MAX_LENGTH,
            "max-length-bytes": DEAD_MAX_BYTES,
            "overflow": "reject-publish",
        },
    });
    let response = send(management, |client, node| {
        Ok(client.put(format!("{}{path}", node.base)).json(&body))
    })
    .await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "RabbitMQ management refused {path}: {} (its user needs the policymaker or administrator tag)",
            response.status()
        ))
    }
}

/// Removes the RabbitMQ user of one agent (none there is no error).
pub async fn delete_agent_user(management: &Management, agent: &uuid::Uuid) -> Result<(), String> {
    let response = send(management, |client, node| {
        Ok(client.delete(format!("{}/api/users/{agent}", node.base)))
    })
    .await?;
    match response.status() {
        s if s.is_success() || s == reqwest::StatusCode::NOT_FOUND => Ok(()),
        s => Err(format!(
            "RabbitMQ management refused to delete user {agent}: {s}"
        )),
    }
}

/// The connections RabbitMQ holds for one agent (by its connection name, on
/// every node and vhost): their management names.
pub async fn agent_connections(
    management: &Management,
    agent: &uuid::Uuid,
) -> Result<Vec<String>, String> {
    Ok(connections(management, None)
        .await?
        .into_iter()
        .filter(|c| {
            fleetls_proto::topology::child_of_connection_name(&c.name) == Some(*agent)
                && !c.id.is_empty()
        })
        .map(|c| c.id)
        .collect())
}

/// Closes connections by their management names; one already gone counts
/// as closed. How many.
pub async fn close_connections(management: &Management, names: &[String]) -> Result<usize, String> {
    let mut closed = 0;
    for name in names {
        let response = send(management, |client, node| {
            let mut url = reqwest::Url::parse(&node.base)
                .map_err(|e| format!("the management URL is not valid: {e}"))?;
            url.path_segments_mut()
                .map_err(|_| "the management URL cannot have a path".to_owned())?
                .pop_if_empty()
                .extend(["api", "connections", name.as_str()]);
            Ok(client
                .delete(url)
                .header("X-Reason", "fleetls: the agent's certificate was revoked"))
        })
        .await?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
            closed += 1;
        } else {
            return Err(format!(
                "RabbitMQ management refused to close {name}: {}",
                response.status()
            ));
        }
    }
    Ok(closed)
}

/// A vhost name as one segment of a management URL.
pub(crate) fn encode_vhost(vhost: &str) -> String {
    vhost.replace('%', "%25").replace('/', "%2F")
}

/// The children's own connections by agent id, read from their connection
/// names (an agent seen twice keeps its TLS one); other connections are
/// left out.
pub fn by_agent(connections: Vec<BrokerConnection>) -> HashMap<uuid::Uuid, BrokerConnection> {
    let mut out: HashMap<uuid::Uuid, BrokerConnection> = HashMap::new();
    for c in connections {
        let Some(agent) = fleetls_proto::topology::child_of_connection_name(&c.name) else {
            continue;
        };
        match out.get(&agent) {
            Some(existing) if existing.ssl && !c.ssl => {}
            _ => {
                out.insert(agent, c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_user_may_touch_its_own_queue_only() {
        let me = uuid::Uuid::new_v4();
        let [configure, write, read] = agent_permissions(&me);
        let queue = format!("fleetls.agent.{me}");
        let escaped = |s: &str| s.replace('.', r"\.").replace('-', r"\-");
        assert_eq!(configure, format!("^{}$", escaped(&queue)));
        assert!(write.contains(&escaped(&queue)) && write.contains(r"fleetls\.parent"));
        assert!(read.contains(r"fleetls\.agents|") && !read.contains(r"fleetls\.parent"));
        assert_eq!(encode_vhost("/"), "%2F");
    }

    #[test]
    fn connections_are_told_apart_by_the_id_in_their_name() {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let conn = |name: String, ssl: bool| BrokerConnection {
            id: format!("{name}-{ssl}"),
            name,
            vhost: "/".into(),
            ssl,
            ssl_protocol: None,
            peer_cert_subject: None,
            port: None,
            node: None,
        };
        let name_a = fleetls_proto::topology::child_connection_name(&a, "till (1)");
        let found = by_agent(vec![
            conn(name_a.clone(), true),
            conn(name_a, false),
            // An older child names itself without its display name.
            conn(format!("fleetls-child:{b}"), false),
            conn("fleetls-parent".into(), true),
            conn("fleetls-child:not-an-id (x)".into(), true),
        ]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[&a].ssl, "the TLS connection of an agent is kept");
        assert!(!found[&b].ssl);
    }
}
