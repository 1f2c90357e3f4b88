//! Live tests on this machine's kernel: a real `cgprocfs serve`, real cgroups with limits, and
//! readers inside them reading through the FUSE mount. They need root, /dev/fuse and cgroups:
//! under CI=true a missing prerequisite fails; elsewhere the test ends as ignored, with the reason.

use crate::common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};

const MIB: u64 = 1024 * 1024;

fn count_processors(cpuinfo: &str) -> usize {
    cpuinfo.lines().filter(|l| l.starts_with("processor")).count()
}

fn memory_limit_is_memtotal() {
    live_ready("memory_limit_is_memtotal");
    let d = Daemon::start("mem");
    let cg = TestCgroup::new("mem", &Limits { memory: Some(256 * MIB), ..Default::default() });
    let out = cg.run(&format!("cat {}", d.path("proc/meminfo").display()));
    assert_eq!(field(&out, "MemTotal"), 262_144, "{out}");
    let (free, avail) = (field(&out, "MemFree"), field(&out, "MemAvailable"));
    assert!(free <= avail && avail <= 262_144, "{out}");
    assert!(field(&out, "SwapFree") <= field(&out, "SwapTotal"));
}

fn parent_limit_lower_than_child_wins() {
    live_ready("parent_limit_lower_than_child_wins");
    let d = Daemon::start("nested");
    let parent = TestCgroup::new(
        "parent",
        &Limits { memory: Some(128 * MIB), cpu: Some((50_000, 100_000)), ..Default::default() },
    );
    let child = parent.child("child", &Limits { memory: Some(512 * MIB), ..Default::default() });
    let out = child.run(&format!("cat {}", d.path("proc/meminfo").display()));
    assert_eq!(field(&out, "MemTotal"), 131_072, "{out}");
    // The parent's half CPU limits the child too.
    let cpuinfo = child.run(&format!("cat {}", d.path("proc/cpuinfo").display()));
    assert_eq!(count_processors(&cpuinfo), 1, "{cpuinfo}");
}

fn quota_sets_the_cpu_count() {
    live_ready("quota_sets_the_cpu_count");
    let d = Daemon::start("quota");
    let host = host_cpus();
    for (quota, want) in [(150_000u64, host.min(2)), (50_000, 1)] {
        let cg = TestCgroup::new("quota", &Limits { cpu: Some((quota, 100_000)), ..Default::default() });
        let cpuinfo = cg.run(&format!("cat {}", d.path("proc/cpuinfo").display()));
        assert_eq!(count_processors(&cpuinfo), want, "quota {quota}: {cpuinfo}");
        assert!(cpuinfo.contains(&format!("siblings\t: {want}\n")), "{cpuinfo}");
        let online = cg.run(&format!("cat {}", d.path("sys/devices/system/cpu/online").display()));
        let expect = if want == 1 { "0\n".to_string() } else { format!("0-{}\n", want - 1) };
        assert_eq!(online, expect);
        // glibc's _SC_NPROCESSORS_ONLN reads the same file once it is bound over /sys.
        let n = cg.run(&format!(
            "unshare -m sh -c 'mount --bind {} /sys/devices/system/cpu/online && getconf _NPROCESSORS_ONLN'",
            d.path("sys/devices/system/cpu/online").display()
        ));
        assert_eq!(n.trim(), want.to_string());
    }
}

fn cpuset_of_one_cpu() {
    live_ready("cpuset_of_one_cpu");
    let d = Daemon::start("cpuset");
    let last = host_cpus() - 1;
    let cg = TestCgroup::new("cpuset", &Limits { cpuset: Some(last.to_string()), ..Default::default() });
    let cpuinfo = cg.run(&format!("cat {}", d.path("proc/cpuinfo").display()));
    assert_eq!(count_processors(&cpuinfo), 1, "{cpuinfo}");
    assert!(cpuinfo.starts_with("processor\t: 0\n"), "{cpuinfo}");
    assert_eq!(cg.run(&format!("cat {}", d.path("sys/devices/system/cpu/online").display())), "0\n");
}

