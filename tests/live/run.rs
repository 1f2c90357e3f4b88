//! Live: `cgprocfs run` with real programs from Debian reading the views: procps `free`, `top`,
//! `uptime`, `vmstat`, glibc `getconf`, Python's `os.cpu_count()`.

use crate::common;

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

/// `run` creates `cgprocfs-run-<pid>` cgroups and mount points; one test checks that none is
/// left, so the tests of this file that call `run` take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
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

fn run_starts_its_own_daemon_and_real_programs_see_the_limits() {
    let _turn = serial();
    live_ready("run_starts_its_own_daemon_and_real_programs_see_the_limits");
    programs_ready(
        "run_starts_its_own_daemon_and_real_programs_see_the_limits",
        &["free", "top", "uptime", "vmstat", "mpstat", "getconf", "python3"],
    );
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

fn run_uses_a_serving_daemon_and_a_cpuset() {
    let _turn = serial();
    let test = "run_uses_a_serving_daemon_and_a_cpuset";
    live_ready(test);
    programs_ready(test, &["lscpu", "mpstat", "getconf"]);
    let d = Daemon::start("run-served");
    let last = host_cpus() - 1;
    let sys = "/sys/devices/system/cpu";
    let (code, out, err) = run(
        &d.mnt,
        &["--cpuset", &last.to_string(), "--pids", "64"],
        &format!(
            "grep -c ^processor /proc/cpuinfo; cat {sys}/online; head -1 /proc/meminfo; \
             ls {sys} | grep -c '^cpu[0-9]'; cat {sys}/cpu0/online; cat {sys}/cpu0/topology/core_id; \
             test -e {sys}/cpu1 && echo has-cpu1 || echo no-cpu1; cat {sys}/kernel_max; \
             lscpu | grep '^CPU(s):'; mpstat 1 1 | head -1; getconf _NPROCESSORS_CONF; \
             echo 0 > {sys}/cpu0/online 2>/dev/null || echo read-only; \
             /usr/bin/python3 -c 'import psutil; print(\"psutil\", psutil.cpu_count(), psutil.cpu_count(logical=False))' \
               2>/dev/null || echo no-psutil"
        ),
    );
    assert_eq!(code, 0, "{err}");
    eprintln!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "{out}");
    assert_eq!(lines[1], "0", "{out}");
    // No memory limit: the host's MemTotal.
    let host = std::fs::read_to_string("/proc/meminfo").unwrap();
    assert_eq!(lines[2], host.lines().next().unwrap());
    // The cpu directory: one cpuN, cpu0 standing for the host CPU of the cpuset, online,
    // the rest of the directory the host's, read-only.
    assert_eq!(lines[3], "1", "cpuN directories: {out}");
    assert_eq!(lines[4], "1", "cpu0/online: {out}");
    let host_core = |c: usize| std::fs::read_to_string(format!("{sys}/cpu{c}/topology/core_id")).unwrap();
    assert_eq!(lines[5], host_core(last).trim(), "cpu0 is host cpu{last}: {out}");
    assert_eq!(lines[6], "no-cpu1", "{out}");
    assert_eq!(lines[7], std::fs::read_to_string(format!("{sys}/kernel_max")).unwrap().trim());
    // What lscpu, sysstat and glibc count agrees with cpuinfo.
    assert!(lines[8].ends_with(" 1"), "lscpu: {out}");
    assert!(lines[9].contains("(1 CPU)"), "mpstat header: {out}");
    assert_eq!(lines[10], "1", "_SC_NPROCESSORS_CONF: {out}");
    assert_eq!(lines[11], "read-only", "{out}");
    // psutil counts logical CPUs and, from the cpuN topology files, physical cores.
    if lines[12] == "no-psutil" {
        common::harness::skip("the psutil check needs python3-psutil, which .ci/run installs");
    }
    assert_eq!(lines[12], "psutil 1 1", "{out}");
    // The same names lead the host to its own CPUs (entries are never cached across callers).
    let cpu_dirs = std::fs::read_dir(d.path(sys.trim_start_matches('/')))
        .unwrap()
        .flatten()
        .filter(|e| cgprocfs::fuse::cpudir::cpu_index(&e.file_name().to_string_lossy()).is_some())
        .count();
    assert_eq!(cpu_dirs, host_cpus(), "the host reader sees every CPU");
    let core0 = std::fs::read_to_string(d.path("sys/devices/system/cpu/cpu0/topology/core_id")).unwrap();
    assert_eq!(core0, host_core(0), "cpu0 is the host's cpu0 for the host reader");
    // The daemon it used is still serving afterwards.
    assert!(std::fs::read_to_string(d.path("proc/meminfo")).unwrap().starts_with("MemTotal:"));
}

/// `run` has the daemon answer its command's sysinfo(2), as the packaged seccomp profile does
/// for a container: BusyBox `free` and `uptime` see the limit and the command's age, and with
/// `--seccomp-affinity` so do `nproc` and the affinity mask. Without a listener it goes on with
/// the host's values.
fn run_answers_sysinfo_for_its_command() {
    let _turn = serial();
    let test = "run_answers_sysinfo_for_its_command";
    live_ready(test);
    programs_ready(test, &["busybox", "nproc"]);
    let nowhere = std::path::Path::new("/nonexistent-cgprocfs-mountpoint");
    let (code, out, err) = run(nowhere, &["--memory", "256M"], "busybox free -m; busybox uptime");
    assert_eq!(code, 0, "{err}");
    assert_eq!(mem_total_mib(&out), 256, "{out}");
    assert!(out.contains("up 0 min"), "{out}");
    let (code, out, err) = run(nowhere, &["--memory", "256M", "--cpus", "1", "--seccomp-affinity"], "nproc");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1", "{err}");

    let host = |s: &str| mem_total_mib(s);
    let host_free = String::from_utf8(Command::new("busybox").args(["free", "-m"]).output().unwrap().stdout).unwrap();
    let (code, out, err) = run(nowhere, &["--memory", "256M", "--no-seccomp"], "busybox free -m");
    assert_eq!(code, 0, "{err}");
    assert_eq!(host(&out), host(&host_free), "--no-seccomp: {out}");

    // A serving daemon without a listener: the command runs, with the host's sysinfo.
    let d = Daemon::start_with("run-nolistener", &["--no-seccomp"]);
    let (code, out, err) = run(&d.mnt, &["--memory", "256M"], "busybox free -m");
    assert_eq!(code, 0, "{err}");
    assert_eq!(host(&out), host(&host_free), "{out}");
    assert!(err.contains("sees the host's"), "run says why: {err}");
}

crate::cgprocfs_tests!(
    run_starts_its_own_daemon_and_real_programs_see_the_limits,
    run_uses_a_serving_daemon_and_a_cpuset,
    run_answers_sysinfo_for_its_command,
);
