//! Requests decoded from the kernel's bytes into a typed enum, each with the fields its
//! operation carries (`include/uapi/linux/fuse.h`). Decoding is field by field with bounds
//! checks: no kernel bytes are reinterpreted as Rust structs.

use super::abi::{op, Body};
use crate::error::Errno;

/// One request of a read-only tree, as the adapters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// LOOKUP of `name` in the request's directory.
    Lookup {
        /// The name, without its NUL.
        name: &'a [u8],
    },
    /// GETATTR of the request's inode.
    Getattr,
    /// OPEN of the request's file with `open(2)` flags.
    Open {
        /// `O_*` flags.
        flags: u32,
    },
    /// READ of `size` bytes at `offset` from handle `fh`.
    Read {
        /// The handle OPEN gave.
        fh: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes wanted at most.
        size: u32,
        /// `fuse_read_in.read_flags`, when the kernel sent them.
        read_flags: Option<u32>,
    },
    /// RELEASE of handle `fh`.
    Release {
        /// The handle, when the kernel sent it.
        fh: Option<u64>,
    },
    /// OPENDIR of the request's directory.
    Opendir,
    /// READDIR from entry `offset`, at most `size` bytes of entries.
    Readdir {
        /// Index of the first entry.
        offset: u64,
        /// Bytes of `struct fuse_dirent` records at most.
        size: u32,
    },
    /// RELEASEDIR.
    Releasedir,
    /// READLINK of the request's inode.
    Readlink,
    /// STATFS.
    Statfs,
    /// ACCESS with an `access(2)` mask.
    Access {
        /// `R_OK`, `W_OK`, `X_OK` bits.
        mask: u32,
    },
    /// FLUSH (a close of a handle).
    Flush,
    /// FORGET of the request's inode, or BATCH_FORGET of a list ([`forgotten`]): never
    /// answered.
    Forget {
        /// BATCH_FORGET's body: a count, then (node id, lookups) pairs.
        batch: Option<&'a [u8]>,
    },
    /// INTERRUPT: never answered.
    Interrupt,
    /// DESTROY (unmount).
    Destroy,
    /// WRITE of `data` to handle `fh` (a trigger on a pressure file; elsewhere refused).
    Write {
        /// The handle OPEN gave.
        fh: u64,
        /// The bytes written.
        data: &'a [u8],
    },
    /// POLL of handle `fh` for poll handle `kh`.
    Poll {
        /// The handle OPEN gave.
        fh: u64,
        /// The kernel's poll handle, for `FUSE_NOTIFY_POLL`.
        kh: u64,
        /// `FUSE_POLL_SCHEDULE_NOTIFY` when the kernel waits for a notification.
        flags: u32,
    },
    /// SETATTR (the truncation of an `O_TRUNC` open, a chmod, a utime).
    Setattr {
        /// `FATTR_*` bits of what is set.
        valid: u32,
    },
    /// CREATE, MKDIR, UNLINK, RENAME and the other changes to the tree.
    Change,
    /// Any other operation.
    Other(u32),
}

