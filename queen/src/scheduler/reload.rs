//! The watched policy file: an edit is compiled and test-run (under the same budget as
//! any call) before it replaces the policy in use; a refused edit keeps the old policy
//! and is counted and reported by `GetPolicy`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rbee_shared::lock::RwLockExt;

use super::policy::PolicyError;
use super::request::PlaceRequest;
use super::{Loaded, Scheduler};

impl Scheduler {
    /// Compiles a new policy text and test-runs it on the live fleet; swaps it in only
    /// when both succeed.
    pub fn try_replace(&self, source: &str, text: String) -> Result<(), PolicyError> {
        let policy = self.runtime.compile(source, &text)?;
        let probe = PlaceRequest { dry_run: true, ..PlaceRequest::gpu(1) };
        self.runtime.run(&policy, &probe, &self.view())?;
        let mut loaded = self.current.write_unpoisoned();
        *loaded =
            Loaded { policy: Arc::new(policy), at_ms: rbee_shared::time::now_unix_ms(), text: Some(text) };
        drop(loaded);
        self.record_policy();
        Ok(())
    }

    /// Loads the policy file again if it changed since it was last read.
    pub fn reload_once(&self) {
        let Some(path) = &self.settings.policy_file else { return };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(policy = %path.display(), error = %e, "cannot read the policy file; keeping the loaded policy");
                return;
            }
        };
        let same = self.current.read_unpoisoned().text.as_deref() == Some(text.as_str());
        if same {
            return;
        }
        match self.try_replace(&path.display().to_string(), text.clone()) {
            Ok(()) => {
                tracing::info!(policy = %path.display(), "policy file changed; new policy compiled, test-run and loaded")
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(policy = %path.display(), error = %e, "policy edit refused; keeping the previous policy");
                self.note_error(format!("policy edit {} refused: {e}", path.display()));
                // Remember the refused text so the same broken edit is not retried every tick.
                self.current.write_unpoisoned().text = Some(text);
            }
        }
    }
}
