//! The README's shell blocks, run as an operator would run them: the fenced
//! `sh` blocks of a section, an operator's environment (a home of its own,
//! the freshly built programs first on the PATH, none of the caller's
//! `FLEETLS_*` variables) and the process group a block leaves running,
//! stopped at the end. `by_hand.rs` and `walkthrough.rs` use them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bin_dir;

/// The fenced `sh` blocks of the README section headed by the line `title`
/// (e.g. `### Running it by hand`), in order. The section ends at the next
/// `## ` or `### ` heading; only fences at the start of a line count.
pub fn shell_blocks(readme: &str, title: &str) -> Vec<String> {
    let section: Vec<&str> = readme
        .lines()
        .skip_while(|l| l.trim() != title)
        .skip(1)
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "))
        .collect();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().expect("inside a block")),
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Sets up `command` as an operator's shell on this machine: none of the
/// caller's `FLEETLS_*` variables, HOME set to `home`, the built programs
/// first on the PATH, and the programs' log level.
pub fn operator_env(command: &mut Command, home: &Path) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FLEETLS_") {
            command.env_remove(key);
        }
    }
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    command
        .env("HOME", home)
        .env("PATH", path)
        .env("RUST_LOG", "info,lapin=warn");
}

/// The processes a block left running: the whole process group of the
/// shell that ran it (spawned with `process_group(0)`), stopped when
/// dropped — SIGTERM, then SIGKILL for whatever is left.
pub struct ProcessGroup(pub u32);

impl ProcessGroup {
    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal("TERM");
        std::thread::sleep(Duration::from_secs(2));
        self.signal("KILL");
    }
}
