//! Durations (`250ms`, `5s`, `1h`, `30d`) and byte sizes (`512`, `64KiB`, `10GB`) as operators
//! write them in flags and environment variables.

use std::time::Duration;

/// Parses a duration such as `5s`, `1h 30m` or `100ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (examples: 500ms, 5s, 1h, 30d)"))
}

/// Parses a duration that must be longer than zero (an interval or a timeout that zero would
/// break, e.g. a timer period).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than 0 (examples: 500ms, 5s, 1h)".into()),
        duration => Ok(duration),
    }
}

/// Parses a byte size: a plain number of bytes or a number with a unit
/// (`KB`, `MB`, `GB`, `TB` are powers of 1000; `KiB`, `MiB`, `GiB`, `TiB` powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 1048576, 64KiB, 10GB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    Ok((number * scale as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_durations_refuse_zero() {
        assert_eq!(parse_positive_duration("5s"), Ok(Duration::from_secs(5)));
        assert!(
            parse_positive_duration("0s")
                .unwrap_err()
                .contains("longer than 0")
        );
        assert!(parse_positive_duration("soon").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").unwrap_err().contains("examples"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("1.5 MB"), Ok(1_500_000));
        assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("5 parsecs").unwrap_err().contains("unit"));
    }
}