fn reader_outside_any_limit_sees_the_host() {
    live_ready("reader_outside_any_limit_sees_the_host");
    let d = Daemon::start("host");
    let cg = TestCgroup::new("unlimited", &Limits::default());
    let out = cg.run(&format!("cat {} /proc/meminfo", d.path("proc/meminfo").display()));
    let (ours, host) = out.split_at(out.len() / 2);
    assert_eq!(field(ours, "MemTotal"), field(host, "MemTotal"));
    let cpuinfo = cg.run(&format!("cat {}", d.path("proc/cpuinfo").display()));
    assert_eq!(count_processors(&cpuinfo), host_cpus());
}

fn concurrent_readers_each_see_their_own() {
    live_ready("concurrent_readers_each_see_their_own");
    let d = Daemon::start("concurrent");
    let sizes = [64u64, 96, 160, 224];
    let cgs: Vec<_> = sizes
        .iter()
        .map(|m| TestCgroup::new("conc", &Limits { memory: Some(m * MIB), ..Default::default() }))
        .collect();
    let path = d.path("proc/meminfo");
    let children: Vec<_> = cgs
        .iter()
        .map(|cg| {
            cg.command(&format!("sh -c 'for i in $(seq 200); do grep MemTotal {}; done'", path.display()))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (child, m) in children.into_iter().zip(sizes) {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 200);
        for l in text.lines() {
            assert_eq!(field(l, "MemTotal"), m * 1024, "{l}");
        }
    }
}

/// The container's init runs in its own pid namespace; readers enter that namespace but stay
/// outside the cgroup, so they neither charge its memory nor share the daemon's pid
/// namespace: the daemon must find the namespace's init and use its cgroup.
fn show_agrees_with_the_mount_byte_for_byte() {
    live_ready("show_agrees_with_the_mount_byte_for_byte");
    let d = Daemon::start("show");
    let cg = TestCgroup::new(
        "show",
        &Limits { memory: Some(200 * MIB), cpu: Some((50_000, 100_000)), ..Default::default() },
    );
    let mut unshare = cg.command("unshare -p -f sleep 30").spawn().unwrap();
    let init = ns_init(&mut unshare);
    for file in ["proc/meminfo", "proc/cpuinfo", "sys/devices/system/cpu/online"] {
        // meminfo moves with the container's and the host's page cache: retry a few times
        // before calling a difference a mismatch.
        let mut last = None;
        for _ in 0..20 {
            let o = std::process::Command::new("nsenter")
                .args(["-t", &init, "-p", "cat"])
                .arg(d.path(file))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let shown = std::process::Command::new(bin()).args(["show", "--pid", &init, file]).output().unwrap();
            assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
            if comparable(file, &o.stdout) == comparable(file, &shown.stdout) {
                last = None;
                break;
            }
            last = Some((
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&shown.stdout).into_owned(),
            ));
        }
        if let Some((m, s)) = last {
            panic!("{file} differs:\nmount:\n{m}\nshow:\n{s}");
        }
        if file == "proc/meminfo" {
            let o = std::process::Command::new("nsenter")
                .args(["-t", &init, "-p", "cat"])
                .arg(d.path(file))
                .output()
                .unwrap();
            assert_eq!(field(&String::from_utf8_lossy(&o.stdout), "MemTotal"), 200 * 1024);
        }
    }
    // The namespace's init is ours too: end it by pid so the cgroup can be removed.
    // SAFETY: kill on pids this test started.
    unsafe { libc::kill(init.parse().unwrap(), libc::SIGKILL) };
    let _ = unshare.kill();
    let _ = unshare.wait();
}

