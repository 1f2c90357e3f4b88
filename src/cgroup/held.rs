//! Cgroup files kept open between reads.
//!
//! A container's counters are read every sampling pass, and at agent scale the open(2) of
//! each file (path walk through the hierarchy, kernfs and seq_file set-up) and its close cost
//! more than producing the text. A cgroup file read again is therefore kept open and read with
//! `pread(2)` at offset 0, which makes the kernel's seq_file render it afresh
//! (`seq_read_iter` restarts when the position is not where it left off).
//!
//! Only files on a cgroup filesystem are kept (a fixture tree's plain files may be replaced by
//! rename and must be opened again). A kept file of a removed cgroup answers `ENODEV`; it is
//! then dropped and the path opened again, so a cgroup recreated under the same name is read,
//! not its predecessor. Files not read for [`IDLE`] are closed, so a stopped container's
//! cgroup is not held, and at most [`budget`] files are open at once: a quarter of what the
//! open-file limit leaves after the reserve the trigger limit also keeps (`fuse::psi`).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A kept file not read for this long is closed.
pub const IDLE: Duration = Duration::from_secs(10);

struct Kept {
    file: Arc<File>,
    used: Instant,
}

#[derive(Default)]
struct Table {
    files: HashMap<PathBuf, Kept>,
    /// When idle files were last looked for.
    swept: Option<Instant>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// How many cgroup files may be kept open at once.
pub fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        (soft.saturating_sub(1024) / 4).min(65_536)
    })
}

/// Whether `path` is kept open now.
pub fn is_kept(path: &Path) -> bool {
    table().lock().files.contains_key(path)
}

/// The whole text of `path`, like `std::fs::read_to_string`, from a kept file when there is
/// one.
pub fn read(path: impl AsRef<Path>) -> io::Result<String> {
    let path = path.as_ref();
    let now = Instant::now();
    let kept = {
        let mut t = table().lock();
        t.files.get_mut(path).map(|k| {
            k.used = now;
            k.file.clone()
        })
    };
    if let Some(file) = kept {
        match read_at_start(&file) {
            Ok(text) => return Ok(text),
            // Removed cgroup (ENODEV) or anything else: open the path again below.
            Err(_) => {
                table().lock().files.remove(path);
            }
        }
    }
    let file = File::open(path)?;
    let text = read_at_start(&file)?;
    if on_cgroupfs(&file) {
        keep(path, file, now);
    }
    Ok(text)
}

fn keep(path: &Path, file: File, now: Instant) {
    let mut t = table().lock();
    if t.files.len() >= budget() {
        // Full: close what has gone idle, at most once a second (the scan is over the whole
        // table); a file that still finds no room is simply not kept.
        if t.swept.is_some_and(|s| now.duration_since(s) < Duration::from_secs(1)) {
            return;
        }
        t.swept = Some(now);
        t.files.retain(|_, k| now.duration_since(k.used) < IDLE);
        if t.files.len() >= budget() {
            return;
        }
    }
    t.files.insert(path.to_path_buf(), Kept { file: Arc::new(file), used: now });
}

/// Closes the files not read for [`IDLE`] (the sampler's tick calls it).
pub fn close_idle() {
    let now = Instant::now();
    let mut t = table().lock();
    t.swept = Some(now);
    t.files.retain(|_, k| now.duration_since(k.used) < IDLE);
}

fn read_at_start(file: &File) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = file.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn on_cgroupfs(file: &File) -> bool {
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs into `st` for an fd this function borrows.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // c_long: i64 here, i32 on 32-bit targets
    let t = st.f_type as i64;
    t == CGROUP_SUPER_MAGIC || t == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_files_are_read_whole_and_never_kept() {
        let dir = std::env::temp_dir().join(format!("cgprocfs-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("memory.stat");
        let text = "x ".repeat(5000);
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read(&p).unwrap(), text);
        assert!(!table().lock().files.contains_key(&p));
        // Replaced by rename: the new content, as a fixture tree's writer expects.
        let tmp = dir.join("t");
        std::fs::write(&tmp, "new").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(read(&p).unwrap(), "new");
        assert_eq!(read(dir.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
