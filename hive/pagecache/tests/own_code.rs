//! Releasing the test binary's own clean code pages: its RSS of them falls, and the
//! code that runs afterwards still runs (it maps its pages back).

use rbee_pagecache::release_own_code;

/// Resident bytes of this process's executable mappings of its own binary (its code),
/// from /proc/self/smaps.
fn own_code_rss() -> u64 {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut total = 0;
    let mut counting = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.first().is_some_and(|f| f.contains('-') && !f.ends_with(':')) && fields.len() >= 5 {
            counting = fields.len() >= 6 && fields[5] == exe && fields[1].as_bytes()[2] == b'x';
        } else if counting && fields.first() == Some(&"Rss:") {
            total += fields[1].parse::<u64>().unwrap() * 1024;
        }
    }
    total
}

#[test]
fn released_code_leaves_the_rss_and_still_runs() {
    let before = own_code_rss();
    assert!(before > 0, "the test binary runs code from its own mapping");
    let released = release_own_code().unwrap();
    assert!(released.mappings >= 1, "{released:?}");
    assert!(released.resident_bytes > 0, "{released:?}");
    let after = own_code_rss();
    // What the release itself and the smaps reading mapped back again (this unoptimised
    // test binary's code) is less than what the harness's start mapped.
    assert!(after < before, "RSS of the executable's code {before} before, {after} after");
    // Code runs again: its pages fault back in.
    let text = format!("{:?}", (1..100).map(|i| i * i).collect::<Vec<u64>>());
    assert!(text.starts_with("[1, 4, 9"));
    assert!(own_code_rss() > 0);
}
