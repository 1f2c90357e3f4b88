//! Live: the cached tree (src/fuse/cached.rs). Commands started by `cgprocfs run` get their own
//! files, read from the kernel's page cache; these tests check that each reads only its own
//! container, whole, through every read path, while limits change, neighbours read, the
//! worker is killed, and that nobody else reads them.

use crate::common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Reads /proc/meminfo and /proc/stat for DURATION seconds through read(2), sendfile(2) and
/// pread at offset 0, checking every content; prints `reads failures wrong`.
const READER: &str = r#"
import os, sys, time
dur, want_mem, cpus = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = os.open("/dev/null", os.O_WRONLY)
n = fails = wrong = 0
end = time.monotonic() + dur
def whole(path, how):
    fd = os.open(path, os.O_RDONLY)
    try:
        if how == 0:
            chunks = []
            while True:
                b = os.read(fd, 65536)
                if not b:
                    return b"".join(chunks)
                chunks.append(b)
        if how == 1:
            size = os.fstat(fd).st_size
            sent = os.sendfile(out, fd, 0, 1 << 20)
            data = os.pread(fd, 1 << 20, 0)
            if sent != len(data) and sent != size:
                raise OSError(f"sendfile gave {sent} bytes, the file has {len(data)}")
            return data
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
i = first = 0
while time.monotonic() < end:
    i += 1
    for path in ("/proc/meminfo", "/proc/stat"):
        try:
            data = whole(path, i % 3).decode()
        except OSError as e:
            fails += 1
            sys.stderr.write(f"{path}: {e}\n")
            continue
        n += 1
        lines = data.splitlines()
        if path.endswith("meminfo"):
            # Whole (as many lines as the first read) and this container's (its limit).
            first = first or len(lines)
            ok = data.endswith("kB\n") and len(lines) == first and lines[0].startswith("MemTotal:") and int(lines[0].split()[1]) == want_mem
        else:
            ok = data.endswith("\n") and sum(1 for l in lines if l.startswith("cpu") and l[3].isdigit()) == cpus and lines[0].startswith("cpu ")
        if not ok:
            wrong += 1
            sys.stderr.write(f"{path}: unexpected content {data[:60]!r}...{data[-40:]!r}\n")
print(n, fails, wrong)
"#;

/// `cgprocfs run` against daemon `d` with `limits`, running `sh -c script`.
fn run(d: &Daemon, limits: &[&str], script: &str) -> Command {
    let mut c = Command::new(bin());
    c.arg("run").args(limits).arg("--mountpoint").arg(&d.mnt).arg("--no-seccomp").args(["--", "sh", "-c", script]);
    c
}

fn output(mut c: Command) -> (String, String) {
    let out = c.output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "run failed: {o}{e}");
    (o, e)
}

/// Counts from the reader's last line: (reads, failures, wrong).
fn counts(out: &str, err: &str) -> (u64, u64, u64) {
    let v: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    assert_eq!(v.len(), 3, "reader output: {out} {err}");
    (v[0], v[1], v[2])
}

