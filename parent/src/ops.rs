//! The operator's operations on a serving parent, called by the admin API:
//! SSL settings, certificate generation, "Send information" and reset.

use std::path::PathBuf;
use std::sync::Arc;

use fleetls_proto::AgentKind;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::pki::{CompanyCa, Pki};
use crate::registry::Agent;
use crate::settings::{SettingsChange, SslSettings};
use crate::status::{eligible, ssl_capable};

/// Why an operation was not done.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is malformed or a value is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// The operation is not allowed in the current state (409).
    #[error("{0}")]
    Refused(String),
    /// The broker is not reachable right now (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside the parent (500).
    #[error("{0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> OpError {
    OpError::Internal(e.to_string())
}

/// The settings and whether they are frozen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingsView {
    /// The values.
    pub settings: SslSettings,
    /// Frozen because certificates exist.
    pub frozen: bool,
    /// Which certificates are the operator's own (`settings set
    /// --parent-cert`, `--broker-cert`).
    #[serde(default)]
    pub own: crate::own::OwnRecord,
}

/// `settings show`.
pub fn settings_show(app: &App) -> SettingsView {
    SettingsView {
        settings: app.settings(),
        frozen: app.pki().is_some(),
        own: crate::own::OwnRecord::load(&app.config.data_dir),
    }
}

/// `settings set`: checks and stores a change, refused once certificates exist.
pub fn settings_set(app: &App, change: &SettingsChange) -> Result<SettingsView, OpError> {
    if change.is_empty() {
        return Err(OpError::BadRequest(
            "nothing to change: give at least one of --port, --local-parent-port, --names, --ips, --broker-names, --broker-ips, --min-tls, --cipher-suites, --parent-cert, --broker-cert".into(),
        ));
    }
    let mut settings = app.settings.write().unwrap_or_else(|p| p.into_inner());
    if app.pki().is_some() && !change.tls_only() {
        return Err(OpError::Refused(
            "the SSL settings are frozen: certificates were generated with them. \
             To change them run `fleetls-parent certs reset` (it discards every certificate), then set and generate again \
             (--min-tls and --cipher-suites are inside no certificate: they may change at any time)"
                .into(),
        ));
    }
    let next = settings
        .apply(change)
        .map_err(|e| OpError::BadRequest(format!("invalid {e}")))?;
    let own = [
        (
            crate::own::Role::Parent,
            &change.parent_cert,
            &change.parent_key,
        ),
        (
            crate::own::Role::Broker,
            &change.broker_cert,
            &change.broker_key,
        ),
    ];
    for (role, cert, key) in own {
        if let (Some(cert), Some(key)) = (cert, key) {
            own_certificate(app, &next, role, cert, key)?;
        }
    }
    next.save(&app.config.data_dir).map_err(internal)?;
    *settings = next.clone();
    Ok(SettingsView {
        settings: next,
        frozen: app.pki().is_some(),
        own: crate::own::OwnRecord::load(&app.config.data_dir),
    })
}

/// Checks the operator's own certificate for `role` against the `next`
/// settings and installs it; nothing changes when it is refused.
fn own_certificate(
    app: &App,
    next: &SslSettings,
    role: crate::own::Role,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(), OpError> {
    use crate::own::Role;
    let (cert_flag, key_flag) = role.flags();
    if app.pki().is_none() {
        return Err(OpError::Refused(format!(
            "{cert_flag} replaces a certificate of fleetls's: run `certs generate` first"
        )));
    }
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| {
            OpError::BadRequest(format!(
                "{flag}: {} cannot be read by the parent: {e}",
                path.display()
            ))
        })
    };
    let (chain_pem, key_pem) = (read(cert_flag, cert)?, read(key_flag, key)?);
    let now = (fleetls_proto::now_ms() / 1000) as i64;
    let (names, ips) = match role {
        Role::Parent => (&next.names, &next.ips),
        Role::Broker => (&next.broker_names, &next.broker_ips),
    };
    crate::own::check(role, &chain_pem, &key_pem, names, ips, now).map_err(OpError::BadRequest)?;
    if role == Role::Broker
        && crate::rotation::broker_record(&app.config.data_dir).is_some_and(|r| !r.nodes.is_empty())
    {
        return Err(OpError::Refused(format!(
            "{cert_flag}: broker-tls gives each cluster node a certificate of its own (--node); \
             one certificate for the broker would replace them only at the top of its folder: \
             run broker-tls again without --node first"
        )));
    }
    // It must be servable before it replaces anything.
    crate::ssl_port::server_config(
        &crate::ssl_port::trust(&crate::layout::Layout::new(&app.config.data_dir)),
        chain_pem.as_bytes(),
        key_pem.as_bytes(),
        None,
        &next.tls_policy(),
    )
    .map_err(|e| OpError::BadRequest(format!("{cert_flag}: TLS cannot be served with it: {e}")))?;
    crate::own::install(&app.config.data_dir, role, &chain_pem, &key_pem).map_err(internal)?;
    match role {
        Role::Parent => {
            tracing::info!(file = %cert.display(), "the SSL port serves the operator's own certificate")
        }
        Role::Broker => {
            // Where broker-tls wrote the broker's files, they follow.
            if let Some(pki) = app.pki() {
                crate::rotation::rewrite_broker_files(&app.config.data_dir, &pki);
            }
            tracing::info!(file = %cert.display(), "the broker's files carry the operator's own certificate")
        }
    }
    Ok(())
}

