//! The preloader's one way into the catalog: a model's page-cache residency and whether
//! it is kept warm (see [`crate::preload`]). Published behind the deadband of
//! [`crate::preload::residency::deadband`], unless forced (after a preload or evict).

use super::Models;

impl Models {
    /// Sets `id`'s resident bytes (`None` keeps the last figure) and warm flag, if the
    /// model is still in the catalog. A figure within the deadband of the published one
    /// is not published unless `force`.
    pub fn update_residency(&self, id: &str, resident: Option<u64>, warm: bool, force: bool) {
        self.inner.catalog.update(id, |e| {
            let mut changed = e.warm != warm;
            e.warm = warm;
            // Never more than the model's size (a file may grow under a stale entry).
            let resident = resident.map(|r| r.min(e.size_bytes));
            if let Some(r) = resident
                && (force || crate::preload::residency::moved(e.resident_bytes, Some(r), e.size_bytes))
                && e.resident_bytes != Some(r)
            {
                e.resident_bytes = Some(r);
                changed = true;
            }
            changed
        });
    }
}
