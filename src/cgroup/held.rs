//! Cgroup directories kept open between reads.
//!
//! A container's counters are read every sampling pass, and at agent scale the path walk of
//! each `open(2)` (every component of `/sys/fs/cgroup/<ctrl>/kubepods/.../<container>/`,
//! each a dentry lookup and a kernfs revalidation) cost more than the rest of the read. So
//! each cgroup directory read from is kept open and its files are opened relative to it
//! (`openat(2)`: one component to look up).
//!
//! The files read again and again (a 1 Hz agent's `cpuacct.usage`, `memory.stat`, ...) are kept
//! open too, and read with `pread(2)` from offset 0: a cgroup file is a seq_file, which
//! generates its text afresh for a read at offset 0, so a kept file reads what a new open
//! would, without the open and the close. A kept file costs the kernel its seq_file buffer (a
//! page, more for a long file; ~4.5 KiB measured) where a directory costs a few hundred bytes,
//! so only files of kept directories read twice within [`ADMIT`] are kept (a limit read once
//! every 10 s is not worth a page), at most [`FILE_BUDGET`] (~72 MiB of kernel memory at
//! most). A removed cgroup's kept file fails its read (`ENODEV`): it is closed and the read
//! goes the directory's way below.
//!
//! Only directories on a cgroup filesystem are kept (a fixture tree's plain directories may
//! be replaced). A removed cgroup's kept directory has no files: an `openat` there fails, the
//! directory is dropped and the path walked again, so a cgroup recreated under the same name
//! is read, not its predecessor. Directories no read wanted for [`IDLE`] are closed, so a
//! stopped container's cgroup is not held, and at most [`budget`] are open at once: a quarter
//! of what the open-file limit leaves after the reserve the trigger limit also keeps
//! (`fuse::psi`).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A kept directory no read wanted for this long is closed.
pub const IDLE: Duration = Duration::from_secs(10);

/// At most this many cgroup files are kept open (each holds a page or more of kernel memory),
/// and no more than [`budget`] allows: room for the ~10 files a second that a 1 Hz agent's
/// five files read in each of 1 600 containers.
pub const FILE_BUDGET: usize = 16_384;

/// A file of a kept directory is kept open when it is read again within this long.
pub const ADMIT: Duration = Duration::from_secs(5);

struct Kept {
    dir: Arc<File>,
    used: Instant,
}

/// A kept file. Its reads are serialized: a long (multi-record) seq_file continues from
/// where the previous `pread` stopped, which another reader's read at 0 would reset.
struct KeptFile {
    file: Arc<Mutex<File>>,
    used: Instant,
}

#[derive(Default)]
struct Table {
    dirs: HashMap<PathBuf, Kept>,
    files: HashMap<PathBuf, KeptFile>,
    /// Files of kept directories read once, not kept, and when: read again within [`ADMIT`],
    /// they are kept.
    seen: HashMap<PathBuf, Instant>,
    /// When idle directories were last looked for.
    swept: Option<Instant>,
}

impl Table {
    /// Closes the directories not read from for [`IDLE`].
    fn sweep(&mut self, now: Instant) {
        self.swept = Some(now);
        self.dirs.retain(|_, k| now.duration_since(k.used) < IDLE);
        self.files.retain(|_, k| now.duration_since(k.used) < IDLE);
        self.seen.retain(|_, t| now.duration_since(*t) < ADMIT);
    }
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// How many cgroup directories may be kept open at once: at least 64, so a process under the
/// default soft limit (1 024, all of it the reserve) still keeps the busiest few.
pub fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| (crate::sys::spare_fds() / 4).clamp(64, 65_536))
}

/// Whether directory `dir` is kept open now.
pub fn is_kept(dir: &Path) -> bool {
    table().lock().dirs.contains_key(dir)
}

/// Whether file `path` is kept open now.
pub fn is_file_kept(path: &Path) -> bool {
    table().lock().files.contains_key(path)
}

/// The whole text of `path`, like `std::fs::read_to_string`, opened relative to its kept
/// directory when there is one.
pub fn read(path: impl AsRef<Path>) -> io::Result<String> {
    let path = path.as_ref();
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return crate::sys::read_text(path) };
    let now = Instant::now();
    // One lookup: the kept file, or else the kept directory. The directory is touched either
    // way, so that it stays kept while only its files are read.
    let (file, mut kept) = {
        let mut t = table().lock();
        let Table { dirs, files, .. } = &mut *t;
        let d = dirs.get_mut(dir).map(|k| {
            k.used = now;
            &k.dir
        });
        match files.get_mut(path) {
            Some(k) => {
                k.used = now;
                (Some(k.file.clone()), None)
            }
            None => (None, d.cloned()),
        }
    };
    if let Some(f) = file {
        match read_from_start(&f.lock(), name) {
            Ok(text) => return Ok(text),
            // A removed cgroup (ENODEV), or anything else: closed, and read as below.
            Err(_) => {
                let mut t = table().lock();
                t.files.remove(path);
                kept = t.dirs.get(dir).map(|k| k.dir.clone());
            }
        }
    }
    if let Some(d) = kept {
        match open_in(&d, name).and_then(|f| keep_file(path, name, f, now)) {
            Ok(text) => return Ok(text),
            // An optional file this cgroup lacks (`cpu.stat.local`, swap files): the directory
            // stays kept.
            Err(e) if e.kind() == io::ErrorKind::NotFound && has_procs(&d) => return Err(e),
            // Removed cgroup (no files any more) or anything else: walk the path below.
            Err(_) => {
                table().lock().dirs.remove(dir);
            }
        }
    }
    let text = crate::sys::read_text_of(File::open(path)?)?;
    if has_room(now) {
        if let Ok(d) = File::open(dir) {
            if on_cgroupfs(&d) {
                table().lock().dirs.insert(dir.to_path_buf(), Kept { dir: Arc::new(d), used: now });
            }
        }
    }
    Ok(text)
}

