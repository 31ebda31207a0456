//! An operator's own certificate for the parent's SSL port (a company or
//! public CA instead of fleetls's own): `settings set --parent-cert F
//! --parent-key F`. It is checked whole before it replaces anything — the
//! key belongs to the certificate, the chain runs up to a self-signed root,
//! every name and address of the settings is in it, it is valid now and for
//! at most 398 days, and it may serve TLS — and then kept: renewals and a CA
//! rotation leave it alone (`certificates/own.toml`). Children verify it
//! with the root they are given with `fleetls-child run --trust-bundle F`.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::files::write_atomic;
use crate::layout::{CertFile, Layout};

/// The longest an own certificate may be valid, days (what browsers and
/// fleetls's own CA allow).
pub const MAX_DAYS: i64 = 398;

/// `certificates/own.toml`: which certificates the operator gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnRecord {
    /// The SSL port's certificate is the operator's.
    #[serde(default)]
    pub parent: bool,
}

impl OwnRecord {
    /// The record of a data dir (none given: the default).
    pub fn load(data_dir: &Path) -> OwnRecord {
        std::fs::read_to_string(Layout::new(data_dir).own_record())
            .ok()
            .and_then(|text| toml::from_str(&text).ok())
            .unwrap_or_default()
    }
}

/// Checks `chain_pem` (leaf first, up to the root) and `key_pem` as the SSL
/// port's identity for `names` and `ips` at `now` (seconds); `Err` says
/// what is wrong and what to do.
pub fn check(
    chain_pem: &str,
    key_pem: &str,
    names: &[String],
    ips: &[IpAddr],
    now: i64,
) -> Result<(), String> {
    let chain =
        fleetls_bus::tls::pem_certs(chain_pem).map_err(|e| format!("--parent-cert: {e}"))?;
    let parsed: Vec<X509Certificate<'_>> = chain
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, c)| c))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--parent-cert: a certificate is unreadable: {e}"))?;
    let leaf = &parsed[0];
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| format!("--parent-key: no usable private key in the file ({e})"))?;
    use rcgen::PublicKeyData;
    if leaf.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(
            "--parent-key: the key does not belong to the certificate of --parent-cert".into(),
        );
    }
    for pair in parsed.windows(2) {
        let (cert, issuer) = (&pair[0], &pair[1]);
        cert.verify_signature(Some(issuer.public_key()))
            .map_err(|_| {
                format!(
                "--parent-cert: \"{}\" is not signed by the next certificate of the file, \"{}\": \
                 give the chain in order, leaf first, up to the root",
                cert.subject(),
                issuer.subject()
            )
            })?;
    }
    let last = &parsed[parsed.len() - 1];
    if last.subject() != last.issuer() || last.verify_signature(None).is_err() {
        return Err(format!(
            "--parent-cert: the chain ends at \"{}\", issued by \"{}\": add the certificates up to \
             the root after the leaf (children are given that root with --trust-bundle)",
            last.subject(),
            last.issuer()
        ));
    }
    let validity = leaf.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < from || now > until {
        return Err(format!(
            "--parent-cert: the certificate is not valid now (valid {} to {})",
            validity.not_before, validity.not_after
        ));
    }
    let days = (until - from) / 86_400;
    if days > MAX_DAYS {
        return Err(format!(
            "--parent-cert: the certificate is valid {days} days; {MAX_DAYS} is the most: \
             ask for a shorter one"
        ));
    }
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
    if !server_auth {
        return Err("--parent-cert: the certificate may not serve TLS (its extended key usage lacks serverAuth)".into());
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
            "--parent-cert: the certificate does not name {} (the settings' names and addresses, \
             which children connect to): have it issued for them, or change the settings",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Installs a checked identity as the SSL port's (chain and key replaced
/// whole, the key first kept private) and records it as the operator's.
pub fn install(data_dir: &Path, chain_pem: &str, key_pem: &str) -> Result<(), String> {
    let layout = Layout::new(data_dir);
    for (file, content) in [
        (CertFile::ParentKey, key_pem),
        (CertFile::ParentPem, chain_pem),
    ] {
        let path = layout.certificate(file);
        write_atomic(&path, content.as_bytes(), file.mode())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let record = toml::to_string(&OwnRecord { parent: true }).map_err(|e| e.to_string())?;
    let path = layout.own_record();
    write_atomic(&path, record.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))
}
