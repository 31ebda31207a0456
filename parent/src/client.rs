//! The CLI side of the admin API: the operations call the serving parent.

use std::path::PathBuf;

use serde::de::DeserializeOwned;

use crate::status::Status;

/// Where the serving parent is and how to prove we may ask it.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminTarget {
    /// Admin address of the serving parent (default: the one `serve`
    /// recorded in DATA_DIR/admin.addr, else 127.0.0.1:12380)
    #[arg(long, env = "FLEETLS_ADMIN")]
    pub admin: Option<String>,
    /// The parent's data dir (its admin.token and admin.addr are read)
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The admin token file (instead of --data-dir)
    #[arg(long, env = "FLEETLS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Wait up to this long (e.g. 30s) for a parent that is still starting
    /// to answer, instead of failing at once
    #[arg(long, value_parser = crate::duration::parse_duration)]
    pub wait: Option<std::time::Duration>,
}

/// Where the admin address came from, for an error that says what to do.
#[derive(Debug, Clone)]
enum AddrSource {
    /// `--admin` or `FLEETLS_ADMIN`.
    Given,
    /// `DATA_DIR/admin.addr`, written by `serve`.
    Recorded(PathBuf),
    /// Neither: the default.
    Default,
}

impl std::fmt::Display for AddrSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddrSource::Given => f.write_str("given by --admin or FLEETLS_ADMIN"),
            AddrSource::Recorded(path) => write!(f, "recorded by `serve` in {}", path.display()),
            AddrSource::Default => {
                f.write_str("the default: no --admin and no admin.addr in the data dir")
            }
        }
    }
}

/// A failed call to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token file was named.
    #[error("no admin token: give --data-dir (of the parent) or --token-file")]
    NoToken,
    /// The token file cannot be read.
    #[error(
        "cannot read the admin token {path}: {error} (is this the data dir of a parent that ran \
         `fleetls-parent serve`? it writes the token at its first start)"
    )]
    Token {
        /// The file.
        path: PathBuf,
        /// The cause (named once in the message).
        error: std::io::Error,
    },
    /// The parent did not answer. Its message names the innermost cause
    /// once (reqwest's own chain repeats the address and the request).
    #[error(
        "cannot reach the parent's admin API at {addr} ({from}): {cause}; start `fleetls-parent \
         serve` with this data dir, or give its address with --admin HOST:PORT (FLEETLS_ADMIN); \
         --wait 30s waits for a parent that is still starting"
    )]
    Unreachable {
        /// The address.
        addr: String,
        /// Where the address came from.
        from: String,
        /// The innermost cause (e.g. "Connection refused (os error 111)").
        cause: String,
    },
    /// The parent answered with something that is not the expected JSON.
    #[error("the parent's admin API at {addr} sent an answer that cannot be read: {cause}")]
    BadAnswer {
        /// The address.
        addr: String,
        /// Why it cannot be read.
        cause: String,
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
    from: AddrSource,
    token: String,
    /// Until when a connection that fails is tried again (`--wait`).
    wait_until: Option<std::time::Instant>,
}

/// The innermost cause of an error: the one line that says what happened.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

impl Client {
    /// Reads the token and the admin address (see [`AdminTarget`]) and
    /// prepares the client. With `--wait`, a token or address not written
    /// yet (a parent that is still starting) is waited for.
    pub fn new(target: &AdminTarget) -> Result<Client, ClientError> {
        let wait_until = target.wait.map(|w| std::time::Instant::now() + w);
        let path = match (&target.token_file, &target.data_dir) {
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => crate::token::token_path(dir),
            (None, None) => return Err(ClientError::NoToken),
        };
        let token = loop {
            match crate::token::read(&path) {
                Ok(token) => break token,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && wait_until.is_some_and(|t| std::time::Instant::now() < t) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(error) => return Err(ClientError::Token { path, error }),
            }
        };
        let (admin, from) = match (&target.admin, &target.data_dir) {
            (Some(admin), _) => (admin.clone(), AddrSource::Given),
            (None, Some(dir)) => {
                let file = crate::layout::Layout::new(dir).admin_addr();
                // A parent still starting writes its token before it listens.
                loop {
                    match std::fs::read_to_string(&file) {
                        Ok(text) if !text.trim().is_empty() => {
                            break (text.trim().to_owned(), AddrSource::Recorded(file));
                        }
                        _ if wait_until.is_some_and(|t| std::time::Instant::now() < t) => {
                            std::thread::sleep(std::time::Duration::from_millis(200));
                        }
                        _ => break (crate::config::DEFAULT_ADMIN.to_owned(), AddrSource::Default),
                    }
                }
            }
            (None, None) => (crate::config::DEFAULT_ADMIN.to_owned(), AddrSource::Default),
        };
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("an HTTP client without TLS always builds"),
            base: format!("http://{admin}"),
            from,
            token,
            wait_until,
        })
    }

    /// Sends `request` (built again for every try); with `--wait`, a
    /// connection that fails is tried again until the wait is over.
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        loop {
            match request().bearer_auth(&self.token).send().await {
                Ok(response) => return Ok(response),
                Err(e)
                    if e.is_connect()
                        && self
                            .wait_until
                            .is_some_and(|t| std::time::Instant::now() < t) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(self.unreachable(&e)),
            }
        }
    }

    /// `GET path` and decode the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self.send(|| self.http.get(&url)).await?;
        self.decode(response).await
    }

    /// `POST path` with a JSON body and decode the JSON answer.
    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .send(|| {
                self.http
                    .post(&url)
                    // An operation over a big network (sending to 10,000 children) takes a while.
                    .timeout(std::time::Duration::from_secs(600))
                    .json(body)
            })
            .await?;
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
        response.json().await.map_err(|e| ClientError::BadAnswer {
            addr: self.base.clone(),
            cause: root_cause(&e),
        })
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            addr: self.base.clone(),
            from: self.from.to_string(),
            cause: root_cause(error),
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
        "network: {}   agents: {} ({} online, {} offline{})   eligible: {}   with certificates: {}/{}   switched to SSL: {}",
        n.phase,
        n.agents,
        n.online,
        n.offline,
        if n.silent > 0 {
            format!(", {} SILENT: connected, no report for too long", n.silent)
        } else {
            String::new()
        },
        n.eligible,
        n.children_with_certificates,
        n.eligible,
        n.switched_to_ssl
    );
    let s = &status.summary;
    let _ = writeln!(
        out,
        "summary: passed {}   with errors {}   did not participate {}   version not supporting SSL {}   mPOS {}   excluded {}",
        s.passed, s.with_errors, s.did_not_participate, s.version_not_supporting_ssl, s.mpos, s.excluded
    );
    network_lines(&mut out, n);
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
    for a in &status.agents {
        agent_row(&mut out, a);
    }
    out
}

