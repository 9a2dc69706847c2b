//! rbee hive: the agent on every machine. It knows the hardware (NVIDIA GPUs through
//! NVML, CPU and RAM from `/proc`, or simulated GPUs for tests and demos), rescans
//! it for changes, and serves `rbee.v1.Hive`: `Discover` and a bidirectional
//! `MetricsStream` of capability diffs and live samples. It also keeps a catalog of
//! models on disk and downloads them on request (`FetchModel`, see [`models`]), and
//! keeps chosen models in RAM (`PreloadModel`, `EvictModel`, see [`preload`]).
//!
//! The binary is a thin wrapper: tests start the same [`run`] on `127.0.0.1:0`.

pub mod announce;
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
