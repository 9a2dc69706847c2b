//! The machine's hostname, and the one rule that turns it into an id fragment.

/// This machine's hostname (`hostname(2)`, else `$HOSTNAME`, else `/etc/hostname`), or
/// an empty string when none is known.
pub fn local_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_default()
}

/// A hostname as an id fragment: lower-case ASCII letters, digits and `-` (every other
/// character becomes `-`), at most `max_chars` long. Empty stays empty.
pub fn normalize_hostname(raw: &str, max_chars: usize) -> String {
    raw.trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .take(max_chars)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_to_an_id_fragment() {
        assert_eq!(normalize_hostname("GPU-Box_1.example.com", 40), "gpu-box-1-example-com");
        assert_eq!(normalize_hostname("abcdef", 3), "abc");
        assert_eq!(normalize_hostname("  ", 10), "");
        assert_eq!(normalize_hostname("hôte", 10), "h-te");
    }
}