impl<'a> Request<'a> {
    /// Decodes the body of operation `opcode`; `EINVAL` when a READ or READDIR body is short.
    pub fn parse(opcode: u32, body: &'a [u8]) -> Result<Request<'a>, Errno> {
        let b = Body(body);
        Ok(match opcode {
            op::LOOKUP => Request::Lookup { name: body.split(|&c| c == 0).next().unwrap_or(&[]) },
            op::GETATTR => Request::Getattr,
            // A short OPEN or ACCESS body reads as no flags: read-only, existence.
            op::OPEN => Request::Open { flags: b.u32(0).unwrap_or(0) },
            op::READ => {
                let (Some(fh), Some(offset), Some(size)) = (b.u64(0), b.u64(8), b.u32(16)) else {
                    return Err(Errno(libc::EINVAL));
                };
                Request::Read { fh, offset, size, read_flags: b.u32(20) }
            }
            op::RELEASE => Request::Release { fh: b.u64(0) },
            op::OPENDIR => Request::Opendir,
            op::READDIR => {
                let (Some(offset), Some(size)) = (b.u64(8), b.u32(16)) else { return Err(Errno(libc::EINVAL)) };
                Request::Readdir { offset, size }
            }
            op::RELEASEDIR => Request::Releasedir,
            op::READLINK => Request::Readlink,
            op::STATFS => Request::Statfs,
            op::ACCESS => Request::Access { mask: b.u32(0).unwrap_or(0) },
            op::FLUSH => Request::Flush,
            op::FORGET => Request::Forget { batch: None },
            op::BATCH_FORGET => Request::Forget { batch: Some(body) },
            op::INTERRUPT => Request::Interrupt,
            op::DESTROY => Request::Destroy,
            op::WRITE => {
                // fuse_write_in: fh, offset, size, write_flags, lock_owner, flags, padding.
                let (Some(fh), Some(size)) = (b.u64(0), b.u32(16)) else { return Err(Errno(libc::EINVAL)) };
                let data = body.get(40..).unwrap_or(&[]);
                Request::Write { fh, data: data.get(..size as usize).unwrap_or(data) }
            }
            op::POLL => {
                let (Some(fh), Some(kh), Some(flags)) = (b.u64(0), b.u64(8), b.u32(16)) else {
                    return Err(Errno(libc::EINVAL));
                };
                Request::Poll { fh, kh, flags }
            }
            op::SETATTR => Request::Setattr { valid: b.u32(0).unwrap_or(0) },
            op::CREATE
            | op::SYMLINK
            | op::MKNOD
            | op::MKDIR
            | op::UNLINK
            | op::RMDIR
            | op::RENAME
            | op::LINK
            | op::SETXATTR
            | op::REMOVEXATTR
            | op::FALLOCATE
            | op::RENAME2
            | op::COPY_FILE_RANGE
            | op::TMPFILE => Request::Change,
            other => Request::Other(other),
        })
    }
}

/// The node ids a FORGET (of `nodeid`) or BATCH_FORGET (`batch`) lets go of.
pub fn forgotten(nodeid: u64, batch: Option<&[u8]>) -> impl Iterator<Item = u64> + '_ {
    let (one, b) = match batch {
        None => (Some(nodeid), Body(&[])),
        Some(b) => (None, Body(b)),
    };
    let n = b.u32(0).unwrap_or(0) as usize;
    one.into_iter().chain((0..n).map_while(move |i| b.u64(8 + 16 * i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_by_field_and_short_ones_are_refused() {
        let mut read = Vec::new();
        for v in [7u64, 4096] {
            read.extend_from_slice(&v.to_ne_bytes());
        }
        read.extend_from_slice(&100u32.to_ne_bytes());
        assert_eq!(
            Request::parse(op::READ, &read),
            Ok(Request::Read { fh: 7, offset: 4096, size: 100, read_flags: None })
        );
        assert_eq!(Request::parse(op::READ, &read[..19]), Err(Errno(libc::EINVAL)));
        assert_eq!(Request::parse(op::READDIR, &[0; 8]), Err(Errno(libc::EINVAL)));
        assert_eq!(Request::parse(op::LOOKUP, b"meminfo\0junk"), Ok(Request::Lookup { name: b"meminfo" }));
        assert_eq!(Request::parse(op::OPEN, &[]), Ok(Request::Open { flags: 0 }));
        assert_eq!(Request::parse(op::MKDIR, &[]), Ok(Request::Change));
        assert_eq!(Request::parse(op::WRITE, &[0; 8]), Err(Errno(libc::EINVAL)));
        let mut w = vec![0u8; 40];
        w[0..8].copy_from_slice(&9u64.to_ne_bytes());
        w[16..20].copy_from_slice(&4u32.to_ne_bytes());
        w.extend_from_slice(b"some junk");
        assert_eq!(Request::parse(op::WRITE, &w), Ok(Request::Write { fh: 9, data: b"some" }));
        assert_eq!(Request::parse(9999, &[]), Ok(Request::Other(9999)));
        let mut batch = 2u32.to_ne_bytes().to_vec();
        batch.extend_from_slice(&[0; 4]);
        for (node, lookups) in [(11u64, 1u64), (12, 3)] {
            batch.extend_from_slice(&node.to_ne_bytes());
            batch.extend_from_slice(&lookups.to_ne_bytes());
        }
        assert_eq!(forgotten(5, None).collect::<Vec<_>>(), [5]);
        assert_eq!(forgotten(5, Some(&batch)).collect::<Vec<_>>(), [11, 12]);
        assert_eq!(forgotten(5, Some(&batch[..30])).collect::<Vec<_>>(), [11], "a cut list ends early");
    }
}
