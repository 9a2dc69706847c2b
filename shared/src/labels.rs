//! The one rule for operator labels (Kubernetes-like): a key is 1..=63 bytes of
//! `[A-Za-z0-9._/-]`, a value at most 256 bytes without control characters, and a
//! hive carries at most [`MAX_LABELS`]. The hive's `--label` flag, wire conversion
//! and the queen's configuration all check labels here.

/// Longest label key, bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 63;
/// Longest label value, bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Most labels one hive may carry.
pub const MAX_LABELS: usize = 64;

/// Why a label was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// `--label` text without `=`.
    #[error("label {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// Empty key, or longer than 63 bytes.
    #[error("label key {key:?} must be 1..={MAX_LABEL_KEY_BYTES} bytes")]
    KeyLength {
        /// The key.
        key: String,
    },
    /// A key character outside `[A-Za-z0-9._/-]`.
    #[error("label key {key:?} contains {ch:?}; use letters, digits, '.', '_', '-' or '/'")]
    KeyCharacter {
        /// The key.
        key: String,
        /// The first bad character.
        ch: char,
    },
    /// A value longer than 256 bytes.
    #[error("label {key:?}: value is {len} bytes > {MAX_LABEL_VALUE_BYTES}")]
    ValueLength {
        /// The key.
        key: String,
        /// The value's length.
        len: usize,
    },
    /// A control character in the value.
    #[error("label {key:?}: value contains a control character")]
    ValueCharacter {
        /// The key.
        key: String,
    },
    /// More than [`MAX_LABELS`].
    #[error("{0} labels > {MAX_LABELS}")]
    TooMany(usize),
}

/// A key as shown in an error: cut to 64 characters, so that a peer cannot make the
/// error (and the log line or status that carries it) arbitrarily long.
fn shown(key: &str) -> String {
    match key.char_indices().nth(64) {
        Some((cut, _)) => format!("{}... ({} bytes)", &key[..cut], key.len()),
        None => key.to_owned(),
    }
}

/// Checks one label.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES {
        return Err(LabelError::KeyLength { key: shown(key) });
    }
    if let Some(ch) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(LabelError::KeyCharacter { key: shown(key), ch });
    }
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(LabelError::ValueLength { key: shown(key), len: value.len() });
    }
    if value.chars().any(char::is_control) {
        return Err(LabelError::ValueCharacter { key: shown(key) });
    }
    Ok(())
}

/// Checks a whole label set (count and every label).
pub fn validate_labels<'a>(
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany(labels.len()));
    }
    labels.into_iter().try_for_each(|(k, v)| validate_label(k, v))
}

/// Parses `KEY=VALUE` (surrounding whitespace trimmed) and checks it.
pub fn parse_label(text: &str) -> Result<(String, String), LabelError> {
    let (k, v) = text.split_once('=').ok_or_else(|| LabelError::NotKeyValue(text.to_owned()))?;
    let (k, v) = (k.trim(), v.trim());
    validate_label(k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_kubernetes_like_rule() {
        assert!(validate_label("zone", "eu").is_ok());
        assert!(validate_label("rbee.dev/tier_1-a", "").is_ok());
        assert!(validate_label(&"k".repeat(63), "v").is_ok());
        assert!(matches!(validate_label("", "v"), Err(LabelError::KeyLength { .. })));
        assert!(matches!(validate_label(&"k".repeat(64), "v"), Err(LabelError::KeyLength { .. })));
        assert!(matches!(validate_label("a b", "v"), Err(LabelError::KeyCharacter { ch: ' ', .. })));
    }

    #[test]
    fn values_are_bounded() {
        assert!(validate_label("k", &"v".repeat(256)).is_ok());
        assert!(matches!(validate_label("k", &"v".repeat(257)), Err(LabelError::ValueLength { .. })));
        assert!(matches!(validate_label("k", "a\nb"), Err(LabelError::ValueCharacter { .. })));
    }

    #[test]
    fn parses_key_value() {
        assert_eq!(parse_label(" zone = eu "), Ok(("zone".into(), "eu".into())));
        assert!(matches!(parse_label("zone"), Err(LabelError::NotKeyValue(_))));
        assert!(matches!(parse_label("=eu"), Err(LabelError::KeyLength { .. })));
    }

    #[test]
    fn sets_are_bounded() {
        let many: std::collections::BTreeMap<String, String> =
            (0..=MAX_LABELS).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(validate_labels(many.iter()), Err(LabelError::TooMany(MAX_LABELS + 1)));
    }
}
