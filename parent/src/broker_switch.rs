//! The broker switch on the parent's side: where AMQPS is, checking that it
//! answers with a certificate that chains to the CA and names the broker,
//! the files the broker needs, and the parent's own AMQPS connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetls_bus::files::write_atomic;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};

use crate::layout::{CertFile, Layout};
use crate::rabbit_tls::{ListenerFiles, RabbitTls};

/// The AMQPS address agents move to by default: the `--broker` URL with
/// scheme `amqps` and `port` (the one `broker-tls` wrote the listener
/// with, else 5671) — for a list (a cluster), each node's, the same
/// address once.
pub fn default_amqps(broker: &str, port: u16) -> Result<String, String> {
    let mut out: Vec<String> = Vec::new();
    for mut uri in fleetls_bus::brokers::check(broker)? {
        uri.scheme = lapin::uri::AMQPScheme::AMQPS;
        uri.authority.port = port;
        let text = uri_to_string(&uri);
        if !out.contains(&text) {
            out.push(text);
        }
    }
    Ok(out.join(","))
}

fn uri_to_string(uri: &lapin::uri::AMQPUri) -> String {
    let vhost = if uri.vhost == "/" {
        "%2f".to_owned()
    } else {
        uri.vhost.replace('/', "%2f")
    };
    format!(
        "amqps://{}:{}@{}:{}/{}",
        uri.authority.userinfo.username,
        uri.authority.userinfo.password,
        uri.authority.host,
        uri.authority.port,
        vhost
    )
}

/// What [`check`] found: the TLS version the broker answered with, and the
/// addresses of a list that did not answer at all (a node that is down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The TLS version of the last node that answered.
    pub protocol: String,
    /// Each address of a list that nothing answered on, and why.
    pub down: Vec<String>,
}

/// Why one address failed the check.
enum NodeFailure {
    /// Nothing answers (connection refused, no route, no handshake in
    /// time): the node is down, or the address is wrong.
    Down(String),
    /// It answers, wrongly (a certificate that does not chain or name it,
    /// not TLS): the broker is not ready for the switch.
    Bad(String),
}

impl NodeFailure {
    fn why(self) -> String {
        match self {
            NodeFailure::Down(why) | NodeFailure::Bad(why) => why,
        }
    }
}

/// Checks that `uri` — or every address of a comma-separated list (a
/// cluster's nodes) — answers TLS with a certificate that chains to the CA
/// and matches its host; presents the parent's certificate. One address must
/// answer. In a list, an address that answers wrongly is refused, naming it;
/// one that does not answer at all (a node lost) is only noted in
/// [`Checked::down`] as long as another answers: children try the list in
/// turn and use that node once it is back.
pub async fn check(data_dir: &Path, uri: &str) -> Result<Checked, String> {
    let nodes = fleetls_bus::brokers::split(uri);
    if nodes.len() == 1 {
        return check_one(data_dir, uri.trim())
            .await
            .map(|protocol| Checked {
                protocol,
                down: Vec::new(),
            })
            .map_err(NodeFailure::why);
    }
    fleetls_bus::brokers::check(uri).map_err(|e| format!("invalid AMQPS URL: {e}"))?;
    let mut protocol = None;
    let mut down = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let name = |why: String| {
            format!(
                "address {} of {} ({}): {why}",
                i + 1,
                nodes.len(),
                crate::config::redact(node)
            )
        };
        match check_one(data_dir, node).await {
            Ok(answered) => protocol = Some(answered),
            Err(NodeFailure::Down(why)) => down.push(name(why)),
            Err(NodeFailure::Bad(why)) => return Err(name(why)),
        }
    }
    match protocol {
        Some(protocol) => Ok(Checked { protocol, down }),
        None => Err(format!(
            "no address of the list answers: {}",
            down.join("; ")
        )),
    }
}

async fn check_one(data_dir: &Path, uri: &str) -> Result<String, NodeFailure> {
    let parsed: lapin::uri::AMQPUri = uri
        .parse()
        .map_err(|e| NodeFailure::Bad(format!("invalid AMQPS URL: {e}")))?;
    if parsed.scheme != lapin::uri::AMQPScheme::AMQPS {
        return Err(NodeFailure::Bad("the URL must start with amqps://".into()));
    }
    let host = parsed.authority.host.clone();
    let port = parsed.authority.port;
    let config = client_config(data_dir).map_err(NodeFailure::Bad)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| NodeFailure::Bad(format!("{host:?}: {e}")))?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| {
                NodeFailure::Down(format!(
                    "nothing answers on {host}:{port} ({e}): restart the broker with the broker-tls \
                     fragment, or give its AMQPS address with --amqps amqps://USER:PASS@HOST:PORT/VHOST \
                     (or the FLEETLS_AMQPS variable) when it listens elsewhere"
                ))
            })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| NodeFailure::Bad(explain(&e, &host, port)))?;
        let (_, session) = tls.get_ref();
        Ok(session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "TLS".into()))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| {
            NodeFailure::Down(format!(
                "{host}:{port} did not finish a TLS handshake within 10 s"
            ))
        })?
}

