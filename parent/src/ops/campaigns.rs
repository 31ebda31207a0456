//! Starting a campaign (`verify`, `reverify`, `switch`, `force-switch`,
//! `switch-broker`; or, dry, who would take part) and the newest one's
//! progress (`campaign`).

use fleetls_proto::AgentKind;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::campaign::{
    self, BrokerSwitchParams, Enrolment, Kind, DEFAULT_CAMPAIGN_TIMEOUT_SECS,
    DEFAULT_STEP_TIMEOUT_SECS,
};
use crate::op_error::{internal, OpError};
use crate::registry::Agent;
use crate::status::eligible;

/// What a campaign request asks: `verify`, `reverify`, `switch`,
/// `force-switch` or `switch-broker`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignRequest {
    /// Which campaign.
    pub kind: crate::campaign::Kind,
    /// The campaign deadline, seconds (default 3600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Each step's deadline, seconds (default 60).
    #[serde(default)]
    pub step_timeout_secs: Option<u64>,
    /// Most children acting at once (default: the parent's `--window`).
    #[serde(default)]
    pub window: Option<usize>,
    /// `switch-broker`: the AMQPS address (default: `--broker`'s host, the
    /// port `broker-tls` wrote the listener with, else 5671).
    #[serde(default)]
    pub amqps: Option<String>,
    /// `switch-broker`: how children authenticate over AMQPS (default plain).
    #[serde(default)]
    pub auth: Option<fleetls_proto::BrokerAuth>,
    /// Only say who would take part (and who would lose its connection).
    #[serde(default)]
    pub dry_run: bool,
}

/// Who a campaign would take, and who would lose its connection (force-switch).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CampaignPlan {
    /// Names of the children that would take part.
    pub children: Vec<String>,
    /// Children that did not pass the test and may lose their connection, with why.
    pub at_risk: Vec<String>,
    /// The AMQPS address (switch-broker).
    pub amqps: Option<String>,
    /// The TLS version the broker answered with (switch-broker).
    pub broker_tls: Option<String>,
    /// Addresses of the AMQPS list that did not answer (a node down), each
    /// with why (switch-broker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amqps_down: Vec<String>,
}

/// What starting a campaign did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignStart {
    /// Who takes part.
    pub plan: CampaignPlan,
    /// The campaign, unless it was a dry run.
    pub progress: Option<crate::campaign::Progress>,
}

/// Starts a campaign (or, with `dry_run`, says what it would do).
pub async fn start_campaign(
    app: &App,
    request: &CampaignRequest,
) -> Result<CampaignStart, OpError> {
    app.pki().ok_or_else(|| {
        OpError::Refused(
            "there are no certificates yet: run `certs generate` and `certs send` first".into(),
        )
    })?;
    let limits = Limits::of(app, request)?;
    let mut plan = CampaignPlan::default();
    let broker = match request.kind {
        Kind::SwitchBroker => Some(broker_switch(app, request, limits.window, &mut plan).await?),
        _ => None,
    };
    let children = enrol(app, request, &mut plan)?;
    if children.is_empty() {
        return Err(OpError::Refused(nobody_to_enrol(request.kind)));
    }
    if request.dry_run {
        return Ok(CampaignStart {
            plan,
            progress: None,
        });
    }
    if let (Some(b), Some(management)) = (&broker, &app.config.management) {
        if b.auth == fleetls_proto::BrokerAuth::External {
            agent_users(management, &b.uri, &children).await?;
        }
    }
    let id = create(app, request.kind, &limits, &children, broker.as_ref())?;
    app.campaign_changed.notify_one();
    tracing::info!(campaign = %id, kind = request.kind.as_str(), children = children.len(), window = limits.window, "campaign started");
    let progress = app
        .registry
        .with_db(|db| campaign::progress(db, id))
        .map_err(internal)?;
    Ok(CampaignStart { plan, progress })
}

/// A campaign's window and deadlines, checked.
struct Limits {
    /// Most children acting at once.
    window: usize,
    /// The campaign's deadline, seconds.
    timeout: u64,
    /// Each step's deadline, seconds.
    step_timeout: u64,
}

