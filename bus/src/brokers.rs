//! Several broker addresses (the nodes of a RabbitMQ cluster) where one was
//! given before: `--broker` and the AMQPS address take a comma-separated
//! list. A list is checked element by element, and a client connects to the
//! first node that answers, starting with the one it reached last time and
//! going round the list: when its node is lost, the next session of the one
//! reconnect loop ([`crate::reconnect`]) lands on another node.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use lapin::uri::AMQPUri;

use crate::error::BusError;

/// How long one node may take to accept a connection before the next one
/// is tried (a node that hangs instead of refusing).
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The elements of a comma-separated list, trimmed (an empty one is kept,
/// so that [`check`] can name it).
pub fn split(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).collect()
}

/// Parses every address of `list` (`amqp://` or `amqps://`); the error
/// names the bad element by its position and text (without its password)
/// and says what is expected.
pub fn check(list: &str) -> Result<Vec<AMQPUri>, String> {
    let elements = split(list);
    let total = elements.len();
    elements
        .into_iter()
        .enumerate()
        .map(|(i, url)| {
            let which = if total == 1 {
                String::new()
            } else {
                format!("address {} of {total} ", i + 1)
            };
            if url.is_empty() {
                return Err(format!(
                    "{which}is empty: give the addresses separated by single commas, e.g. \
                     amqp://user:pass@node1:5672/%2f,amqp://user:pass@node2:5672/%2f"
                ));
            }
            url.parse::<AMQPUri>().map_err(|why| {
                let safe = fleetls_proto::redact_url(url);
                format!(
                    "{which}{safe} is not valid: {}; expected amqp://user:pass@host:5672/%2f",
                    why.replace(url, &safe)
                )
            })
        })
        .collect()
}

/// `list` with `f` applied to each address, joined again by commas.
pub fn map_each(list: &str, f: impl Fn(&str) -> String) -> String {
    split(list).into_iter().map(f).collect::<Vec<_>>().join(",")
}