fn explain(error: &std::io::Error, host: &str, port: u16) -> String {
    use rustls::{CertificateError as C, Error as E};
    match error.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => format!(
            "the certificate on {host}:{port} does not chain to the network's CA (nor to the root of an own broker certificate): install the files of `broker-tls` and restart the broker, or give the certificate the broker serves with `settings set --broker-cert F --broker-key F`"
        ),
        Some(E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => format!(
            "the certificate on {host}:{port} does not name {host}: add it to the broker names (`settings`) before generating, or use the name it has"
        ),
        Some(E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => {
            format!("the certificate on {host}:{port} has expired")
        }
        _ => format!("TLS handshake with {host}:{port} failed: {error}"),
    }
}

/// A client config trusting what the broker's certificate may chain to (the
/// CAs, an operator's broker root) and presenting the parent's certificate
/// toward the broker.
pub fn client_config(data_dir: &Path) -> Result<Arc<ClientConfig>, String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let mut roots = RootCertStore::empty();
    for path in crate::own::broker_trust_files(data_dir) {
        for cert in CertificateDer::pem_slice_iter(&read(&path)?) {
            let cert = cert.map_err(|e| e.to_string())?;
            roots.add(cert).map_err(|e| e.to_string())?;
        }
    }
    let (chain, key) = crate::own::client_identity(data_dir);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&chain)?)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(&read(&key)?).map_err(|e| e.to_string())?;
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// Where the parent keeps its AMQPS address once it moved.
fn state_path(data_dir: &Path) -> PathBuf {
    Layout::new(data_dir).broker_state()
}

/// The parent's broker state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParentBrokerState {
    /// The amqps:// URL the parent uses now.
    pub uri: String,
}

/// The AMQPS URL the parent moved to, if it did.
pub fn load_state(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state_path(data_dir)).ok()?;
    toml::from_str::<ParentBrokerState>(&text)
        .ok()
        .map(|s| s.uri)
}

/// Remembers that the parent moved to `uri`.
pub fn save_state(data_dir: &Path, uri: &str) -> std::io::Result<()> {
    let text = toml::to_string(&ParentBrokerState {
        uri: uri.to_owned(),
    })
    .map_err(std::io::Error::other)?;
    write_atomic(&state_path(data_dir), text.as_bytes(), 0o600)
}

/// The RabbitMQ permissions (configure, write, read) of the agents' shared
/// user: it declares, binds and consumes only agent queues, publishes only
/// to `fleetls.parent` (its dead letters too: the parent routes them on to
/// the bounded `fleetls.dead`) — and to `fleetls.dead`, because RabbitMQ
/// wants write access to a queue's dead-letter exchange from whoever
/// declares the queue —, reads only
/// from `fleetls.agents`. It cannot bind a queue to `fleetls.parent` (no
/// copy of the children's messages), consume or delete the parent's queue,
/// or delete an exchange. (It can still delete or copy another agent's
/// queue — commands are signed and addressed, so a copy gives nothing and
/// a deleted queue is declared again at the agent's next connection; one
/// user per agent, `switch-broker --external`, closes that too.)
pub const AGENT_PERMISSIONS: [&str; 3] = [
    r"^fleetls\.agent\.[0-9a-f-]{36}$",
    r"^(fleetls\.parent|fleetls\.dead|fleetls\.agent\.[0-9a-f-]{36})$",
    r"^(fleetls\.agents|fleetls\.agent\.[0-9a-f-]{36})$",
];

/// `rabbitmq-permissions.sh`: sets [`AGENT_PERMISSIONS`] for the agents'
/// shared user with `rabbitmqctl`.
fn permissions_script() -> String {
    let [configure, write, read] = AGENT_PERMISSIONS;
    format!(
        "#!/bin/sh\n\
         # fleetls: least privilege for the agents' shared RabbitMQ user.\n\
         # usage: rabbitmq-permissions.sh VHOST AGENTS_USER\n\
         # Agents may declare, bind and consume only their queues (fleetls.agent.<id>),\n\
         # publish only to fleetls.parent (dead letters too: the parent routes them to\n\
         # the bounded fleetls.dead) and fleetls.dead (RabbitMQ wants write access to\n\
         # the dead-letter exchange of the queues they declare), and read\n\
         # only from fleetls.agents. The parent needs its own user with full rights.\n\
         set -eu\n\
         vhost=${{1:?usage: $0 VHOST AGENTS_USER}}\n\
         user=${{2:?usage: $0 VHOST AGENTS_USER}}\n\
         # guest is RabbitMQ's own administrator: limited here it would still\n\
         # keep its tag elsewhere, and every install knows its password.\n\
         if [ \"$user\" = guest ]; then\n\
         \x20   echo \"refused: do not give the agents the guest user: create one (rabbitmqctl add_user tills PASSWORD) and run this for it\" >&2\n\
         \x20   exit 2\n\
         fi\n\
         # No tag: an administrator or management tag would let the user give\n\
         # itself every permission back through the management API.\n\
         rabbitmqctl set_user_tags \"$user\"\n\
         rabbitmqctl set_permissions -p \"$vhost\" \"$user\" \\\n    '{configure}' \\\n    '{write}' \\\n    '{read}'\n"
    )
}

