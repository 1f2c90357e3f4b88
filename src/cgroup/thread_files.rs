//! Threads' `/proc` files kept open between sampling passes (what [`super::held`] does for
//! cgroup files, for the sampler's per-thread reads).
//!
//! The run-delay pass reads every sampled thread's `/proc/<tid>/schedstat` each second, the
//! load pass its `stat` every 5 s: at agent scale thousands of opens and closes a second, each
//! a path walk through procfs. A kept file is read with `pread` from offset 0, where a proc
//! seq_file generates its text afresh, so it reads what a new open would. Its fd names the
//! thread, not the number: once the thread is gone its read fails (`ESRCH`), even if the tid
//! was reused meanwhile, and the file is closed and the path opened again (the new thread's).
//! Each kept file holds its seq_file buffer, a page of kernel memory, so at most [`BUDGET`]
//! are kept (~18 MiB), within the fd share of [`super::held::budget`]. Only files on a procfs
//! are kept (a fixture tree's plain files may be replaced).
//!
//! A thread's innermost pid (the `NSpid` of its `status`, for `ns_last_pid`) never changes, so
//! it is kept beside its `stat` file and read once.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// At most this many thread files are kept open.
pub const BUDGET: usize = 4096;
/// A kept file no pass read for this long is closed: its thread left the sample (or the
/// container is no longer read). Longer than the load pass's 5 s.
const IDLE: Duration = Duration::from_secs(15);

/// Which file of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `/proc/<tid>/stat`.
    Stat,
    /// `/proc/<tid>/schedstat`.
    Schedstat,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stat => "stat",
            Kind::Schedstat => "schedstat",
        }
    }
}

struct Kept {
    /// Reads are serialized: a read of a long seq_file continues where the previous `pread`
    /// stopped, which another reader's read at 0 would reset.
    file: Arc<Mutex<File>>,
    used: Instant,
    /// The thread's innermost pid, once read (kept with its `stat`).
    nspid: Option<u64>,
}

/// A kept file's key: its root (a hash of its path: a fixture tree's tids are not the live
/// host's), its thread and which file.
type Key = (u64, u32, Kind);

#[derive(Default)]
struct Table {
    files: HashMap<Key, Kept>,
}

fn key(root: &crate::Root, tid: u32, kind: Kind) -> Key {
    (crate::fnv(root.path().as_os_str().as_encoded_bytes()), tid, kind)
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The text of thread `tid`'s file `kind` under `root`, from its kept file when there is one.
pub fn read(root: &crate::Root, tid: u32, kind: Kind) -> std::io::Result<String> {
    let now = Instant::now();
    let key = key(root, tid, kind);
    let kept = table().lock().files.get_mut(&key).map(|k| {
        k.used = now;
        k.file.clone()
    });
    if let Some(f) = kept {
        match read_from_start(&f.lock()) {
            Ok(text) => return Ok(text),
            // The thread is gone (ESRCH), or anything else: closed, and opened anew below.
            Err(_) => {
                table().lock().files.remove(&key);
            }
        }
    }
    let f = File::open(root.proc_pid(tid).join(kind.name()))?;
    let text = read_from_start(&f)?;
    // Room first (and again once `fstatfs` is done): a full table costs no `fstatfs` per read.
    let room = BUDGET.min(super::held::budget());
    if table().lock().files.len() < room && on_procfs(&f) {
        let mut t = table().lock();
        if t.files.len() < room {
            t.files.insert(key, Kept { file: Arc::new(Mutex::new(f)), used: now, nspid: None });
        }
    }
    Ok(text)
}

/// Thread `tid`'s innermost pid: kept with its `stat` file (so read once per thread), else
/// read from its `status`.
pub fn innermost_nspid(root: &crate::Root, tid: u32) -> Option<u64> {
    let key = key(root, tid, Kind::Stat);
    if let Some(p) = table().lock().files.get(&key).and_then(|k| k.nspid) {
        return Some(p);
    }
    let status = crate::sys::read_text(&root.proc_pid(tid).join("status")).ok()?;
    let p = crate::procfs::innermost_nspid(&status)?.parse::<u64>().ok()?;
    if let Some(k) = table().lock().files.get_mut(&key) {
        k.nspid = Some(p);
    }
    Some(p)
}

/// Whether thread `tid`'s file `kind` under `root` is kept open now.
pub fn is_kept(root: &crate::Root, tid: u32, kind: Kind) -> bool {
    table().lock().files.contains_key(&key(root, tid, kind))
}

/// Closes the files no pass read for a while (the sampler's tick calls it).
pub fn close_idle() {
    let now = Instant::now();
    table().lock().files.retain(|_, k| now.duration_since(k.used) < IDLE);
}

/// `stat` and `schedstat` are one-record seq_files: a short read is the whole text.
fn read_from_start(f: &File) -> std::io::Result<String> {
    crate::sys::pread_all(f, true)
}

fn on_procfs(f: &File) -> bool {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    crate::sys::fs_type(f) == Some(PROC_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_thread_file_reads_afresh_and_a_gone_thread_is_opened_anew() {
        let root = crate::Root::new("/");
        // A thread of this test, kept while it lives.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let first = read(&root, tid, Kind::Schedstat).unwrap();
        assert!(is_kept(&root, tid, Kind::Schedstat), "a procfs thread file is kept open");
        assert_eq!(first.split_whitespace().count(), 3, "{first}");
        // Read again through the kept fd: a whole, fresh line.
        std::thread::sleep(Duration::from_millis(20));
        let again = read(&root, tid, Kind::Schedstat).unwrap();
        assert_eq!(again.split_whitespace().count(), 3, "{again}");
        let stat = read(&root, tid, Kind::Stat).unwrap();
        assert!(stat.starts_with(&format!("{tid} (")), "{stat}");
        assert_eq!(innermost_nspid(&root, tid), Some(tid as u64), "the host's own pid namespace");
        done_tx.send(()).unwrap();
        t.join().unwrap();
        // Gone (released a moment after join returns): the kept file fails its read, is
        // closed, and the path has no such thread.
        let gone = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            read(&root, tid, Kind::Schedstat).is_err()
        });
        assert!(gone, "a gone thread's file cannot be read");
        assert!(!is_kept(&root, tid, Kind::Schedstat), "a gone thread's file is closed");
    }

    #[test]
    fn plain_files_are_never_kept() {
        let dir = std::env::temp_dir().join(format!("cgprocfs-thread-files-{}", std::process::id()));
        let tid = 4_000_000_000u32;
        std::fs::create_dir_all(dir.join(format!("proc/{tid}"))).unwrap();
        let p = dir.join(format!("proc/{tid}/schedstat"));
        std::fs::write(&p, "1 2 3\n").unwrap();
        let root = crate::Root::new(&dir);
        assert_eq!(read(&root, tid, Kind::Schedstat).unwrap(), "1 2 3\n");
        assert!(!is_kept(&root, tid, Kind::Schedstat));
        std::fs::write(&p, "4 5 6\n").unwrap();
        assert_eq!(read(&root, tid, Kind::Schedstat).unwrap(), "4 5 6\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
