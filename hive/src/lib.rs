//! rbee hive: the agent on every machine. It knows the hardware (NVIDIA GPUs through
//! NVML, CPU and RAM from `/proc`, or simulated GPUs for tests and demos), rescans
//! it for changes, and serves `rbee.v1.Hive`: `Discover` and a bidirectional
//! `MetricsStream` of capability diffs and live samples. It also keeps a catalog of
//! models on disk and downloads them on request (`FetchModel`, see [`models`]), and
//! keeps chosen models in RAM (`PreloadModel`, `EvictModel`, see [`preload`]).
//!
//! The binary is a thin wrapper: tests start the same [`run`] on `127.0.0.1:0`.
//!
//! The layers, lowest first. A layer imports only the ones above it in this list (and
//! `rbee_shared`); [`run`] ([`server`]) wires them together.
//!
//! - [`error`]: the crate's one error type and its one mapping to a gRPC status.
//! - [`identity`]: who this hive is (stable id, per-start epoch, state directory).
//! - [`source`], then [`procs`]: where readings come from (NVML, `/proc`, simulated
//!   GPUs) and the processes on each GPU.
//! - [`monitor`]: the shared telemetry: capabilities (rescanned), samples on demand.
//! - [`probe`]: `hive probe`'s one-shot report.
//! - [`models`] and [`preload`], one layer: the model catalog and its downloads, and
//!   models kept in RAM (preload reads the catalog; the catalog shows residency by
//!   preload's deadband).
//! - [`streams`]: admission of `MetricsStream`s (slots, the queen's reserve).
//! - [`stream`]: one `MetricsStream` session, in domain types only.
//! - [`metrics`]: the hive's own `/metrics` (the families are `rbee_shared`'s).
//! - [`announce`]: announcing this hive to a queen.
//! - [`config`]: each command's flags, validated into a [`HiveConfig`].
//! - [`convert`], [`stream_compact`], [`service`]: the API edge. Wire messages become
//!   domain ones (inbound), session messages become wire ones with compact samples
//!   where asked for (outbound), and the `rbee.v1.Hive` handlers sit on them.
//! - [`server`]: [`run`], the wiring.
//! - [`swarm`]: the fleet simulator, many real hive servers in one process.
//! - [`cli`]: the `hive` command tree the binary parses.

pub mod announce;
pub mod cli;
pub mod config;
pub mod convert;
pub mod error;
pub mod identity;
pub mod metrics;
pub mod models;
pub mod monitor;
pub mod preload;
pub mod probe;
pub mod procs;
pub mod server;
pub mod service;
pub mod source;
pub mod stream;
pub mod stream_compact;
pub mod streams;
pub mod swarm;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use config::HiveConfig;
pub use error::HiveError;
pub use server::run;
