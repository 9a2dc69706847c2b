//! The models directory as a device source: its catalog goes into the capabilities,
//! and each sample gets the download records and the directory's disk space. Both are
//! held to the view budgets ([`rbee_shared::view_budget`]) here, and each sample says
//! what was cut.

use rbee_shared::view_budget::{self, push_cut};
use rbee_shared::{Capabilities, DeviceSourceKind, Sample};

use super::Models;
use crate::HiveError;
use crate::source::DeviceSource;

/// The models directory, seen by the monitor.
pub struct ModelsSource {
    /// The catalog and downloads.
    models: Models,
    /// What the last scan cut from the catalog.
    catalog_cuts: Vec<String>,
}

impl ModelsSource {
    /// Over `models`.
    pub fn new(models: Models) -> Self {
        Self { models, catalog_cuts: Vec::new() }
    }
}

impl DeviceSource for ModelsSource {
    fn kind(&self) -> DeviceSourceKind {
        DeviceSourceKind::None
    }

    fn scan(&mut self, caps: &mut Capabilities) -> Result<(), HiveError> {
        let mut models = self.models.catalog().as_ref().clone();
        self.catalog_cuts = view_budget::cut_catalog(&mut models);
        caps.models = models;
        Ok(())
    }

    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError> {
        sample.downloads = self.models.downloads();
        sample.models_disk = self.models.disk();
        for cut in self.catalog_cuts.iter().cloned().chain(self.models.budget_cuts()) {
            push_cut(&mut sample.cuts, cut);
        }
        view_budget::cut_sample(sample);
        Ok(())
    }
}
