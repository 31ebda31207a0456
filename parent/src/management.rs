//! RabbitMQ management's own view of the connections: which use TLS, by
//! connection name. The broker switch is checked against it instead of
//! trusting what the children say.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::Management;

/// One connection as RabbitMQ sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BrokerConnection {
    /// `client_properties.connection_name`.
    pub name: String,
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
}

/// Lists the connections of `vhost` (every vhost when `None`).
pub async fn connections(
    management: &Management,
    vhost: Option<&str>,
) -> Result<Vec<BrokerConnection>, String> {
    let url = match vhost {
        Some(vhost) => format!(
            "{}/api/vhosts/{}/connections",
            management.base,
            vhost.replace('/', "%2F")
        ),
        None => format!("{}/api/connections", management.base),
    };
    let response = reqwest::Client::new()
        .get(&url)
        .basic_auth(&management.user, Some(&management.password))
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            format!(
                "RabbitMQ management at {} does not answer: {e}",
                management.base
            )
        })?;
    if !response.status().is_success() {
        return Err(format!(
            "RabbitMQ management refused {url}: {} (check --management and its credentials)",
            response.status()
        ));
    }
    let raw: Vec<serde_json::Value> = response
        .json()
        .await
        .map_err(|e| format!("unreadable answer from RabbitMQ management: {e}"))?;
    Ok(raw
        .into_iter()
        .map(|c| BrokerConnection {
            name: c["client_properties"]["connection_name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            vhost: c["vhost"].as_str().unwrap_or_default().to_owned(),
            ssl: c["ssl"].as_bool().unwrap_or(false),
            ssl_protocol: c["ssl_protocol"].as_str().map(str::to_owned),
            peer_cert_subject: c["peer_cert_subject"].as_str().map(str::to_owned),
            port: c["port"].as_u64().map(|p| p as u16),
        })
        .collect())
}

/// The connections by name (a name seen twice keeps its TLS one).
pub fn by_name(connections: Vec<BrokerConnection>) -> HashMap<String, BrokerConnection> {
    let mut out: HashMap<String, BrokerConnection> = HashMap::new();
    for c in connections {
        match out.get(&c.name) {
            Some(existing) if existing.ssl && !c.ssl => {}
            _ => {
                out.insert(c.name.clone(), c);
            }
        }
    }
    out
}
