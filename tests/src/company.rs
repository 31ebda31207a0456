//! A company's own PKI, made in the test: a root, intermediates, and server
//! certificates from them — what an operator brings with `settings set
//! --parent-cert` / `--broker-cert`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};

/// A CA of the test: its certificate PEM and what signs with it.
pub struct Ca {
    /// Its certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "company");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A self-signed root CA named `cn`.
pub fn root(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = named(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// An intermediate CA named `cn`, signed by `by`.
pub fn intermediate(cn: &str, by: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = named(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.signed_by(&key, &by.issuer).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate for `dns` and 127.0.0.1, valid from yesterday for
/// `days`: (leaf PEM, key PEM).
pub fn server(by: &Ca, dns: &str, days: u64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = named(dns);
    params.subject_alt_names = vec![
        SanType::DnsName(dns.try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(86_400);
    params.not_after = params.not_before + Duration::from_secs(days * 86_400);
    let leaf = params.signed_by(&key, &by.issuer).unwrap().pem();
    (leaf, key.serialize_pem())
}

/// Writes `text` to `dir/name`: the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
