//! Page-cache benchmark (issue 12): a cold read (after `DONTNEED`) against a warm read
//! (after a preload) of one file in one run, the preload's throughput, and the cost of
//! measuring residency with `cachestat` and with `mincore`, scaled to 100 GB.
//!
//! ```text
//! cargo run --release -p rbee-pagecache --example pagecache_bench -- DIR [SIZE_GIB]
//! ```
//! DIR must be on a real disk (not tmpfs). The file is removed at the end.

use std::fs::File;
use std::io::{Read, Write};
use std::time::Instant;

const CHUNK: usize = 8 << 20;

fn read_all(path: &std::path::Path) -> (u64, f64) {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).unwrap();
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    (n, t.elapsed().as_secs_f64())
}

fn per_call_ms(calls: u32, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..calls {
        f();
    }
    t.elapsed().as_secs_f64() * 1000.0 / f64::from(calls)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: pagecache_bench DIR [SIZE_GIB]"));
    let gib: u64 = args.next().map_or(2, |s| s.parse().expect("SIZE_GIB"));
    let size = gib << 30;
    let path = dir.join("rbee-pagecache-bench.bin");
    {
        let mut f = File::create(&path).unwrap();
        let block: Vec<u8> = (0..CHUNK).map(|i| (i * 131 % 251) as u8).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            f.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
    }
    let file = File::open(&path).unwrap();
    let gb = size as f64 / 1e9;
    println!("file: {} GiB at {}", gib, path.display());
    println!("residency method: {}", rbee_pagecache::method(&file).as_str());

    rbee_pagecache::evict(&file).unwrap();
    let (res0, _) = rbee_pagecache::resident_bytes(&file).unwrap();
    let (n, cold) = read_all(&path);
    assert_eq!(n, size);
    println!(
        "cold read (after DONTNEED, {:.1}% resident before): {cold:.2} s, {:.0} MB/s",
        res0 as f64 * 100.0 / size as f64,
        gb * 1000.0 / cold
    );

    // The preload: DONTNEED, then read into the page cache (what PreloadModel does).
    rbee_pagecache::evict(&file).unwrap();
    let (_, preload) = read_all(&path);
    let (res1, _) = rbee_pagecache::resident_bytes(&file).unwrap();
    println!(
        "preload: {preload:.2} s, {:.0} MB/s, {:.1}% resident after",
        gb * 1000.0 / preload,
        res1 as f64 * 100.0 / size as f64
    );
    let (_, warm) = read_all(&path);
    println!("warm read (after preload): {warm:.3} s, {:.0} MB/s", gb * 1000.0 / warm);
    println!("cold / warm: {:.1}x", cold / warm);

    let scale = 100e9 / size as f64;
    match rbee_pagecache::resident_bytes_cachestat(&file) {
        Ok(_) => {
            let ms = per_call_ms(200, || {
                rbee_pagecache::resident_bytes_cachestat(&file).unwrap();
            });
            println!("cachestat: {ms:.4} ms per call on {gib} GiB resident; {:.3} ms per 100 GB", ms * scale);
        }
        Err(e) => println!("cachestat: not available ({e})"),
    }
    let ms = per_call_ms(10, || {
        rbee_pagecache::resident_bytes_mincore(&file).unwrap();
    });
    println!("mincore: {ms:.2} ms per call on {gib} GiB resident; {:.0} ms per 100 GB", ms * scale);
    rbee_pagecache::evict(&file).unwrap();
    let ms = per_call_ms(200, || {
        rbee_pagecache::resident_bytes(&file).unwrap();
    });
    println!("cachestat, file cold: {ms:.4} ms per call; {:.3} ms per 100 GB", ms * scale);
    drop(file);
    std::fs::remove_file(&path).unwrap();
}
