//! The read loop the mount benchmarks share: open + read-to-EOF + close of one path from N
//! threads for a while, latency per read.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Median and p99 latency of one read, µs, and reads per second over all threads.
pub struct Stats {
    pub median_us: f64,
    pub p99_us: f64,
    pub per_sec: f64,
}

fn read_once(p: &Path, buf: &mut Vec<u8>) {
    buf.clear();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.read_to_end(buf).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
}

/// `threads` readers of `path` for `secs` seconds, after 100 warm-up reads each (dentry and
/// attribute caches).
pub fn measure(path: &Path, threads: usize, secs: f64) -> Stats {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let p = path.to_path_buf();
            std::thread::spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut lat = Vec::with_capacity(1 << 16);
                for _ in 0..100 {
                    read_once(&p, &mut buf);
                }
                while Instant::now() < stop {
                    let t = Instant::now();
                    read_once(&p, &mut buf);
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
    all.sort_unstable();
    let q = |f: f64| all[((all.len() as f64 * f) as usize).min(all.len().saturating_sub(1))] as f64 / 1000.0;
    Stats { median_us: q(0.5), p99_us: q(0.99), per_sec: all.len() as f64 / secs }
}