/// The bytes of `file` that describe the container. In meminfo, the host-global lines that
/// pass through (Committed_AS, VmallocUsed ...) move with every process the test starts, so
/// only their labels are compared; every line computed for the container is compared whole.
/// A pod with `shareProcessNamespace` (or `docker run --pid=container:X`): one pid namespace
/// whose init is another container's process. Each container that joined it, with its own
/// mounts and cgroup, reads its own limit; a process in a sub-cgroup of the init's and tools
/// entering from the host read the init's.
fn containers_sharing_a_pid_namespace_read_their_own_limits() {
    let test = "containers_sharing_a_pid_namespace_read_their_own_limits";
    live_ready(test);
    programs_ready(test, &["unshare", "nsenter"]);
    let d = Daemon::start("sharedpid");
    let pause = TestCgroup::new("pause", &Limits { memory: Some(200 * MIB), ..Default::default() });
    let app = TestCgroup::new("app", &Limits { memory: Some(100 * MIB), ..Default::default() });
    // As systemd lays a system container out (and cgroup v2 wants processes in leaves): the
    // init in `init.scope`, which is stripped, another process in a sibling sub-cgroup.
    let init_scope = pause.child_named("init.scope", &Limits::default());
    let sub = pause.child("sub", &Limits::default());
    let mut unshare =
        init_scope.command("unshare -p -f -m sleep 60").stderr(std::process::Stdio::piped()).spawn().unwrap();
    let init = ns_init(&mut unshare);
    let meminfo = d.path("proc/meminfo");
    let joined = format!("nsenter -t {init} -p -- unshare -m -- cat {}", meminfo.display());
    let app_sees = field(&app.run(&joined), "MemTotal");
    let sub_sees = field(&sub.run(&joined), "MemTotal");
    let host_tool = |args: &[&str]| {
        let o = std::process::Command::new("nsenter").args(["-t", &init]).args(args).arg("cat").arg(&meminfo).output();
        let o = o.unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        field(&String::from_utf8_lossy(&o.stdout), "MemTotal")
    };
    let nsenter_p = host_tool(&["-p"]);
    let nsenter_pm = host_tool(&["-p", "-m", "-r"]);
    // SAFETY: kill on a pid this test started (the namespace's init).
    unsafe { libc::kill(init.parse().unwrap(), libc::SIGKILL) };
    let _ = unshare.kill();
    let _ = unshare.wait();
    assert_eq!(app_sees, 100 * 1024, "the app container reads its own limit");
    assert_eq!(sub_sees, 200 * 1024, "a process in the init's sub-cgroup reads the init's");
    assert_eq!((nsenter_p, nsenter_pm), (200 * 1024, 200 * 1024), "tools entering from the host read the init's");
}

