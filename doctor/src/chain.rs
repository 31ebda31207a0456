//! Chain analysis: the checks of the chain the server presented — does it
//! lead to the CA (`issuer`, telling a missing intermediate from another
//! CA), is the host among its names (`name`), are its certificates and the
//! CA valid now (`validity`), and is the server's certificate overdue for
//! renewal (`renewal`). rustls's own path and name checks decide; this
//! module explains.

use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, RootCertStore};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::describe::{duration_text, sans, utc};
use crate::input::{anchor_names, Anchor};
use crate::report::{DoctorReport, Problem};

/// The chain the server presented, its leaf parsed twice: by x509-parser
/// for the explanations, by rustls for its checks.
struct Presented<'a> {
    chain: &'a [CertificateDer<'static>],
    leaf: X509Certificate<'a>,
    parsed: ParsedCertificate<'a>,
}

/// The checks of the chain the server presented: issuer, name, validity.
pub(crate) fn check_chain(
    report: &mut DoctorReport,
    chain: &[CertificateDer<'static>],
    roots: &RootCertStore,
    anchors: &[Anchor],
    server_name: &ServerName<'static>,
    host: &str,
    provider: &CryptoProvider,
) {
    let Some(presented) = parse_leaf(report, chain) else {
        return;
    };
    let now = UnixTime::now();
    check_issuer(report, &presented, roots, anchors, provider, now);
    check_name(report, &presented, server_name, host);
    check_validity(report, &presented, anchors, now.as_secs() as i64);
}

/// The leaf, parsed; `None` after a failed `issuer` check when there is no
/// leaf or it does not parse.
fn parse_leaf<'a>(
    report: &mut DoctorReport,
    chain: &'a [CertificateDer<'static>],
) -> Option<Presented<'a>> {
    let Some(leaf_der) = chain.first() else {
        report.fail(
            "issuer",
            Problem::Other,
            "the server presented no certificate",
            "configure a certificate on the server",
        );
        return None;
    };
    let Ok((_, leaf)) = X509Certificate::from_der(leaf_der) else {
        report.fail(
            "issuer",
            Problem::Other,
            "the server's certificate does not parse",
            "configure a valid X.509 certificate on the server",
        );
        return None;
    };
    let parsed = match ParsedCertificate::try_from(leaf_der) {
        Ok(parsed) => parsed,
        Err(e) => {
            report.fail(
                "issuer",
                Problem::Other,
                format!("the server's certificate is not usable: {e}"),
                "configure a valid X.509 certificate on the server",
            );
            return None;
        }
    };
    Some(Presented {
        chain,
        leaf,
        parsed,
    })
}

/// Issuer: the path to the CA, at a time the leaf is valid (its dates are
/// the validity check's business).
fn check_issuer(
    report: &mut DoctorReport,
    presented: &Presented<'_>,
    roots: &RootCertStore,
    anchors: &[Anchor],
    provider: &CryptoProvider,
    now: UnixTime,
) {
    let leaf = &presented.leaf;
    let now_secs = now.as_secs() as i64;
    let leaf_from = leaf.validity().not_before.timestamp();
    let leaf_to = leaf.validity().not_after.timestamp();
    let at = if (leaf_from..=leaf_to).contains(&now_secs) {
        now
    } else {
        UnixTime::since_unix_epoch(Duration::from_secs(
            (leaf_from / 2 + leaf_to / 2).max(0) as u64
        ))
    };
    let path = rustls::client::verify_server_cert_signed_by_trust_anchor(
        &presented.parsed,
        roots,
        &presented.chain[1..],
        at,
        provider.signature_verification_algorithms.all,
    );
    let issuer = leaf.issuer().to_string();
    match path {
        Ok(()) => report.pass(
            "issuer",
            format!("the certificate chains to the CA (issued by \"{issuer}\")"),
        ),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => report.pass(
            "issuer",
            format!("the certificate chains to the CA (issued by \"{issuer}\"; dates aside)"),
        ),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => not_chained(report, presented, anchors, &issuer),
        Err(e) => report.fail(
            "issuer",
            Problem::Other,
            format!("the certificate is not usable by a TLS server: {e}"),
            "issue the server a certificate for servers (extended key usage serverAuth) from the CA",
        ),
    }
}

