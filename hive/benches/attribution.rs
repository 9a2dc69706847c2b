//! The hive's per-sample cost of "who holds each GPU's memory": read `/proc` (and the
//! cgroup files) for every listed process, sort, bound and sum. Real processes (`sleep`)
//! stand in for the GPU's compute processes. Run:
//!
//!     cargo bench -p rbee-hive --bench attribution [-- GPUS PROCESSES_PER_GPU SAMPLES]

use std::process::{Child, Command};
use std::time::Instant;

use rbee_hive::procs::{ProcessAttributor, raw};
use rbee_hive::source::RawProcesses;
use rbee_shared::GpuSample;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (gpus, per_gpu, samples) = (
        args.first().copied().unwrap_or(8),
        args.get(1).copied().unwrap_or(32),
        args.get(2).copied().unwrap_or(200),
    );
    let mut kids: Vec<Child> =
        (0..gpus * per_gpu).map(|_| Command::new("sleep").arg("120").spawn().expect("spawn sleep")).collect();
    let pids: Vec<u32> = kids.iter().map(Child::id).collect();
    let mut a = ProcessAttributor::new(per_gpu);
    let lists = || -> Vec<(String, RawProcesses)> {
        (0..gpus)
            .map(|g| {
                let list = pids[g * per_gpu..(g + 1) * per_gpu].iter().map(|p| raw(*p, 1 << 30)).collect();
                (format!("GPU-{g}"), RawProcesses::Listed(list))
            })
            .collect()
    };
    let fresh = || -> Vec<GpuSample> {
        (0..gpus)
            .map(|g| GpuSample {
                id: format!("GPU-{g}"),
                vram_used_bytes: Some(80 << 30),
                ..GpuSample::default()
            })
            .collect()
    };
    a.attribute(&mut fresh(), lists());
    let cpu =
        || rbee_hive::procs::proc_stat::read(std::path::Path::new("/proc"), std::process::id()).cpu_ticks;
    let cpu_before = cpu();
    let start = Instant::now();
    for _ in 0..samples {
        let mut s = fresh();
        a.attribute(&mut s, lists());
        assert!(s[0].processes.as_ref().is_some_and(|p| p.listed.len() == per_gpu));
    }
    let per = start.elapsed() / samples as u32;
    // CPU time of this process (user + system), which a busy machine does not inflate.
    let cpu_ms = cpu()
        .zip(cpu_before)
        .map(|(a, b)| (a - b) as f64 * 1e3 / rbee_hive::procs::proc_stat::USER_HZ as f64);
    println!(
        "{gpus} GPUs x {per_gpu} processes: {:.2} ms wall per sample ({:.1} us per process), {} CPU per sample, {samples} samples",
        per.as_secs_f64() * 1e3,
        per.as_secs_f64() * 1e6 / (gpus * per_gpu) as f64,
        cpu_ms.map_or("-".into(), |c| format!("{:.2} ms", c / samples as f64)),
    );
    for k in &mut kids {
        let _ = k.kill();
        let _ = k.wait();
    }
}
