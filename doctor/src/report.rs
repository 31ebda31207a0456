//! The report and its vocabulary: what the doctor offers and how long it
//! waits ([`Limits`], [`Offer`]), the checks it makes ([`Check`], with its
//! [`Problem`]), the certificates it saw ([`CertSummary`]) and the whole
//! [`DoctorReport`]. Every other module writes into these types; this one
//! uses none of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The TLS versions the doctor offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Offer {
    /// TLS 1.2 and 1.3, as every fleetls agent.
    #[default]
    Both,
    /// Only TLS 1.2: what a device limited to it would get.
    Tls12,
    /// Only TLS 1.3.
    Tls13,
}

impl std::str::FromStr for Offer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "1.2" => Ok(Offer::Tls12),
            "1.3" => Ok(Offer::Tls13),
            other => Err(format!("{other:?}: give 1.2 or 1.3")),
        }
    }
}

/// How long each stage may take, and what the doctor offers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Name resolution, and the TCP connection to each address.
    pub connect: Duration,
    /// The TLS handshake.
    pub handshake: Duration,
    /// How long to wait after the handshake for the server to speak or to
    /// refuse the client certificate (TLS 1.3 refuses it only then).
    pub after_handshake: Duration,
    /// The TLS versions offered.
    pub offer: Offer,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            after_handshake: Duration::from_secs(3),
            offer: Offer::Both,
        }
    }
}

/// What a failed check found, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The target, the CA or the client certificate given cannot be used.
    BadInput,
    /// The host name does not resolve.
    Dns,
    /// Nothing listens on the port (connection refused).
    Refused,
    /// No answer in time.
    Timeout,
    /// The port answers, but not with TLS.
    NotTls,
    /// The server's certificate does not chain to the CA.
    UnknownIssuer,
    /// The server sent only its own certificate, whose issuer is not the CA.
    MissingIntermediate,
    /// The host name is not among the certificate's names.
    NameMismatch,
    /// A certificate is expired.
    Expired,
    /// A certificate is not valid yet.
    NotYetValid,
    /// The server's certificate expires soon: renew it now.
    ExpiresSoon,
    /// The server refused the client certificate.
    ClientCertRejected,
    /// The server wants a client certificate and none was given.
    ClientCertRequired,
    /// The server and this client share no TLS version or cipher suite.
    ProtocolMismatch,
    /// Anything else.
    Other,
}

impl Problem {
    /// The name used in JSON and in the text.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::BadInput => "bad_input",
            Problem::Dns => "dns",
            Problem::Refused => "refused",
            Problem::Timeout => "timeout",
            Problem::NotTls => "not_tls",
            Problem::UnknownIssuer => "unknown_issuer",
            Problem::MissingIntermediate => "missing_intermediate",
            Problem::NameMismatch => "name_mismatch",
            Problem::Expired => "expired",
            Problem::NotYetValid => "not_yet_valid",
            Problem::ExpiresSoon => "expires_soon",
            Problem::ClientCertRejected => "client_cert_rejected",
            Problem::ClientCertRequired => "client_cert_required",
            Problem::ProtocolMismatch => "protocol_mismatch",
            Problem::Other => "other",
        }
    }
}

/// One check and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `target`, `ca`, `client_identity`, `resolve`,
    /// `connect`, `handshake`, `issuer`, `name`, `validity`, `client_certificate`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What went wrong, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// What was found, in plain words.
    pub detail: String,
    /// What to do about it, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// A certificate the server presented, as an operator reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertSummary {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Start of validity (UTC).
    pub not_before: String,
    /// End of validity (UTC).
    pub not_after: String,
    /// Subject alternative names (`DNS:…`, `IP:…`).
    pub names: Vec<String>,
    /// `sha256:` + hex of the DER.
    pub fingerprint: String,
}

/// Everything the doctor found about one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DoctorReport {
    /// `HOST:PORT` as given.
    pub target: String,
    /// Every check passed.
    pub ok: bool,
    /// The address connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The TLS version negotiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The chain the server presented, leaf first.
    #[serde(default)]
    pub server_chain: Vec<CertSummary>,
    /// The checks in the order they ran; a check that could not run is left out.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// An empty report on `target`: nothing checked yet, so nothing failed.
    pub(crate) fn new(target: &str) -> Self {
        DoctorReport {
            target: target.to_owned(),
            ok: true,
            address: None,
            protocol: None,
            server_chain: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Adds a check `name` that passed, with what was found.
    pub(crate) fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_owned(),
            ok: true,
            problem: None,
            detail: detail.into(),
            fix: None,
        });
    }

    /// Adds a check made elsewhere, passed or failed.
    pub(crate) fn push(&mut self, check: Check) {
        self.ok &= check.ok;
        self.checks.push(check);
    }

    /// Adds a check `name` that failed: the problem, what was found, and
    /// what to do about it.
    pub(crate) fn fail(
        &mut self,
        name: &str,
        problem: Problem,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.ok = false;
        self.checks.push(Check {
            name: name.to_owned(),
            ok: false,
            problem: Some(problem),
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    /// The problems found, each once, in the order of the checks.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for problem in self.checks.iter().filter_map(|c| c.problem) {
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        problems
    }
}
