//! The shared tree's open handles: what each open file reads and keeps, and what each
//! container holds of the table. One container's handles, kept bytes and PSI triggers never
//! crowd out another's (docs/security.md).

use super::Source;
use crate::error::Errno;
use crate::service::Container;
use std::collections::HashMap;
use std::sync::Arc;

/// Open handles allowed at once; beyond it opens fail with ENFILE rather than grow the daemon.
const MAX_HANDLES: usize = 100_000;
/// Open handles one container may hold by default; beyond it its opens fail with EMFILE.
pub const HANDLES_PER_CONTAINER: usize = 4096;
/// Rendered bytes kept for one container's open handles (so that a read at a later offset
/// continues the same rendering); past it, later offsets are rendered afresh.
const BYTES_PER_CONTAINER: usize = 16 << 20;

/// One open file: its inode, source, the container charged for it and the bytes read at its
/// last read at offset 0.
pub(crate) struct Handle {
    /// The inode it was opened on: it answers for no other.
    pub ino: u64,
    pub source: Source,
    /// The container charged for it.
    pub owner: Arc<str>,
    /// The opener's thread and container, reused when that thread reads within
    /// [`crate::service::CALLER_TTL`] of the open (a read after an open resolves nothing again).
    pub opener: Option<(u32, std::time::Instant, Container)>,
    /// The bytes of its last read at offset 0, which later offsets continue.
    pub data: Option<Arc<Vec<u8>>>,
    /// The PSI trigger written to this handle: the container's cgroup pressure file, open.
    pub trigger: Option<Arc<std::os::fd::OwnedFd>>,
}

/// What one container holds in the handle table.
#[derive(Default)]
pub(crate) struct Usage {
    pub handles: usize,
    pub bytes: usize,
    /// PSI triggers held, counted until their fd is really closed ([`super::psi::Closer`]).
    pub triggers: usize,
}

/// Open handles and what each container holds of them.
pub(crate) struct Handles {
    /// The open handles by FUSE file handle.
    pub map: HashMap<u64, Handle>,
    /// What each container (by name) holds.
    pub usage: HashMap<Arc<str>, Usage>,
    /// PSI triggers held by all containers.
    triggers: usize,
    /// Handles allowed at once.
    max: usize,
}

impl Default for Handles {
    fn default() -> Self {
        Handles { map: HashMap::new(), usage: HashMap::new(), triggers: 0, max: MAX_HANDLES }
    }
}

impl Handles {
    /// Enters handle `fh` if its owner holds fewer than `per_container` handles (`EMFILE`)
    /// and the table is not full (`ENFILE`): the one admission rule of opens and of handles
    /// adopted from a predecessor.
    pub fn admit(&mut self, fh: u64, h: Handle, per_container: usize) -> Result<(), Errno> {
        if self.map.len() >= self.max {
            return Err(Errno(libc::ENFILE));
        }
        // One container's handles never crowd out another's opens.
        if self.usage.get(&h.owner).is_some_and(|u| u.handles >= per_container) {
            return Err(Errno(libc::EMFILE));
        }
        self.insert(fh, h);
        Ok(())
    }

    fn insert(&mut self, fh: u64, h: Handle) {
        let u = self.usage.entry(h.owner.clone()).or_default();
        u.handles += 1;
        u.bytes += h.data.as_ref().map_or(0, |d| d.len());
        if let Some(old) = self.map.insert(fh, h) {
            self.forget(&old);
        }
    }

    /// Takes handle `fh` out of the table (dropped by the caller, outside the lock).
    pub fn remove(&mut self, fh: u64) -> Option<Handle> {
        let h = self.map.remove(&fh)?;
        self.forget(&h);
        Some(h)
    }

    /// Counts a new trigger for `owner` if it is under `per_container` and all are under
    /// `global`.
    pub fn reserve_trigger(&mut self, owner: &Arc<str>, per_container: usize, global: usize) -> bool {
        let u = self.usage.entry(owner.clone()).or_default();
        if u.triggers >= per_container || self.triggers >= global {
            return false;
        }
        u.triggers += 1;
        self.triggers += 1;
        true
    }

