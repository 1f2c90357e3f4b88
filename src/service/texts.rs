//! Renderings reused within one pass.
//!
//! A file's inputs are already read once per [`PASS`] for every file that asks (the
//! sampler's caches; only such files are reused: `Served::reusable`), so two renderings of
//! the same file for the same container within a pass are the same bytes: the second one only
//! formats them again. Several threads of one process
//! reading `/proc/meminfo` in a loop, or `top` and an agent in one container, then pay one
//! rendering per pass, not per read. The bytes are at most a pass older than their inputs,
//! which every freshness bound counts (`fuse::cached::attr_timeout`, docs/formulas.md), and a
//! written limit (the watch's generation moving) makes every kept rendering old at once, as it
//! does every cached limit.
//!
//! A container is told by the identity of its resolved cgroups: the caller cache hands one
//! thread the same `Arc` for as long as it remembers it. The key holds that `Arc`, so its
//! address is not reused by another container's while the entry lives. The table is small
//! and swept when full: within a pass only the containers being read right now are in it.

use crate::catalog::Served;
use crate::cgroup::{Cgroups, Container};
use crate::sampler::PASS;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

/// At most this many renderings are kept (~1.5 KiB each for meminfo).
const MAX: usize = 256;

/// One file of one resolved container.
struct Key {
    view: Served,
    cgroups: Arc<Cgroups>,
    init: Option<u32>,
}

impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.view == o.view && Arc::ptr_eq(&self.cgroups, &o.cgroups) && self.init == o.init
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.view.hash(h);
        (Arc::as_ptr(&self.cgroups) as usize).hash(h);
        self.init.hash(h);
    }
}

/// What a rendering gives: its bytes, and until when they cannot change.
pub(crate) type Rendering = (Vec<u8>, Option<u64>);

/// The renderings of the current pass.
#[derive(Default)]
pub(crate) struct Texts {
    map: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    kept: HashMap<Key, Kept>,
    /// When a full table was last swept: at most once a pass, so that a container whose many
    /// threads fill it costs the other containers' reads no sweep each (they are then only
    /// not kept).
    swept: Option<Instant>,
}

/// A kept rendering: when its inputs were asked for, at which generation of the limits.
struct Kept {
    at: Instant,
    generation: u64,
    rendering: Rendering,
}