/// The SSL port takes the TLS versions and suites of the settings from its
/// next handshake on, and every accepted local parent holding a
/// certificate is sent them (with the certificate information, which it
/// already holds: it changes nothing else).
pub async fn apply_tls_policy(app: &App) -> Result<(), OpError> {
    app.reload_ssl_port().await.map_err(internal)?;
    let (Some(pki), Some(channel)) = (app.pki(), app.channel()) else {
        return Ok(());
    };
    let settings = app.settings();
    let local_parents: Vec<Agent> = app
        .registry
        .agents_of_kind(AgentKind::LocalParent)
        .map_err(internal)?
        .into_iter()
        .filter(|a| a.admission == crate::registry::Admission::Accepted && a.has_certificate)
        .collect();
    let messages: Vec<crate::broker::Outgoing> = local_parents
        .iter()
        .map(|a| crate::broker::Outgoing {
            agent: a.id,
            body: crate::owed::certificates_ready(&pki, a, &local_parents, &settings, false),
            re: None,
        })
        .collect();
    crate::broker::send_all(&channel, &app.signing_key, messages)
        .await
        .map_err(|e| {
            OpError::Unavailable(format!(
                "sending the TLS settings to local parents failed: {e}"
            ))
        })?;
    Ok(())
}

/// What `certs generate` is asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Go ahead although children run versions below `min_ssl_version`.
    #[serde(default)]
    pub ignore_old: bool,
    /// Company CA certificate (PEM file on the parent's machine).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Company CA key (PEM file on the parent's machine).
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
}

/// What `certs generate` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateReport {
    /// The root CA fingerprint children will check.
    pub ca_fingerprint: String,
    /// The folder of the certificates.
    pub directory: PathBuf,
    /// Whether a company CA signs.
    pub company_ca: bool,
    /// Children counted as "version not supporting SSL".
    pub old_versions: Vec<String>,
}

/// `certs generate`.
pub fn certs_generate(app: &App, request: &GenerateRequest) -> Result<GenerateReport, OpError> {
    if let Some(pki) = app.pki() {
        return Err(OpError::Refused(format!(
            "certificates already exist (CA {}); run `fleetls-parent certs reset` first to make new ones",
            pki.root_fingerprint
        )));
    }
    let company = match (&request.ca_cert, &request.ca_key) {
        (Some(cert), Some(key)) => Some(CompanyCa {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => None,
        _ => {
            return Err(OpError::BadRequest(
                "a company CA needs both --ca-cert and --ca-key".into(),
            ))
        }
    };
    let min = app.config.min_ssl_version;
    let agents = app.registry.agents().map_err(internal)?;
    let old: Vec<&Agent> = agents
        .iter()
        .filter(|a| !ssl_capable(&a.version, min))
        .collect();
    let old_names: Vec<String> = old
        .iter()
        .map(|a| format!("{} ({}, version {})", a.name, a.id, a.version))
        .collect();
    if !old.is_empty() && !request.ignore_old {
        return Err(OpError::Refused(format!(
            "{} registered child(ren) run a version below {min}, which does not support SSL: {}. \
             Upgrade them, or run `certs generate --ignore-old` to count them as \"version not supporting SSL\"",
            old.len(),
            old_names.join(", ")
        )));
    }
    let settings = app.settings();
    let mpos: Vec<&str> = agents
        .iter()
        .filter(|a| a.kind == AgentKind::Mpos)
        .map(|a| a.name.as_str())
        .collect();
    if !mpos.is_empty() && settings.names.is_empty() {
        return Err(OpError::Refused(format!(
            "mPOS agents are registered ({}) and mPOS cannot connect to an IP address: \
             set at least one DNS name of the parent with `settings set --names`",
            mpos.join(", ")
        )));
    }
    settings
        .check()
        .map_err(|e| OpError::Refused(format!("the SSL settings are incomplete: {e}")))?;
    let _settings_lock = app.settings.write().unwrap_or_else(|p| p.into_inner());
    let pki = Pki::generate(
        &app.config.data_dir,
        &settings,
        company.as_ref(),
        app.config.cert_lifetime,
    )
    .map_err(|e| OpError::Refused(e.to_string()))?;
    let report = GenerateReport {
        ca_fingerprint: pki.root_fingerprint.clone(),
        directory: crate::pki::certificates_dir(&app.config.data_dir),
        company_ca: company.is_some(),
        old_versions: old_names,
    };
    *app.pki.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(pki));
    tracing::info!(ca = %report.ca_fingerprint, "certificates generated");
    Ok(report)
}

/// What `certs send` is asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendRequest {
    /// Also children that already hold a certificate.
    #[serde(default)]
    pub all: bool,
    /// `certs renew`: children that hold a certificate make a new key and
    /// ask for a new one (the others are left alone).
    #[serde(default)]
    pub renew: bool,
    /// Only these agents (names or ids); every eligible one when empty.
    #[serde(default)]
    pub agents: Vec<String>,
}

