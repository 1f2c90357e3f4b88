//! What answering sysinfo(2) through seccomp user notification costs per call: a process in a
//! 256 MiB cgroup calls sysinfo plainly, then under a filter that notifies it, with the
//! notification fd handed to a real daemon exactly as runc hands it (container state JSON +
//! SCM_RIGHTS on the daemon's socket).   cargo bench --bench sysinfo [-- CALLS]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Daemon, Limits, TestCgroup};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Median and p99 of `n` sysinfo calls, µs, and the total RAM the last one reported.
fn time_calls(n: usize) -> (f64, f64, u64) {
    let mut lat = Vec::with_capacity(n);
    // SAFETY: zeroed struct filled by the kernel (or by the daemon).
    let mut s: libc::sysinfo = unsafe { std::mem::zeroed() };
    for _ in 0..n {
        let t = Instant::now();
        // SAFETY: valid pointer.
        unsafe { libc::sysinfo(&mut s) };
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    let q = |f: f64| lat[((n as f64 * f) as usize).min(n - 1)] as f64 / 1000.0;
    (q(0.5), q(0.99), s.totalram * u64::from(s.mem_unit))
}

/// Installs a filter that notifies sysinfo and returns the listener fd.
fn notify_sysinfo() -> i32 {
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let prog = [
        f(0x20, 0, 0, 4), // ld arch
        f(0x15, 0, 3, cgprocfs::seccomp::abi::AUDIT_ARCH_NATIVE),
        f(0x20, 0, 0, 0), // ld nr
        f(0x15, 0, 1, libc::SYS_sysinfo as u32),
        f(0x06, 0, 0, 0x7fc0_0000), // SECCOMP_RET_USER_NOTIF
        f(0x06, 0, 0, 0x7fff_0000), // SECCOMP_RET_ALLOW
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut _ };
    // SAFETY: prctl/seccomp with a valid program; NO_NEW_PRIVS as seccomp requires.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::syscall(libc::SYS_seccomp, 1, 1 << 3, &fprog as *const libc::sock_fprog) as i32
    }
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    common::live_ready("sysinfo bench");
    let d = Daemon::start("bench-sysinfo");
    let cg = TestCgroup::new("bench-sysinfo", &Limits { memory: Some(256 << 20), ..Default::default() });
    let socket = d.seccomp_socket();
    // SAFETY: fork of this single-threaded process; the child only runs the measurement and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for (_, dir) in &cg.dirs {
            let _ = std::fs::write(dir.join("cgroup.procs"), "0");
        }
        let plain = time_calls(n);
        let listener = notify_sysinfo();
        assert!(listener >= 0, "seccomp: {}", std::io::Error::last_os_error());
        let conn = std::os::unix::net::UnixStream::connect(&socket).expect("daemon socket");
        let state = br#"{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":0,"state":{"id":"bench"}}"#;
        cgprocfs::seccomp::send_fds(conn.as_raw_fd(), state, &[listener]).expect("send the fd");
        drop(conn);
        // SAFETY: our copy; the daemon holds its own.
        unsafe { libc::close(listener) };
        time_calls(100); // the daemon caches the caller on the first call
        let answered = time_calls(n);
        println!("\nsysinfo(2) from a 256 MiB cgroup, {n} calls each");
        println!("{:<34} {:>10} {:>10} {:>14}", "", "median us", "p99 us", "totalram MiB");
        for (name, (m, p, t)) in [("kernel", plain), ("answered by cgprocfs (seccomp)", answered)] {
            println!("{name:<34} {m:>10.2} {p:>10.2} {:>14}", t >> 20);
        }
        println!("answered / kernel: {:.0}x", answered.0 / plain.0.max(0.001));
        // SAFETY: leave without running the parent's destructors (daemon, cgroup) twice.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    drop(cg);
    drop(d);
}
