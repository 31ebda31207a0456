//! RabbitMQ's `ssl_options` from the network's TLS policy, so that the
//! broker's AMQPS listener offers what the parent's SSL port offers: the
//! same TLS versions (`settings set --min-tls`), the same AEAD cipher suites
//! with forward secrecy in the same order (`--cipher-suites`; the server's
//! order wins), the same key-exchange curves, and no client-initiated
//! renegotiation.
//!
//! `broker-tls` writes them twice. As rabbitmq.conf lines inside its
//! fragments; and as an `advanced.config`, because RabbitMQ 3.10's
//! rabbitmq.conf has no key for the curves (Erlang would otherwise offer
//! every curve it knows, 160-bit binary ones included). RabbitMQ replaces the
//! whole `ssl_options` of rabbitmq.conf with those of advanced.config, so
//! the advanced.config repeats every option, files included.

use std::path::Path;

use fleetls_proto::TlsPolicy;
use rustls::{CipherSuite, NamedGroup};

/// RabbitMQ's (Erlang's) TLS options for one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitTls {
    /// `tlsv1.3`, `tlsv1.2`: the versions that have a suite.
    pub versions: Vec<&'static str>,
    /// OpenSSL names of the suites, in the SSL port's order of preference.
    pub ciphers: Vec<&'static str>,
    /// Erlang names of the key-exchange groups, preferred first.
    pub curves: Vec<&'static str>,
}

/// The files an AMQPS listener serves, for the advanced.config.
#[derive(Debug, Clone, Copy)]
pub struct ListenerFiles<'a> {
    /// Every CA trusted for client certificates.
    pub ca: &'a Path,
    /// The broker's certificate chain.
    pub cert: &'a Path,
    /// Its key.
    pub key: &'a Path,
}

/// The OpenSSL (and Erlang) name of a rustls suite that has forward
/// secrecy and an AEAD cipher; `None` for any other.
fn openssl_name(suite: CipherSuite) -> Option<&'static str> {
    Some(match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// The Erlang name of a key-exchange group of at least 128-bit strength.
fn erlang_curve(group: NamedGroup) -> Option<&'static str> {
    Some(match group {
        NamedGroup::X25519 => "x25519",
        NamedGroup::secp256r1 => "secp256r1",
        NamedGroup::secp384r1 => "secp384r1",
        NamedGroup::secp521r1 => "secp521r1",
        _ => return None,
    })
}

impl RabbitTls {
    /// The options for `policy`, from the very suites and groups the SSL
    /// port's crypto provider keeps for it (in its order); `Err` names a
    /// suite RabbitMQ cannot be given.
    pub fn from_policy(policy: &TlsPolicy) -> Result<RabbitTls, String> {
        let (provider, versions) = fleetls_bus::tls::provider_for(policy)?;
        let mut tls = RabbitTls {
            versions: Vec::new(),
            ciphers: Vec::new(),
            curves: provider
                .kx_groups
                .iter()
                .filter_map(|g| erlang_curve(g.name()))
                .collect(),
        };
        for (version, name) in [
            (rustls::ProtocolVersion::TLSv1_3, "tlsv1.3"),
            (rustls::ProtocolVersion::TLSv1_2, "tlsv1.2"),
        ] {
            let allowed = versions.iter().any(|v| v.version == version);
            let suites: Vec<CipherSuite> = provider
                .cipher_suites
                .iter()
                .filter(|s| s.version().version == version)
                .map(|s| s.suite())
                .collect();
            if !allowed || suites.is_empty() {
                continue;
            }
            tls.versions.push(name);
            for suite in suites {
                let name = openssl_name(suite).ok_or_else(|| {
                    format!("the cipher suite {suite:?} has no RabbitMQ equivalent here: leave it out of --cipher-suites")
                })?;
                tls.ciphers.push(name);
            }
        }
        if tls.curves.is_empty() {
            return Err(
                "the crypto provider offers no key-exchange curve RabbitMQ can be given".into(),
            );
        }
        Ok(tls)
    }

    /// The rabbitmq.conf lines (`ssl_options.versions.N`,
    /// `ssl_options.ciphers.N`, the server's order, no client
    /// renegotiation), with a comment saying where they come from.
    pub fn conf_lines(&self) -> String {
        let mut out = String::from(
            "# TLS as on the parent's SSL port (settings --min-tls, --cipher-suites): these versions,\n\
             # AEAD suites with forward secrecy in the server's order, no client renegotiation.\n\
             # RabbitMQ 3.10 cannot name curves here: the matching advanced.config does.\n",
        );
        for (i, version) in self.versions.iter().enumerate() {
            out.push_str(&format!("ssl_options.versions.{} = {version}\n", i + 1));
        }
        for (i, cipher) in self.ciphers.iter().enumerate() {
            out.push_str(&format!("ssl_options.ciphers.{} = {cipher}\n", i + 1));
        }
        out.push_str(
            "ssl_options.honor_cipher_order = true\n\
             ssl_options.honor_ecc_order = true\n\
             ssl_options.client_renegotiation = false\n\
             ssl_options.secure_renegotiate = true\n",
        );
        out
    }

