//! The v1 message bodies: what a child tells the parent and what the parent
//! asks of a child.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What kind of agent a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// An ordinary child agent (till, back office, warehouse).
    Child,
    /// A child that also serves TLS to the children of its location.
    LocalParent,
    /// A mobile device: cannot run the test, gets its certificate by export.
    Mpos,
}

impl AgentKind {
    /// The name used on the command line, in the registry and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Child => "child",
            AgentKind::LocalParent => "local-parent",
            AgentKind::Mpos => "mpos",
        }
    }
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AgentKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "child" => Ok(AgentKind::Child),
            "local-parent" => Ok(AgentKind::LocalParent),
            "mpos" => Ok(AgentKind::Mpos),
            other => Err(format!(
                "unknown agent kind {other:?}: use child, local-parent or mpos"
            )),
        }
    }
}

/// The two steps of the SSL switchover test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Step 1, "certificate generation": load and check CA, key and chain.
    CertTest,
    /// Step 2, "connection over the SSL port": a full TLS handshake.
    SslPort,
}

/// What a child is asked to do in one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepSpec {
    /// Load and check its certificates and build a TLS client config.
    CertTest,
    /// Handshake with its client certificate to this host and port.
    SslPort {
        /// Host name or address to connect to (also the name checked in the certificate).
        host: String,
        /// Port to connect to.
        port: u16,
    },
}

impl StepSpec {
    /// Which step this is.
    pub fn step(&self) -> Step {
        match self {
            StepSpec::CertTest => Step::CertTest,
            StepSpec::SslPort { .. } => Step::SslPort,
        }
    }
}

/// Why a step failed, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The host name did not resolve.
    Dns,
    /// The port refused the connection.
    Refused,
    /// Nothing answered in time.
    Timeout,
    /// The peer's certificate does not chain to the trusted CA.
    UnknownIssuer,
    /// The peer's certificate does not name the host connected to.
    NameMismatch,
    /// A certificate is expired or not yet valid.
    Expired,
    /// The server refused the client certificate.
    ClientCertRejected,
    /// The agent has no (usable) certificate.
    NoCertificate,
    /// Anything else.
    Other,
}

impl Cause {
    /// The name used in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Dns => "dns",
            Cause::Refused => "refused",
            Cause::Timeout => "timeout",
            Cause::UnknownIssuer => "unknown_issuer",
            Cause::NameMismatch => "name_mismatch",
            Cause::Expired => "expired",
            Cause::ClientCertRejected => "client_cert_rejected",
            Cause::NoCertificate => "no_certificate",
            Cause::Other => "other",
        }
    }
}

/// How an agent authenticates to the broker over AMQPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerAuth {
    /// User name and password, as on the plain connection.
    Plain,
    /// SASL EXTERNAL: the client certificate is the identity.
    External,
}

/// Every message body of protocol v1.
///
/// On the wire a body is a one-entry map from its kind name to its fields, and
/// the kind name is also the AMQP `type` property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    // ---- child → parent ----
    /// A child introduces itself (on every connect).
    Hello(Hello),
    /// A child is alive.
    Heartbeat(Heartbeat),
    /// A child asks for a certificate.
    Csr(Csr),
    /// The result of one test step.
    StepReport(StepReport),
    /// The result of "Use SSL connection".
    SwitchReport(SwitchReport),
    /// The result of "Use SSL connection for RabbitMQ".
    BrokerSwitchReport(BrokerSwitchReport),
    /// A command the child could not decode or obey.
    Refused(Refused),
    // ---- parent → child ----
    /// The CA is ready: check it and send a CSR.
    CertificatesReady(CertificatesReady),
    /// The signed certificate chain.
    CertificateIssued(CertificateIssued),
    /// The CSR was refused.
    CsrRejected(CsrRejected),
    /// Run one test step.
    RunStep(RunStep),
    /// Switch agent traffic to TLS.
    UseSsl(UseSsl),
    /// Move the broker connection to AMQPS.
    UseBrokerTls(UseBrokerTls),
    /// The CA's current revocation list (for a local parent's SSL port).
    CrlUpdated(CrlUpdated),
}

