//! Helpers of the live tests: the environment check, a daemon on a private mount point and
//! throwaway cgroups, all removed on drop even when the test fails.
#![allow(dead_code)]

use cgprocfs::cgroup::Hierarchies;
use cgprocfs::Root;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether live tests can run here. Under `CI=true` a missing prerequisite fails the test;
/// elsewhere the test is skipped, saying so on stderr.
pub fn live_ready(test: &str) -> bool {
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
    if missing.is_empty() {
        return true;
    }
    let msg = format!("live test {test} needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true: failing instead of skipping)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A name unique to this test process and call.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("cgprocfs-test-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cgprocfs")
}

pub fn is_mounted(p: &Path) -> bool {
    let p = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*p))
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

    /// Starts (or restarts) the serving process on the same mount point.
    pub fn spawn(&mut self, extra: &[&str]) {
        let child = Command::new(bin())
            .arg("serve")
            .arg(&self.mnt)
            // Pid file, state file and CPU records in this test's directory, removed with it.
            .arg("--pidfile")
            .arg(self.dir.join("keeper.pid"))
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

    /// Pid of the keeper's current worker, waiting up to 10 s for one to be running.
    pub fn worker_pid(&self) -> i32 {
        let children = format!("/proc/{0}/task/{0}/children", self.pid());
        let t = Instant::now();
        loop {
            let c = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(p) = c.split_whitespace().next().and_then(|p| p.parse().ok()) {
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal_and_wait(libc::SIGTERM);
        }
        if is_mounted(&self.mnt) {
            let c = std::ffi::CString::new(self.mnt.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: valid path string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if !is_mounted(&self.mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Limits for a throwaway cgroup.
#[derive(Default, Clone)]
pub struct Limits {
    pub memory: Option<u64>,
    /// (quota µs, period µs)
    pub cpu: Option<(u64, u64)>,
    pub cpuset: Option<String>,
}

/// A cgroup created in every hierarchy the views read (v1 memory/cpu/cpuset, or v2), with
/// optional limits; children can be nested in it. Removed on drop, innermost first.
pub struct TestCgroup {
    /// (controller, directory) created, one per hierarchy; controller "" on v2.
    pub dirs: Vec<(&'static str, PathBuf)>,
}

fn write(p: &Path, v: &str) {
    std::fs::write(p, v).unwrap_or_else(|e| panic!("write {v:?} to {}: {e}", p.display()));
}

impl TestCgroup {
    pub fn new(tag: &str, limits: &Limits) -> TestCgroup {
        let h = Hierarchies::discover(&Root::new("/")).unwrap();
        let name = unique(tag);
        let mut dirs: Vec<(&'static str, PathBuf)> = Vec::new();
        for c in ["memory", "cpu", "cpuacct", "cpuset", "blkio"] {
            // Controllers co-mounted in one hierarchy (cpu,cpuacct) get one directory.
            if let Some(m) = h.v1_mount(c).filter(|m| !dirs.iter().any(|(_, d)| d.parent() == Some(*m))) {
                dirs.push((c, m.join(&name)));
            }
        }
        match h.v2_mount() {
            Some(top) if dirs.is_empty() => {
                let _ = std::fs::write(top.join("cgroup.subtree_control"), "+memory +cpu +cpuset");
                dirs.push(("", top.join(&name)));
            }
            // Hybrid: runtimes also give the container its own v2 cgroup (cpu.stat, PSI).
            Some(top) => dirs.push(("unified", top.join(&name))),
            None => {}
        }
        let cg = TestCgroup { dirs };
        cg.create(limits);
        cg
    }

    pub fn child(&self, tag: &str, limits: &Limits) -> TestCgroup {
        let name = unique(tag);
        for (c, d) in &self.dirs {
            if c.is_empty() {
                write(&d.join("cgroup.subtree_control"), "+memory +cpu +cpuset");
            }
        }
        let cg = TestCgroup { dirs: self.dirs.iter().map(|(c, d)| (*c, d.join(&name))).collect() };
        cg.create(limits);
        cg
    }

    fn create(&self, l: &Limits) {
        for (c, d) in &self.dirs {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            let v2 = c.is_empty();
            let parent = d.parent().unwrap();
            if *c == "cpuset" {
                // v1 cpusets start empty and refuse tasks until cpus and mems are set.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(parent.join(f)).unwrap();
                    write(&d.join(f), v.trim());
                }
            }
            if let (Some(m), true) = (l.memory, v2 || *c == "memory") {
                write(&d.join(if v2 { "memory.max" } else { "memory.limit_in_bytes" }), &m.to_string());
            }
            if let (Some((q, p)), true) = (l.cpu, v2 || *c == "cpu") {
                if v2 {
                    write(&d.join("cpu.max"), &format!("{q} {p}"));
                } else {
                    write(&d.join("cpu.cfs_period_us"), &p.to_string());
                    write(&d.join("cpu.cfs_quota_us"), &q.to_string());
                }
            }
            if let (Some(s), true) = (&l.cpuset, v2 || *c == "cpuset") {
                write(&d.join("cpuset.cpus"), s);
            }
        }
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

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Whatever still runs in the cgroup was started by this test (a namespace's init left
        // behind by a killed unshare, say): end it so the cgroup can go.
        for (_, d) in &self.dirs {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill by pid of a process this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for (_, d) in &self.dirs {
            // Tasks just exited may keep a cgroup busy for a moment.
            for _ in 0..100 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
                    _ => break,
                }
            }
        }
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