fn run_binds_the_commands_own_cached_files_which_follow_its_limits() {
    live_ready("run_binds_the_commands_own_cached_files_which_follow_its_limits");
    let d = Daemon::start("cached-own");
    assert!(is_mounted(&d.cache()), "the keeper mounts the cached tree beside its pid file");
    let script = "findmnt -n -o SOURCE /proc/meminfo; findmnt -n -o SOURCE /proc/stat; \
                  grep MemTotal /proc/meminfo; stat -c 'size %s' /proc/meminfo; \
                  python3 -c 'import os; f=os.open(\"/proc/meminfo\", os.O_RDONLY); \
                  print(\"sendfile\", os.sendfile(os.open(\"/dev/null\", os.O_WRONLY), f, 0, 1<<20), len(open(\"/proc/meminfo\",\"rb\").read()))'";
    let (out, err) = output(run(&d, &["--memory", "200M"], script));
    let mut lines = out.lines();
    let (src_mem, src_stat) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    assert!(
        src_mem.starts_with("cgprocfs-cache:") && src_mem.ends_with("/proc/meminfo]"),
        "meminfo is the command's own cached file: {out}{err}"
    );
    assert!(src_stat.starts_with("cgprocfs-cache:") && src_stat.ends_with("/proc/stat]"), "{out}");
    assert_eq!(field(&out, "MemTotal"), 200 * 1024, "{out}");
    // A real size (the page cache needs one), equal to what read(2) and sendfile(2) give.
    let size: u64 = out.lines().find_map(|l| l.strip_prefix("size ")).and_then(|s| s.parse().ok()).unwrap_or(0);
    let sf: Vec<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("sendfile "))
        .unwrap_or("")
        .split(' ')
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(size > 1000, "{out}");
    assert_eq!(sf, vec![size, size], "sendfile copies the whole file, as read does: {out}");

    // A limit raised while the command runs shows within the freshness bound (100 ms by
    // default; waited for up to 2 s here, the bound itself is measured in the benchmark).
    let dir = Scratch::new("cached-limit");
    let (pidfile, flag) = (dir.0.join("pid"), Flag(dir.0.join("go")));
    let script = format!(
        "grep MemTotal /proc/meminfo; echo $$ > {p}; while [ ! -e {f} ]; do sleep 0.02; done; t=0; \
         while [ $t -lt 200 ] && ! grep -q 'MemTotal: *262144 kB' /proc/meminfo; do sleep 0.01; t=$((t+1)); done; \
         grep MemTotal /proc/meminfo",
        p = pidfile.display(),
        f = flag.0.display()
    );
    let child = run(&d, &["--memory", "128M"], &script).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The pid file comes after the first read.
    let pid = wait_pid(&pidfile).to_string();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = cgroups.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()));
    let limit = match v1 {
        Some(p) => format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes"),
        None => format!("/sys/fs/cgroup{}/memory.max", cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap()),
    };
    std::fs::write(&limit, (256u64 << 20).to_string()).unwrap();
    flag.raise();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(field(&text, "MemTotal"), 128 * 1024, "the first limit showed: {text}");
    assert!(
        text.trim_end().ends_with("262144 kB"),
        "the new limit shows: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn two_containers_read_their_cached_files_at_once_never_a_neighbours_or_a_torn_one() {
    live_ready("two_containers_read_their_cached_files_at_once_never_a_neighbours_or_a_torn_one");
    let d = Daemon::start("cached-two");
    let secs = 4;
    // Two containers of different limits, two readers each, all at once; a third process
    // in each allocates and frees memory so that meminfo changes (and the cached pages are
    // dropped and fetched again) while they read.
    let readers: Vec<(u64, std::process::Child)> = [(128u64, 1u32), (384, 2)]
        .iter()
        .flat_map(|&(mib, cpus)| {
            let d = &d;
            (0..2).map(move |_| {
                let script = format!(
                    "python3 -c 'import time\nend=time.time()+{secs}\nwhile time.time()<end: x=bytearray(8<<20); time.sleep(0.01)' & \
                     python3 -c \"$0\" {secs} {kb} {cpus}",
                    kb = mib * 1024
                );
                let mut c = run(d, &["--memory", &format!("{mib}M"), "--cpuset", &format!("0-{}", cpus.min(host_cpus() as u32) - 1)], &script);
                c.arg(READER);
                let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
                (mib, child)
            })
        })
        .collect();
    let mut total = 0;
    for (mib, child) in readers {
        let out = child.wait_with_output().unwrap();
        let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let (n, fails, wrong) = counts(&o, &e);
        eprintln!("{mib} MiB container: {n} reads, {fails} failed, {wrong} wrong");
        assert_eq!((fails, wrong), (0, 0), "{mib} MiB container: {e}");
        assert!(n > 100, "the reader ran: {o} {e}");
        total += n;
    }
    assert!(total > 400);
}

