//! The live fleet: one entry per managed hive, each written only by its own
//! connection manager and read through cheap `Arc` snapshots.
//!
//! There is no global lock on the ingest path: the registry's lock is taken only to
//! add, remove, find or list entries, and never across an `.await`. Each hive publishes
//! its state through a `watch` channel (latest value wins). Structural changes (added,
//! removed, state, health, capabilities) go out on a bounded broadcast channel;
//! watchers that fall behind get a fresh snapshot instead of the missed events.

mod registry;
mod snapshot;

pub use registry::{EVENT_CAPACITY, Fleet, FleetEvent, HiveHandle};
pub use snapshot::{ConnState, Counters, HiveSnapshot, Origin};
