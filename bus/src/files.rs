//! Files written whole: to a temporary name, synced, then renamed, with the
//! mode set at creation so that a key is never readable by others, not even
//! for a moment; and private folders (0700).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static DURABLE: AtomicBool = AtomicBool::new(true);

/// Turns the sync of every written file off (or on). Only a swarm does this:
/// its thousands of simulated children share one disk, which real agents
/// never do, and their durability is not what a load test measures.
pub fn set_durable(durable: bool) {
    DURABLE.store(durable, Ordering::Relaxed);
}

/// Writes `bytes` to `path` atomically with `mode` (0o600 for keys): a
/// reader sees the old file or the new one, never half of it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    if DURABLE.load(Ordering::Relaxed) {
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Creates `path` (and its parents) as a folder only its owner can enter.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_written_whole_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("pem.tmp").exists());
    }
}
