//! Creating a campaign: its row and its children, enrolled waiting in the
//! order given.

use rusqlite::Transaction;
use uuid::Uuid;

use super::orders::{BrokerSwitchParams, ReissueParams};
use crate::registry::campaign_states::Kind;
use crate::registry::campaigns::{self, NewCampaign};
use crate::registry::RegistryError;

/// One child to enrol: the agent and where it tests its SSL connection.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The agent.
    pub agent: Uuid,
    /// Host of its SSL port test.
    pub host: String,
    /// Port of its SSL port test.
    pub port: u16,
}

/// Creates a campaign over `children` (in that order).
pub fn create(
    tx: &Transaction<'_>,
    kind: Kind,
    window: usize,
    timeout_ms: u64,
    step_timeout_ms: u64,
    children: &[Enrolment],
    broker: Option<&BrokerSwitchParams>,
) -> Result<Uuid, RegistryError> {
    let params_json = broker.map(|b| serde_json::to_string(b).unwrap_or_default());
    create_with(
        tx,
        kind,
        window,
        timeout_ms,
        step_timeout_ms,
        children,
        params_json,
    )
}

/// Creates a CA rotation's re-issue campaign over `children`.
pub fn create_reissue(
    tx: &Transaction<'_>,
    window: usize,
    timeout_ms: u64,
    step_timeout_ms: u64,
    children: &[Enrolment],
    params: &ReissueParams,
) -> Result<Uuid, RegistryError> {
    let json = serde_json::to_string(params).unwrap_or_default();
    create_with(
        tx,
        Kind::Reissue,
        window,
        timeout_ms,
        step_timeout_ms,
        children,
        Some(json),
    )
}

fn create_with(
    tx: &Transaction<'_>,
    kind: Kind,
    window: usize,
    timeout_ms: u64,
    step_timeout_ms: u64,
    children: &[Enrolment],
    params_json: Option<String>,
) -> Result<Uuid, RegistryError> {
    let id = Uuid::new_v4();
    let now = fleetls_proto::now_ms();
    campaigns::insert(
        tx,
        &NewCampaign {
            id,
            kind,
            window: window as i64,
            started_at: now as i64,
            deadline_at: now.saturating_add(timeout_ms) as i64,
            step_timeout_ms: step_timeout_ms as i64,
            params: params_json,
        },
    )?;
    campaigns::enrol(
        tx,
        id,
        children.iter().map(|c| (c.agent, c.host.as_str(), c.port)),
    )?;
    Ok(id)
}
