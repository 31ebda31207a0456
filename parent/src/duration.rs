//! The CLI's durations (`90`, `90s`, `15m`, `2h`, `1d`), parsed for its
//! flags: the client's `--wait`, a campaign's `--timeout` and
//! `--step-timeout`, `agents reject --pending-older-than`.

use std::time::Duration;

/// A duration as the flags take it: `3d`, `12h`, `15m`, `90s`.
pub fn text(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Parses `90`, `90s`, `15m`, `2h`, `1d` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use e.g. 90s, 15m, 1h or 1d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => {
            return Err(format!(
                "{text:?} is not a duration: use e.g. 90s, 15m, 1h or 1d"
            ))
        }
    };
    if secs == 0 {
        return Err("a duration must be at least 1 second".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60m").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86_400)
        );
        assert!(parse_duration("5w").is_err());
        assert_eq!(text(Duration::from_secs(3 * 86_400)), "3d");
        assert_eq!(text(Duration::from_secs(90)), "90s");
        assert_eq!(text(Duration::from_secs(7200)), "2h");
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("m").is_err());
    }
}