/// A message a child sends to the parent: what a child may say.
#[derive(Debug, Clone, PartialEq)]
pub enum ToParent {
    /// See [`Body::Hello`].
    Hello(Hello),
    /// See [`Body::Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Body::Csr`].
    Csr(Csr),
    /// See [`Body::StepReport`].
    StepReport(StepReport),
    /// See [`Body::SwitchReport`].
    SwitchReport(SwitchReport),
    /// See [`Body::BrokerSwitchReport`].
    BrokerSwitchReport(BrokerSwitchReport),
    /// See [`Body::Refused`].
    Refused(Refused),
}

/// A command the parent sends to one child: what only the parent may say.
#[derive(Debug, Clone, PartialEq)]
pub enum ToChild {
    /// See [`Body::CertificatesReady`].
    CertificatesReady(CertificatesReady),
    /// See [`Body::CertificateIssued`].
    CertificateIssued(CertificateIssued),
    /// See [`Body::CsrRejected`].
    CsrRejected(CsrRejected),
    /// See [`Body::RunStep`].
    RunStep(RunStep),
    /// See [`Body::UseSsl`].
    UseSsl(UseSsl),
    /// See [`Body::UseBrokerTls`].
    UseBrokerTls(UseBrokerTls),
    /// See [`Body::CrlUpdated`].
    CrlUpdated(CrlUpdated),
}

/// A body by its direction.
#[derive(Debug, Clone, PartialEq)]
pub enum Directed {
    /// Child → parent.
    ToParent(ToParent),
    /// Parent → child.
    ToChild(ToChild),
}

impl From<ToParent> for Body {
    fn from(message: ToParent) -> Body {
        match message {
            ToParent::Hello(m) => Body::Hello(m),
            ToParent::Heartbeat(m) => Body::Heartbeat(m),
            ToParent::Csr(m) => Body::Csr(m),
            ToParent::StepReport(m) => Body::StepReport(m),
            ToParent::SwitchReport(m) => Body::SwitchReport(m),
            ToParent::BrokerSwitchReport(m) => Body::BrokerSwitchReport(m),
            ToParent::Refused(m) => Body::Refused(m),
        }
    }
}

impl From<ToChild> for Body {
    fn from(command: ToChild) -> Body {
        match command {
            ToChild::CertificatesReady(m) => Body::CertificatesReady(m),
            ToChild::CertificateIssued(m) => Body::CertificateIssued(m),
            ToChild::CsrRejected(m) => Body::CsrRejected(m),
            ToChild::RunStep(m) => Body::RunStep(m),
            ToChild::UseSsl(m) => Body::UseSsl(m),
            ToChild::UseBrokerTls(m) => Body::UseBrokerTls(m),
            ToChild::CrlUpdated(m) => Body::CrlUpdated(m),
        }
    }
}

impl ToChild {
    /// The time after which the command is void, if it has one (it then
    /// expires with it in the child's queue).
    pub fn deadline(&self) -> Option<u64> {
        match self {
            ToChild::RunStep(run) => Some(run.deadline),
            ToChild::UseBrokerTls(cmd) => Some(cmd.deadline),
            _ => None,
        }
    }
}

impl Body {
    /// The body by its direction.
    pub fn directed(self) -> Directed {
        match self {
            Body::Hello(m) => Directed::ToParent(ToParent::Hello(m)),
            Body::Heartbeat(m) => Directed::ToParent(ToParent::Heartbeat(m)),
            Body::Csr(m) => Directed::ToParent(ToParent::Csr(m)),
            Body::StepReport(m) => Directed::ToParent(ToParent::StepReport(m)),
            Body::SwitchReport(m) => Directed::ToParent(ToParent::SwitchReport(m)),
            Body::BrokerSwitchReport(m) => Directed::ToParent(ToParent::BrokerSwitchReport(m)),
            Body::Refused(m) => Directed::ToParent(ToParent::Refused(m)),
            Body::CertificatesReady(m) => Directed::ToChild(ToChild::CertificatesReady(m)),
            Body::CertificateIssued(m) => Directed::ToChild(ToChild::CertificateIssued(m)),
            Body::CsrRejected(m) => Directed::ToChild(ToChild::CsrRejected(m)),
            Body::RunStep(m) => Directed::ToChild(ToChild::RunStep(m)),
            Body::UseSsl(m) => Directed::ToChild(ToChild::UseSsl(m)),
            Body::UseBrokerTls(m) => Directed::ToChild(ToChild::UseBrokerTls(m)),
            Body::CrlUpdated(m) => Directed::ToChild(ToChild::CrlUpdated(m)),
        }
    }