/// What `certs send` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendReport {
    /// Children the information was queued for.
    pub queued: usize,
    /// Eligible children skipped because they already hold a certificate.
    pub already_have_certificate: usize,
    /// Children not eligible (old version or mPOS).
    pub not_eligible: usize,
    /// Children whose queue is gone (the information is in `fleetls.dead`;
    /// send again once they reconnect).
    #[serde(default)]
    pub unroutable: Vec<String>,
}

/// `certs send` ("Send information"): sends `CertificatesReady` to every
/// eligible child, online or not, and records it as owed: a child that is
/// offline now gets it after its next Hello (`crate::owed`).
pub async fn certs_send(app: &App, request: &SendRequest) -> Result<SendReport, OpError> {
    let pki = app.pki().ok_or_else(|| {
        OpError::Refused(
            "there are no certificates yet: run `fleetls-parent certs generate` first".into(),
        )
    })?;
    let channel = app.channel().ok_or_else(|| {
        OpError::Unavailable(
            "the parent is not connected to the broker right now; try again in a moment".into(),
        )
    })?;
    let min = app.config.min_ssl_version;
    let agents = app.registry.agents().map_err(internal)?;
    let settings = app.settings();
    let mut report = SendReport {
        queued: 0,
        already_have_certificate: 0,
        not_eligible: 0,
        unroutable: Vec::new(),
    };
    let chosen: Vec<uuid::Uuid> = request
        .agents
        .iter()
        .map(|wanted| find_agent(&agents, wanted).map(|a| a.id))
        .collect::<Result<_, _>>()?;
    // Indices into `agents` (a borrow would not cross the sends' awaits).
    let mut to: Vec<usize> = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        if !eligible(agent, min) {
            report.not_eligible += 1;
            continue;
        }
        if !chosen.is_empty() && !chosen.contains(&agent.id) {
            continue;
        }
        if request.renew && !agent.has_certificate {
            continue;
        }
        if agent.has_certificate && !request.all && !request.renew {
            report.already_have_certificate += 1;
            continue;
        }
        to.push(i);
    }
    // The registry is the record: what is not settled is sent again.
    let owed: Vec<uuid::Uuid> = to.iter().map(|&i| agents[i].id).collect();
    let renew = request.renew;
    app.registry
        .with_tx(|tx| crate::owed::owe_certificates(tx, &owed, renew))
        .map_err(internal)?;
    report.queued = to.len();
    // Each message is made as it is sent (a network's worth at once would
    // hold megabytes of PEM copies).
    let messages = to.into_iter().map(|i| crate::broker::Outgoing {
        agent: agents[i].id,
        body: crate::owed::certificates_ready(&pki, &agents[i], &agents, &settings, renew),
        re: None,
    });
    crate::broker::send_all(&channel, &app.signing_key, messages)
        .await
        .map_err(|e| {
            OpError::Unavailable(format!("sending failed, run `certs send` again: {e}"))
        })?;
    Ok(report)
}

/// What `certs reset` is asked: `confirm` must be `"reset"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResetRequest {
    /// Must be `"reset"`.
    pub confirm: String,
}

/// What `certs reset` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetReport {
    /// Where the old certificates were moved (nothing is deleted).
    pub moved_to: PathBuf,
}

