//! Configuration of `fleetls-parent serve`: flags (each also read from a
//! `FLEETLS_*` environment variable) over a TOML file over defaults, checked
//! into a [`ServeConfig`] before anything runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use fleetls_bus::ConfigError;

/// The raw settings of `serve`, as flags or as the config file's top level.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServe {
    /// AMQP URL of the broker, e.g. amqp://user:pass@host:5672/%2f; for a
    /// cluster, its nodes' URLs separated by commas
    #[arg(long, env = "FLEETLS_BROKER")]
    pub broker: Option<String>,
    /// RabbitMQ management base URL, e.g. http://host:15672 (credentials may be in it);
    /// for a cluster, one per node separated by commas (whichever answers is used)
    #[arg(long, env = "FLEETLS_MANAGEMENT")]
    pub management: Option<String>,
    /// Management user (when not in the URL)
    #[arg(long, env = "FLEETLS_MANAGEMENT_USER")]
    pub management_user: Option<String>,
    /// File holding the management password (when not in the URL)
    #[arg(long, env = "FLEETLS_MANAGEMENT_PASSWORD_FILE")]
    pub management_password_file: Option<PathBuf>,
    /// Folder for the registry, the certificates and the admin token
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the admin API and console (loopback by default)
    #[arg(long, env = "FLEETLS_ADMIN")]
    pub admin: Option<String>,
    /// Where the broker does not say who is connected (no event exchange):
    /// seconds without a state report after which an agent counts as
    /// offline (default 750: two and a half of the child's report interval)
    #[arg(long, env = "FLEETLS_OFFLINE_AFTER")]
    pub offline_after: Option<u64>,
    /// A connected agent whose last state report is older than this is
    /// flagged silent, maybe wedged (`15m`, `1h`; default 15m)
    #[arg(long, env = "FLEETLS_SILENT_AFTER")]
    pub silent_after: Option<String>,
    /// The virtual host of the broker's event exchange (the
    /// rabbitmq_event_exchange plugin), where the parent learns who is
    /// connected; `off` to count online from state reports alone
    /// (default `/`)
    #[arg(long, env = "FLEETLS_PRESENCE_VHOST")]
    pub presence_vhost: Option<String>,
    /// An accepted agent not heard for this long is no longer waited for by
    /// a CA rotation or the final broker step (`12h`, `3d`; default 3d)
    #[arg(long, env = "FLEETLS_STALE_AFTER")]
    pub stale_after: Option<String>,
    /// Lowest child version that supports SSL, e.g. 1.0.0
    #[arg(long, env = "FLEETLS_MIN_SSL_VERSION")]
    pub min_ssl_version: Option<String>,
    /// Number of child agents that can simultaneously perform remote actions
    #[arg(long, env = "FLEETLS_WINDOW")]
    pub window: Option<usize>,
    /// Validity of issued certificates, in days (398 by default)
    #[arg(long, env = "FLEETLS_CERT_DAYS")]
    pub cert_days: Option<u32>,
    /// Validity of issued certificates as a duration (`398d`, `12h`, `5m`,
    /// `90s`; at most 398 days): wins over --cert-days; short ones for tests
    #[arg(long, env = "FLEETLS_CERT_LIFETIME")]
    pub cert_lifetime: Option<String>,
    /// Open enrollment: new agents accepted without a token or an operator,
    /// `kind:pattern;...` or `none` (the default). Anyone with the broker's
    /// credentials then gets a certificate: prefer enrollment tokens
    /// (`enroll create`). Local parents never
    #[arg(long, env = "FLEETLS_AUTO_ACCEPT")]
    pub auto_accept: Option<String>,
    /// The most agents that may wait for an operator (default 1000): past
    /// it a new agent is refused and recorded as a security event
    #[arg(long, env = "FLEETLS_MAX_PENDING")]
    pub max_pending: Option<u64>,
    /// Names local parents may have in their server certificates, `;`-separated:
    /// a name, or `.domain` for any name below it (default: none)
    #[arg(long, env = "FLEETLS_LOCAL_PARENT_NAMES")]
    pub local_parent_names: Option<String>,
    /// IP addresses local parents may have in their server certificates, `;`-separated
    #[arg(long, env = "FLEETLS_LOCAL_PARENT_IPS")]
    pub local_parent_ips: Option<String>,
    /// Type of the queues fleetls declares (fleetls.parent, fleetls.dead): classic (one broker node) or
    /// quorum (a cluster: replicated, survives losing a node)
    #[arg(long, env = "FLEETLS_QUEUE_TYPE")]
    pub queue_type: Option<String>,
    /// The `[ssl]` table of the config file (not a flag)
    #[arg(skip)]
    pub ssl: Option<crate::settings::SettingsChange>,
}

