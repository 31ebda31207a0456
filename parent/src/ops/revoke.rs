//! `revoke NAME`: an agent's certificates go on the revocation list, its
//! key is banned and it loses the broker.

use serde::{Deserialize, Serialize};

use super::agents::find_agent;
use super::cut_off::cut_off;
use crate::app::App;
use crate::op_error::{internal, OpError};

/// What `revoke` asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// The agent, by name or id.
    pub agent: String,
    /// Why (`key-compromise` by default).
    #[serde(default)]
    pub reason: Option<String>,
}

/// What `revoke` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeReport {
    /// The agent.
    pub name: String,
    /// Its id.
    pub id: uuid::Uuid,
    /// Certificates revoked.
    pub certificates: usize,
    /// Broker connections closed (when the parent has management).
    pub connections_closed: usize,
}

/// `revoke NAME`: every certificate of the agent goes on the CA's
/// revocation list (signed again, used by the SSL port at once, sent to the
/// local parents), its key is banned, its RabbitMQ user removed and its
/// broker connections closed.
pub async fn revoke(app: &App, request: &RevokeRequest) -> Result<RevokeReport, OpError> {
    let reason = request.reason.as_deref().unwrap_or("key-compromise");
    crate::pki::revocation_reason(reason).map_err(OpError::BadRequest)?;
    let agents = app.registry.agents().map_err(internal)?;
    let agent = find_agent(&agents, &request.agent)?;
    let registry = app.registry.clone();
    let (id, why) = (agent.id, reason.to_owned());
    let certificates = tokio::task::spawn_blocking(move || registry.revoke_agent(&id, &why))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    app.refresh_crl().await.map_err(OpError::Internal)?;
    let connections_closed = cut_off(app, &agent.id).await?;
    tracing::warn!(agent = %agent.id, reason, certificates, "agent revoked; its key is banned");
    app.campaign_changed.notify_one();
    Ok(RevokeReport {
        name: crate::admission::printable(&agent.name, 80),
        id: agent.id,
        certificates,
        connections_closed,
    })
}
