//! The models directory as a device source: its catalog goes into the capabilities,
//! and each sample gets the download records and the directory's disk space.

use rbee_shared::{Capabilities, DeviceSourceKind, Sample};

use super::Models;
use crate::HiveError;
use crate::source::DeviceSource;

/// The models directory, seen by the monitor.
pub struct ModelsSource {
    /// The catalog and downloads.
    models: Models,
}

impl ModelsSource {
    /// Over `models`.
    pub fn new(models: Models) -> Self {
        Self { models }
    }
}

impl DeviceSource for ModelsSource {
    fn kind(&self) -> DeviceSourceKind {
        DeviceSourceKind::None
    }

    fn scan(&mut self, caps: &mut Capabilities) -> Result<(), HiveError> {
        caps.models = self.models.catalog().as_ref().clone();
        Ok(())
    }

    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError> {
        sample.downloads = self.models.downloads();
        sample.models_disk = self.models.disk();
        Ok(())
    }
}
