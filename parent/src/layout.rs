//! Where the parent keeps what in its data dir: the one place that spells
//! the file names (the README's "Files" list is this).
//!
//! ```text
//! DIR/fleetls.db              the registry (SQLite)
//! DIR/admin.token             the admin API's bearer token (0600)
//! DIR/admin.addr              where `serve` listens (operator commands read it)
//! DIR/signing.key             the key every command is signed with (0600)
//! DIR/ssl.toml                the SSL settings
//! DIR/broker-tls.toml         the AMQPS address the parent moved to
//! DIR/certificates/           ca.pem, ca.key (the CA that signs), trust.pem
//!                             (every CA trusted: two during a CA rotation),
//!                             parent.pem, parent.key, broker.pem, broker.key
//!                             (keys 0600), crl.pem
//! DIR/certificates/cas/       every CA ever used, by fingerprint (a rotation's
//!                             old and new one; the archive after it)
//! DIR/broker-files.toml       where `broker-tls --out` last wrote the broker's
//!                             files (written there again when they change)
//! DIR/certificates.new/       a generation being written (renamed when whole)
//! ```

use std::path::{Path, PathBuf};

/// The files of one data dir.
#[derive(Debug, Clone)]
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

    /// The registry.
    pub fn registry(&self) -> PathBuf {
        self.dir.join("fleetls.db")
    }

    /// The admin token.
    pub fn token(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    /// The admin API's address, written by `serve` once it listens and
    /// removed when it stops cleanly.
    pub fn admin_addr(&self) -> PathBuf {
        self.dir.join("admin.addr")
    }

    /// The signing key.
    pub fn signing_key(&self) -> PathBuf {
        self.dir.join("signing.key")
    }

    /// The SSL settings.
    pub fn settings(&self) -> PathBuf {
        self.dir.join("ssl.toml")
    }

    /// The parent's own AMQPS state.
    pub fn broker_state(&self) -> PathBuf {
        self.dir.join("broker-tls.toml")
    }

    /// The folder of the CA and the parent's and broker's certificates.
    pub fn certificates(&self) -> PathBuf {
        self.dir.join("certificates")
    }

    /// Which of the certificates the operator gave (`crate::own`).
    pub fn own_record(&self) -> PathBuf {
        self.certificates().join("own.toml")
    }

    /// The parent's fleetls-issued certificate toward the broker, once the
    /// SSL port serves the operator's own (`crate::own::client_identity`).
    pub fn client_pem(&self) -> PathBuf {
        self.certificates().join("client.pem")
    }

    /// The key of [`Layout::client_pem`].
    pub fn client_key(&self) -> PathBuf {
        self.certificates().join("client.key")
    }

    /// The root of the operator's own broker certificate, trusted for the
    /// broker beside fleetls's CAs (`crate::own::broker_trust_files`).
    pub fn broker_root(&self) -> PathBuf {
        self.certificates().join("broker-root.pem")
    }

    /// Where a new generation of certificates is written before it replaces
    /// [`Layout::certificates`].
    pub fn certificates_staging(&self) -> PathBuf {
        self.dir.join("certificates.new")
    }

    /// Every CA ever used, by fingerprint: `ca-HEX16.pem` and `.key`.
    pub fn ca_archive(&self) -> PathBuf {
        self.certificates().join("cas")
    }

    /// Where `broker-tls --out` last wrote the broker's files.
    pub fn broker_files(&self) -> PathBuf {
        self.dir.join("broker-files.toml")
    }

    /// One file of [`Layout::certificates`].
    pub fn certificate(&self, file: CertFile) -> PathBuf {
        self.certificates().join(file.name())
    }
}

/// The files of the certificates folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFile {
    /// The chain of the CA that signs (PEM).
    CaPem,
    /// Every CA certificate agents and servers trust (PEM): the CA chain,
    /// and during a CA rotation the other CA too.
    TrustPem,
    /// The CA's key (0600).
    CaKey,
    /// The parent's server and client certificate chain.
    ParentPem,
    /// The parent's key (0600).
    ParentKey,
    /// The broker's certificate chain.
    BrokerPem,
    /// The broker's key (0600).
    BrokerKey,
    /// The CA's revocation list (written on every revocation).
    Crl,
}

impl CertFile {
    /// Every file, in the order they are written.
    pub const ALL: [CertFile; 8] = [
        CertFile::CaPem,
        CertFile::TrustPem,
        CertFile::CaKey,
        CertFile::ParentPem,
        CertFile::ParentKey,
        CertFile::BrokerPem,
        CertFile::BrokerKey,
        CertFile::Crl,
    ];

    /// Its file name.
    pub fn name(self) -> &'static str {
        match self {
            CertFile::CaPem => "ca.pem",
            CertFile::TrustPem => "trust.pem",
            CertFile::CaKey => "ca.key",
            CertFile::ParentPem => "parent.pem",
            CertFile::ParentKey => "parent.key",
            CertFile::BrokerPem => "broker.pem",
            CertFile::BrokerKey => "broker.key",
            CertFile::Crl => "crl.pem",
        }
    }

    /// The mode it is written with: keys are the owner's only.
    pub fn mode(self) -> u32 {
        match self {
            CertFile::CaKey | CertFile::ParentKey | CertFile::BrokerKey => 0o600,
            _ => 0o644,
        }
    }
}
