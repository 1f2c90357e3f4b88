//! A hostile container process for the trigger tests: `cgprocfs run`'s container running a
//! script that drops to user nobody without capabilities before it attacks.

use super::{contained_python, Daemon};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The attacker, run inside a `cgprocfs run` container. As root it raises its open-file limit,
/// then becomes nobody with no capabilities. Modes:
/// - `take N [POLLS]`: opens /proc/pressure/memory and writes a valid unprivileged trigger, up
///   to N times, printing `taken COUNT WHAT ERRNO` (WHAT: `open`/`write`/`-`); with POLLS,
///   polls them all POLLS times for 10 ms and prints `polled`; then waits for a line on stdin
///   and exits (the kernel releases every handle).
/// - `write LINE`: writes LINE as a trigger, prints `ok` or `error ERRNO`.
pub const ATTACKER: &str = r#"
import os, resource, select, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
os.setgroups([]); os.setgid(65534); os.setuid(65534)
assert open("/proc/self/status").read().split("CapEff:")[1].split()[0].strip("0") == ""
path = "/proc/pressure/memory"
if sys.argv[1] == "write":
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, sys.argv[2].encode()); print("ok", flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)
    sys.exit(0)
n = int(sys.argv[2]); fds = []; what, err = "-", 0
for _ in range(n):
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError as e:
        what, err = "open", e.errno; break
    try:
        os.write(fd, b"some 100000 2000000")
    except OSError as e:
        os.close(fd); what, err = "write", e.errno; break
    fds.append(fd)
print("taken", len(fds), what, err, flush=True)
if len(sys.argv) > 3:
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLPRI)
    for _ in range(int(sys.argv[3])):
        p.poll(10)
    print("polled", flush=True)
sys.stdin.readline()
"#;

/// An attacker in a `cgprocfs run` container of daemon `d`.
pub struct Attacker {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Attacker {
    pub fn start(d: &Daemon, script: &std::path::Path, args: &[&str]) -> Attacker {
        let args: Vec<&std::ffi::OsStr> =
            std::iter::once(script.as_os_str()).chain(args.iter().map(std::ffi::OsStr::new)).collect();
        let mut child = contained_python(d, "64M", &args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Attacker { child, out }
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    /// Lets it exit and waits for it (its handles are released by the kernel).
    pub fn finish(&mut self) {
        if let Some(mut i) = self.child.stdin.take() {
            let _ = writeln!(i);
        }
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.finish();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taken COUNT WHAT ERRNO` -> (COUNT, WHAT, ERRNO).
pub fn taken(l: &str) -> (usize, String, i32) {
    let f: Vec<&str> = l.split_whitespace().collect();
    assert!(f.len() == 4 && f[0] == "taken", "attacker said {l:?}");
    (f[1].parse().unwrap(), f[2].to_string(), f[3].parse().unwrap())
}
