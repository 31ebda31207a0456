//! Configuration of `fleetls-child run`: flags (each also read from a
//! `FLEETLS_*` environment variable) over a TOML file, checked into a
//! [`RunConfig`] before anything runs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetls_proto::AgentKind;
use serde::Deserialize;

pub use fleetls_bus::ConfigError;

/// The raw settings of `run`, as flags or as the config file's keys.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRun {
    /// AMQP URL of the broker, e.g. amqp://user:pass@host:5672/%2f; for a
    /// cluster, its nodes' URLs separated by commas
    #[arg(long, env = "FLEETLS_BROKER")]
    pub broker: Option<String>,
    /// Folder for the identity, certificates and state
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Display name of this agent (default: the one stored, else the host name)
    #[arg(long, env = "FLEETLS_NAME")]
    pub name: Option<String>,
    /// child, local-parent or mpos
    #[arg(long, env = "FLEETLS_KIND")]
    pub kind: Option<String>,
    /// The site this agent belongs to
    #[arg(long, env = "FLEETLS_LOCATION")]
    pub location: Option<String>,
    /// DNS names of this machine, `;`-separated
    #[arg(long, env = "FLEETLS_HOSTNAMES")]
    pub hostnames: Option<String>,
    /// IP addresses of this machine, `;`-separated
    #[arg(long, env = "FLEETLS_IPS")]
    pub ips: Option<String>,
    /// Pinned CA fingerprint, sha256:HEX (otherwise the CA is trusted on first use)
    #[arg(long, env = "FLEETLS_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,
    /// The parent's signing key, sha256:HEX as `fleetls-parent signing-key`
    /// prints it (otherwise the first signed command's key is pinned)
    #[arg(long, env = "FLEETLS_PARENT_KEY")]
    pub parent_key: Option<String>,
    /// Seconds between two state reports to the parent when nothing changes
    /// (a change is reported at once; whether the agent is online, the
    /// parent learns from the broker). Default 300, at most 86400
    #[arg(long, env = "FLEETLS_REPORT_EVERY")]
    pub report_every: Option<u64>,
    /// The old name of --report-every (FLEETLS_HEARTBEAT, `heartbeat` in
    /// the config file); --report-every wins when both are given
    #[arg(long, env = "FLEETLS_HEARTBEAT", hide = true)]
    pub heartbeat: Option<u64>,
    /// The longest wait, in seconds, between two attempts to reach the
    /// broker after it went away: each wait is random, from zero up to a
    /// ceiling that doubles from 1 s with every failed attempt up to this
    /// (default 60, 1 to 3600)
    #[arg(long, env = "FLEETLS_RECONNECT_MAX")]
    pub reconnect_max: Option<u64>,
    /// Renew the certificate once this share of its lifetime has passed
    /// (default 0.67, give or take 0.05 per agent)
    #[arg(long, env = "FLEETLS_RENEW_AT")]
    pub renew_at: Option<f64>,
    /// Type of the queues fleetls declares (its own, fleetls.parent when first): classic (one broker node) or
    /// quorum (a cluster: replicated, survives losing a node)
    #[arg(long, env = "FLEETLS_QUEUE_TYPE")]
    pub queue_type: Option<String>,
    /// Report this version instead of the real one (for tests of old agents)
    #[arg(long, env = "FLEETLS_REPORT_VERSION", hide = true)]
    pub report_version: Option<String>,
    /// Also keep the CA and this agent's identity as a store in this format,
    /// next to the PEM files and in step with them: pem (the PEM files
    /// alone), pkcs12 or jks
    #[arg(long, env = "FLEETLS_TRUST_STORE_FORMAT")]
    pub trust_store_format: Option<String>,
    /// File holding the password of the pkcs12 / jks stores (at least 8 characters)
    #[arg(long, env = "FLEETLS_TRUST_STORE_PASSWORD_FILE")]
    pub trust_store_password_file: Option<PathBuf>,
    /// Root certificates (PEM) to trust for the servers this agent connects
    /// to, besides the network's CA: the root of the parent's own SSL port
    /// certificate (`settings set --parent-cert`)
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// Enrollment token from `fleetls-parent enroll create`: admits this
    /// agent at its first Hello without an operator (the token itself is
    /// never sent). Prefer --enroll-token-file: a command line is visible
    /// to every user of the machine
    #[arg(
        long,
        env = "FLEETLS_ENROLL_TOKEN",
        conflicts_with = "enroll_token_file"
    )]
    pub enroll_token: Option<String>,
    /// File holding the enrollment token (e.g. written by the configuration
    /// management tool that rolls the agent out)
    #[arg(long, env = "FLEETLS_ENROLL_TOKEN_FILE")]
    pub enroll_token_file: Option<PathBuf>,
}