    /// Whether this is a child → parent message (the others are commands).
    pub fn is_to_parent(&self) -> bool {
        matches!(
            self,
            Body::Hello(_)
                | Body::Heartbeat(_)
                | Body::Csr(_)
                | Body::StepReport(_)
                | Body::SwitchReport(_)
                | Body::BrokerSwitchReport(_)
                | Body::Refused(_)
        )
    }

    /// The kind name of this body (the AMQP `type` property).
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Hello(_) => "Hello",
            Body::Heartbeat(_) => "Heartbeat",
            Body::Csr(_) => "Csr",
            Body::StepReport(_) => "StepReport",
            Body::SwitchReport(_) => "SwitchReport",
            Body::BrokerSwitchReport(_) => "BrokerSwitchReport",
            Body::Refused(_) => "Refused",
            Body::CertificatesReady(_) => "CertificatesReady",
            Body::CertificateIssued(_) => "CertificateIssued",
            Body::CsrRejected(_) => "CsrRejected",
            Body::RunStep(_) => "RunStep",
            Body::UseSsl(_) => "UseSsl",
            Body::UseBrokerTls(_) => "UseBrokerTls",
            Body::CrlUpdated(_) => "CrlUpdated",
        }
    }
}

/// Every body kind name this build knows.
pub const KINDS: &[&str] = &[
    "Hello",
    "Heartbeat",
    "Csr",
    "StepReport",
    "SwitchReport",
    "BrokerSwitchReport",
    "Refused",
    "CertificatesReady",
    "CertificateIssued",
    "CsrRejected",
    "RunStep",
    "UseSsl",
    "UseBrokerTls",
    "CrlUpdated",
];

/// A child introduces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Its display name.
    pub name: String,
    /// What kind of agent it is.
    pub kind: AgentKind,
    /// Its software version (compared with `min_ssl_version`).
    pub version: String,
    /// The site it belongs to.
    #[serde(default)]
    pub location: Option<String>,
    /// DNS names of its machine.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// IP addresses of its machine.
    #[serde(default)]
    pub ips: Vec<String>,
    /// SHA-256 fingerprint of its current certificate's public key, if it has one.
    #[serde(default)]
    pub key_fingerprint: Option<String>,
    /// Where it stands in the migration.
    #[serde(default)]
    pub state: AgentState,
    /// Proof that it holds an enrollment token (never the token itself):
    /// `None` when it was started without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll: Option<EnrollProof>,
}

/// What a child sends to show it holds an enrollment token, without sending
/// the token: the token's public id and a MAC keyed by the token's secret
/// over the agent's id, its signing key, its kind and its name. A copy is
/// worth nothing to anyone with another key, id, kind or name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollProof {
    /// The token's id (its public part: the parent looks the token up by it).
    pub token: String,
    /// HMAC-SHA-256 in lower-case hex (see `fleetls_bus::enroll`).
    pub mac: String,
}

/// Where a child stands in the migration, as it reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// It holds a certificate issued by the parent.
    #[serde(default)]
    pub has_certificate: bool,
    /// It talks to the parent's SSL port over TLS.
    #[serde(default)]
    pub ssl: bool,
    /// Its broker connection is AMQPS.
    #[serde(default)]
    pub broker_tls: bool,
    /// The fingerprint of the parent signing key this agent pinned (`None`
    /// until it pinned one): the parent flags any other as compromised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_key: Option<String>,
    /// `sha256:HEX` of every CA certificate the agent trusts now (its
    /// `certs/ca.pem`): during a CA rotation the parent waits until every
    /// agent trusts the new CA before it issues from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_cas: Vec<String>,
}

/// A child is alive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Where it stands in the migration.
    #[serde(default)]
    pub state: AgentState,
}

/// A certificate signing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Csr {
    /// The PKCS#10 request, PEM.
    pub pem: String,
}