/// The host pid of the init of the pid namespace `unshare -p -f` made (its child), waiting up
/// to 10 s; fails with unshare's status and stderr (when piped) if it exited instead.
pub(crate) fn ns_init(unshare: &mut std::process::Child) -> String {
    let children = format!("/proc/{0}/task/{0}/children", unshare.id());
    let t = std::time::Instant::now();
    loop {
        let c = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = c.split_whitespace().next() {
            return pid.to_string();
        }
        if let Ok(Some(st)) = unshare.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = unshare.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("unshare exited with {st}: {err}");
        }
        assert!(t.elapsed().as_secs() < 10, "no init in the new pid namespace");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn comparable(file: &str, bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    if file != "proc/meminfo" {
        return vec![text.into_owned()];
    }
    use cgprocfs::view::meminfo::Field;
    text.lines()
        .map(|l| {
            let label = l.split(':').next().unwrap_or("");
            // A line the container has its own value for is compared whole.
            if Field::of_label(label).is_some() {
                l.to_string()
            } else {
                label.to_string()
            }
        })
        .collect()
}

fn writes_and_unknown_names_get_errors() {
    live_ready("writes_and_unknown_names_get_errors");
    let d = Daemon::start("errno");
    let err = |r: std::io::Result<std::fs::File>| r.err().and_then(|e| e.raw_os_error());
    let p = d.path("proc/meminfo");
    assert_eq!(err(std::fs::OpenOptions::new().write(true).open(&p)), Some(libc::EROFS));
    assert_eq!(err(std::fs::OpenOptions::new().read(true).truncate(true).write(true).open(&p)), Some(libc::EROFS));
    assert_eq!(err(std::fs::File::create(d.path("proc/new"))), Some(libc::EROFS));
    assert_eq!(err(std::fs::File::open(d.path("proc/nonexistent"))), Some(libc::ENOENT));
    assert_eq!(std::fs::create_dir(d.path("proc/dir")).unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::remove_file(&p).unwrap_err().raw_os_error(), Some(libc::EROFS));
    // Renames and links are refused too: a read-only superblock (triggers have their own).
    assert_eq!(std::fs::rename(&p, d.path("proc/moved")).unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::hard_link(&p, d.path("proc/link")).unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        std::os::unix::fs::symlink("meminfo", d.path("proc/sym")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    let perm = std::fs::metadata(&p).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(perm.permissions().mode() & 0o7777, 0o444);
    assert_eq!(
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    // Odd offsets: past the end reads nothing; a seek back to 0 re-renders the whole file.
    let mut f = std::fs::File::open(&p).unwrap();
    let mut all = String::new();
    f.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("MemTotal:"));
    f.seek(SeekFrom::Start(1 << 40)).unwrap();
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    f.seek(SeekFrom::Start(3)).unwrap();
    let mut tail = String::new();
    f.read_to_string(&mut tail).unwrap();
    assert!(tail.starts_with("Total:"), "{tail}");
    assert!(f.write_all(b"x").is_err());
    // The listing shows exactly the served tree.
    let names: Vec<_> =
        std::fs::read_dir(d.path("proc")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let mut names = names;
    names.sort();
    let mut want: Vec<_> = cgprocfs::catalog::Served::ALL
        .iter()
        .filter_map(|v| v.path().strip_prefix("proc/"))
        .map(|p| p.split('/').next().unwrap().to_string())
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(names, want);
}

fn daemon_lifecycle_refuses_busy_and_clears_stale_mounts() {
    live_ready("daemon_lifecycle_refuses_busy_and_clears_stale_mounts");
    let mut d = Daemon::start("life");
    // A second daemon on a served mount point is refused.
    let second = std::process::Command::new(bin()).arg("serve").arg(&d.mnt).output().unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already served"), "{second:?}");

    // SIGKILL of the keeper takes its worker along (parent-death signal) and leaves a dead
    // mount (ENOTCONN); the next start clears it and serves again.
    d.signal_and_wait(libc::SIGKILL);
    assert!(is_mounted(&d.mnt));
    let t = std::time::Instant::now();
    loop {
        match std::fs::File::open(d.path("proc/meminfo")) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => break,
            r => assert!(t.elapsed().as_secs() < 10, "mount still answers after the keeper died: {r:?}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.spawn(&[]);
    assert!(std::fs::read_to_string(d.path("proc/meminfo")).unwrap().starts_with("MemTotal:"));

    // SIGTERM: unmount and exit 0, leaving only the mount point and the CPU accounts the next
    // daemon resumes (no socket, counters, journal or companion mount point).
    let st = d.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "{st}");
    assert!(!is_mounted(&d.mnt));
    let dir = d.mnt.parent().unwrap();
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The test's own log beside them.
        .filter(|n| !["keeper.accounts", "mnt", "daemon.log"].contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "left in {} after a clean stop: {left:?}", dir.display());

    // A non-empty directory is refused.
    let busy = std::env::temp_dir().join(unique("nonempty"));
    std::fs::create_dir_all(busy.join("x")).unwrap();
    let out = std::process::Command::new(bin()).arg("serve").arg(&busy).output().unwrap();
    std::fs::remove_dir_all(&busy).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-empty"), "{out:?}");
}

/// diskstats from the container's own I/O, swaps consistent with its meminfo, pressure from
/// its own cgroup.
fn diskstats_swaps_and_pressure_are_the_containers() {
    live_ready("diskstats_swaps_and_pressure_are_the_containers");
    let d = Daemon::start("io");
    let cg =
        TestCgroup::new("io", &Limits { memory: Some(256 * MIB), cpu: Some((20_000, 100_000)), ..Default::default() });
    // I/O of its own, past the page cache, to a file on the disk holding the build (or the
    // scratch disk the VM tier names: its root is read-only).
    let dir = std::env::var_os("CGPROCFS_TEST_IO_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let file = dir.join(unique("io"));
    // v1 counts a device's I/O in blkio.throttle.* only once throttling is on for it: give the
    // container a limit it never reaches, as a runtime with --device-write-bps would.
    if let Some((_, blkio)) = cg.dirs.iter().find(|(c, _)| *c == "blkio") {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(file.parent().unwrap()).unwrap().dev();
        let mut node = format!("{}:{}", libc::major(dev), libc::minor(dev));
        let sys = std::path::Path::new("/sys/dev/block").join(&node);
        if sys.join("partition").exists() {
            node = std::fs::read_to_string(sys.join("../dev")).unwrap().trim().to_string();
        }
        std::fs::write(blkio.join("blkio.throttle.write_bps_device"), format!("{node} 1099511627776")).unwrap();
    }
    let out = cg.run(&format!(
        "sh -c 'dd if=/dev/zero of={f} bs=64k count=64 oflag=direct 2>/dev/null; cat {ds}; rm -f {f}'",
        f = file.display(),
        ds = d.path("proc/diskstats").display()
    ));
    let _ = std::fs::remove_file(&file);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(!lines.is_empty(), "no device in the container's diskstats");
    for f in &lines {
        assert_eq!(f.len(), 20, "the kernel's 20 fields: {f:?}");
    }
    let written: u64 = lines.iter().map(|f| f[9].parse::<u64>().unwrap()).sum();
    assert!(written >= 64 * 64 * 1024 / 512, "sectors written {written}: {out}");
    // Only the devices it used: each listed one has I/O of the container's.
    for f in &lines {
        assert!(f[3..].iter().any(|v| *v != "0"), "a device it did not use: {f:?}");
    }

    // swaps: the header, and a line only when its SwapTotal is not 0, with meminfo's figures.
    let both = cg.run(&format!("cat {} {}", d.path("proc/swaps").display(), d.path("proc/meminfo").display()));
    assert!(both.starts_with("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"), "{both}");
    let swap_total = field(&both, "SwapTotal");
    let swap_lines = both.lines().take_while(|l| !l.starts_with("MemTotal")).count() - 1;
    assert_eq!(swap_lines, usize::from(swap_total > 0), "{both}");

    // pressure: the container's own cgroup file (a 20 % quota spinner stalls on CPU).
    let h = cgprocfs::cgroup::Hierarchies::discover(&cgprocfs::Root::new("/")).unwrap();
    if h.v2_mount().is_some() {
        let mut spinner = cg.command("sh -c 'while :; do :; done'").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let p = cg.run(&format!("cat {}", d.path("proc/pressure/cpu").display()));
        let _ = spinner.kill();
        let _ = spinner.wait();
        assert!(p.starts_with("some avg10="), "{p}");
        let total: u64 = p.lines().next().unwrap().rsplit("total=").next().unwrap().parse().unwrap();
        assert!(total > 500_000, "a throttled spinner stalls: {p}");
        assert!(total < 10_000_000, "the container's, not the host's since boot: {p}");
    }
}

/// A swap limit shows as SwapTotal/SwapFree in meminfo and as the one line of /proc/swaps,
/// with the same figures, while the container has memory swapped out. On a host without swap
/// both say 0 (the VM tier's guests have a swap file).
fn swap_limit_and_use_in_meminfo_and_swaps() {
    let test = "swap_limit_and_use_in_meminfo_and_swaps";
    live_ready(test);
    programs_ready(test, &["python3"]);
    let host_swap = field(&std::fs::read_to_string("/proc/meminfo").unwrap(), "SwapTotal");
    let d = Daemon::start("swap");
    let cg = TestCgroup::new("swap", &Limits { memory: Some(48 * MIB), swap: Some(48 * MIB), ..Default::default() });
    // 56 MB of anon memory (and the interpreter) in 48 MiB: some of it must be in swap while
    // both files are read (without swap on the host that would be an OOM kill: 16 MB then).
    let mb = if host_swap == 0 { 16 } else { 56 };
    let out = cg.run(&format!(
        "python3 -c \"import sys, time; x = b'x' * ({mb} << 20); time.sleep(1); sys.stdout.write(open('{}').read() + open('{}').read())\"",
        d.path("proc/swaps").display(),
        d.path("proc/meminfo").display()
    ));
    eprintln!("{out}");
    let (total, free) = (field(&out, "SwapTotal"), field(&out, "SwapFree"));
    let lines: Vec<&str> = out.lines().take_while(|l| !l.starts_with("MemTotal")).collect();
    if host_swap == 0 {
        eprintln!("{test}: the host has no swap: only the no-swap case is checked here");
        assert_eq!((total, free), (0, 0), "{out}");
        assert_eq!(lines.len(), 1, "only the header: {out}");
        return;
    }
    assert_eq!(total, (48 * 1024).min(host_swap), "SwapTotal is the swap limit: {out}");
    assert!(free < total, "56 MB in 48 MiB leaves some in swap: {out}");
    assert_eq!(lines.len(), 2, "{out}");
    let f: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(f[..2], ["none", "virtual"], "{}", lines[1]);
    assert_eq!(f[2].parse::<u64>().unwrap(), total, "{}", lines[1]);
    // Two reads, a moment apart, of a usage that may still move (reclaim goes on after the
    // allocation settles, slowly in an emulated guest): the same figure within 4 MiB.
    let used = f[3].parse::<u64>().unwrap();
    assert!(used.abs_diff(total - free) <= 4096, "used {used} vs SwapTotal - SwapFree {}: {out}", total - free);
}

/// Readers in a fresh pid namespace, found without the kernel's NS_GET_PID_FROM_PIDNS (as on
/// Linux before 6.11): the namespace's init is found among the reader's ancestors.
fn new_pid_namespaces_resolve_without_the_pidns_ioctl() {
    live_ready("new_pid_namespaces_resolve_without_the_pidns_ioctl");
    programs_ready("new_pid_namespaces_resolve_without_the_pidns_ioctl", &["unshare"]);
    let d = Daemon::start_with_env("pidns-walk", &[], &[("CGPROCFS_NO_PIDNS_IOCTL", "1")]);
    let cg = TestCgroup::new("pidns-walk", &Limits { memory: Some(128 * 1024 * 1024), ..Default::default() });
    let meminfo = d.path("proc/meminfo");
    for depth in ["cat", "sh -c \"sh -c \\\"cat"] {
        let close = if depth == "cat" { "" } else { "\\\"\"" };
        let out = cg.run(&format!("unshare -p -f sh -c '{depth} {}{close}'", meminfo.display()));
        assert_eq!(field(&out, "MemTotal"), 128 * 1024, "{depth}: {out}");
    }
}

/// The sampler keeps cgroup directories open between reads and opens their files relative to
/// them (`cgroup::held`): a changed limit shows at once, and a cgroup removed and created again
/// under the same name is read anew, not through its predecessor's directory.
fn kept_cgroup_directories_follow_changes_and_recreated_cgroups() {
    live_ready("kept_cgroup_directories_follow_changes_and_recreated_cgroups");
    use cgprocfs::cgroup::held;
    let cg = TestCgroup::new("held", &Limits { memory: Some(64 * MIB), ..Default::default() });
    let (dir, file) = cg
        .dirs
        .iter()
        .flat_map(|(_, d)| ["memory.limit_in_bytes", "memory.max"].map(|f| (d.clone(), d.join(f))))
        .find(|(_, f)| f.exists())
        .expect("a memory limit file");
    let limit = |f: &std::path::Path| held::read(f).unwrap().trim().parse::<u64>().unwrap();
    assert_eq!(limit(&file), 64 * MIB);
    assert!(held::is_kept(&dir), "a cgroup directory read from is kept open");
    std::fs::write(&file, (96 * MIB).to_string()).unwrap();
    assert_eq!(limit(&file), 96 * MIB);
    // Read once in the kept directory, the file is only noted (a limit read every 10 s is
    // not worth a page of kernel memory); read again within held::ADMIT, it is kept, and a
    // read at 0 regenerates it.
    assert!(!held::is_file_kept(&file), "a file read once in a kept directory is not kept");
    assert_eq!(limit(&file), 96 * MIB);
    assert!(held::is_file_kept(&file), "a file read again in a kept directory is kept open");
    std::fs::write(&file, (80 * MIB).to_string()).unwrap();
    assert_eq!(limit(&file), 80 * MIB, "a kept file reads the value written since");
    assert!(held::is_file_kept(&file));
    // An optional file the cgroup lacks (cpu.stat.local before 6.6) keeps the directory.
    let missing = held::read(dir.join("cpu.stat.none")).unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    assert!(held::is_kept(&dir), "a missing file does not drop a live cgroup's directory");
    use std::os::unix::fs::MetadataExt;
    let first = held::metadata(&dir).unwrap().ino();
    assert_eq!(first, std::fs::metadata(&dir).unwrap().ino());
    std::fs::remove_dir(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    // The state's key of a container is its directory's inode: the recreated one's.
    let second = std::fs::metadata(&dir).unwrap().ino();
    assert_ne!(first, second);
    assert_eq!(held::metadata(&dir).unwrap().ino(), second, "the inode of the removed cgroup");
    std::fs::write(&file, (32 * MIB).to_string()).unwrap();
    assert_eq!(limit(&file), 32 * MIB, "the recreated cgroup, not its predecessor");
    assert!(held::is_kept(&dir) && held::exists(&dir));
    assert_eq!(limit(&file), 32 * MIB);
    assert_eq!(limit(&file), 32 * MIB, "read again through the file kept anew");
    assert!(held::is_file_kept(&file));
    std::fs::remove_dir(&dir).unwrap();
    assert!(!held::exists(&dir), "a removed cgroup is gone although its directory is held");
    assert!(held::read(&file).is_err(), "a removed cgroup's file is an error");
    assert!(!held::is_kept(&dir), "and its directory is no longer held");
    std::fs::create_dir(&dir).unwrap(); // for the cgroup's own clean-up
}

/// Limits stay cached until they are written (`cgroup::watch`): a write to a limit file, the
/// container's own or an ancestor's, shows at the next read one sampling pass (5 ms) after it,
/// where a limit cached for a time (50 ms before) would not; a process joining the cgroup (a
/// write to `cgroup.procs`) changes nothing.
fn a_written_limit_shows_one_pass_after_the_write() {
    live_ready("a_written_limit_shows_one_pass_after_the_write");
    let d = Daemon::start("watch");
    let parent = TestCgroup::new("watch", &Limits { memory: Some(256 * MIB), ..Default::default() });
    let child = parent.child("watch-child", &Limits { cpu: Some((100_000, 100_000)), ..Default::default() });
    let find = |cg: &TestCgroup, names: [&str; 2]| {
        cg.dirs.iter().flat_map(|(_, d)| names.map(|f| d.join(f))).find(|f| f.exists()).expect("a limit file")
    };
    let memory = find(&parent, ["memory.limit_in_bytes", "memory.max"]);
    let quota = find(&child, ["cpu.cfs_quota_us", "cpu.max"]);
    // The reader answers a line of stdin with what it reads then: no time passes between a
    // write and the read after it but the round trip of a pipe.
    let scratch = Scratch::new("watch");
    let script = scratch.0.join("reader.py");
    std::fs::write(
        &script,
        format!(
            "import sys\nfor _ in sys.stdin:\n    m = [l for l in open('{}') if l.startswith('MemTotal:')][0].split()[1]\n    \
             print(m, open('{}').read().strip(), flush=True)\n",
            d.path("proc/meminfo").display(),
            d.path("sys/devices/system/cpu/online").display()
        ),
    )
    .unwrap();
    let mut reader = child
        .command(&format!("python3 {}", script.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ask = reader.stdin.take().unwrap();
    let mut answers = std::io::BufReader::new(reader.stdout.take().unwrap());
    let mut read = || {
        use std::io::BufRead;
        ask.write_all(b"\n").unwrap();
        let mut line = String::new();
        answers.read_line(&mut line).unwrap();
        line
    };
    // A write(2) with no truncation (runtimes open limit files without O_TRUNC).
    let write = |f: &std::path::Path, v: String| {
        std::fs::OpenOptions::new().write(true).open(f).unwrap().write_all(v.as_bytes()).unwrap()
    };
    let two = host_cpus() >= 2;
    let mut seen = Vec::new();
    for i in 0..12u64 {
        let mib = 64 + 32 * (i % 3);
        let cpus = if two { 1 + i % 2 } else { 1 };
        write(&memory, (mib * MIB).to_string());
        let q = (cpus * 100_000).to_string();
        write(&quota, if quota.ends_with("cpu.max") { format!("{q} 100000") } else { q });
        // A pass: the counters (and v1's hierarchical limit in memory.stat) read within one
        // are shared by every read meanwhile.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let line = read();
        let want = format!("{} {}", mib * 1024, if cpus == 1 { "0".to_string() } else { "0-1".to_string() });
        assert_eq!(line.trim(), want, "round {i}: the limits just written");
        seen.push(line);
        // Read again without a write: the same.
        assert_eq!(read(), seen[seen.len() - 1], "round {i}, unchanged");
    }
    drop(ask);
    let _ = reader.wait();
}

crate::cgprocfs_tests!(
    a_written_limit_shows_one_pass_after_the_write,
    kept_cgroup_directories_follow_changes_and_recreated_cgroups,
    memory_limit_is_memtotal,
    parent_limit_lower_than_child_wins,
    quota_sets_the_cpu_count,
    cpuset_of_one_cpu,
    reader_outside_any_limit_sees_the_host,
    concurrent_readers_each_see_their_own,
    show_agrees_with_the_mount_byte_for_byte,
    containers_sharing_a_pid_namespace_read_their_own_limits,
    writes_and_unknown_names_get_errors,
    daemon_lifecycle_refuses_busy_and_clears_stale_mounts,
    diskstats_swaps_and_pressure_are_the_containers,
    swap_limit_and_use_in_meminfo_and_swaps,
    new_pid_namespaces_resolve_without_the_pidns_ioctl,
);
