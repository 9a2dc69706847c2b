//! The preloader as a device source: each sample gets the preload records and the
//! measured read speeds. Residency itself travels in the catalog (capabilities).

use rbee_shared::{Capabilities, DeviceSourceKind, Sample};

use super::Preloader;
use crate::HiveError;
use crate::source::DeviceSource;

/// The preloader, seen by the monitor.
pub struct PreloadSource {
    /// The preloader.
    preloader: Preloader,
}

impl PreloadSource {
    /// Over `preloader`.
    pub fn new(preloader: Preloader) -> Self {
        Self { preloader }
    }
}

impl DeviceSource for PreloadSource {
    fn kind(&self) -> DeviceSourceKind {
        DeviceSourceKind::None
    }

    fn scan(&mut self, _caps: &mut Capabilities) -> Result<(), HiveError> {
        Ok(())
    }

    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError> {
        sample.preloads = self.preloader.records();
        let bw = self.preloader.bandwidth();
        sample.read_bandwidth = (bw.disk_bytes_per_s.is_some() || bw.ram_bytes_per_s.is_some()).then_some(bw);
        Ok(())
    }
}