/// The result of one test step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// The campaign the step belongs to.
    pub campaign: Uuid,
    /// Which step.
    pub step: Step,
    /// Whether it passed.
    pub ok: bool,
    /// The message shown to the operator.
    pub message: String,
    /// Why it failed.
    #[serde(default)]
    pub cause: Option<Cause>,
    /// When the child began the step (ms since the epoch).
    #[serde(default)]
    pub started_at: Option<u64>,
}

/// The result of "Use SSL connection".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchReport {
    /// The campaign.
    pub campaign: Uuid,
    /// Whether the child is now in SSL mode.
    pub ok: bool,
    /// The message shown to the operator.
    pub message: String,
}

/// The result of "Use SSL connection for RabbitMQ".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerSwitchReport {
    /// The campaign.
    pub campaign: Uuid,
    /// Whether the connection this report travels on is AMQPS.
    pub tls: bool,
    /// The TLS protocol version in use, e.g. `TLSv1.3`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Why the child stayed on plain AMQP.
    #[serde(default)]
    pub error: Option<String>,
}

/// A command the child could not decode or obey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The id of the refused message, when it could be read.
    #[serde(default)]
    pub command: Option<Uuid>,
    /// Its kind, when it could be read.
    #[serde(default)]
    pub kind: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// The command was forged (unsigned, signed by another key, addressed
    /// to another agent, or replayed): a security event, not a failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forged: bool,
}

/// The CA is ready: check it and send a CSR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesReady {
    /// The CA chain, PEM, root last.
    pub ca_chain_pem: String,
    /// `sha256:HEX` of the root CA certificate (DER).
    pub ca_fingerprint: String,
    /// The SSL port host to test against.
    pub ssl_host: String,
    /// The SSL port to test against.
    pub ssl_port: u16,
    /// For a local parent agent: the port on which it serves TLS to the
    /// children of its location.
    #[serde(default)]
    pub serve_port: Option<u16>,
    /// Make a new key and CSR even when a certificate of this CA is held
    /// (`certs renew`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renew: bool,
    /// The network's TLS versions and cipher suites, for a local parent's
    /// own SSL port (`None`: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsPolicy>,
    /// Every CA certificate to trust, PEM (the chain's CA among them):
    /// during a CA rotation the old and the new one, then the new one
    /// alone. A child never lets go of the CA that issued the certificate
    /// it holds until it holds one from the new CA. `None` (an older
    /// parent): the chain's CA alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_pem: Option<String>,
}

/// The lowest TLS version an endpoint accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    /// `1.2` or `1.3`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

impl std::str::FromStr for TlsVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            other => Err(format!(
                "{other:?} is not a TLS version fleetls allows as the lowest: give 1.2 or 1.3"
            )),
        }
    }
}

/// The TLS versions and cipher suites the network's SSL ports accept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsPolicy {
    /// The lowest version.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// The cipher suites allowed, by their IANA names (e.g.
    /// `TLS13_AES_256_GCM_SHA384`); empty: every suite of the provider.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

/// The signed certificate chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateIssued {
    /// The chain, PEM, leaf first.
    pub chain_pem: String,
    /// The serial number, hex.
    pub serial: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// What the CSR asked for and was signed without.
    #[serde(default)]
    pub ignored: Vec<String>,
}

/// The CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsrRejected {
    /// Why.
    pub reason: String,
}

/// Run one test step before the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStep {
    /// The campaign.
    pub campaign: Uuid,
    /// What to do.
    pub step: StepSpec,
    /// Milliseconds since the Unix epoch after which the result no longer counts.
    pub deadline: u64,
}

/// Switch agent traffic to the parent's SSL port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseSsl {
    /// The campaign.
    pub campaign: Uuid,
}

/// Move the broker connection to AMQPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseBrokerTls {
    /// The campaign.
    pub campaign: Uuid,
    /// The `amqps://` address to move to.
    pub uri: String,
    /// The CA that the broker's certificate must chain to, PEM.
    pub ca_pem: String,
    /// Milliseconds since the Unix epoch by which the move must be done.
    pub deadline: u64,
    /// How to authenticate.
    pub auth: BrokerAuth,
}

/// The CA's current certificate revocation list: a local parent refuses
/// every certificate on it at its SSL port from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlUpdated {
    /// The X.509 CRL, PEM, signed by the network's CA.
    pub crl_pem: String,
}
