//! Does FUSE over io_uring (Linux 6.14+, `CONFIG_FUSE_IO_URING`) beat the classic `/dev/fuse`
//! floor here? A prototype transport — one SQE128 ring per possible CPU, each served by a
//! thread pinned to that CPU, requests fetched and answered with `FUSE_IO_URING_CMD_REGISTER` /
//! `COMMIT_AND_FETCH` — serves the daemon's own `ProcFs` (the constant `.bench/floor` file),
//! side by side with a classic daemon's floor, 1 and 2 readers.
//!   cargo bench --features uring-bench --bench uring_floor [-- SECONDS]
//! Needs root; sets `/sys/module/fuse/parameters/enable_uring` for the run and restores it.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/reads.rs"]
mod reads;

use cgprocfs::fuse::abi::InHeader;
use cgprocfs::fuse::session::{self, Handler, Reply};
use cgprocfs::fuse::ProcFs;
use cgprocfs::service::{Options, Service};
use cgprocfs::Root;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: in_out[128], op_in[128], `fuse_uring_ent_in_out` (32).
const HEADER: usize = 288;
const ENT: usize = 256;
/// At least the connection's largest payload (max_pages 32 x 4 KiB).
const PAYLOAD: usize = 256 << 10;
const ENTRIES_PER_QUEUE: usize = 2;