impl fleetls_bus::process::Layered for RawServe {
    /// Fills every setting not given here from `other` (flags win over the file).
    fn or(self, other: RawServe) -> RawServe {
        RawServe {
            broker: self.broker.or(other.broker),
            management: self.management.or(other.management),
            management_user: self.management_user.or(other.management_user),
            management_password_file: self
                .management_password_file
                .or(other.management_password_file),
            data_dir: self.data_dir.or(other.data_dir),
            admin: self.admin.or(other.admin),
            offline_after: self.offline_after.or(other.offline_after),
            silent_after: self.silent_after.or(other.silent_after),
            presence_vhost: self.presence_vhost.or(other.presence_vhost),
            stale_after: self.stale_after.or(other.stale_after),
            min_ssl_version: self.min_ssl_version.or(other.min_ssl_version),
            window: self.window.or(other.window),
            cert_days: self.cert_days.or(other.cert_days),
            cert_lifetime: self.cert_lifetime.or(other.cert_lifetime),
            auto_accept: self.auto_accept.or(other.auto_accept),
            max_pending: self.max_pending.or(other.max_pending),
            local_parent_names: self.local_parent_names.or(other.local_parent_names),
            local_parent_ips: self.local_parent_ips.or(other.local_parent_ips),
            ssl: self.ssl.or(other.ssl),
            queue_type: self.queue_type.or(other.queue_type),
        }
    }
}

/// Reads the top level of a TOML config file (unknown keys are an error).
pub fn read_file(path: &Path) -> Result<RawServe, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    // The top level and `[ssl]` are `serve`'s; other tables belong to other
    // commands (a child's file may sit beside it).
    let top: toml::Table = table
        .into_iter()
        .filter(|(k, v)| !v.is_table() || k == "ssl")
        .collect();
    top.try_into()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: path.to_owned(),
            why: e.to_string(),
        })
}

/// RabbitMQ management: one address, or one per node of a cluster. A
/// request goes to the node that answered last and moves on to the next
/// when it does not answer (see [`crate::management::send`]).
#[derive(Debug, Clone)]
pub struct Management {
    /// Each node's management, in the order given (at least one).
    pub nodes: Vec<ManagementNode>,
    /// Index into `nodes` of the one that answered last: shared by every
    /// clone, so that all callers skip a node found down.
    pub current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Credentials and address of one node's RabbitMQ management.
#[derive(Debug, Clone)]
pub struct ManagementNode {
    /// Base URL without credentials, no trailing slash.
    pub base: String,
    /// User name.
    pub user: String,
    /// Password (never logged).
    pub password: String,
}

/// The checked configuration of a serving parent.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// AMQP URL of the broker, or the comma-separated URLs of a cluster's
    /// nodes (checked one by one).
    pub broker: String,
    /// RabbitMQ management, when given.
    pub management: Option<Management>,
    /// Data folder.
    pub data_dir: PathBuf,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Without presence from the broker: an agent without a state report
    /// for this long is offline.
    pub offline_after: Duration,
    /// A connected agent without a state report for this long is silent.
    pub silent_after: Duration,
    /// The virtual host of the event exchange; `None`: presence is off.
    pub presence_vhost: Option<String>,
    /// How long an accepted agent may go unheard and still be waited for by
    /// a CA rotation and the final broker step (a fake registered under
    /// open enrollment, a till gone for good, must not hold them up).
    pub stale_after: Duration,
    /// Lowest child version that supports SSL.
    pub min_ssl_version: Version,
    /// Most children acting at once in a campaign.
    pub window: usize,
    /// Validity of issued certificates, days.
    pub cert_lifetime: time::Duration,
    /// SSL settings given in the config file's `[ssl]` table.
    pub ssl: Option<crate::settings::SettingsChange>,
    /// The type of the queues it declares (`fleetls.parent`, `fleetls.dead`,
    /// its own for an agent) when given with `--queue-type`; `None` lets the
    /// parent choose at start (see [`crate::queue_choice`]).
    pub queue_type: Option<fleetls_bus::queue_type::QueueType>,
    /// The broker's hosts, one per distinct node host (the default broker
    /// names of its certificate).
    pub broker_hosts: Vec<String>,
    /// Who is admitted without an operator: open enrollment (if the
    /// operator chose it) and the cap on pending agents.
    pub enrollment: crate::enrollment::Rules,
    /// Names local parents may have in their server certificates.
    pub local_parent_names: Vec<String>,
    /// IP addresses local parents may have in their server certificates.
    pub local_parent_ips: Vec<String>,
}