/// `DATA_DIR/broker-files.toml`: where `broker-tls --out` last wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerFilesRecord {
    /// The folder, absolute.
    pub out: PathBuf,
    /// The AMQPS port the fragments name.
    #[serde(default)]
    pub amqps_port: Option<u16>,
    /// The addresses the fragments bind it to.
    #[serde(default)]
    pub amqps_bind: Vec<std::net::IpAddr>,
    /// The nodes given a folder of their own (`--node`).
    #[serde(default)]
    pub nodes: Vec<BrokerNode>,
}

impl BrokerFilesRecord {
    /// The AMQPS listener the files were written with (5671 on the
    /// broker's addresses for a record of an older release).
    pub fn listener(&self, broker_ips: &[std::net::IpAddr]) -> Result<AmqpsListener, String> {
        let bind = (!self.amqps_bind.is_empty()).then(|| {
            self.amqps_bind
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(";")
        });
        AmqpsListener::new(self.amqps_port, bind.as_deref(), broker_ips)
    }
}

/// Where the broker's AMQPS listener listens: `broker-tls --amqps-port N
/// --amqps-bind "IP;IP"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpsListener {
    /// The port (5671 by default).
    pub port: u16,
    /// The addresses it binds to: those given, else the broker's IP
    /// addresses in the SSL settings (the ones its certificate names).
    pub bind: Vec<std::net::IpAddr>,
}

/// The AMQPS port when none is given.
pub const DEFAULT_AMQPS_PORT: u16 = 5671;

impl AmqpsListener {
    /// The listener from `broker-tls`'s `port` and `bind` (`;`-separated
    /// IP addresses; `0.0.0.0` or `::` for every interface), defaulting to
    /// port 5671 on `broker_ips`. Refused, with what to give, when no
    /// address is given or known: the fragment never binds every interface
    /// unless asked to.
    pub fn new(
        port: Option<u16>,
        bind: Option<&str>,
        broker_ips: &[std::net::IpAddr],
    ) -> Result<AmqpsListener, String> {
        let port = port.unwrap_or(DEFAULT_AMQPS_PORT);
        if port == 0 {
            return Err("--amqps-port 0 is not a port: give a number from 1 to 65535".into());
        }
        let bind = match bind {
            Some(text) => {
                let mut ips = Vec::new();
                for ip in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    let ip: std::net::IpAddr = ip.parse().map_err(|_| {
                        format!("--amqps-bind: {ip:?} is not an IPv4 or IPv6 address (give e.g. \"10.0.0.5;127.0.0.1\", or 0.0.0.0 for every interface)")
                    })?;
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                ips
            }
            None => broker_ips.to_vec(),
        };
        if bind.is_empty() {
            return Err("the AMQPS listener needs an address to bind to and the SSL settings name no broker IP: \
                        give --amqps-bind \"IP[;IP]\" (FLEETLS_AMQPS_BIND; 0.0.0.0 for every interface) \
                        or `settings set --broker-ips`"
                .into());
        }
        Ok(AmqpsListener { port, bind })
    }

    /// The `listeners.ssl.*` lines, with a comment saying what they open.
    fn conf_lines(&self) -> String {
        let mut out = format!(
            "# The AMQPS listener: port {} on {} only (broker-tls --amqps-port, --amqps-bind).\n",
            self.port,
            self.bind
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (i, ip) in self.bind.iter().enumerate() {
            // The first replaces any `listeners.ssl.default` above it in
            // rabbitmq.conf (later lines win), so appending opens nothing
            // else. RabbitMQ's own spelling: `::1:5671` for IPv6.
            let key = match i {
                0 => "default".to_owned(),
                n => (n + 1).to_string(),
            };
            out.push_str(&format!("listeners.ssl.{key} = {ip}:{}\n", self.port));
        }
        out
    }
}

/// What `broker-tls --out DIR` wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerTlsFiles {
    /// The folder.
    pub out: PathBuf,
    /// Every file written.
    pub files: Vec<PathBuf>,
    /// The final fragment was not written: these agents ("name: why")
    /// would lose the broker.
    #[serde(default)]
    pub final_refused: Vec<String>,
    /// The final fragment keeps plain AMQP open for these agents ("name:
    /// reason"), kept on plain by decision.
    #[serde(default)]
    pub kept_plain: Vec<String>,
}

