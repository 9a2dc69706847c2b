//! The live fleet: one entry per managed hive, each written only by its own watcher
//! (the per-hive link) and read through cheap `Arc` snapshots. This layer imports
//! only `rbee_shared` and the crate's error type.
//!
//! There is no global lock on the ingest path: the registry's lock is taken only to
//! add, remove, find or list entries, and never across an `.await`. Each hive publishes
//! its state through a `watch` channel (latest value wins). Structural changes (added,
//! removed, state, health, capabilities) go out on a bounded broadcast channel;
//! watchers that fall behind get a fresh snapshot instead of the missed events.

pub mod address;
mod events;
mod health;
mod ids;
mod placement;
mod registry;
mod settings;
mod snapshot;
mod state;
mod stats;

pub use events::{EVENT_CAPACITY, FleetEvent};
pub use health::{CpuBusy, DeviceHealth, Health, HealthReport};
pub use ids::IdTaken;
pub use placement::{GpuLoad, GpuParts, PlacementSummary, RamLoad, ViewParts, join_by_id, usable_vram};
pub use registry::{Changes, Fleet, HiveHandle, NewHive, PUBLISH_DELAY_BUCKETS, Seen, Watcher};
pub use settings::{FleetSettings, Thresholds};
pub use snapshot::HiveSnapshot;
pub use state::{ConnState, Counters, Origin};
pub use stats::{GpuStats, WindowStats};
