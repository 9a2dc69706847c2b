//! The shared harness (`rbee_hive::test_support`), used by every hive test.

#![allow(dead_code, unused_imports)]

pub use rbee_hive::test_support::*;