/// `list` going round from the node `seed` picks (`seed` modulo the
/// number of nodes); a single address is returned as it is. The parent
/// gives each agent the AMQPS list starting where the agent's id says, so
/// a cluster's nodes share the agents' TLS connections: with every agent
/// starting at the first node, that node alone made every TLS handshake
/// (at 30,000 children on three nodes it fell behind by seconds per
/// connection while the other two idled).
pub fn starting_at(list: &str, seed: u128) -> String {
    let nodes = split(list);
    if nodes.len() < 2 {
        return list.to_owned();
    }
    let first = (seed % nodes.len() as u128) as usize;
    nodes[first..]
        .iter()
        .chain(&nodes[..first])
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// Per list, the position of the node reached last: the next connection
/// tries it first (a process's connections stay together) and goes round
/// from there.
static LAST_REACHED: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

fn last_reached(list: &str) -> usize {
    let map = LAST_REACHED.lock().unwrap_or_else(|p| p.into_inner());
    map.as_ref().and_then(|m| m.get(list)).copied().unwrap_or(0)
}

fn reached(list: &str, index: usize) {
    let mut map = LAST_REACHED.lock().unwrap_or_else(|p| p.into_inner());
    map.get_or_insert_with(HashMap::new)
        .insert(list.to_owned(), index);
}

/// Connects with `open` to the nodes of `list` in turn, from the one
/// reached last, each within [`NODE_CONNECT_TIMEOUT`]; returns the first
/// connection made. When none answers, the error names each node (without
/// its password) and why.
pub async fn connect_any<T, F, Fut>(list: &str, mut open: F) -> Result<T, BusError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let urls = split(list);
    if urls.len() == 1 {
        return open(list.trim().to_owned()).await;
    }
    let start = last_reached(list) % urls.len();
    let mut failures = Vec::with_capacity(urls.len());
    for step in 0..urls.len() {
        let index = (start + step) % urls.len();
        let url = urls[index];
        let failure = match tokio::time::timeout(NODE_CONNECT_TIMEOUT, open(url.to_owned())).await {
            Ok(Ok(connection)) => {
                if step > 0 {
                    tracing::info!(
                        node = %fleetls_proto::redact_url(url),
                        "connected to another node of the broker list"
                    );
                }
                reached(list, index);
                return Ok(connection);
            }
            // A bad address is the operator's to fix, not a node to skip.
            Err(_) => format!("no answer within {}s", NODE_CONNECT_TIMEOUT.as_secs()),
            Ok(Err(e @ BusError::Url(_))) => return Err(e),
            Ok(Err(e)) => e.to_string(),
        };
        failures.push(format!("{}: {failure}", fleetls_proto::redact_url(url)));
    }
    Err(BusError::NoNode(failures.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_seed_starts_the_list_at_its_node_and_goes_round() {
        let list = "amqps://a:5671/v, amqps://b:5671/v,amqps://c:5671/v";
        assert_eq!(
            starting_at(list, 0),
            "amqps://a:5671/v,amqps://b:5671/v,amqps://c:5671/v"
        );
        assert_eq!(
            starting_at(list, 4),
            "amqps://b:5671/v,amqps://c:5671/v,amqps://a:5671/v"
        );
        assert_eq!(
            starting_at(list, 2),
            "amqps://c:5671/v,amqps://a:5671/v,amqps://b:5671/v"
        );
        // Agents' ids spread evenly over the nodes.
        let mut first = HashMap::new();
        for _ in 0..3_000 {
            let started = starting_at(list, uuid::Uuid::new_v4().as_u128());
            *first.entry(split(&started)[0].to_owned()).or_insert(0) += 1;
        }
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(
            first.values().all(|n| (900..=1100).contains(n)),
            "{first:?}"
        );
        // One address: as it was given.
        assert_eq!(starting_at("amqps://a:5671/v", 7), "amqps://a:5671/v");
    }

    #[test]
    fn a_list_is_checked_element_by_element() {
        let uris = check("amqp://u:p@a:5672/%2f, amqp://u:p@b:5673/%2f").unwrap();
        assert_eq!(uris.len(), 2);
        assert_eq!(uris[1].authority.host, "b");
        assert_eq!(uris[1].authority.port, 5673);

        let why = check("amqp://u:p@a:5672/%2f,,amqp://u:p@c/%2f").unwrap_err();
        assert!(why.contains("address 2 of 3 is empty"), "{why}");

        let why = check("amqp://u:s3cret@a:5672/%2f,amqp://u:s3cret@b:notaport/%2f").unwrap_err();
        assert!(why.contains("address 2 of 2"), "{why}");
        assert!(why.contains("u:***@b:notaport"), "{why}");
        assert!(!why.contains("s3cret"), "{why}");
    }

    #[test]
    fn map_each_keeps_the_order() {
        let out = map_each("amqps://a:5671/%2f,amqps://b:5671/%2f", |u| {
            format!("{u}?x=1")
        });
        assert_eq!(out, "amqps://a:5671/%2f?x=1,amqps://b:5671/%2f?x=1");
    }

    #[tokio::test]
    async fn it_goes_round_from_the_node_reached_last() {
        let list = "amqp://g:g@n1:1/%2f,amqp://g:g@n2:2/%2f,amqp://g:g@n3:3/%2f";
        let up = |alive: &'static [&'static str]| {
            move |url: String| async move {
                match alive.iter().find(|n| url.contains(*n)) {
                    Some(n) => Ok(*n),
                    None => Err(BusError::Nacked(format!("{url} down"))),
                }
            }
        };
        assert_eq!(
            connect_any(list, up(&["n1", "n2", "n3"])).await.unwrap(),
            "n1"
        );
        // n1 lost: the next node of the list.
        assert_eq!(connect_any(list, up(&["n2", "n3"])).await.unwrap(), "n2");
        // n1 is back: the process stays where it is.
        assert_eq!(
            connect_any(list, up(&["n1", "n2", "n3"])).await.unwrap(),
            "n2"
        );
        // n2 lost too: round the end of the list.
        assert_eq!(connect_any(list, up(&["n1", "n3"])).await.unwrap(), "n3");
        assert_eq!(connect_any(list, up(&["n1"])).await.unwrap(), "n1");
        let Err(BusError::NoNode(why)) = connect_any(list, up(&[])).await else {
            panic!("no node up, yet connected");
        };
        assert!(
            why.contains("g:***@n1") && why.contains("g:***@n3"),
            "{why}"
        );
    }
}
