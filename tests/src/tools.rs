//! Outside checkers some tests run (promtool, testssl.sh): installed from
//! Debian's packages by `scripts/tools` when missing, as `scripts/broker`
//! installs RabbitMQ.

use std::process::Command;
use std::sync::Mutex;

/// Makes sure `tool` (`promtool` or `testssl`) is on the PATH, installing
/// it with `scripts/tools` when it is not; panics with the script's output
/// when that fails.
pub fn ensure(tool: &str) {
    // One install at a time within a test binary (the script locks across
    // binaries).
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _guard = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    let output = Command::new(crate::repo().join("scripts/tools"))
        .arg(tool)
        .output()
        .expect("scripts/tools runs");
    assert!(
        output.status.success(),
        "scripts/tools {tool} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
