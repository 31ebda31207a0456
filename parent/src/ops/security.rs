//! `security`: the security events the parent recorded.

use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::op_error::{internal, OpError};

/// What `fleetls-parent security` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityView {
    /// Events recorded, by kind.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// The newest events of each kind (at most 50 a kind), newest first.
    pub recent: Vec<crate::registry::SecurityEvent>,
}

/// The security events.
pub fn security_view(app: &App) -> Result<SecurityView, OpError> {
    Ok(SecurityView {
        counts: app
            .registry
            .security_counts()
            .map_err(internal)?
            .into_iter()
            .collect(),
        recent: app.registry.security_events(50).map_err(internal)?,
    })
}
