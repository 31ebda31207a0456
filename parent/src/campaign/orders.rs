//! What a campaign's children are sent: the step each is at, as the
//! command for it (a test step, a switch to SSL, a move to AMQPS, a
//! re-issue), with what the campaign's kind adds to it (the broker's
//! address, the new CA's chain).

use rusqlite::Transaction;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use fleetls_proto::{RunStep, StepSpec, ToChild, UseBrokerTls, UseSsl};

use crate::broker::Outgoing;
use crate::registry::campaign_states::{ChildStep, Kind};
use crate::registry::campaigns::{self, ActingStep};
use crate::registry::RegistryError;

/// What a broker switch campaign tells the children.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerSwitchParams {
    /// The amqps:// address.
    pub uri: String,
    /// The CA chain the broker's certificate must chain to.
    pub ca_pem: String,
    /// How children authenticate.
    pub auth: fleetls_proto::BrokerAuth,
    /// The most children that may open AMQPS connections at once (the
    /// operator's `--concurrency`): the window starts small and grows up
    /// to this while the broker keeps pace ([`adapt_window`](super::adapt_window)).
    /// `None` (a campaign of an older release): the window stays as it is.
    #[serde(default)]
    pub ceiling: Option<usize>,
}

/// What a CA rotation's re-issue campaign sends each child: a
/// `CertificatesReady` with the new CA's chain (a child holding no
/// certificate from it asks for one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReissueParams {
    /// The new CA's chain.
    pub ca_chain_pem: String,
    /// Its root's fingerprint.
    pub ca_fingerprint: String,
    /// Every CA to trust meanwhile (the old and the new one).
    pub trust_pem: String,
    /// The port local parents serve on.
    pub serve_port: u16,
}

/// A campaign's orders: its id and what its kind adds to each step, read
/// from the JSON the registry keeps (unreadable JSON adds nothing).
#[derive(Debug, Clone)]
pub(super) struct Orders {
    campaign: Uuid,
    broker: Option<BrokerSwitchParams>,
    reissue: Option<ReissueParams>,
}

impl Orders {
    /// The orders of `campaign`, of `kind`, from its `params` column.
    pub(super) fn of(campaign: Uuid, kind: Kind, params: Option<&str>) -> Orders {
        let broker = match kind {
            Kind::SwitchBroker => params.and_then(|p| serde_json::from_str(p).ok()),
            _ => None,
        };
        let reissue = match kind {
            Kind::Reissue => params.and_then(|p| serde_json::from_str(p).ok()),
            _ => None,
        };
        Orders {
            campaign,
            broker,
            reissue,
        }
    }

    /// The AMQPS address of a broker switch.
    pub(super) fn amqps(&self) -> Option<String> {
        self.broker.as_ref().map(|b| b.uri.clone())
    }

    /// The command for a child's step.
    pub(super) fn command(&self, acting: ActingStep) -> Outgoing {
        let ActingStep {
            agent,
            step,
            host,
            port,
            deadline,
        } = acting;
        let campaign = self.campaign;
        if let (ChildStep::Reissue, Some(r)) = (step, &self.reissue) {
            return Outgoing {
                agent,
                body: ToChild::CertificatesReady(fleetls_proto::CertificatesReady {
                    ca_chain_pem: r.ca_chain_pem.clone(),
                    ca_fingerprint: r.ca_fingerprint.clone(),
                    ssl_host: host,
                    ssl_port: port,
                    serve_port: Some(r.serve_port),
                    // Not `renew`: a child that holds a certificate from this
                    // CA already answers with its state, so a re-sent step
                    // issues nothing twice.
                    renew: false,
                    trust_pem: Some(r.trust_pem.clone()),
                    tls: None,
                }),
                re: None,
            };
        }
        let body = match (step, &self.broker) {
            (ChildStep::UseSsl, _) => ToChild::UseSsl(UseSsl { campaign }),
            (ChildStep::UseBrokerTls, Some(b)) => ToChild::UseBrokerTls(UseBrokerTls {
                campaign,
                // Each child starts the list at its own node (by its id):
                // the nodes share the TLS handshakes.
                uri: fleetls_bus::brokers::starting_at(&b.uri, agent.as_u128()),
                ca_pem: b.ca_pem.clone(),
                deadline,
                auth: b.auth,
            }),
            (ChildStep::SslPort, _) => {
                return run_step(agent, campaign, StepSpec::SslPort { host, port }, deadline);
            }
            _ => return run_step(agent, campaign, StepSpec::CertTest, deadline),
        };
        Outgoing {
            agent,
            body,
            re: None,
        }
    }
}

/// A test step for `agent`, due by `deadline` (ms).
pub(super) fn run_step(agent: Uuid, campaign: Uuid, step: StepSpec, deadline: u64) -> Outgoing {
    Outgoing {
        agent,
        body: ToChild::RunStep(RunStep {
            campaign,
            step,
            deadline,
        }),
        re: None,
    }
}

/// The command an agent is owed by the running campaign: the step it is
/// acting on, with its deadline, while that deadline has not passed (sent
/// again after the agent's Hello: the first copy may have been lost).
pub fn acting_command(
    tx: &Transaction<'_>,
    agent: Uuid,
) -> Result<Option<Outgoing>, RegistryError> {
    let Some(campaign) = campaigns::running(tx)? else {
        return Ok(None);
    };
    let owed = campaigns::owed_step(tx, campaign, agent, fleetls_proto::now_ms() as i64)?;
    Ok(
        owed.map(|(step, kind, params)| {
            Orders::of(campaign, kind, params.as_deref()).command(step)
        }),
    )
}
