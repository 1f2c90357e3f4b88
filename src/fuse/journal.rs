//! The cached tree's journal: every rendering the kernel was told about (its size is in the
//! kernel's inode), appended to a root-only file before the reply goes out, so that a worker
//! replacing a killed one answers a READ with exactly those bytes (fuse/cached.rs).
//!
//! One `write(2)` per new rendering, to a file opened once, where one file per rendering cost
//! six system calls and two directory entries (a third of the worker's time for agents reading
//! a thousand containers once a second). Files are numbered generations `j<N>`; a record is
//! `magic, node id, length, checksum, bytes`. A reader takes the latest valid record of each
//! node and stops at the first torn one (a worker killed mid-write: its reply never went out,
//! so the kernel holds the record before it). The writer starts a new generation past
//! [`ROTATE_AT`] bytes and deletes the generations before the current one once the current one
//! has been written for longer than the attribute timeout (no READ can need them: a read after
//! that asks GETATTR first, and that renders anew).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x4a53_4743;
const HEADER: usize = 4 + 8 + 4 + 8;
/// A generation's size past which the next write starts a new one.
const ROTATE_AT: u64 = 4 << 20;
/// Past this a new generation is started even if older ones are still young (bounds the
/// directory under any rate of renderings; one older rendering may then be lost to a crash).
const HARD_CAP: u64 = 64 << 20;
/// The longest record read back (a rendering is far smaller).
const MAX_RECORD: usize = 16 << 20;

/// The journal of one worker (module doc).
pub struct Journal {
    dir: PathBuf,
    /// How long a rendering may be needed after it was written: the attribute timeout.
    keep: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    file: Option<File>,
    generation: u64,
    len: u64,
    /// When the current generation began to be written.
    since: Instant,
}

/// The bytes of each node as the journal in a directory last recorded them.
pub type Recorded = HashMap<u64, Vec<u8>>;

impl Journal {
    /// Opens the journal in `dir` (which must exist): what predecessors recorded, and a
    /// journal writing a generation of its own (never appending after a predecessor's torn
    /// record).
    pub fn open(dir: &Path, keep: Duration) -> (Journal, Recorded) {
        let gens = generations(dir);
        let mut recorded = HashMap::new();
        for (_, path) in &gens {
            if let Ok(bytes) = std::fs::read(path) {
                parse(&bytes, &mut recorded);
            }
        }
        let generation = gens.last().map_or(1, |(g, _)| g + 1);
        let j = Journal {
            dir: dir.to_path_buf(),
            keep,
            inner: Mutex::new(Inner { file: None, generation, len: 0, since: Instant::now() }),
        };
        (j, recorded)
    }

    /// The generation being written: a rendering recorded in an older one is recorded again
    /// before it is described to the kernel anew (that file may be deleted).
    pub fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// Records `bytes` as node `node`'s rendering; returns the generation it is in.
    pub fn record(&self, node: u64, bytes: &[u8]) -> io::Result<u64> {
        let mut rec = Vec::with_capacity(HEADER + bytes.len());
        rec.extend_from_slice(&MAGIC.to_le_bytes());
        rec.extend_from_slice(&node.to_le_bytes());
        rec.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crate::fnv(bytes).to_le_bytes());
        rec.extend_from_slice(bytes);
        let mut inner = self.inner.lock();
        if inner.len >= ROTATE_AT {
            self.rotate(&mut inner);
        }
        let generation = inner.generation;
        if inner.file.is_none() {
            inner.file = Some(crate::files::open_append(&self.path(generation))?);
        }
        let r = inner.file.as_mut().map_or(Ok(()), |f| f.write_all(&rec));
        match r {
            Ok(()) => {
                inner.len += rec.len() as u64;
                Ok(generation)
            }
            Err(e) => {
                // A partial record ends what a reader takes from this file: go on in another.
                inner.len = HARD_CAP;
                Err(e)
            }
        }
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("j{generation}"))
    }

    /// Starts the next generation when the older ones can go (or the current one is past
    /// [`HARD_CAP`]), and deletes those. Renderings in a generation are described to the kernel
    /// only while it is the current one (an unchanged rendering in an older one is recorded
    /// again first), so every generation before the current one has been done with for as
    /// long as the current one has been written.
    fn rotate(&self, inner: &mut Inner) {
        if inner.len < HARD_CAP && inner.since.elapsed() <= self.keep {
            return;
        }
        for (g, p) in generations(&self.dir) {
            if g < inner.generation {
                let _ = std::fs::remove_file(p);
            }
        }
        inner.generation += 1;
        inner.file = None;
        inner.len = 0;
        inner.since = Instant::now();
    }
}

