//! The rbee domain shared by the hive and the queen.
//!
//! - [`capability`]: what a hive has (GPUs, CPU, RAM, backends, labels), versioned.
//! - [`sample`]: one live measurement of a machine.
//! - [`identity`]: who a hive is (stable id, per-start epoch).
//! - [`capability_diff`]: the incremental change between two capability versions.
//! - [`convert`]: the one place where wire (`rbee_proto`) types become domain types and back.
//! - [`stream_message`]: both directions of `MetricsStream`, as domain types.
//! - [`compact`]: compact samples (deadband deltas) on a stream, both ends.
//! - One home for each rule both programs follow: [`sample_interval`], [`labels`],
//!   [`backoff`], [`bearer`], [`hostname`], [`duration_serde`], [`lock`],
//!   [`warn_limit`], [`failure_limit`].
//! - [`view_budget`]: the budgets on one hive's view (catalog, records, bytes).
//! - [`metrics_http`]: the `/metrics` endpoint both daemons serve for Prometheus;
//!   [`machine_metrics`]: the per-hive and per-GPU families both export.
//! - [`bytesize`], [`telemetry`], [`shutdown`], [`time`], [`stdout`], [`report`]: small helpers both binaries use.
//!
//! Domain code never passes generated protobuf types around.
//!
//! No two files of one crate import each other, directly or through others (a parent
//! module assembling its children does not count); `tests/no_import_cycles.rs` at the
//! workspace root checks every crate of the workspace and states the rule precisely.

pub mod backoff;
pub mod bearer;
pub mod bytesize;
pub mod capability;
pub mod capability_diff;
pub mod cert_names;
pub mod certs;
pub mod cli_docs;
pub mod compact;
pub mod convert;
pub mod duration_serde;
pub mod error;
pub mod failure_limit;
pub mod gpu_process;
pub mod grpc_server;
pub mod hostname;
pub mod identity;
pub mod labels;
pub mod lock;
pub mod machine_metrics;
pub mod metrics_http;
pub mod model;
pub mod report;
pub mod sample;
pub mod sample_interval;
pub mod shutdown;
pub mod size_limit;
pub mod stdout;
pub mod stream_message;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod topology;
pub mod view_budget;
pub mod warn_limit;

pub use capability::{
    Backend, Capabilities, ComputeCapability, CpuInfo, GpuDevice, MigMode, VersionedCapabilities,
};
pub use capability_diff::CapabilityDiff;
pub use error::{ConvertError, DiffError};
pub use identity::{DeviceSourceKind, HiveIdentity};
pub use model::{
    DiskSpace, DownloadPhase, DownloadProgress, FileSource, ModelEntry, ModelFile, ModelSource, ModelState,
    ReadBandwidth, SourceBytes,
};
pub use sample::{
    DEFAULT_SAMPLE_INTERVAL, GpuProcess, GpuProcesses, GpuSample, LoadAverage, LostGpu, MAX_SAMPLE_INTERVAL,
    MIN_SAMPLE_INTERVAL, Sample,
};
pub use sample_interval::{IntervalError, SampleInterval};
pub use stream_message::{HivePayload, HiveStreamMessage, KnownView, QueenStreamMessage, SnapshotReason};
pub use topology::{GpuLink, GpuTopology, PcieLevel};
