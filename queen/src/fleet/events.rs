//! The fleet's structural change events (added, removed, state, health,
//! capabilities), sent on a bounded broadcast channel.

use std::sync::Arc;

use rbee_shared::VersionedCapabilities;

use super::{ConnState, Health, HiveSnapshot};

/// Capacity of the change-event channel; a watcher further behind gets a snapshot.
pub const EVENT_CAPACITY: usize = 4096;

/// A change in the fleet.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    /// A hive is now managed.
    Added(Arc<HiveSnapshot>),
    /// A hive is no longer managed.
    Removed {
        /// Its address.
        address: String,
        /// Its id, if it was discovered.
        hive_id: String,
    },
    /// A hive's connection state changed.
    StateChanged {
        /// The hive.
        hive: Arc<HiveSnapshot>,
        /// The previous state.
        from: ConnState,
        /// Why, in words.
        reason: String,
    },
    /// A hive's health level changed, or a new problem appeared.
    HealthChanged {
        /// The hive (its health is the new level).
        hive: Arc<HiveSnapshot>,
        /// The previous level.
        from: Health,
    },
    /// A hive's capabilities changed, or it restarted.
    CapabilitiesChanged {
        /// The hive.
        hive: Arc<HiveSnapshot>,
        /// True for a new epoch (the snapshot was taken whole).
        restarted: bool,
        /// The new capabilities.
        caps: Arc<VersionedCapabilities>,
    },
}
