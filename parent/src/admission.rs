//! Who may join, and what a message from the broker may carry.
//!
//! Every broker user but the parent is taken to be hostile, so what a child
//! says about itself is checked before it is stored: sizes are capped,
//! identity fields with control characters are refused, free text has them
//! replaced. A new agent is *pending* until an operator accepts it, unless
//! the auto-accept policy (`--auto-accept`) names its kind and name; a local
//! parent — it gets a server certificate — is never accepted automatically,
//! and only the names the operator allowed (`--local-parent-names`) go into
//! its certificate.

use fleetls_proto::{AgentKind, Body, Envelope};

use serde::{Deserialize, Serialize};

/// Whether an agent may have certificates and take part in campaigns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Registered, waiting for an operator (or the auto-accept policy).
    Pending,
    /// Accepted: gets certificates, takes part in campaigns.
    #[default]
    Accepted,
    /// Refused by an operator: gets nothing, and its key cannot register again.
    Rejected,
}

impl Admission {
    /// The name stored in the registry and shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Pending => "pending",
            Admission::Accepted => "accepted",
            Admission::Rejected => "rejected",
        }
    }
}

impl std::str::FromStr for Admission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Admission::Pending),
            "accepted" => Ok(Admission::Accepted),
            "rejected" => Ok(Admission::Rejected),
            other => Err(format!("unknown admission state {other:?}")),
        }
    }
}

/// Longest agent name, location or version accepted.
pub const MAX_NAME: usize = 128;
/// Most host names or IP addresses one agent may report.
pub const MAX_ADDRESSES: usize = 32;
/// Longest free text (a step's message, a refusal's reason) kept.
pub const MAX_TEXT: usize = 2048;
/// Largest CSR accepted (PEM).
pub const MAX_CSR: usize = 16 * 1024;
/// Most CA fingerprints an agent may say it trusts (a chain of each of two
/// CAs during a rotation, with room to spare).
pub const MAX_TRUSTED_CAS: usize = 16;

/// Which new agents are accepted without an operator: `kind:pattern`
/// entries, `;`-separated (`*` matches any run of characters, `?` one), or
/// `none`. Local parents cannot be named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoAccept(Vec<(AgentKind, String)>);

impl Default for AutoAccept {
    /// Ordinary children and mPOS devices of any name.
    fn default() -> Self {
        AutoAccept(vec![
            (AgentKind::Child, "*".into()),
            (AgentKind::Mpos, "*".into()),
        ])
    }
}

impl std::str::FromStr for AutoAccept {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") || text.is_empty() {
            return Ok(AutoAccept(Vec::new()));
        }
        let mut entries = Vec::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (kind, pattern) = entry.split_once(':').ok_or_else(|| {
                format!("{entry:?} is not kind:pattern (e.g. child:till-*, or none)")
            })?;
            let kind: AgentKind = kind.trim().parse()?;
            if kind == AgentKind::LocalParent {
                return Err(
                    "local parents are never accepted automatically (they get server certificates): \
                     accept each with `fleetls-parent agents accept NAME`"
                        .into(),
                );
            }
            entries.push((kind, pattern.trim().to_owned()));
        }
        Ok(AutoAccept(entries))
    }
}

impl std::fmt::Display for AutoAccept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let entries: Vec<String> = self.0.iter().map(|(k, p)| format!("{k}:{p}")).collect();
        f.write_str(&entries.join(";"))
    }
}

impl AutoAccept {
    /// The admission of a new agent of `kind` called `name`.
    pub fn decide(&self, kind: AgentKind, name: &str) -> Admission {
        let accepted = kind != AgentKind::LocalParent
            && self.0.iter().any(|(k, p)| *k == kind && glob(p, name));
        if accepted {
            Admission::Accepted
        } else {
            Admission::Pending
        }
    }
}