/// What `broker-tls` does with the post-migration fragment, which closes
/// plain AMQP and requires a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalFragment {
    /// Write it: nobody would be cut off. Agents kept on plain by decision
    /// (`agents exclude`; "name: reason") keep the plain listener open, and
    /// the fragment says why.
    Write {
        /// The agents kept on plain, "name: reason".
        kept_plain: Vec<String>,
    },
    /// Do not write it (an older one is removed): these agents ("name:
    /// why") would lose the broker.
    Refuse {
        /// Who would be cut off, and why.
        cut_off: Vec<String>,
    },
    /// The certificate files only (a renewal, a CA rotation): the fragments
    /// name the files, which keep their names, so they stay as written.
    Untouched,
}

/// The post-migration fragment after `common` (the lines both share), if
/// it is to be written.
fn final_text(common: &str, final_fragment: &FinalFragment) -> Option<String> {
    match final_fragment {
        FinalFragment::Write { kept_plain } if kept_plain.is_empty() => Some(format!(
            "{common}# After the migration: every client presents a certificate; plain AMQP is off,\n\
             # so the broker listens for clients on the AMQPS addresses above and nowhere else.\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             listeners.tcp = none\n"
        )),
        FinalFragment::Write { kept_plain } => Some(format!(
            "{common}# After the migration: every client on AMQPS presents a certificate.\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             # Plain AMQP stays open: {} agent(s) are kept on plain by decision\n\
             # (`fleetls-parent agents exclude`); `agents include` them and run broker-tls\n\
             # again to close it:\n{}",
            kept_plain.len(),
            kept_plain
                .iter()
                .map(|a| format!("#   {a}\n"))
                .collect::<String>()
        )),
        FinalFragment::Refuse { .. } | FinalFragment::Untouched => None,
    }
}

/// The post-migration fragment's name.
pub const FINAL_FRAGMENT: &str = "rabbitmq-final.conf";

/// One node of a cluster given to `broker-tls --node LABEL=NAMES`: its
/// own certificate carries its names and addresses beside the settings'
/// broker names, and its files go to `OUT/LABEL/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerNode {
    /// The folder name (letters, digits, `-`, `_`).
    pub label: String,
    /// The node's DNS names.
    #[serde(default)]
    pub names: Vec<String>,
    /// The node's IP addresses (its AMQPS listener binds to them).
    #[serde(default)]
    pub ips: Vec<std::net::IpAddr>,
}

impl BrokerNode {
    /// Parses `LABEL=NAME;NAME;IP` (`,` also separates); `Err` names
    /// `--node` and what to give.
    pub fn parse(text: &str) -> Result<BrokerNode, String> {
        let usage =
            "give --node LABEL=NAME[;NAME|IP...], e.g. --node node1=rabbit1.example.com;10.0.0.11";
        let (label, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("--node {text:?}: no `=`: {usage}"))?;
        let label = label.trim();
        if label.is_empty()
            || label.len() > 64
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "--node {text:?}: the label {label:?} must be 1 to 64 letters, digits, `-` or `_` \
                 (it names the node's folder): {usage}"
            ));
        }
        let mut node = BrokerNode {
            label: label.to_owned(),
            names: Vec::new(),
            ips: Vec::new(),
        };
        for item in rest
            .split([';', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if let Ok(ip) = item.parse::<std::net::IpAddr>() {
                if !node.ips.contains(&ip) {
                    node.ips.push(ip);
                }
            } else {
                crate::settings::check_dns_name(item)
                    .map_err(|why| format!("--node {text:?}: {item:?}: {why}"))?;
                let name = item.to_ascii_lowercase();
                if !node.names.contains(&name) {
                    node.names.push(name);
                }
            }
        }
        if node.names.is_empty() && node.ips.is_empty() {
            return Err(format!(
                "--node {text:?}: no name or address for the node: {usage}"
            ));
        }
        Ok(node)
    }
}

/// The file `broker-tls` writes [`FLEET_SETTINGS`] to.
pub const FLEET_CONF: &str = "rabbitmq-fleet.conf";

/// RabbitMQ's settings for a fleet of thousands of agents (management's
/// statistics every 30 s, no message rates), with what they cost and save:
/// `deploy/rabbitmq/fleet.conf`.
pub const FLEET_SETTINGS: &str = include_str!("../../deploy/rabbitmq/fleet.conf");

