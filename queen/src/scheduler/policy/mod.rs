//! Placement policies in Rhai.
//!
//! A policy defines `fn place(request, fleet)` and returns a device, a map
//! `#{ hive: ..., device: ... }`, an array of them (ranked, best first), or
//! `reject("reason")`. See `docs/scheduling.md`.
//!
//! - [`runtime`]: the sandboxed engine; compiling; running a call under a wall-time
//!   deadline that holds whatever the script calls.
//! - [`pool`]: the worker threads that run calls (one per core by default).
//! - [`sandbox`]: the meter of one call (deadline, operations charged by natives,
//!   position, log lines) and the metered collection natives.
//! - [`api`]: the natives scripts see (request, fleet, hive, device).
//! - [`decision`]: reading what `place()` returned.
//! - [`error`]: [`PolicyError`], with the script position.

pub mod api;
pub mod decision;
pub mod error;
pub mod gangs;
pub mod pool;
pub mod runtime;
pub mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use rhai::AST;

pub use self::decision::{Choice, Decision};
pub use self::error::{PolicyError, ScriptPosition};
pub use self::runtime::PolicyRuntime;

/// The built-in default policy (least loaded), also shipped as `queen/policies/least-loaded.rhai`.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/least-loaded.rhai");
/// Name of the built-in default.
pub const DEFAULT_POLICY_NAME: &str = "built-in:least-loaded";

/// Most devices a ranked answer may carry; the queen tries them in order.
pub const MAX_RANKED: usize = 64;

/// Sandbox limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most operations per call (natives that walk a collection count one per element).
    pub max_operations: u64,
    /// Deepest function call nesting.
    pub max_call_levels: usize,
    /// Deepest expression nesting (global, in functions).
    pub max_expr_depth: (usize, usize),
    /// Longest string.
    pub max_string_size: usize,
    /// Largest array.
    pub max_array_size: usize,
    /// Largest map.
    pub max_map_size: usize,
    /// Wall-time budget per call (from when it starts on a worker).
    pub budget: Duration,
    /// Policy calls that run at once (workers; the rest wait, up to 2 s): one per
    /// core, so that wall time measures the script rather than its neighbours.
    pub parallel: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 5_000_000,
            max_call_levels: 32,
            max_expr_depth: (64, 32),
            max_string_size: 64 * 1024,
            max_array_size: 200_000,
            max_map_size: 10_000,
            budget: Duration::from_millis(50),
            parallel: std::thread::available_parallelism().map_or(2, |n| n.get()).max(2),
        }
    }
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from (a path, or the built-in name).
    pub source: String,
    /// The compiled script (shared with the thread that runs it).
    ast: Arc<AST>,
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod weights_tests;
