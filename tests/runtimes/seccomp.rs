//! Live: sysinfo(2) answered through seccomp user notification for real runc containers
//! (busybox-static rootfs, and the host's JDK bound in), with the profile `cgprocfs
//! seccomp-profile` prints.

use crate::common;

use common::bundle::{runc_ready, Bundle};
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// The profile `cgprocfs seccomp-profile` prints for this daemon's socket.
fn profile(d: &Daemon, affinity: bool) -> Value {
    let mut cmd = Command::new(bin());
    cmd.arg("seccomp-profile").arg("--listener").arg(d.seccomp_socket());
    if affinity {
        cmd.arg("--affinity");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn busybox_free_and_uptime_see_the_container_then_the_host_once_the_daemon_stops() {
    let test = "busybox_free_and_uptime_see_the_container_then_the_host_once_the_daemon_stops";
    runc_ready(test);
    let mut d = Daemon::start("seccomp");
    // 256 MiB, one CPU of quota. The script reports, waits while the test kills the worker and
    // upgrades the daemon, reports, waits while the test stops the daemon, reports.
    let script = "free -m; uptime; echo ---; while [ ! -e /tmp/step ]; do sleep 0.1; done; free -m; echo ===; \
                  while [ ! -e /tmp/go ]; do sleep 0.1; done; free -m; uptime";
    // The hook binds the files too, as deployed: BusyBox free takes "Cached" from /proc/meminfo.
    let mut b = Bundle::new("seccomp", script).with_hook(&d.mnt);
    b.config["linux"]["resources"]["cpu"] = json!({"quota": 100000, "period": 100000});
    b.config["linux"]["seccomp"] = profile(&d, false);
    let b = b.write();
    let mut child = b.spawn();
    wait_for(
        "the container's first report",
        Duration::from_secs(30),
        || b.output_file("stdout").contains("---"),
        String::new,
    );
    let first = b.output_file("stdout");
    eprintln!("{first}");
    assert_eq!(mem_total_mib(&first), 256, "free -m inside a 256 MiB container: {first}");
    assert!(first.contains("up 0 min"), "the container is seconds old: {first}");
    assert!(d.log().contains("seccomp: answering sysinfo for a new container"), "{}", d.log());

    // A crashed worker and an upgrade (exec of the keeper) keep the container's fd: a new
    // worker answers.
    let w = d.worker_pid();
    // SAFETY: signals to the worker of the daemon this test started.
    unsafe { libc::kill(w, libc::SIGKILL) };
    wait_for("a new worker", Duration::from_secs(30), || d.worker_pid() != w, String::new);
    let w = d.worker_pid();
    // SAFETY: as above, the keeper.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    wait_for("the upgraded keeper's worker", Duration::from_secs(30), || d.worker_pid() != w, String::new);
    std::fs::write(b.rootfs().join("tmp/step"), "").unwrap();
    wait_for("the second report", Duration::from_secs(30), || b.output_file("stdout").contains("==="), String::new);
    let second = b.output_file("stdout");
    let second = second.split("---").nth(1).unwrap_or_default();
    assert_eq!(mem_total_mib(second), 256, "after a worker crash and an upgrade: {second}");

    // Daemon stopped: the running container keeps working and its sysinfo is the host's
    // again (the kernel would answer ENOSYS if nobody held its notification fd). Its bound
    // files fail with ENOTCONN as documented, so only `uptime` (sysinfo alone) speaks here.
    d.signal_and_wait(libc::SIGTERM);
    let host_before = host_up();
    std::fs::write(b.rootfs().join("tmp/go"), "").unwrap();
    let st = child.wait().unwrap();
    let host_after = host_up();
    let out = b.output_file("stdout");
    let after = out.split("===").nth(1).unwrap_or_default();
    eprintln!("{after}{}", b.output_file("stderr"));
    assert!(st.success() || after.contains(" up "), "container failed: {}", b.output_file("stderr"));
    let line = after.lines().find(|l| l.contains(" up ")).unwrap_or_else(|| panic!("no uptime line: {after}"));
    let up = up_part(line);
    assert!(
        up == host_before || up == host_after,
        "the host's uptime once the daemon is gone: {up:?} vs {host_before:?}"
    );
}

/// The "up ..." part of BusyBox `uptime`.
fn up_part(line: &str) -> String {
    let s = line.split(" up ").nth(1).unwrap_or_default();
    s.split(',').next().unwrap_or_default().trim().to_string()
}

fn host_up() -> String {
    let out = Command::new("busybox").arg("uptime").output().unwrap();
    up_part(&String::from_utf8_lossy(&out.stdout))
}

/// A JDK without container support sizes its heap from sysinfo's total RAM: a quarter of
/// the 256 MiB limit with the daemon answering, a quarter of the host without.
fn jvm_without_container_support_sizes_its_heap_from_the_limit() {
    let test = "jvm_without_container_support_sizes_its_heap_from_the_limit";
    runc_ready(test);
    programs_ready(test, &["java"]);
    let java = std::fs::canonicalize(
        String::from_utf8(Command::new("sh").args(["-c", "command -v java"]).output().unwrap().stdout).unwrap().trim(),
    )
    .unwrap();
    let d = Daemon::start_with("seccomp-jvm", &["--seccomp-affinity"]);
    // The JVM's own view: Runtime.maxMemory() (the heap it sized from physical memory) and
    // availableProcessors() (from the affinity mask without container support).
    let script = format!("{} -XX:-UseContainerSupport /tmp/P.java; nproc", java.display());
    let mut b = Bundle::new("seccomp-jvm", &script);
    b.config["linux"]["resources"]["cpu"] = json!({"quota": 100000, "period": 100000});
    b.config["linux"]["seccomp"] = profile(&d, true);
    // The host's /usr (the JDK and its libraries) and /etc (its configuration) read-only; the
    // rootfs links /lib* into /usr.
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    for dir in ["/usr", "/etc"] {
        mounts.push(json!({"destination": dir, "type": "bind", "source": dir, "options": ["rbind", "ro"]}));
    }
    for l in ["lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), b.rootfs().join(l)).unwrap();
    }
    std::fs::write(
        b.rootfs().join("tmp/P.java"),
        "class P { public static void main(String[] a) { Runtime r = Runtime.getRuntime(); \
         System.out.println(\"heap \" + r.maxMemory()); \
         System.out.println(\"processors \" + r.availableProcessors()); } }",
    )
    .unwrap();
    let b = b.write();
    let (ok, out, err) = b.run();
    eprintln!("{out}{err}");
    assert!(ok, "{err}");
    let value = |k: &str| -> u64 {
        let l = out.lines().find(|l| l.starts_with(k)).unwrap_or_else(|| panic!("no {k} in {out}"));
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // JDK 17 ergonomics on small memory: MinRAMPercentage (50 %) of 256 MiB; from the host's
    // memory it would be a quarter of that, gigabytes here.
    let heap = value("heap");
    assert!((32 << 20..=128 << 20).contains(&heap), "max heap {heap} is not sized from 256 MiB: {out}");
    // The one CPU of quota, from the answered sched_getaffinity.
    assert_eq!(value("processors"), 1, "{out}");
    assert_eq!(out.lines().last().unwrap().trim(), "1", "nproc: {out}");
}

/// `seccomp-profile` moves the answered calls out of every other rule into one notify rule,
/// whatever the base; applied to the packaged profile it keeps every other rule.
fn profile_gives_the_answered_calls_one_notify_rule() {
    let packaged = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/seccomp/cgprocfs-seccomp.json");
    let base: Value = serde_json::from_str(&std::fs::read_to_string(&packaged).unwrap()).unwrap();
    assert_eq!(base["listenerPath"], "/run/cgprocfs/seccomp.sock");
    let out = Command::new(bin())
        .args(["seccomp-profile", "--affinity", "--listener", "/run/x.sock", "--base"])
        .arg(&packaged)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["listenerPath"], "/run/x.sock");
    assert_eq!(p["defaultAction"], base["defaultAction"]);
    let rules = p["syscalls"].as_array().unwrap();
    let with = |name: &str| -> Vec<&Value> {
        rules.iter().filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name)).collect()
    };
    for name in ["sysinfo", "sched_getaffinity"] {
        let r = with(name);
        assert_eq!(r.len(), 1, "{name} in {} rules", r.len());
        assert_eq!(r[0]["action"], "SCMP_ACT_NOTIFY");
    }
    // Everything else the base allowed is still allowed.
    assert_eq!(with("read").len(), 1);
    assert_eq!(rules.len(), base["syscalls"].as_array().unwrap().len());
    // A base that is not a profile is a clear error.
    let bad = Command::new(bin()).args(["seccomp-profile", "--base", "/proc/self/status"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a JSON seccomp profile"));
}

crate::cgprocfs_tests!(
    busybox_free_and_uptime_see_the_container_then_the_host_once_the_daemon_stops,
    jvm_without_container_support_sizes_its_heap_from_the_limit,
    profile_gives_the_answered_calls_one_notify_rule,
);
