//! The peers a bench compares against in the same run (include `tests/common` as `common`
//! beside it): a daemon of another build
//! (`CGPROCFS_BENCH_BASELINE=/path/to/an/older/cgprocfs`) and lxcfs (when installed). Each is
//! stopped, by the pid this bench started, and its mount removed on drop.

// Each bench uses its own part of this file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon of another build, serving `<dir>/mnt` (its cached tree at `<dir>/keeper.cache`).
pub struct Baseline {
    child: Child,
    pub dir: PathBuf,
}

impl Baseline {
    /// Starts the build named by `CGPROCFS_BENCH_BASELINE`, if set, and waits until it serves.
    pub fn start(unique: String) -> Option<Baseline> {
        let bin = std::env::var_os("CGPROCFS_BENCH_BASELINE")?;
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(dir.join("mnt")).ok()?;
        let child = Command::new(&bin)
            .arg("serve")
            .arg(dir.join("mnt"))
            .arg("--pidfile")
            .arg(dir.join("keeper.pid"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let b = Baseline { child, dir };
        wait_served(&b.mnt().join("proc/meminfo"), "the baseline daemon")?;
        Some(b)
    }

    /// Its shared tree.
    pub fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// Its cached tree.
    pub fn cache(&self) -> PathBuf {
        self.dir.join("keeper.cache")
    }

    /// Its worker's pid.
    pub fn worker_pid(&self) -> Option<i32> {
        crate::common::worker_of(self.child.id() as i32)
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        // SAFETY: the daemon this bench started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// lxcfs serving a temporary mount point.
pub struct Lxcfs {
    child: Child,
    pub mnt: PathBuf,
}

impl Lxcfs {
    /// Starts lxcfs with `args` (`-l`: its load average thread) when it is installed.
    pub fn start(unique: String, args: &[&str]) -> Option<Lxcfs> {
        let bin = ["/usr/bin/lxcfs", "/bin/lxcfs"].into_iter().find(|p| Path::new(p).exists())?;
        let mnt = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&mnt).ok()?;
        let child = Command::new(bin)
            .arg("-f")
            .args(args)
            .arg(&mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let l = Lxcfs { child, mnt };
        wait_served(&l.mnt.join("proc/meminfo"), "lxcfs")?;
        Some(l)
    }

    /// Its pid (one process; its threads' CPU time is in its own).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Lxcfs {
    fn drop(&mut self) {
        // SAFETY: signal to the lxcfs this bench started, by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        if let Ok(c) = std::ffi::CString::new(self.mnt.to_string_lossy().as_bytes()) {
            // SAFETY: valid path string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

/// Waits up to 10 s for `file` to read non-empty.
pub fn wait_served(file: &Path, who: &str) -> Option<()> {
    let t = Instant::now();
    while std::fs::read(file).map(|b| b.is_empty()).unwrap_or(true) {
        if t.elapsed() > Duration::from_secs(10) {
            eprintln!("{who} did not come up; comparing without it");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(())
}
