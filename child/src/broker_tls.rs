//! "Use SSL connection for RabbitMQ" on the child: open a new AMQPS
//! connection (the broker's certificate checked against the CA the parent
//! sent, this agent's certificate presented), consume its queue there,
//! report over it — and only then let the plain connection go. If any of it
//! fails before the deadline, the child stays on plain and reports why.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleetls_bus::amqp::{BusError, ClosedOnDrop, TlsFiles};
use fleetls_proto::{BrokerAuth, BrokerSwitchReport, ToParent, UseBrokerTls};
use lapin::Connection;
use tracing::{info, warn};

use crate::certs::CertStore;
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
    let uri = uri_for(cmd);
    if already_moved(agent, &uri) {
        // The order sent again (its report was not seen in time): this
        // session is the AMQPS one already; say so over it.
        plain
            .send(agent, ToParent::BrokerSwitchReport(moved(cmd)), Some(re))
            .await?;
        return Ok(Obeyed::Done(Ok(())));
    }
    // Set once the AMQPS address is saved as this agent's broker.
    let committed = AtomicBool::new(false);
    let attempt = move_to_amqps(plain, agent, cmd, re, &uri, &committed);
    let why = match tokio::time::timeout(limit, attempt).await {
        Ok(Ok((connection, session))) => {
            info!(uri = %crate::config::redact(&uri), "moved to AMQPS");
            return Ok(Obeyed::MoveTo(Box::new(connection), Box::new(session)));
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no AMQPS connection within {limit:?}"),
    };
    if committed.load(Ordering::SeqCst) {
        if let Err(e) = agent.update_state(|s| s.broker_tls_uri = None) {
            warn!(error = %e, "cannot save the plain state back");
        }
    }
    stay_plain(plain, agent, cmd, re, why).await
}

/// Whether this agent's broker is `uri`, over AMQPS, already.
fn already_moved(agent: &Agent, uri: &str) -> bool {
    agent
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .broker_tls_uri
        .as_deref()
        == Some(uri)
}

/// The report that says this agent is on AMQPS.
fn moved(cmd: &UseBrokerTls) -> BrokerSwitchReport {
    BrokerSwitchReport {
        campaign: cmd.campaign,
        tls: true,
        protocol: Some("TLS".into()),
        error: None,
    }
}

/// Stores the broker's CA, opens the AMQPS connection and reports over it;
/// the connection and its session once the report is confirmed.
/// `committed` is set once the AMQPS address is saved as this agent's
/// broker.
async fn move_to_amqps(
    plain: &Session,
    agent: &Agent,
    cmd: &UseBrokerTls,
    re: uuid::Uuid,
    uri: &str,
    committed: &AtomicBool,
) -> Result<(Connection, Session), SessionError> {
    let data_dir = &agent.config.data_dir;
    CertStore::new(data_dir)
        .store_broker_ca(&cmd.ca_pem)
        .map_err(|e| tls_error(e.to_string()))?;
    if !CertStore::new(data_dir).has_certificate() {
        return Err(tls_error("this agent has no certificate".into()));
    }
    let report = moved(cmd);
    // A broker node lost mid-move may take the report's confirmation
    // with it after the parent got the report. The AMQPS connection
    // itself worked, so try again (each try walks the whole address
    // list) until the deadline: a child the parent counted as moved
    // must not stay behind on plain. A connection refused outright
    // (certificate, CA, TLS) is an answer, not retried. Many children
    // lose that node at once: the waits are full jitter, short (the
    // move has its deadline).
    let delays =
        fleetls_bus::reconnect::Backoff::new(agent.config.reconnect_max.min(MOVE_RETRY_MAX));
    let mut attempt = 0u32;
    loop {
        let (connection, session) = open_and_commit(plain, agent, uri, committed).await?;
        // Report over the new connection: proof that it carries messages.
        let sent = session
            .send(
                agent,
                ToParent::BrokerSwitchReport(report.clone()),
                Some(re),
            )
            .await;
        match sent {
            Ok(()) => return Ok((connection.take(), session)),
            Err(e) => {
                warn!(error = %e, "the report over AMQPS was not confirmed; trying again");
                fleetls_bus::amqp::close_connection(&connection.take(), "move failed").await;
                tokio::time::sleep(delays.delay(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Opens the AMQPS connection and a session on it, and saves the AMQPS
/// address as this agent's broker (once: `committed`). The connection is
/// closed if the move's deadline cuts this try short.
async fn open_and_commit(
    plain: &Session,
    agent: &Agent,
    uri: &str,
    committed: &AtomicBool,
) -> Result<(ClosedOnDrop, Session), SessionError> {
    let name =
        fleetls_proto::topology::child_connection_name(&agent.identity.id, &agent.identity.name);
    // Closed if the move's deadline cuts this try short.
    let connection = ClosedOnDrop::new(connect(&agent.config.data_dir, uri, &name).await?);
    let session = match Session::open(connection.get(), agent, plain.shutdown()).await {
        Ok(session) => session,
        Err(e) => {
            fleetls_bus::amqp::close_connection(&connection.take(), "move failed").await;
            return Err(e);
        }
    };
    // Saved before it is announced: once the parent may count this
    // agent as moved, its next connection is AMQPS, even when this
    // task is cut short (a process killed, a swarm group torn down
    // with its node) between the report and the move. AMQPS worked
    // already: the connection is up and the queue consumed.
    if !committed.load(Ordering::SeqCst) {
        if let Err(e) = agent.update_state(|s| s.broker_tls_uri = Some(uri.to_owned())) {
            fleetls_bus::amqp::close_connection(&connection.take(), "state not saved").await;
            return Err(tls_error(format!("cannot save the AMQPS state: {e}")));
        }
        committed.store(true, Ordering::SeqCst);
    }
    Ok((connection, session))
}

/// The longest wait between two tries of a move whose report was not
/// confirmed: the move must fit in its deadline.
const MOVE_RETRY_MAX: Duration = Duration::from_secs(5);

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
