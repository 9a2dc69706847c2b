//! The incremental change between two capability versions: computed by the hive,
//! applied by the queen. Applying `CapabilityDiff::between(a, b)` to `a` gives `b`.

use std::collections::BTreeMap;

use crate::{Backend, CpuInfo, DiffError, GpuDevice, ModelEntry, VersionedCapabilities};

/// The change from `base_version` to `new_version`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapabilityDiff {
    /// The version this diff applies to.
    pub base_version: u64,
    /// The version after applying it.
    pub new_version: u64,
    /// GPUs that appeared.
    pub gpus_added: Vec<GpuDevice>,
    /// Ids of GPUs that went away.
    pub gpus_removed: Vec<String>,
    /// The full new record of GPUs whose description changed.
    pub gpus_changed: Vec<GpuDevice>,
    /// The new CPU description, when it changed.
    pub cpu: Option<CpuInfo>,
    /// The new RAM total, when it changed.
    pub ram_total_bytes: Option<u64>,
    /// The new backend list, when it changed.
    pub backends: Option<Vec<Backend>>,
    /// The new label set, when it changed.
    pub labels: Option<BTreeMap<String, String>>,
    /// Models that appeared in the catalog.
    pub models_added: Vec<ModelEntry>,
    /// Ids of models that left the catalog.
    pub models_removed: Vec<String>,
    /// The full new record of models whose state or files changed.
    pub models_changed: Vec<ModelEntry>,
}

impl CapabilityDiff {
    /// The diff that turns `base` into `new`.
    pub fn between(base: &VersionedCapabilities, new: &VersionedCapabilities) -> Self {
        let (a, b) = (&base.caps, &new.caps);
        let mut diff = Self { base_version: base.version, new_version: new.version, ..Self::default() };
        for (id, gpu) in &b.gpus {
            match a.gpus.get(id) {
                None => diff.gpus_added.push(gpu.clone()),
                Some(old) if old != gpu => diff.gpus_changed.push(gpu.clone()),
                Some(_) => {}
            }
        }
        diff.gpus_removed = a.gpus.keys().filter(|id| !b.gpus.contains_key(*id)).cloned().collect();
        diff.cpu = (a.cpu != b.cpu).then(|| b.cpu.clone());
        diff.ram_total_bytes = (a.ram_total_bytes != b.ram_total_bytes).then_some(b.ram_total_bytes);
        diff.backends = (a.backends != b.backends).then(|| b.backends.clone());
        diff.labels = (a.labels != b.labels).then(|| b.labels.clone());
        for (id, model) in &b.models {
            match a.models.get(id) {
                None => diff.models_added.push(model.clone()),
                Some(old) if old != model => diff.models_changed.push(model.clone()),
                Some(_) => {}
            }
        }
        diff.models_removed = a.models.keys().filter(|id| !b.models.contains_key(*id)).cloned().collect();
        diff
    }

    /// True when the diff changes nothing but the version.
    pub fn is_empty(&self) -> bool {
        self.gpus_added.is_empty()
            && self.gpus_removed.is_empty()
            && self.gpus_changed.is_empty()
            && self.cpu.is_none()
            && self.ram_total_bytes.is_none()
            && self.backends.is_none()
            && self.labels.is_none()
            && self.models_added.is_empty()
            && self.models_removed.is_empty()
            && self.models_changed.is_empty()
    }

    /// Applies the diff to `view`. The view must hold exactly `base_version`; on any
    /// error the view is left untouched.
    pub fn apply_to(&self, view: &mut VersionedCapabilities) -> Result<(), DiffError> {
        if self.base_version != view.version {
            return Err(DiffError::BaseMismatch { held: view.version, base: self.base_version });
        }
        if self.new_version <= self.base_version {
            return Err(DiffError::NotForward { base: self.base_version, new: self.new_version });
        }
        let mut gpus = view.caps.gpus.clone();
        for id in &self.gpus_removed {
            if gpus.remove(id).is_none() {
                return Err(DiffError::Inconsistent(format!("removes unknown gpu {id}")));
            }
        }
        for gpu in &self.gpus_changed {
            match gpus.get_mut(&gpu.id) {
                Some(slot) => *slot = gpu.clone(),
                None => return Err(DiffError::Inconsistent(format!("changes unknown gpu {}", gpu.id))),
            }
        }
        for gpu in &self.gpus_added {
            if gpus.insert(gpu.id.clone(), gpu.clone()).is_some() {
                return Err(DiffError::Inconsistent(format!("adds gpu {} that is already held", gpu.id)));
            }
        }
        let mut models = view.caps.models.clone();
        for id in &self.models_removed {
            if models.remove(id).is_none() {
                return Err(DiffError::Inconsistent(format!("removes unknown model {id}")));
            }
        }
        for model in &self.models_changed {
            match models.get_mut(&model.id) {
                Some(slot) => *slot = model.clone(),
                None => return Err(DiffError::Inconsistent(format!("changes unknown model {}", model.id))),
            }
        }
        for model in &self.models_added {
            if models.insert(model.id.clone(), model.clone()).is_some() {
                return Err(DiffError::Inconsistent(format!("adds model {} that is already held", model.id)));
            }
        }
        view.caps.gpus = gpus;
        view.caps.models = models;
        if let Some(cpu) = &self.cpu {
            view.caps.cpu = cpu.clone();
        }
        if let Some(ram) = self.ram_total_bytes {
            view.caps.ram_total_bytes = ram;
        }
        if let Some(b) = &self.backends {
            view.caps.backends = b.clone();
        }
        if let Some(l) = &self.labels {
            view.caps.labels = l.clone();
        }
        view.version = self.new_version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capabilities, ComputeCapability, MigMode};
    use proptest::prelude::*;

