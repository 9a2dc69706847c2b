//! The fake NVML library as an old driver ships it: the same sources as
//! `rbee-nvml-fake`, but the functions in `symbols::OPTIONAL` are not compiled at all,
//! so `dlsym` cannot find them and nvml-wrapper reports them as missing symbols
//! (`FailedToLoadSymbol`), exactly as with an old `libnvidia-ml.so`.
//!
//! Not the workspace's `forbid(unsafe_code)`: the C exports write through raw pointers
//! (see `rbee-nvml-fake`).

// Helpers that only the left-out functions use are unused here.
#![allow(dead_code)]
// ... and so are their imports.
#![allow(unused_imports)]

/// Drops its items: this build does not export them.
macro_rules! optional_export {
    ($($item:item)*) => {};
}

#[path = "../../src/codes.rs"]
mod codes;
#[path = "../../src/exports/mod.rs"]
pub mod exports;
#[path = "../../src/scenario.rs"]
mod scenario;
#[path = "../../src/state.rs"]
mod state;
#[path = "../../src/symbols.rs"]
mod symbols;
