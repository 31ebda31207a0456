//! The words the campaign tables store: a campaign's kind and state, a
//! child's state and step. Each is an enum bound to SQL and read back by
//! its name; a name this build does not know is an error that names it,
//! never a default. [`crate::campaign`] re-exports them.

use serde::{Deserialize, Serialize};

use fleetls_proto::Step;

/// Which campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Every eligible child holding a certificate (and an empty
    /// [`Progress`](super::campaigns::Progress)'s kind).
    #[default]
    Verify,
    /// Only the children whose last result was not a pass.
    Reverify,
    /// "Use SSL connection": the children that passed switch to SSL mode.
    Switch,
    /// "Force SSL Switchover": every eligible child switches, tested or not.
    ForceSwitch,
    /// "Use SSL connection for RabbitMQ": every switched child moves to AMQPS.
    SwitchBroker,
    /// A CA rotation: every agent gets a certificate from the new CA.
    Reissue,
}

impl Kind {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Verify => "verify",
            Kind::Reverify => "reverify",
            Kind::Switch => "switch",
            Kind::ForceSwitch => "force-switch",
            Kind::SwitchBroker => "switch-broker",
            Kind::Reissue => "reissue",
        }
    }

    /// Whether it is the two-step test.
    pub fn is_test(self) -> bool {
        matches!(self, Kind::Verify | Kind::Reverify)
    }

    /// The first (for switches, the only) step of a child.
    pub(crate) fn first_step(self) -> ChildStep {
        match self {
            Kind::Verify | Kind::Reverify => ChildStep::CertTest,
            Kind::Switch | Kind::ForceSwitch => ChildStep::UseSsl,
            Kind::SwitchBroker => ChildStep::UseBrokerTls,
            Kind::Reissue => ChildStep::Reissue,
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    /// A kind by its name; an unknown name is an error, never a default.
    fn from_str(text: &str) -> Result<Kind, String> {
        match text {
            "verify" => Ok(Kind::Verify),
            "reverify" => Ok(Kind::Reverify),
            "switch" => Ok(Kind::Switch),
            "force-switch" => Ok(Kind::ForceSwitch),
            "switch-broker" => Ok(Kind::SwitchBroker),
            "reissue" => Ok(Kind::Reissue),
            other => Err(format!(
                "unknown campaign kind {other:?}: verify, reverify, switch, force-switch, switch-broker or reissue"
            )),
        }
    }
}

/// Where a child stands in a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Enrolled, not started yet.
    #[default]
    Waiting,
    /// Counted in the window: a step was sent.
    Acting,
    /// Passed every step.
    Passed,
    /// Reported a failure.
    Failed,
    /// Did not answer, was offline, or the campaign ended first.
    DidNotParticipate,
}

impl ChildState {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Waiting => "waiting",
            ChildState::Acting => "acting",
            ChildState::Passed => "passed",
            ChildState::Failed => "failed",
            ChildState::DidNotParticipate => "did_not_participate",
        }
    }

    /// How a child that reported `ok` ends.
    pub(crate) fn ended(ok: bool) -> ChildState {
        if ok {
            ChildState::Passed
        } else {
            ChildState::Failed
        }
    }
}

impl std::str::FromStr for ChildState {
    type Err = String;

    fn from_str(text: &str) -> Result<ChildState, String> {
        [
            ChildState::Waiting,
            ChildState::Acting,
            ChildState::Passed,
            ChildState::Failed,
            ChildState::DidNotParticipate,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| format!("unknown child state {text:?}"))
    }
}

/// Where a campaign stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Children are still waiting or acting.
    #[default]
    Running,
    /// Every child ended.
    Finished,
    /// The campaign's deadline came first.
    TimedOut,
}

impl CampaignState {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Running => "running",
            CampaignState::Finished => "finished",
            CampaignState::TimedOut => "timed_out",
        }
    }
}

impl std::str::FromStr for CampaignState {
    type Err = String;

    fn from_str(text: &str) -> Result<CampaignState, String> {
        [
            CampaignState::Running,
            CampaignState::Finished,
            CampaignState::TimedOut,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| format!("unknown campaign state {text:?}"))
    }
}

/// The step a child is at (`campaign_children.step`) or reported
/// (`step_results.step`): the test's two steps, or the one step of a
/// switch, a broker switch or a re-issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildStep {
    /// Step 1 of a test, "certificate generation".
    CertTest,
    /// Step 2 of a test, "connection over the SSL port".
    SslPort,
    /// A switch to SSL mode.
    UseSsl,
    /// A move to AMQPS.
    UseBrokerTls,
    /// A certificate from a rotation's new CA.
    Reissue,
}

impl ChildStep {
    /// Its name in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildStep::CertTest => "cert-test",
            ChildStep::SslPort => "ssl-port",
            ChildStep::UseSsl => "use-ssl",
            ChildStep::UseBrokerTls => "use-broker-tls",
            ChildStep::Reissue => "reissue",
        }
    }
}

impl From<Step> for ChildStep {
    fn from(step: Step) -> ChildStep {
        match step {
            Step::CertTest => ChildStep::CertTest,
            Step::SslPort => ChildStep::SslPort,
        }
    }
}

impl std::str::FromStr for ChildStep {
    type Err = String;

    fn from_str(text: &str) -> Result<ChildStep, String> {
        [
            ChildStep::CertTest,
            ChildStep::SslPort,
            ChildStep::UseSsl,
            ChildStep::UseBrokerTls,
            ChildStep::Reissue,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| format!("unknown campaign step {text:?}"))
    }
}

/// Reads the enums above from the registry's text columns: a value this
/// build does not know is an error that names it, never a default.
macro_rules! text_column {
    ($($t:ty),*) => {$(
        impl rusqlite::types::FromSql for $t {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
    )*};
}
text_column!(Kind, ChildState, CampaignState, ChildStep);

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Kind, ChildState, CampaignState, ChildStep);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_reads_back_by_its_name_and_an_unknown_one_is_an_error() {
        for step in [
            ChildStep::CertTest,
            ChildStep::SslPort,
            ChildStep::UseSsl,
            ChildStep::UseBrokerTls,
            ChildStep::Reissue,
        ] {
            assert_eq!(step.as_str().parse::<ChildStep>(), Ok(step));
        }
        assert_eq!(ChildStep::from(Step::SslPort), ChildStep::SslPort);
        assert!("frobnicate"
            .parse::<ChildStep>()
            .unwrap_err()
            .contains("frobnicate"));
    }
}
