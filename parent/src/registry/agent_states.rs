//! The words the agents table stores: an agent's admission. An enum bound
//! to SQL by its name; a name this build does not know is an error that
//! names it, never a default. [`crate::admission`] decides it and
//! re-exports it.

use serde::{Deserialize, Serialize};

/// Whether an agent may have certificates and take part in campaigns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Registered, waiting for an operator (or the auto-accept policy).
    Pending,
    /// Accepted: gets certificates, takes part in campaigns.
    #[default]
    Accepted,
    /// Refused by an operator: gets nothing, and its key cannot register again.
    Rejected,
}

impl Admission {
    /// The name stored in the registry and shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Pending => "pending",
            Admission::Accepted => "accepted",
            Admission::Rejected => "rejected",
        }
    }
}

impl std::str::FromStr for Admission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Admission::Pending),
            "accepted" => Ok(Admission::Accepted),
            "rejected" => Ok(Admission::Rejected),
            other => Err(format!("unknown admission state {other:?}")),
        }
    }
}
