//! The index of hive ids to the addresses that hold them, so that checking a
//! discovered id (and finding a hive by id) costs one lookup, not a scan of every
//! hive's view. An address holds the id its hive last claimed until it claims another
//! or is removed.

use std::collections::HashMap;

/// A hive id another address holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the hive id is held by {holder}")]
pub struct IdTaken {
    /// The address that holds it.
    pub holder: String,
}

/// Hive ids and their holders, both ways.
#[derive(Debug, Default)]
pub struct IdIndex {
    /// Hive id to the address that holds it.
    by_id: HashMap<String, String>,
    /// Address to the hive id it holds.
    by_address: HashMap<String, String>,
}

impl IdIndex {
    /// Makes `address` the holder of `hive_id` (dropping the id it held before), unless
    /// another address holds it: then that address is returned and nothing changes.
    pub fn claim(&mut self, hive_id: &str, address: &str) -> Result<(), IdTaken> {
        match self.by_id.get(hive_id) {
            Some(holder) if holder != address => return Err(IdTaken { holder: holder.clone() }),
            Some(_) => return Ok(()),
            None => {}
        }
        if let Some(old) = self.by_address.insert(address.to_owned(), hive_id.to_owned()) {
            self.by_id.remove(&old);
        }
        self.by_id.insert(hive_id.to_owned(), address.to_owned());
        Ok(())
    }

    /// The address holding `hive_id`, if any.
    pub fn holder(&self, hive_id: &str) -> Option<&str> {
        self.by_id.get(hive_id).map(String::as_str)
    }

    /// Forgets what `address` held (it is no longer managed).
    pub fn release(&mut self, address: &str) {
        if let Some(id) = self.by_address.remove(address) {
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_has_one_holder_and_moves_with_its_address() {
        let mut ids = IdIndex::default();
        ids.claim("a", "http://h1").unwrap();
        assert_eq!(ids.claim("a", "http://h2"), Err(IdTaken { holder: "http://h1".into() }));
        ids.claim("a", "http://h1").unwrap();
        // The hive at h1 restarted with another id: "a" is free again.
        ids.claim("b", "http://h1").unwrap();
        assert_eq!(ids.holder("a"), None);
        ids.claim("a", "http://h2").unwrap();
        ids.release("http://h2");
        assert_eq!(ids.holder("a"), None);
        assert_eq!(ids.holder("b"), Some("http://h1"));
    }
}
