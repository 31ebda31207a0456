//! An operator's own certificates (a company or public CA instead of
//! fleetls's own): `settings set --parent-cert F --parent-cert-key F` for the
//! parent's SSL port, `--broker-cert F --broker-key F` for the broker's
//! AMQPS listener. Each is checked whole before it replaces anything — the
//! key belongs to the certificate, the chain runs up to a self-signed root,
//! every name and address of the settings is in it, it is valid now and for
//! at most 398 days, and it may serve TLS — and then kept: renewals and a CA
//! rotation leave it alone (`certificates/own.toml`).
//!
//! Children verify the SSL port's with the root they are given with
//! `fleetls-child run --trust-bundle F`; the broker's root travels in the
//! signed `UseBrokerTls` command (with fleetls's CAs) and the parent trusts
//! it for its own AMQPS connection. Once the SSL port serves the operator's
//! certificate, the parent keeps presenting a certificate of fleetls's CA to
//! the broker (`certificates/client.pem`), renewed and rotated like the
//! broker's: RabbitMQ trusts fleetls's CA for client certificates, not the
//! operator's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use fleetls_bus::files::write_atomic;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::layout::{CertFile, Layout};

/// The longest an own certificate may be valid, days (what browsers and
/// fleetls's own CA allow).
pub const MAX_DAYS: i64 = 398;

/// Whose certificate the operator gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The parent's SSL port (`--parent-cert`, `--parent-cert-key`).
    Parent,
    /// The broker's AMQPS listener (`--broker-cert`, `--broker-key`).
    Broker,
}

impl Role {
    /// The flags that give it: (certificate, key).
    pub fn flags(self) -> (&'static str, &'static str) {
        match self {
            Role::Parent => ("--parent-cert", "--parent-cert-key"),
            Role::Broker => ("--broker-cert", "--broker-key"),
        }
    }

    /// Who is given the chain's root, for the error that asks for it.
    fn root_goes_to(self) -> &'static str {
        match self {
            Role::Parent => "children are given that root with --trust-bundle",
            Role::Broker => "children are sent that root when they move to AMQPS",
        }
    }
}

/// `certificates/own.toml`: which certificates the operator gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnRecord {
    /// The SSL port's certificate is the operator's.
    #[serde(default)]
    pub parent: bool,
    /// The broker's certificate is the operator's.
    #[serde(default)]
    pub broker: bool,
}

impl OwnRecord {
    /// The record of a data dir (none given: the default).
    pub fn load(data_dir: &Path) -> OwnRecord {
        std::fs::read_to_string(Layout::new(data_dir).own_record())
            .ok()
            .and_then(|text| toml::from_str(&text).ok())
            .unwrap_or_default()
    }

    fn save(&self, data_dir: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        let path = Layout::new(data_dir).own_record();
        write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The certificate and key the parent presents to the broker (its AMQPS
/// connection, the broker probes, `doctor`): fleetls-issued, so RabbitMQ
/// accepts it — `parent.pem`, or `client.pem` once the SSL port serves the
/// operator's own.
pub fn client_identity(data_dir: &Path) -> (PathBuf, PathBuf) {
    let layout = Layout::new(data_dir);
    if OwnRecord::load(data_dir).parent && layout.client_pem().exists() {
        (layout.client_pem(), layout.client_key())
    } else {
        (
            layout.certificate(CertFile::ParentPem),
            layout.certificate(CertFile::ParentKey),
        )
    }
}

/// The files whose certificates the broker's must chain to: every CA
/// trusted (`trust.pem`, or `ca.pem` before it existed) and the root of
/// the operator's own broker certificate, if given.
pub fn broker_trust_files(data_dir: &Path) -> Vec<PathBuf> {
    let layout = Layout::new(data_dir);
    let trust = layout.certificate(CertFile::TrustPem);
    let mut files = vec![if trust.exists() {
        trust
    } else {
        layout.certificate(CertFile::CaPem)
    }];
    if OwnRecord::load(data_dir).broker {
        files.push(layout.broker_root());
    }
    files
}

/// [`broker_trust_files`], as one PEM text (what `UseBrokerTls` carries).
pub fn broker_trust_pem(data_dir: &Path) -> Result<String, String> {
    let mut text = String::new();
    for path in broker_trust_files(data_dir) {
        let pem = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.push_str(pem.trim_end());
        text.push('\n');
    }
    Ok(text)
}

/// Checks `chain_pem` (leaf first, up to the root) and `key_pem` as the
/// identity of `role` for `names` and `ips` at `now` (seconds); `Err` says
/// what is wrong and what to do, naming the flag.
pub fn check(
    role: Role,
    chain_pem: &str,
    key_pem: &str,
    names: &[String],
    ips: &[IpAddr],
    now: i64,
) -> Result<(), String> {
    let (cert_flag, key_flag) = role.flags();
    let chain = fleetls_bus::tls::pem_certs(chain_pem).map_err(|e| format!("{cert_flag}: {e}"))?;
    let parsed: Vec<X509Certificate<'_>> = chain
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, c)| c))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_flag}: a certificate is unreadable: {e}"))?;
    let leaf = &parsed[0];
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| format!("{key_flag}: no usable private key in the file ({e})"))?;
    use rcgen::PublicKeyData;
    if leaf.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(format!(
            "{key_flag}: the key does not belong to the certificate of {cert_flag}"
        ));
    }
    check_chain(cert_flag, role, &parsed)?;
    let validity = leaf.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < from || now > until {
        return Err(format!(
            "{cert_flag}: the certificate is not valid now (valid {} to {})",
            validity.not_before, validity.not_after
        ));
    }
    let days = (until - from) / 86_400;
    if days > MAX_DAYS {
        return Err(format!(
            "{cert_flag}: the certificate is valid {days} days; {MAX_DAYS} is the most: \
             ask for a shorter one"
        ));
    }
    let (dns, addresses, server_auth) = names_and_usage(leaf);
    if !server_auth {
        return Err(format!(
            "{cert_flag}: the certificate may not serve TLS (its extended key usage lacks serverAuth)"
        ));
    }
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !dns.contains(&n.to_ascii_lowercase()))
        .cloned()
        .chain(
            ips.iter()
                .filter(|ip| !addresses.contains(ip))
                .map(IpAddr::to_string),
        )
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{cert_flag}: the certificate does not name {} (the settings' {}names and addresses, \
             which children connect to): have it issued for them, or change the settings",
            missing.join(", "),
            if role == Role::Broker { "broker " } else { "" }
        ));
    }
    Ok(())
}

