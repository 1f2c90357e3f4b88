//! The daemon's own footprint at scale: worker RSS after 1000 containers have each read every
//! served file, the CPU the load-average sampler uses for 1000 idle containers, and the CPU
//! of an agent in every container (the init of the container's own pid namespace, as in
//! Docker's and Kubernetes' containers) reading `stat`, `meminfo`, `loadavg`, `uptime` and
//! `diskstats` once a second, through the shared tree and through the cached tree.
//! In the same run, with `CGPROCFS_BENCH_BASELINE=/path/to/an/older/cgprocfs`, the same agents
//! on that build's two trees, and on lxcfs (`-l`, its load average thread on) when installed.
//! Two floor rows: the same agents reading `.bench/floor` five times a second instead, the
//! FUSE requests of as many reads with no rendering and no caller lookup: through the shared
//! tree (OPEN, READ, READ at the end, RELEASE), and through the cached tree, which tells the
//! kernel it changed at every GETATTR (GETATTR, READ: what a read of a changed file costs there).
//! The agent rows run in rounds (`SCALE_ROUNDS`, 3 by default), interleaved, every daemon up
//! throughout; each row's median is reported.
//! `SCALE_SKIP_IDLE=1` leaves out the 30 s idle phase; `SCALE_ROWS=cached,shared` runs only those agent rows (of shared, cached, floor,
//! floor-cached, baseline, lxcfs); `SCALE_SKIP_AGENTS=1` the agents (for
//! the footprint at 10 000 containers: `SCALE_SKIP_AGENTS=1 cargo bench --bench scale -- 10000`); `CGPROCFS_BENCH_ARGS="--spin-us 50"` passes
//! extra `serve` options to this build's daemon.
//!   cargo bench --bench scale [-- CONTAINERS]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/peers.rs"]
mod peers;

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
    common::live_ready("scale bench");
    // CGPROCFS_BENCH_ARGS: extra `serve` options for this build's daemon (e.g. "--spin-us 50").
    let extra = std::env::var("CGPROCFS_BENCH_ARGS").unwrap_or_default();
    let mut extra: Vec<&str> = extra.split_whitespace().collect();
    extra.push("--bench-floor");
    // The open-file limit the systemd unit gives the daemon (LimitNOFILE=1048576): the kept
    // directories' and files' share of it (`cgroup::held::budget`) is what a host has, not
    // what this shell was started with.
    let unit = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
    // SAFETY: setrlimit reads one rlimit this function owns.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &unit) } != 0 {
        eprintln!("open-file limit not raised to the unit's: {}", std::io::Error::last_os_error());
    }
    let d = Daemon::start_with("scale", &extra);
    let worker = d.worker_pid();
    let rss0 = status_kib(worker, "VmRSS:");
    let (fds0, slab0) = (open_fds(worker), common::kib_of("/proc/meminfo", "Slab:"));
    let t = Instant::now();
    let cgs: Vec<TestCgroup> =
        (0..n).map(|_| TestCgroup::new("scale", &Limits { memory: Some(64 << 20), ..Default::default() })).collect();
    let mut sleepers: Vec<_> = cgs.iter().map(|cg| cg.command("sleep 600").spawn().unwrap()).collect();
    eprintln!("{n} containers created in {:?}", t.elapsed());
    let files: Vec<String> =
        cgprocfs::catalog::Served::ALL.iter().map(|v| d.path(v.path()).display().to_string()).collect();
    let cmd = format!("cat {} > /dev/null", files.join(" "));
    let t = Instant::now();
    for cg in &cgs {
        cg.run(&cmd);
    }
    eprintln!("{n} x {} files read in {:?}", files.len(), t.elapsed());
    let rss1 = status_kib(worker, "VmRSS:");
    let hwm = status_kib(worker, "VmHWM:");
    // Kept cgroup files and directories are kernel memory, not RSS: their count, and the
    // kernel's slab (the whole host's, so only roughly the worker's) before and after.
    let fds1 = open_fds(worker);
    let slab1 = common::kib_of("/proc/meminfo", "Slab:");

    // Sampler cost: nothing reads now; every container is registered and idle.
    let idle = if std::env::var_os("SCALE_SKIP_IDLE").is_some() { 0 } else { 30 };
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cpu_ticks(worker), Instant::now());
    std::thread::sleep(Duration::from_secs(idle));
    let (c1, secs) = (cpu_ticks(worker), t0.elapsed().as_secs_f64().max(1e-3));
    let cpu_pct = (c1 - c0) as f64 / 100.0 / secs * 100.0;

    // A monitoring agent per container, once a second, for AGENT_SECS: on the shared tree,
    // on each container's own cached files (its key: the agent itself, as a container's init is
    // for the hook), on the floor file, and on the baseline's and lxcfs's trees. Every daemon
    // is up before the first row, a baseline read once by every container as this build was
    // above, and the rows run in rounds, interleaved: each row runs beside the same background
    // (every daemon's sampler), and its median over the rounds is what is reported.
    let skip = std::env::var_os("SCALE_SKIP_AGENTS").is_some();
    let mut rows: Vec<(&str, Vec<Run>)> = Vec::new();
    if !skip {
        // SCALE_ROWS=shared,cached,floor,floor-cached,baseline,lxcfs: only those rows (all when
        // unset).
        let only = std::env::var("SCALE_ROWS").ok();
        let want = |row: &str| only.as_deref().is_none_or(|o| o.split(',').any(|r| r.trim() == row));
        let baseline = want("baseline").then(|| peers::Baseline::start(common::unique("baseline"))).flatten();
        let lxcfs = want("lxcfs").then(|| peers::Lxcfs::start(common::unique("lxcfs"), &["-l"])).flatten();
        type Files<'a> = Box<dyn Fn(u32) -> Vec<std::path::PathBuf> + 'a>;
        // `names` in the cached tree's key directory of the agent's container.
        let own = |cache: std::path::PathBuf, names: &'static [&'static str]| -> Files {
            Box::new(move |pid| {
                let own = cache.join(cgprocfs::fuse::cached::key_name(pid).unwrap_or_default());
                names.iter().map(|f| own.join(f)).collect()
            })
        };
        let mut plan: Vec<(&str, Files, i32)> = Vec::new();
        if want("shared") {
            plan.push((
                "this build, shared tree",
                Box::new(|_| AGENT_FILES.iter().map(|f| d.path(f)).collect()),
                worker,
            ));
        }
        if want("cached") {
            plan.push(("this build, cached tree", own(d.cache(), &AGENT_FILES), worker));
        }
        if want("floor") {
            plan.push((
                "floor, shared tree",
                Box::new(|_| AGENT_FILES.iter().map(|_| d.path(".bench/floor")).collect()),
                worker,
            ));
        }
        if want("floor-cached") {
            plan.push(("floor, cached tree", own(d.cache(), &cgprocfs::fuse::cached::FLOORS), worker));
        }
        if let Some((b, w)) = baseline.as_ref().and_then(|b| Some((b, b.worker_pid()?))) {
            let mnt = b.mnt();
            let all: Vec<String> =
                cgprocfs::catalog::Served::ALL.iter().map(|v| mnt.join(v.path()).display().to_string()).collect();
            let cmd = format!("cat {} > /dev/null 2>&1; true", all.join(" "));
            for cg in &cgs {
                cg.run(&cmd);
            }
            plan.push((
                "baseline, shared tree",
                Box::new(move |_| AGENT_FILES.iter().map(|f| mnt.join(f)).collect()),
                w,
            ));
            plan.push(("baseline, cached tree", own(b.cache(), &AGENT_FILES), w));
        }
        if let Some(l) = &lxcfs {
            let mnt = l.mnt.clone();
            plan.push(("lxcfs -l", Box::new(move |_| AGENT_FILES.iter().map(|f| mnt.join(f)).collect()), l.pid()));
        }
        // SCALE_ROUNDS: how many times each row runs (3 when unset).
        let rounds: usize = std::env::var("SCALE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
        rows = plan.iter().map(|(name, ..)| (*name, Vec::new())).collect();
        for _ in 0..rounds {
            for (i, (_, files, w)) in plan.iter().enumerate() {
                rows[i].1.push(agents(&cgs, files.as_ref(), *w));
            }
        }
    }

    for s in sleepers.iter_mut() {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(cgs);
    println!("\nworker footprint with {n} containers (each with its own memory limit and one process)");
    println!("RSS at start:                         {rss0} KiB");
    println!("RSS after every container read all:   {rss1} KiB (peak {hwm} KiB)");
    println!(
        "open fds at start / after:             {fds0} / {fds1} (kept cgroup directories and files; limit {})",
        fd_limit(worker)
    );
    println!("host slab at start / after:            {slab0} / {slab1} KiB (the whole host's: cgroups created too)");
    println!("load sampling, {n} idle containers:  {cpu_pct:.2} % of one core over {secs:.0} s");
    if !rows.is_empty() {
        println!("agents: {n} containers x {} files each second for {AGENT_SECS} s, CPU of the serving process (sampler included)", AGENT_FILES.len());
    }
    for (name, runs) in rows {
        let mut pcts: Vec<f64> = runs.iter().map(|r| r.0).collect();
        pcts.sort_by(f64::total_cmp);
        let each: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.0)).collect();
        let (reads, failed) = runs.iter().fold((0, 0), |(r, f), x| (r + x.1, f + x.2));
        println!(
            "  {name:<26} {:>6.2} % of one core (median of {}: {}), {reads} reads, {failed} failed",
            pcts[pcts.len() / 2],
            runs.len(),
            each.join(", ")
        );
    }
}

