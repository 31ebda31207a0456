//! `settings show | set`: the SSL settings, the operator's own certificates
//! for the SSL port and the broker, and the TLS policy sent to local parents
//! when it changes.

use fleetls_proto::AgentKind;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::op_error::{internal, OpError};
use crate::registry::Agent;
use crate::settings::{SettingsChange, SslSettings};

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
            "nothing to change: give at least one of --port, --local-parent-port, --names, --ips, --broker-names, --broker-ips, --min-tls, --cipher-suites, --crl-url, --parent-cert, --broker-cert".into(),
        ));
    }
    let mut settings = app.settings.write().unwrap_or_else(|p| p.into_inner());
    if app.pki().is_some() && !change.tls_only() {
        return Err(OpError::Refused(
            "the SSL settings are frozen: certificates were generated with them. \
             To change them run `fleetls-parent certs reset` (it discards every certificate), then set and generate again \
             (--min-tls, --cipher-suites and --crl-url are inside no certificate issued so far: they may change at any time)"
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
            &change.parent_cert_key,
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
    if let Some(pki) = app.pki() {
        // Certificates signed from now on name it.
        pki.set_crl_url(next.crl_url.clone());
    }
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
        .filter(|a| {
            a.admission == crate::registry::Admission::Accepted
                && !a.compromised
                && a.has_certificate
        })
        .collect();
    let local = crate::owed::LocalParents::of(&local_parents);
    let messages: Vec<crate::broker::Outgoing> = local_parents
        .iter()
        .map(|a| crate::broker::Outgoing {
            agent: a.id,
            body: crate::owed::certificates_ready(&pki, a, &local, &settings, false),
            re: None,
        })
        .collect();
    app.send(&channel, messages).await.map_err(|e| {
        OpError::Unavailable(format!(
            "sending the TLS settings to local parents failed: {e}"
        ))
    })?;
    Ok(())
}
