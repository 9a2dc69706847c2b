//! Windowed statistics of a hive's recent samples, as published. Computed by
//! `link::window`.

use serde::Serialize;

/// Windowed statistics for one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuStats {
    /// The GPU id.
    pub device_id: String,
    /// Mean utilisation.
    pub util_mean_percent: Option<f32>,
    /// Max utilisation.
    pub util_max_percent: Option<f32>,
    /// Max VRAM used.
    pub vram_used_max_bytes: Option<u64>,
}

/// Windowed statistics for a hive.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WindowStats {
    /// The window.
    pub window_ms: u64,
    /// Samples in it.
    pub samples: u32,
    /// Mean CPU%.
    pub cpu_mean_percent: Option<f32>,
    /// Max CPU%.
    pub cpu_max_percent: Option<f32>,
    /// Mean RAM used %.
    pub ram_used_mean_percent: Option<f32>,
    /// Max RAM used %.
    pub ram_used_max_percent: Option<f32>,
    /// Per GPU.
    pub gpus: Vec<GpuStats>,
}
