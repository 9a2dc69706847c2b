//! Bounds on text that a script or a peer controls (a policy's rejection reason, the
//! names it returns, its error messages and log lines, a hive's reasons) before the text
//! goes into a gRPC status, a response or the log.
//!
//! A 62 KB rejection reason once went whole into a gRPC status: the header was too big
//! for HTTP/2, and the client saw "h2 protocol error" instead of the reason. Every such
//! text is cut here, on a character boundary, and says that it was cut.

use std::borrow::Cow;

use rbee_shared::bytesize::format_bytes;

/// Most bytes of script- or peer-controlled text kept in one reason, name, error or log
/// line (the marker that says it was cut comes on top).
pub const MAX_TEXT_BYTES: usize = 1024;

/// `text`, cut to at most [`MAX_TEXT_BYTES`] on a character boundary, followed by
/// `… (cut, 61.0 KiB in all)` when it was cut.
pub fn bound(text: &str) -> Cow<'_, str> {
    bound_to(text, MAX_TEXT_BYTES)
}

/// [`bound`] for an owned string: no copy when it fits.
pub fn bound_owned(text: String) -> String {
    if text.len() <= MAX_TEXT_BYTES { text } else { bound(&text).into_owned() }
}

/// `text`, cut to at most `max` bytes on a character boundary, saying so when cut.
pub fn bound_to(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… (cut, {} in all)", &text[..end], format_bytes(text.len() as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_as_is() {
        assert!(matches!(bound("no room"), Cow::Borrowed("no room")));
        let exact = "x".repeat(MAX_TEXT_BYTES);
        assert_eq!(bound(&exact), exact.as_str());
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_and_says_so() {
        let long = "é".repeat(31_000); // 62,000 bytes, 2 bytes a char
        let cut = bound(&long);
        assert!(cut.len() < MAX_TEXT_BYTES + 40, "{}", cut.len());
        assert!(cut.starts_with(&"é".repeat(MAX_TEXT_BYTES / 2)));
        assert!(cut.ends_with("… (cut, 60.5 KiB in all)"), "{}", &cut[cut.len() - 40..]);
        // A 3-byte char straddling the limit is dropped whole, never split.
        let odd = format!("a{}", "€".repeat(1000));
        let cut = bound_to(&odd, 5);
        assert!(cut.starts_with("a€") && !cut.starts_with("a€€"), "{cut}");
        assert_eq!(bound_owned(long.clone()), bound(&long));
    }
}
