//! rbee queen: discovers hives and holds the live fleet view — which hives exist, what
//! they have, how loaded and healthy they are, and how fresh that knowledge is.
//!
//! - [`fleet`]: the registry and the published per-hive views.
//! - [`connection`]: one manager per hive (Discover, MetricsStream, failure detection).
//! - [`ingest`], [`health`], [`window`]: pure rules over a hive's stream.
//! - [`admission`]: which addresses the queen will dial.
//! - [`service`], [`watch`], [`convert`]: the `rbee.v1.Fleet` API.
//! - [`cli`]: the client subcommands (`hives`, `hive`, `watch`, `add`, `remove`).

pub mod admission;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connection;
pub mod convert;
pub mod error;
pub mod fleet;
pub mod health;
pub mod ingest;
pub mod scheduler;
pub mod scheduler_service;
pub mod server;
pub mod service;
pub mod watch;
pub mod window;

pub use config::QueenConfig;
pub use error::QueenError;
pub use server::run;