    /// A trigger of `owner` is closed (or was never taken).
    pub fn trigger_gone(&mut self, owner: &str) {
        self.triggers = self.triggers.saturating_sub(1);
        if let Some(u) = self.usage.get_mut(owner) {
            u.triggers = u.triggers.saturating_sub(1);
            if u.handles == 0 && u.triggers == 0 {
                self.usage.remove(owner);
            }
        }
    }

    fn forget(&mut self, h: &Handle) {
        if let Some(u) = self.usage.get_mut(&h.owner) {
            u.handles = u.handles.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(h.data.as_ref().map_or(0, |d| d.len()));
            if u.handles == 0 && u.triggers == 0 {
                self.usage.remove(&h.owner);
            }
        }
    }

    /// Keeps `d` as handle `fh`'s bytes if its owner's budget allows.
    pub fn keep(&mut self, fh: u64, d: &Arc<Vec<u8>>) {
        let Some(h) = self.map.get_mut(&fh) else { return };
        let u = self.usage.entry(h.owner.clone()).or_default();
        let old = h.data.as_ref().map_or(0, |x| x.len());
        let bytes = u.bytes.saturating_sub(old);
        if bytes + d.len() <= BYTES_PER_CONTAINER {
            h.data = Some(d.clone());
            u.bytes = bytes + d.len();
        } else {
            h.data = None;
            u.bytes = bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Served;

    fn handle(owner: &str) -> Handle {
        Handle {
            ino: 2,
            source: Source::Served(Served::Floor),
            owner: owner.into(),
            opener: None,
            data: None,
            trigger: None,
        }
    }

    #[test]
    fn one_container_at_its_quota_leaves_the_others_room() {
        let mut t = Handles { max: 5, ..Handles::default() };
        for fh in 0..3 {
            assert_eq!(t.admit(fh, handle("a"), 3), Ok(()));
        }
        assert_eq!(t.admit(3, handle("a"), 3), Err(Errno(libc::EMFILE)));
        assert_eq!(t.admit(3, handle("b"), 3), Ok(()));
        // Closing one of a's gives a room back.
        assert!(t.remove(0).is_some());
        assert_eq!(t.admit(4, handle("a"), 3), Ok(()));
        // The table is full (5): every container's next open fails with ENFILE.
        assert_eq!(t.admit(5, handle("b"), 3), Ok(()));
        assert_eq!(t.admit(6, handle("c"), 3), Err(Errno(libc::ENFILE)));
        assert_eq!(t.usage["a"].handles, 3);
        assert!(t.remove(42).is_none(), "an unknown handle is nothing to remove");
    }

    #[test]
    fn kept_bytes_stay_within_the_container_budget() {
        let mut t = Handles::default();
        t.admit(1, handle("a"), 8).unwrap();
        t.admit(2, handle("a"), 8).unwrap();
        let big = Arc::new(vec![0u8; BYTES_PER_CONTAINER - 10]);
        t.keep(1, &big);
        assert_eq!(t.usage["a"].bytes, BYTES_PER_CONTAINER - 10);
        // The second handle's rendering does not fit: it is not kept (rendered afresh later).
        t.keep(2, &Arc::new(vec![0u8; 100]));
        assert!(t.map[&2].data.is_none());
        // A new rendering of the first replaces its old bytes in the count.
        t.keep(1, &Arc::new(vec![0u8; 10]));
        assert_eq!(t.usage["a"].bytes, 10);
        t.remove(1);
        t.remove(2);
        assert!(!t.usage.contains_key("a"), "a container holding nothing is forgotten");
    }

    #[test]
    fn triggers_count_per_container_and_in_all() {
        let mut t = Handles::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert!(t.reserve_trigger(&a, 2, 3));
        assert!(t.reserve_trigger(&a, 2, 3));
        assert!(!t.reserve_trigger(&a, 2, 3), "per container");
        assert!(t.reserve_trigger(&b, 2, 3));
        assert!(!t.reserve_trigger(&c, 2, 3), "in all");
        t.trigger_gone("a");
        assert!(t.reserve_trigger(&c, 2, 3));
    }
}
