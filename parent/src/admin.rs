//! The admin API on loopback: JSON over HTTP, every request carrying the
//! bearer token from `DIR/admin.token`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api_error::ApiError;
use crate::app::App;
use crate::ops::{self, OpError};
use crate::settings::SettingsChange;
use crate::shutdown::Shutdown;
use crate::status::Overview;

/// Builds the admin router.
pub fn router(app: Arc<App>) -> Router {
    let (console_page, console_api) = crate::console::router(app.clone());
    let open = Router::new()
        .route("/metrics", get(metrics))
        .route("/crl.pem", get(crl))
        .with_state(app.clone())
        .merge(console_page);
    Router::new()
        .merge(console_api)
        .route("/api/status", get(status))
        .route("/api/summary", get(summary))
        .route("/api/cluster", get(cluster))
        .route("/api/settings", get(settings_show).post(settings_set))
        .route("/api/certs/generate", post(certs_generate))
        .route("/api/certs/send", post(certs_send))
        .route("/api/certs/reset", post(certs_reset))
        .route("/api/campaigns", post(campaign_start))
        .route("/api/campaigns/current", get(campaign_current))
        .route("/api/without-ssl", get(without_ssl))
        .route("/api/export", post(export))
        .route("/api/doctor", post(doctor))
        .route("/api/broker-tls", post(broker_tls))
        .route("/api/admission", get(agents_list))
        .route("/api/agents/accept", post(agents_accept))
        .route("/api/agents/reject", post(agents_reject))
        .route("/api/agents/delete", post(agents_delete))
        .route("/api/agents/exclude", post(agents_exclude))
        .route("/api/agents/include", post(agents_include))
        .route("/api/security", get(security))
        .route("/api/revoke", post(revoke))
        .route("/api/ca/rotate", post(ca_rotate))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token))
        .with_state(app)
        .merge(open)
}

