//! How the commands print: a long answer to stdout that a closed pipe
//! ends quietly, JSON or text, and the typed confirmation a command that
//! discards or risks something asks for.

use std::process::ExitCode;

/// Writes a long answer to stdout: a reader that stops early
/// (`status --json | head`) ends it quietly instead of as a panic.
pub(crate) fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// [`print_out`] of `value` as pretty JSON, with a newline.
pub(crate) fn print_pretty<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    print_out(&(serde_json::to_string_pretty(value)? + "\n"))?;
    Ok(())
}

/// Prints `value` as pretty JSON with `json`, else as `text` prints it.
pub(crate) fn print_json_or<T: serde::Serialize>(
    value: &T,
    json: bool,
    text: impl FnOnce(&T),
) -> anyhow::Result<ExitCode> {
    if json {
        fleetls_bus::outln!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text(value);
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the operator to type `word` after `prompt`. `None`: confirmed;
/// else the exit code to end with — 2 when stdin is no terminal (having
/// said `no_terminal`, which asks for `--yes`), 3 when not confirmed.
pub(crate) fn confirm(
    no_terminal: &str,
    prompt: &str,
    word: &str,
) -> anyhow::Result<Option<ExitCode>> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!("error: {no_terminal}");
        return Ok(Some(ExitCode::from(2)));
    }
    print!("{prompt}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != word {
        eprintln!("not confirmed; nothing changed");
        return Ok(Some(ExitCode::from(3)));
    }
    Ok(None)
}