    /// An advanced.config whose `ssl_options` (which replace those of
    /// rabbitmq.conf whole) are the listener's: `files`, peer verification
    /// (a client certificate required when `fail_if_no_peer_cert`), and
    /// this policy with its curves.
    pub fn advanced_config(&self, files: ListenerFiles<'_>, fail_if_no_peer_cert: bool) -> String {
        let list = |items: &[&str], quote: bool| {
            items
                .iter()
                .map(|i| {
                    if quote {
                        format!("\"{i}\"")
                    } else {
                        format!("'{i}'")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "%% fleetls: TLS of RabbitMQ's AMQPS listener, written by `fleetls-parent broker-tls`.\n\
             %% Its ssl_options replace those of rabbitmq.conf whole (RabbitMQ 3.10 cannot name\n\
             %% curves in rabbitmq.conf), so they repeat them. Read only at boot.\n\
             [\n  {{rabbit, [\n    {{ssl_options, [\n\
             \x20     {{cacertfile, {}}},\n\
             \x20     {{certfile, {}}},\n\
             \x20     {{keyfile, {}}},\n\
             \x20     {{verify, verify_peer}},\n\
             \x20     {{fail_if_no_peer_cert, {fail_if_no_peer_cert}}},\n\
             \x20     {{versions, [{}]}},\n\
             \x20     {{ciphers, [{}]}},\n\
             \x20     {{eccs, [{}]}},\n\
             \x20     {{supported_groups, [{}]}},\n\
             \x20     {{honor_cipher_order, true}},\n\
             \x20     {{honor_ecc_order, true}},\n\
             \x20     {{client_renegotiation, false}},\n\
             \x20     {{secure_renegotiate, true}}\n\
             \x20   ]}}\n  ]}}\n].\n",
            erlang_string(files.ca),
            erlang_string(files.cert),
            erlang_string(files.key),
            list(&self.versions, false),
            list(&self.ciphers, true),
            list(&self.curves, false),
            list(&self.curves, false),
        )
    }
}

/// A path as an Erlang string literal.
fn erlang_string(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.to_string_lossy().chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetls_proto::TlsVersion;

    #[test]
    fn the_default_policy_is_tls12_and_13_with_aead_suites_and_modern_curves() {
        let tls = RabbitTls::from_policy(&TlsPolicy::default()).unwrap();
        assert_eq!(tls.versions, ["tlsv1.3", "tlsv1.2"]);
        assert_eq!(
            tls.ciphers,
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_AES_128_GCM_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-CHACHA20-POLY1305",
            ]
        );
        assert_eq!(tls.curves, ["x25519", "secp256r1", "secp384r1"]);
        let lines = tls.conf_lines();
        for line in [
            "ssl_options.versions.1 = tlsv1.3\n",
            "ssl_options.versions.2 = tlsv1.2\n",
            "ssl_options.ciphers.1 = TLS_AES_256_GCM_SHA384\n",
            "ssl_options.ciphers.9 = ECDHE-RSA-CHACHA20-POLY1305\n",
            "ssl_options.honor_cipher_order = true\n",
            "ssl_options.client_renegotiation = false\n",
        ] {
            assert!(lines.contains(line), "{line:?} missing from\n{lines}");
        }
        assert!(
            !lines.contains("CBC") && !lines.contains("SHA\n"),
            "{lines}"
        );
    }

    #[test]
    fn the_policy_of_the_settings_is_followed() {
        let tls13 = RabbitTls::from_policy(&TlsPolicy {
            min_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
        })
        .unwrap();
        assert_eq!(tls13.versions, ["tlsv1.3"]);
        assert!(tls13.ciphers.iter().all(|c| c.starts_with("TLS_")));
        let chosen = RabbitTls::from_policy(&TlsPolicy {
            min_version: TlsVersion::Tls12,
            cipher_suites: vec![
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
                "TLS13_AES_128_GCM_SHA256".into(),
            ],
        })
        .unwrap();
        assert_eq!(chosen.versions, ["tlsv1.3", "tlsv1.2"]);
        assert_eq!(
            chosen.ciphers,
            ["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"]
        );
        // Only TLS 1.3 suites: no TLS 1.2 without a suite for it.
        let only13 = RabbitTls::from_policy(&TlsPolicy {
            min_version: TlsVersion::Tls12,
            cipher_suites: vec!["TLS13_AES_256_GCM_SHA384".into()],
        })
        .unwrap();
        assert_eq!(only13.versions, ["tlsv1.3"]);
    }

    #[test]
    fn the_advanced_config_repeats_every_option_with_the_curves() {
        let tls = RabbitTls::from_policy(&TlsPolicy::default()).unwrap();
        let text = tls.advanced_config(
            ListenerFiles {
                ca: Path::new("/etc/fleetls/ca.pem"),
                cert: Path::new("/etc/fleetls/a \"b\".pem"),
                key: Path::new("/etc/fleetls/broker.key"),
            },
            true,
        );
        for needle in [
            "{cacertfile, \"/etc/fleetls/ca.pem\"}",
            "{certfile, \"/etc/fleetls/a \\\"b\\\".pem\"}",
            "{fail_if_no_peer_cert, true}",
            "{versions, ['tlsv1.3', 'tlsv1.2']}",
            "{ciphers, [\"TLS_AES_256_GCM_SHA384\", ",
            "{eccs, ['x25519', 'secp256r1', 'secp384r1']}",
            "{client_renegotiation, false}",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        assert!(text.trim_end().ends_with("]."), "{text}");
    }

    /// scripts/broker's own AMQPS listener (`FLEETLS_BROKER_TLS_DIR`)
    /// offers the default policy: its lines are these.
    #[test]
    fn scripts_broker_writes_the_default_policy() {
        let script = include_str!("../../scripts/broker");
        let tls = RabbitTls::from_policy(&TlsPolicy::default()).unwrap();
        for line in tls.conf_lines().lines().filter(|l| !l.starts_with('#')) {
            assert!(
                script.lines().any(|l| l == line),
                "scripts/broker lacks {line:?}: write the default policy there (RabbitTls::conf_lines)"
            );
        }
    }
}