impl fleetls_bus::process::Layered for RawRun {
    /// Fills every setting not given here from `other` (flags win over the file).
    fn or(self, other: RawRun) -> RawRun {
        RawRun {
            broker: self.broker.or(other.broker),
            data_dir: self.data_dir.or(other.data_dir),
            name: self.name.or(other.name),
            kind: self.kind.or(other.kind),
            location: self.location.or(other.location),
            hostnames: self.hostnames.or(other.hostnames),
            ips: self.ips.or(other.ips),
            ca_fingerprint: self.ca_fingerprint.or(other.ca_fingerprint),
            parent_key: self.parent_key.or(other.parent_key),
            // Each layer's report interval under either name, so that a
            // flag's old name still wins over the file's new one.
            report_every: self
                .report_every
                .or(self.heartbeat)
                .or(other.report_every)
                .or(other.heartbeat),
            heartbeat: None,
            reconnect_max: self.reconnect_max.or(other.reconnect_max),
            renew_at: self.renew_at.or(other.renew_at),
            report_version: self.report_version.or(other.report_version),
            queue_type: self.queue_type.or(other.queue_type),
            trust_store_format: self.trust_store_format.or(other.trust_store_format),
            trust_store_password_file: self
                .trust_store_password_file
                .or(other.trust_store_password_file),
            trust_bundle: self.trust_bundle.or(other.trust_bundle),
            enroll_token: self.enroll_token.or(other.enroll_token),
            enroll_token_file: self.enroll_token_file.or(other.enroll_token_file),
        }
    }
}

/// Reads a TOML config file.
pub fn read_file(path: &Path) -> Result<RawRun, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

/// The checked configuration of a child.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// AMQP URL of the broker, or the comma-separated URLs of a cluster's
    /// nodes (checked one by one).
    pub broker: String,
    /// Data folder.
    pub data_dir: PathBuf,
    /// Display name, if given (else the stored one).
    pub name: Option<String>,
    /// Kind.
    pub kind: AgentKind,
    /// Site.
    pub location: Option<String>,
    /// DNS names.
    pub hostnames: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// Pinned CA fingerprint, lowercase `sha256:hex`.
    pub ca_fingerprint: Option<String>,
    /// The parent signing key's fingerprint (hex digits), when pinned up front.
    pub parent_key: Option<String>,
    /// Time between two state reports when nothing changed
    /// (`--report-every`).
    pub report_every: Duration,
    /// The cap of the reconnect delays (`--reconnect-max`).
    pub reconnect_max: Duration,
    /// The share of a certificate's lifetime after which it is renewed.
    pub renew_at: f64,
    /// The version reported to the parent.
    pub version: String,
    /// The type of the queues it declares (`fleetls.parent`, `fleetls.dead`,
    /// its own for an agent).
    pub queue_type: fleetls_bus::queue_type::QueueType,
    /// The stores kept in step with the PEM files (`--trust-store-format`).
    pub trust_stores: Option<crate::stores::TrustStores>,
    /// Extra roots for the servers it connects to (`--trust-bundle`), PEM.
    pub trust_bundle: Option<String>,
    /// The enrollment token it proves in its Hello, if it was given one.
    pub enroll_token: Option<fleetls_bus::enroll::Token>,
}

