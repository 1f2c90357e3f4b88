//! Helpers of the live tests: the environment check, a daemon on a private mount point and
//! throwaway cgroups, all removed on drop even when the test fails.
#![allow(dead_code)]

pub mod attacker;
pub mod bundle;
pub mod bystander;
pub mod harness;
pub mod loops;

use cgprocfs::run::{RunLimits, Transient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Checks that live tests can run here (root, `/dev/fuse`, cgroups); when not, ends the test as ignored, or under `CI=true` as failed ([`harness::skip`]).
pub fn live_ready(test: &str) {
    let mut missing = Vec::new();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root");
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_err() {
        missing.push("/dev/fuse");
    }
    if !std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(" - cgroup") {
        missing.push("cgroups");
    }
    if !missing.is_empty() {
        harness::skip(format!("live test {test} needs {}", missing.join(", ")));
    }
}

/// Whether program `p` is on the PATH.
pub fn have(p: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {p}")]).output().is_ok_and(|o| o.status.success())
}

/// Checks that every program of `programs` is installed; when one is missing, ends the test as ignored, or under `CI=true` (`.ci/run` installs them) as failed.
pub fn programs_ready(test: &str, programs: &[&str]) {
    if let Some(p) = programs.iter().find(|p| !have(p)) {
        harness::skip(format!("{test} needs {p}, which .ci/run installs"));
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), 0 if unreadable.
pub fn status_kib(pid: i32, key: &str) -> u64 {
    kib_of(&format!("/proc/{pid}/status"), key)
}

/// A `Key: value kB` field of a /proc file (`/proc/meminfo`'s `Slab:`), 0 if unreadable.
pub fn kib_of(path: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// A scratch directory (`<tmp>/<unique name>`) removed on drop, even when the test fails.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `f` holds, at most `timeout`; fails naming `what`, with `diag()` for context.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool, diag: impl Fn() -> String) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}\n{}", diag());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cgprocfs run` of daemon `d` with a memory limit of `memory` (`64M`) and no seccomp
/// profile: `python3 ARGS` in a container of its own (the caller adds stdio and spawns).
pub fn contained_python(d: &Daemon, memory: &str, args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(bin());
    c.arg("run")
        .args(["--memory", memory, "--no-seccomp", "--mountpoint"])
        .arg(&d.mnt)
        .args(["--", "python3"])
        .args(args);
    c
}

/// Ends child `c` this test started: SIGTERM, then SIGKILL if it has not exited within
/// `grace`; reaped either way.
pub fn stop_child(c: &mut Child, grace: Duration) {
    // SAFETY: a signal to a child this test started and has not reaped.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while c.try_wait().ok().flatten().is_none() && t.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// The pid a command wrote to `file`, once the whole number is there (a line: the file is
/// created before the number is written).
pub fn wait_pid(file: &Path) -> u32 {
    let read = || std::fs::read_to_string(file).ok().filter(|s| s.ends_with('\n')).and_then(|s| s.trim().parse().ok());
    wait_for("the command's pid", Duration::from_secs(30), || read().is_some(), String::new);
    read().unwrap_or(0)
}

/// Starts `serve` on `d`'s mount point and pid file in a new mount namespace (as a new pod or
/// a second unit would); returns it once the previous keeper `old` has exited. `n` names its
/// log file.
pub fn take_over(d: &Daemon, old: i32, n: usize) -> Child {
    let log = std::fs::File::create(d.own_file(&format!("takeover{n}.log"))).unwrap();
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "unchanged", "--"])
        .arg(bin())
        .arg("serve")
        .arg(&d.mnt)
        .arg("--pidfile")
        .arg(d.own_file("keeper.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let t = Instant::now();
    // SAFETY: kill(pid, 0) only checks that the process exists.
    while unsafe { libc::kill(old, 0) } == 0
        && !std::fs::read_to_string(format!("/proc/{old}/stat")).unwrap_or_default().contains(") Z")
    {
        let log = std::fs::read_to_string(d.own_file(&format!("takeover{n}.log"))).unwrap_or_default();
        assert!(t.elapsed() < Duration::from_secs(20), "keeper {old} did not hand over:\n{log}\nold: {}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A name unique to this test process and call.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("cgprocfs-test-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The binary under test: this build's, or `CGPROCFS_TEST_BIN` (to show a test fails against
/// another build, such as the one before a fix).
pub fn bin() -> String {
    std::env::var("CGPROCFS_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cgprocfs").to_string())
}

pub fn is_mounted(p: &Path) -> bool {
    let p = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// A process this test started, stopped (`SIGSTOP`) until the guard is dropped, whatever
/// happens in between (`SIGCONT`).
pub struct Stopped(i32);

impl Stopped {
    /// Stops `pid`, a process of the daemon this test started.
    pub fn new(pid: i32) -> Stopped {
        // SAFETY: kill(2) of a process this test started; continued on drop.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A file a waiting command polls for: created when the test says so, or when it ends however
/// it ends (a failed assertion unwinds through it), so no command is left waiting forever.
pub struct Flag(pub PathBuf);

impl Flag {
    /// Lets the command go on.
    pub fn raise(&self) {
        std::fs::write(&self.0, b"").unwrap();
    }
}

impl Drop for Flag {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}

/// The worker under keeper `keeper` now, if there is one: its child running `worker` (the
/// keeper's other children, the `reattach` helper at start, are not it). Any build's keeper.
pub fn worker_of(keeper: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse().ok()).find(|p: &i32| {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        cmdline.split(|b| *b == 0).nth(1) == Some(b"worker".as_slice())
    })
}

/// A `cgprocfs serve` on a fresh mount point.
pub struct Daemon {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    pub fn start(tag: &str) -> Daemon {
        Self::start_with(tag, &[])
    }

    /// A daemon started with extra `serve` options.
    pub fn start_with(tag: &str, extra: &[&str]) -> Daemon {
        let dir = std::env::temp_dir().join(unique(tag));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut d = Daemon { child: None, mnt, dir };
        d.spawn(extra);
        d
    }

    /// A daemon started with extra `serve` options and environment.
    pub fn start_with_env(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = std::env::temp_dir().join(unique(tag));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut d = Daemon { child: None, mnt, dir };
        d.spawn_env(extra, env);
        d
    }

    /// A daemon started with extra `serve` options under an open-file limit of `nofile`
    /// (soft and hard).
    pub fn start_with_nofile(tag: &str, extra: &[&str], nofile: u64) -> Daemon {
        let dir = std::env::temp_dir().join(unique(tag));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut d = Daemon { child: None, mnt, dir };
        d.spawn_limited(extra, &[], Some(nofile));
        d
    }

    /// Starts (or restarts) the serving process on the same mount point.
    pub fn spawn(&mut self, extra: &[&str]) {
        self.spawn_env(extra, &[])
    }

    fn spawn_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        self.spawn_limited(extra, env, None)
    }

    fn spawn_limited(&mut self, extra: &[&str], env: &[(&str, &str)], nofile: Option<u64>) {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin());
        if let Some(n) = nofile {
            let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
            // SAFETY: setrlimit is async-signal-safe; it only lowers the child's own limit.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
        let child = cmd
            .envs(env.iter().copied())
            .arg("serve")
            .arg(&self.mnt)
            // Pid file, state file and CPU records in this test's directory, removed with it.
            .args(if extra.contains(&"--pidfile") {
                vec![]
            } else {
                vec!["--pidfile".into(), self.dir.join("keeper.pid")]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, not a pipe nobody drains: a chatty daemon must never block on its log.
            .stderr(std::fs::File::create(self.dir.join("daemon.log")).unwrap())
            .spawn()
            .expect("spawn cgprocfs serve");
        self.child = Some(child);
        let t = Instant::now();
        // Open the file rather than stat it: a stale mount's attributes may still be cached.
        while !(is_mounted(&self.mnt) && std::fs::read(self.mnt.join("proc/meminfo")).is_ok()) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
                panic!("daemon exited with {st}: {log}");
            }
            assert!(t.elapsed() < Duration::from_secs(10), "daemon did not mount {}", self.mnt.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the keeper mounts the trigger connection (beside its pid file).
    pub fn psi(&self) -> PathBuf {
        self.dir.join("keeper.psi")
    }

    /// Where the keeper mounts the cached tree (beside its pid file).
    pub fn cache(&self) -> PathBuf {
        self.dir.join("keeper.cache")
    }

    /// Pid of the keeper's current worker, waiting up to 10 s for one to be running (the
    /// keeper's other children — the `reattach` helper at start — are not it).
    pub fn worker_pid(&self) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(p) = worker_of(self.pid()) {
                return p;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no worker under keeper {}", self.pid());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Pid of the keeper (the process `serve` runs as).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("daemon running")
    }

    /// Sends `sig` to the daemon (only the process this test started) and waits for it.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        // SAFETY: kill on a pid we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, sig) };
        let t = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                return c.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.mnt.join(file)
    }

    /// The socket the daemon takes seccomp notification fds on (beside its pid file).
    pub fn seccomp_socket(&self) -> PathBuf {
        self.dir.join("keeper.sock")
    }

    /// A file of the daemon's own directory (pid file, state, records).
    pub fn own_file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal_and_wait(libc::SIGTERM);
        }
        // The keeper's mounts: the main one, the cached tree, the trigger connection.
        let mounts = [self.mnt.clone(), self.cache(), self.psi()];
        for m in &mounts {
            if is_mounted(m) {
                let c = std::ffi::CString::new(m.to_string_lossy().as_bytes()).unwrap();
                // SAFETY: valid path string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if !mounts.iter().any(|m| is_mounted(m)) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Limits for a throwaway cgroup.
#[derive(Default, Clone)]
pub struct Limits {
    pub memory: Option<u64>,
    pub swap: Option<u64>,
    /// (quota µs, period µs)
    pub cpu: Option<(u64, u64)>,
    pub cpuset: Option<String>,
}

/// A throwaway cgroup: the daemon's own `cgprocfs run` cgroup ([`Transient`]) under a name
/// unique to the test, plus ways to run commands in it. Removed on drop (children first).
pub struct TestCgroup(Transient);

impl std::ops::Deref for TestCgroup {
    type Target = Transient;
    fn deref(&self) -> &Transient {
        &self.0
    }
}

fn run_limits(l: &Limits) -> RunLimits {
    RunLimits {
        memory: l.memory,
        swap: l.swap,
        cpus: l.cpu.map(|(q, p)| q as f64 / p as f64),
        cpuset: l.cpuset.clone(),
        pids: None,
    }
}

impl TestCgroup {
    pub fn new(tag: &str, limits: &Limits) -> TestCgroup {
        TestCgroup(Transient::create(&unique(tag), &run_limits(limits)).unwrap_or_else(|e| panic!("cgroup {tag}: {e}")))
    }

    pub fn child(&self, tag: &str, limits: &Limits) -> TestCgroup {
        self.child_named(&unique(tag), limits)
    }

    /// A child cgroup with exactly this name (e.g. `init.scope`), removed with its parent.
    pub fn child_named(&self, name: &str, limits: &Limits) -> TestCgroup {
        TestCgroup(self.0.child(name, &run_limits(limits)).unwrap_or_else(|e| panic!("cgroup {name}: {e}")))
    }

    /// `cmd` run inside the cgroup via a shell that joins it first, then execs.
    pub fn command(&self, cmd: &str) -> Command {
        let joins: String =
            self.dirs.iter().map(|(_, d)| format!("echo $$ > {}/cgroup.procs && ", d.display())).collect();
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("{joins}exec {cmd}"));
        c
    }

    /// Runs `cmd` inside the cgroup and returns its stdout, failing on a non-zero exit.
    pub fn run(&self, cmd: &str) -> String {
        let out: Output = self.command(cmd).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A meminfo-style field (`MemTotal:  123 kB` -> 123).
pub fn field(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label} in\n{text}"))
}

pub fn host_cpus() -> usize {
    let t = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    cgprocfs::cgroup::cpuset::parse_list(Path::new("online"), &t).unwrap().len()
}

/// The total of BusyBox `free -m`'s "Mem:" line, MiB (from sysinfo(2)).
pub fn mem_total_mib(free: &str) -> u64 {
    let line = free.lines().find(|l| l.starts_with("Mem:")).unwrap_or_else(|| panic!("no Mem: line in {free:?}"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad Mem: line {line:?}"))
}
