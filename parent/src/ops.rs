//! The operator's operations on a serving parent, called by the admin API:
//! one module per family of commands (mini-redis's `cmd/`), each a set of
//! functions over the [`App`](crate::app::App) with its request and report
//! types. Every operation answers an [`OpError`].

mod agents;
mod broker_tls;
mod campaigns;
mod certs;
mod cut_off;
pub mod enroll;
mod revoke;
mod security;
mod settings;
mod without_ssl;

pub use self::agents::{
    agents_admit, agents_delete, agents_exclude, agents_list, AgentEntry, AgentsReport,
    AgentsRequest, ACCEPT_ALL_UNASKED, MAX_REASON,
};
pub use self::broker_tls::{broker_tls, final_fragment, BrokerTlsRequest};
pub use self::campaigns::{
    campaign_progress, start_campaign, CampaignPlan, CampaignRequest, CampaignStart,
};
pub use self::certs::{
    certs_generate, certs_reset, certs_send, GenerateReport, GenerateRequest, ResetReport,
    ResetRequest, SendReport, SendRequest,
};
pub use self::cut_off::remove_agent_users;
pub use self::revoke::{revoke, RevokeReport, RevokeRequest};
pub use self::security::{security_view, SecurityView};
pub use self::settings::{apply_tls_policy, settings_set, settings_show, SettingsView};
pub use self::without_ssl::{without_ssl, WithoutSsl, WithoutSslEntry};
pub use crate::campaign::{DEFAULT_CAMPAIGN_TIMEOUT_SECS, DEFAULT_STEP_TIMEOUT_SECS};
pub use crate::op_error::OpError;