/// The lines under the summary: certificates, a CA rotation, enrollment,
/// names, trust, queues and the broker's nodes (each only when it says
/// something).
fn network_lines(out: &mut String, n: &crate::status::Network) {
    use std::fmt::Write;
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
    if n.online_from == "reports" {
        let _ = writeln!(
            out,
            "online: from the agents' reports only — the broker does not say who is connected (is its rabbitmq_event_exchange plugin on, and the broker reachable? see README, \"Presence\")"
        );
    } else if n.online_from == "reading" {
        let _ = writeln!(
            out,
            "online: being read from the broker (the parent has just started or lost the broker): nobody counts as online until it is, and campaigns wait"
        );
    }
    if let Some(open) = &n.open_enrollment {
        let _ = writeln!(
            out,
            "OPEN ENROLLMENT ({open}): any broker user can obtain a certificate; use enrollment tokens (`fleetls-parent enroll create`)"
        );
    }
    if n.flagged_names > 0 {
        let _ = writeln!(
            out,
            "names: {} agent(s) with a name taken by another or printing like another's (see `fleetls-parent agents list`)",
            n.flagged_names
        );
    }
    if n.pending + n.rejected + n.compromised > 0 || n.security_events > 0 {
        let _ = writeln!(
            out,
            "trust: pending {}   rejected {}   COMPROMISED {}   security events {} (see `fleetls-parent security`)",
            n.pending, n.rejected, n.compromised, n.security_events
        );
    }
    if let Some(t) = &n.topology {
        let _ = writeln!(
            out,
            "TOPOLOGY: a broker user damaged the wire {} time(s), rebuilt each time; last at {}: {}",
            t.repairs,
            when(t.last_at),
            t.last
        );
    }
    if let Some(q) = &n.queue_type {
        let _ = writeln!(out, "queues: {} ({})", q.queue_type, q.why);
    }
    if let (Some(at), false) = (n.nodes_at, n.nodes.is_empty()) {
        let _ = writeln!(
            out,
            "broker nodes {}",
            crate::cluster::age_line(at, n.connections_at.unwrap_or(0), fleetls_proto::now_ms())
        );
    }
    for node in &n.nodes {
        let mut state = if node.running {
            "running"
        } else {
            "NOT RUNNING"
        }
        .to_owned();
        if node.mem_alarm {
            state.push_str(", MEMORY ALARM");
        }
        if node.disk_free_alarm {
            state.push_str(", DISK ALARM");
        }
        let _ = writeln!(
            out,
            "broker node {}: {state}   fleetls connections {}   agents {}",
            node.name, node.connections, node.agents
        );
    }
}

/// One agent's row of the table.
fn agent_row(out: &mut String, a: &crate::status::AgentStatus) {
    use std::fmt::Write;
    let yes = |b: bool| if b { "yes" } else { "-" };
    // Whatever an agent sent about itself is printed without control
    // characters: a name cannot move the cursor or clear the screen.
    let safe = |text: &str| crate::admission::printable(text, crate::admission::MAX_NAME);
    let admission = if a.compromised {
        "COMPROMISED"
    } else {
        a.admission.as_str()
    };
    // The last test result and, when it did not pass, why; an agent
    // kept plain by decision says so, with the operator's reason.
    let (result, cause) = match (&a.excluded, &a.last_result) {
        (Some(reason), _) => ("excluded", reason.as_str()),
        (None, Some(r)) => (
            r.state.as_str(),
            r.cause
                .as_deref()
                .or(r.ssl_port.as_ref().and_then(|s| s.cause.as_deref()))
                .or(r.cert_test.as_ref().and_then(|s| s.cause.as_deref()))
                .unwrap_or("-"),
        ),
        (None, None) => ("-", "-"),
    };
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<9} {:<14} {:<8} {:<9} {:<5} {:<5} {:<6} {:<19} {:<20} {:<16} {}",
        safe(&a.name),
        a.kind.as_str(),
        safe(&a.version),
        safe(a.location.as_deref().unwrap_or("-")),
        if a.silent {
            "silent"
        } else if a.online {
            "online"
        } else {
            "offline"
        },
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