impl Limits {
    /// The request's limits, or the defaults; a re-issue campaign is not
    /// started here.
    fn of(app: &App, request: &CampaignRequest) -> Result<Limits, OpError> {
        if request.kind == Kind::Reissue {
            return Err(OpError::BadRequest(
                "a re-issue campaign is started by `fleetls-parent ca rotate`, not on its own"
                    .into(),
            ));
        }
        let window = request.window.unwrap_or(app.config.window);
        if window == 0 {
            return Err(OpError::BadRequest(
                "--concurrency must be at least 1".into(),
            ));
        }
        let timeout = request
            .timeout_secs
            .unwrap_or(DEFAULT_CAMPAIGN_TIMEOUT_SECS);
        let step_timeout = request
            .step_timeout_secs
            .unwrap_or(DEFAULT_STEP_TIMEOUT_SECS);
        if timeout == 0 || step_timeout == 0 {
            return Err(OpError::BadRequest(
                "timeouts must be at least 1 second".into(),
            ));
        }
        Ok(Limits {
            window,
            timeout,
            step_timeout,
        })
    }
}

/// `switch-broker`: the network is on SSL and AMQPS answers with a
/// certificate from the CA; what the children are sent. The AMQPS address,
/// its TLS version and the nodes that do not answer go into `plan`.
async fn broker_switch(
    app: &App,
    request: &CampaignRequest,
    window: usize,
    plan: &mut CampaignPlan,
) -> Result<BrokerSwitchParams, OpError> {
    let switched = app
        .registry
        .with_db(crate::registry::campaigns::switched_children)
        .map_err(internal)?;
    if switched == 0 {
        return Err(OpError::Refused(
            "the network is not on SSL yet: run `switch` (\"Use SSL connection\") first".into(),
        ));
    }
    let uri = match &request.amqps {
        Some(uri) => uri.clone(),
        None => {
            // The port `broker-tls` wrote the listener with, if it did.
            let port = crate::rotation::broker_record(&app.config.data_dir)
                .and_then(|record| record.amqps_port)
                .unwrap_or(crate::broker_switch::DEFAULT_AMQPS_PORT);
            crate::broker_switch::default_amqps(&app.config.broker, port)
                .map_err(OpError::BadRequest)?
        }
    };
    let checked = crate::broker_switch::check(&app.config.data_dir, &uri)
        .await
        .map_err(|why| OpError::Refused(format!("AMQPS is not ready: {why}")))?;
    for down in &checked.down {
        tracing::warn!(address = %down, "switch-broker: a node of the AMQPS list does not answer; children use it once it is back");
    }
    let auth = request.auth.unwrap_or(fleetls_proto::BrokerAuth::Plain);
    if auth == fleetls_proto::BrokerAuth::External && app.config.management.is_none() {
        return Err(OpError::Refused(
            "--external needs the parent's --management: it creates one RabbitMQ user per agent, \
             allowed only its own queue"
                .into(),
        ));
    }
    plan.amqps = Some(crate::config::redact(&uri));
    plan.broker_tls = Some(checked.protocol);
    plan.amqps_down = checked.down;
    Ok(BrokerSwitchParams {
        uri,
        ca_pem: crate::own::broker_trust_pem(&app.config.data_dir).map_err(internal)?,
        auth,
        ceiling: Some(window),
    })
}

/// The children the campaign takes, each with the SSL port it tests or
/// switches to; their names go into `plan` (and, for a force-switch, those
/// that did not pass the test, with why, into `plan.at_risk`).
fn enrol(
    app: &App,
    request: &CampaignRequest,
    plan: &mut CampaignPlan,
) -> Result<Vec<Enrolment>, OpError> {
    let min = app.config.min_ssl_version;
    let agents = app.registry.agents().map_err(internal)?;
    let local = crate::owed::LocalParents::of(&agents);
    // Each agent's last test result, from the registry.
    let last = app
        .registry
        .with_db(crate::campaign::last_results)
        .map_err(internal)?;
    let settings = app.settings();
    let passed = |a: &Agent| {
        last.get(&a.id)
            .is_some_and(|(s, _)| *s == crate::campaign::ChildState::Passed)
    };
    let mut children = Vec::new();
    // An mPOS device holding the identity exported for it moves to AMQPS
    // like the others (it has no SSL mode to switch to).
    let imported_mpos = |a: &Agent| {
        request.kind == Kind::SwitchBroker
            && a.kind == AgentKind::Mpos
            && a.admission == crate::registry::Admission::Accepted
            && !a.compromised
            && a.excluded.is_none()
            && a.has_certificate
    };
    for a in agents
        .iter()
        .filter(|a| eligible(a, min) || imported_mpos(a))
    {
        let take = match request.kind {
            Kind::Verify => a.has_certificate,
            Kind::Reverify => {
                a.has_certificate
                    && last
                        .get(&a.id)
                        .is_some_and(|(s, _)| *s != crate::campaign::ChildState::Passed)
            }
            Kind::Switch => !a.ssl && passed(a),
            Kind::ForceSwitch => !a.ssl,
            Kind::SwitchBroker => (a.ssl || imported_mpos(a)) && !a.broker_tls,
            Kind::Reissue => false,
        };
        if !take {
            continue;
        }
        if request.kind == Kind::ForceSwitch && !passed(a) {
            let why = match last.get(&a.id) {
                Some((state, message)) => {
                    format!("{state}: {}", message.as_deref().unwrap_or("-"))
                }
                None if !a.has_certificate => "no certificate".to_owned(),
                None => "never tested".to_owned(),
            };
            plan.at_risk.push(format!("{} ({why})", a.name));
        }
        plan.children.push(a.name.clone());
        let (host, port) = crate::owed::ssl_target(a, &local, &settings);
        children.push(Enrolment {
            agent: a.id,
            host,
            port,
        });
    }
    Ok(children)
}

