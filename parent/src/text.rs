//! Text from outside (what an agent says of itself, what a broker user
//! wrote) made safe to store and to print on an operator's terminal.

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
