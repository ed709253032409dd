//! Durations written in objects: `90s`, `30m`, `1h30m`, `2d`, `1y6m` (restic's
//! `--keep-within` units: `y` years, `m` months in `keepWithin`, minutes in
//! timeouts; see [`parse_duration`]).

use std::time::Duration;

/// A duration string that is not `<number><unit>...`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (write e.g. \"90s\", \"30m\", \"1h30m\")")]
pub struct DurationError {
    /// The string as written.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a Go-style duration of whole units `s`, `m`, `h` and `d` (days),
/// e.g. a BackupConfiguration's `timeout`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in input.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(|| err("it is too large"))?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(err("units are s, m, h and d")),
        };
        let n = number
            .take()
            .ok_or_else(|| err("a unit must follow a number"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("it is too large"))?;
    }
    if number.is_some() {
        return Err(err("the last number has no unit"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(parse_duration("").unwrap_err().reason, "it is empty");
        assert_eq!(
            parse_duration("10").unwrap_err().reason,
            "the last number has no unit"
        );
        assert_eq!(
            parse_duration("h").unwrap_err().reason,
            "a unit must follow a number"
        );
        assert_eq!(
            parse_duration("5w").unwrap_err().to_string(),
            "invalid duration \"5w\": units are s, m, h and d (write e.g. \"90s\", \"30m\", \"1h30m\")"
        );
    }
}
