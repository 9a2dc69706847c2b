//! The fields the compact form encodes one by one, and the rest (`extras`): fields
//! added to `Sample`/`GpuSample` after the compact form travel whole in `extras`.

use rbee_proto::v1 as pb;

/// The sample without the fields the compact form encodes one by one.
pub(super) fn sample_extras(s: &pb::Sample) -> pb::Sample {
    pb::Sample { gpus: Vec::new(), ..s.clone() }.without_known()
}

/// The GPU sample without the fields the compact form encodes one by one.
pub(super) fn gpu_extras(g: &pb::GpuSample) -> pb::GpuSample {
    g.clone().without_known()
}

/// Dropping (and copying) the fields the compact form knows.
pub(super) trait Known: Sized {
    /// The message with every field the compact form encodes reset.
    fn without_known(self) -> Self;
    /// `extras` with this message's known fields copied in.
    fn known_onto(&self, extras: Self) -> Self;
}

impl Known for pb::Sample {
    fn without_known(mut self) -> Self {
        // Fields added after the compact form stay as they are.
        self.taken_at_unix_ms = 0;
        self.cpu_window_ms = None;
        self.cpu_percent = None;
        self.cpu_per_core_percent = Vec::new();
        self.load_average = None;
        self.ram_total_bytes = 0;
        self.ram_used_bytes = 0;
        self.ram_available_bytes = 0;
        self.swap_total_bytes = None;
        self.swap_used_bytes = None;
        self.uptime_s = None;
        self.gpus = Vec::new();
        self.capability_version = None;
        self
    }
    fn known_onto(&self, mut extras: Self) -> Self {
        extras.taken_at_unix_ms = self.taken_at_unix_ms;
        extras.cpu_window_ms = self.cpu_window_ms;
        extras.cpu_percent = self.cpu_percent;
        extras.cpu_per_core_percent = self.cpu_per_core_percent.clone();
        extras.load_average = self.load_average;
        extras.ram_total_bytes = self.ram_total_bytes;
        extras.ram_used_bytes = self.ram_used_bytes;
        extras.ram_available_bytes = self.ram_available_bytes;
        extras.swap_total_bytes = self.swap_total_bytes;
        extras.swap_used_bytes = self.swap_used_bytes;
        extras.uptime_s = self.uptime_s;
        extras.gpus = self.gpus.clone();
        extras.capability_version = self.capability_version;
        extras
    }
}

impl Known for pb::GpuSample {
    fn without_known(mut self) -> Self {
        // Fields added after the compact form stay as they are.
        self.id = String::new();
        self.index = 0;
        self.vram_used_bytes = None;
        self.vram_free_bytes = None;
        self.gpu_util_percent = None;
        self.mem_util_percent = None;
        self.temperature_c = None;
        self.power_draw_mw = None;
        self.sm_clock_mhz = None;
        self.mem_clock_mhz = None;
        self.ecc_corrected_volatile = None;
        self.ecc_uncorrected_volatile = None;
        self.xid_events = None;
        self.last_xid = None;
        self
    }
    fn known_onto(&self, mut extras: Self) -> Self {
        extras.id = self.id.clone();
        extras.index = self.index;
        extras.vram_used_bytes = self.vram_used_bytes;
        extras.vram_free_bytes = self.vram_free_bytes;
        extras.gpu_util_percent = self.gpu_util_percent;
        extras.mem_util_percent = self.mem_util_percent;
        extras.temperature_c = self.temperature_c;
        extras.power_draw_mw = self.power_draw_mw;
        extras.sm_clock_mhz = self.sm_clock_mhz;
        extras.mem_clock_mhz = self.mem_clock_mhz;
        extras.ecc_corrected_volatile = self.ecc_corrected_volatile;
        extras.ecc_uncorrected_volatile = self.ecc_uncorrected_volatile;
        extras.xid_events = self.xid_events;
        extras.last_xid = self.last_xid;
        extras
    }
}