fn a_worker_killed_under_cached_readers_loses_and_mixes_nothing() {
    live_ready("a_worker_killed_under_cached_readers_loses_and_mixes_nothing");
    // Without FUSE_NOTIFY_RESEND (Linux 6.9) a request the killed worker had read is never
    // answered and its reader waits forever (docs/architecture.md, "Crash safety"), on either
    // tree: the VM guests' 6.1 kernel cannot run this.
    if !kernel_at_least(6, 9) {
        common::harness::ignore("a worker kill loses in-flight requests before Linux 6.9 (no FUSE_NOTIFY_RESEND)");
    }
    let d = Daemon::start("cached-crash");
    let secs = 6;
    // Memory churn beside the reader: meminfo changes length often, so a worker that answered
    // a READ with a newer rendering than the size the kernel holds would show as a cut file.
    let script = format!(
        "python3 -c 'import time\nend=time.time()+{secs}\nwhile time.time()<end: x=bytearray(4<<20); time.sleep(0.003)' & \
         python3 -c \"$0\" {secs} {} 1",
        96 * 1024
    );
    let mut c = run(&d, &["--memory", "96M", "--cpuset", "0"], &script);
    c.arg(READER);
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..8 {
        let w = d.worker_pid();
        // SAFETY: the worker is a child of the daemon this test started.
        unsafe { libc::kill(w, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let (n, fails, wrong) = counts(&o, &e);
    eprintln!("{n} reads, {fails} failed, {wrong} wrong across 8 worker kills");
    assert_eq!((fails, wrong), (0, 0), "{e}");
    assert!(n > 100, "{o} {e}");
}

fn a_cached_file_is_its_containers_whoever_reads_it() {
    live_ready("a_cached_file_is_its_containers_whoever_reads_it");
    let d = Daemon::start("cached-foreign");
    let dir = Scratch::new("cached-foreign");
    let pidfile = dir.0.join("pid");
    // The command writes its pid (the key of its files: `run` execs it in the same process)
    // and waits.
    // `exec`: the key process is the one that waits, so killing it ends the command.
    let script = format!("grep MemTotal /proc/meminfo; echo $$ > {}; exec sleep 30", pidfile.display());
    let child = run(&d, &["--memory", "64M"], &script).stdout(Stdio::piped()).spawn().unwrap();
    // The pid file comes after the container's own read.
    let pid = wait_pid(&pidfile);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start: u64 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap().parse().unwrap();
    let own = d.cache().join(format!("{pid}-{start}/proc/meminfo"));
    // This test process is root on the host: the name resolves, and the file is the
    // container's whoever reads it (its size and bytes; docs/security.md says why).
    std::thread::sleep(Duration::from_millis(300));
    let meta = std::fs::metadata(&own).expect("the container's directory is found by its key");
    let text = String::from_utf8(std::fs::read(&own).expect("the container's file")).unwrap();
    assert!(meta.len() > 500, "its size is its content's, not an empty file's: {}", meta.len());
    assert_eq!(field(&text, "MemTotal"), 64 * 1024, "the container's figures, not the reader's");
    // Another start time (a recycled pid) is no container at all.
    let stale = d.cache().join(format!("{pid}-{}/proc/meminfo", start + 1));
    assert_eq!(std::fs::metadata(&stale).map(|_| ()).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    // SAFETY: the command is a child of the run this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        field(&String::from_utf8_lossy(&out.stdout), "MemTotal"),
        64 * 1024,
        "the container itself read its own"
    );
}

fn top_on_cached_files_shows_the_containers_cpu_use_and_steal() {
    let test = "top_on_cached_files_shows_the_containers_cpu_use_and_steal";
    live_ready(test);
    programs_ready(test, &["top", "findmnt"]);
    let d = Daemon::start("cached-top");
    // A spinner held to 20 % of one CPU by its quota: top's second sample (one second of
    // deltas of the cached /proc/stat) shows it busy ~20 % and most of the rest as steal.
    let script = "findmnt -n -o SOURCE /proc/stat; while :; do :; done & sleep 1; top -bn2 -d1 | grep '^%Cpu'; kill $!";
    let (out, _) = output(run(&d, &["--cpus", "0.2", "--memory", "256M"], script));
    eprintln!("{out}");
    assert!(out.starts_with("cgprocfs-cache:"), "top read the cached /proc/stat: {out}");
    let cpu = out.lines().rfind(|l| l.starts_with("%Cpu")).expect("top printed a %Cpu line");
    let value = |name: &str| -> f64 {
        let i = cpu.find(&format!(" {name}")).unwrap_or_else(|| panic!("no {name} in {cpu}"));
        cpu[..i].rsplit([',', ':']).next().unwrap().trim().parse().unwrap()
    };
    assert!(value("st") > 40.0, "{cpu}");
    assert!(value("us") + value("sy") > 5.0 && value("us") + value("sy") < 40.0, "{cpu}");
}

/// The load file's figures change only at a load pass (every 5 s of the boot clock), so the
/// cached tree lets the kernel keep its attributes until the next pass: a reader once a second
/// asks the daemon once a pass instead of once a read. Shown with the worker stopped: the
/// load file of a container with its own pid namespace is still read (from the page cache)
/// while meminfo, which may change at any time, waits for the worker; after the pass, the
/// load file shows the pass's figures.
fn the_cached_load_file_is_kept_until_the_next_pass_and_then_shows_it() {
    live_ready("the_cached_load_file_is_kept_until_the_next_pass_and_then_shows_it");
    let d = Daemon::start("cached-load");
    let cg = TestCgroup::new("cached-load", &Limits { memory: Some(256 << 20), ..Default::default() });
    let dir = Scratch::new("cached-load");
    let flag = Flag(dir.0.join("go"));
    // The init of its own pid namespace (the figures are then all the pass's, its last pid
    // included), idle until the flag, then two spinners.
    let script = format!(
        "unshare -p -f sh -c 'while [ ! -e {f} ]; do sleep 0.02; done; \
         (while :; do :; done) & (while :; do :; done) & wait'",
        f = flag.0.display()
    );
    let mut unshare = cg.command(&script).stderr(Stdio::piped()).spawn().unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let init: u32 = crate::mount::ns_init(&mut unshare).parse().unwrap();
    let _reap = Reap(unshare);
    let key = cgprocfs::fuse::cached::key_name(init).unwrap();
    let (load, mem) = (d.cache().join(&key).join("proc/loadavg"), d.cache().join(&key).join("proc/meminfo"));
    // The load passes: the 5-second boundaries of the boot clock.
    let to_next_pass = || {
        let now = cgprocfs::host::boottime_ns();
        Duration::from_nanos(cgprocfs::sampler::next_pass_ns(now) - now)
    };
    // Registered with the sampler and through a pass, then early in a period.
    std::fs::read(&load).unwrap();
    std::thread::sleep(to_next_pass() + Duration::from_millis(300));
    let running =
        |text: &str| -> u64 { text.split_whitespace().nth(3).and_then(|f| f.split('/').next()?.parse().ok()).unwrap() };
    let first = std::fs::read_to_string(&load).unwrap();
    std::fs::read(&mem).unwrap();
    assert_eq!(running(&first), 1, "an idle container: {first}");
    // Past meminfo's attribute timeout (the 100 ms bound), far from the load pass's.
    flag.raise();
    std::thread::sleep(Duration::from_millis(400));
    let stopped = Stopped::new(d.worker_pid());
    let in_thread = |p: std::path::PathBuf| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read_to_string(p));
        });
        rx
    };
    let (load_rx, mem_rx) = (in_thread(load.clone()), in_thread(mem.clone()));
    let kept = load_rx.recv_timeout(Duration::from_secs(1));
    let asked = mem_rx.recv_timeout(Duration::from_millis(500));
    drop(stopped);
    let kept = kept.expect("the load file is read without the (stopped) worker until the next pass").unwrap();
    assert_eq!(kept, first, "the same figures until the pass, although two spinners run");
    assert!(asked.is_err(), "meminfo asks the worker once its 100 ms bound is past: {asked:?}");
    assert!(mem_rx.recv_timeout(Duration::from_secs(10)).is_ok_and(|r| r.is_ok()), "and is answered once it runs");
    // The next pass shows the spinners within the bound after it.
    assert!(to_next_pass() > Duration::from_secs(1), "still in the period (the test was too slow to tell)");
    std::thread::sleep(to_next_pass() + Duration::from_millis(300));
    let after = std::fs::read_to_string(&load).unwrap();
    assert!(running(&after) >= 2, "the pass's figures, within the bound after it: {after} (before: {first})");
}