/// `certs reset`: moves the certificates aside and unfreezes the settings.
pub fn certs_reset(app: &App, request: &ResetRequest) -> Result<ResetReport, OpError> {
    if request.confirm != "reset" {
        return Err(OpError::BadRequest(
            "certs reset discards the CA and every certificate; confirm with \"reset\"".into(),
        ));
    }
    let mut pki = app.pki.write().unwrap_or_else(|p| p.into_inner());
    if pki.is_none() {
        return Err(OpError::Refused(
            "there are no certificates to reset".into(),
        ));
    }
    let dir = crate::pki::certificates_dir(&app.config.data_dir);
    let moved_to = app
        .config
        .data_dir
        .join(format!("certificates.reset-{}", fleetls_proto::now_ms()));
    std::fs::rename(&dir, &moved_to).map_err(internal)?;
    app.registry.forget_certificates().map_err(internal)?;
    *pki = None;
    tracing::warn!(moved_to = %moved_to.display(), "certificates reset");
    Ok(ResetReport { moved_to })
}

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
    /// `switch-broker`: the AMQPS address (default: `--broker`'s host, port 5671).
    #[serde(default)]
    pub amqps: Option<String>,
    /// `switch-broker`: how children authenticate over AMQPS (default plain).
    #[serde(default)]
    pub auth: Option<fleetls_proto::BrokerAuth>,
    /// Only say who would take part (and who would lose its connection).
    #[serde(default)]
    pub dry_run: bool,
}

