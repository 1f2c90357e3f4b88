//! Inode numbers: every space the two trees use, encoded and decoded in one place.
//!
//! The shared tree (fuse/mod.rs) has three spaces told apart by their high bits: the static
//! tree's own numbers, a served file as one container sees it (a hash of the container in the
//! middle bits: each container's file its own inode with its own size, so no container's size
//! is cached for another), and the host's cpu directory entries passed through (fuse/cpudir.rs).
//! The cached tree (fuse/cached.rs) encodes its key (the container's init pid and start) with
//! the shared tree's number, so any worker answers an existing inode without state.

use super::cpudir::DYN_BIT;

/// A served file as one container sees it has this bit.
const CT_BIT: u64 = 1 << 62;
/// The static tree's number, in the low bits of every space.
const STATIC_MASK: u64 = 0xffff;

/// What an inode number of the shared tree names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ino {
    /// A node of the static tree (its own number).
    Tree(u64),
    /// A served file as one container sees it: the tree's node.
    Own(u64),
    /// An entry of the host's cpu directory, passed through ([`super::cpudir::CpuDir`]).
    Host(u64),
}

impl Ino {
    /// Decodes `ino`.
    pub fn of(ino: u64) -> Ino {
        if ino & DYN_BIT != 0 {
            Ino::Host(ino)
        } else if ino & CT_BIT != 0 {
            Ino::Own(ino & STATIC_MASK)
        } else {
            Ino::Tree(ino)
        }
    }

    /// The inode of tree node `node` as the container named `container` sees it.
    pub fn own(node: u64, container: &str) -> u64 {
        let h = crate::fnv(container.as_bytes());
        CT_BIT | ((h << 16) & !(CT_BIT | DYN_BIT) & !STATIC_MASK) | node
    }
}

const IDX_MASK: u64 = 0xffff;
const START_BITS: u32 = 24;
/// The bits of an init's start time a cached tree's node id keeps.
pub(crate) const START_MASK: u64 = (1 << START_BITS) - 1;
const PID_SHIFT: u32 = 40;

/// Which container a cached tree's key directory is: its init's pid and start time (low
/// bits). Its node ids carry it: the pid in bits 40..61, the start's low 24 bits in 16..39,
/// the shared tree's number in 0..15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub pid: u32,
    pub start: u64,
}

impl Key {
    /// The node id of the shared tree's node `idx` under this key.
    pub fn node(self, idx: u64) -> u64 {
        (u64::from(self.pid) << PID_SHIFT) | ((self.start & START_MASK) << 16) | idx
    }

    /// The key and shared tree's number node id `n` names, if any.
    pub fn of_node(n: u64) -> Option<(Key, u64)> {
        let pid = (n >> PID_SHIFT) as u32;
        let idx = n & IDX_MASK;
        (pid != 0 && idx != 0).then_some((Key { pid, start: (n >> 16) & START_MASK }, idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_trees_three_spaces_never_meet() {
        assert_eq!(Ino::of(1), Ino::Tree(1));
        assert_eq!(Ino::of(300), Ino::Tree(300));
        for name in ["", "cpu:/a", "memory:/kubepods/pod1/c2", "x".repeat(300).as_str()] {
            let own = Ino::own(42, name);
            assert_eq!(Ino::of(own), Ino::Own(42), "{name}");
            assert_ne!(own, Ino::own(43, name));
        }
        assert_ne!(Ino::own(42, "cpu:/a"), Ino::own(42, "cpu:/b"), "each container its own inode");
        // The host bit wins over everything else.
        assert_eq!(Ino::of(DYN_BIT | CT_BIT | 5), Ino::Host(DYN_BIT | CT_BIT | 5));
    }

    #[test]
    fn a_cached_node_id_names_its_container_and_file_and_nothing_else() {
        let k = Key { pid: 4_194_303, start: 123_456_789 };
        let (back, idx) = Key::of_node(k.node(7)).expect("decodes");
        assert_eq!((back.pid, back.start, idx), (k.pid, k.start & START_MASK, 7));
        assert!(Key::of_node(1).is_none(), "the root is no container's");
        assert!(Key::of_node(k.node(0)).is_none(), "index 0 is no file");
        assert_ne!(k.node(3), Key { pid: k.pid, start: k.start + 1 }.node(3), "another start, another inode");
    }
}
