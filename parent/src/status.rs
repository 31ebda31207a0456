//! The status view: the network's phase and counters, the campaign summary
//! and every agent, computed from the registry. `GET /api/status` serves it
//! and `fleetls-parent status` prints it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Version;
use crate::registry::{Agent, Registry, RegistryError};
use fleetls_proto::AgentKind;

/// What `status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Where the network stands and its counters.
    pub network: Network,
    /// The figures of the last campaign.
    pub summary: Summary,
    /// The newest campaign's progress.
    pub campaign: Option<crate::campaign::Progress>,
    /// Every agent.
    pub agents: Vec<AgentStatus>,
}

/// The network's phase and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// `plain`, `certificates`, `ssl` or `broker-tls`.
    pub phase: String,
    /// Registered agents.
    pub agents: usize,
    /// Agents heard from recently.
    pub online: usize,
    /// Agents not heard from recently.
    pub offline: usize,
    /// Children that can take part (SSL-capable and not mPOS).
    pub eligible: usize,
    /// Children holding a certificate.
    pub children_with_certificates: usize,
    /// Children switched to SSL.
    pub switched_to_ssl: usize,
    /// Children whose broker connection is AMQPS (by their own report).
    pub broker_tls: usize,
    /// The lowest SSL-capable version.
    pub min_ssl_version: String,
    /// Whether the CA and certificates were generated.
    pub certificates_generated: bool,
    /// The root CA fingerprint, once generated.
    pub ca_fingerprint: Option<String>,
    /// The SSL port, while it listens.
    pub ssl_port: Option<u16>,
}

/// The campaign summary (every figure a query over the registry).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Properly passed.
    pub passed: usize,
    /// Finished with errors.
    pub with_errors: usize,
    /// Did not participate (offline, silent, timed out).
    pub did_not_participate: usize,
    /// Version not supporting SSL.
    pub version_not_supporting_ssl: usize,
    /// mPOS devices (certificate by export).
    pub mpos: usize,
}

/// One agent in the status list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    /// Its id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Reported version.
    pub version: String,
    /// Site.
    pub location: Option<String>,
    /// DNS names.
    pub hostnames: Vec<String>,
    /// IP addresses.
    pub ips: Vec<String>,
    /// Heard from recently.
    pub online: bool,
    /// Last heard (ms since the epoch).
    pub last_seen: u64,
    /// Its version supports SSL.
    pub ssl_capable: bool,
    /// Holds a certificate.
    pub has_certificate: bool,
    /// In SSL mode.
    pub ssl: bool,
    /// Broker connection is AMQPS.
    pub broker_tls: bool,
    /// The last test result, if any.
    pub last_result: Option<crate::campaign::LastResult>,
    /// The last command this agent refused or was refused, and why.
    pub refusal: Option<String>,
}

/// Computes the status from the registry.
pub fn compute(
    registry: &Registry,
    min_ssl_version: Version,
    offline_after_ms: u64,
    ca_fingerprint: Option<&str>,
) -> Result<Status, RegistryError> {
    let now = fleetls_proto::now_ms();
    let agents = registry.agents()?;
    let mut refusals = registry.refusals()?;
    let (mut last, campaign) = registry.with_db(|db| {
        let last = crate::campaign::last_results(db)?;
        let campaign = match crate::campaign::latest(db)? {
            Some(id) => crate::campaign::progress(db, id)?,
            None => None,
        };
        Ok((last, campaign))
    })?;
    let list: Vec<AgentStatus> = agents
        .into_iter()
        .map(|a| {
            let refusal = refusals.remove(&a.id).map(|(reason, _)| reason);
            let last_result = last.remove(&a.id);
            AgentStatus {
                refusal,
                last_result,
                ..view(a, min_ssl_version, now, offline_after_ms)
            }
        })
        .collect();
    let count = |f: &dyn Fn(&AgentStatus) -> bool| list.iter().filter(|a| f(a)).count();
    let eligible = |a: &AgentStatus| a.ssl_capable && a.kind != AgentKind::Mpos;
    fn outcome(a: &AgentStatus) -> Option<&str> {
        a.last_result.as_ref().map(|r| r.state.as_str())
    }
    let online = count(&|a| a.online);
    let with_certs = count(&|a| eligible(a) && a.has_certificate);
    let switched = count(&|a| a.ssl);
    let broker_tls = count(&|a| a.broker_tls);
    let eligible_on_tls = count(&|a| eligible(a) && a.broker_tls);
    let eligible_count = count(&eligible);
    let phase = if eligible_count > 0 && eligible_on_tls == eligible_count {
        "broker-tls"
    } else if switched > 0 {
        "ssl"
    } else if with_certs > 0 {
        "certificates"
    } else {
        "plain"
    };
    Ok(Status {
        network: Network {
            phase: phase.into(),
            agents: list.len(),
            online,
            offline: list.len() - online,
            eligible: count(&eligible),
            children_with_certificates: with_certs,
            switched_to_ssl: switched,
            broker_tls,
            min_ssl_version: min_ssl_version.to_string(),
            certificates_generated: ca_fingerprint.is_some(),
            ssl_port: None,
            ca_fingerprint: ca_fingerprint.map(str::to_owned),
        },
        summary: Summary {
            passed: count(&|a| eligible(a) && outcome(a) == Some("passed")),
            with_errors: count(&|a| eligible(a) && outcome(a) == Some("failed")),
            did_not_participate: if campaign.is_some() {
                count(&|a| eligible(a) && !matches!(outcome(a), Some("passed" | "failed")))
            } else {
                0
            },
            version_not_supporting_ssl: count(&|a| !a.ssl_capable),
            mpos: count(&|a| a.kind == AgentKind::Mpos && a.ssl_capable),
        },
        campaign,
        agents: list,
    })
}

/// Whether a reported version supports SSL.
pub fn ssl_capable(version: &str, min: Version) -> bool {
    Version::parse(version).is_ok_and(|v| v >= min)
}

/// Whether an agent takes part in certificates and campaigns.
pub fn eligible(agent: &Agent, min: Version) -> bool {
    agent.kind != AgentKind::Mpos && ssl_capable(&agent.version, min)
}

fn view(agent: Agent, min: Version, now: u64, offline_after_ms: u64) -> AgentStatus {
    let ssl_capable = ssl_capable(&agent.version, min);
    AgentStatus {
        id: agent.id,
        online: now.saturating_sub(agent.last_seen) < offline_after_ms,
        last_seen: agent.last_seen,
        ssl_capable,
        name: agent.name,
        kind: agent.kind,
        version: agent.version,
        location: agent.location,
        hostnames: agent.hostnames,
        ips: agent.ips,
        has_certificate: agent.has_certificate,
        ssl: agent.ssl,
        broker_tls: agent.broker_tls,
        last_result: None,
        refusal: None,
    }
}
