//! Who may join, and what a message from the broker may carry.
//!
//! Every broker user but the parent is taken to be hostile, so what a child
//! says about itself is checked before it is stored: sizes are capped,
//! identity fields with control characters are refused, free text has them
//! replaced; names and locations with invisible, format or bidi characters
//! are refused (they could pass for another's), and every name has a UTS #39
//! skeleton ([`skeleton`]) so that look-alikes are found. A new agent is
//! *pending* until an operator accepts it, unless it proves an enrollment
//! token (`crate::enrollment`) or an explicit auto-accept policy
//! (`--auto-accept`, open enrollment) names its kind and name; a local
//! parent — it gets a server certificate — is never accepted by a policy,
//! and only the names the operator allowed (`--local-parent-names`) go into
//! its certificate.

use fleetls_proto::{AgentKind, Body, Envelope};

pub use crate::registry::Admission;
pub use crate::text::printable;

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

/// Which new agents are accepted without a token or an operator (open
/// enrollment: anyone with the broker's credentials): `kind:pattern`
/// entries, `;`-separated (`*` matches any run of characters, `?` one), or
/// `none` (the default). Local parents cannot be named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoAccept(Vec<(AgentKind, String)>);

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
    /// Whether any agent is accepted without a token: the operator chose
    /// open enrollment (warned at start, shown in status).
    pub fn is_open(&self) -> bool {
        !self.0.is_empty()
    }

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
pub fn glob(pattern: &str, text: &str) -> bool {
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

/// Whether `c` is invisible, a format character or a bidi control: such a
/// character makes one name print like another (a zero-width space, a
/// right-to-left override), so names never hold one.
fn hides_itself(c: char) -> bool {
    use unicode_security::general_security_profile::{GeneralSecurityProfile, IdentifierType};
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E0FFF}'
    ) || c.identifier_type() == Some(IdentifierType::Default_Ignorable)
}

/// `text` with every character beyond ASCII written `\u{…}`: what a name
/// really holds, shown beside it where look-alikes matter.
pub fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\u{{{:x}}}", c as u32)
            }
        })
        .collect()
}

/// The UTS #39 skeleton of a name: two names with the same skeleton look
/// alike (`till-1` with a Latin `i` and with a Cyrillic `і`). Spaces count
/// as one, and not at the ends: `till-1 `, ` till-1` and `till\u{3000}1`
/// print like `till-1` and `till 1`.
pub fn skeleton(name: &str) -> String {
    let spaced = name.split_whitespace().collect::<Vec<_>>().join(" ");
    unicode_security::skeleton(&spaced).collect()
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
        if let Some(c) = value.chars().find(|c| hides_itself(*c)) {
            return Err(format!(
                "invalid_field: {field} holds the invisible, format or bidi character U+{:04X} \
                 (it would print like another name)",
                c as u32
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
        // Without a policy nothing is accepted without a token.
        assert!(!AutoAccept::default().is_open());
        assert_eq!(
            AutoAccept::default().decide(AgentKind::Child, "x"),
            Admission::Pending
        );
        assert!(policy.is_open());
    }

    #[test]
    fn names_that_hide_characters_are_refused_and_look_alikes_share_a_skeleton() {
        let hello = |name: &str| {
            Envelope::new(
                uuid::Uuid::new_v4(),
                Body::Hello(fleetls_proto::Hello {
                    enroll: None,
                    name: name.into(),
                    kind: AgentKind::Child,
                    version: "1.0.0".into(),
                    location: None,
                    hostnames: vec![],
                    ips: vec![],
                    key_fingerprint: None,
                    state: Default::default(),
                }),
            )
        };
        for bad in [
            "till\u{200B}-1",
            "till-\u{202E}1",
            "\u{2066}till-1",
            "till\u{FEFF}1",
            "till\u{00AD}1",
        ] {
            let why = check_inbound(&mut hello(bad)).unwrap_err();
            assert!(why.contains("name") && why.contains("U+"), "{bad:?}: {why}");
        }
        assert!(check_inbound(&mut hello("Kasse 3 – Filiale Köln")).is_ok());
        assert!(check_inbound(&mut hello("till-\u{0456}")).is_ok());
        assert_eq!(skeleton("t\u{0456}ll-1"), skeleton("till-1"));
        assert_ne!(skeleton("till-2"), skeleton("till-1"));
        // Spaces at the ends, doubled or ideographic print alike.
        assert_eq!(skeleton("till-1 "), skeleton("till-1"));
        assert_eq!(skeleton(" till\u{3000}\u{3000}1"), skeleton("till 1"));
        assert_eq!(ascii("t\u{0456}ll-1"), "t\\u{456}ll-1");
    }

    #[test]
    fn control_characters_never_pass() {
        assert_eq!(printable("a\nb\x1b[31m", 100), "a?b?[31m");
        assert_eq!(printable("abcdef", 3), "abc…");
        let mut hello = Envelope::new(
            uuid::Uuid::new_v4(),
            Body::Hello(fleetls_proto::Hello {
                enroll: None,
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
