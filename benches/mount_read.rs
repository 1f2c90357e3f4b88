//! Reads through a real mount, side by side with the kernel's own files and lxcfs (when the
//! `lxcfs` binary is installed): open + read to EOF + close, from inside a limited cgroup,
//! with 1 reader thread and 2 x cores reader threads. Prints median and p99 per read, reads/s
//! and ratios.   cargo bench --bench mount_read [-- SECONDS]
//! With `CGPROCFS_BENCH_BASELINE=/path/to/an/older/cgprocfs`, that build serves a third mount
//! in the same run (rows "baseline ..."), for before/after comparisons of a change.
//! `CGPROCFS_BENCH_ARGS="--threads 1"` passes extra `serve` options to the main daemon;
//! `MOUNT_READ_ONLY=meminfo` keeps the rows naming meminfo (and the kernel and floor rows).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/fuser_floor.rs"]
mod fuser_floor;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/reads.rs"]
mod reads;

use common::{Daemon, Limits, TestCgroup};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Row {
    name: String,
    threads: usize,
    median_us: f64,
    p99_us: f64,
    per_sec: f64,
}

fn measure(name: &str, path: &Path, threads: usize, secs: f64) -> Row {
    let st = reads::measure(path, threads, secs);
    Row { name: name.to_string(), threads, median_us: st.median_us, p99_us: st.p99_us, per_sec: st.per_sec }
}