/// The leaf does not chain to the CA: a missing intermediate when the
/// server sent its certificate alone and its issuer is no CA here, another
/// CA otherwise.
fn not_chained(
    report: &mut DoctorReport,
    presented: &Presented<'_>,
    anchors: &[Anchor],
    issuer: &str,
) {
    let (chain, leaf) = (presented.chain, &presented.leaf);
    let ca_names = anchor_names(anchors);
    let issuer_is_a_ca_here = anchors.iter().any(|a| {
        X509Certificate::from_der(&a.der)
            .map(|(_, c)| c.subject().as_raw() == leaf.issuer().as_raw())
            .unwrap_or(false)
    });
    if chain.len() == 1 && !issuer_is_a_ca_here && leaf.issuer().as_raw() != leaf.subject().as_raw()
    {
        report.fail(
            "issuer",
            Problem::MissingIntermediate,
            format!(
                "the server sent only its own certificate; it was issued by \"{issuer}\", \
                 which is not the CA trusted here ({ca_names}): the certificate(s) between \
                 them are missing"
            ),
            "make the server send its whole chain: its certificate file must hold its \
             certificate first, then the intermediate CA certificate(s) \
             (for fleetls: parent.pem and agent.pem hold the chain). If it was issued by \
             another CA altogether, install a certificate from this network's CA",
        );
    } else {
        let top = chain
            .last()
            .and_then(|c| X509Certificate::from_der(c).ok())
            .map(|(_, c)| format!("\"{}\"", c.issuer()))
            .unwrap_or_default();
        report.fail(
            "issuer",
            Problem::UnknownIssuer,
            format!(
                "the server's certificate does not chain to the CA trusted here ({ca_names}): \
                 it was issued by \"{issuer}\" and its chain ends at {top}"
            ),
            "install on the server a certificate issued by this network's CA (for the parent: \
             DATA_DIR/certificates/parent.pem; after `certs reset` everything is issued anew), \
             or give the doctor the CA the server really uses (--ca); when the parent serves \
             its own certificate (`settings set --parent-cert`), give the agents its root with \
             `fleetls-child run --trust-bundle ROOT.pem`; for a broker serving the operator's \
             own certificate (`settings set --broker-cert`), give the doctor its root \
             (DATA_DIR/certificates/broker-root.pem) with --ca",
        );
    }
}

/// Name: is the host connected to among the certificate's names?
fn check_name(
    report: &mut DoctorReport,
    presented: &Presented<'_>,
    server_name: &ServerName<'static>,
    host: &str,
) {
    let leaf = &presented.leaf;
    match rustls::client::verify_server_name(&presented.parsed, server_name) {
        Ok(()) => report.pass("name", format!("{host} is among the certificate's names")),
        Err(_) => {
            let names = sans(leaf);
            let listed = if names.is_empty() {
                format!(
                    "the certificate has no subject alternative name at all (subject \"{}\")",
                    leaf.subject()
                )
            } else {
                format!("the certificate names only {}", names.join(", "))
            };
            report.fail(
                "name",
                Problem::NameMismatch,
                format!("{host} is not among the certificate's names: {listed}"),
                format!(
                    "connect with one of the names the certificate has, or give the server a certificate \
                     naming {host} (for the fleetls parent: `settings set --names` / `--ips`, then \
                     `certs reset` and `certs generate`: the names are inside the certificates)"
                ),
            );
        }
    }
}

/// Validity: every certificate presented, and the CA; when all are valid,
/// whether the server's certificate is due for renewal.
fn check_validity(
    report: &mut DoctorReport,
    presented: &Presented<'_>,
    anchors: &[Anchor],
    now_secs: i64,
) {
    let leaf_to = presented.leaf.validity().not_after.timestamp();
    let mut expired = Vec::new();
    let mut early = Vec::new();
    let shown = presented.chain.iter().map(|c| c.as_ref());
    let trusted = anchors.iter().map(|a| a.der.as_ref());
    for der in shown.chain(trusted) {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            continue;
        };
        let from = cert.validity().not_before.timestamp();
        let to = cert.validity().not_after.timestamp();
        let line = format!(
            "\"{}\" (valid from {} to {})",
            cert.subject(),
            utc(from),
            utc(to)
        );
        if now_secs > to && !expired.contains(&line) {
            expired.push(line);
        } else if now_secs < from && !early.contains(&line) {
            early.push(line);
        }
    }
    let now_text = utc(now_secs);
    if !expired.is_empty() {
        report.fail(
            "validity",
            Problem::Expired,
            format!("expired: {}; it is now {now_text}", expired.join("; ")),
            "renew the expired certificate (for fleetls: an agent's with `fleetls-parent certs \
             renew --agent NAME`; the parent renews its own and the broker's itself — for RabbitMQ \
             run `broker-tls --out DIR` again and clear its PEM cache); if it should not have \
             expired yet, check the clock of this machine",
        );
    }
    if !early.is_empty() {
        report.fail(
            "validity",
            Problem::NotYetValid,
            format!("not valid yet: {}; it is now {now_text}", early.join("; ")),
            "check the clocks of this machine and of the machine that issued the certificate (NTP)",
        );
    }
    if expired.is_empty() && early.is_empty() {
        report.pass(
            "validity",
            format!(
                "valid now ({now_text}); the server's certificate expires {}",
                utc(leaf_to)
            ),
        );
        check_renewal(report, &presented.leaf, now_secs);
    }
}

/// Within the last third of its life (at most 30 days before): still
/// valid, but due — fleetls renews at two thirds, so this one missed it.
fn check_renewal(report: &mut DoctorReport, leaf: &X509Certificate<'_>, now_secs: i64) {
    let leaf_to = leaf.validity().not_after.timestamp();
    let leaf_from = leaf.validity().not_before.timestamp();
    let warn_from = leaf_to - ((leaf_to - leaf_from) / 3).min(30 * 24 * 3600);
    if now_secs >= warn_from {
        report.fail(
            "renewal",
            Problem::ExpiresSoon,
            format!(
                "the server's certificate expires {} — in {} — and was not renewed",
                utc(leaf_to),
                duration_text(leaf_to - now_secs)
            ),
            "renew it now: for the broker, `fleetls-parent broker-tls --out DIR` writes the \
             renewed files in place, then `rabbitmqctl eval 'ssl:clear_pem_cache().'`; for a \
             local parent, `fleetls-parent certs renew --agent NAME`",
        );
    }
}
