//! `without-ssl`: "Show child agents without SSL" — not switched to SSL,
//! and not connected to RabbitMQ over TLS by the broker's own view.

use fleetls_proto::AgentKind;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::config::{Management, Version};
use crate::op_error::{internal, OpError};
use crate::registry::Agent;
use crate::status::ssl_capable;

/// The two lists of "Show child agents without SSL".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WithoutSsl {
    /// Eligible children not switched to SSL.
    pub not_switched: Vec<WithoutSslEntry>,
    /// Children not connected to RabbitMQ over TLS, by the broker's own view.
    pub not_on_tls: Vec<WithoutSslEntry>,
    /// Whether the second list comes from RabbitMQ management (else it is empty).
    pub broker_view: bool,
}

/// One child in a "without SSL" list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WithoutSslEntry {
    /// Its id.
    pub id: uuid::Uuid,
    /// Its name.
    pub name: String,
    /// Why it is in the list.
    pub why: String,
}

/// "Show child agents without SSL": not switched; not on AMQPS per RabbitMQ.
pub async fn without_ssl(app: &App) -> Result<WithoutSsl, OpError> {
    let agents = app.registry.agents().map_err(internal)?;
    let mut out = WithoutSsl {
        not_switched: not_switched(&agents, app.config.min_ssl_version),
        not_on_tls: Vec::new(),
        broker_view: false,
    };
    let Some(management) = &app.config.management else {
        return Ok(out);
    };
    out.not_on_tls = not_on_tls(app, management, &agents).await?;
    out.broker_view = true;
    Ok(out)
}

/// The first list: children not switched to SSL, and mPOS devices not on
/// AMQPS, each with why (for mPOS, what the operator does next).
fn not_switched(agents: &[Agent], min: Version) -> Vec<WithoutSslEntry> {
    let mut out = Vec::new();
    for a in agents {
        if a.kind == AgentKind::Mpos && !a.broker_tls {
            // The manual path: say what the operator has to do next.
            let why = if let Some(reason) = &a.excluded {
                format!("excluded: {reason}")
            } else if !a.has_certificate {
                format!(
                    "mPOS: cannot send a CSR; export its identity (`fleetls-parent export --agent {} --out DIR`) \
                     and install it on the device (`fleetls-child import --pfx FILE --password-file F`)",
                    a.id
                )
            } else {
                "mPOS: holds its imported certificate; `switch-broker` moves it to AMQPS".into()
            };
            out.push(WithoutSslEntry {
                id: a.id,
                name: a.name.clone(),
                why,
            });
            continue;
        }
        if a.kind != AgentKind::Mpos && !a.ssl {
            let why = if let Some(reason) = &a.excluded {
                format!("excluded: {reason}")
            } else if !ssl_capable(&a.version, min) {
                format!("version {} does not support SSL", a.version)
            } else if !a.has_certificate {
                "no certificate".into()
            } else {
                "not switched".into()
            };
            out.push(WithoutSslEntry {
                id: a.id,
                name: a.name.clone(),
                why,
            });
        }
    }
    out
}

/// The second list: agents not connected over TLS by RabbitMQ
/// management's own view, each with why (from its last broker switch
/// report, when it stayed on plain).
async fn not_on_tls(
    app: &App,
    management: &Management,
    agents: &[Agent],
) -> Result<Vec<WithoutSslEntry>, OpError> {
    // A cluster's nodes share their vhosts: the first address names it.
    let vhost = fleetls_bus::brokers::split(&app.config.broker)[0]
        .parse::<lapin::uri::AMQPUri>()
        .map(|u| u.vhost)
        .ok();
    let connections = crate::management::connections(management, vhost.as_deref())
        .await
        .map_err(OpError::Unavailable)?;
    let by_agent = crate::management::by_agent(connections);
    // Why a child stayed on plain, from its last broker switch report.
    let reasons: std::collections::HashMap<String, String> = app
        .registry
        .with_db(crate::registry::campaigns::broker_switch_failures)
        .map(|failures| failures.into_iter().collect())
        .map_err(internal)?;
    let mut out = Vec::new();
    for a in agents {
        let why = match by_agent.get(&a.id) {
            Some(c) if c.ssl => continue,
            _ if a.excluded.is_some() => format!(
                "excluded: {}",
                a.excluded.as_deref().unwrap_or_default()
            ),
            Some(c) => match reasons.get(&a.id.to_string()) {
                Some(reason) => format!(
                    "connected over plain AMQP (port {}); {reason}",
                    c.port.unwrap_or(0)
                ),
                None => format!("connected over plain AMQP (port {})", c.port.unwrap_or(0)),
            },
            None => "not in RabbitMQ's connection list: offline, inside a swarm connection, or not yet seen (management refreshes every few seconds)".into(),
        };
        out.push(WithoutSslEntry {
            id: a.id,
            name: a.name.clone(),
            why,
        });
    }
    Ok(out)
}