/// `*` and `?` wildcards, nothing else.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `text` with every control character (newlines and terminal escapes
/// included) replaced by `?`, cut to `max` characters: safe to store and to
/// print on an operator's terminal.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// Checks what a child says about itself and makes its free text safe:
/// `Err` names the field that is refused (the message is dead-lettered).
pub fn check_inbound(envelope: &mut Envelope) -> Result<(), String> {
    let identity = |field: &str, value: &str, required: bool| -> Result<(), String> {
        if required && value.trim().is_empty() {
            return Err(format!("invalid_field: {field} is empty"));
        }
        if value.chars().count() > MAX_NAME {
            return Err(format!(
                "invalid_field: {field} has more than {MAX_NAME} characters"
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(format!(
                "invalid_field: {field} holds control characters (newlines or terminal escapes)"
            ));
        }
        Ok(())
    };
    // The CAs an agent trusts: a few fingerprints, never a dump.
    let trusted = |cas: &[String]| -> Result<(), String> {
        if cas.len() > MAX_TRUSTED_CAS {
            return Err(format!(
                "invalid_field: trusted_cas names more than {MAX_TRUSTED_CAS} CAs"
            ));
        }
        cas.iter()
            .try_for_each(|fp| identity("trusted_cas", fp, true))
    };
    match &mut envelope.body {
        Body::Hello(hello) => {
            trusted(&hello.state.trusted_cas)?;
            identity("name", &hello.name, true)?;
            identity("version", &hello.version, true)?;
            if let Some(location) = &hello.location {
                identity("location", location, false)?;
            }
            if hello.hostnames.len() > MAX_ADDRESSES || hello.ips.len() > MAX_ADDRESSES {
                return Err(format!(
                    "invalid_field: more than {MAX_ADDRESSES} host names or IP addresses"
                ));
            }
            for name in &hello.hostnames {
                fleetls_proto::check_dns_name(name).map_err(|why| {
                    format!("invalid_field: host name {:?}: {why}", printable(name, 80))
                })?;
            }
            for ip in &hello.ips {
                ip.parse::<std::net::IpAddr>().map_err(|_| {
                    format!(
                        "invalid_field: {:?} is not an IP address",
                        printable(ip, 80)
                    )
                })?;
            }
            if let Some(fp) = &hello.key_fingerprint {
                identity("key_fingerprint", fp, false)?;
            }
            if let Some(fp) = &hello.state.parent_key {
                identity("parent_key", fp, false)?;
            }
        }
        Body::Heartbeat(beat) => {
            trusted(&beat.state.trusted_cas)?;
            if let Some(fp) = &beat.state.parent_key {
                identity("parent_key", fp, false)?;
            }
        }
        Body::Csr(csr) if csr.pem.len() > MAX_CSR => {
            return Err(format!(
                "invalid_field: the CSR is larger than {MAX_CSR} bytes"
            ));
        }
        Body::StepReport(report) => report.message = printable(&report.message, MAX_TEXT),
        Body::SwitchReport(report) => report.message = printable(&report.message, MAX_TEXT),
        Body::BrokerSwitchReport(report) => {
            report.error = report.error.as_deref().map(|e| printable(e, MAX_TEXT));
            report.protocol = report.protocol.as_deref().map(|p| printable(p, 64));
        }
        Body::Refused(refused) => {
            refused.reason = printable(&refused.reason, MAX_TEXT);
            refused.kind = refused.kind.as_deref().map(|k| printable(k, 64));
        }
        _ => {}
    }
    Ok(())
}

/// The names a local parent may have in its server certificate: those of
/// `wanted` inside `allowed` (a name, or any name below a domain written
/// `.example.com` or `*.example.com`), never a wildcard. Returns what is
/// kept and what was left out.
pub fn allowed_server_names(wanted: &[String], allowed: &[String]) -> (Vec<String>, Vec<String>) {
    let inside = |name: &str| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        !name.contains('*')
            && allowed.iter().any(|a| {
                let a = a.trim().trim_end_matches('.').to_ascii_lowercase();
                match a.strip_prefix("*.").or_else(|| a.strip_prefix('.')) {
                    Some(domain) => name.ends_with(&format!(".{domain}")),
                    None => name == a,
                }
            })
    };
    wanted.iter().cloned().partition(|n| inside(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_accept_reads_and_decides() {
        let policy: AutoAccept = "child:till-*; mpos:*".parse().unwrap();
        assert_eq!(
            policy.decide(AgentKind::Child, "till-7"),
            Admission::Accepted
        );
        assert_eq!(
            policy.decide(AgentKind::Child, "laptop"),
            Admission::Pending
        );
        assert_eq!(
            policy.decide(AgentKind::LocalParent, "till-7"),
            Admission::Pending
        );
        assert_eq!(policy.to_string(), "child:till-*;mpos:*");
        let none: AutoAccept = "none".parse().unwrap();
        assert_eq!(none.decide(AgentKind::Child, "x"), Admission::Pending);
        assert!("local-parent:*"
            .parse::<AutoAccept>()
            .unwrap_err()
            .contains("never"));
        assert!("child".parse::<AutoAccept>().is_err());
        assert!("robot:*".parse::<AutoAccept>().is_err());
        assert_eq!(
            AutoAccept::default().decide(AgentKind::LocalParent, "x"),
            Admission::Pending
        );
    }

    #[test]
    fn control_characters_never_pass() {
        assert_eq!(printable("a\nb\x1b[31m", 100), "a?b?[31m");
        assert_eq!(printable("abcdef", 3), "abc…");
        let mut hello = Envelope::new(
            uuid::Uuid::new_v4(),
            Body::Hello(fleetls_proto::Hello {
                name: "till".into(),
                kind: AgentKind::Child,
                version: "1.0.0".into(),
                location: Some("shop\x1b[2J".into()),
                hostnames: vec![],
                ips: vec![],
                key_fingerprint: None,
                state: Default::default(),
            }),
        );
        assert!(check_inbound(&mut hello).unwrap_err().contains("location"));
    }

    #[test]
    fn the_cas_an_agent_trusts_are_a_few_fingerprints() {
        let beat = |cas: Vec<String>| {
            Envelope::new(
                uuid::Uuid::new_v4(),
                Body::Heartbeat(fleetls_proto::Heartbeat {
                    state: fleetls_proto::AgentState {
                        trusted_cas: cas,
                        ..Default::default()
                    },
                }),
            )
        };
        assert!(check_inbound(&mut beat(vec!["sha256:ab".into(); 2])).is_ok());
        let many = check_inbound(&mut beat(vec!["sha256:ab".into(); 17])).unwrap_err();
        assert!(many.contains("trusted_cas"), "{many}");
        let escape = check_inbound(&mut beat(vec!["sha256:\x1b[2J".into()])).unwrap_err();
        assert!(escape.contains("trusted_cas"), "{escape}");
    }

    #[test]
    fn a_local_parent_gets_only_allowed_names() {
        let allowed = vec![".shop.example".to_owned(), "hub.example".to_owned()];
        let wanted: Vec<String> = [
            "a.shop.example",
            "hub.example",
            "bank.example",
            "*.shop.example",
            "shop.example",
        ]
        .map(String::from)
        .to_vec();
        let (kept, dropped) = allowed_server_names(&wanted, &allowed);
        assert_eq!(kept, ["a.shop.example", "hub.example"]);
        assert_eq!(dropped, ["bank.example", "*.shop.example", "shop.example"]);
    }
}