/// Why a campaign of `kind` has nobody to take, and what to do.
fn nobody_to_enrol(kind: Kind) -> String {
    match kind {
        Kind::Verify => {
            "no eligible child holds a certificate yet: run `certs send` and wait for the counter"
                .into()
        }
        Kind::Reverify => "no child's last result is a failure: nothing to reverify".into(),
        Kind::Switch => {
            "no child that passed the test is left to switch: run `verify` first".into()
        }
        Kind::ForceSwitch => "every eligible child is already switched to SSL".into(),
        Kind::SwitchBroker => "every switched child is already on AMQPS".into(),
        Kind::Reissue => "a re-issue campaign is started by `fleetls-parent ca rotate`".into(),
    }
}

/// Records the campaign, unless another one is still running.
fn create(
    app: &App,
    kind: Kind,
    limits: &Limits,
    children: &[Enrolment],
    broker: Option<&BrokerSwitchParams>,
) -> Result<uuid::Uuid, OpError> {
    app.registry
        .with_tx(|tx| {
            if let Some(running) = campaign::running(tx)? {
                return Ok(Err(running));
            }
            // A broker switch starts small and finds the broker's pace.
            let first = match kind {
                Kind::SwitchBroker => limits.window.min(campaign::BROKER_SWITCH_FIRST_WINDOW),
                _ => limits.window,
            };
            campaign::create(
                tx,
                kind,
                first,
                limits.timeout.saturating_mul(1000),
                limits.step_timeout.saturating_mul(1000),
                children,
                broker,
            )
            .map(Ok)
        })
        .map_err(internal)?
        .map_err(|running| {
            OpError::Refused(format!(
                "campaign {running} is still running; follow it with `fleetls-parent campaign` or wait for it to end"
            ))
        })
}

/// The newest campaign's progress, if any campaign ever ran.
pub fn campaign_progress(app: &App) -> Result<Option<crate::campaign::Progress>, OpError> {
    app.registry
        .with_db(|db| match crate::campaign::latest(db)? {
            Some(id) => crate::campaign::progress(db, id),
            None => Ok(None),
        })
        .map_err(internal)
}

/// Before children move to AMQPS with their certificates: one RabbitMQ user
/// per agent (its certificate's CN), allowed only its own queue. At most 16
/// requests to management at a time.
async fn agent_users(
    management: &crate::config::Management,
    amqps: &str,
    children: &[crate::campaign::Enrolment],
) -> Result<(), OpError> {
    let uri: lapin::uri::AMQPUri = fleetls_bus::brokers::split(amqps)[0]
        .parse()
        .map_err(|e: String| OpError::BadRequest(crate::config::redact(&e)))?;
    let vhost = uri.vhost;
    let mut tasks = tokio::task::JoinSet::new();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for child in children {
        let (management, vhost, agent) = (management.clone(), vhost.clone(), child.agent);
        let permit = limit.clone().acquire_owned().await.map_err(internal)?;
        tasks.spawn(async move {
            let done = crate::management::ensure_agent_user(&management, &vhost, &agent).await;
            drop(permit);
            done
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(internal)?.map_err(|why| {
            OpError::Unavailable(format!(
                "cannot create the agents' RabbitMQ users, nothing was started: {why}"
            ))
        })?;
    }
    Ok(())
}