/// Writes the broker's certificate, key and CA and the `rabbitmq.conf`
/// fragments: the one for during the migration, and the final one as
/// `final_fragment` says. With `nodes`, each node also gets a folder of its
/// own (`OUT/LABEL/`) with a certificate issued now by `pki` for its names
/// and the settings' broker names, its key, the CA and its fragments (its
/// listener on its own addresses, when it has any); and [`FLEET_CONF`].
pub fn write_broker_files(
    data_dir: &Path,
    pki: &crate::pki::Pki,
    out: &Path,
    listener: &AmqpsListener,
    nodes: &[BrokerNode],
    final_fragment: &FinalFragment,
) -> Result<BrokerTlsFiles, String> {
    let layout = Layout::new(data_dir);
    if !nodes.is_empty() && crate::own::OwnRecord::load(data_dir).broker {
        return Err(
            "--node issues each node a certificate of fleetls's CA, but the broker serves \
                    your own (`settings set --broker-cert`): give each node its certificate \
                    yourself and run broker-tls without --node"
                .into(),
        );
    }
    let read = |path: PathBuf| std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
    // The broker's ca.pem is every CA trusted: during a CA rotation it
    // accepts client certificates from the old and the new CA.
    let ca = crate::ssl_port::trust(&layout);
    let settings = crate::settings::SslSettings::load(data_dir)?
        .ok_or("there are no SSL settings: run `fleetls-parent settings set` first")?;
    let tls = RabbitTls::from_policy(&settings.tls_policy())?;
    let mut files = write_folder(
        out,
        &read(layout.certificate(CertFile::BrokerPem))?,
        &read(layout.certificate(CertFile::BrokerKey))?,
        &ca,
        &Fragments {
            listener,
            tls: &tls,
            final_fragment,
        },
    )?;
    for node in nodes {
        let (chain, key) = node_certificate(pki, &settings, node)?;
        files.extend(write_folder(
            &out.join(&node.label),
            chain.as_bytes(),
            key.as_bytes(),
            &ca,
            &Fragments {
                listener: &node_listener(listener, node),
                tls: &tls,
                final_fragment,
            },
        )?);
    }
    // The statistics settings the README recommends for a fleet: beside
    // the TLS fragments, for the operator to append as well.
    let path = out.join(FLEET_CONF);
    write_atomic(&path, FLEET_SETTINGS.as_bytes(), 0o644)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    files.push(path);
    if *final_fragment != FinalFragment::Untouched {
        let path = out.join("rabbitmq-permissions.sh");
        write_atomic(&path, permissions_script().as_bytes(), 0o755)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        files.push(path);
    }
    remember_broker_files(&layout, out, listener, nodes)?;
    let (final_refused, kept_plain) = match final_fragment {
        FinalFragment::Refuse { cut_off } => (cut_off.clone(), Vec::new()),
        FinalFragment::Write { kept_plain } => (Vec::new(), kept_plain.clone()),
        FinalFragment::Untouched => (Vec::new(), Vec::new()),
    };
    Ok(BrokerTlsFiles {
        out: out.to_owned(),
        files,
        final_refused,
        kept_plain,
    })
}

/// A certificate (chain, key) issued now by `pki` for one node: its own
/// names and addresses and the settings' broker names and addresses.
fn node_certificate(
    pki: &crate::pki::Pki,
    settings: &crate::settings::SslSettings,
    node: &BrokerNode,
) -> Result<(String, String), String> {
    let names: Vec<String> = settings
        .broker_names
        .iter()
        .chain(&node.names)
        .cloned()
        .collect();
    let ips: Vec<std::net::IpAddr> = settings
        .broker_ips
        .iter()
        .chain(&node.ips)
        .copied()
        .collect();
    pki.broker_certificate(&names, &ips)
        .map_err(|e| format!("node {}: {e}", node.label))
}

/// One node's listener: on its own addresses when it has any, else where
/// `listener` binds.
fn node_listener(listener: &AmqpsListener, node: &BrokerNode) -> AmqpsListener {
    AmqpsListener {
        port: listener.port,
        bind: if node.ips.is_empty() {
            listener.bind.clone()
        } else {
            node.ips.clone()
        },
    }
}