fn main() {
    // `cargo bench` passes `--bench`; an optional number is the seconds per measurement.
    let secs: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2.0);
    if let Some(mnt) = std::env::var_os(fuser_floor::ENV) {
        return fuser_floor::serve(Path::new(&mnt));
    }
    common::live_ready("mount_read bench");
    // CGPROCFS_BENCH_ARGS: extra `serve` options for the main daemon (e.g. "--threads 1").
    let extra = std::env::var("CGPROCFS_BENCH_ARGS").unwrap_or_default();
    let mut extra: Vec<&str> = extra.split_whitespace().collect();
    extra.push("--bench-floor");
    let d = Daemon::start_with("bench", &extra);
    let spin = Daemon::start_with("bench-spin", &["--spin-us", "50", "--bench-floor"]);
    let lxcfs = peers::Lxcfs::start(common::unique("lxcfs"), &[]);
    let baseline = peers::Baseline::start(common::unique("baseline"));
    // Started before this process joins the limited cgroup: it must not share the quota.
    let fuser = fuser_floor::FuserFloor::start(common::unique("fuser-floor"));
    let cg = TestCgroup::new(
        "bench",
        &Limits { memory: Some(256 << 20), cpu: Some((150_000, 100_000)), ..Default::default() },
    );
    // Move this process (all its threads) into the limited cgroup; remember where it was.
    let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for (_, dir) in &cg.dirs {
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    }
    // Not available_parallelism(): inside the quota it reports the quota, not the cores.
    let cores = common::host_cpus();
    // The cached tree's files of this process's container (this process is its "init"), as
    // the OCI hook binds them.
    let own = d.cache().join(cgprocfs::fuse::cached::key_name(std::process::id()).unwrap());
    let mut targets: Vec<(String, PathBuf)> = vec![
        ("kernel /proc/meminfo".into(), "/proc/meminfo".into()),
        ("cgprocfs FUSE floor (constant)".into(), d.path(".bench/floor")),
        ("cgprocfs online (small file)".into(), d.path("sys/devices/system/cpu/online")),
        ("cgprocfs meminfo".into(), d.path("proc/meminfo")),
        ("cgprocfs meminfo, --spin-us 50".into(), spin.path("proc/meminfo")),
        ("cgprocfs floor, --spin-us 50".into(), spin.path(".bench/floor")),
        ("cgprocfs cpuinfo".into(), d.path("proc/cpuinfo")),
        ("cgprocfs cached meminfo".into(), own.join("proc/meminfo")),
        ("kernel /proc/stat".into(), "/proc/stat".into()),
        ("cgprocfs stat".into(), d.path("proc/stat")),
        ("cgprocfs cached stat".into(), own.join("proc/stat")),
        ("cgprocfs cached loadavg".into(), own.join("proc/loadavg")),
        ("kernel /proc/pressure/memory".into(), "/proc/pressure/memory".into()),
        ("cgprocfs pressure/memory".into(), d.path("proc/pressure/memory")),
        // The trigger connection's (a writable superblock, fuse/psi.rs): what a hook- or
        // run-bound container reads there.
        ("cgprocfs trigger pressure/memory".into(), d.psi().join("proc/pressure/memory")),
    ];
    if let Some(f) = &fuser {
        targets.push(("fuser floor (constant)".into(), f.file()));
    }
    if let Some(b) = &baseline {
        targets.push(("baseline meminfo".into(), b.mnt().join("proc/meminfo")));
        targets.push(("baseline stat".into(), b.mnt().join("proc/stat")));
    }
    if let Some(peers::Lxcfs { mnt: m, .. }) = &lxcfs {
        targets.push(("lxcfs meminfo".into(), m.join("proc/meminfo")));
        targets.push(("lxcfs cpuinfo".into(), m.join("proc/cpuinfo")));
        targets.push(("lxcfs stat".into(), m.join("proc/stat")));
    }
    // MOUNT_READ_ONLY=<text> keeps the rows whose name contains it (quick experiments).
    if let Ok(only) = std::env::var("MOUNT_READ_ONLY") {
        targets.retain(|(name, _)| name.contains(&only) || name.starts_with("kernel") || name.contains("floor"));
    }
    let mut rows = Vec::new();
    for threads in [1, 2, 2 * cores] {
        for (name, p) in &targets {
            rows.push(measure(name, p, threads, secs));
        }
    }
    let stale = staleness(&cg, &own.join("proc/meminfo"));
    // Back to the original cgroups so the test cgroup can be removed.
    for line in before.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctrl, path) = (it.next(), it.next().unwrap_or(""), it.next().unwrap_or("/"));
        for (c, dir) in &cg.dirs {
            if *c == ctrl || ((c.is_empty() || *c == "unified") && ctrl.is_empty()) {
                let top = dir.parent().unwrap();
                let _ = std::fs::write(
                    top.join(path.trim_start_matches('/')).join("cgroup.procs"),
                    std::process::id().to_string(),
                );
            }
        }
    }
    drop(lxcfs);
    drop(fuser);
    drop(cg);
    drop(d);
    drop(spin);

    let find = |name: &str, t: usize| rows.iter().find(|r| r.name == name && r.threads == t).map(|r| r.median_us);
    println!("\nopen+read+close from a 256 MiB / 1.5 CPU cgroup, {secs} s per row, {cores} cores");
    println!(
        "{:<30} {:>7} {:>10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "file", "threads", "median us", "p99 us", "reads/s", "x kernel", "x floor", "x fuser", "x lxcfs"
    );
    for r in &rows {
        let kernel = if r.name.ends_with("stat") {
            "kernel /proc/stat"
        } else if r.name.ends_with("pressure/memory") {
            "kernel /proc/pressure/memory"
        } else {
            "kernel /proc/meminfo"
        };
        let k = find(kernel, r.threads).map_or(String::new(), |k| format!("{:.1}", r.median_us / k));
        let fl = find("cgprocfs FUSE floor (constant)", r.threads)
            .map_or(String::new(), |f| format!("{:.2}", r.median_us / f));
        let fu =
            find("fuser floor (constant)", r.threads).map_or("-".to_string(), |f| format!("{:.2}", r.median_us / f));
        let lx_name = if r.name.contains("cpuinfo") { "lxcfs cpuinfo" } else { "lxcfs meminfo" };
        let l = find(lx_name, r.threads).map_or("-".to_string(), |l| format!("{:.2}", r.median_us / l));
        println!(
            "{:<30} {:>7} {:>10.1} {:>10.1} {:>12.0} {:>9} {:>9} {:>9} {:>9}",
            r.name, r.threads, r.median_us, r.p99_us, r.per_sec, k, fl, fu, l
        );
    }
    if let Some((delays, bound)) = stale {
        let ms: Vec<f64> = delays.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let median = ms[ms.len() / 2];
        let max = ms.last().copied().unwrap_or(0.0);
        println!(
            "\ncached meminfo staleness ({} limit changes, read in a tight loop): median {median:.1} ms, max {max:.1} ms; bound {} ms",
            ms.len(),
            bound.as_millis()
        );
    }
}

/// How long after a memory limit changes the cached meminfo shows it: the limit is switched
/// 20 times while this thread reads in a tight loop. Returns the sorted delays and the bound.
fn staleness(cg: &TestCgroup, file: &Path) -> Option<(Vec<Duration>, Duration)> {
    let limit = cg
        .dirs
        .iter()
        .flat_map(|(_, d)| [d.join("memory.limit_in_bytes"), d.join("memory.max")])
        .find(|p| p.exists())?;
    let mut delays = Vec::new();
    for i in 0..20u64 {
        let mib = 256 + 16 * (i % 2 + 1);
        // Let a read fill the page cache first, at a random point of the bound.
        std::thread::sleep(Duration::from_millis(37 + 11 * i));
        let _ = std::fs::read(file);
        std::fs::write(&limit, (mib << 20).to_string()).ok()?;
        let t = Instant::now();
        let want = format!(" {} kB", mib * 1024);
        loop {
            let text = std::fs::read_to_string(file).ok()?;
            if text.lines().next().is_some_and(|l| l.ends_with(&want)) {
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                return None;
            }
        }
        delays.push(t.elapsed());
    }
    let _ = std::fs::write(&limit, (256u64 << 20).to_string());
    delays.sort();
    Some((delays, Duration::from_millis(100)))
}