/// Default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:12380";
/// Default number of children acting at once.
pub const DEFAULT_WINDOW: usize = 100;
/// Default lowest SSL-capable child version.
pub const DEFAULT_MIN_SSL_VERSION: &str = "1.0.0";

impl ServeConfig {
    /// The broker's virtual host: the first address's (a cluster's nodes
    /// share their virtual hosts); `/` when it names none.
    pub fn vhost(&self) -> String {
        fleetls_bus::brokers::split(&self.broker)[0]
            .parse::<lapin::uri::AMQPUri>()
            .map(|uri| uri.vhost)
            .unwrap_or_else(|_| "/".into())
    }

    /// Checks raw settings.
    pub fn from_raw(raw: RawServe) -> Result<Self, ConfigError> {
        let broker = raw.broker.ok_or(ConfigError::Missing("--broker"))?;
        let broker_hosts = check_amqp_url("--broker", &broker)?;
        let queue_type = queue_type(raw.queue_type.as_deref())?;
        let cert_lifetime = cert_lifetime(raw.cert_days, raw.cert_lifetime.as_deref())?;
        let data_dir = raw.data_dir.ok_or(ConfigError::Missing("--data-dir"))?;
        let admin = admin_address(raw.admin)?;
        let silent_after = duration_flag(
            "--silent-after",
            raw.silent_after.as_deref(),
            DEFAULT_SILENT_AFTER,
        )?;
        let presence_vhost = presence_vhost(raw.presence_vhost)?;
        let stale_after = duration_flag(
            "--stale-after",
            raw.stale_after.as_deref(),
            DEFAULT_STALE_AFTER,
        )?;
        let offline_after = at_least_one(
            "--offline-after",
            raw.offline_after.unwrap_or(DEFAULT_OFFLINE_AFTER),
            "must be at least 1 second",
        )?;
        let min_ssl_version = min_ssl_version(raw.min_ssl_version)?;
        let window = at_least_one(
            "--window",
            raw.window.unwrap_or(DEFAULT_WINDOW),
            "at least one child must be able to act",
        )?;
        let management = match raw.management {
            None => None,
            Some(list) => Some(management_list(
                &list,
                raw.management_user,
                raw.management_password_file.as_deref(),
            )?),
        };
        let enrollment = enrollment_rules(raw.auto_accept, raw.max_pending)?;
        let (local_parent_names, local_parent_ips) =
            local_parent_allowed(raw.local_parent_names, raw.local_parent_ips)?;
        Ok(ServeConfig {
            enrollment,
            local_parent_names,
            local_parent_ips,
            broker,
            management,
            data_dir,
            admin,
            offline_after: Duration::from_secs(offline_after),
            silent_after,
            presence_vhost,
            stale_after,
            min_ssl_version,
            window,
            cert_lifetime,
            ssl: raw.ssl,
            broker_hosts,
            queue_type,
        })
    }
}

