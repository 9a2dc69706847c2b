//! Flag groups several subcommands share: where the queen is ([`QueenUrl`]) and how a
//! list is printed ([`ListArgs`]).

use std::path::PathBuf;

use clap::Args;

/// Where the client subcommands find the queen by default.
pub const DEFAULT_QUEEN_URL: &str = "http://127.0.0.1:7833";

/// Where and how the client subcommands reach the queen.
#[derive(Debug, Clone, Args)]
pub struct QueenUrl {
    /// The queen's URL (https:// when it serves TLS), or several, comma-separated (queens sharing etcd): calls go to the first that answers, and writes follow the leader.
    #[arg(long = "queen", env = "QUEEN_URL", default_value = DEFAULT_QUEEN_URL, value_name = "URL[,URL...]", value_parser = parse_queen_urls)]
    pub url: String,
    /// CA that signs the queen's certificate (the queen CA), for https:// (without it, the
    /// web PKI's roots).
    #[arg(long = "ca", env = "QUEEN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// File holding a bearer token (or set QUEEN_TOKEN to the token itself).
    #[arg(long = "token-file", env = "QUEEN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `--queen`: one or more comma-separated URLs, each http:// or https:// (a queen
/// speaks gRPC over HTTP/2; any other scheme was once taken for http).
pub fn parse_queen_urls(text: &str) -> Result<String, QueenUrlError> {
    let mut any = false;
    for url in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        any = true;
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(QueenUrlError::Scheme(url.to_owned()));
        }
    }
    if !any {
        return Err(QueenUrlError::Empty);
    }
    Ok(text.to_owned())
}

/// Why a `--queen` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueenUrlError {
    /// A URL whose scheme is not http or https.
    #[error("{0:?} is not an http:// or https:// URL")]
    Scheme(String),
    /// Nothing but commas and spaces.
    #[error("no URL given")]
    Empty,
}

impl QueenUrl {
    /// The queens' URLs, in the order given.
    pub fn urls(&self) -> Vec<String> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()
    }
}

/// `queen hives`, `reservations`, `models`, `downloads`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table (the proto3 JSON mapping grpcurl prints: camelCase,
    /// every field, zeros and empty lists included).
    #[arg(long)]
    pub json: bool,
    /// The queen.
    #[command(flatten)]
    pub queen: QueenUrl,
}
