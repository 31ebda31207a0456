//! The network before TLS: resolving the host and opening a TCP
//! connection, each a check of the report (`resolve`, `connect`) that says
//! whether it is DNS, a closed port or silence.

use std::net::{IpAddr, SocketAddr};

use crate::report::{DoctorReport, Limits, Problem};

/// The addresses of `host` (an IP address is its own), within the connect
/// limit; `None` after a failed `resolve` check.
pub(crate) async fn resolve(
    report: &mut DoctorReport,
    host: &str,
    port: u16,
    limits: Limits,
) -> Option<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        report.pass("resolve", format!("{host} is an IP address"));
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    let fix = "check the name (a typo?), the DNS server and /etc/hosts of this machine, \
               or use a name or address that resolves here";
    match tokio::time::timeout(limits.connect, tokio::net::lookup_host((host, port))).await {
        Err(_) => {
            report.fail(
                "resolve",
                Problem::Dns,
                format!("{host} did not resolve within {:?}", limits.connect),
                fix,
            );
            None
        }
        Ok(Err(e)) => {
            report.fail(
                "resolve",
                Problem::Dns,
                format!("{host} does not resolve: {e}"),
                fix,
            );
            None
        }
        Ok(Ok(addresses)) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            if addresses.is_empty() {
                report.fail(
                    "resolve",
                    Problem::Dns,
                    format!("{host} has no address"),
                    fix,
                );
                return None;
            }
            let list: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
            report.pass("resolve", format!("{host} is {}", list.join(", ")));
            Some(addresses)
        }
    }
}

/// Connects to each address in turn (`localhost` may be `::1` first).
///
/// `None` after a failed `connect` check: refused when any address refused,
/// a timeout otherwise.
pub(crate) async fn connect(
    report: &mut DoctorReport,
    addresses: &[SocketAddr],
    port: u16,
    limits: Limits,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let mut failures = Vec::new();
    let mut refused = false;
    for address in addresses {
        match tokio::time::timeout(limits.connect, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                report.pass("connect", format!("{address} accepts connections"));
                return Some((tcp, *address));
            }
            Ok(Err(e)) => {
                refused |= e.kind() == std::io::ErrorKind::ConnectionRefused;
                failures.push(format!("{address}: {e}"));
            }
            Err(_) => failures.push(format!("{address}: no answer within {:?}", limits.connect)),
        }
    }
    if refused {
        report.fail(
            "connect",
            Problem::Refused,
            format!("the port is closed ({})", failures.join("; ")),
            format!(
                "nothing listens on port {port} there: check that the service runs and listens on this port \
                 (the parent's SSL port opens once certificates exist: `settings show`), \
                 or a firewall rejects the connection"
            ),
        );
    } else {
        report.fail(
            "connect",
            Problem::Timeout,
            format!("no answer ({})", failures.join("; ")),
            "the host is down or unreachable from here, or a firewall drops the packets: \
             check the route and the firewalls between this machine and the server",
        );
    }
    None
}