/// Records where the broker's files were written (and for which listener
/// and nodes): renewals and CA rotations write them there again.
fn remember_broker_files(
    layout: &Layout,
    out: &Path,
    listener: &AmqpsListener,
    nodes: &[BrokerNode],
) -> Result<(), String> {
    let record = layout.broker_files();
    let absolute = std::path::absolute(out).unwrap_or_else(|_| out.to_owned());
    let text = toml::to_string(&BrokerFilesRecord {
        out: absolute,
        amqps_port: Some(listener.port),
        amqps_bind: listener.bind.clone(),
        nodes: nodes.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    write_atomic(&record, text.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", record.display()))
}

/// What a broker's fragments say besides its files.
struct Fragments<'a> {
    /// Where its AMQPS listener listens.
    listener: &'a AmqpsListener,
    /// Its TLS options (the SSL port's policy).
    tls: &'a RabbitTls,
    /// Whether the post-migration fragment is written.
    final_fragment: &'a FinalFragment,
}

/// The advanced.config beside the post-migration fragment.
pub const FINAL_ADVANCED: &str = "advanced-final.config";

/// Writes one broker's folder: `broker.pem`, `broker.key`, `ca.pem` and,
/// unless [`FinalFragment::Untouched`], the fragments naming them: the
/// rabbitmq.conf fragments and their advanced.config (the curves, which
/// RabbitMQ 3.10's rabbitmq.conf cannot name).
fn write_folder(
    out: &Path,
    chain: &[u8],
    key: &[u8],
    ca: &[u8],
    fragments: &Fragments<'_>,
) -> Result<Vec<PathBuf>, String> {
    let Fragments {
        listener,
        tls,
        final_fragment,
    } = fragments;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut files = Vec::new();
    for (file, bytes) in [
        (CertFile::BrokerPem, chain),
        (CertFile::BrokerKey, key),
        (CertFile::CaPem, ca),
    ] {
        let path = out.join(file.name());
        write_atomic(&path, bytes, file.mode()).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push(path);
    }
    if **final_fragment == FinalFragment::Untouched {
        return Ok(files);
    }
    let abs = |name: &str| std::path::absolute(out.join(name)).unwrap_or_else(|_| out.join(name));
    let (ca_path, cert_path, key_path) = (
        abs(CertFile::CaPem.name()),
        abs(CertFile::BrokerPem.name()),
        abs(CertFile::BrokerKey.name()),
    );
    let common = format!(
        "# fleetls: TLS for RabbitMQ (read only at boot: restart the broker after applying)\n\
         {}\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_peer\n\
         {}\
         auth_mechanisms.1 = PLAIN\n\
         auth_mechanisms.2 = AMQPLAIN\n\
         auth_mechanisms.3 = EXTERNAL\n\
         # With EXTERNAL, an agent's RabbitMQ user is its certificate's CN (its id).\n\
         ssl_cert_login_from = common_name\n",
        listener.conf_lines(),
        ca_path.display(),
        cert_path.display(),
        key_path.display(),
        tls.conf_lines(),
    );
    let listener_files = ListenerFiles {
        ca: &ca_path,
        cert: &cert_path,
        key: &key_path,
    };
    let migration = format!(
        "{common}# During the migration: plain 5672 stays open and a client certificate is optional.\n\
         ssl_options.fail_if_no_peer_cert = false\n"
    );
    let mut writes = vec![
        ("rabbitmq-migration.conf", migration),
        (
            "advanced-migration.config",
            tls.advanced_config(listener_files, false),
        ),
    ];
    match final_text(&common, final_fragment) {
        Some(text) => {
            writes.push((FINAL_FRAGMENT, text));
            writes.push((FINAL_ADVANCED, tls.advanced_config(listener_files, true)));
        }
        None => {
            // An older one would cut off who is listed: it goes.
            for name in [FINAL_FRAGMENT, FINAL_ADVANCED] {
                let stale = out.join(name);
                if stale.exists() {
                    std::fs::remove_file(&stale)
                        .map_err(|e| format!("{}: {e}", stale.display()))?;
                }
            }
        }
    }
    for (name, text) in writes {
        let path = out.join(name);
        write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permissions_script_names_the_three_patterns() {
        let script = permissions_script();
        for pattern in AGENT_PERMISSIONS {
            assert!(script.contains(&format!("'{pattern}'")), "{script}");
        }
        assert!(script.starts_with("#!/bin/sh\n"));
    }

    #[test]
    fn the_final_fragment_closes_plain_amqp_unless_an_agent_is_kept_on_it() {
        let closed = final_text("", &FinalFragment::Write { kept_plain: vec![] }).unwrap();
        assert!(
            closed.lines().any(|l| l == "listeners.tcp = none"),
            "{closed}"
        );
        let kept = vec!["till-7: pin pad firmware".to_owned()];
        let open = final_text("", &FinalFragment::Write { kept_plain: kept }).unwrap();
        assert!(!open.contains("listeners.tcp"), "{open}");
        assert!(open.contains("#   till-7: pin pad firmware"), "{open}");
        assert!(
            open.contains("ssl_options.fail_if_no_peer_cert = true"),
            "{open}"
        );
        let refused = FinalFragment::Refuse {
            cut_off: vec!["till-1: not on AMQPS yet".into()],
        };
        assert_eq!(final_text("", &refused), None);
        assert_eq!(final_text("", &FinalFragment::Untouched), None);
    }

    #[test]
    fn the_amqps_listener_binds_only_what_is_named() {
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let from_settings = AmqpsListener::new(None, None, &[loopback]).unwrap();
        assert_eq!(from_settings.port, 5671);
        assert_eq!(
            from_settings
                .conf_lines()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            ["listeners.ssl.default = 127.0.0.1:5671"]
        );
        let given = AmqpsListener::new(Some(5999), Some("10.0.0.5; ::1"), &[loopback]).unwrap();
        let lines = given.conf_lines();
        assert!(
            lines.contains("listeners.ssl.default = 10.0.0.5:5999\n"),
            "{lines}"
        );
        assert!(lines.contains("listeners.ssl.2 = ::1:5999\n"), "{lines}");
        assert!(!lines.contains("127.0.0.1"), "{lines}");
        let none = AmqpsListener::new(None, None, &[]).unwrap_err();
        assert!(none.contains("--amqps-bind"), "{none}");
        let bad = AmqpsListener::new(None, Some("broker.example"), &[]).unwrap_err();
        assert!(bad.contains("\"broker.example\" is not an IPv4"), "{bad}");
    }

    #[test]
    fn each_node_gets_a_certificate_with_its_own_names_and_a_folder_of_its_own() {
        use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::settings::SslSettings::defaults("127.0.0.1");
        settings.broker_names = vec!["rabbit.example".into()];
        settings.save(dir.path()).unwrap();
        let pki = crate::pki::Pki::generate(dir.path(), &settings, None, time::Duration::days(30))
            .unwrap();
        let nodes = vec![
            BrokerNode::parse("node1=rabbit1.example;10.0.0.11").unwrap(),
            BrokerNode::parse("node2 = rabbit2.example, 10.0.0.12").unwrap(),
        ];
        let out = dir.path().join("out");
        let listener =
            AmqpsListener::new(Some(5671), Some("127.0.0.1"), &settings.broker_ips).unwrap();
        let written = write_broker_files(
            dir.path(),
            &pki,
            &out,
            &listener,
            &nodes,
            &FinalFragment::Write {
                kept_plain: Vec::new(),
            },
        )
        .unwrap();
        let names_of = |pem: &str| -> Vec<String> {
            let der = crate::pki::pem_certs(pem).unwrap().remove(0);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            let mut names = Vec::new();
            for ext in cert.extensions() {
                if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(n) => names.push(n.to_string()),
                            GeneralName::IPAddress(ip) => names.push(format!("{ip:?}")),
                            _ => {}
                        }
                    }
                }
            }
            names
        };
        let node1 = std::fs::read_to_string(out.join("node1/broker.pem")).unwrap();
        let names = names_of(&node1);
        assert!(names.contains(&"rabbit1.example".to_owned()), "{names:?}");
        assert!(names.contains(&"rabbit.example".to_owned()), "{names:?}");
        assert!(!names.contains(&"rabbit2.example".to_owned()), "{names:?}");
        assert_eq!(
            names.iter().filter(|n| n.starts_with('[')).count(),
            2,
            "two IPs: {names:?}"
        );
        // Signed by the CA, whose chain follows it.
        let chain = crate::pki::pem_certs(&node1).unwrap();
        assert_eq!(crate::pki::fingerprint(&chain[1]), pki.signing_fingerprint);
        assert_ne!(
            node1,
            std::fs::read_to_string(out.join("node2/broker.pem")).unwrap()
        );
        let conf = std::fs::read_to_string(out.join("node2/rabbitmq-migration.conf")).unwrap();
        assert!(
            conf.contains("listeners.ssl.default = 10.0.0.12:5671\n"),
            "{conf}"
        );
        assert!(conf.contains("node2/broker.key"), "{conf}");
        assert!(out.join("node2/rabbitmq-final.conf").is_file());
        // The SSL port's TLS policy, for the single node and each cluster
        // node, in both fragments and their advanced.config (the curves).
        let tls = crate::rabbit_tls::RabbitTls::from_policy(&settings.tls_policy()).unwrap();
        for folder in ["", "node1/", "node2/"] {
            for (conf, advanced, peer_cert) in [
                (
                    "rabbitmq-migration.conf",
                    "advanced-migration.config",
                    false,
                ),
                ("rabbitmq-final.conf", "advanced-final.config", true),
            ] {
                let text = std::fs::read_to_string(out.join(folder).join(conf)).unwrap();
                assert!(text.contains(&tls.conf_lines()), "{folder}{conf}:\n{text}");
                assert!(!text.contains("versions.3"), "{folder}{conf}:\n{text}");
                let text = std::fs::read_to_string(out.join(folder).join(advanced)).unwrap();
                let key = std::path::absolute(out.join(folder).join("broker.key")).unwrap();
                let files = crate::rabbit_tls::ListenerFiles {
                    ca: &std::path::absolute(out.join(folder).join("ca.pem")).unwrap(),
                    cert: &std::path::absolute(out.join(folder).join("broker.pem")).unwrap(),
                    key: &key,
                };
                assert_eq!(
                    text,
                    tls.advanced_config(files, peer_cert),
                    "{folder}{advanced}"
                );
            }
        }
        assert!(written.files.contains(&out.join("node1/ca.pem")));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("node1/broker.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Remembered, and written again (new keys) by a renewal.
        let record = crate::rotation::broker_record(dir.path()).unwrap();
        assert_eq!(record.nodes, nodes);
        crate::rotation::rewrite_broker_files(dir.path(), &pki);
        assert_ne!(
            node1,
            std::fs::read_to_string(out.join("node1/broker.pem")).unwrap()
        );
    }

    #[test]
    fn a_node_is_given_as_label_and_names() {
        for (text, needle) in [
            ("node1", "no `=`"),
            ("=rabbit1.example", "the label \"\""),
            ("node 1=rabbit1.example", "must be 1 to 64 letters"),
            ("node1=", "no name or address"),
            ("node1=bad_name!", "\"bad_name!\""),
        ] {
            let err = BrokerNode::parse(text).unwrap_err();
            assert!(
                err.contains("--node") && err.contains(needle),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn the_default_amqps_address_keeps_host_credentials_and_vhost() {
        assert_eq!(
            default_amqps("amqp://u:p@broker.example:5672/shop", 5671).unwrap(),
            "amqps://u:p@broker.example:5671/shop"
        );
        assert_eq!(
            default_amqps("amqp://guest:guest@127.0.0.1:5672/%2f", 5671).unwrap(),
            "amqps://guest:guest@127.0.0.1:5671/%2f"
        );
        // A cluster: each node's host, the same address once.
        assert_eq!(
            default_amqps(
                "amqp://g:g@n1:5672/%2f,amqp://g:g@n2:5672/%2f,amqp://g:g@n1:5673/%2f",
                5671
            )
            .unwrap(),
            "amqps://g:g@n1:5671/%2f,amqps://g:g@n2:5671/%2f"
        );
    }

    /// A data dir with a CA and the broker's certificate (127.0.0.1).
    fn network() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::settings::SslSettings::defaults("127.0.0.1");
        settings.save(dir.path()).unwrap();
        crate::pki::Pki::generate(dir.path(), &settings, None, time::Duration::days(30)).unwrap();
        dir
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Serves TLS with the network's broker certificate, or (`tls` false)
    /// accepts and hangs up at once; the port.
    async fn node(dir: &Path, tls: bool) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let certs = dir.join("certificates");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.join("broker.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(certs.join("broker.key")).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if tls {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            drop(stream);
                        }
                    });
                }
            }
        });
        port
    }

    fn url(port: u16) -> String {
        format!("amqps://g:g@127.0.0.1:{port}/%2f")
    }

    #[tokio::test]
    async fn a_list_with_a_node_down_is_accepted_one_that_answers_wrongly_is_not() {
        let dir = network();
        let (good, wrong) = (node(dir.path(), true).await, node(dir.path(), false).await);
        let down = closed_port();
        // One node down, the other answers: accepted, the lost one named.
        let checked = check(dir.path(), &format!("{},{}", url(down), url(good)))
            .await
            .unwrap();
        assert_eq!(checked.protocol, "TLSv1_3");
        assert_eq!(checked.down.len(), 1, "{:?}", checked.down);
        assert!(
            checked.down[0].starts_with("address 1 of 2")
                && checked.down[0].contains("nothing answers"),
            "{:?}",
            checked.down
        );
        // Every node answering: nothing noted.
        let checked = check(dir.path(), &format!("{},{}", url(good), url(good)))
            .await
            .unwrap();
        assert!(checked.down.is_empty());
        // A node that answers, but not with the network's TLS: refused, named.
        let why = check(dir.path(), &format!("{},{}", url(good), url(wrong)))
            .await
            .unwrap_err();
        assert!(
            why.starts_with("address 2 of 2") && why.contains("TLS handshake"),
            "{why}"
        );
        // No node answers: refused.
        let why = check(dir.path(), &format!("{},{}", url(down), url(closed_port())))
            .await
            .unwrap_err();
        assert!(why.starts_with("no address of the list answers"), "{why}");
        // A single address must answer.
        let why = check(dir.path(), &url(down)).await.unwrap_err();
        assert!(why.contains("nothing answers"), "{why}");
    }
}
