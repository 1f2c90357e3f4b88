//! Abuse and scale, live: a container holding 10 000 open handles, others reading in tight
//! loops on every core, readers killed mid-request, a 32-deep hierarchy and 10 000 sibling
//! cgroups. A bystander container's reads must never fail and stay right; its latency is
//! reported (figures in docs/performance.md), not asserted beyond a hang bound.

use crate::common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// Opens `path` N times, reads each once, holds them, prints "ready", sleeps.
const HOLDER: &str = r#"
import resource, sys, time
n = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, n + 64))
fs = []
for i in range(n):
    f = open(sys.argv[1], "rb", buffering=0)
    f.read(100)
    fs.append(f)
print("ready", flush=True)
time.sleep(float(sys.argv[3]))
"#;

fn bystander_survives_handle_hoarding_and_tight_loops() {
    live_ready("bystander_survives_handle_hoarding_and_tight_loops");
    // One container holds 10 000 handles here: above the default quota, which another test covers.
    let d = Daemon::start_with("abuse", &["--handles-per-container", "20000"]);
    let meminfo = d.path("proc/meminfo");
    let hoarder = TestCgroup::new("hoard", &Limits { memory: Some(512 * MIB), ..Default::default() });
    let spinner = TestCgroup::new("spin", &Limits::default());
    let bystander = TestCgroup::new("bystander", &Limits { memory: Some(96 * MIB), ..Default::default() });

    let mut holder = hoarder
        .command(&format!("python3 -c '{HOLDER}' {} 10000 30", meminfo.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the holder could not open its handles");
    let rss_handles = status_kib(d.worker_pid(), "VmRSS:");

    let spin_cmd = format!("sh -c 'while :; do cat {} >/dev/null; done'", meminfo.display());
    let mut spinners: Vec<_> = (0..2 * host_cpus()).map(|_| spinner.command(&spin_cmd).spawn().unwrap()).collect();

    // Readers killed mid-request, again and again.
    for _ in 0..50 {
        let mut c = spinner
            .command(&format!("cat {}", d.path("proc/cpuinfo").display()))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    // The bystander: 3 s of reads, all must succeed with its own numbers.
    let mut lat = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let s = Instant::now();
        let out = bystander.command(&format!("cat {}", meminfo.display())).output().unwrap();
        lat.push(s.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(field(&String::from_utf8_lossy(&out.stdout), "MemTotal"), 96 * 1024);
    }
    for s in spinners.iter_mut() {
        let _ = s.kill();
        let _ = s.wait();
    }
    let _ = holder.kill();
    let _ = holder.wait();
    lat.sort();
    let (median, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
    eprintln!(
        "abuse: bystander {} reads (fork+cat each), median {:?}, p99 {:?}; worker RSS with 10000 handles {} KiB",
        lat.len(),
        median,
        p99,
        rss_handles
    );
    assert!(lat.len() >= 10, "bystander made almost no progress");
    assert!(p99 < Duration::from_secs(5), "bystander stalled: p99 {p99:?}");
    // The daemon still serves after all of it.
    assert_eq!(field(&bystander.run(&format!("cat {}", meminfo.display())), "MemTotal"), 96 * 1024);
}

fn deep_hierarchy_and_many_cgroups() {
    live_ready("deep_hierarchy_and_many_cgroups");
    let d = Daemon::start("deep");
    // Depth 32: the limits sit near the top, the reader at the bottom.
    let mut chain = vec![TestCgroup::new("deep", &Limits { memory: Some(128 * MIB), ..Default::default() })];
    for i in 1..32 {
        let l = if i == 4 { Limits { cpu: Some((50_000, 100_000)), ..Default::default() } } else { Limits::default() };
        let next = chain.last().unwrap().child("d", &l);
        chain.push(next);
    }
    let leaf = chain.last().unwrap();
    assert_eq!(field(&leaf.run(&format!("cat {}", d.path("proc/meminfo").display())), "MemTotal"), 131_072);
    assert_eq!(leaf.run(&format!("cat {}", d.path("sys/devices/system/cpu/online").display())), "0\n");

    // 10 000 sibling cgroups, in the unified tree where one exists (no controllers enabled
    // below the new parent, so they cost the kernel little): nothing in the daemon scales
    // with them.
    let h = cgprocfs::cgroup::Hierarchies::discover(&cgprocfs::Root::new("/")).unwrap();
    let top = h.v2_mount().or(h.v1_mount("cpu")).unwrap().join(unique("many"));
    std::fs::create_dir(&top).unwrap();
    struct Cleanup(std::path::PathBuf, usize);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for i in 0..self.1 {
                let _ = std::fs::remove_dir(self.0.join(i.to_string()));
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let mut many = Cleanup(top.clone(), 0);
    let rss_before = status_kib(d.worker_pid(), "VmRSS:");
    let t = Instant::now();
    for i in 0..10_000 {
        std::fs::create_dir(top.join(i.to_string())).unwrap();
        many.1 = i + 1;
    }
    let created = t.elapsed();
    // A reader in the last of them (and in the 32-deep leaf for the other controllers).
    let last = top.join("9999");
    let out = leaf
        .command(&format!(
            "sh -c 'echo $$ > {}/cgroup.procs && exec cat {}'",
            last.display(),
            d.path("proc/meminfo").display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(field(&String::from_utf8_lossy(&out.stdout), "MemTotal"), 131_072);
    let rss_after = status_kib(d.worker_pid(), "VmRSS:");
    eprintln!("many cgroups: created in {created:?}; worker RSS {rss_before} KiB before, {rss_after} KiB after");
    drop(many);
    // Innermost first, so every parent is empty when its turn comes.
    while let Some(c) = chain.pop() {
        drop(c);
    }
}

/// Opens `path` up to N times and holds what it got; prints how many opened and the errno of
/// the first refusal.
const QUOTA_HOLDER: &str = r#"
import errno, resource, sys, time
n = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, n + 64))
fs, err = [], 0
for i in range(n):
    try:
        fs.append(open(sys.argv[1], "rb", buffering=0))
    except OSError as e:
        err = e.errno
        break
print(len(fs), err, flush=True)
time.sleep(float(sys.argv[3]))
"#;

fn a_container_at_its_handle_quota_leaves_the_others_reading() {
    live_ready("a_container_at_its_handle_quota_leaves_the_others_reading");
    let d = Daemon::start_with("quota", &["--handles-per-container", "1000"]);
    let meminfo = d.path("proc/meminfo");
    let hoarder = TestCgroup::new("quota-hoard", &Limits { memory: Some(512 * MIB), ..Default::default() });
    let bystander = TestCgroup::new("quota-bystander", &Limits { memory: Some(96 * MIB), ..Default::default() });
    let mut holder = hoarder
        .command(&format!("python3 -c '{QUOTA_HOLDER}' {} 3000 30", meminfo.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()), &mut line).unwrap();
    // A second process of the same container is held to the same quota.
    let second = hoarder.command(&format!("cat {}", meminfo.display())).output().unwrap();
    let mut ok = 0;
    for _ in 0..50 {
        let out = bystander.command(&format!("cat {}", meminfo.display())).output().unwrap();
        if out.status.success() && field(&String::from_utf8_lossy(&out.stdout), "MemTotal") == 96 * 1024 {
            ok += 1;
        }
    }
    let _ = holder.kill();
    let _ = holder.wait();
    let got: Vec<i64> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(got, vec![1000, libc::EMFILE as i64], "the hoarder's opens: {line}");
    assert!(!second.status.success(), "the container's other process opened past its quota");
    assert_eq!(ok, 50, "the bystander's reads failed while another container held its quota");
}

/// Short-lived containers (a CI runner's) must not leave a CPU record each behind for ever.
fn short_lived_cgroups_leave_no_records_behind() {
    live_ready("short_lived_cgroups_leave_no_records_behind");
    let d = Daemon::start("records");
    let records = d.own_file("keeper.accounts");
    let count = || std::fs::read_dir(&records).map(|r| r.count()).unwrap_or(0);
    {
        let cgs: Vec<TestCgroup> = (0..20)
            .map(|_| TestCgroup::new("records", &Limits { cpu: Some((50_000, 100_000)), ..Default::default() }))
            .collect();
        for cg in &cgs {
            assert!(cg.run(&format!("cat {}", d.path("proc/stat").display())).starts_with("cpu "));
        }
        assert_eq!(count(), 20, "one record per container read");
    }
    // The cgroups are gone; within two sampling periods their records are too.
    let t = Instant::now();
    while count() > 0 {
        assert!(t.elapsed() < Duration::from_secs(15), "{} records of deleted cgroups left", count());
        std::thread::sleep(Duration::from_millis(200));
    }
}

crate::cgprocfs_tests!(
    bystander_survives_handle_hoarding_and_tight_loops,
    deep_hierarchy_and_many_cgroups,
    a_container_at_its_handle_quota_leaves_the_others_reading,
    short_lived_cgroups_leave_no_records_behind,
);
