//! Live: `cgprocfs run` with real programs from Debian reading the views: procps `free`, `top`,
//! `uptime`, `vmstat`, glibc `getconf`, Python's `os.cpu_count()`.

mod common;

use common::*;
use std::process::Command;

fn run(mountpoint: &std::path::Path, limits: &[&str], script: &str) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("run")
        .args(limits)
        .arg("--mountpoint")
        .arg(mountpoint)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn leftovers(tag: &str) -> Vec<String> {
    let mut v = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        if let Ok(rd) = std::fs::read_dir(h.path()) {
            v.extend(rd.flatten().map(|e| e.path().display().to_string()).filter(|p| p.contains(tag)));
        }
    }
    v
}

#[test]
fn run_starts_its_own_daemon_and_real_programs_see_the_limits() {
    if !live_ready("run_starts_its_own_daemon_and_real_programs_see_the_limits") {
        return;
    }
    if !programs_ready(
        "run_starts_its_own_daemon_and_real_programs_see_the_limits",
        &["free", "top", "uptime", "vmstat", "mpstat", "getconf", "python3"],
    ) {
        return;
    }
    // A mount point nothing serves: run starts a daemon for its duration.
    let unserved = std::env::temp_dir().join(unique("run-unserved"));
    let script = "free -m; top -bn1 -1 | grep '^%Cpu'; uptime; vmstat 1 2 >/dev/null && echo vmstat-ok; \
                  mpstat -P ALL 1 1 | grep -E '^Average: +[0-9]+ ' | wc -l | sed 's/^/mpstat-cpus /'; \
                  getconf _NPROCESSORS_ONLN; echo conf $(getconf _NPROCESSORS_CONF); \
                  python3 -c 'import os; print(\"py\", os.cpu_count())'; exit 7";
    // One CPU of quota: procps top here prints one %Cpu line per CPU only up to a limit
    // it also applies on the host, so the count is checked where it is unambiguous.
    let (code, out, err) = run(&unserved, &["--memory", "256M", "--cpus", "0.5"], script);
    eprintln!("{out}{err}");
    assert_eq!(code, 7, "the command's exit status is returned: {err}");
    let mem = out.lines().find(|l| l.starts_with("Mem:")).expect("free printed Mem:");
    assert_eq!(mem.split_whitespace().nth(1), Some("256"), "{mem}");
    let n = 1;
    assert_eq!(out.lines().filter(|l| l.starts_with("%Cpu")).count(), n, "{out}");
    assert!(out.contains("%Cpu0 ") && !out.contains("%Cpu1"), "{out}");
    assert!(out.lines().any(|l| l.contains("up 0 min")), "{out}");
    assert!(out.contains("vmstat-ok"), "{out}{err}");
    // sysstat's mpstat lists only the container's CPUs.
    assert!(out.contains(&format!("mpstat-cpus {n}")), "{out}");
    assert!(out.lines().any(|l| l.trim() == n.to_string()), "getconf: {out}");
    assert!(out.contains(&format!("py {n}")), "{out}");
    // glibc's _SC_NPROCESSORS_CONF reads `possible`.
    assert!(out.contains(&format!("conf {n}")), "{out}");
    // Nothing left behind: no cgroup, no mount, no daemon directory.
    assert!(leftovers("cgprocfs-run-").is_empty(), "{:?}", leftovers("cgprocfs-run-"));
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains("cgprocfs-run-"));
    let _ = std::fs::remove_dir(&unserved);
}

#[test]
fn run_uses_a_serving_daemon_and_a_cpuset() {
    if !live_ready("run_uses_a_serving_daemon_and_a_cpuset") {
        return;
    }
    let d = Daemon::start("run-served");
    let last = host_cpus() - 1;
    let (code, out, err) = run(
        &d.mnt,
        &["--cpuset", &last.to_string(), "--pids", "64"],
        "grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online; head -1 /proc/meminfo",
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "{out}");
    assert_eq!(lines[1], "0", "{out}");
    // No memory limit: the host's MemTotal.
    let host = std::fs::read_to_string("/proc/meminfo").unwrap();
    assert_eq!(lines[2], host.lines().next().unwrap());
    // The daemon it used is still serving afterwards.
    assert!(std::fs::read_to_string(d.path("proc/meminfo")).unwrap().starts_with("MemTotal:"));
}
