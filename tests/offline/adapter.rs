//! The shared tree's FUSE adapter (`fuse::ProcFs`) answering requests as the kernel sends them,
//! on a fixture tree captured from a real kernel: a handle answers only for its inode, handle
//! numbers of two serving processes never meet, a read at any offset is a slice of the one
//! rendering the handle holds, a handle from a predecessor is adopted, writes and unknown names
//! are refused.
//! No kernel FUSE here: `tests/live` proves the same through real mounts.

use crate::fixtures::{captured_pid, fixture};
use cgprocfs::fuse::abi::{op, InHeader, Out};
use cgprocfs::fuse::session::{Handler, Reply};
use cgprocfs::fuse::ProcFs;
use cgprocfs::service::{Options, Service};
use cgprocfs::Root;
use std::sync::Arc;

fn fs() -> ProcFs {
    ProcFs::new(Arc::new(Service::new(Root::new(fixture("hybrid-limited")), Options::default()).unwrap()))
}

/// A request from the process the fixture was captured for.
fn header(opcode: u32, nodeid: u64) -> InHeader {
    InHeader { opcode, nodeid, pid: captured_pid(&fixture("hybrid-limited")), ..Default::default() }
}

fn data(r: Reply) -> Vec<u8> {
    match r {
        Reply::Data(d) => d,
        Reply::Err(e) => panic!("errno {}", e.0),
        Reply::None => panic!("no reply"),
    }
}

fn errno(r: Reply) -> i32 {
    match r {
        Reply::Err(e) => e.0,
        Reply::Data(d) => panic!("answered {} bytes instead of an error", d.len()),
        Reply::None => panic!("no reply"),
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

fn lookup_reply(f: &ProcFs, dir: u64, name: &str) -> Reply {
    f.dispatch(&header(op::LOOKUP, dir), format!("{name}\0").as_bytes())
}

fn lookup(f: &ProcFs, path: &str) -> u64 {
    path.split('/').fold(1, |dir, name| u64_at(&data(lookup_reply(f, dir, name)), 0))
}

fn open_reply(f: &ProcFs, ino: u64, flags: i32) -> Reply {
    let mut b = Out::default();
    b.u32(flags as u32).u32(0);
    f.dispatch(&header(op::OPEN, ino), &b.0)
}

fn open(f: &ProcFs, ino: u64) -> u64 {
    u64_at(&data(open_reply(f, ino, libc::O_RDONLY)), 0)
}

fn read_at(f: &ProcFs, ino: u64, fh: u64, offset: u64, size: u32) -> Reply {
    let mut b = Out::default();
    // read_flags FUSE_READ_LOCKOWNER: a read(2), as the kernel sends it.
    b.u64(fh).u64(offset).u32(size).u32(2).u64(0).u32(0).u32(0);
    f.dispatch(&header(op::READ, ino), &b.0)
}

fn release(f: &ProcFs, ino: u64, fh: u64) {
    let mut b = Out::default();
    b.u64(fh).u32(0).u32(0).u64(0);
    let _ = f.dispatch(&header(op::RELEASE, ino), &b.0);
}

#[test]
fn a_handle_reads_only_the_inode_it_was_opened_on() {
    let f = fs();
    let (meminfo, cpuinfo) = (lookup(&f, "proc/meminfo"), lookup(&f, "proc/cpuinfo"));
    let fh = open(&f, meminfo);
    assert!(data(read_at(&f, meminfo, fh, 0, 4096)).starts_with(b"MemTotal:"));
    assert_eq!(errno(read_at(&f, cpuinfo, fh, 0, 4096)), libc::EBADF, "meminfo's handle read through cpuinfo");
}

#[test]
fn two_servers_in_one_pid_hand_out_different_handle_numbers() {
    // A worker whose pid is its predecessor's: same process here, two servers.
    let (a, b) = (fs(), fs());
    let ino = lookup(&a, "proc/meminfo");
    let (ha, hb) = (open(&a, ino), open(&b, ino));
    assert_ne!(ha >> 32, hb >> 32, "handle numbers {ha:#x} and {hb:#x} share their range");
}

#[test]
fn reads_at_any_offset_are_slices_of_one_rendering() {
    let f = fs();
    let ino = lookup(&f, "proc/meminfo");
    let fh = open(&f, ino);
    let whole = data(read_at(&f, ino, fh, 0, 65536));
    assert!(whole.len() > 200, "meminfo of the fixture: {} bytes", whole.len());
    // Odd offsets and sizes, as `tail`, `dd skip=` and short buffers ask.
    for (offset, size) in [(1u64, 7u32), (100, 50), (whole.len() as u64 - 3, 4096), (13, 1)] {
        let end = (offset as usize + size as usize).min(whole.len());
        assert_eq!(data(read_at(&f, ino, fh, offset, size)), whole[offset as usize..end], "at {offset}+{size}");
    }
    // At and past the end: empty, never an error or another rendering.
    for offset in [whole.len() as u64, whole.len() as u64 + 1, u64::MAX / 2] {
        assert!(data(read_at(&f, ino, fh, offset, 4096)).is_empty(), "at {offset}");
    }
}

#[test]
fn a_handle_opened_before_a_takeover_is_adopted() {
    // The kernel's handle from a predecessor process: unknown here, the inode says the file.
    let (before, f) = (fs(), fs());
    let ino = lookup(&before, "proc/meminfo");
    let fh = open(&before, ino);
    let first = data(read_at(&f, ino, fh, 0, 100));
    assert!(first.starts_with(b"MemTotal:"), "{}", String::from_utf8_lossy(&first));
    // Adopted: later offsets continue the same rendering.
    let whole = data(read_at(&f, ino, fh, 0, 65536));
    assert_eq!(data(read_at(&f, ino, fh, 50, 20)), whole[50..70]);
    release(&f, ino, fh);
    // A handle on a directory is none of the files.
    assert_eq!(errno(read_at(&f, lookup(&f, "proc"), fh, 0, 4096)), libc::EBADF);
}

#[test]
fn writes_unknown_names_and_directories_get_errors() {
    let f = fs();
    let meminfo = lookup(&f, "proc/meminfo");
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(errno(open_reply(&f, meminfo, flags)), libc::EROFS, "open with flags {flags:#o}");
    }
    assert_eq!(errno(lookup_reply(&f, 1, "no-such-file")), libc::ENOENT);
    assert_eq!(errno(lookup_reply(&f, lookup(&f, "proc"), "meminfo/..")), libc::ENOENT);
    assert_eq!(errno(open_reply(&f, lookup(&f, "proc"), libc::O_RDONLY)), libc::EISDIR);
}
