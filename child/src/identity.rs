//! What a child keeps in its data dir: its identity (made once, kept for
//! ever) and its state in the migration. Every file is written whole to a
//! temporary name and renamed, so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::layout::Layout;

/// A data dir file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct StoreError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub why: String,
}

/// Who this agent is: `identity.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The agent id, made once.
    pub id: Uuid,
    /// Its display name.
    pub name: String,
}

/// Where this agent stands: `state.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Agent traffic goes to the parent's SSL port over TLS.
    #[serde(default)]
    pub ssl: bool,
    /// The broker connection is AMQPS, to this URL.
    #[serde(default)]
    pub broker_tls_uri: Option<String>,
    /// A local parent agent serves TLS on this port for its location.
    #[serde(default)]
    pub serve_port: Option<u16>,
    /// ...with the network's TLS versions and cipher suites (`None`: the
    /// defaults), as the parent last sent them.
    #[serde(default)]
    pub serve_tls: Option<fleetls_proto::TlsPolicy>,
    /// When the parent sent that policy (its clock, the command's `at`): a
    /// weaker one from an older command is a replay (see
    /// [`crate::trust::stale_policy`]).
    #[serde(default)]
    pub serve_tls_at: u64,
    /// The replay counter reserved so far: every message sent carried a
    /// `seq` below it, and after a restart the agent goes on above it,
    /// whatever its clock says (see [`crate::seq`]).
    #[serde(default)]
    pub seq_floor: u64,
}

/// Loads the identity, creating it on first start. A name given now
/// replaces the stored one (the id never changes).
pub fn load_or_create_identity(dir: &Path, name: Option<&str>) -> Result<Identity, StoreError> {
    let path = Layout::new(dir).identity();
    let identity = match read_toml::<Identity>(&path)? {
        Some(mut identity) => {
            match name {
                Some(name) if name != identity.name => identity.name = name.to_owned(),
                _ => return Ok(identity),
            }
            identity
        }
        None => Identity {
            id: Uuid::new_v4(),
            name: name.map(str::to_owned).unwrap_or_else(default_name),
        },
    };
    write_toml(&path, &identity, 0o644)?;
    Ok(identity)
}

/// Loads the state (the default when there is none yet).
pub fn load_state(dir: &Path) -> Result<State, StoreError> {
    Ok(read_toml(&Layout::new(dir).state())?.unwrap_or_default())
}

/// Saves the state.
pub fn save_state(dir: &Path, state: &State) -> Result<(), StoreError> {
    // It may hold the AMQPS URL with its password: owner only.
    write_toml(&Layout::new(dir).state(), state, 0o600)
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "child".into())
}

pub(crate) fn read_toml<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Option<T>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map(Some).map_err(|e| StoreError {
            path: path.to_owned(),
            why: format!("{e}; fix or remove the file"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError {
            path: path.to_owned(),
            why: e.to_string(),
        }),
    }
}

pub(crate) fn write_toml<T: Serialize>(
    path: &Path,
    value: &T,
    mode: u32,
) -> Result<(), StoreError> {
    let text = toml::to_string(value).map_err(|e| StoreError {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes(), mode)
}

/// Writes `bytes` to `path` whole (see [`fleetls_bus::files::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    fleetls_bus::files::write_atomic(path, bytes, mode).map_err(|e| StoreError {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_identity(dir.path(), Some("till-1")).unwrap();
        let again = load_or_create_identity(dir.path(), None).unwrap();
        assert_eq!(first, again);
        let renamed = load_or_create_identity(dir.path(), Some("till-9")).unwrap();
        assert_eq!((renamed.id, renamed.name.as_str()), (first.id, "till-9"));
    }

    #[test]
    fn a_broken_identity_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = Layout::new(dir.path()).identity();
        std::fs::write(&file, "id = 5").unwrap();
        let err = load_or_create_identity(dir.path(), None).unwrap_err();
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "id = 5");
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), State::default());
        let state = State {
            ssl: true,
            broker_tls_uri: Some("amqps://h:5671".into()),
            serve_port: Some(12366),
            serve_tls: Some(fleetls_proto::TlsPolicy {
                min_version: fleetls_proto::TlsVersion::Tls13,
                cipher_suites: vec!["TLS13_AES_256_GCM_SHA384".into()],
            }),
            serve_tls_at: 1_700_000_000_000,
            seq_floor: 1_700_000_003_600_000_000,
        };
        save_state(dir.path(), &state).unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), state);
    }
}
