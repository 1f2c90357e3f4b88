//! The fallback policy's bookkeeping: requests answered with the host's file are counted,
//! and logged at most once a minute per cgroup.

use crate::catalog::Served;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts requests answered with the host's file and rate-limits the warnings about them.
#[derive(Default)]
pub struct Fallbacks {
    count: AtomicU64,
    last_warned: Mutex<HashMap<String, Instant>>,
}

impl Fallbacks {
    const WARN_EVERY: Duration = Duration::from_secs(60);

    pub(super) fn record(&self, key: &str, view: Served, err: &crate::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_warned.lock();
        let now = Instant::now();
        if last.get(key).is_some_and(|t| now.duration_since(*t) < Self::WARN_EVERY) {
            return;
        }
        if last.len() > 10_000 {
            last.retain(|_, t| now.duration_since(*t) < Self::WARN_EVERY);
        }
        last.insert(key.to_string(), now);
        tracing::warn!(cgroup = key, file = view.path(), error = %err, "serving the host's file");
    }

    /// Number of requests answered with the host's file since start.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
