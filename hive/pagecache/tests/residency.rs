//! Residency against the kernel's own view: a file just read is fully cached, one just
//! evicted is not, by both methods. The files live under the target directory (a real
//! disk; a tmpfs file cannot be evicted).

use std::fs::File;
use std::io::{Read, Write};

use rbee_pagecache::{evict, resident_bytes, resident_bytes_mincore};

#[test]
fn read_file_is_resident_and_evicted_file_is_not() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("f");
    let mut f = File::create(&path).unwrap();
    f.write_all(&vec![7u8; 8 << 20]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut f = File::open(&path).unwrap();
    evict(&f).unwrap();
    let (cold, _) = resident_bytes(&f).unwrap();
    assert!(cold < 1 << 20, "after DONTNEED {cold} bytes resident");
    assert!(resident_bytes_mincore(&f).unwrap() < 1 << 20);
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    let (warm, _) = resident_bytes(&f).unwrap();
    assert_eq!(warm, 8 << 20);
    assert_eq!(resident_bytes_mincore(&f).unwrap(), 8 << 20);
}

#[test]
fn empty_file_has_nothing_resident() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("empty");
    File::create(&path).unwrap();
    let f = File::open(&path).unwrap();
    assert_eq!(resident_bytes(&f).unwrap().0, 0);
    assert_eq!(resident_bytes_mincore(&f).unwrap(), 0);
}
