//! The short-lived caches of the read path: one value ([`Ttl`]: a host file) and values per
//! key ([`TtlMap`]: per caller, per cgroup), each reused for a fixed time, and limits
//! ([`LimitMap`]), reused until they are written.

use crate::cgroup::watch::BACKSTOP;
use crate::error::Result;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A value loaded from the host and reused for `ttl`. Host files that change slowly or never
/// (cpuinfo, the online mask) need not be re-read per request.
pub(crate) struct Ttl<T> {
    ttl: Duration,
    slot: Mutex<Option<(Instant, Arc<T>)>>,
}

impl<T> Ttl<T> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Ttl { ttl, slot: Mutex::new(None) }
    }

    pub(crate) fn get(&self, load: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        if let Some((at, v)) = &*self.slot.lock() {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let v = Arc::new(load()?);
        *self.slot.lock() = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

/// Values computed per key (a caller, a cgroup) and reused for `ttl`; bounded, so no
/// container can grow it without limit.
pub(crate) struct TtlMap<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlMap<K, V> {
    const MAX: usize = 65_536;

    pub(crate) fn new(ttl: Duration) -> Self {
        TtlMap { ttl, map: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn get(&self, key: K, load: impl FnOnce() -> Result<V>) -> Result<V> {
        if let Some((at, v)) = self.map.lock().get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let v = load()?;
        let mut map = self.map.lock();
        if map.len() >= Self::MAX {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        map.insert(key, (Instant::now(), v.clone()));
        Ok(v)
    }
}

/// Values read from cgroup limit files, per key (a directory, a container), reused until a
/// limit file of a watched directory is written ([`crate::cgroup::watch`]: the generation
/// moves) or for at most [`BACKSTOP`]; a value whose directories could not all be watched is
/// reused for `ttl` only, as a [`TtlMap`]'s.
pub(crate) struct LimitMap<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, Limit<V>>>,
}

struct Limit<V> {
    at: Instant,
    generation: u64,
    watched: bool,
    value: V,
}

/// A value from a [`LimitMap`], with whether everything it was read from is watched.
pub(crate) struct Watched<V> {
    pub(crate) value: V,
    pub(crate) watched: bool,
}

impl<K: std::hash::Hash + Eq, V: Clone> LimitMap<K, V> {
    const MAX: usize = 65_536;

    pub(crate) fn new(ttl: Duration) -> Self {
        LimitMap { ttl, map: Mutex::new(HashMap::new()) }
    }

    /// The value of `key` if read at `generation` and still within its bound, else `load()`'s
    /// (which says whether its directories are watched).
    pub(crate) fn get(&self, key: K, generation: u64, load: impl FnOnce() -> Result<Watched<V>>) -> Result<Watched<V>> {
        let valid =
            |l: &Limit<V>| l.generation == generation && l.at.elapsed() < if l.watched { BACKSTOP } else { self.ttl };
        if let Some(l) = self.map.lock().get(&key).filter(|l| valid(l)) {
            return Ok(Watched { value: l.value.clone(), watched: l.watched });
        }
        let v = load()?;
        let mut map = self.map.lock();
        if map.len() >= Self::MAX {
            map.retain(|_, l| valid(l));
        }
        map.insert(key, Limit { at: Instant::now(), generation, watched: v.watched, value: v.value.clone() });
        Ok(v)
    }
}
