//! Identity of handles and callers: a handle answers only for its inode, handle numbers of two
//! serving processes never meet even under one pid, and a host pid recycled by another
//! container's process is not taken for its previous owner.

mod common;

use cgprocfs::fuse::abi::{op, InHeader, Out};
use cgprocfs::fuse::session::{Handler, Reply};
use cgprocfs::fuse::ProcFs;
use cgprocfs::service::{Options, Service};
use cgprocfs::Root;
use common::*;
use std::sync::Arc;

const MIB: u64 = 1024 * 1024;

fn fs() -> ProcFs {
    ProcFs::new(Arc::new(Service::new(Root::new("/"), Options::default()).unwrap()))
}

fn data(r: Reply) -> Vec<u8> {
    match r {
        Reply::Data(d) => d,
        Reply::Err(e) => panic!("errno {}", e.0),
        Reply::None => panic!("no reply"),
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

fn header(opcode: u32, nodeid: u64) -> InHeader {
    InHeader { opcode, nodeid, pid: std::process::id(), ..Default::default() }
}

fn lookup(f: &ProcFs, path: &str) -> u64 {
    path.split('/')
        .fold(1, |dir, name| u64_at(&data(f.dispatch(&header(op::LOOKUP, dir), format!("{name}\0").as_bytes())), 0))
}

fn open(f: &ProcFs, ino: u64) -> u64 {
    let mut b = Out::default();
    b.u32(libc::O_RDONLY as u32).u32(0);
    u64_at(&data(f.dispatch(&header(op::OPEN, ino), &b.0)), 0)
}

fn read(f: &ProcFs, ino: u64, fh: u64) -> Reply {
    let mut b = Out::default();
    // read_flags FUSE_READ_LOCKOWNER: a read(2), as the kernel sends it.
    b.u64(fh).u64(0).u32(4096).u32(2).u64(0).u32(0).u32(0);
    f.dispatch(&header(op::READ, ino), &b.0)
}

fn a_handle_reads_only_the_inode_it_was_opened_on() {
    live_ready("a_handle_reads_only_the_inode_it_was_opened_on");
    let f = fs();
    let (meminfo, cpuinfo) = (lookup(&f, "proc/meminfo"), lookup(&f, "proc/cpuinfo"));
    let fh = open(&f, meminfo);
    assert!(data(read(&f, meminfo, fh)).starts_with(b"MemTotal:"));
    match read(&f, cpuinfo, fh) {
        Reply::Err(e) => assert_eq!(e.0, libc::EBADF),
        Reply::Data(d) => panic!("meminfo's handle read through cpuinfo: {:?}", String::from_utf8_lossy(&d[..20])),
        Reply::None => panic!("no reply"),
    }
}

fn two_servers_in_one_pid_hand_out_different_handle_numbers() {
    live_ready("two_servers_in_one_pid_hand_out_different_handle_numbers");
    // A worker whose pid is its predecessor's: same process here, two servers.
    let (a, b) = (fs(), fs());
    let ino = lookup(&a, "proc/meminfo");
    let (ha, hb) = (open(&a, ino), open(&b, ino));
    assert_ne!(ha >> 32, hb >> 32, "handle numbers {ha:#x} and {hb:#x} share their range");
}

/// Runs `cat meminfo` in `cg` and returns (its pid, MemTotal).
fn read_in(cg: &TestCgroup, d: &Daemon) -> (u32, u64) {
    let c = cg
        .command(&format!("cat {}", d.path("proc/meminfo").display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = c.id();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    (pid, field(&String::from_utf8_lossy(&out.stdout), "MemTotal"))
}

fn a_recycled_pid_is_not_taken_for_its_previous_owner() {
    live_ready("a_recycled_pid_is_not_taken_for_its_previous_owner");
    let d = Daemon::start("recycle");
    let a = TestCgroup::new("recycle-a", &Limits { memory: Some(128 * MIB), ..Default::default() });
    let b = TestCgroup::new("recycle-b", &Limits { memory: Some(256 * MIB), ..Default::default() });
    for _ in 0..50 {
        let (pa, ma) = read_in(&a, &d);
        assert_eq!(ma, 128 * 1024);
        // Another tick of start time, well inside the caller cache's lifetime.
        std::thread::sleep(std::time::Duration::from_millis(30));
        // The next process the host forks gets the same pid.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pa - 1).to_string()).unwrap();
        let (pb, mb) = read_in(&b, &d);
        if pb != pa {
            continue; // another process took it first; try again
        }
        assert_eq!(mb, 256 * 1024, "pid {pb} of the 256 MiB cgroup was served the 128 MiB cgroup's meminfo");
        return;
    }
    panic!("could not get a pid recycled in 50 tries");
}

cgprocfs_tests!(
    a_handle_reads_only_the_inode_it_was_opened_on,
    two_servers_in_one_pid_hand_out_different_handle_numbers,
    a_recycled_pid_is_not_taken_for_its_previous_owner,
);
