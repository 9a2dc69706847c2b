//! Human byte sizes: `8GiB`, `512 MiB`, `80GB`, `1073741824`.

/// A text that is not a byte size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a byte size: {reason}")]
pub struct ByteSizeError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses a byte size. Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal
/// units (kB, MB, GB, TB) powers of 1000; a bare number is bytes. Fractions are
/// allowed with a unit (`1.5GiB`).
pub fn parse_bytes(s: &str) -> Result<u64, ByteSizeError> {
    let bad = |reason: String| ByteSizeError { text: s.to_owned(), reason };
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad("expected e.g. 8GiB, 512MiB or 1073741824".into()));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(bad(format!("unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)")));
        }
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| bad("too large".into()));
    }
    let f: f64 = num.parse().map_err(|_| bad("not a number".into()))?;
    let bytes = f * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad("out of range".into()));
    }
    Ok(bytes.round() as u64)
}

/// A byte size as a config or scenario file writes it: a number of bytes (`1073741824`)
/// or text that [`parse_bytes`] reads (`"80GiB"`). Every file format that takes a byte
/// size deserializes this, so they all share one grammar.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum ByteSizeField {
    /// A plain number of bytes.
    Bytes(u64),
    /// Text with a unit.
    Text(String),
}

impl ByteSizeField {
    /// The size in bytes.
    pub fn bytes(&self) -> Result<u64, ByteSizeError> {
        match self {
            Self::Bytes(b) => Ok(*b),
            Self::Text(t) => parse_bytes(t),
        }
    }
}

/// Formats bytes with a binary unit and one decimal, e.g. `7.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("80GB"), Ok(80_000_000_000));
        assert_eq!(parse_bytes("1073741824"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("8 parsecs").unwrap_err().to_string().contains("unknown unit"));
        assert!(parse_bytes("99999999999999999999TiB").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(8 << 30), "8.0 GiB");
    }
}