/// One registered ring entry: its header and payload buffers and the iovecs naming them.
struct Entry {
    header: Box<[u8; HEADER]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

fn cmd(qid: u16, commit_id: u64) -> [u8; 80] {
    // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

/// A URING_CMD SQE for `e`, with the iovec count (`sqe->len`) the crate has no setter for.
fn sqe(fd: RawFd, op: u32, qid: u16, commit_id: u64, e: &Entry, user_data: u64) -> squeue::Entry128 {
    let built = opcode::UringCmd80::new(types::Fd(fd), op)
        .cmd(cmd(qid, commit_id))
        .addr(Some(e.iov.as_ptr() as u64))
        .build()
        .user_data(user_data);
    // SAFETY: Entry128 is repr(C), 128 bytes: the 64-byte SQE then the extra command area.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(built) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes()); // sqe->len: header and payload
                                                      // SAFETY: same layout back.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Serves queue `qid` until the connection goes away.
fn serve_queue(fd: RawFd, qid: u16, fs: Arc<ProcFs>, served: Arc<AtomicU64>) -> std::io::Result<()> {
    pin(qid as usize);
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build(16)?;
    let mut ents: Vec<Entry> = (0..ENTRIES_PER_QUEUE)
        .map(|_| {
            let mut header = Box::new([0u8; HEADER]);
            let mut payload = vec![0u8; PAYLOAD];
            let iov = Box::new([
                libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: HEADER },
                libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: PAYLOAD },
            ]);
            Entry { header, payload, iov }
        })
        .collect();
    for (i, e) in ents.iter().enumerate() {
        // SAFETY: the buffers the SQE names live as long as the ring (this function).
        unsafe { ring.submission().push(&sqe(fd, CMD_REGISTER, qid, 0, e, i as u64)) }
            .map_err(|_| std::io::Error::other("submission queue full"))?;
    }
    loop {
        ring.submit_and_wait(1)?;
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (i, res) in done {
            if res < 0 {
                return Err(std::io::Error::from_raw_os_error(-res));
            }
            let e = &mut ents[i as usize];
            let h = &e.header;
            let u32at = |b: &[u8], o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
            let u64at = |b: &[u8], o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
            let hdr = InHeader {
                len: u32at(&h[..], 0),
                opcode: u32at(&h[..], 4),
                unique: u64at(&h[..], 8),
                nodeid: u64at(&h[..], 16),
                uid: u32at(&h[..], 24),
                gid: u32at(&h[..], 28),
                pid: u32at(&h[..], 32),
            };
            let commit_id = u64at(&h[..], ENT + 8);
            let payload_sz = (u32at(&h[..], ENT + 16) as usize).min(PAYLOAD);
            // The op's own header went to op_in, the rest of its arguments to the payload.
            let op_len = (hdr.len as usize).saturating_sub(40 + payload_sz).min(128);
            let mut body = h[128..128 + op_len].to_vec();
            body.extend_from_slice(&e.payload[..payload_sz]);
            let (error, out) = match fs.dispatch(&hdr, &body) {
                Reply::Data(d) => (0i32, d),
                Reply::Err(errno) => (-errno.0, Vec::new()),
                Reply::None => (0, Vec::new()),
            };
            let n = out.len().min(PAYLOAD);
            e.payload[..n].copy_from_slice(&out[..n]);
            let h = &mut e.header;
            h[0..4].copy_from_slice(&((16 + n) as u32).to_ne_bytes());
            h[4..8].copy_from_slice(&error.to_ne_bytes());
            h[8..16].copy_from_slice(&hdr.unique.to_ne_bytes());
            h[ENT + 16..ENT + 20].copy_from_slice(&(n as u32).to_ne_bytes());
            served.fetch_add(1, Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { ring.submission().push(&sqe(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, e, i)) }
                .map_err(|_| std::io::Error::other("submission queue full"))?;
        }
    }
}

fn measure(path: &Path, threads: usize, secs: f64) -> (f64, f64, f64) {
    let st = reads::measure(path, threads, secs);
    (st.median_us, st.p99_us, st.per_sec)
}

fn main() {
    let secs: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3.0);
    common::live_ready("uring_floor bench");
    let Ok(before) = std::fs::read_to_string(PARAM) else {
        println!("this kernel has no FUSE over io_uring ({PARAM} missing): nothing to compare");
        return;
    };
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(PARAM, self.0.trim());
        }
    }
    let restore = Restore(before);
    std::fs::write(PARAM, "Y").expect("enable_uring");

    let classic = common::Daemon::start_with("uring-classic", &["--bench-floor"]);
    let dir = std::env::temp_dir().join(common::unique("uring"));
    let mnt: PathBuf = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (fd, params) = session::mount_with_uring(&mnt, "cgprocfs-uring").expect("mount");
    let uring = params.flags & cgprocfs::fuse::abi::FUSE_INIT_EXT != 0;
    let svc = Arc::new(Service::new(Root::new("/"), Options::default()).expect("service"));
    let fs = Arc::new(ProcFs::with_floor(svc, true));
    let fd = Arc::new(fd);
    // The classic loop stays for FORGET, INTERRUPT and whatever comes before the rings.
    session::spawn_workers(std::slice::from_ref(&fd), fs.clone(), Duration::ZERO).expect("classic worker");
    let possible = common::host_cpus();
    let served = Arc::new(AtomicU64::new(0));
    if uring {
        for q in 0..possible {
            let (raw, fs, served) = (fd.as_raw_fd(), fs.clone(), served.clone());
            std::thread::spawn(move || {
                match serve_queue(raw, q as u16, fs, served) {
                    // The end of the run: the mount is gone.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
                    Err(e) => eprintln!("queue {q}: {e}"),
                    Ok(()) => {}
                }
            });
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let floor = mnt.join(".bench/floor");
    let _ = std::fs::read(&floor);
    let before_served = served.load(Ordering::Relaxed);
    let mut rows = Vec::new();
    for threads in [1, 2] {
        rows.push(("classic /dev/fuse floor", threads, measure(&classic.path(".bench/floor"), threads, secs)));
        rows.push(("io_uring floor (prototype)", threads, measure(&floor, threads, secs)));
    }
    let over_ring = served.load(Ordering::Relaxed) - before_served;
    let c = std::ffi::CString::new(mnt.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: valid path string.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    drop(classic);

    println!("\nopen+read+close of a constant file, {secs} s per row, {possible} CPUs, io_uring negotiated: {uring}");
    println!("{:<28} {:>7} {:>10} {:>10} {:>12}", "transport", "readers", "median us", "p99 us", "reads/s");
    for (name, t, (m, p, r)) in &rows {
        println!("{name:<28} {t:>7} {m:>10.1} {p:>10.1} {r:>12.0}");
    }
    println!("requests answered over the rings: {over_ring}");
    let _ = std::fs::remove_dir(&mnt);
    let _ = std::fs::remove_dir(&dir);
    drop(restore);
    // The queue threads are blocked on a connection that is gone: do not wait for them.
    std::process::exit(0);
}
