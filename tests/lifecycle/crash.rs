//! Crash safety, live: containers' bind mounts keep working while the serving process is
//! killed and the daemon upgraded. Readers in limited cgroups, each in its own mount namespace
//! with the views bound over /proc and /sys, read every served file in a tight loop; the test
//! counts failed and wrong reads (must be 0) and reports the longest stall.

use crate::common;

use common::*;
use std::time::Duration;

/// Reads the bound files in a loop for DURATION seconds; prints
/// `reads failures wrong longest_read_us`.
const READER: &str = r#"
import sys, time
dur, want_mem, want_online = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] + "\n"
files = ["/proc/meminfo", "/proc/cpuinfo", "/sys/devices/system/cpu/online"]
n = fails = wrong = 0
worst = 0.0
end = time.monotonic() + dur
while time.monotonic() < end:
    for f in files:
        t = time.monotonic()
        try:
            with open(f) as fh:
                data = fh.read()
        except OSError as e:
            fails += 1
            sys.stderr.write(f"{f}: {e}\n")
            continue
        worst = max(worst, time.monotonic() - t)
        n += 1
        if f.endswith("meminfo"):
            ok = data.startswith("MemTotal:") and int(data.split()[1]) == want_mem
        elif f.endswith("online"):
            ok = data == want_online
        else:
            ok = data.count("processor\t:") == 1
        if not ok:
            wrong += 1
            sys.stderr.write(f"{f}: unexpected content {data[:80]!r}\n")
print(n, fails, wrong, int(worst * 1e6))
"#;

fn kill_and_upgrade_are_invisible_to_readers() {
    live_ready("kill_and_upgrade_are_invisible_to_readers");
    let d = Daemon::start("crash");
    let secs = 6;
    let cgs: Vec<(TestCgroup, u64)> = (0..8u64)
        .map(|i| {
            let mib = 64 + 16 * i;
            let cg = TestCgroup::new(
                "crash",
                &Limits { memory: Some(mib << 20), cpu: Some((50_000, 100_000)), ..Default::default() },
            );
            (cg, mib * 1024)
        })
        .collect();
    let binds = ["proc/meminfo", "proc/cpuinfo", "sys/devices/system/cpu/online"]
        .iter()
        .map(|f| format!("mount --bind {} /{f}", d.path(f).display()))
        .collect::<Vec<_>>()
        .join(" && ");
    let readers: Vec<_> = cgs
        .iter()
        .map(|(cg, kb)| {
            let cmd = format!("unshare -m sh -c '{binds} && exec python3 -c \"$0\" {secs} {kb} 0' '{READER}'");
            cg.command(&cmd).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();

    // While they read: SIGKILL the worker three times, upgrade once, and kill once more.
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..3 {
        let w = d.worker_pid();
        // SAFETY: the worker is a child of the daemon this test started.
        unsafe { libc::kill(w, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(700));
    }
    let up = std::process::Command::new(bin()).args(["upgrade", "--pid", &d.pid().to_string()]).output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: as above.
    unsafe { libc::kill(d.worker_pid(), libc::SIGKILL) };

    let (mut reads, mut fails, mut wrong, mut worst) = (0u64, 0u64, 0u64, 0u64);
    for r in readers {
        let out = r.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "reader failed: {stderr}");
        let v: Vec<u64> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(v.len(), 4, "reader output {:?} {stderr}", out.stdout);
        assert_eq!(v[1] + v[2], 0, "reader errors: {stderr}");
        reads += v[0];
        fails += v[1];
        wrong += v[2];
        worst = worst.max(v[3]);
    }
    eprintln!(
        "crash test: {reads} reads by 8 readers, {fails} failed, {wrong} wrong, longest read {} ms",
        worst / 1000
    );
    assert!(reads > 8 * 100, "readers made too little progress: {reads}");
    assert_eq!((fails, wrong), (0, 0));
    // Bounded: a reader waits for at most a worker restart, never for a hang.
    assert!(worst < 5_000_000, "a read stalled {} ms", worst / 1000);
}

/// A panic in any thread of the worker (here the sampler, by fault injection) ends the worker,
/// so the keeper replaces it, instead of leaving a worker that lost a thread.
fn a_panicking_thread_takes_the_worker_down_and_it_is_replaced() {
    live_ready("a_panicking_thread_takes_the_worker_down_and_it_is_replaced");
    let d = Daemon::start_with_env("panic", &[], &[("CGPROCFS_TEST_PANIC", "sampler")]);
    let t = std::time::Instant::now();
    while !d.log().contains("worker died") {
        assert!(t.elapsed() < Duration::from_secs(10), "the worker lived on without its sampler:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.log().contains("panicked"), "{}", d.log());
    // The connection is kept: reads go on being answered by the next workers.
    assert!(std::fs::read_to_string(d.path("proc/meminfo")).unwrap().starts_with("MemTotal:"));
}

/// `kill -STOP` / `kill -CONT` (or a tracer attaching) interrupts the worker's and the keeper's
/// waits; neither may take that for a request to stop.
fn stop_and_continue_do_not_restart_the_worker() {
    live_ready("stop_and_continue_do_not_restart_the_worker");
    let d = Daemon::start("stopcont");
    let w = d.worker_pid();
    for pid in [w, d.pid()] {
        // SAFETY: signals to processes of the daemon this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(std::fs::read_to_string(d.path("proc/meminfo")).unwrap().starts_with("MemTotal:"));
    assert_eq!(d.worker_pid(), w, "the worker was restarted:\n{}", d.log());
    assert!(!d.log().contains("worker died"), "{}", d.log());
}

crate::cgprocfs_tests!(
    kill_and_upgrade_are_invisible_to_readers,
    a_panicking_thread_takes_the_worker_down_and_it_is_replaced,
    stop_and_continue_do_not_restart_the_worker,
);
