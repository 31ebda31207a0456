//! The SSL settings of the network ("SSL Connection Configuration For Child
//! Agents"): the parent's SSL port, the SSL port of local parent agents, the
//! parent machine's DNS names and IP addresses, and the broker's. They are
//! written into the certificates, so they are frozen once those exist.

use std::net::IpAddr;
use std::path::Path;

use fleetls_proto::{TlsPolicy, TlsVersion};
use serde::{Deserialize, Serialize};

/// Default SSL port of the parent (the seed's).
pub const DEFAULT_SSL_PORT: u16 = 12365;

/// The settings, as stored in `DIR/ssl.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SslSettings {
    /// SSL port of the parent.
    pub port: u16,
    /// SSL port of local parent agents.
    pub local_parent_port: u16,
    /// Every DNS name of the parent machine.
    pub names: Vec<String>,
    /// Every IP address of the parent machine.
    pub ips: Vec<IpAddr>,
    /// The broker's DNS names (for its certificate).
    pub broker_names: Vec<String>,
    /// The broker's IP addresses.
    pub broker_ips: Vec<IpAddr>,
    /// The lowest TLS version the SSL ports (the parent's and the local
    /// parents') accept. Not inside any certificate: it may change at any
    /// time.
    #[serde(default)]
    pub min_tls: TlsVersion,
    /// The cipher suites they accept (IANA names); empty: every suite of
    /// the crypto provider.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Where the CA's revocation list can be fetched (http or https, e.g.
    /// the parent's `GET /crl.der` behind an address clients reach): named
    /// as CRL distribution point in every certificate signed from then on,
    /// so that TLS clients other than fleetls's can check revocation.
    /// `None`: certificates carry no such extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_url: Option<String>,
}

/// A change to the settings: what is given replaces the stored value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SettingsChange {
    /// SSL port (1-65535)
    #[arg(long)]
    pub port: Option<String>,
    /// SSL port for local parent agents (1-65535)
    #[arg(long)]
    pub local_parent_port: Option<String>,
    /// All DNS names of the parent machine, `;`-separated
    #[arg(long)]
    pub names: Option<String>,
    /// All IP addresses of the parent machine, `;`-separated
    #[arg(long)]
    pub ips: Option<String>,
    /// The broker's DNS names, `;`-separated
    #[arg(long)]
    pub broker_names: Option<String>,
    /// The broker's IP addresses, `;`-separated
    #[arg(long)]
    pub broker_ips: Option<String>,
    /// The lowest TLS version of the SSL ports: 1.2 (default) or 1.3
    #[arg(long)]
    pub min_tls: Option<String>,
    /// The SSL ports' cipher suites, `;`-separated IANA names
    /// (e.g. TLS13_AES_256_GCM_SHA384); empty: every suite
    #[arg(long)]
    pub cipher_suites: Option<String>,
    /// Where clients fetch the CA's revocation list (http:// or https://,
    /// e.g. the parent's /crl.der behind a reachable address): named as CRL
    /// distribution point in every certificate issued from now on; "" for none
    #[arg(long)]
    pub crl_url: Option<String>,
    /// Your own certificate for the parent's SSL port (PEM, leaf first, up
    /// to the root), instead of one from fleetls's CA; checked before use
    #[arg(long, requires = "parent_cert_key")]
    pub parent_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM). `--parent-key` is still read as the old
    /// spelling on the command line, but not from `FLEETLS_PARENT_KEY`, which
    /// means the parent's signing-key fingerprint that children pin
    #[arg(long, alias = "parent-key", requires = "parent_cert")]
    #[serde(alias = "parent-key")]
    pub parent_cert_key: Option<std::path::PathBuf>,
    /// Your own certificate for the broker's AMQPS listener (PEM, leaf
    /// first, up to the root), instead of one from fleetls's CA; checked
    /// against the broker names and IPs before use
    #[arg(long, requires = "broker_key")]
    pub broker_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM)
    #[arg(long, requires = "broker_cert")]
    pub broker_key: Option<std::path::PathBuf>,
}