/// The leaf's DNS names (lower case), IP addresses, and whether it may
/// serve TLS (serverAuth, or no extended key usage at all).
fn names_and_usage(leaf: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>, bool) {
    let (mut dns, mut addresses) = (Vec::new(), Vec::new());
    let mut server_auth = true;
    for ext in leaf.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(n) => dns.push(n.to_ascii_lowercase()),
                        GeneralName::IPAddress(raw) => {
                            let ip = match raw.len() {
                                4 => <[u8; 4]>::try_from(*raw).ok().map(IpAddr::from),
                                16 => <[u8; 16]>::try_from(*raw).ok().map(IpAddr::from),
                                _ => None,
                            };
                            addresses.extend(ip);
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => server_auth = eku.server_auth || eku.any,
            _ => {}
        }
    }
    (dns, addresses, server_auth)
}

/// Each certificate of the chain is signed by the next, and the last is a
/// self-signed root.
fn check_chain(cert_flag: &str, role: Role, parsed: &[X509Certificate<'_>]) -> Result<(), String> {
    for pair in parsed.windows(2) {
        let (cert, issuer) = (&pair[0], &pair[1]);
        cert.verify_signature(Some(issuer.public_key()))
            .map_err(|_| {
                format!(
                "{cert_flag}: \"{}\" is not signed by the next certificate of the file, \"{}\": \
                 give the chain in order, leaf first, up to the root",
                cert.subject(),
                issuer.subject()
            )
            })?;
    }
    let last = &parsed[parsed.len() - 1];
    if last.subject() != last.issuer() || last.verify_signature(None).is_err() {
        return Err(format!(
            "{cert_flag}: the chain ends at \"{}\", issued by \"{}\": add the certificates up to \
             the root after the leaf ({})",
            last.subject(),
            last.issuer(),
            role.root_goes_to()
        ));
    }
    Ok(())
}

/// Installs a checked identity of `role` (chain and key replaced whole,
/// the key first, kept private) and records it as the operator's. The
/// first time the SSL port's is given, the fleetls-issued certificate it
/// replaces stays the parent's identity toward the broker
/// ([`client_identity`]); a broker's root is kept for the parent's and the
/// children's trust ([`broker_trust_files`]).
pub fn install(data_dir: &Path, role: Role, chain_pem: &str, key_pem: &str) -> Result<(), String> {
    let layout = Layout::new(data_dir);
    let mut record = OwnRecord::load(data_dir);
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
        move |e| format!("{}: {e}", path.display())
    }
    let (key_path, chain_path) = match role {
        Role::Parent => {
            let (key, chain) = (
                layout.certificate(CertFile::ParentKey),
                layout.certificate(CertFile::ParentPem),
            );
            if !record.parent {
                for (from, to) in [(&key, layout.client_key()), (&chain, layout.client_pem())] {
                    let bytes = std::fs::read(from).map_err(io(from))?;
                    write_atomic(
                        &to,
                        &bytes,
                        if to == layout.client_key() {
                            0o600
                        } else {
                            0o644
                        },
                    )
                    .map_err(io(&to))?;
                }
            }
            record.parent = true;
            (key, chain)
        }
        Role::Broker => {
            let chain = fleetls_bus::tls::pem_certs(chain_pem).map_err(|e| e.to_string())?;
            let root = chain.last().ok_or("the chain is empty")?;
            let path = layout.broker_root();
            write_atomic(&path, fleetls_bus::tls::cert_pem(root).as_bytes(), 0o644)
                .map_err(io(&path))?;
            record.broker = true;
            (
                layout.certificate(CertFile::BrokerKey),
                layout.certificate(CertFile::BrokerPem),
            )
        }
    };
    write_atomic(&key_path, key_pem.as_bytes(), 0o600).map_err(io(&key_path))?;
    write_atomic(&chain_path, chain_pem.as_bytes(), 0o644).map_err(io(&chain_path))?;
    record.save(data_dir)
}
