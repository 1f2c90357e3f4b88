//! The subset of the kernel's FUSE ABI (`include/uapi/linux/fuse.h`) a read-only tree with
//! static inodes needs. Requests are decoded field by field from byte slices and replies
//! encoded the same way, so no untrusted bytes are ever reinterpreted as Rust structs.

/// Protocol major version spoken.
pub const KERNEL_VERSION: u32 = 7;
/// Highest protocol minor version spoken; the kernel and daemon agree on the lower of theirs.
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// Size of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// The largest write the kernel may send; the tree is read-only, so it is the minimum.
pub const MAX_WRITE: u32 = 4096;
/// Read buffer per worker: the kernel refuses reads smaller than `FUSE_MIN_READ_BUFFER`.
pub const READ_BUFFER: usize = 64 * 1024;

/// `FUSE_DEV_IOC_CLONE` = `_IOR(229, 0, uint32_t)`: attach a new `/dev/fuse` fd to a session.
pub const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// Opcodes (`enum fuse_opcode`).
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const SETXATTR: u32 = 21;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const POLL: u32 = 40;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const TMPFILE: u32 = 51;
}

/// `FUSE_NOTIFY_POLL` notification code: wake the pollers of poll handle `kh`.
pub const FUSE_NOTIFY_POLL: u32 = 1;
/// `FUSE_POLL_SCHEDULE_NOTIFY` in `fuse_poll_in.flags`: the kernel waits for a
/// `FUSE_NOTIFY_POLL` of this poll handle before asking again.
pub const FUSE_POLL_SCHEDULE_NOTIFY: u32 = 1;

/// `FUSE_NOTIFY_RESEND` notification code (protocol 7.40, Linux 6.9).
pub const FUSE_NOTIFY_RESEND: u32 = 7;
/// `FUSE_AUTO_INVAL_DATA`: the kernel drops an inode's cached pages when a GETATTR reply shows
/// a new mtime or size, and checks the attributes (once their timeout passed) on every read.
pub const FUSE_AUTO_INVAL_DATA: u32 = 1 << 12;
/// `FUSE_PARALLEL_DIROPS`: lookups and readdirs of one directory may run concurrently.
pub const FUSE_PARALLEL_DIROPS: u32 = 1 << 18;
/// INIT flag: the `flags2` word is in use.
pub const FUSE_INIT_EXT: u32 = 1 << 30;
/// INIT `flags2` bit of `FUSE_OVER_IO_URING` (bit 41 of the 64-bit flags).
pub const FUSE_OVER_IO_URING_2: u32 = 1 << 9;
/// `FOPEN_DIRECT_IO`: bypass the page cache; content is per caller and sizes are 0.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FOPEN_NOFLUSH`: no FLUSH round trip on close; there is nothing to flush.
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// `FUSE_READ_LOCKOWNER` in `fuse_read_in.read_flags`: set on the READs of `read(2)` on a
/// direct-I/O file (`fuse_send_read` with the caller's files as lock owner), never on the
/// READs that fill the page cache (`fuse_read_folio`, readahead).
pub const FUSE_READ_LOCKOWNER: u32 = 1 << 1;

/// Decoded `fuse_in_header`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InHeader {
    /// Total length of the request.
    pub len: u32,
    /// Operation.
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
    /// Inode the request is about.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's thread id in the daemon's pid namespace (0 if not visible there).
    pub pid: u32,
}

/// Little helpers over a request body; every read is bounds-checked.
pub struct Body<'a>(pub &'a [u8]);

impl Body<'_> {
    /// The `u32` at `off`.
    pub fn u32(&self, off: usize) -> Option<u32> {
        self.0.get(off..off + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The `u64` at `off`.
    pub fn u64(&self, off: usize) -> Option<u64> {
        let b = self.0.get(off..off + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_ne_bytes(a))
    }
}

impl InHeader {
    /// Decodes the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Option<InHeader> {
        let b = Body(buf);
        Some(InHeader {
            len: b.u32(0)?,
            opcode: b.u32(4)?,
            unique: b.u64(8)?,
            nodeid: b.u64(16)?,
            uid: b.u32(24)?,
            gid: b.u32(28)?,
            pid: b.u32(32)?,
        })
    }
}

/// A reply body under construction.
#[derive(Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends `n` zero bytes.
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}
