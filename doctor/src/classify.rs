//! Error classification: what a failed handshake, or a server that hangs
//! up right after it, means in plain words — which [`Problem`], what was
//! seen, and what to do. The certificate's own checks are in `chain`.

use rustls::{AlertDescription, CertificateError};

use crate::input::Identity;
use crate::report::{Check, DoctorReport, Problem};
use crate::verifier::Observed;

/// Explains a failed handshake; the certificate checks follow separately.
///
/// `found` is the first problem the checks of the server's chain found.
pub(crate) fn handshake_failed(
    report: &mut DoctorReport,
    error: &std::io::Error,
    tls_error: Option<&rustls::Error>,
    found: Option<Problem>,
    observed: &Observed,
    identity: &Option<Identity>,
) {
    use rustls::Error as E;
    let asked = observed.asked();
    match tls_error {
        Some(E::InvalidCertificate(c)) => report.fail(
            "handshake",
            found.unwrap_or_else(|| certificate_problem(c)),
            format!("refused the server's certificate: {error}"),
            "see the checks of the certificate below",
        ),
        Some(E::AlertReceived(alert)) if is_certificate_alert(*alert) || asked.is_some() => {
            // TLS 1.2 checks the client certificate inside the handshake.
            let presented = identity.is_some() && asked.is_some();
            let refusal = client_refusal(Some(*alert), presented, &asked, identity);
            report.push(Check {
                name: "handshake".into(),
                ok: false,
                problem: refusal.problem,
                detail: format!("the server ended the handshake with the alert {alert:?}"),
                fix: Some("see the check of the client certificate".into()),
            });
            report.push(refusal);
        }
        Some(E::AlertReceived(
            alert @ (rustls::AlertDescription::ProtocolVersion
            | rustls::AlertDescription::HandshakeFailure
            | rustls::AlertDescription::InsufficientSecurity),
        )) => report.fail(
            "handshake",
            Problem::ProtocolMismatch,
            format!(
                "the server ended the handshake with the alert {alert:?}: it accepts none of the \
                 TLS versions or cipher suites this client offered"
            ),
            "the server requires a newer TLS version or other cipher suites than this client offers: \
             on the parent, `fleetls-parent settings show` names min-tls and cipher-suites (change them \
             with `settings set --min-tls 1.2 --cipher-suites \"\"`), or update the client",
        ),
        Some(E::PeerIncompatible(why)) => report.fail(
            "handshake",
            Problem::ProtocolMismatch,
            format!("the server and this client share no TLS version or cipher suite ({why:?})"),
            "the server offers only what this client refuses: check its TLS versions and cipher suites",
        ),
        Some(E::AlertReceived(alert)) => report.fail(
            "handshake",
            Problem::Other,
            format!("the server ended the handshake with the alert {alert:?}"),
            "the server and this agent share no TLS version or cipher suite (TLS 1.2 or 1.3 with \
             modern suites is needed), or the server refuses the name asked for: see the server's log",
        ),
        Some(E::InvalidMessage(_)) | Some(E::InappropriateMessage { .. }) => report.fail(
            "handshake",
            Problem::NotTls,
            format!("the port answered, but not with TLS ({error})"),
            "this port serves plain text: use the TLS port (the parent's SSL port, 12365 by default; \
             AMQPS on 5671, plain AMQP is 5672)",
        ),
        Some(other) => report.fail(
            "handshake",
            Problem::Other,
            format!("the TLS handshake failed: {other}"),
            "see the server's log for why it ended the handshake",
        ),
        None => io_failure(report, error),
    }
}

/// A handshake that failed without a TLS error: the connection broke.
fn io_failure(report: &mut DoctorReport, error: &std::io::Error) {
    use std::io::ErrorKind as K;
    if matches!(
        error.kind(),
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
    ) {
        report.fail(
            "handshake",
            Problem::NotTls,
            format!("the server closed the connection during the handshake ({error})"),
            "check that this port serves TLS (a plain-text service hangs up on a TLS hello), \
             and see the server's log",
        );
    } else {
        report.fail(
            "handshake",
            Problem::Other,
            format!("the TLS handshake failed: {error}"),
            "see the server's log",
        );
    }
}

/// The problem a certificate error of rustls names.
fn certificate_problem(error: &CertificateError) -> Problem {
    use CertificateError as C;
    match error {
        C::UnknownIssuer | C::BadSignature => Problem::UnknownIssuer,
        C::NotValidForName | C::NotValidForNameContext { .. } => Problem::NameMismatch,
        C::Expired | C::ExpiredContext { .. } => Problem::Expired,
        C::NotValidYet | C::NotValidYetContext { .. } => Problem::NotYetValid,
        _ => Problem::Other,
    }
}

/// Alerts a server sends when it does not accept the client certificate.
fn is_certificate_alert(alert: AlertDescription) -> bool {
    use AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied
            | A::DecryptError
    )
}

/// What became of the client certificate when the server did not refuse.
pub(crate) fn client_outcome(presented: bool, asked: &Option<Vec<String>>) -> &'static str {
    match (presented, asked) {
        (true, _) => "the server accepted the client certificate",
        (false, None) => "the server did not ask for a client certificate",
        (false, Some(_)) => {
            "the server asked for a client certificate and goes on without one (it is optional there)"
        }
    }
}

/// The server refused the connection right after (or, TLS 1.2, during) the
/// handshake: with an alert, or by hanging up without a word.
pub(crate) fn client_refusal(
    alert: Option<AlertDescription>,
    presented: bool,
    asked: &Option<Vec<String>>,
    identity: &Option<Identity>,
) -> Check {
    let how = match alert {
        Some(alert) => format!("with the alert {alert:?}"),
        None => "by closing the connection without a word".to_owned(),
    };
    let accepted = match asked {
        Some(hints) if !hints.is_empty() => format!(
            "; it accepts client certificates issued by: {}",
            hints
                .iter()
                .map(|h| format!("\"{h}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    };
    let (problem, detail, fix) = match (identity, presented) {
        (Some(identity), true) => (
            Problem::ClientCertRejected,
            format!(
                "the server refused the client certificate \"{}\" (issued by \"{}\") {how}{accepted}",
                identity.subject, identity.issuer
            ),
            "the server must trust the CA that issued this certificate, and the certificate must be \
             valid and meant for clients (clientAuth). If the network's CA was made anew \
             (`certs reset`), the agent still holds a certificate from the old one: send the \
             information again (`fleetls-parent certs send --all`) so it gets a new certificate",
        ),
        _ if asked.is_some() || alert == Some(AlertDescription::CertificateRequired) => (
            Problem::ClientCertRequired,
            format!(
                "the server requires a client certificate and none was given; it refused {how}{accepted}"
            ),
            "give the agent's certificate and key (a child's certs/agent.pem and certs/agent.key; \
             a child without one gets it through `fleetls-parent certs send`)",
        ),
        _ => (
            Problem::Other,
            format!("the server ended the connection right after the handshake {how}"),
            "see the server's log for why it closes connections",
        ),
    };
    Check {
        name: "client_certificate".into(),
        ok: false,
        problem: Some(problem),
        detail,
        fix: Some(fix.into()),
    }
}
