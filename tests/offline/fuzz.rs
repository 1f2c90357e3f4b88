//! Fuzzing of every parser of cgroup, /proc and FUSE input, with proptest: each target starts
//! from the committed corpus in `tests/corpus/<target>/` (real files captured from kernels and
//! hand-made edge cases), applies random mutations, and must never panic. Renderers fed with
//! what the parsers accept must keep their invariants. `CGPROCFS_FUZZ_CASES` sets the number
//! of cases per target (default 5000); CI runs the default.

use cgprocfs::cgroup::cpu::{parse_cpu_max, parse_v1};
use cgprocfs::cgroup::cpuset::parse_list;
use cgprocfs::cgroup::memory::{MemStat, MemoryStats};
use cgprocfs::cgroup::parse::limit;
use cgprocfs::cgroup::{Hierarchies, ProcCgroup};
use cgprocfs::fuse::abi::InHeader;
use cgprocfs::fuse::session::Handler;
use cgprocfs::fuse::ProcFs;
use cgprocfs::host::{HostCpuinfo, HostMeminfo};
use cgprocfs::service::{Options, Service};
use cgprocfs::view::{cpuinfo, meminfo};
use cgprocfs::Root;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;
use std::sync::Arc;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!v.is_empty(), "empty corpus {target}");
    v.sort();
    v
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(b"-1".to_vec()),
        Just(b"max".to_vec()),
        Just(b"99999999999999999999999".to_vec()),
        Just(b"18446744073709551615".to_vec()),
        Just(b"\n".to_vec()),
        Just(b":".to_vec()),
        Just(b" - ".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"/../".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..16),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), interesting).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for m in muts {
        let at = |i: usize, v: &Vec<u8>| if v.is_empty() { 0 } else { i % (v.len() + 1) };
        match m {
            Mutation::Flip(i, b) if !v.is_empty() => {
                let i = i % v.len();
                v[i] = *b;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, b) => {
                let i = at(*i, &v);
                v.splice(i..i, b.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(*i, &v);
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Mutation::Truncate(i) => {
                let i = at(*i, &v);
                v.truncate(i);
            }
            Mutation::Repeat(i, n) => {
                let i = at(*i, &v);
                let end = (i + n).min(v.len());
                let piece = v[i..end].to_vec();
                v.splice(i..i, piece);
            }
        }
    }
    v
}

fn cases() -> u32 {
    std::env::var("CGPROCFS_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(5000)
}

/// Runs `check` on mutated corpus inputs of `target` and on raw random bytes.
fn fuzz(target: &str, check: impl Fn(&[u8])) {
    let seeds = corpus(target);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let strat = (0..seeds.len(), proptest::collection::vec(mutation(), 0..8));
    runner
        .run(&strat, |(i, muts)| {
            check(&apply(&seeds[i], &muts));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    let mut runner = TestRunner::new(Config { cases: cases() / 4, failure_persistence: None, ..Config::default() });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |b| {
            check(&b);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{target} (random bytes): {e}"));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn fuzz_cgroup_parsers() {
    let p = Path::new("fuzz");
    fuzz("proc_cgroup", |b| {
        if let Ok(pc) = ProcCgroup::parse(p, &text(b)) {
            let h = Hierarchies::parse(&Root::new("/"), &text(&corpus("mountinfo")[0]));
            let cg = h.resolve(&pc.without_init_scope());
            // Whatever the input, a resolved directory stays inside its hierarchy.
            for d in [cg.memory, cg.cpu, cg.cpuset, cg.unified].into_iter().flatten() {
                assert!(d.path.starts_with(&d.top), "{} escapes {}", d.path.display(), d.top.display());
            }
        }
    });
    fuzz("mountinfo", |b| {
        let _ = Hierarchies::parse(&Root::new("/"), &text(b)).layout();
    });
    fuzz("memory_stat", |b| {
        let _ = MemStat::parse_v1(&text(b));
        let _ = MemStat::parse_v2(&text(b));
    });
    fuzz("limit", |b| {
        let _ = limit(p, &text(b));
    });
    fuzz("cpu_max", |b| {
        if let Ok(Some(q)) = parse_cpu_max(p, &text(b)) {
            assert!(q.cpus_ceil() >= 1);
        }
        let (a, c) = b.split_at(b.len() / 2);
        let _ = parse_v1(p, &text(a), &text(c));
    });
    fuzz("cpulist", |b| {
        if let Ok(v) = parse_list(p, &text(b)) {
            assert!(v.windows(2).all(|w| w[0] < w[1]));
        }
    });
}

#[test]
fn fuzz_host_files_and_renderers() {
    let stats = |b: &[u8]| {
        let n = |i: usize| b.get(i..i + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()));
        MemoryStats {
            limit: Some(n(0)),
            usage: n(8),
            swap_limit: (n(16) % 2 == 0).then_some(n(24)),
            swap_usage: Some(n(32)),
            stat: MemStat::parse_v2(&text(b)),
        }
    };
    let host = corpus("meminfo")[0].clone();
    fuzz("meminfo", |b| {
        if let Ok(h) = HostMeminfo::parse(&text(b)) {
            let _ = meminfo::render(&h, &stats(b));
        }
        // Valid host file, absurd cgroup numbers: invariants hold.
        let h = HostMeminfo::parse(&text(&host)).unwrap();
        let s = stats(b);
        if let Some(v) = meminfo::compute(&h, &s) {
            use meminfo::Field::*;
            let g = |f| v.get(f).unwrap();
            assert!(g(MemFree) <= g(MemAvailable) && g(MemAvailable) <= g(MemTotal));
            assert!(g(MemTotal) <= h.mem_total());
            assert!(g(SwapFree) <= g(SwapTotal));
        }
    });
    fuzz("cpuinfo", |b| {
        if let Ok(h) = HostCpuinfo::parse(&text(b)) {
            let cpus: Vec<u32> = b.iter().take(8).map(|&x| x as u32).collect();
            let out = cpuinfo::render(&h, &cpus);
            let _ = out.len();
        }
    });
}

#[test]
fn fuzz_fuse_requests() {
    let root = crate::fixtures::fixture("hybrid-limited");
    let svc = Arc::new(Service::new(Root::new(root), Options::default()).unwrap());
    let fs = ProcFs::new(svc);
    fuzz("fuse_request", |b| {
        if let Some(h) = InHeader::parse(b) {
            let _ = fs.dispatch(&h, b.get(40..).unwrap_or(&[]));
        }
    });
}
