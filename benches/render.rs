//! In-process cost of the read path without FUSE: the pure renderers, and the whole service
//! (caller -> cgroup files -> render) over a fixture tree captured from a real kernel.

use cgprocfs::catalog::Served;
use cgprocfs::cgroup::memory::MemoryStats;
use cgprocfs::host::{HostCpuinfo, HostMeminfo};
use cgprocfs::service::{Options, Service};
use cgprocfs::view::{cpuinfo, meminfo};
use cgprocfs::Root;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::path::Path;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hybrid-limited")
}

fn captured_pid(root: &Path) -> u32 {
    std::fs::read_dir(root.join("proc"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .next()
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let root = fixture();
    let host_mem = HostMeminfo::parse(&std::fs::read_to_string(root.join("proc/meminfo")).unwrap()).unwrap();
    let host_cpu = HostCpuinfo::parse(&std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap()).unwrap();
    let svc = Service::new(Root::new(&root), Options::default()).unwrap();
    let pid = captured_pid(&root);
    let cg = svc.container_of(pid).unwrap().cgroups;
    let mem = MemoryStats::read(cg.memory.as_ref().unwrap()).unwrap();

    c.bench_function("render/meminfo (pure)", |b| b.iter(|| meminfo::render(black_box(&host_mem), black_box(&mem))));
    c.bench_function("render/cpuinfo 2 cpus (pure)", |b| b.iter(|| cpuinfo::render(black_box(&host_cpu), &[0, 1])));
    c.bench_function("parse/host meminfo", |b| {
        let t = std::fs::read_to_string(root.join("proc/meminfo")).unwrap();
        b.iter(|| HostMeminfo::parse(black_box(&t)).unwrap())
    });
    c.bench_function("sample/memory v1 (fixture files)", |b| {
        b.iter(|| MemoryStats::read(cg.memory.as_ref().unwrap()).unwrap())
    });
    c.bench_function("service/meminfo for a caller (fixture)", |b| b.iter(|| svc.render_for(Served::Meminfo, pid)));
    c.bench_function("service/online for a caller (fixture)", |b| b.iter(|| svc.render_for(Served::CpuOnline, pid)));

    // The same on this machine's real /proc and cgroupfs, for this process.
    let live = Service::new(Root::new("/"), Options::default()).unwrap();
    let me = std::process::id();
    c.bench_function("live/resolve caller", |b| b.iter(|| live.container_of(me).unwrap()));
    c.bench_function("live/online", |b| b.iter(|| live.render_for(Served::CpuOnline, me)));
    c.bench_function("live/meminfo", |b| b.iter(|| live.render_for(Served::Meminfo, me)));
    c.bench_function("live/stat", |b| b.iter(|| live.render_for(Served::Stat, me)));
}

criterion_group!(render, benches);
criterion_main!(render);