/// Default campaign deadline.
pub const DEFAULT_CAMPAIGN_TIMEOUT_SECS: u64 = 3600;
/// Default step deadline.
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 60;

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
    use crate::campaign::{self, BrokerSwitchParams, Enrolment, Kind};
    app.pki().ok_or_else(|| {
        OpError::Refused(
            "there are no certificates yet: run `certs generate` and `certs send` first".into(),
        )
    })?;
    if request.kind == Kind::Reissue {
        return Err(OpError::BadRequest(
            "a re-issue campaign is started by `fleetls-parent ca rotate`, not on its own".into(),
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
    let mut plan = CampaignPlan::default();
    let mut broker = None;
    if request.kind == Kind::SwitchBroker {
        let switched = app
            .registry
            .with_db(|db| {
                Ok(db.query_row(
                    "SELECT count(*) FROM campaigns c JOIN campaign_children cc ON cc.campaign = c.id
                     WHERE c.kind IN ('switch', 'force-switch') AND cc.state = 'passed'",
                    [],
                    |row| row.get::<_, i64>(0),
                )?)
            })
            .map_err(internal)?;
        if switched == 0 {
            return Err(OpError::Refused(
                "the network is not on SSL yet: run `switch` (\"Use SSL connection\") first".into(),
            ));
        }
        let uri = match &request.amqps {
            Some(uri) => uri.clone(),
            None => crate::broker_switch::default_amqps(&app.config.broker)
                .map_err(OpError::BadRequest)?,
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
        broker = Some(BrokerSwitchParams {
            uri,
            ca_pem: crate::own::broker_trust_pem(&app.config.data_dir).map_err(internal)?,
            auth: request.auth.unwrap_or(fleetls_proto::BrokerAuth::Plain),
            ceiling: Some(window),
        });
    }
    let min = app.config.min_ssl_version;
    let agents = app.registry.agents().map_err(internal)?;
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
        let (host, port) = crate::owed::ssl_target(a, &agents, &settings);
        children.push(Enrolment {
            agent: a.id,
            host,
            port,
        });
    }
    if children.is_empty() {
        return Err(OpError::Refused(match request.kind {
            Kind::Verify => "no eligible child holds a certificate yet: run `certs send` and wait for the counter".into(),
            Kind::Reverify => "no child's last result is a failure: nothing to reverify".into(),
            Kind::Switch => "no child that passed the test is left to switch: run `verify` first".into(),
            Kind::ForceSwitch => "every eligible child is already switched to SSL".into(),
            Kind::SwitchBroker => "every switched child is already on AMQPS".into(),
            Kind::Reissue => "a re-issue campaign is started by `fleetls-parent ca rotate`".into(),
        }));
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
    let id = app
        .registry
        .with_tx(|tx| {
            if let Some(running) = campaign::running(tx)? {
                return Ok(Err(running));
            }
            // A broker switch starts small and finds the broker's pace.
            let first = match request.kind {
                Kind::SwitchBroker => window.min(campaign::BROKER_SWITCH_FIRST_WINDOW),
                _ => window,
            };
            campaign::create(
                tx,
                request.kind,
                first,
                timeout.saturating_mul(1000),
                step_timeout.saturating_mul(1000),
                &children,
                broker.as_ref(),
            )
            .map(Ok)
        })
        .map_err(internal)?
        .map_err(|running| {
            OpError::Refused(format!(
                "campaign {running} is still running; follow it with `fleetls-parent campaign` or wait for it to end"
            ))
        })?;
    app.campaign_changed.notify_one();
    tracing::info!(campaign = %id, kind = request.kind.as_str(), children = children.len(), window, "campaign started");
    let progress = app
        .registry
        .with_db(|db| campaign::progress(db, id))
        .map_err(internal)?;
    Ok(CampaignStart { plan, progress })
}

/// The two lists of "Show child agents without SSL".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WithoutSsl {
    /// Eligible children not switched to SSL.
    pub not_switched: Vec<WithoutSslEntry>,
    /// Children not connected to RabbitMQ over TLS, by the broker's own view.
    pub not_on_tls: Vec<WithoutSslEntry>,
    /// Whether the second list comes from RabbitMQ management (else it is empty).
    pub broker_view: bool,
}

/// One child in a "without SSL" list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WithoutSslEntry {
    /// Its id.
    pub id: uuid::Uuid,
    /// Its name.
    pub name: String,
    /// Why it is in the list.
    pub why: String,
}

/// "Show child agents without SSL": not switched; not on AMQPS per RabbitMQ.
pub async fn without_ssl(app: &App) -> Result<WithoutSsl, OpError> {
    let min = app.config.min_ssl_version;
    let agents = app.registry.agents().map_err(internal)?;
    let mut out = WithoutSsl {
        not_switched: Vec::new(),
        not_on_tls: Vec::new(),
        broker_view: false,
    };
    for a in &agents {
        if a.kind == AgentKind::Mpos && !a.broker_tls {
            // The manual path: say what the operator has to do next.
            let why = if let Some(reason) = &a.excluded {
                format!("excluded: {reason}")
            } else if !a.has_certificate {
                format!(
                    "mPOS: cannot send a CSR; export its identity (`fleetls-parent export --agent {} --out DIR`) \
                     and install it on the device (`fleetls-child import --pfx FILE --password-file F`)",
                    a.id
                )
            } else {
                "mPOS: holds its imported certificate; `switch-broker` moves it to AMQPS".into()
            };
            out.not_switched.push(WithoutSslEntry {
                id: a.id,
                name: a.name.clone(),
                why,
            });
            continue;
        }
        if a.kind != AgentKind::Mpos && !a.ssl {
            let why = if let Some(reason) = &a.excluded {
                format!("excluded: {reason}")
            } else if !ssl_capable(&a.version, min) {
                format!("version {} does not support SSL", a.version)
            } else if !a.has_certificate {
                "no certificate".into()
            } else {
                "not switched".into()
            };
            out.not_switched.push(WithoutSslEntry {
                id: a.id,
                name: a.name.clone(),
                why,
            });
        }
    }
    let Some(management) = &app.config.management else {
        return Ok(out);
    };
    // A cluster's nodes share their vhosts: the first address names it.
    let vhost = fleetls_bus::brokers::split(&app.config.broker)[0]
        .parse::<lapin::uri::AMQPUri>()
        .map(|u| u.vhost)
        .ok();
    let connections = crate::management::connections(management, vhost.as_deref())
        .await
        .map_err(OpError::Unavailable)?;
    let by_agent = crate::management::by_agent(connections);
    out.broker_view = true;
    // Why a child stayed on plain, from its last broker switch report.
    let reasons: std::collections::HashMap<String, String> = app
        .registry
        .with_db(|db| {
            let mut stmt = db.prepare(
                "SELECT cc.agent, cc.message FROM campaign_children cc JOIN campaigns c ON c.id = cc.campaign
                 WHERE c.kind = 'switch-broker' AND cc.state = 'failed' ORDER BY c.started_at",
            )?;
            let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .map_err(internal)?;
    for a in &agents {
        let why = match by_agent.get(&a.id) {
            Some(c) if c.ssl => continue,
            _ if a.excluded.is_some() => format!(
                "excluded: {}",
                a.excluded.as_deref().unwrap_or_default()
            ),
            Some(c) => match reasons.get(&a.id.to_string()) {
                Some(reason) => format!(
                    "connected over plain AMQP (port {}); {reason}",
                    c.port.unwrap_or(0)
                ),
                None => format!("connected over plain AMQP (port {})", c.port.unwrap_or(0)),
            },
            None => "not in RabbitMQ's connection list: offline, inside a swarm connection, or not yet seen (management refreshes every few seconds)".into(),
        };
        out.not_on_tls.push(WithoutSslEntry {
            id: a.id,
            name: a.name.clone(),
            why,
        });
    }
    Ok(out)
}

/// What the post-migration broker configuration may do: closing plain AMQP
/// is refused while an accepted agent that is not kept on plain by
/// decision is not on AMQPS (it would lose the broker: a child not moved
/// yet, an mPOS device without its imported certificate, an old version);
/// agents kept on plain by decision keep the plain listener open.
pub fn final_fragment(app: &App) -> Result<crate::broker_switch::FinalFragment, OpError> {
    use crate::broker_switch::FinalFragment;
    let min = app.config.min_ssl_version;
    let mut cut_off = Vec::new();
    let mut kept_plain = Vec::new();
    for a in app.registry.agents().map_err(internal)? {
        if a.admission != crate::registry::Admission::Accepted || a.broker_tls {
            continue;
        }
        let name = crate::admission::printable(&a.name, 80);
        if let Some(reason) = &a.excluded {
            kept_plain.push(format!("{name}: {reason}"));
            continue;
        }
        let why = if a.kind == AgentKind::Mpos && !a.has_certificate {
            "mPOS without its certificate: export it and `fleetls-child import` it on the device"
                .to_owned()
        } else if !ssl_capable(&a.version, min) {
            format!(
                "version {} does not support SSL: update it, or `agents exclude` it",
                a.version
            )
        } else {
            "not on AMQPS yet: `switch-broker` (see `without-ssl`)".to_owned()
        };
        cut_off.push(format!("{name}: {why}"));
    }
    Ok(if cut_off.is_empty() {
        FinalFragment::Write { kept_plain }
    } else {
        FinalFragment::Refuse { cut_off }
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

/// One agent as `agents list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentEntry {
    /// Its id.
    pub id: uuid::Uuid,
    /// Display name (control characters replaced).
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Site (control characters replaced).
    pub location: Option<String>,
    /// `pending`, `accepted` or `rejected`.
    pub admission: crate::registry::Admission,
    /// Fingerprint of the key pinned for it (`None`: not pinned yet).
    pub key: Option<String>,
    /// The parent key it says it pinned.
    pub parent_key: Option<String>,
    /// Heard from recently.
    pub online: bool,
}

/// `agents list`: every agent with its admission and keys.
pub fn agents_list(app: &App) -> Result<Vec<AgentEntry>, OpError> {
    let agents = app.registry.agents().map_err(internal)?;
    Ok(agents
        .into_iter()
        .map(|a| AgentEntry {
            id: a.id,
            name: crate::admission::printable(&a.name, crate::admission::MAX_NAME),
            kind: a.kind,
            location: a
                .location
                .as_deref()
                .map(|l| crate::admission::printable(l, crate::admission::MAX_NAME)),
            admission: a.admission,
            key: a
                .signing_key
                .as_deref()
                .and_then(fleetls_bus::seal::PublicKey::from_hex)
                .map(|k| k.fingerprint()),
            parent_key: a.parent_key,
            online: app.is_online(a.last_seen),
        })
        .collect())
}

/// Which agents an admission command is about.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentsRequest {
    /// Names or ids.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Every pending agent (accept only).
    #[serde(default)]
    pub all: bool,
    /// Why (exclude only: required there).
    #[serde(default)]
    pub reason: Option<String>,
}

/// What an admission command did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentsReport {
    /// The agents changed, by name.
    pub changed: Vec<String>,
    /// Their ids.
    #[serde(default)]
    pub ids: Vec<uuid::Uuid>,
}

/// Finds one agent by name or id; a name two agents share must be given
/// as an id.
fn find_agent(agents: &[Agent], wanted: &str) -> Result<Agent, OpError> {
    if let Ok(id) = wanted.parse::<uuid::Uuid>() {
        if let Some(agent) = agents.iter().find(|a| a.id == id) {
            return Ok(agent.clone());
        }
    }
    let named: Vec<&Agent> = agents.iter().filter(|a| a.name == wanted).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(OpError::BadRequest(format!(
            "no agent is called {:?}: see `fleetls-parent agents list`",
            crate::admission::printable(wanted, 80)
        ))),
        many => Err(OpError::BadRequest(format!(
            "{} agents are called {:?}; give the id instead: {}",
            many.len(),
            crate::admission::printable(wanted, 80),
            many.iter()
                .map(|a| a.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `agents accept|reject`: sets the admission of the agents named (or of
/// every pending agent with `all`, for accept).
pub fn agents_admit(
    app: &App,
    request: &AgentsRequest,
    admission: crate::registry::Admission,
) -> Result<AgentsReport, OpError> {
    use crate::registry::Admission;
    let agents = app.registry.agents().map_err(internal)?;
    let chosen: Vec<Agent> = if request.all {
        if admission != Admission::Accepted {
            return Err(OpError::BadRequest(
                "--all is for accept only: reject agents one by one".into(),
            ));
        }
        agents
            .iter()
            .filter(|a| a.admission == Admission::Pending)
            .cloned()
            .collect()
    } else if request.agents.is_empty() {
        return Err(OpError::BadRequest(
            "name at least one agent (or --all to accept every pending one)".into(),
        ));
    } else {
        request
            .agents
            .iter()
            .map(|w| find_agent(&agents, w))
            .collect::<Result<_, _>>()?
    };
    let mut report = AgentsReport {
        changed: Vec::new(),
        ids: Vec::new(),
    };
    for agent in chosen {
        app.registry
            .set_admission(&agent.id, admission)
            .map_err(internal)?;
        tracing::info!(agent = %agent.id, admission = admission.as_str(), "admission changed");
        report
            .changed
            .push(crate::admission::printable(&agent.name, 80));
        report.ids.push(agent.id);
    }
    Ok(report)
}

/// The longest reason an operator may give for an exclusion.
pub const MAX_REASON: usize = 200;

/// `agents exclude NAME --reason TEXT` (`reason` given) or `agents include
/// NAME` (`None`): keeps the agents on plain AMQP by decision — no
/// campaign, no switch, counted as excluded and listed with the reason by
/// `without-ssl` — or takes them back. A campaign already running keeps
/// the agents it enrolled.
pub fn agents_exclude(
    app: &App,
    request: &AgentsRequest,
    exclude: bool,
) -> Result<AgentsReport, OpError> {
    if request.agents.is_empty() {
        return Err(OpError::BadRequest("name at least one agent".into()));
    }
    let reason = match (exclude, request.reason.as_deref().map(str::trim)) {
        (false, _) => None,
        (true, None | Some("")) => {
            return Err(OpError::BadRequest(
                "say why the agent stays on plain: --reason TEXT (shown by status and without-ssl)"
                    .into(),
            ))
        }
        (true, Some(text)) if text.chars().count() > MAX_REASON => {
            return Err(OpError::BadRequest(format!(
                "the reason is {} characters long; keep it to {MAX_REASON}",
                text.chars().count()
            )))
        }
        (true, Some(text)) if text.chars().any(char::is_control) => {
            return Err(OpError::BadRequest(
                "the reason holds control characters (a newline, a tab, an escape); give one plain line"
                    .into(),
            ))
        }
        (true, Some(text)) => Some(text.to_owned()),
    };
    let agents = app.registry.agents().map_err(internal)?;
    let chosen: Vec<Agent> = request
        .agents
        .iter()
        .map(|w| find_agent(&agents, w))
        .collect::<Result<_, _>>()?;
    let mut report = AgentsReport {
        changed: Vec::new(),
        ids: Vec::new(),
    };
    for agent in chosen {
        if agent.excluded.as_deref() == reason.as_deref() {
            continue;
        }
        app.registry
            .set_excluded(&agent.id, reason.as_deref())
            .map_err(internal)?;
        match &reason {
            Some(reason) => {
                tracing::info!(agent = %agent.id, reason, "agent kept on plain AMQP by decision")
            }
            None => tracing::info!(agent = %agent.id, "agent included again"),
        }
        report
            .changed
            .push(crate::admission::printable(&agent.name, 80));
        report.ids.push(agent.id);
    }
    Ok(report)
}

/// What `revoke` asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// The agent, by name or id.
    pub agent: String,
    /// Why (`key-compromise` by default).
    #[serde(default)]
    pub reason: Option<String>,
}

/// What `revoke` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeReport {
    /// The agent.
    pub name: String,
    /// Its id.
    pub id: uuid::Uuid,
    /// Certificates revoked.
    pub certificates: usize,
    /// Broker connections closed (when the parent has management).
    pub connections_closed: usize,
}

/// `revoke NAME`: every certificate of the agent goes on the CA's
/// revocation list (signed again, used by the SSL port at once, sent to the
/// local parents), its key is banned, its RabbitMQ user removed and its
/// broker connections closed.
pub async fn revoke(app: &App, request: &RevokeRequest) -> Result<RevokeReport, OpError> {
    let reason = request.reason.as_deref().unwrap_or("key-compromise");
    crate::pki::revocation_reason(reason).map_err(OpError::BadRequest)?;
    let agents = app.registry.agents().map_err(internal)?;
    let agent = find_agent(&agents, &request.agent)?;
    let registry = app.registry.clone();
    let (id, why) = (agent.id, reason.to_owned());
    let certificates = tokio::task::spawn_blocking(move || registry.revoke_agent(&id, &why))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    app.refresh_crl().await.map_err(OpError::Internal)?;
    let connections_closed = cut_off(app, &agent.id).await?;
    tracing::warn!(agent = %agent.id, reason, certificates, "agent revoked; its key is banned");
    app.campaign_changed.notify_one();
    Ok(RevokeReport {
        name: crate::admission::printable(&agent.name, 80),
        id: agent.id,
        certificates,
        connections_closed,
    })
}

/// An agent's RabbitMQ user goes and its connections are closed (when the
/// parent has management); how many connections.
async fn cut_off(app: &App, agent: &uuid::Uuid) -> Result<usize, OpError> {
    let Some(management) = &app.config.management else {
        return Ok(0);
    };
    // Which connections first: deleting the user makes RabbitMQ close its
    // connections itself, and the user must be gone before they are closed,
    // or the agent could log in again in between.
    let connections = crate::management::agent_connections(management, agent)
        .await
        .map_err(OpError::Unavailable)?;
    crate::management::delete_agent_user(management, agent)
        .await
        .map_err(OpError::Unavailable)?;
    // Close what is left; one RabbitMQ is closing already may answer an
    // error, so what counts is that none is left within a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = crate::management::agent_connections(management, agent)
            .await
            .map_err(OpError::Unavailable)?;
        if left.is_empty() {
            return Ok(connections.len());
        }
        let closed = crate::management::close_connections(management, &left).await;
        if std::time::Instant::now() > deadline {
            return Err(OpError::Unavailable(format!(
                "the agent's broker connections are still open after 10 s ({}); run `revoke` again",
                closed.err().unwrap_or_else(|| left.join(", "))
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// After `agents reject`: the rejected agents' own RabbitMQ users go (when
/// the parent has management), so their certificates no longer log in.
pub async fn remove_agent_users(app: &App, agents: &[uuid::Uuid]) -> Result<(), OpError> {
    if !agents.is_empty() {
        app.refresh_crl().await.map_err(OpError::Internal)?;
    }
    for agent in agents {
        cut_off(app, agent).await?;
    }
    Ok(())
}

/// `agents delete NAME`: removes the agent's rows and its queue, revokes
/// its certificates and bans its key.
pub async fn agents_delete(app: &App, request: &AgentsRequest) -> Result<AgentsReport, OpError> {
    let agents = app.registry.agents().map_err(internal)?;
    if request.agents.is_empty() {
        return Err(OpError::BadRequest("name the agent to delete".into()));
    }
    let chosen: Vec<Agent> = request
        .agents
        .iter()
        .map(|w| find_agent(&agents, w))
        .collect::<Result<_, _>>()?;
    let channel = app.channel().ok_or_else(|| {
        OpError::Unavailable(
            "the parent is not connected to the broker right now (the agent's queue must be deleted too); try again in a moment".into(),
        )
    })?;
    let mut report = AgentsReport {
        changed: Vec::new(),
        ids: Vec::new(),
    };
    for agent in chosen {
        let registry = app.registry.clone();
        let id = agent.id;
        tokio::task::spawn_blocking(move || registry.delete_agent(&id))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        channel
            .queue_delete(
                fleetls_proto::topology::agent_queue(&agent.id).as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .map_err(|e| {
                OpError::Unavailable(format!(
                    "the agent's rows are gone but its queue could not be deleted ({e}); run `agents delete {}` again",
                    agent.id
                ))
            })?;
        remove_agent_users(app, &[agent.id]).await?;
        tracing::info!(agent = %agent.id, "agent deleted; its key is banned");
        report
            .changed
            .push(crate::admission::printable(&agent.name, 80));
        report.ids.push(agent.id);
    }
    app.campaign_changed.notify_one();
    Ok(report)
}

/// What `fleetls-parent security` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityView {
    /// Events recorded, by kind.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// The newest events, newest first.
    pub recent: Vec<crate::registry::SecurityEvent>,
}

/// The security events.
pub fn security_view(app: &App) -> Result<SecurityView, OpError> {
    Ok(SecurityView {
        counts: app
            .registry
            .security_counts()
            .map_err(internal)?
            .into_iter()
            .collect(),
        recent: app.registry.security_events(200).map_err(internal)?,
    })
}