/// `--queue-type`, checked (none: the broker's default).
fn queue_type(
    text: Option<&str>,
) -> Result<Option<fleetls_bus::queue_type::QueueType>, ConfigError> {
    text.map(|text| {
        text.parse().map_err(|why| ConfigError::Invalid {
            name: "--queue-type",
            value: text.to_owned(),
            why,
        })
    })
    .transpose()
}

/// `--admin` (by default [`DEFAULT_ADMIN`]), checked.
fn admin_address(text: Option<String>) -> Result<SocketAddr, ConfigError> {
    let text = text.unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
    text.parse().map_err(|_| ConfigError::Invalid {
        name: "--admin",
        value: text.clone(),
        why: "expected IP:PORT, e.g. 127.0.0.1:12380".into(),
    })
}

/// A duration flag (`90s`, `15m`, `3d`), `default` when it is not given.
fn duration_flag(
    name: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(text) => crate::duration::parse_duration(text).map_err(|why| ConfigError::Invalid {
            name,
            value: text.to_owned(),
            why,
        }),
    }
}

/// `--presence-vhost`: `/` by default, `off` for none.
fn presence_vhost(text: Option<String>) -> Result<Option<String>, ConfigError> {
    match text {
        None => Ok(Some("/".to_owned())),
        Some(v) if v == "off" => Ok(None),
        Some(v) if v.is_empty() || v.len() > 255 => Err(ConfigError::Invalid {
            name: "--presence-vhost",
            value: v,
            why: "expected a virtual host name (1 to 255 bytes), or `off`".into(),
        }),
        Some(v) => Ok(Some(v)),
    }
}

/// A count flag that must not be 0 (`why` says what 0 would mean).
fn at_least_one<T: Default + PartialEq + std::fmt::Display>(
    name: &'static str,
    value: T,
    why: &str,
) -> Result<T, ConfigError> {
    if value == T::default() {
        return Err(ConfigError::Invalid {
            name,
            value: value.to_string(),
            why: why.into(),
        });
    }
    Ok(value)
}

/// `--min-ssl-version` (by default [`DEFAULT_MIN_SSL_VERSION`]), checked.
fn min_ssl_version(text: Option<String>) -> Result<Version, ConfigError> {
    let text = text.unwrap_or_else(|| DEFAULT_MIN_SSL_VERSION.to_owned());
    Version::parse(&text).map_err(|why| ConfigError::Invalid {
        name: "--min-ssl-version",
        value: text.clone(),
        why,
    })
}

/// `--cert-days` or `--cert-lifetime` (which wins), checked.
fn cert_lifetime(days: Option<u32>, lifetime: Option<&str>) -> Result<time::Duration, ConfigError> {
    let cert_days = days.unwrap_or(crate::pki::DEFAULT_CERT_DAYS);
    if !(1..=3650).contains(&cert_days) {
        return Err(ConfigError::Invalid {
            name: "--cert-days",
            value: cert_days.to_string(),
            why: "must be 1 to 3650 days (398 is the usual limit)".into(),
        });
    }
    Ok(match lifetime {
        None => time::Duration::days(i64::from(cert_days)),
        Some(text) => parse_lifetime(text).map_err(|why| ConfigError::Invalid {
            name: "--cert-lifetime",
            value: text.to_owned(),
            why,
        })?,
    })
}

/// `--auto-accept` and `--max-pending`, checked.
fn enrollment_rules(
    auto_accept: Option<String>,
    max_pending: Option<u64>,
) -> Result<crate::enrollment::Rules, ConfigError> {
    let auto_accept = match auto_accept {
        None => crate::admission::AutoAccept::default(),
        Some(text) => text.parse().map_err(|why| ConfigError::Invalid {
            name: "--auto-accept",
            value: text.clone(),
            why,
        })?,
    };
    let max_pending = max_pending.unwrap_or(crate::enrollment::DEFAULT_MAX_PENDING);
    if max_pending == 0 {
        return Err(ConfigError::Invalid {
            name: "--max-pending",
            value: "0".into(),
            why: "give at least 1 (an agent without a token must be able to wait for an operator)"
                .into(),
        });
    }
    Ok(crate::enrollment::Rules {
        auto_accept,
        max_pending,
    })
}

