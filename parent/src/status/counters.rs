//! The status's counters: what each one counts, said once ([`Tally`]), and
//! the overview made of them.

use fleetls_proto::AgentKind;

use super::{AgentStatus, Network, Overview, Summary, ViewContext};
use crate::campaign::{ChildState, Progress};

/// Agents alike in everything the counters depend on, and how many of them
/// are online, certified, and so on.
#[derive(Debug, Clone, Default)]
struct Group {
    soonest_expiry: Option<i64>,
    admission: Option<crate::registry::Admission>,
    compromised: usize,
    ssl_capable: bool,
    mpos: bool,
    excluded: bool,
    agents: usize,
    online: usize,
    silent: usize,
    certified: usize,
    ssl: usize,
    broker_tls: usize,
    passed: usize,
    failed: usize,
}

impl Group {
    /// One agent as a group of one.
    fn of(agent: &AgentStatus) -> Group {
        let state = agent.last_result.as_ref().map(|r| r.state);
        Group {
            soonest_expiry: agent.certificate_not_after,
            admission: Some(agent.admission),
            compromised: agent.compromised.into(),
            ssl_capable: agent.ssl_capable,
            mpos: agent.kind == AgentKind::Mpos,
            excluded: agent.excluded.is_some(),
            agents: 1,
            online: agent.online.into(),
            silent: agent.silent.into(),
            certified: agent.has_certificate.into(),
            ssl: agent.ssl.into(),
            broker_tls: agent.broker_tls.into(),
            passed: (state == Some(ChildState::Passed)).into(),
            failed: (state == Some(ChildState::Failed)).into(),
        }
    }
}

/// The counters of the status, and the one place that says what each
/// counts: certificates, test results and AMQPS count for eligible children
/// (SSL-capable, not mPOS) only.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    agents: usize,
    online: usize,
    silent: usize,
    eligible: usize,
    eligible_certified: usize,
    switched: usize,
    broker_tls: usize,
    eligible_on_tls: usize,
    passed: usize,
    failed: usize,
    not_ssl_capable: usize,
    mpos: usize,
    excluded: usize,
    pending: usize,
    rejected: usize,
    compromised: usize,
    soonest_expiry: Option<i64>,
}

impl Tally {
    /// The counters of a list.
    pub(super) fn of(agents: &[AgentStatus]) -> Tally {
        let mut tally = Tally::default();
        for agent in agents {
            tally.add(&Group::of(agent));
        }
        tally
    }

    fn add(&mut self, group: &Group) {
        self.agents += group.agents;
        self.online += group.online;
        self.silent += group.silent;
        self.switched += group.ssl;
        self.broker_tls += group.broker_tls;
        self.compromised += group.compromised;
        self.soonest_expiry = match (self.soonest_expiry, group.soonest_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        use crate::registry::Admission;
        if group.admission == Some(Admission::Pending) {
            self.pending += group.agents;
        } else if group.admission == Some(Admission::Rejected) {
            self.rejected += group.agents;
        } else if !group.ssl_capable {
            self.not_ssl_capable += group.agents;
        } else if group.mpos {
            self.mpos += group.agents;
        } else if group.excluded {
            self.excluded += group.agents;
        } else {
            self.eligible += group.agents;
            self.eligible_certified += group.certified;
            self.eligible_on_tls += group.broker_tls;
            self.passed += group.passed;
            self.failed += group.failed;
        }
    }

    pub(super) fn overview(
        &self,
        context: ViewContext,
        ca_fingerprint: Option<&str>,
        campaign: Option<Progress>,
    ) -> Overview {
        let phase = if self.eligible > 0 && self.eligible_on_tls == self.eligible {
            "broker-tls"
        } else if self.switched > 0 {
            "ssl"
        } else if self.eligible_certified > 0 {
            "certificates"
        } else {
            "plain"
        };
        Overview {
            network: Network {
                phase: phase.into(),
                agents: self.agents,
                online: self.online,
                offline: self.agents - self.online,
                silent: self.silent,
                eligible: self.eligible,
                children_with_certificates: self.eligible_certified,
                switched_to_ssl: self.switched,
                broker_tls: self.broker_tls,
                min_ssl_version: context.min_ssl_version.to_string(),
                certificates_generated: ca_fingerprint.is_some(),
                ca_fingerprint: ca_fingerprint.map(str::to_owned),
                ssl_port: None,
                pending: self.pending,
                rejected: self.rejected,
                compromised: self.compromised,
                security_events: 0,
                signing_key: None,
                soonest_expiry: self.soonest_expiry,
                revoked_certificates: 0,
                renewals_done: 0,
                renewals_failed: 0,
                ca_rotation: None,
                topology: None,
                nodes: Vec::new(),
                nodes_at: None,
                connections_at: None,
                queue_type: None,
                open_enrollment: None,
                flagged_names: 0,
                online_from: if context.liveness.offline_after_ms == 0 {
                    "broker"
                } else {
                    "reports"
                }
                .into(),
            },
            summary: Summary {
                passed: self.passed,
                with_errors: self.failed,
                did_not_participate: if campaign.is_some() {
                    self.eligible - self.passed - self.failed
                } else {
                    0
                },
                version_not_supporting_ssl: self.not_ssl_capable,
                mpos: self.mpos,
                excluded: self.excluded,
            },
            campaign,
        }
    }
}
