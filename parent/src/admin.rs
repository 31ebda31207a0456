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
        .route("/crl.der", get(crl_der))
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
        .route("/api/enroll", get(enroll_list).post(enroll_create))
        .route("/api/enroll/revoke", post(enroll_revoke))
        .route("/api/revoke", post(revoke))
        .route("/api/ca/rotate", post(ca_rotate))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token))
        .with_state(app)
        .merge(open)
}

/// Prometheus text format: agents by state, campaign progress, message
/// counters. Open without the token, like most exporters, and on loopback.
async fn metrics(State(app): State<Arc<App>>) -> Result<String, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let app2 = app.clone();
    let status = tokio::task::spawn_blocking(move || app2.overview())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let counters = crate::metrics::Counters {
        received: app.metrics.received.load(Relaxed),
        sent: app.metrics.sent.load(Relaxed),
        dead_lettered: app.metrics.dead_lettered.load(Relaxed),
        dead_letters_refused: app.metrics.dead_letters_refused.load(Relaxed),
        replayed: app.metrics.replayed.load(Relaxed),
        batches: app.metrics.batches.load(Relaxed),
    };
    let app3 = app.clone();
    let counts = tokio::task::spawn_blocking(move || app3.registry.security_counts())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let lifetime = app.config.cert_lifetime.whole_seconds();
    Ok(crate::metrics::render(
        &status, &counters, &counts, lifetime,
    ))
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

/// The signing CA's revocation list alone, DER: what RFC 5280 asks a CRL
/// distribution point to serve (`settings set --crl-url`), and what OpenSSL
/// and other TLS clients fetch from one. During a CA rotation the other
/// CA's list is in `/crl.pem` only.
async fn crl_der(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateRevocationListDer;
    let response = crl(State(app)).await?;
    let pem = axum::body::to_bytes(response.into_body(), 1 << 26)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let der = CertificateRevocationListDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| ApiError::internal("crl.pem holds no revocation list"))?
        .map_err(|e| ApiError::internal(format!("crl.pem: {e}")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/pkix-crl")],
        der.as_ref().to_vec(),
    )
        .into_response())
}

async fn ca_rotate(
    State(app): State<Arc<App>>,
    Json(request): Json<crate::rotation::RotateRequest>,
) -> Result<Json<crate::rotation::RotateReport>, ApiError> {
    Ok(Json(crate::tasks::rotation::rotate(&app, &request).await?))
}

async fn revoke(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::RevokeRequest>,
) -> Result<Json<ops::RevokeReport>, ApiError> {
    Ok(Json(ops::revoke(&app, &request).await?))
}

async fn enroll_create(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::enroll::CreateRequest>,
) -> Result<Json<ops::enroll::Created>, ApiError> {
    Ok(Json(
        blocking(&app, move |app| {
            ops::enroll::create(&app.registry, &request)
        })
        .await?,
    ))
}

async fn enroll_list(
    State(app): State<Arc<App>>,
) -> Result<Json<Vec<ops::enroll::Listed>>, ApiError> {
    Ok(Json(
        blocking(&app, |app| ops::enroll::list(&app.registry)).await?,
    ))
}

/// Which token `enroll revoke` names.
#[derive(serde::Deserialize)]
struct EnrollRevoke {
    id: String,
}

async fn enroll_revoke(
    State(app): State<Arc<App>>,
    Json(request): Json<EnrollRevoke>,
) -> Result<Json<ops::enroll::Listed>, ApiError> {
    Ok(Json(
        blocking(&app, move |app| {
            ops::enroll::revoke(&app.registry, &request.id)
        })
        .await?,
    ))
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

async fn broker_tls(
    State(app): State<Arc<App>>,
    Json(request): Json<ops::BrokerTlsRequest>,
) -> Result<Json<crate::broker_switch::BrokerTlsFiles>, ApiError> {
    Ok(Json(
        blocking(&app, move |app| ops::broker_tls(app, &request)).await?,
    ))
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
