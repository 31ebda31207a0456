//! The CLI side of the admin API: the operations call the serving parent.

use std::path::PathBuf;

use serde::de::DeserializeOwned;

use crate::status::Status;

/// Where the serving parent is and how to prove we may ask it.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminTarget {
    /// Admin address of the serving parent
    #[arg(long, env = "FLEETLS_ADMIN", default_value = crate::config::DEFAULT_ADMIN)]
    pub admin: String,
    /// The parent's data dir (its admin.token is read)
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The admin token file (instead of --data-dir)
    #[arg(long, env = "FLEETLS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// A failed call to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token file was named.
    #[error("no admin token: give --data-dir (of the parent) or --token-file")]
    NoToken,
    /// The token file cannot be read.
    #[error("cannot read the admin token {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The parent did not answer.
    #[error("cannot reach the parent's admin API at {addr}: {source} (is `fleetls-parent serve` running there?)")]
    Unreachable {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The parent would not do it in the current state (HTTP 409).
    #[error("{0}")]
    Refused(String),
    /// A value given is invalid (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The parent failed (HTTP 5xx).
    #[error("{0}")]
    Failed(String),
}

/// A client of one serving parent.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// Reads the token and prepares the client.
    pub fn new(target: &AdminTarget) -> Result<Client, ClientError> {
        let path = match (&target.token_file, &target.data_dir) {
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => crate::token::token_path(dir),
            (None, None) => return Err(ClientError::NoToken),
        };
        let token =
            crate::token::read(&path).map_err(|source| ClientError::Token { path, source })?;
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("an HTTP client without TLS always builds"),
            base: format!("http://{}", target.admin),
            token,
        })
    }

    /// `GET path` and decode the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        self.decode(response).await
    }

    /// `POST path` with a JSON body and decode the JSON answer.
    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            // An operation over a big network (sending to 10,000 children) takes a while.
            .timeout(std::time::Duration::from_secs(600))
            .json(body)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        self.decode(response).await
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let status = response.status();
        if !status.is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let message = body
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| status.to_string());
            return Err(match status.as_u16() {
                400 | 422 => ClientError::Invalid(message),
                409 => ClientError::Refused(message),
                _ => ClientError::Failed(message),
            });
        }
        response
            .json()
            .await
            .map_err(|source| self.unreachable(source))
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            addr: self.base.clone(),
            source,
        }
    }

    /// The status view.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/api/status").await
    }
}

/// The first 16 hex digits of a CA fingerprint, for the table.
fn short_ca(fingerprint: &str) -> String {
    fingerprint
        .trim_start_matches("sha256:")
        .chars()
        .take(16)
        .collect()
}

/// The status as a table for a terminal.
pub fn status_table(status: &Status) -> String {
    use std::fmt::Write;
    let n = &status.network;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "network: {}   agents: {} ({} online, {} offline)   eligible: {}   with certificates: {}/{}   switched to SSL: {}",
        n.phase, n.agents, n.online, n.offline, n.eligible, n.children_with_certificates, n.eligible, n.switched_to_ssl
    );
    let s = &status.summary;
    let _ = writeln!(
        out,
        "summary: passed {}   with errors {}   did not participate {}   version not supporting SSL {}   mPOS {}",
        s.passed, s.with_errors, s.did_not_participate, s.version_not_supporting_ssl, s.mpos
    );
    if let Some(soonest) = n.soonest_expiry {
        let _ = writeln!(
            out,
            "certificates: soonest expiry {}   revoked {}   renewals done {}   renewals failed {}",
            when(soonest.max(0) as u64 * 1000),
            n.revoked_certificates,
            n.renewals_done,
            n.renewals_failed
        );
    }
    if let Some(r) = &n.ca_rotation {
        let _ = writeln!(
            out,
            "CA rotation: {}   {} -> {}   agents {}   trusting the new CA {}   on the new CA {}   still trusting the old {}",
            r.phase.as_str(),
            short_ca(&r.old_ca),
            short_ca(&r.new_ca),
            r.agents,
            r.trusting_new,
            r.on_new_ca,
            r.trusting_old
        );
        if let Some(waiting) = &r.waiting {
            let _ = writeln!(out, "CA rotation waits: {waiting}");
        }
    }
    if n.pending + n.rejected + n.compromised > 0 || n.security_events > 0 {
        let _ = writeln!(
            out,
            "trust: pending {}   rejected {}   COMPROMISED {}   security events {} (see `fleetls-parent security`)",
            n.pending, n.rejected, n.compromised, n.security_events
        );
    }
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<9} {:<14} {:<8} {:<9} {:<5} {:<5} {:<6} {:<19} {:<20} {:<16} ID",
        "NAME",
        "KIND",
        "VERSION",
        "LOCATION",
        "STATE",
        "ADMISSION",
        "CERT",
        "SSL",
        "AMQPS",
        "RESULT",
        "CAUSE",
        "CA"
    );
    let yes = |b: bool| if b { "yes" } else { "-" };
    // Whatever an agent sent about itself is printed without control
    // characters: a name cannot move the cursor or clear the screen.
    let safe = |text: &str| crate::admission::printable(text, crate::admission::MAX_NAME);
    for a in &status.agents {
        let admission = if a.compromised {
            "COMPROMISED"
        } else {
            a.admission.as_str()
        };
        // The last test result and, when it did not pass, why.
        let (result, cause) = match &a.last_result {
            Some(r) => (
                r.state.as_str(),
                r.cause
                    .as_deref()
                    .or(r.ssl_port.as_ref().and_then(|s| s.cause.as_deref()))
                    .or(r.cert_test.as_ref().and_then(|s| s.cause.as_deref()))
                    .unwrap_or("-"),
            ),
            None => ("-", "-"),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<9} {:<14} {:<8} {:<9} {:<5} {:<5} {:<6} {:<19} {:<20} {:<16} {}",
            safe(&a.name),
            a.kind.as_str(),
            safe(&a.version),
            safe(a.location.as_deref().unwrap_or("-")),
            if a.online { "online" } else { "offline" },
            admission,
            yes(a.has_certificate),
            yes(a.ssl),
            yes(a.broker_tls),
            result,
            safe(cause),
            // Which CA its certificate comes from (a CA rotation moves it).
            a.certificate_ca
                .as_deref()
                .map(short_ca)
                .unwrap_or_else(|| "-".into()),
            a.id
        );
    }
    out
}

/// A time in ms since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn when(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
