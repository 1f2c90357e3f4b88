//! Replies built by typed constructors: the adapters say what they answer (an entry, the
//! attributes, an open handle, bytes, an errno) and the encodings of `fuse_entry_out`,
//! `fuse_attr_out`, `fuse_open_out`, `fuse_dirent` and `fuse_kstatfs` live here.

use super::abi::Out;
use crate::error::Errno;
use std::time::Duration;

/// What a handler answers to one request.
#[derive(Debug)]
pub enum Reply {
    /// Success with this body.
    Data(Vec<u8>),
    /// Failure with this errno.
    Err(Errno),
    /// No reply at all (FORGET, INTERRUPT).
    None,
}

/// Attributes of one inode (`struct fuse_attr`).
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File size (0 for generated files, like procfs).
    pub size: u64,
    /// `st_mode` with type bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Times (seconds since the epoch), all equal.
    pub time: u64,
    /// Nanoseconds of the times: with [`Attr::time`], a served file's version (the kernel
    /// drops its cached pages when it changes).
    pub nsec: u32,
}

impl Attr {
    /// Encodes `struct fuse_attr` (88 bytes).
    pub fn encode(&self, o: &mut Out) {
        o.u64(self.ino).u64(self.size).u64(0); // ino, size, blocks
        o.u64(self.time).u64(self.time).u64(self.time); // atime, mtime, ctime
        o.u32(self.nsec).u32(self.nsec).u32(self.nsec); // nsecs
        o.u32(self.mode).u32(self.nlink).u32(0).u32(0); // mode, nlink, uid, gid
        o.u32(0).u32(4096).u32(0); // rdev, blksize, flags
    }
}

/// One directory entry of a READDIR reply: inode, name, `DT_*` type.
pub type Dirent = (u64, String, u32);

impl Reply {
    /// A failure with `errno`.
    pub fn err(errno: i32) -> Reply {
        Reply::Err(Errno(errno))
    }

    /// Success without a body (RELEASE, FLUSH, ACCESS, DESTROY).
    pub fn empty() -> Reply {
        Reply::Data(Vec::new())
    }

    /// A LOOKUP answer (`fuse_entry_out`): the name's inode, how long the kernel may keep the
    /// name (`entry_ttl`) and the attributes (`attr_ttl`).
    pub fn entry(ino: u64, entry_ttl: Duration, attr_ttl: Duration, attr: &Attr) -> Reply {
        let mut o = Out::default();
        o.u64(ino).u64(0).u64(entry_ttl.as_secs()).u64(attr_ttl.as_secs());
        o.u32(entry_ttl.subsec_nanos()).u32(attr_ttl.subsec_nanos());
        attr.encode(&mut o);
        Reply::Data(o.0)
    }

    /// A GETATTR answer (`fuse_attr_out`): the attributes, valid for `ttl`.
    pub fn attr(ttl: Duration, attr: &Attr) -> Reply {
        let mut o = Out::default();
        o.u64(ttl.as_secs()).u32(ttl.subsec_nanos()).u32(0);
        attr.encode(&mut o);
        Reply::Data(o.0)
    }

    /// An OPEN or OPENDIR answer (`fuse_open_out`): handle `fh` with `FOPEN_*` flags.
    pub fn open(fh: u64, flags: u32) -> Reply {
        let mut o = Out::default();
        o.u64(fh).u32(flags).u32(0);
        Reply::Data(o.0)
    }

    /// A WRITE answer (`fuse_write_out`): `n` bytes taken.
    pub fn written(n: usize) -> Reply {
        let mut o = Out::default();
        o.u32(u32::try_from(n).unwrap_or(u32::MAX)).u32(0);
        Reply::Data(o.0)
    }

    /// A POLL answer (`fuse_poll_out`): the ready events.
    pub fn poll(revents: u32) -> Reply {
        let mut o = Out::default();
        o.u32(revents).u32(0);
        Reply::Data(o.0)
    }

    /// A READ answer: at most `size` bytes of `data` from `offset`.
    pub fn slice(data: &[u8], offset: u64, size: u32) -> Reply {
        let start = offset.min(data.len() as u64) as usize;
        let end = start.saturating_add(size as usize).min(data.len());
        Reply::Data(data[start..end].to_vec())
    }

    /// A READDIR answer: `entries` from index `offset` on, as many `struct fuse_dirent` records
    /// as fit in `size` bytes; each record's offset is the next index.
    pub fn dirents(entries: &[Dirent], offset: u64, size: u32) -> Reply {
        let mut o = Out::default();
        for (i, (ino, name, typ)) in entries.iter().enumerate().skip(offset as usize) {
            let rec = (24 + name.len()).div_ceil(8) * 8;
            if o.0.len() + rec > size as usize {
                break;
            }
            o.u64(*ino).u64(i as u64 + 1).u32(name.len() as u32).u32(*typ);
            o.0.extend_from_slice(name.as_bytes());
            o.zeros(rec - 24 - name.len());
        }
        Reply::Data(o.0)
    }

    /// A STATFS answer (`struct fuse_kstatfs`) for a read-only tree of `files` inodes.
    pub fn statfs(files: u64) -> Reply {
        let mut o = Out::default();
        o.u64(0).u64(0).u64(0).u64(files).u64(0); // blocks, bfree, bavail, files, ffree
        o.u32(4096).u32(255).u32(4096).u32(0).zeros(24); // bsize, namelen, frsize, pad, spare
        Reply::Data(o.0)
    }

    /// The answer of a read-only tree to ACCESS with `mask`: `default_permissions` makes the
    /// kernel check modes; a write is refused outright.
    pub fn access(mask: u32) -> Reply {
        if mask as i32 & libc::W_OK != 0 {
            Reply::err(libc::EROFS)
        } else {
            Reply::empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: Reply) -> Vec<u8> {
        match r {
            Reply::Data(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_have_the_kernel_sizes() {
        let a = Attr { ino: 5, size: 1, mode: 0o444, nlink: 1, time: 2, nsec: 3 };
        assert_eq!(body(Reply::entry(5, Duration::from_secs(1), Duration::from_secs(1), &a)).len(), 40 + 88);
        assert_eq!(body(Reply::attr(Duration::from_millis(1500), &a)).len(), 16 + 88);
        assert_eq!(body(Reply::open(9, 0)).len(), 16);
        assert_eq!(body(Reply::statfs(3)).len(), 80);
        // Two entries, the second one cut off by size.
        let e = vec![(1, "a".to_string(), 4), (2, "bb".to_string(), 8)];
        assert_eq!(body(Reply::dirents(&e, 0, 40)).len(), 32);
        assert_eq!(body(Reply::dirents(&e, 1, 4096)).len(), 32);
        assert_eq!(body(Reply::slice(b"hello", 3, 10)), b"lo");
        assert_eq!(body(Reply::slice(b"hello", 9, 10)), b"");
        assert!(matches!(Reply::access(libc::W_OK as u32), Reply::Err(Errno(libc::EROFS))));
    }
}
