//! `broker-tls`: what the broker needs for AMQPS (its certificate, key, the
//! CA and the rabbitmq.conf fragments), and whether the post-migration
//! fragment may close plain AMQP.

use std::path::PathBuf;

use fleetls_proto::AgentKind;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::broker_switch::{AmqpsListener, BrokerNode, BrokerTlsFiles};
use crate::op_error::{internal, OpError};
use crate::status::ssl_capable;

/// What `broker-tls` asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerTlsRequest {
    /// The folder to write into, on the parent's machine.
    pub out: PathBuf,
    /// The AMQPS port (default 5671).
    #[serde(default)]
    pub amqps_port: Option<u16>,
    /// The addresses it binds to, `;`-separated (default: the broker IPs
    /// of the settings).
    #[serde(default)]
    pub amqps_bind: Option<String>,
    /// Cluster nodes given a certificate and a folder of their own,
    /// `LABEL=NAME;NAME;IP` each.
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// `broker-tls`: writes the broker's certificate, key, the CA and the
/// rabbitmq.conf fragments into `request.out` (a folder of its own for each
/// cluster node); the post-migration fragment only when it cuts nobody off.
pub fn broker_tls(app: &App, request: &BrokerTlsRequest) -> Result<BrokerTlsFiles, OpError> {
    let Some(pki) = app.pki() else {
        return Err(OpError::Refused(
            "there are no certificates yet: run `certs generate` first".into(),
        ));
    };
    let nodes = parse_nodes(&request.nodes)?;
    let listener = AmqpsListener::new(
        request.amqps_port,
        request.amqps_bind.as_deref(),
        &app.settings().broker_ips,
    )
    .map_err(OpError::BadRequest)?;
    let final_fragment = final_fragment(app)?;
    crate::broker_switch::write_broker_files(
        &app.config.data_dir,
        &pki,
        &request.out,
        &listener,
        &nodes,
        &final_fragment,
    )
    .map_err(OpError::BadRequest)
}

/// The `--node` flags, each label given once.
fn parse_nodes(texts: &[String]) -> Result<Vec<BrokerNode>, OpError> {
    let mut nodes: Vec<BrokerNode> = Vec::new();
    for text in texts {
        let node = BrokerNode::parse(text).map_err(OpError::BadRequest)?;
        if nodes.iter().any(|n| n.label == node.label) {
            return Err(OpError::BadRequest(format!(
                "--node: the label {:?} is given twice: give each node its own",
                node.label
            )));
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// What the post-migration broker configuration may do: closing plain AMQP
/// is refused while an accepted agent that is not kept on plain by
/// decision is not on AMQPS (it would lose the broker: a child not moved
/// yet, an mPOS device without its imported certificate, an old version);
/// agents kept on plain by decision keep the plain listener open.
pub fn final_fragment(app: &App) -> Result<crate::broker_switch::FinalFragment, OpError> {
    use crate::broker_switch::FinalFragment;
    let min = app.config.min_ssl_version;
    let mut cut_off = Vec::new();
    let mut kept_plain = Vec::new();
    let active_since = app.active_since();
    for a in app.registry.agents().map_err(internal)? {
        if a.admission != crate::registry::Admission::Accepted || a.broker_tls {
            continue;
        }
        if a.last_seen < active_since {
            // Not heard for --stale-after: not waited for (a fake of open
            // enrollment, a till gone for good), but named in the log.
            tracing::warn!(
                agent = %a.id,
                name = %crate::admission::printable(&a.name, 80),
                "not waited for by the final broker step: not heard for --stale-after; it loses plain AMQP"
            );
            continue;
        }
        let name = crate::admission::printable(&a.name, 80);
        if let Some(reason) = &a.excluded {
            kept_plain.push(format!("{name}: {reason}"));
            continue;
        }
        let why = if a.kind == AgentKind::Mpos && !a.has_certificate {
            "mPOS without its certificate: export it and `fleetls-child import` it on the device"
                .to_owned()
        } else if !ssl_capable(&a.version, min) {
            format!(
                "version {} does not support SSL: update it, or `agents exclude` it",
                a.version
            )
        } else {
            "not on AMQPS yet: `switch-broker` (see `without-ssl`)".to_owned()
        };
        cut_off.push(format!("{name}: {why}"));
    }
    Ok(if cut_off.is_empty() {
        FinalFragment::Write { kept_plain }
    } else {
        FinalFragment::Refuse { cut_off }
    })
}