/// `--local-parent-names` and `--local-parent-ips`, checked.
fn local_parent_allowed(
    names: Option<String>,
    ips: Option<String>,
) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    let split = |text: Option<String>| -> Vec<String> {
        text.unwrap_or_default()
            .split(';')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let local_parent_names = split(names);
    for name in &local_parent_names {
        let bare = name.trim_start_matches("*.").trim_start_matches('.');
        fleetls_proto::check_dns_name(bare).map_err(|why| ConfigError::Invalid {
            name: "--local-parent-names",
            value: name.clone(),
            why: format!("{why}; give names or .domain entries"),
        })?;
    }
    let local_parent_ips = split(ips);
    for ip in &local_parent_ips {
        ip.parse::<std::net::IpAddr>()
            .map_err(|_| ConfigError::Invalid {
                name: "--local-parent-ips",
                value: ip.clone(),
                why: "not an IPv4 or IPv6 address".into(),
            })?;
    }
    Ok((local_parent_names, local_parent_ips))
}

/// The default of `--offline-after` (seconds; only where the broker does
/// not say who is connected): two and a half times the child's default
/// report interval (300 s), so that one lost report counts nobody offline.
pub const DEFAULT_OFFLINE_AFTER: u64 = 750;

/// The default of `--silent-after`: three of the child's report intervals.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(15 * 60);

/// The default of `--stale-after`: three days.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3 * 86_400);

/// A certificate lifetime: a number and `d`, `h`, `m` or `s`, from a minute
/// to 398 days (the ceiling browsers and most TLS stacks hold to).
pub fn parse_lifetime(text: &str) -> Result<time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number
        .parse()
        .map_err(|_| "expected a number and d, h, m or s, e.g. 398d or 5m".to_owned())?;
    let lifetime = match unit {
        "d" => time::Duration::days(n),
        "h" => time::Duration::hours(n),
        "m" => time::Duration::minutes(n),
        "s" => time::Duration::seconds(n),
        _ => return Err("expected a number and d, h, m or s, e.g. 398d or 5m".into()),
    };
    if lifetime < time::Duration::minutes(1) || lifetime > time::Duration::days(398) {
        return Err("must be from 1 minute to 398 days".into());
    }
    Ok(lifetime)
}

/// Checks that `value` is an AMQP URL lapin can use, or a comma-separated
/// list of them (a cluster's nodes); returns their distinct hosts, in order.
pub fn check_amqp_url(name: &'static str, value: &str) -> Result<Vec<String>, ConfigError> {
    let uris = fleetls_bus::brokers::check(value).map_err(|why| ConfigError::Invalid {
        name,
        value: redact(value),
        why,
    })?;
    let mut hosts: Vec<String> = Vec::new();
    for uri in uris {
        if !hosts.contains(&uri.authority.host) {
            hosts.push(uri.authority.host);
        }
    }
    Ok(hosts)
}

pub use fleetls_proto::redact_url as redact;

/// Checks `--management`: one URL, or a comma-separated list of them (one
/// per cluster node); `--management-user` and `--management-password-file`
/// serve every URL that has no credentials of its own.
fn management_list(
    list: &str,
    user: Option<String>,
    password_file: Option<&Path>,
) -> Result<Management, ConfigError> {
    let items: Vec<&str> = list.split(',').map(str::trim).collect();
    let count = items.len();
    let mut nodes = Vec::with_capacity(count);
    for (i, item) in items.into_iter().enumerate() {
        let place = if count > 1 {
            format!("address {} of {count}: ", i + 1)
        } else {
            String::new()
        };
        if item.is_empty() {
            return Err(ConfigError::Invalid {
                name: "--management",
                value: redact(list),
                why: format!(
                    "{place}empty: give the management URLs separated by single commas, \
                     e.g. http://user:pass@node1:15672,http://user:pass@node2:15672"
                ),
            });
        }
        let node = management(item, user.clone(), password_file).map_err(|e| match e {
            ConfigError::Invalid { name, value, why } => ConfigError::Invalid {
                name,
                value,
                why: format!("{place}{why}"),
            },
            other => other,
        })?;
        nodes.push(node);
    }
    Ok(Management {
        nodes,
        current: Default::default(),
    })
}