/// Prometheus text format: agents by state, campaign progress, message
/// counters. Open without the token, like most exporters, and on loopback.
async fn metrics(State(app): State<Arc<App>>) -> Result<String, ApiError> {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let app2 = app.clone();
    let status = tokio::task::spawn_blocking(move || app2.overview())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let n = &status.network;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    gauge(
        "fleetls_agents",
        "Registered agents by state.",
        &[
            ("{state=\"online\"}", n.online as f64),
            ("{state=\"offline\"}", n.offline as f64),
            ("{state=\"eligible\"}", n.eligible as f64),
            (
                "{state=\"with_certificate\"}",
                n.children_with_certificates as f64,
            ),
            ("{state=\"ssl\"}", n.switched_to_ssl as f64),
            ("{state=\"broker_tls\"}", n.broker_tls as f64),
            ("{state=\"pending\"}", n.pending as f64),
            ("{state=\"rejected\"}", n.rejected as f64),
            ("{state=\"compromised\"}", n.compromised as f64),
        ],
    );
    gauge(
        "fleetls_certificates_revoked",
        "Certificates revoked (by revoke, rejection, deletion, or superseded by a renewal).",
        &[("", n.revoked_certificates as f64)],
    );
    if let Some(soonest) = n.soonest_expiry {
        gauge(
            "fleetls_certificate_soonest_expiry_seconds",
            "When the first valid agent certificate expires (Unix seconds).",
            &[("", soonest as f64)],
        );
    }
    gauge(
        "fleetls_certificate_renewals",
        "Renewals: done (a certificate issued to an agent that held one), failed (a CSR refused from such an agent).",
        &[
            ("{result=\"done\"}", n.renewals_done as f64),
            ("{result=\"failed\"}", n.renewals_failed as f64),
        ],
    );
    if let Some(r) = &n.ca_rotation {
        gauge(
            "fleetls_ca_rotation_agents",
            "The newest CA rotation: agents concerned, trusting the new CA, on the new CA, still trusting the old.",
            &[
                ("{state=\"concerned\"}", r.agents as f64),
                ("{state=\"trusting_new\"}", r.trusting_new as f64),
                ("{state=\"on_new_ca\"}", r.on_new_ca as f64),
                ("{state=\"trusting_old\"}", r.trusting_old as f64),
            ],
        );
    }
    let s = &status.summary;
    gauge(
        "fleetls_summary",
        "The SSL switchover test summary.",
        &[
            ("{result=\"passed\"}", s.passed as f64),
            ("{result=\"with_errors\"}", s.with_errors as f64),
            (
                "{result=\"did_not_participate\"}",
                s.did_not_participate as f64,
            ),
            (
                "{result=\"version_not_supporting_ssl\"}",
                s.version_not_supporting_ssl as f64,
            ),
            ("{result=\"mpos\"}", s.mpos as f64),
            ("{result=\"excluded\"}", s.excluded as f64),
        ],
    );
    if !n.nodes.is_empty() {
        let label = |node: &crate::cluster::NodeHealth| {
            format!("{{node=\"{}\"}}", node.name.replace(['"', '\\', '\n'], "_"))
        };
        let samples = |value: fn(&crate::cluster::NodeHealth) -> f64| -> Vec<(String, f64)> {
            n.nodes
                .iter()
                .map(|node| (label(node), value(node)))
                .collect()
        };
        for (name, help, value) in [
            (
                "fleetls_broker_node_running",
                "1 when the broker node runs (management's view).",
                (|n: &crate::cluster::NodeHealth| f64::from(u8::from(n.running)))
                    as fn(&crate::cluster::NodeHealth) -> f64,
            ),
            (
                "fleetls_broker_node_mem_alarm",
                "1 while the broker node's memory alarm blocks publishers.",
                |n| f64::from(u8::from(n.mem_alarm)),
            ),
            (
                "fleetls_broker_node_disk_free_alarm",
                "1 while the broker node's disk alarm blocks publishers.",
                |n| f64::from(u8::from(n.disk_free_alarm)),
            ),
            (
                "fleetls_broker_node_connections",
                "fleetls connections on the broker node.",
                |n| n.connections as f64,
            ),
        ] {
            let owned = samples(value);
            let refs: Vec<(&str, f64)> = owned.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            gauge(name, help, &refs);
        }
    }
    if let Some(c) = &status.campaign {
        let kind = format!("{{kind=\"{}\",state=\"{}\"", c.kind, c.state);
        let labels: Vec<(String, f64)> = [
            ("waiting", c.waiting),
            ("acting", c.acting),
            ("passed", c.passed),
            ("failed", c.failed),
            ("did_not_participate", c.did_not_participate),
        ]
        .iter()
        .map(|(k, v)| (format!("{kind},children=\"{k}\"}}"), *v as f64))
        .collect();
        let refs: Vec<(&str, f64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        gauge(
            "fleetls_campaign_children",
            "Children of the newest campaign by state.",
            &refs,
        );
    }
    for (name, help, value) in [
        (
            "fleetls_messages_received_total",
            "Messages consumed from fleetls.parent.",
            app.metrics.received.load(Relaxed),
        ),
        (
            "fleetls_messages_sent_total",
            "Messages sent to agents.",
            app.metrics.sent.load(Relaxed),
        ),
        (
            "fleetls_messages_dead_lettered_total",
            "Messages dead-lettered to fleetls.dead.",
            app.metrics.dead_lettered.load(Relaxed),
        ),
        (
            "fleetls_registry_batches_total",
            "Registry transactions of consumed messages.",
            app.metrics.batches.load(Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let app3 = app.clone();
    let counts = tokio::task::spawn_blocking(move || app3.registry.security_counts())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let _ = writeln!(
        out,
        "# HELP fleetls_security_events_total Security events recorded: forged or replayed commands, impersonation, banned keys, unsigned, oversized or invalid messages.\n# TYPE fleetls_security_events_total counter"
    );
    for (kind, count) in &counts {
        let _ = writeln!(
            out,
            "fleetls_security_events_total{{kind=\"{kind}\"}} {count}"
        );
    }
    Ok(out)
}

/// Serves the admin API on a bound listener until `shutdown` fires.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), app.token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token: send Authorization: Bearer <the content of DIR/admin.token>",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The whole status, brought up to date on a blocking thread and sent as
/// it is written: each agent's JSON is kept between calls and shared with
/// the answer (see `status::Cache`), so no copy of the whole is made.
async fn status(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let pieces = tokio::task::spawn_blocking(move || {
        app.with_status(|overview, mut list| list.status_json(&overview))
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let body = axum::body::Body::from_stream(futures_lite::stream::iter(
        pieces.map(Ok::<_, std::convert::Infallible>),
    ));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App) -> Result<T, OpError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

async fn agents_list(State(app): State<Arc<App>>) -> Result<Json<Vec<ops::AgentEntry>>, ApiError> {
    Ok(Json(blocking(&app, ops::agents_list).await?))
}

async fn agents_accept(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::AgentsRequest>,
) -> Result<Json<ops::AgentsReport>, ApiError> {
    let admission = crate::registry::Admission::Accepted;
    Ok(Json(
        blocking(&app, move |app| ops::agents_admit(app, &request, admission)).await?,
    ))
}

async fn agents_reject(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::AgentsRequest>,
) -> Result<Json<ops::AgentsReport>, ApiError> {
    let admission = crate::registry::Admission::Rejected;
    let report = blocking(&app, move |app| ops::agents_admit(app, &request, admission)).await?;
    ops::remove_agent_users(&app, &report.ids).await?;
    Ok(Json(report))
}

async fn agents_exclude(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::AgentsRequest>,
) -> Result<Json<ops::AgentsReport>, ApiError> {
    Ok(Json(
        blocking(&app, move |app| ops::agents_exclude(app, &request, true)).await?,
    ))
}

async fn agents_include(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::AgentsRequest>,
) -> Result<Json<ops::AgentsReport>, ApiError> {
    Ok(Json(
        blocking(&app, move |app| ops::agents_exclude(app, &request, false)).await?,
    ))
}

async fn agents_delete(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::AgentsRequest>,
) -> Result<Json<ops::AgentsReport>, ApiError> {
    Ok(Json(ops::agents_delete(&app, &request).await?))
}

/// The CA's revocation list, PEM, open like `/metrics`: whoever checks a
/// certificate may fetch it.
async fn crl(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let path =
        crate::layout::Layout::new(&app.config.data_dir).certificate(crate::layout::CertFile::Crl);
    match tokio::fs::read(&path).await {
        Ok(pem) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/pkix-crl")],
            pem,
        )
            .into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "there is no CA yet: run `fleetls-parent certs generate`",
        )),
        Err(e) => Err(ApiError::internal(format!("{}: {e}", path.display()))),
    }
}

async fn ca_rotate(
    State(app): State<Arc<App>>,
    Json(request): Json<crate::rotation::RotateRequest>,
) -> Result<Json<crate::rotation::RotateReport>, ApiError> {
    Ok(Json(crate::rotation::rotate(&app, &request).await?))
}

async fn revoke(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::RevokeRequest>,
) -> Result<Json<ops::RevokeReport>, ApiError> {
    Ok(Json(ops::revoke(&app, &request).await?))
}

/// The newest security events (at most 200) and the counts by kind.
async fn security(State(app): State<Arc<App>>) -> Result<Json<ops::SecurityView>, ApiError> {
    Ok(Json(blocking(&app, ops::security_view).await?))
}

async fn settings_show(State(app): State<Arc<App>>) -> Json<ops::SettingsView> {
    Json(ops::settings_show(&app))
}

async fn settings_set(
    State(app): State<Arc<App>>,
    Json(change): Json<SettingsChange>,
) -> Result<Json<ops::SettingsView>, ApiError> {
    let tls =
        change.min_tls.is_some() || change.cipher_suites.is_some() || change.parent_cert.is_some();
    let view = blocking(&app, move |app| ops::settings_set(app, &change)).await?;
    if tls {
        ops::apply_tls_policy(&app).await?;
    }
    Ok(Json(view))
}

async fn certs_generate(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::GenerateRequest>,
) -> Result<Json<ops::GenerateReport>, ApiError> {
    let report = blocking(&app, move |app| ops::certs_generate(app, &request)).await?;
    if let Err(e) = app.start_ssl_port().await {
        tracing::warn!(error = %e, "the SSL port cannot be opened");
    }
    Ok(Json(report))
}

async fn campaign_start(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::CampaignRequest>,
) -> Result<Json<ops::CampaignStart>, ApiError> {
    Ok(Json(ops::start_campaign(&app, &request).await?))
}

async fn export(
    State(app): State<Arc<App>>,
    Json(request): Json<crate::export::ExportRequest>,
) -> Result<Json<crate::export::ExportReport>, ApiError> {
    let report = blocking(&app, move |app| crate::export::export_op(app, &request)).await?;
    // An exported identity replaces (revokes) the agent's earlier ones.
    if !report.certificates.is_empty() {
        app.refresh_crl().await.map_err(ApiError::internal)?;
    }
    Ok(Json(report))
}

#[derive(serde::Deserialize)]
struct DoctorRequest {
    target: String,
}

async fn doctor(
    State(app): State<Arc<App>>,
    Json(request): Json<DoctorRequest>,
) -> Json<crate::doctor::DoctorReport> {
    use crate::layout::CertFile;
    let layout = crate::layout::Layout::new(&app.config.data_dir);
    let (cert, key) = crate::own::client_identity(&app.config.data_dir);
    Json(
        crate::doctor::diagnose_files(
            &request.target,
            &layout.certificate(CertFile::TrustPem),
            Some((&cert, &key)),
            Default::default(),
        )
        .await,
    )
}

async fn without_ssl(State(app): State<Arc<App>>) -> Result<Json<ops::WithoutSsl>, ApiError> {
    Ok(Json(ops::without_ssl(&app).await?))
}

#[derive(serde::Deserialize)]
struct BrokerTlsRequest {
    out: std::path::PathBuf,
    /// The AMQPS port (default 5671).
    #[serde(default)]
    amqps_port: Option<u16>,
    /// The addresses it binds to, `;`-separated (default: the broker IPs
    /// of the settings).
    #[serde(default)]
    amqps_bind: Option<String>,
    /// Cluster nodes given a certificate and a folder of their own,
    /// `LABEL=NAME;NAME;IP` each.
    #[serde(default)]
    nodes: Vec<String>,
}

async fn broker_tls(
    State(app): State<Arc<App>>,
    Json(request): Json<BrokerTlsRequest>,
) -> Result<Json<crate::broker_switch::BrokerTlsFiles>, ApiError> {
    blocking(&app, move |app| {
        let Some(pki) = app.pki() else {
            return Err(OpError::Refused(
                "there are no certificates yet: run `certs generate` first".into(),
            ));
        };
        let mut nodes: Vec<crate::broker_switch::BrokerNode> = Vec::new();
        for text in &request.nodes {
            let node =
                crate::broker_switch::BrokerNode::parse(text).map_err(OpError::BadRequest)?;
            if nodes.iter().any(|n| n.label == node.label) {
                return Err(OpError::BadRequest(format!(
                    "--node: the label {:?} is given twice: give each node its own",
                    node.label
                )));
            }
            nodes.push(node);
        }
        let listener = crate::broker_switch::AmqpsListener::new(
            request.amqps_port,
            request.amqps_bind.as_deref(),
            &app.settings().broker_ips,
        )
        .map_err(OpError::BadRequest)?;
        let final_fragment = ops::final_fragment(app)?;
        crate::broker_switch::write_broker_files(
            &app.config.data_dir,
            &pki,
            &request.out,
            &listener,
            &nodes,
            &final_fragment,
        )
        .map_err(OpError::BadRequest)
    })
    .await
    .map(Json)
}

async fn campaign_current(
    State(app): State<Arc<App>>,
) -> Result<Json<Option<crate::campaign::Progress>>, ApiError> {
    Ok(Json(blocking(&app, ops::campaign_progress).await?))
}

async fn certs_send(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::SendRequest>,
) -> Result<Json<ops::SendReport>, ApiError> {
    Ok(Json(ops::certs_send(&app, &request).await?))
}

async fn certs_reset(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::ResetRequest>,
) -> Result<Json<ops::ResetReport>, ApiError> {
    let report = blocking(&app, move |app| ops::certs_reset(app, &request)).await?;
    app.stop_ssl_port().await;
    Ok(Json(report))
}

/// The broker's nodes and which node each agent's own connection is on,
/// as management last showed them (404 without `--management`, or before
/// the first reading).
async fn cluster(
    State(app): State<Arc<App>>,
) -> Result<Json<crate::cluster::ClusterView>, ApiError> {
    app.cluster_view().map(Json).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "no view of the broker's nodes: the parent needs --management, and reads it every 10 s",
        )
    })
}

/// The status without the agent list: cheap to poll on a big network.
async fn summary(State(app): State<Arc<App>>) -> Result<Json<Overview>, ApiError> {
    let app2 = app.clone();
    let overview = tokio::task::spawn_blocking(move || app2.overview())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(overview))
}