impl RunConfig {
    /// Checks raw settings.
    pub fn from_raw(raw: RawRun) -> Result<RunConfig, ConfigError> {
        let broker = raw.broker.ok_or(ConfigError::Missing("--broker"))?;
        fleetls_bus::brokers::check(&broker).map_err(|why| ConfigError::Invalid {
            name: "--broker",
            value: redact(&broker),
            why,
        })?;
        let data_dir = raw.data_dir.ok_or(ConfigError::Missing("--data-dir"))?;
        let queue_type = match &raw.queue_type {
            None => fleetls_bus::queue_type::QueueType::default(),
            Some(text) => text.parse().map_err(|why| ConfigError::Invalid {
                name: "--queue-type",
                value: text.clone(),
                why,
            })?,
        };
        let kind = match raw.kind {
            None => AgentKind::Child,
            Some(k) => k.parse().map_err(|why| ConfigError::Invalid {
                name: "--kind",
                value: k.clone(),
                why,
            })?,
        };
        let (hostnames, ips) = addresses(raw.hostnames.as_deref(), raw.ips.as_deref())?;
        let (ca_fingerprint, parent_key) = pins(raw.ca_fingerprint, raw.parent_key)?;
        let renew_at = raw.renew_at.unwrap_or(0.67);
        if !(0.1..=0.9).contains(&renew_at) {
            return Err(ConfigError::Invalid {
                name: "--renew-at",
                value: renew_at.to_string(),
                why: "must be a share of the lifetime from 0.1 to 0.9".into(),
            });
        }
        let report_every = seconds(
            raw.report_every.or(raw.heartbeat),
            if raw.report_every.is_none() && raw.heartbeat.is_some() {
                "--heartbeat"
            } else {
                "--report-every"
            },
            REPORT_EVERY,
            86_400,
        )?;
        let reconnect_max = seconds(raw.reconnect_max, "--reconnect-max", RECONNECT_MAX, 3600)?;
        if let Some(name) = &raw.name {
            if name.trim().is_empty() || name.len() > 200 {
                return Err(ConfigError::Invalid {
                    name: "--name",
                    value: name.clone(),
                    why: "must be 1 to 200 characters".into(),
                });
            }
        }
        let trust_stores = crate::stores::TrustStores::from_flags(
            raw.trust_store_format.as_deref(),
            raw.trust_store_password_file.as_deref(),
        )?;
        let trust_bundle = match &raw.trust_bundle {
            None => None,
            Some(path) => {
                let invalid = |why: String| ConfigError::Invalid {
                    name: "--trust-bundle",
                    value: path.display().to_string(),
                    why,
                };
                let pem = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
                fleetls_bus::tls::pem_certs(&pem).map_err(|e| {
                    invalid(format!("{e}: give the PEM file of the root certificate(s)"))
                })?;
                Some(pem)
            }
        };
        let enroll_token = enroll_token(raw.enroll_token, raw.enroll_token_file)?;
        Ok(RunConfig {
            enroll_token,
            trust_stores,
            trust_bundle,
            broker,
            data_dir,
            name: raw.name,
            kind,
            location: raw.location.filter(|l| !l.trim().is_empty()),
            hostnames,
            ips,
            ca_fingerprint,
            parent_key,
            report_every,
            reconnect_max,
            renew_at,
            version: raw
                .report_version
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
            queue_type,
        })
    }

    /// The reconnect delays this agent waits (full jitter, capped at
    /// `--reconnect-max`).
    pub fn backoff(&self) -> fleetls_bus::reconnect::Backoff {
        fleetls_bus::reconnect::Backoff::new(self.reconnect_max)
    }
}

/// The default of `--report-every`, in seconds: the parent learns whether
/// an agent is online from the broker, and every change of state is
/// reported at once; this report only repeats it.
pub const REPORT_EVERY: u64 = 300;

/// The default of `--reconnect-max`, in seconds.
pub const RECONNECT_MAX: u64 = 60;

/// A number of seconds from 1 to `max` (`default` when not given), or an
/// error naming `name`.
fn seconds(
    value: Option<u64>,
    name: &'static str,
    default: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if value == 0 || value > max {
        return Err(ConfigError::Invalid {
            name,
            value: value.to_string(),
            why: format!("must be between 1 and {max} seconds"),
        });
    }
    Ok(Duration::from_secs(value))
}

/// `--hostnames` and `--ips`, checked.
fn addresses(
    hostnames: Option<&str>,
    ips: Option<&str>,
) -> Result<(Vec<String>, Vec<IpAddr>), ConfigError> {
    let names = split_list(hostnames);
    for name in &names {
        check_dns_name(name).map_err(|why| ConfigError::Invalid {
            name: "--hostnames",
            value: name.clone(),
            why,
        })?;
    }
    let mut parsed = Vec::new();
    for ip in split_list(ips) {
        parsed.push(ip.parse().map_err(|_| ConfigError::Invalid {
            name: "--ips",
            value: ip.clone(),
            why: "not an IPv4 or IPv6 address".into(),
        })?);
    }
    Ok((names, parsed))
}

