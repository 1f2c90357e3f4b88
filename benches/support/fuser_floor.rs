//! An independent floor for the mount benches: the smallest fuser filesystem, one constant
//! meminfo-sized file served as the shared tree serves its files (direct I/O, no FLUSH, names
//! and attributes cached for an hour), on fuser's own single-threaded loop. It runs in a process
//! of its own (the bench executes itself again with [`ENV`] set), so it shares no cgroup and no
//! CPU quota with the readers.

use fuser::{FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, Request};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

/// Set to a mount point, the bench process serves the floor there instead of measuring.
pub const ENV: &str = "CGPROCFS_BENCH_FUSER_FLOOR";
const TTL: Duration = Duration::from_secs(3600);
const FILE: u64 = 2;
/// `FOPEN_DIRECT_IO | FOPEN_NOFLUSH`, as the shared tree answers an open.
const OPEN_FLAGS: u32 = 1 | (1 << 5);

fn attr(ino: u64, kind: FileType, perm: u16, size: u64) -> FileAttr {
    FileAttr {
        ino,
        size,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

struct Floor(Vec<u8>);

impl Filesystem for Floor {
    fn lookup(&mut self, _: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == 1 && name == "floor" {
            reply.entry(&TTL, &attr(FILE, FileType::RegularFile, 0o444, 0), 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn getattr(&mut self, _: &Request<'_>, ino: u64, _: Option<u64>, reply: ReplyAttr) {
        match ino {
            1 => reply.attr(&TTL, &attr(1, FileType::Directory, 0o555, 0)),
            FILE => reply.attr(&TTL, &attr(FILE, FileType::RegularFile, 0o444, 0)),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _: &Request<'_>, _: u64, _: i32, reply: ReplyOpen) {
        reply.opened(0, OPEN_FLAGS);
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _: &Request<'_>,
        _: u64,
        _: u64,
        offset: i64,
        size: u32,
        _: i32,
        _: Option<u64>,
        reply: ReplyData,
    ) {
        let start = (offset.max(0) as usize).min(self.0.len());
        let end = (start + size as usize).min(self.0.len());
        reply.data(&self.0[start..end]);
    }
}

/// Serves the floor at `mnt` until killed (the child's side).
pub fn serve(mnt: &Path) {
    let content = cgprocfs::catalog::floor_content().into_bytes();
    let opts = [MountOption::RO, MountOption::FSName("fuser-floor".into()), MountOption::AllowOther];
    if let Err(e) = fuser::mount2(Floor(content), mnt, &opts) {
        eprintln!("fuser floor: {e}");
    }
}

/// The floor's process and mount point (the parent's side), stopped by its pid and unmounted
/// on drop.
pub struct FuserFloor {
    child: Child,
    mnt: PathBuf,
}

impl FuserFloor {
    /// Executes this bench again as the floor's server and waits until the file reads.
    pub fn start(unique: String) -> Option<FuserFloor> {
        let mnt = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&mnt).ok()?;
        let child = Command::new(std::env::current_exe().ok()?)
            .env(ENV, &mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let f = FuserFloor { child, mnt };
        crate::peers::wait_served(&f.file(), "the fuser floor")?;
        Some(f)
    }

    /// The constant file.
    pub fn file(&self) -> PathBuf {
        self.mnt.join("floor")
    }
}

impl Drop for FuserFloor {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.mnt.to_string_lossy().as_bytes()) {
            // SAFETY: valid path string; the mount this bench made.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        // SAFETY: the process this bench started, by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.mnt);
    }
}
