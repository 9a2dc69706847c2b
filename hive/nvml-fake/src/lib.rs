//! A stand-in `libnvidia-ml.so` for tests and demos: the NVML C functions the hive
//! calls, with their real signatures and versioned structs, answered from a scenario
//! file named by `RBEE_FAKE_NVML_SCENARIO` (see [`scenario`]). The hive loads it
//! through nvml-wrapper's normal path: `hive serve --nvml-lib PATH`.
//!
//! Faults a scenario can inject: a failing `nvmlInit_v2`, a function that answers
//! NOT_SUPPORTED for one GPU, GPU_IS_LOST from a time (and answering again from a
//! later one), XID events at given times, an error (e.g. NO_PERMISSION) on the
//! process list, a GPU that appears later, FUNCTION_NOT_FOUND for named functions,
//! and NVLink links that go down (and up). Topology (NUMA node, CPU affinity, PCIe
//! levels, NVLink, MIG instances) is described in [`scenario::topology`]; `scenarios/` ships a
//! DGX-style box (`dgx8`), a two-socket PCIe box (`pcie2x4`) and a MIG GPU (`mig`). A symbol that is really absent, as on an old driver, needs another
//! library: the `rbee-nvml-fake-old-driver` crate builds these sources without the
//! functions in [`symbols::OPTIONAL`].
//!
//! Not the workspace's `forbid(unsafe_code)`: C exports write through raw pointers.
//! The unsafe blocks are in `exports` only, each small and with its SAFETY reason.

/// Exports its items; the old-driver build defines it to drop them instead.
macro_rules! optional_export {
    ($($item:item)*) => { $($item)* };
}

pub mod codes;
pub mod exports;
pub mod scenario;
mod state;
pub mod symbols;

#[cfg(test)]
mod tests;