/// `--ca-fingerprint` and `--parent-key`, checked and normalised.
fn pins(
    ca_fingerprint: Option<String>,
    parent_key: Option<String>,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    let ca = match ca_fingerprint {
        None => None,
        Some(f) => Some(parse_fingerprint(&f).ok_or_else(|| ConfigError::Invalid {
            name: "--ca-fingerprint",
            value: f.clone(),
            why: "expected sha256: followed by 64 hex digits (colons allowed)".into(),
        })?),
    };
    let parent = match parent_key {
            None => None,
            Some(f) => Some(fleetls_bus::seal::normalize_fingerprint(&f).ok_or_else(|| {
                ConfigError::Invalid {
                    name: "--parent-key",
                    value: f.clone(),
                    why: "expected sha256: followed by 64 hex digits, as `fleetls-parent signing-key` prints it".into(),
                }
            })?),
        };
    Ok((ca, parent))
}

/// The enrollment token given as text or in a file (not both), checked.
fn enroll_token(
    text: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<fleetls_bus::enroll::Token>, ConfigError> {
    let (name, value, text) = match (text, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                name: "--enroll-token",
                value: "(hidden)".into(),
                why: "give the token or --enroll-token-file, not both".into(),
            })
        }
        (None, None) => return Ok(None),
        (Some(text), None) => ("--enroll-token", "(hidden)".to_owned(), text),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                name: "--enroll-token-file",
                value: path.display().to_string(),
                why: format!("{e}: give the file the token was written to"),
            })?;
            ("--enroll-token-file", path.display().to_string(), text)
        }
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|e: fleetls_bus::enroll::TokenError| ConfigError::Invalid {
            name,
            value,
            why: e.to_string(),
        })
}

/// Splits a `;`-separated list, dropping blanks.
pub fn split_list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub use fleetls_proto::check_dns_name;

