//! Certificates and times as an operator reads them: a certificate's
//! summary, its alternative names and fingerprint, a date in UTC and a
//! duration in days, hours or minutes.

use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::report::CertSummary;

/// A duration in seconds as days, hours or minutes, for a person.
pub(crate) fn duration_text(seconds: i64) -> String {
    match seconds.max(0) {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", s / 3_600),
        s => format!("{} minutes", s / 60),
    }
}

/// The subject alternative names of a certificate, as `DNS:…` and `IP:…`.
pub(crate) fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(format!(
                    "IP:{}",
                    IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?)
                )),
                16 => Some(format!(
                    "IP:{}",
                    IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?)
                )),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// What the server presented, as the report shows it; a certificate
/// that does not parse is shown as unreadable, with its fingerprint.
pub(crate) fn summary(der: &CertificateDer<'_>) -> CertSummary {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: utc(cert.validity().not_before.timestamp()),
            not_after: utc(cert.validity().not_after.timestamp()),
            names: sans(&cert),
            fingerprint: fingerprint(der),
        },
        Err(e) => CertSummary {
            subject: format!("(unreadable: {e})"),
            issuer: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            names: Vec::new(),
            fingerprint: fingerprint(der),
        },
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{unix} (Unix time)"),
    }
}

/// `sha256:` + hex of the DER.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
