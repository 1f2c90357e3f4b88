//! Live: hostile callers of the seccomp answer. A client (tests/helpers/notify.py) installs a
//! filter notifying sysinfo(2), hands its listener to the daemon as runc does and calls from a
//! throwaway cgroup: answers land only where the kernel would write, a buffer on a hung FUSE
//! file cannot stall another container's answer, only root may hand fds, only runc's message
//! is taken, and 2 000 containers fit under a default soft open-file limit.
#![cfg(target_arch = "x86_64")]

use crate::common;

use cgprocfs::fuse::abi::InHeader;
use cgprocfs::fuse::reply::Attr;
use cgprocfs::fuse::request::Request;
use cgprocfs::fuse::session::{self, Handler, Reply};
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

fn helper() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/notify.py")
}

fn ready(test: &str) {
    live_ready(test);
    programs_ready(test, &["python3"]);
}

/// Runs `notify.py SOCK call ARGS` in `cg`, waiting at most `limit`; its last JSON line.
fn call(cg: &TestCgroup, d: &Daemon, args: &str, limit: Duration) -> Result<Value, String> {
    let mut c = cg
        .command(&format!("python3 {} {} call {args}", helper(), d.seccomp_socket().display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            return Err(format!("no answer within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().ok_or_else(|| format!("no output: {}", String::from_utf8_lossy(&out.stderr)))?;
    serde_json::from_str(last).map_err(|e| format!("{e}: {text}"))
}

fn answers_follow_page_protection() {
    let test = "answers_follow_page_protection";
    ready(test);
    let d = Daemon::start("sec-prot");
    let cg = TestCgroup::new("sec-prot", &Limits { memory: Some(256 * MIB), ..Default::default() });
    let normal = call(&cg, &d, "normal", Duration::from_secs(20)).unwrap();
    assert_eq!(normal["ret"], 0, "{normal}");
    assert_eq!(normal["total"], 256 * MIB, "{normal}");
    // A PROT_READ buffer: the kernel's copy_to_user fails with EFAULT, and so do we.
    let ro = call(&cg, &d, "readonly", Duration::from_secs(20)).unwrap();
    assert_eq!(ro["errno"], libc::EFAULT, "{ro}");
    assert_eq!(ro["zeros"], true, "read-only memory was written: {ro}");
}

/// A FUSE file system that answers everything but READ: a page of its file never arrives.
struct Hung;

impl Handler for Hung {
    fn handle(&self, h: &InHeader, req: Request<'_>) -> Reply {
        let file = Attr { ino: 2, size: 4096, mode: libc::S_IFREG | 0o666, nlink: 1, time: 0, nsec: 0 };
        let dir = Attr { ino: 1, size: 0, mode: libc::S_IFDIR | 0o755, nlink: 2, time: 0, nsec: 0 };
        let ttl = Duration::from_secs(60);
        match req {
            Request::Lookup { name: b"file" } => Reply::entry(2, ttl, ttl, &file),
            Request::Lookup { .. } => Reply::err(libc::ENOENT),
            Request::Getattr => Reply::attr(ttl, if h.nodeid == 2 { &file } else { &dir }),
            Request::Open { .. } => Reply::open(1, 0),
            Request::Read { .. } | Request::Forget { .. } | Request::Interrupt => Reply::None,
            Request::Flush | Request::Release { .. } => Reply::empty(),
            _ => Reply::err(libc::ENOSYS),
        }
    }
}

/// Aborts the hung connection (so every reader stuck on it gets an error) and unmounts it.
struct HungMount {
    mnt: std::path::PathBuf,
    conn: u64,
}

impl Drop for HungMount {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{}/abort", self.conn), "1");
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

fn a_buffer_on_a_hung_fuse_file_cannot_stall_other_containers() {
    let test = "a_buffer_on_a_hung_fuse_file_cannot_stall_other_containers";
    ready(test);
    if !std::path::Path::new("/sys/fs/fuse/connections").read_dir().is_ok_and(|mut d| d.next().is_some()) {
        let _ =
            std::process::Command::new("mount").args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"]).status();
    }
    let d = Daemon::start("sec-hung");
    let mnt = std::env::temp_dir().join(unique("hungfs"));
    std::fs::create_dir_all(&mnt).unwrap();
    let (fd, _) = session::mount(&mnt, "hungfs").unwrap();
    let fd = Arc::new(fd);
    session::spawn_workers(std::slice::from_ref(&fd), Arc::new(Hung), Duration::ZERO).unwrap();
    let conn = {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(&mnt).unwrap().dev();
        libc::minor(dev) as u64 | ((libc::major(dev) as u64) << 20)
    };
    let _guard = HungMount { mnt: mnt.clone(), conn };

    let hostile = TestCgroup::new("sec-hostile", &Limits { memory: Some(128 * MIB), ..Default::default() });
    let mut h: Child = hostile
        .command(&format!(
            "python3 {} {} call file --file {}",
            helper(),
            d.seccomp_socket().display(),
            mnt.join("file").display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(h.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    if !line.contains("calling") {
        let _ = h.kill();
        let out = h.wait_with_output().unwrap();
        panic!("the hostile client did not get to its call: {line} {}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(Duration::from_millis(300));

    // Another container's sysinfo is answered, with its own memory, while that one hangs.
    let bystander = TestCgroup::new("sec-bystander", &Limits { memory: Some(256 * MIB), ..Default::default() });
    let r = call(&bystander, &d, "normal", Duration::from_secs(10));
    drop(_guard);
    let _ = h.kill();
    let _ = h.wait();
    let r = r.unwrap_or_else(|e| panic!("the bystander's sysinfo stalled behind the hostile container: {e}"));
    assert_eq!(r["total"], 256 * MIB, "{r}");
}

fn only_root_may_hand_fds_and_only_runc_messages_count() {
    let test = "only_root_may_hand_fds_and_only_runc_messages_count";
    ready(test);
    let d = Daemon::start("sec-peer");
    let sock = d.seccomp_socket();
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    let cg = TestCgroup::new("sec-peer", &Limits { memory: Some(256 * MIB), ..Default::default() });
    // As if the mode had been loosened (or raced): a local user connects anyway.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = call(&cg, &d, "normal --as-nobody", Duration::from_secs(20)).unwrap();
    // Refused: nobody holds the listener any more, and the kernel answers ENOSYS.
    assert_eq!(r["errno"], libc::ENOSYS, "a non-root peer's fd was taken: {r}");
    let r = call(&cg, &d, "normal --bad-message", Duration::from_secs(20)).unwrap();
    assert_eq!(r["errno"], libc::ENOSYS, "a message without ociVersion was taken: {r}");
    // The real thing still works.
    let r = call(&cg, &d, "normal", Duration::from_secs(20)).unwrap();
    assert_eq!(r["total"], 256 * MIB, "{r}");
}

fn two_thousand_containers_under_a_default_open_file_limit() {
    let test = "two_thousand_containers_under_a_default_open_file_limit";
    ready(test);
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if hard < 8192 {
        common::harness::skip(format!("{test} needs a hard open-file limit of 8192 (have {hard})"));
    }
    // The daemon starts with the usual soft limit of 1024, as from a shell or an old unit.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024.min(soft), hard).unwrap();
    let d = Daemon::start("sec-many");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let mut many = std::process::Command::new("python3")
        .args([helper(), d.seccomp_socket().to_str().unwrap(), "hand", "2000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(many.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The 2 001st container still gets its answer.
    let cg = TestCgroup::new("sec-many", &Limits { memory: Some(256 * MIB), ..Default::default() });
    let r = call(&cg, &d, "normal", Duration::from_secs(30));
    let _ = many.stdin.take().unwrap().write_all(b"");
    drop(many.stdin.take());
    let _ = many.kill();
    let _ = many.wait();
    let r = r.unwrap();
    assert_eq!(r["ret"], 0, "the container after 2 000 others: {r}\n{}", d.log());
    assert_eq!(r["total"], 256 * MIB, "{r}");
}

crate::cgprocfs_tests!(
    answers_follow_page_protection,
    a_buffer_on_a_hung_fuse_file_cannot_stall_other_containers,
    only_root_may_hand_fds_and_only_runc_messages_count,
    two_thousand_containers_under_a_default_open_file_limit,
);