/// Normalises `sha256:AB:CD...` or `sha256:abcd...` to `sha256:abcd...`.
pub fn parse_fingerprint(text: &str) -> Option<String> {
    let hex = text.trim().strip_prefix("sha256:")?;
    let hex: String = hex
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

pub use fleetls_proto::redact_url as redact;

#[cfg(test)]
mod tests {
    use super::*;
    use fleetls_bus::process::Layered;

    fn raw() -> RawRun {
        RawRun {
            broker: Some("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            data_dir: Some("/tmp/c".into()),
            ..Default::default()
        }
    }

    #[test]
    fn lists_and_defaults() {
        let config = RunConfig::from_raw(RawRun {
            hostnames: Some("till-1.shop; till-1 ;".into()),
            ips: Some("10.0.0.5;::1".into()),
            ..raw()
        })
        .unwrap();
        assert_eq!(config.hostnames, vec!["till-1.shop", "till-1"]);
        assert_eq!(config.ips.len(), 2);
        assert_eq!(config.kind, AgentKind::Child);
        assert_eq!(config.report_every, Duration::from_secs(300));
        assert_eq!(config.reconnect_max, Duration::from_secs(60));
        assert_eq!(config.backoff().cap(), Duration::from_secs(60));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            RawRun {
                kind: Some("till".into()),
                ..raw()
            },
            RawRun {
                ips: Some("10.0.0.300".into()),
                ..raw()
            },
            RawRun {
                hostnames: Some("bad_name".into()),
                ..raw()
            },
            RawRun {
                ca_fingerprint: Some("md5:00".into()),
                ..raw()
            },
            RawRun {
                heartbeat: Some(0),
                ..raw()
            },
            RawRun {
                report_every: Some(86_401),
                ..raw()
            },
            RawRun {
                reconnect_max: Some(0),
                ..raw()
            },
            RawRun {
                reconnect_max: Some(3601),
                ..raw()
            },
            RawRun {
                broker: Some("localhost".into()),
                ..raw()
            },
        ];
        for (case, flag) in cases.into_iter().zip([
            "--kind",
            "--ips",
            "--hostnames",
            "--ca-fingerprint",
            "--heartbeat",
            "--report-every",
            "--reconnect-max",
            "--reconnect-max",
            "--broker",
        ]) {
            let err = RunConfig::from_raw(case).unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
        let err = RunConfig::from_raw(RawRun::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--broker"));
    }

    #[test]
    fn fingerprints_normalise() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}")).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        let colons: Vec<&str> = std::iter::repeat_n("ab", 32).collect();
        assert!(parse_fingerprint(&format!("sha256:{}", colons.join(":"))).is_some());
        assert!(parse_fingerprint("sha256:abc").is_none());
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = RawRun {
            name: Some("file".into()),
            location: Some("x".into()),
            ..raw()
        };
        let flags = RawRun {
            name: Some("flag".into()),
            ..Default::default()
        };
        let config = RunConfig::from_raw(flags.or(file)).unwrap();
        assert_eq!(config.name.as_deref(), Some("flag"));
        assert_eq!(config.location.as_deref(), Some("x"));
    }

    #[test]
    fn the_report_interval_and_the_reconnect_cap() {
        let config = RunConfig::from_raw(RawRun {
            report_every: Some(86_400),
            reconnect_max: Some(3600),
            ..raw()
        })
        .unwrap();
        assert_eq!(config.report_every, Duration::from_secs(86_400));
        assert_eq!(config.backoff().cap(), Duration::from_secs(3600));
        let config = RunConfig::from_raw(RawRun {
            reconnect_max: Some(1),
            ..raw()
        })
        .unwrap();
        assert_eq!(config.backoff().ceiling(5), Duration::from_secs(1));
        // The old name still works; the new one wins over it.
        let old = RunConfig::from_raw(RawRun {
            heartbeat: Some(2),
            ..raw()
        })
        .unwrap();
        assert_eq!(old.report_every, Duration::from_secs(2));
        let both = RunConfig::from_raw(RawRun {
            heartbeat: Some(2),
            report_every: Some(7),
            ..raw()
        })
        .unwrap();
        assert_eq!(both.report_every, Duration::from_secs(7));
    }

    #[test]
    fn a_flag_under_the_old_name_wins_over_the_file() {
        let file = RawRun {
            report_every: Some(600),
            reconnect_max: Some(120),
            ..raw()
        };
        let flags = RawRun {
            heartbeat: Some(5),
            ..Default::default()
        };
        let config = RunConfig::from_raw(flags.or(file)).unwrap();
        assert_eq!(config.report_every, Duration::from_secs(5));
        assert_eq!(config.reconnect_max, Duration::from_secs(120));
        // The file's old key is read as the new one.
        let file: RawRun = toml::from_str("heartbeat = 9").unwrap();
        let config = RunConfig::from_raw(RawRun::default().or(raw()).or(file)).unwrap();
        assert_eq!(config.report_every, Duration::from_secs(9));
        let file: RawRun = toml::from_str("report-every = 11\nreconnect-max = 30").unwrap();
        let config = RunConfig::from_raw(raw().or(file)).unwrap();
        assert_eq!(config.report_every, Duration::from_secs(11));
        assert_eq!(config.reconnect_max, Duration::from_secs(30));
    }

    #[test]
    fn the_old_flag_is_read_but_not_shown() {
        use clap::{CommandFactory, Parser};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RawRun,
        }
        let words = ["run", "--broker", "amqp://h/%2f", "--data-dir", "/tmp/c"];
        let parsed = Cli::try_parse_from(words.iter().chain(&["--heartbeat", "5"])).unwrap();
        let config = RunConfig::from_raw(parsed.run).unwrap();
        assert_eq!(config.report_every, Duration::from_secs(5));
        let parsed = Cli::try_parse_from(words.iter().chain(&[
            "--report-every",
            "900",
            "--reconnect-max",
            "5",
        ]))
        .unwrap();
        let config = RunConfig::from_raw(parsed.run).unwrap();
        assert_eq!(config.report_every, Duration::from_secs(900));
        assert_eq!(config.reconnect_max, Duration::from_secs(5));
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--report-every") && help.contains("--reconnect-max"));
        assert!(!help.contains("--heartbeat"), "{help}");
    }
}
