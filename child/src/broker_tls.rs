//! "Use SSL connection for RabbitMQ" on the child: open a new AMQPS
//! connection (the broker's certificate checked against the CA the parent
//! sent, this agent's certificate presented), consume its queue there,
//! report over it — and only then let the plain connection go. If any of it
//! fails before the deadline, the child stays on plain and reports why.

use std::path::Path;
use std::time::Duration;

use fleetls_bus::amqp::{BusError, TlsFiles};
use fleetls_proto::{BrokerAuth, BrokerSwitchReport, ToParent, UseBrokerTls};
use lapin::Connection;
use tracing::{info, warn};

use crate::certs::CertStore;
use crate::identity::write_atomic;
use crate::node::Agent;
use crate::session::{Obeyed, Session, SessionError, FRAME_MAX};

/// The CA the broker's certificate must chain to (given by the parent).
fn broker_ca_path(data_dir: &Path) -> std::path::PathBuf {
    CertStore::new(data_dir).broker_ca_path()
}

/// Opens an AMQPS connection with this agent's certificate.
pub async fn connect(data_dir: &Path, uri: &str, name: &str) -> Result<Connection, SessionError> {
    let store = CertStore::new(data_dir);
    let files = TlsFiles {
        chain: &store.chain_path(),
        key: &store.key_path(),
        ca: &[broker_ca_path(data_dir)],
    };
    Ok(fleetls_bus::amqp::connect_tls(uri, name, FRAME_MAX, files).await?)
}

/// The URI to use — each address of a cluster's list —, with
/// `auth_mechanism=external` when asked for.
fn uri_for(cmd: &UseBrokerTls) -> String {
    match cmd.auth {
        BrokerAuth::Plain => cmd.uri.clone(),
        BrokerAuth::External => fleetls_bus::brokers::map_each(&cmd.uri, |uri| {
            if uri.contains("auth_mechanism=") {
                uri.to_owned()
            } else {
                let sep = if uri.contains('?') { '&' } else { '?' };
                format!("{uri}{sep}auth_mechanism=external")
            }
        }),
    }
}

/// Carries out `UseBrokerTls` from the plain session `plain`.
pub async fn obey(
    plain: &Session,
    agent: &Agent,
    cmd: &UseBrokerTls,
    re: uuid::Uuid,
) -> Result<Obeyed, SessionError> {
    let left = cmd.deadline.saturating_sub(fleetls_proto::now_ms());
    let limit = Duration::from_millis(left.max(1_000));
    let data_dir = agent.config.data_dir.clone();
    let uri = uri_for(cmd);
    let already = agent
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .broker_tls_uri
        .as_deref()
        == Some(uri.as_str());
    if already {
        // The order sent again (its report was not seen in time): this
        // session is the AMQPS one already; say so over it.
        let report = BrokerSwitchReport {
            campaign: cmd.campaign,
            tls: true,
            protocol: Some("TLS".into()),
            error: None,
        };
        plain
            .send(agent, ToParent::BrokerSwitchReport(report), Some(re))
            .await?;
        return Ok(Obeyed::Done(Ok(())));
    }
    let name =
        fleetls_proto::topology::child_connection_name(&agent.identity.id, &agent.identity.name);
    let attempt = async {
        write_atomic(&broker_ca_path(&data_dir), cmd.ca_pem.as_bytes(), 0o644)
            .map_err(|e| tls_error(e.to_string()))?;
        if !CertStore::new(&data_dir).has_certificate() {
            return Err(tls_error("this agent has no certificate".into()));
        }
        let connection = connect(&data_dir, &uri, &name).await?;
        let session = Session::open(&connection, agent, plain.shutdown()).await?;
        let report = BrokerSwitchReport {
            campaign: cmd.campaign,
            tls: true,
            protocol: Some("TLS".into()),
            error: None,
        };
        // Report over the new connection: proof that it carries messages.
        session
            .send(agent, ToParent::BrokerSwitchReport(report), Some(re))
            .await?;
        Ok((connection, session))
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok((connection, session))) => {
            if let Err(e) = agent.update_state(|s| s.broker_tls_uri = Some(uri.clone())) {
                warn!(error = %e, "cannot save the AMQPS state; staying on plain");
                fleetls_bus::amqp::close_connection(&connection, "state not saved").await;
                return stay_plain(plain, agent, cmd, re, e.to_string()).await;
            }
            info!(uri = %crate::config::redact(&uri), "moved to AMQPS");
            Ok(Obeyed::MoveTo(Box::new(connection), Box::new(session)))
        }
        Ok(Err(e)) => stay_plain(plain, agent, cmd, re, e.to_string()).await,
        Err(_) => {
            let why = format!("no AMQPS connection within {limit:?}");
            stay_plain(plain, agent, cmd, re, why).await
        }
    }
}

async fn stay_plain(
    plain: &Session,
    agent: &Agent,
    cmd: &UseBrokerTls,
    re: uuid::Uuid,
    why: String,
) -> Result<Obeyed, SessionError> {
    warn!(error = %why, "cannot move to AMQPS; staying on plain AMQP");
    let report = BrokerSwitchReport {
        campaign: cmd.campaign,
        tls: false,
        protocol: None,
        error: Some(why),
    };
    plain
        .send(agent, ToParent::BrokerSwitchReport(report), Some(re))
        .await?;
    Ok(Obeyed::Done(Ok(())))
}

fn tls_error(why: String) -> SessionError {
    SessionError::Bus(BusError::Tls(why))
}
