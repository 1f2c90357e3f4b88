//! The daemon's own footprint at scale: worker RSS after 1000 containers have each read every
//! served file, and the CPU the load-average sampler uses for 1000 idle containers.
//!   cargo bench --bench scale [-- CONTAINERS]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{status_kib, Daemon, Limits, TestCgroup};
use std::time::{Duration, Instant};

/// utime + stime of all threads of `pid`, in ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1000);
    if !common::live_ready("scale bench") {
        return;
    }
    let d = Daemon::start("scale");
    let worker = d.worker_pid();
    let rss0 = status_kib(worker, "VmRSS:");
    let t = Instant::now();
    let cgs: Vec<TestCgroup> =
        (0..n).map(|_| TestCgroup::new("scale", &Limits { memory: Some(64 << 20), ..Default::default() })).collect();
    let mut sleepers: Vec<_> = cgs.iter().map(|cg| cg.command("sleep 600").spawn().unwrap()).collect();
    eprintln!("{n} containers created in {:?}", t.elapsed());
    let files: Vec<String> = cgprocfs::view::View::ALL.iter().map(|v| d.path(v.path()).display().to_string()).collect();
    let cmd = format!("cat {} > /dev/null", files.join(" "));
    let t = Instant::now();
    for cg in &cgs {
        cg.run(&cmd);
    }
    eprintln!("{n} x {} files read in {:?}", files.len(), t.elapsed());
    let rss1 = status_kib(worker, "VmRSS:");
    let hwm = status_kib(worker, "VmHWM:");

    // Sampler cost: nothing reads now; every container is registered and idle.
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cpu_ticks(worker), Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let (c1, secs) = (cpu_ticks(worker), t0.elapsed().as_secs_f64());
    let cpu_pct = (c1 - c0) as f64 / 100.0 / secs * 100.0;

    for s in sleepers.iter_mut() {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(cgs);
    println!("\nworker footprint with {n} containers (each with its own memory limit and one process)");
    println!("RSS at start:                         {rss0} KiB");
    println!("RSS after every container read all:   {rss1} KiB (peak {hwm} KiB)");
    println!("load sampling, {n} idle containers:  {cpu_pct:.2} % of one core over {secs:.0} s");
}
