//! `certs generate | send | renew | reset`: the CA and the server
//! certificates, "Send information" to the children, and discarding them.

use std::path::PathBuf;
use std::sync::Arc;

use fleetls_proto::AgentKind;
use serde::{Deserialize, Serialize};

use super::agents::find_agent;
use crate::app::App;
use crate::op_error::{internal, OpError};
use crate::pki::{CompanyCa, Pki};
use crate::registry::Agent;
use crate::status::{eligible, ssl_capable};

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
    let local = crate::owed::LocalParents::of(&agents);
    let messages = to.into_iter().map(|i| crate::broker::Outgoing {
        agent: agents[i].id,
        body: crate::owed::certificates_ready(&pki, &agents[i], &local, &settings, renew),
        re: None,
    });
    app.send(&channel, messages).await.map_err(|e| {
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