impl Texts {
    /// `view` for `c`: the rendering of this pass if there is one and no limit was written
    /// since (`generation`: the watch's generation now), else `make`'s, kept with `known` (the
    /// generation as last counted, read before `make`: never newer than the one its inputs
    /// were read at, so it is at worst rendered again). A read whose kept rendering is a pass
    /// old — every read of a once-a-second reader — costs no `generation` call.
    pub(crate) fn get<E>(
        &self,
        view: Served,
        c: &Container,
        known: u64,
        generation: impl FnOnce() -> u64,
        make: impl FnOnce() -> Result<Rendering, E>,
    ) -> Result<Rendering, E> {
        let key = Key { view, cgroups: Arc::clone(&c.cgroups), init: c.init };
        let fresh = |k: &Kept| k.at.elapsed() < PASS;
        let kept = self.map.lock().kept.get(&key).filter(|k| fresh(k)).map(|k| (k.generation, k.rendering.clone()));
        if let Some((g, rendering)) = kept {
            if g == generation() {
                return Ok(rendering);
            }
        }
        // Aged from when its inputs were asked for; a rendering begun later (a concurrent
        // request's) is not replaced by this one, so a reader after both never sees counters
        // older than one before it did.
        let at = Instant::now();
        let rendering = make()?;
        let mut t = self.map.lock();
        let Table { kept: map, swept } = &mut *t;
        if map.len() >= MAX && swept.is_none_or(|s| s.elapsed() >= PASS) {
            map.retain(|_, k| fresh(k));
            *swept = Some(Instant::now());
        }
        match map.get(&key) {
            Some(k) if k.at > at => {}
            old if old.is_some() || map.len() < MAX => {
                map.insert(key, Kept { at, generation: known, rendering: rendering.clone() });
            }
            _ => {}
        }
        Ok(rendering)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn container(path: &str) -> Container {
        let dir = crate::cgroup::CgroupDir {
            version: crate::cgroup::Version::V2,
            path: path.into(),
            top: "/sys/fs/cgroup".into(),
        };
        Container { cgroups: Arc::new(Cgroups { unified: Some(dir), ..Default::default() }), init: Some(7) }
    }

    #[test]
    fn one_rendering_per_pass_per_container_and_file_never_a_neighbours() {
        let t = Texts::default();
        let made = Cell::new(0);
        let make = |text: &str| {
            made.set(made.get() + 1);
            Ok::<_, ()>((text.as_bytes().to_vec(), None))
        };
        let (a, b) = (container("/sys/fs/cgroup/a"), container("/sys/fs/cgroup/a"));
        assert_eq!(t.get(Served::Meminfo, &a, 0, || 0, || make("a")).unwrap().0, b"a");
        assert_eq!(t.get(Served::Meminfo, &a.clone(), 0, || 0, || make("again")).unwrap().0, b"a", "same pass");
        assert_eq!(made.get(), 1);
        // Equal paths resolved apart are another entry (a container is its resolution), and
        // another file of the same container is its own.
        assert_eq!(t.get(Served::Meminfo, &b, 0, || 0, || make("b")).unwrap().0, b"b");
        assert_eq!(t.get(Served::Stat, &a, 0, || 0, || make("stat")).unwrap().0, b"stat");
        assert_eq!(made.get(), 3);
        std::thread::sleep(PASS + std::time::Duration::from_millis(1));
        assert_eq!(t.get(Served::Meminfo, &a, 0, || 0, || make("next")).unwrap().0, b"next", "a pass later");
        assert_eq!(t.get(Served::Meminfo, &a, 1, || 1, || make("written")).unwrap().0, b"written", "a limit written");
        // Kept with the generation last counted (1), asked against the current one.
        assert_eq!(t.get(Served::Meminfo, &a, 1, || 1, || make("no")).unwrap().0, b"written");
        assert_eq!(t.get(Served::Meminfo, &a, 1, || 2, || make("2")).unwrap().0, b"2", "written again since");
        // Errors are not kept.
        assert_eq!(t.get(Served::Uptime, &a, 0, || 0, || Err::<Rendering, _>("gone")), Err("gone"));
        assert_eq!(t.get(Served::Uptime, &a, 0, || 0, || make("up")).unwrap().0, b"up");
    }

    #[test]
    fn a_rendering_begun_later_is_not_replaced_by_an_older_one() {
        let t = Texts::default();
        let a = container("/sys/fs/cgroup/a");
        // The outer rendering begins first; the inner (a concurrent request's) begins and ends
        // while it runs.
        let outer = t.get(
            Served::Stat,
            &a,
            0,
            || 0,
            || {
                std::thread::sleep(std::time::Duration::from_micros(100));
                let inner = t.get(Served::Stat, &a, 0, || 0, || Ok::<_, ()>((b"newer".to_vec(), None)));
                assert_eq!(inner.unwrap().0, b"newer");
                Ok::<_, ()>((b"older".to_vec(), None))
            },
        );
        assert_eq!(outer.unwrap().0, b"older", "each request gets its own rendering");
        let next = t.get(Served::Stat, &a, 0, || 0, || Ok::<_, ()>((b"made again".to_vec(), None)));
        assert_eq!(next.unwrap().0, b"newer", "the later one is what the pass keeps");
    }

    #[test]
    fn a_full_table_keeps_only_the_current_pass() {
        let t = Texts::default();
        let cs: Vec<Container> = (0..MAX + 10).map(|i| container(&format!("/sys/fs/cgroup/c{i}"))).collect();
        for c in &cs {
            t.get(Served::Meminfo, c, 0, || 0, || Ok::<_, ()>((vec![1], None))).unwrap();
        }
        assert_eq!(t.map.lock().kept.len(), MAX, "bounded");
        std::thread::sleep(PASS + std::time::Duration::from_millis(1));
        t.get(Served::Meminfo, &cs[0], 0, || 0, || Ok::<_, ()>((vec![2], None))).unwrap();
        assert_eq!(t.map.lock().kept.len(), 1, "a full table drops what a pass made old");
    }
}
