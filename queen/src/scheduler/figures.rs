//! The per-device figures a scheduler client reads: what this queen's active
//! reservations hold on each GPU, and what admission would still grant there now.
//!
//! [`placeable`] is the one computation of "free for placement": what the commit of a
//! `Place` (or a dry run) grants on a device, the `rbee_gpu_memory_placeable_bytes`
//! gauge and the Fleet API's `placeable_bytes` all read it, from the same inputs: the
//! VRAM jobs can use ([`usable_vram`]: the total less what the driver reserves), the
//! newest sample's used VRAM and process list, and the book settled with that sample
//! (as the commit settles it first; tried on a copy here, so reading changes nothing).
//! The policy's view (`device.vram_free`, the candidate scan) reads the same formula as
//! of the book's last settlement (upkeep settles once a second); the commit re-checks.

use rbee_shared::GpuProcesses;

use super::book::Book;
use super::{Scheduler, view};
use crate::fleet::{HiveSnapshot, usable_vram};

/// One GPU's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFigures {
    /// The GPU id.
    pub device_id: String,
    /// The GPU index.
    pub index: u32,
    /// Bytes held by this queen's active reservations on the GPU.
    pub reserved: u64,
    /// VRAM jobs can use (total less the driver's reserve); `None` without a reading.
    pub usable: Option<u64>,
    /// What admission would grant on the GPU now; `None` without a VRAM reading.
    pub placeable: Option<u64>,
}

/// Free for placement on one device: `usable - max(observed used, committed)`, where
/// committed is the book's baseline plus its active reservations there, once settled
/// with the sample's `used` and `processes`.
pub fn placeable(
    book: &Book,
    address: &str,
    device_id: &str,
    usable: u64,
    used: u64,
    processes: Option<&GpuProcesses>,
) -> u64 {
    book.free_settled(address, device_id, usable, used, processes)
}

/// The figures of every GPU of a hive, in the order of its capabilities' GPU map.
pub fn gpu_figures(book: &Book, h: &HiveSnapshot) -> Vec<DeviceFigures> {
    let Some(caps) = h.caps.as_ref() else { return Vec::new() };
    let sample = h.latest.as_deref();
    caps.caps
        .gpus
        .values()
        .map(|gpu| {
            let live = sample.and_then(|s| s.gpus.iter().find(|g| g.id == gpu.id));
            let reading = live.and_then(|g| {
                g.vram_used_bytes
                    .map(|used| (usable_vram(gpu.vram_total_bytes, g), used, g.processes.as_ref()))
            });
            DeviceFigures {
                device_id: gpu.id.clone(),
                index: gpu.index,
                reserved: book.reserved(&h.address, &gpu.id),
                usable: reading.map(|(usable, _, _)| usable),
                placeable: reading.map(|(usable, used, processes)| {
                    placeable(book, &h.address, &gpu.id, usable, used, processes)
                }),
            }
        })
        .collect()
}

impl Scheduler {
    /// The figures of every GPU of a hive (the book read-locked briefly).
    pub fn figures(&self, h: &HiveSnapshot) -> Vec<DeviceFigures> {
        gpu_figures(&view::read(&self.book), h)
    }
}