/// Whether cgroup directory `dir` still exists: one lookup in its kept directory (every
/// cgroup has `cgroup.procs`; a removed one has no files) instead of a walk of the path.
pub fn exists(dir: &Path) -> bool {
    live_kept(dir).is_some() || dir.is_dir()
}

/// The metadata of cgroup directory `dir` (its inode, its link count): an `fstat` of its kept
/// directory when that is still a live cgroup, else a walk of the path (and a removed cgroup
/// is no longer kept, so one recreated under the same name shows its own inode).
pub fn metadata(dir: &Path) -> io::Result<std::fs::Metadata> {
    match live_kept(dir) {
        Some(d) => d.metadata(),
        None => std::fs::metadata(dir),
    }
}

/// `dir`'s kept directory if it is still a live cgroup; a removed one is no longer kept.
fn live_kept(dir: &Path) -> Option<Arc<File>> {
    let d = table().lock().dirs.get(dir).map(|k| k.dir.clone())?;
    if has_procs(&d) {
        return Some(d);
    }
    table().lock().dirs.remove(dir);
    None
}

/// Whether kept directory `d` is a live cgroup: every cgroup has `cgroup.procs`, a removed one
/// has no files.
fn has_procs(d: &File) -> bool {
    // SAFETY: faccessat on a directory fd this function borrows and a NUL-terminated name.
    unsafe { libc::faccessat(d.as_raw_fd(), c"cgroup.procs".as_ptr(), libc::F_OK, 0) == 0 }
}

/// Reads `f`, just opened in a kept directory, and keeps it open when it was read within
/// [`ADMIT`] before and there is room.
fn keep_file(path: &Path, name: &std::ffi::OsStr, f: File, now: Instant) -> io::Result<String> {
    let text = read_from_start(&f, name)?;
    let mut t = table().lock();
    let again = t.seen.remove(path).is_some_and(|s| now.duration_since(s) < ADMIT);
    // Within the fd share the directories have too: a low open-file limit keeps few.
    let room = FILE_BUDGET.min(budget());
    if t.files.len() >= room {
        // Full: nothing could be kept, so nothing is noted (no allocation per read).
    } else if again {
        t.files.insert(path.to_path_buf(), KeptFile { file: Arc::new(Mutex::new(f)), used: now });
    } else if t.seen.len() < room {
        // (Bounded like the files: the sampler's sweep drops what is older than ADMIT.)
        t.seen.insert(path.to_path_buf(), now);
    }
    Ok(text)
}

/// The whole text of cgroup file `f` (named `name`) from offset 0 ([`crate::sys::pread_all`]).
/// Every cgroup file but the process lists is one record (kernfs ends its seq_file after the
/// first show, `kernfs_seq_next`): a short read is its end.
fn read_from_start(f: &File, name: &std::ffi::OsStr) -> io::Result<String> {
    let lists = ["cgroup.procs", "cgroup.threads", "tasks"];
    crate::sys::pread_all(f, !lists.iter().any(|l| name == *l))
}

fn open_in(dir: &File, name: &std::ffi::OsStr) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: openat on a directory fd this function borrows and a NUL-terminated name; the
    // returned fd is owned by the File.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Whether one more directory may be kept (checked before opening it: when the table is
/// full, a read costs no extra open).
fn has_room(now: Instant) -> bool {
    let mut t = table().lock();
    if t.dirs.len() < budget() {
        return true;
    }
    // Full: close what has gone idle, at most once a second (the scan is over the whole table).
    if t.swept.is_some_and(|s| now.duration_since(s) < Duration::from_secs(1)) {
        return false;
    }
    t.sweep(now);
    t.dirs.len() < budget()
}

/// Closes the directories not read from for [`IDLE`] (the sampler's tick calls it).
pub fn close_idle() {
    table().lock().sweep(Instant::now());
}

fn on_cgroupfs(file: &File) -> bool {
    crate::sys::fs_type(file).is_some_and(is_cgroupfs)
}

/// Whether filesystem type `t` ([`crate::sys::fs_type`]) is a cgroup filesystem (v1 or v2).
pub(crate) fn is_cgroupfs(t: i64) -> bool {
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    t == CGROUP_SUPER_MAGIC || t == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_directories_are_never_kept() {
        let dir = std::env::temp_dir().join(format!("cgprocfs-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("memory.stat");
        let text = "x ".repeat(5000);
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read(&p).unwrap(), text);
        assert!(!is_kept(&dir));
        assert!(!is_file_kept(&p), "nor their files");
        // Replaced by rename: the new content, as a fixture tree's writer expects.
        let tmp = dir.join("t");
        std::fs::write(&tmp, "new").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(read(&p).unwrap(), "new");
        assert_eq!(read(dir.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
