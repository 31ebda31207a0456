//! An agent loses the broker: its own RabbitMQ user goes and its
//! connections are closed (after `revoke`, `agents reject`, `agents delete`).

use crate::app::App;
use crate::op_error::OpError;

/// An agent's RabbitMQ user goes and its connections are closed (when the
/// parent has management); how many connections.
pub(crate) async fn cut_off(app: &App, agent: &uuid::Uuid) -> Result<usize, OpError> {
    let Some(management) = &app.config.management else {
        return Ok(0);
    };
    // Which connections first: deleting the user makes RabbitMQ close its
    // connections itself, and the user must be gone before they are closed,
    // or the agent could log in again in between.
    let connections = crate::management::agent_connections(management, agent)
        .await
        .map_err(OpError::Unavailable)?;
    crate::management::delete_agent_user(management, agent)
        .await
        .map_err(OpError::Unavailable)?;
    // Close what is left; one RabbitMQ is closing already may answer an
    // error, so what counts is that none is left within a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = crate::management::agent_connections(management, agent)
            .await
            .map_err(OpError::Unavailable)?;
        if left.is_empty() {
            return Ok(connections.len());
        }
        let closed = crate::management::close_connections(management, &left).await;
        if std::time::Instant::now() > deadline {
            return Err(OpError::Unavailable(format!(
                "the agent's broker connections are still open after 10 s ({}); run `revoke` again",
                closed.err().unwrap_or_else(|| left.join(", "))
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// After `agents reject`: the rejected agents' own RabbitMQ users go (when
/// the parent has management), so their certificates no longer log in.
pub async fn remove_agent_users(app: &App, agents: &[uuid::Uuid]) -> Result<(), OpError> {
    if !agents.is_empty() {
        app.refresh_crl().await.map_err(OpError::Internal)?;
    }
    for agent in agents {
        cut_off(app, agent).await?;
    }
    Ok(())
}
