//! Campaigns: one run of remote actions over many children (`verify`,
//! `reverify`), with at most `window` children acting at once.
//!
//! Everything lives in the registry, so a parent killed mid-campaign
//! resumes where it was: the engine re-sends the step to children that were
//! acting, a duplicate or late report is recorded once and changes nothing,
//! and every child ends in exactly one of passed, failed or did not
//! participate. The engine fills the window; reports move children forward
//! inside the transaction that records them.
//!
//! One operation a file: `enrolment` creates a campaign, `tick` is one
//! turn of the engine, `orders` says what a child is sent, `reports` what
//! its answers change, `pace` sets a broker switch's window, `results` are
//! what the status list shows. The SQL of all of them is the registry's
//! ([`crate::registry::campaigns`]); so are the states and kinds it stores
//! ([`crate::registry::campaign_states`]), re-exported here.

mod enrolment;
mod orders;
mod pace;
mod reports;
mod results;
#[cfg(test)]
mod test_support;
mod tick;

pub use crate::registry::campaign_states::{CampaignState, ChildState, ChildStep, Kind};
pub use crate::registry::campaigns::{
    last_results, latest, latest_of, progress, running, Progress,
};
pub use enrolment::{create, create_reissue, Enrolment};
pub use orders::{acting_command, BrokerSwitchParams, ReissueParams};
pub use pace::{adapt_window, Pace, BROKER_SWITCH_FIRST_WINDOW};
pub use reports::{on_report, on_single_report};
pub use results::{LastResult, StepResult};
pub use tick::{tick, Reach, Tick};

/// Default campaign deadline.
pub const DEFAULT_CAMPAIGN_TIMEOUT_SECS: u64 = 3600;
/// Default step deadline.
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 60;