/// Makes the calling (forked, single-threaded) process continue as pid 1 of a new pid
/// namespace: it forks that init, waits for it and exits with its status. Without
/// `CLONE_NEWPID` allowed, it continues as it is.
fn init_of_own_pid_namespace() {
    // SAFETY: unshare and fork in a single-threaded child; the waiting side only waits and
    // leaves with _exit.
    unsafe {
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            return;
        }
        let init = libc::fork();
        if init == 0 {
            return;
        }
        let mut status = 0;
        if init > 0 {
            libc::waitpid(init, &mut status, 0);
        }
        libc::_exit(if init > 0 && libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 1 });
    }
}

/// The soft open-file limit of `pid`.
fn fd_limit(pid: i32) -> String {
    let l = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    l.lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("?")
        .to_string()
}

/// How many fds `pid` holds.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One run of agents: the serving process's CPU in % of one core, the reads done, those that
/// failed.
type Run = (f64, u64, u64);

/// What a node agent reads from each container every second.
const AGENT_FILES: [&str; 5] = ["proc/stat", "proc/meminfo", "proc/loadavg", "proc/uptime", "proc/diskstats"];
/// How long the agents run.
const AGENT_SECS: u64 = 20;

/// Runs one agent process in each cgroup, the init of its own pid namespace, for
/// [`AGENT_SECS`], reading `files(its host pid)` once a second (spread over the second); returns the worker's CPU use in % of one core meanwhile,
/// the reads done and those that failed.
fn agents(cgs: &[TestCgroup], files: &dyn Fn(u32) -> Vec<std::path::PathBuf>, worker: i32) -> Run {
    let dir = std::env::temp_dir().join(common::unique("agents"));
    std::fs::create_dir_all(&dir).unwrap();
    let (c0, t0) = (cpu_ticks(worker), Instant::now());
    let mut pids = Vec::new();
    for (i, cg) in cgs.iter().enumerate() {
        let offset = Duration::from_micros(1_000_000 * i as u64 / cgs.len() as u64);
        let report = dir.join(i.to_string());
        // SAFETY: this bench has no other thread, so the child may run ordinary code; it
        // leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            for (_, d) in &cg.dirs {
                let _ = std::fs::write(d.join("cgroup.procs"), std::process::id().to_string());
            }
            // A container has a pid namespace of its own, and the agent is its init here (the
            // process the hook keys the cached tree by): the daemon finds a container's age
            // from its init, as for Docker's and Kubernetes' containers.
            init_of_own_pid_namespace();
            // Its pid on the host (the daemon's namespace): /proc is still the host's.
            let me: u32 = std::fs::read_link("/proc/self")
                .ok()
                .and_then(|p| p.to_str()?.parse().ok())
                .unwrap_or_else(std::process::id);
            let paths = files(me);
            let (mut reads, mut failed) = (0u64, 0u64);
            std::thread::sleep(offset);
            let start = Instant::now();
            for k in 1..=AGENT_SECS {
                for p in &paths {
                    // (diskstats is empty for a container that did no I/O.)
                    match std::fs::read(p) {
                        Ok(_) => reads += 1,
                        Err(_) => failed += 1,
                    }
                }
                std::thread::sleep((start + Duration::from_secs(k)).saturating_duration_since(Instant::now()));
            }
            let _ = std::fs::write(&report, format!("{reads} {failed}"));
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        pids.push(pid);
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: reaping a child this bench forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    let (c1, secs) = (cpu_ticks(worker), t0.elapsed().as_secs_f64());
    let (mut reads, mut failed) = (0, 0);
    for i in 0..cgs.len() {
        let r = std::fs::read_to_string(dir.join(i.to_string())).unwrap_or_default();
        let v: Vec<u64> = r.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        reads += v.first().copied().unwrap_or(0);
        failed += v.get(1).copied().unwrap_or(AGENT_FILES.len() as u64 * AGENT_SECS);
    }
    let _ = std::fs::remove_dir_all(&dir);
    ((c1 - c0) as f64 / 100.0 / secs * 100.0, reads, failed)
}
