//! How a URL is shown: without its credentials. A download URL may carry a password
//! (`https://user:pw@host/...`) or a presigned query (`?X-Amz-Signature=...`); every URL
//! that reaches an error text, a progress or catalog record, a log line or a manifest's
//! `source` goes through [`redact_url`] first. Only the hive's private resume records
//! (`fetch.json`, `*.part.json`, written 0600) keep the whole URL.

use rbee_shared::ModelSource;

/// `url` without userinfo and fragment, its query reduced to the parameter names
/// (`?X-Amz-Signature=...&X-Amz-Credential=...` becomes `?X-Amz-Signature&X-Amz-Credential`),
/// so that a reader still sees which URL it was. Text that does not parse as a URL is cut
/// before its first `?` or `#` and loses anything up to an `@` in its authority.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.has_host() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_fragment(None);
            let keys: Option<Vec<String>> = parsed.query().map(|q| {
                q.split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.split_once('=').map_or(p, |(k, _)| k).to_owned())
                    .collect()
            });
            parsed.set_query(keys.map(|k| k.join("&")).as_deref());
            parsed.into()
        }
        _ => redact_text(url),
    }
}

/// A model source as a manifest or a log shows it: [`ModelSource`]'s text with its URL
/// redacted.
pub fn redact_source(source: &ModelSource) -> String {
    match source {
        ModelSource::Urls(files) if files.len() == 1 => redact_url(&files[0].url),
        other => other.to_string(),
    }
}

/// The fallback of [`redact_url`] for text that is not a URL with a host.
fn redact_text(text: &str) -> String {
    let end = text.find(['?', '#']).unwrap_or(text.len());
    let text = &text[..end];
    let (scheme, rest) = match text.find("://") {
        Some(i) => (&text[..i + 3], &text[i + 3..]),
        None => ("", text),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_are_dropped() {
        assert_eq!(
            redact_url(
                "https://user:PW@mirror.example/a/b.bin?X-Amz-Signature=SECRET&X-Amz-Credential=AKIA#f"
            ),
            "https://mirror.example/a/b.bin?X-Amz-Signature&X-Amz-Credential"
        );
        assert_eq!(redact_url("http://token@127.0.0.1:8080/x"), "http://127.0.0.1:8080/x");
        assert_eq!(
            redact_url("https://huggingface.co/org/r/resolve/abc/f"),
            "https://huggingface.co/org/r/resolve/abc/f"
        );
        assert_eq!(redact_url("http://h/x?"), "http://h/x?");
        // Not a URL: cut at the query, userinfo dropped.
        assert_eq!(redact_url("http://u:PW@[bad/x?sig=SECRET"), "http://[bad/x");
        assert_eq!(redact_url("u:PW@host/x?sig=SECRET"), "host/x");
    }
}