fn management(
    url: &str,
    user: Option<String>,
    password_file: Option<&Path>,
) -> Result<ManagementNode, ConfigError> {
    let invalid = |why: &str| ConfigError::Invalid {
        name: "--management",
        value: redact(url),
        why: why.to_owned(),
    };
    let rest = url
        .strip_prefix("http://")
        .map(|r| ("http://", r))
        .or_else(|| url.strip_prefix("https://").map(|r| ("https://", r)))
        .ok_or_else(|| invalid("not an http:// or https:// URL: expected http://host:15672"))?;
    let (scheme, rest) = rest;
    let (creds, hostpart) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if hostpart.is_empty() {
        return Err(invalid("no host in the URL"));
    }
    let (mut url_user, mut url_pass) = (None, None);
    if let Some(creds) = creds {
        let (u, p) = creds.split_once(':').unwrap_or((creds, ""));
        url_user = Some(u.to_owned());
        url_pass = Some(p.to_owned());
    }
    let file_pass = match password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Invalid {
                    name: "--management-password-file",
                    value: path.display().to_string(),
                    why: e.to_string(),
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let user = user
        .or(url_user)
        .ok_or_else(|| invalid("no user: put it in the URL or give --management-user"))?;
    let password = file_pass.or(url_pass).ok_or_else(|| {
        invalid("no password: put it in the URL or give --management-password-file")
    })?;
    Ok(ManagementNode {
        base: format!("{scheme}{}", hostpart.trim_end_matches('/')),
        user,
        password,
    })
}

/// A software version `MAJOR.MINOR.PATCH` (missing parts are 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    /// Parses `1`, `1.2` or `1.2.3` (a `-suffix` is ignored).
    pub fn parse(text: &str) -> Result<Version, String> {
        let core = text.trim().split(['-', '+']).next().unwrap_or("");
        let mut parts = [0u64; 3];
        let pieces: Vec<&str> = core.split('.').collect();
        if core.is_empty() || pieces.len() > 3 {
            return Err("expected a version like 1.2.3".into());
        }
        for (slot, piece) in parts.iter_mut().zip(&pieces) {
            *slot = piece
                .parse()
                .map_err(|_| format!("{piece:?} is not a number; expected a version like 1.2.3"))?;
        }
        Ok(Version(parts[0], parts[1], parts[2]))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetls_bus::process::Layered;

    fn raw() -> RawServe {
        RawServe {
            broker: Some("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let config = ServeConfig::from_raw(raw()).unwrap();
        assert_eq!(config.admin.to_string(), DEFAULT_ADMIN);
        assert_eq!(config.window, DEFAULT_WINDOW);
        assert_eq!(config.min_ssl_version, Version(1, 0, 0));
    }

    #[test]
    fn the_files_ssl_table_is_read_and_other_tables_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parent.toml");
        std::fs::write(
            &path,
            "window = 9\n[ssl]\nport = \"12399\"\nnames = \"hq.example\"\n[other]\nx = 1\n",
        )
        .unwrap();
        let raw = read_file(&path).unwrap();
        assert_eq!(raw.window, Some(9));
        let ssl = raw.ssl.expect("the [ssl] table");
        assert_eq!(ssl.port.as_deref(), Some("12399"));
        assert_eq!(ssl.names.as_deref(), Some("hq.example"));
        // A misspelt key in [ssl] is named, not dropped.
        std::fs::write(&path, "[ssl]\nprot = \"1\"\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = RawServe {
            window: Some(7),
            admin: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let cli = RawServe {
            window: Some(3),
            ..raw()
        };
        let config = ServeConfig::from_raw(cli.or(file)).unwrap();
        assert_eq!(config.window, 3);
        assert_eq!(config.admin.port(), 1);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let bad_broker = RawServe {
            broker: Some("http://nope".into()),
            ..raw()
        };
        let err = ServeConfig::from_raw(bad_broker).unwrap_err().to_string();
        assert!(err.contains("--broker"), "{err}");
        let list = RawServe {
            broker: Some(
                "amqp://g:g@n1:5701/%2f,amqp://g:g@10.0.0.2:5702/%2f,amqp://g:g@n1:5703/%2f".into(),
            ),
            ..raw()
        };
        let config = ServeConfig::from_raw(list).unwrap();
        assert_eq!(config.broker_hosts, ["n1", "10.0.0.2"]);
        let settings = crate::settings::SslSettings::for_brokers(&config.broker_hosts);
        assert_eq!(settings.broker_names, ["n1"]);
        assert_eq!(settings.broker_ips, [std::net::IpAddr::from([10, 0, 0, 2])]);
        let bad_element = RawServe {
            broker: Some("amqp://g:s3cret@n1:5701/%2f,amqps://g:s3cret@n2:port/%2f".into()),
            ..raw()
        };
        let err = ServeConfig::from_raw(bad_element).unwrap_err().to_string();
        assert!(
            err.contains("--broker") && err.contains("address 2 of 2"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        let bad_type = RawServe {
            queue_type: Some("mirrored".into()),
            ..raw()
        };
        let err = ServeConfig::from_raw(bad_type).unwrap_err().to_string();
        assert!(
            err.contains("--queue-type") && err.contains("quorum"),
            "{err}"
        );
        let bad_admin = RawServe {
            admin: Some("localhost".into()),
            ..raw()
        };
        let err = ServeConfig::from_raw(bad_admin).unwrap_err().to_string();
        assert!(err.contains("--admin") && err.contains("IP:PORT"), "{err}");
        let err = ServeConfig::from_raw(RawServe {
            window: Some(0),
            ..raw()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--window"), "{err}");
        let err = ServeConfig::from_raw(RawServe::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--broker"), "{err}");
    }

    #[test]
    fn management_credentials_come_from_the_url_or_a_file() {
        let m = management("http://u:p@127.0.0.1:15672/", None, None).unwrap();
        assert_eq!(
            (m.base.as_str(), m.user.as_str(), m.password.as_str()),
            ("http://127.0.0.1:15672", "u", "p")
        );
        let err = management("http://127.0.0.1:15672", None, None).unwrap_err();
        assert!(err.to_string().contains("--management-user"));
        assert!(management("ftp://x", None, None).is_err());
    }

    #[test]
    fn management_takes_a_list_and_names_a_bad_item() {
        let m = management_list(
            "http://u:p@127.0.0.1:15701, http://127.0.0.1:15702/",
            Some("v".into()),
            None,
        );
        // The second has no password of its own and no file is given.
        let err = m.unwrap_err().to_string();
        assert!(
            err.contains("--management") && err.contains("address 2 of 2") && !err.contains(":p@"),
            "{err}"
        );
        let m = management_list(
            "http://u:p@127.0.0.1:15701,http://u:p@127.0.0.1:15702",
            None,
            None,
        )
        .unwrap();
        let bases: Vec<&str> = m.nodes.iter().map(|n| n.base.as_str()).collect();
        assert_eq!(bases, ["http://127.0.0.1:15701", "http://127.0.0.1:15702"]);
        for bad in [
            "http://u:p@a:1,,http://u:p@b:2",
            "http://u:p@a:1,",
            "http://u:p@a:1,amqp://u:p@b:5672",
        ] {
            let err = management_list(bad, None, None).unwrap_err().to_string();
            assert!(err.contains("--management"), "{err}");
            assert!(
                err.contains("empty") || err.contains("not an http"),
                "{bad}: {err}"
            );
            assert!(!err.contains(":p@"), "{err}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("amqp://u:secret@h:1/%2f"), "amqp://u:***@h:1/%2f");
        assert_eq!(redact("amqp://h:1"), "amqp://h:1");
        assert_eq!(
            redact("amqp://u:s1@a:1/%2f,amqp://v:s2@b:2/%2f"),
            "amqp://u:***@a:1/%2f,amqp://v:***@b:2/%2f"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(Version::parse("1.10.0").unwrap() > Version::parse("1.9").unwrap());
        assert_eq!(Version::parse("2").unwrap(), Version(2, 0, 0));
        assert!(Version::parse("1.x").is_err());
        assert!(Version::parse("").is_err());
    }
}