impl SettingsChange {
    /// Whether nothing is given.
    pub fn is_empty(&self) -> bool {
        self.port.is_none()
            && self.local_parent_port.is_none()
            && self.names.is_none()
            && self.ips.is_none()
            && self.broker_names.is_none()
            && self.broker_ips.is_none()
            && self.min_tls.is_none()
            && self.cipher_suites.is_none()
            && self.crl_url.is_none()
            && self.parent_cert.is_none()
            && self.parent_cert_key.is_none()
            && self.broker_cert.is_none()
            && self.broker_key.is_none()
    }

    /// Whether it changes only the TLS options, the CRL address (for
    /// certificates issued from now on) or the operator's own certificates,
    /// which change no certificate fleetls issued (allowed once
    /// certificates exist).
    pub fn tls_only(&self) -> bool {
        SettingsChange {
            min_tls: None,
            cipher_suites: None,
            crl_url: None,
            parent_cert: None,
            parent_cert_key: None,
            broker_cert: None,
            broker_key: None,
            ..self.clone()
        }
        .is_empty()
    }
}

/// A setting that cannot be used: names it and says why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{setting}: {why}")]
pub struct SettingsError {
    /// The setting (`port`, `names`, ...).
    pub setting: &'static str,
    /// What is wrong and what to do.
    pub why: String,
}

fn invalid(setting: &'static str, why: impl Into<String>) -> SettingsError {
    SettingsError {
        setting,
        why: why.into(),
    }
}

impl SslSettings {
    /// The defaults: the seed's ports, this machine's host name and
    /// `localhost`, loopback, and the broker's host.
    pub fn defaults(broker_host: &str) -> SslSettings {
        let mut names = Vec::new();
        if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
            let host = host.trim();
            if check_dns_name(host).is_ok() && host != "localhost" {
                names.push(host.to_owned());
            }
        }
        names.push("localhost".into());
        let (broker_names, broker_ips) = match broker_host.parse::<IpAddr>() {
            Ok(ip) => (Vec::new(), vec![ip]),
            Err(_) => (vec![broker_host.to_owned()], Vec::new()),
        };
        SslSettings {
            port: DEFAULT_SSL_PORT,
            local_parent_port: DEFAULT_SSL_PORT,
            names,
            ips: vec![IpAddr::from([127, 0, 0, 1])],
            broker_names,
            broker_ips,
            min_tls: TlsVersion::default(),
            cipher_suites: Vec::new(),
            crl_url: None,
        }
    }

    /// The TLS versions and suites of the SSL ports.
    pub fn tls_policy(&self) -> TlsPolicy {
        TlsPolicy {
            min_version: self.min_tls,
            cipher_suites: self.cipher_suites.clone(),
        }
    }

    /// The defaults for a broker of one or several nodes: every distinct
    /// host of the list is a broker name (or IP) of the broker's certificate.
    pub fn for_brokers(broker_hosts: &[String]) -> SslSettings {
        let mut settings = SslSettings::defaults(broker_hosts.first().map_or("localhost", |h| h));
        for host in broker_hosts.iter().skip(1) {
            match host.parse::<IpAddr>() {
                Ok(ip) if !settings.broker_ips.contains(&ip) => settings.broker_ips.push(ip),
                Ok(_) => {}
                Err(_) if !settings.broker_names.contains(host) => {
                    settings.broker_names.push(host.clone())
                }
                Err(_) => {}
            }
        }
        settings
    }

    /// Applies a change, checking every value given.
    pub fn apply(&self, change: &SettingsChange) -> Result<SslSettings, SettingsError> {
        let mut next = self.clone();
        if let Some(port) = &change.port {
            next.port = parse_port("port", port)?;
        }
        if let Some(port) = &change.local_parent_port {
            next.local_parent_port = parse_port("local-parent-port", port)?;
        }
        if let Some(names) = &change.names {
            next.names = parse_names("names", names)?;
        }
        if let Some(ips) = &change.ips {
            next.ips = parse_ips("ips", ips)?;
        }
        if let Some(names) = &change.broker_names {
            next.broker_names = parse_names("broker-names", names)?;
        }
        if let Some(ips) = &change.broker_ips {
            next.broker_ips = parse_ips("broker-ips", ips)?;
        }
        if let Some(min) = &change.min_tls {
            next.min_tls = min.parse().map_err(|why| invalid("min-tls", why))?;
        }
        if let Some(suites) = &change.cipher_suites {
            next.cipher_suites = suites
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(url) = &change.crl_url {
            next.crl_url = match url.trim() {
                "" => None,
                url => Some(check_crl_url(url).map_err(|why| invalid("crl-url", why))?),
            };
        }
        next.check()?;
        Ok(next)
    }

    /// Checks the whole: at least one name or address for the parent and the broker.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.port == 0 {
            return Err(invalid("port", "must be 1-65535"));
        }
        if self.local_parent_port == 0 {
            return Err(invalid("local-parent-port", "must be 1-65535"));
        }
        if self.names.is_empty() && self.ips.is_empty() {
            return Err(invalid(
                "names",
                "give at least one DNS name or IP address of the parent machine",
            ));
        }
        if self.broker_names.is_empty() && self.broker_ips.is_empty() {
            return Err(invalid(
                "broker-names",
                "give at least one DNS name or IP address of the broker",
            ));
        }
        for name in self.names.iter().chain(&self.broker_names) {
            check_dns_name(name).map_err(|why| invalid("names", format!("{name:?}: {why}")))?;
        }
        fleetls_bus::tls::provider_for(&self.tls_policy())
            .map_err(|why| invalid("cipher-suites", why))?;
        Ok(())
    }

    /// The host children test against: the first DNS name, else the first address.
    pub fn ssl_host(&self) -> String {
        self.names
            .first()
            .cloned()
            .or_else(|| self.ips.first().map(IpAddr::to_string))
            .unwrap_or_else(|| "localhost".into())
    }

    /// Reads `DIR/ssl.toml`, or `None` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<SslSettings>, String> {
        let path = crate::layout::Layout::new(dir).settings();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes `DIR/ssl.toml` whole (temporary file + rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        let path = crate::layout::Layout::new(dir).settings();
        fleetls_bus::files::write_atomic(&path, text.as_bytes(), 0o644)
    }
}