    fn gpu_strategy() -> impl Strategy<Value = GpuDevice> {
        (0u8..6, 0u32..8, "[a-z ]{0,8}", 0u64..100, prop::option::of(0u32..1000), any::<bool>()).prop_map(
            |(id, index, name, gib, power, mig)| GpuDevice {
                id: format!("GPU-{id}"),
                index,
                name,
                pci_bus_id: format!("0000:{id:02x}:00.0"),
                compute_capability: Some(ComputeCapability { major: 9, minor: 0 }),
                vram_total_bytes: gib << 30,
                driver_version: Some("550.54".into()),
                cuda_version: None,
                power_limit_mw: power,
                mig_mode: if mig { MigMode::Enabled } else { MigMode::NotReported },
                topology: Default::default(),
            },
        )
    }

    fn model_strategy() -> impl Strategy<Value = crate::ModelEntry> {
        (0u8..5, 0u8..3, 0u64..1000).prop_map(|(id, state, size)| crate::ModelEntry {
            id: format!("m{id}"),
            state: [crate::ModelState::Downloading, crate::ModelState::Ready, crate::ModelState::Failed]
                [state as usize],
            files: vec![crate::ModelFile { path: "w.bin".into(), size_bytes: size, sha256: None }],
            size_bytes: size,
            error: None,
            resident_bytes: None,
            warm: false,
        })
    }

    fn caps_strategy() -> impl Strategy<Value = Capabilities> {
        (
            (prop::collection::vec(gpu_strategy(), 0..6), prop::collection::vec(model_strategy(), 0..4)),
            "[a-z]{0,6}",
            prop::option::of(1u32..64),
            1u32..128,
            0u64..1 << 40,
            any::<bool>(),
            prop::collection::btree_map("[a-z]{1,3}", "[a-z]{0,3}", 0..3),
        )
            .prop_map(|((gpus, models), model, physical, logical, ram, cuda, labels)| Capabilities {
                gpus: gpus.into_iter().map(|g| (g.id.clone(), g)).collect(),
                cpu: CpuInfo { model, physical_cores: physical, logical_cores: logical },
                ram_total_bytes: ram,
                backends: if cuda { vec![Backend::Cpu, Backend::Cuda] } else { vec![Backend::Cpu] },
                labels,
                models: models.into_iter().map(|m| (m.id.clone(), m)).collect(),
            })
    }

    proptest! {
        #[test]
        fn applying_the_diff_of_a_and_b_to_a_gives_b(a in caps_strategy(), b in caps_strategy(), v in 1u64..1000) {
            let a = VersionedCapabilities { version: v, caps: a };
            let b = VersionedCapabilities { version: v + 1, caps: b };
            let diff = CapabilityDiff::between(&a, &b);
            let mut view = a.clone();
            diff.apply_to(&mut view).unwrap();
            prop_assert_eq!(view, b);
        }

        #[test]
        fn a_diff_never_applies_to_another_base(a in caps_strategy(), b in caps_strategy(), v in 1u64..1000, off in 1u64..5) {
            let a = VersionedCapabilities { version: v, caps: a };
            let b = VersionedCapabilities { version: v + 1, caps: b };
            let diff = CapabilityDiff::between(&a, &b);
            let mut other = VersionedCapabilities { version: v + off, caps: a.caps.clone() };
            let before = other.clone();
            prop_assert!(diff.apply_to(&mut other).is_err());
            prop_assert_eq!(other, before);
        }
    }

    #[test]
    fn identical_capabilities_give_an_empty_diff() {
        let a = VersionedCapabilities { version: 3, caps: Capabilities::default() };
        let b = VersionedCapabilities { version: 4, ..a.clone() };
        assert!(CapabilityDiff::between(&a, &b).is_empty());
    }
}