/// The bench floor of the cached tree (`serve --bench-floor`, for `benches/scale.rs`): five
/// files per key with constant bytes and a new version at every GETATTR, so that each read
/// costs the round trips of a changed file (GETATTR and READ), where a constant served file
/// keeps its version. Absent without the option.
fn the_cached_bench_floor_is_new_at_every_getattr_and_only_with_the_option() {
    live_ready("the_cached_bench_floor_is_new_at_every_getattr_and_only_with_the_option");
    let d = Daemon::start_with("cached-floor", &["--bench-floor"]);
    let cg = TestCgroup::new("cached-floor", &Limits { memory: Some(64 << 20), ..Default::default() });
    let mut sleeper = cg.command("sleep 30").spawn().unwrap();
    let key = d.cache().join(cgprocfs::fuse::cached::key_name(sleeper.id()).unwrap());
    // The version the daemon gives now: statx forced to ask it, whatever the kernel keeps.
    let mtime = |rel: &str| -> (i64, u32) {
        let path = std::ffi::CString::new(key.join(rel).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: statx fills one statx struct this closure owns, from a NUL-terminated path.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::statx(libc::AT_FDCWD, path.as_ptr(), libc::AT_STATX_FORCE_SYNC, libc::STATX_MTIME, &mut st)
        };
        assert_eq!(rc, 0, "{rel}: {}", std::io::Error::last_os_error());
        (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec)
    };
    for f in cgprocfs::fuse::cached::FLOORS {
        let first = mtime(f);
        std::thread::sleep(Duration::from_millis(20));
        assert_ne!(mtime(f), first, "{f}: a new version at every GETATTR");
        assert_eq!(std::fs::read_to_string(key.join(f)).unwrap(), cgprocfs::catalog::floor_content(), "{f}");
    }
    let online = "sys/devices/system/cpu/online";
    let first = mtime(online);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(mtime(online), first, "a served file that did not change keeps its version");
    let plain = Daemon::start("cached-no-floor");
    let key = plain.cache().join(cgprocfs::fuse::cached::key_name(sleeper.id()).unwrap());
    let gone = std::fs::metadata(key.join(".bench/floor")).map(|_| ()).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ENOENT), "no floor without --bench-floor");
    assert!(std::fs::metadata(key.join(online)).is_ok(), "while the served files are there");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release.trim().split(['.', '-']).map(|x| x.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (major, minor)
}

crate::cgprocfs_tests!(
    run_binds_the_commands_own_cached_files_which_follow_its_limits,
    two_containers_read_their_cached_files_at_once_never_a_neighbours_or_a_torn_one,
    a_worker_killed_under_cached_readers_loses_and_mixes_nothing,
    a_cached_file_is_its_containers_whoever_reads_it,
    top_on_cached_files_shows_the_containers_cpu_use_and_steal,
    the_cached_load_file_is_kept_until_the_next_pass_and_then_shows_it,
    the_cached_bench_floor_is_new_at_every_getattr_and_only_with_the_option,
);
