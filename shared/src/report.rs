//! How both binaries print an error: its chain on one line, outermost first, each
//! cause once. Libraries (hyper, tonic) often put their cause's text into their own
//! message as well, and some wrap an error in one of the same text, which printed
//! "tcp connect error: tcp connect error: Connection refused".

use std::error::Error;

/// The chain (outermost first, e.g. `anyhow::Error::chain`) as `outer: cause: root`,
/// leaving out a cause whose text is empty or already in the message before it.
pub fn chain_text<'a>(chain: impl Iterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut kept: Vec<String> = Vec::new();
    for e in chain {
        let text = e.to_string();
        let text = text.trim();
        if text.is_empty() || kept.last().is_some_and(|last| last.contains(text)) {
            continue;
        }
        kept.push(text.to_owned());
    }
    kept.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause.
    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn text(e: &E) -> String {
        let first: &(dyn Error + 'static) = e;
        chain_text(std::iter::successors(Some(first), |e| (*e).source()))
    }

    #[test]
    fn a_repeated_cause_is_printed_once() {
        let refused = E("Connection refused (os error 111)", None);
        let inner = E("tcp connect error", Some(Box::new(refused)));
        let outer = E("tcp connect error", Some(Box::new(inner)));
        let top = E("cannot reach the queen at http://127.0.0.1:1", Some(Box::new(outer)));
        assert_eq!(
            text(&top),
            "cannot reach the queen at http://127.0.0.1:1: tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_cause_already_in_its_wrapper_text_is_left_out() {
        let root = E("failed to lookup address", None);
        let dns = E("dns error: failed to lookup address", Some(Box::new(root)));
        let empty = E("", Some(Box::new(dns)));
        let top = E("cannot reach the queen", Some(Box::new(empty)));
        assert_eq!(text(&top), "cannot reach the queen: dns error: failed to lookup address");
    }
}
