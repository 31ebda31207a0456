//! Where a child keeps what in its data dir: the one place that spells the
//! file names (the parent's is `fleetls_parent::layout`).
//!
//! ```text
//! DIR/identity.toml           who the agent is (id, name), made once
//! DIR/identity.key            the key it signs its messages with (0600)
//! DIR/state.toml              where it stands in the migration (0600: it may
//!                             hold the AMQPS URL with its password), and
//!                             the reserve of its replay counter
//! DIR/trust.toml              the pinned parent key and the commands obeyed (0600)
//! DIR/certs/ca.pem            every CA it trusts
//! DIR/certs/broker-ca.pem     what the broker's certificate must chain to
//!                             (once on AMQPS)
//! DIR/certs/trust-bundle.pem  extra roots (`--trust-bundle`)
//! DIR/certs/crl.pem           the CA's revocation list, as last sent
//! DIR/certs/agent.pem         its certificate chain, leaf first
//! DIR/certs/agent.key         its key (0600)
//! DIR/certs/agent.key.pending the key of a CSR not yet answered (0600)
//! DIR/certs/agent.key.import  the key of an `import` being installed (0600)
//! DIR/certs/truststore.p12    (--trust-store-format pkcs12) the CA chain
//! DIR/certs/truststore.jks    (--trust-store-format jks) the CA chain
//! DIR/certs/agent.p12         (pkcs12, jks) the agent's identity (0600)
//! ```
//!
//! It imports nothing of the crate: every other module may use it.

use std::path::{Path, PathBuf};

/// The files of one child's data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout of `data_dir`.
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            dir: data_dir.to_owned(),
        }
    }

    /// The data dir itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Who the agent is (`crate::identity::Identity`).
    pub fn identity(&self) -> PathBuf {
        self.dir.join("identity.toml")
    }

    /// The key the agent signs its messages with (0600).
    pub fn signing_key(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    /// Where the agent stands (`crate::identity::State`, 0600).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.toml")
    }

    /// The pinned parent key and the commands obeyed (`crate::trust`, 0600).
    pub fn trust(&self) -> PathBuf {
        self.dir.join("trust.toml")
    }

    /// The folder of the certificates (`crate::certs::CertStore`).
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// Every CA certificate the agent trusts.
    pub fn ca(&self) -> PathBuf {
        self.certs().join("ca.pem")
    }

    /// The CA the broker's certificate must chain to (given by the parent
    /// with the move to AMQPS).
    pub fn broker_ca(&self) -> PathBuf {
        self.certs().join("broker-ca.pem")
    }

    /// Extra roots for the servers the agent connects to (`--trust-bundle`).
    pub fn trust_bundle(&self) -> PathBuf {
        self.certs().join("trust-bundle.pem")
    }

    /// The CA's revocation list, as the parent last sent it.
    pub fn crl(&self) -> PathBuf {
        self.certs().join("crl.pem")
    }

    /// The agent's certificate chain, leaf first.
    pub fn chain(&self) -> PathBuf {
        self.certs().join("agent.pem")
    }

    /// The agent's private key (0600).
    pub fn key(&self) -> PathBuf {
        self.certs().join("agent.key")
    }

    /// The key of a CSR whose answer has not come (0600).
    pub fn pending_key(&self) -> PathBuf {
        self.certs().join("agent.key.pending")
    }

    /// The key of an identity `import` is installing, until it is renamed
    /// to [`Layout::key`] (0600).
    pub fn import_key(&self) -> PathBuf {
        self.certs().join("agent.key.import")
    }

    /// The PKCS#12 truststore (`--trust-store-format pkcs12`).
    pub fn truststore_p12(&self) -> PathBuf {
        self.certs().join("truststore.p12")
    }

    /// The JKS truststore (`--trust-store-format jks`).
    pub fn truststore_jks(&self) -> PathBuf {
        self.certs().join("truststore.jks")
    }

    /// The agent's identity as PKCS#12 (`--trust-store-format pkcs12|jks`, 0600).
    pub fn identity_p12(&self) -> PathBuf {
        self.certs().join("agent.p12")
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;
    use std::path::Path;

    #[test]
    fn every_file_has_its_name() {
        let layout = Layout::new(Path::new("/d"));
        let names = [
            layout.identity(),
            layout.signing_key(),
            layout.state(),
            layout.trust(),
            layout.ca(),
            layout.broker_ca(),
            layout.trust_bundle(),
            layout.crl(),
            layout.chain(),
            layout.key(),
            layout.pending_key(),
            layout.import_key(),
            layout.truststore_p12(),
            layout.truststore_jks(),
            layout.identity_p12(),
        ];
        let names: Vec<_> = names.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "/d/identity.toml",
                "/d/identity.key",
                "/d/state.toml",
                "/d/trust.toml",
                "/d/certs/ca.pem",
                "/d/certs/broker-ca.pem",
                "/d/certs/trust-bundle.pem",
                "/d/certs/crl.pem",
                "/d/certs/agent.pem",
                "/d/certs/agent.key",
                "/d/certs/agent.key.pending",
                "/d/certs/agent.key.import",
                "/d/certs/truststore.p12",
                "/d/certs/truststore.jks",
                "/d/certs/agent.p12",
            ]
        );
    }
}
