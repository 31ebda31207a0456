//! A child's last test result as the status list shows it: where it
//! stands in the test and what each of the two steps reported.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::registry::campaign_states::{ChildState, Kind};

/// One step's recorded result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepResult {
    /// Passed.
    pub ok: bool,
    /// The child's message.
    pub message: String,
    /// Why it failed.
    pub cause: Option<String>,
    /// When recorded (ms).
    pub at: u64,
}

/// A child's last campaign result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastResult {
    /// The campaign.
    pub campaign: Uuid,
    /// `verify` or `reverify`.
    pub kind: Kind,
    /// Where the child stands in it.
    pub state: ChildState,
    /// The step it is at or ended in.
    pub step: Option<String>,
    /// The last message.
    pub message: Option<String>,
    /// The cause of a failure.
    pub cause: Option<String>,
    /// When it started (ms).
    pub started_at: Option<u64>,
    /// When it ended (ms).
    pub finished_at: Option<u64>,
    /// Step 1, "certificate generation".
    pub cert_test: Option<StepResult>,
    /// Step 2, "connection over the SSL port".
    pub ssl_port: Option<StepResult>,
}