/// The longest CRL address accepted (it goes into every certificate).
const MAX_CRL_URL: usize = 512;

/// A CRL distribution point address, checked: an absolute `http` or
/// `https` URL with a host, no credentials and no fragment, printable
/// ASCII; returned as it will be written into certificates.
pub fn check_crl_url(text: &str) -> Result<String, String> {
    let usage = "give an http:// or https:// address, e.g. http://hq.example:12380/crl.der";
    if text.len() > MAX_CRL_URL {
        return Err(format!(
            "{} characters is too long (at most {MAX_CRL_URL}): {usage}",
            text.len()
        ));
    }
    if !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{text:?} holds spaces, control or non-ASCII characters: {usage}"
        ));
    }
    let url =
        reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e}): {usage}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{text:?}: the scheme {:?} is not fetched by TLS clients: {usage}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} names no host: {usage}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?} holds credentials, which would be printed in every certificate: {usage}"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("{text:?} has a #fragment: {usage}"));
    }
    Ok(url.to_string())
}

fn parse_port(setting: &'static str, text: &str) -> Result<u16, SettingsError> {
    match text.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(invalid(
            setting,
            format!("{text:?} is not a port: give a number from 1 to 65535"),
        )),
    }
}

fn split(text: &str) -> impl Iterator<Item = &str> {
    text.split(';').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_names(setting: &'static str, text: &str) -> Result<Vec<String>, SettingsError> {
    let mut names = Vec::new();
    for name in split(text) {
        check_dns_name(name).map_err(|why| invalid(setting, format!("{name:?}: {why}")))?;
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

fn parse_ips(setting: &'static str, text: &str) -> Result<Vec<IpAddr>, SettingsError> {
    let mut ips = Vec::new();
    for ip in split(text) {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| invalid(setting, format!("{ip:?} is not an IPv4 or IPv6 address")))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

pub use fleetls_proto::check_dns_name;

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SslSettings {
        SslSettings::defaults("127.0.0.1")
    }

    #[test]
    fn defaults_are_the_seeds() {
        let s = base();
        assert_eq!((s.port, s.local_parent_port), (12365, 12365));
        assert!(s.names.contains(&"localhost".to_string()));
        assert_eq!(s.broker_ips, vec![IpAddr::from([127, 0, 0, 1])]);
        s.check().unwrap();
    }

    #[test]
    fn changes_are_checked_and_name_the_setting() {
        let change = |f: fn(&mut SettingsChange)| {
            let mut c = SettingsChange::default();
            f(&mut c);
            base().apply(&c)
        };
        assert_eq!(
            change(|c| c.port = Some("0".into())).unwrap_err().setting,
            "port"
        );
        assert_eq!(
            change(|c| c.port = Some("70000".into()))
                .unwrap_err()
                .setting,
            "port"
        );
        assert_eq!(
            change(|c| c.local_parent_port = Some("x".into()))
                .unwrap_err()
                .setting,
            "local-parent-port"
        );
        assert_eq!(
            change(|c| c.names = Some("ok.example;bad_name".into()))
                .unwrap_err()
                .setting,
            "names"
        );
        assert_eq!(
            change(|c| c.ips = Some("10.0.0.1;10.0.0.256".into()))
                .unwrap_err()
                .setting,
            "ips"
        );
        let err = change(|c| {
            c.names = Some("".into());
            c.ips = Some(" ; ".into());
        })
        .unwrap_err();
        assert!(err.why.contains("at least one"), "{err}");
        let ok = change(|c| {
            c.port = Some("443".into());
            c.names = Some("hq.example; HQ.example ;parent".into());
            c.ips = Some("10.0.0.1;fe80::1".into());
        })
        .unwrap();
        assert_eq!(ok.port, 443);
        assert_eq!(ok.names, vec!["hq.example", "parent"]);
        assert_eq!(ok.ips.len(), 2);
        assert_eq!(ok.ssl_host(), "hq.example");
    }

    #[test]
    fn the_crl_address_is_an_http_url_and_empty_clears_it() {
        let set = |url: &str| {
            base().apply(&SettingsChange {
                crl_url: Some(url.into()),
                ..SettingsChange::default()
            })
        };
        let ok = set("http://hq.example:12380/crl.pem").unwrap();
        assert_eq!(
            ok.crl_url.as_deref(),
            Some("http://hq.example:12380/crl.pem")
        );
        assert_eq!(
            set("HTTPS://HQ.example/crl.pem")
                .unwrap()
                .crl_url
                .as_deref(),
            Some("https://hq.example/crl.pem")
        );
        let cleared = ok
            .apply(&SettingsChange {
                crl_url: Some(" ".into()),
                ..SettingsChange::default()
            })
            .unwrap();
        assert_eq!(cleared.crl_url, None);
        for bad in [
            "ldap://hq.example/crl",
            "hq.example/crl.pem",
            "http://user:secret@hq.example/crl.pem",
            "http://hq.example/crl pem",
            "http://hq.example/crl.pem#x",
            "file:///etc/crl.pem",
        ] {
            let err = set(bad).unwrap_err();
            assert_eq!(err.setting, "crl-url", "{bad}: {err}");
        }
        // Stored only when set: an ssl.toml of an older release reads as before.
        assert!(!toml::to_string(&base()).unwrap().contains("crl-url"));
        let change = SettingsChange {
            crl_url: Some("http://hq.example/crl.pem".into()),
            ..SettingsChange::default()
        };
        assert!(change.tls_only(), "allowed once certificates exist");
    }
}