/// The journal files in `dir`, oldest first.
fn generations(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let g = e.file_name().to_str()?.strip_prefix('j')?.parse::<u64>().ok()?;
            Some((g, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Adds the valid records of `bytes` to `out` (a later record of a node replaces an earlier
/// one), stopping at the first torn or foreign one.
fn parse(bytes: &[u8], out: &mut Recorded) {
    let mut at = 0;
    while let Some(h) = bytes.get(at..at + HEADER) {
        let u32_at = |i: usize| h.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let u64_at = |i: usize| h.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let (Some(magic), Some(node), Some(len), Some(sum)) = (u32_at(0), u64_at(4), u32_at(12), u64_at(16)) else {
            return;
        };
        let len = len as usize;
        if magic != MAGIC || len > MAX_RECORD {
            return;
        }
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else { return };
        if crate::fnv(body) != sum {
            return;
        }
        out.insert(node, body.to_vec());
        at += HEADER + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successor_reads_the_latest_record_of_each_node_and_nothing_after_a_torn_one() {
        let dir = crate::files::TestDir::new("cgprocfs-journal-");
        let (j, before) = Journal::open(&dir, Duration::from_secs(1));
        assert!(before.is_empty());
        j.record(1, b"one").unwrap();
        j.record(2, b"two").unwrap();
        j.record(1, b"one, later").unwrap();
        drop(j);
        // A torn record at the end (a killed writer), then garbage.
        let path = generations(&dir).pop().unwrap().1;
        let mut f = crate::files::open_append(&path).unwrap();
        f.write_all(&MAGIC.to_le_bytes()).unwrap();
        f.write_all(&3u64.to_le_bytes()).unwrap();
        drop(f);
        let (j, got) = Journal::open(&dir, Duration::from_secs(1));
        assert_eq!(got.get(&1).map(Vec::as_slice), Some(&b"one, later"[..]));
        assert_eq!(got.get(&2).map(Vec::as_slice), Some(&b"two"[..]));
        assert_eq!(got.len(), 2);
        // The successor writes a generation of its own, never after the torn record.
        let g = j.record(3, b"three").unwrap();
        assert!(g > 1);
        let (_, got) = Journal::open(&dir, Duration::from_secs(1));
        assert_eq!(got.get(&3).map(Vec::as_slice), Some(&b"three"[..]));
    }

    #[test]
    fn a_corrupted_record_ends_the_file_and_nothing_is_invented() {
        let dir = crate::files::TestDir::new("cgprocfs-journal-");
        let (j, _) = Journal::open(&dir, Duration::from_secs(1));
        j.record(7, b"seven").unwrap();
        drop(j);
        let path = generations(&dir).pop().unwrap().1;
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, got) = Journal::open(&dir, Duration::from_secs(1));
        assert!(got.is_empty(), "a record whose checksum fails is not taken");
    }

    #[test]
    fn old_generations_go_once_no_read_can_need_them() {
        let dir = crate::files::TestDir::new("cgprocfs-journal-");
        let (j, _) = Journal::open(&dir, Duration::ZERO);
        let big = vec![b'x'; (ROTATE_AT / 2) as usize + 1];
        for n in 0..8 {
            j.record(n, &big).unwrap();
        }
        let gens = generations(&dir);
        assert!(gens.len() <= 2, "at most the current generation and its predecessor: {gens:?}");
        assert!(j.generation() >= 4);
    }
}
