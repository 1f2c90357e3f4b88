//! Memory controller, v1 and v2: limit over the ancestor chain, usage, swap, and the
//! `memory.stat` counters normalised to one typed struct.

use super::parse::{flat_keyed, limit, u64_value};
use super::read_file;
use super::{CgroupDir, Version};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `memory.stat` counters the meminfo view uses, in bytes, keyed by their v2 names.
/// `None` means the kernel has no such key for this cgroup version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // each field is the memory.stat key of the same name
pub struct MemStat {
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub kernel_stack: Option<u64>,
    pub pagetables: Option<u64>,
    pub sec_pagetables: Option<u64>,
    pub percpu: Option<u64>,
    pub shmem: Option<u64>,
    pub zswap: Option<u64>,
    pub zswapped: Option<u64>,
    pub file_mapped: Option<u64>,
    pub file_dirty: Option<u64>,
    pub file_writeback: Option<u64>,
    pub swapcached: Option<u64>,
    pub anon_thp: Option<u64>,
    pub file_thp: Option<u64>,
    pub shmem_thp: Option<u64>,
    pub inactive_anon: Option<u64>,
    pub active_anon: Option<u64>,
    pub inactive_file: Option<u64>,
    pub active_file: Option<u64>,
    pub unevictable: Option<u64>,
    pub slab_reclaimable: Option<u64>,
    pub slab_unreclaimable: Option<u64>,
    pub slab: Option<u64>,
}

impl MemStat {
    /// Parses v2 `memory.stat` by exact key.
    pub fn parse_v2(text: &str) -> Self {
        let mut s = MemStat::default();
        for (k, v) in flat_keyed(text) {
            if let Some(f) = s.field_mut(k) {
                *f = Some(v);
            }
        }
        s
    }

    /// Parses v1 `memory.stat`, taking the hierarchical `total_*` keys and mapping their v1
    /// names onto the v2 ones.
    pub fn parse_v1(text: &str) -> Self {
        let mut s = MemStat::default();
        for (k, v) in flat_keyed(text) {
            let Some(k) = k.strip_prefix("total_") else {
                continue;
            };
            let v2 = match k {
                "cache" => "file",
                "rss" => "anon",
                "rss_huge" => "anon_thp",
                "mapped_file" => "file_mapped",
                "dirty" => "file_dirty",
                "writeback" => "file_writeback",
                "shmem" | "swapcached" | "inactive_anon" | "active_anon" | "inactive_file" | "active_file"
                | "unevictable" => k,
                _ => continue,
            };
            if let Some(f) = s.field_mut(v2) {
                *f = Some(v);
            }
        }
        s
    }

    fn field_mut(&mut self, key: &str) -> Option<&mut Option<u64>> {
        Some(match key {
            "anon" => &mut self.anon,
            "file" => &mut self.file,
            "kernel_stack" => &mut self.kernel_stack,
            "pagetables" => &mut self.pagetables,
            "sec_pagetables" => &mut self.sec_pagetables,
            "percpu" => &mut self.percpu,
            "shmem" => &mut self.shmem,
            "zswap" => &mut self.zswap,
            "zswapped" => &mut self.zswapped,
            "file_mapped" => &mut self.file_mapped,
            "file_dirty" => &mut self.file_dirty,
            "file_writeback" => &mut self.file_writeback,
            "swapcached" => &mut self.swapcached,
            "anon_thp" => &mut self.anon_thp,
            "file_thp" => &mut self.file_thp,
            "shmem_thp" => &mut self.shmem_thp,
            "inactive_anon" => &mut self.inactive_anon,
            "active_anon" => &mut self.active_anon,
            "inactive_file" => &mut self.inactive_file,
            "active_file" => &mut self.active_file,
            "unevictable" => &mut self.unevictable,
            "slab_reclaimable" => &mut self.slab_reclaimable,
            "slab_unreclaimable" => &mut self.slab_unreclaimable,
            "slab" => &mut self.slab,
            _ => return None,
        })
    }
}

/// A snapshot of a container's memory controller, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Lowest memory limit of the cgroup and its ancestors; `None` when nothing limits it.
    pub limit: Option<u64>,
    /// Memory charged to the cgroup now (page cache, anon, kernel memory; no swap).
    pub usage: u64,
    /// Lowest swap limit of the chain (swap only, not memory+swap); `None` if unlimited or
    /// swap is not accounted.
    pub swap_limit: Option<u64>,
    /// Swap used by the cgroup, when the kernel accounts it.
    pub swap_usage: Option<u64>,
    /// The `memory.stat` counters.
    pub stat: MemStat,
}

impl MemoryStats {
    /// Reads the snapshot of `dir`, v1 or v2.
    pub fn read(dir: &CgroupDir) -> Result<Self> {
        match dir.version {
            Version::V2 => read_v2(dir),
            Version::V1 => read_v1(dir),
        }
    }
}

/// The cgroup's own slab caches (`/proc/slabinfo` format): v1 `memory.kmem.slabinfo`, which
/// kernels before 5.9 fill; `None` on v2, which has none, and where the kernel leaves it empty
/// (5.9+ deprecated it: `memcg_slab_show` returns nothing).
pub fn slabinfo(dir: &CgroupDir) -> Result<Option<String>> {
    if dir.version != Version::V1 {
        return Ok(None);
    }
    let p = dir.file("memory.kmem.slabinfo");
    match super::held::read(&p) {
        Ok(t) if t.starts_with("slabinfo - version:") => Ok(Some(t)),
        Ok(t) if t.trim().is_empty() => Ok(None),
        Ok(_) => Err(Error::malformed(&p, "no slabinfo header")),
        // Kernels built without CONFIG_SLUB_DEBUG / CONFIG_MEMCG_KMEM have no such file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// Lowest limit found in `name` over the chain; directories without the file are skipped
/// (the top of the hierarchy has no limit files).
fn min_chain(dir: &CgroupDir, name: &str) -> Result<Option<u64>> {
    Ok(lowest(dir, |d| limit_at(d, name))?.map(|(v, _)| v))
}

/// The limit `name` (`memory.max`, `memory.limit_in_bytes`) set in directory `d` itself:
/// `None` when `d` has no such file (the top of the hierarchy), `Some(None)` when unlimited.
pub fn limit_at(d: &Path, name: &str) -> Result<Option<Option<u64>>> {
    let p = d.join(name);
    match super::held::read(&p) {
        Ok(t) => limit(&p, &t).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// The file a memory limit is set in, in a `version` hierarchy.
pub fn limit_file(version: Version) -> &'static str {
    match version {
        Version::V2 => "memory.max",
        Version::V1 => "memory.limit_in_bytes",
    }
}

/// The lowest limit of the chain ending at `dir` and the directory that sets it; each
/// directory's own limit read through `at`.
pub fn lowest(dir: &CgroupDir, at: impl FnMut(&Path) -> Result<Option<Option<u64>>>) -> Result<Option<(u64, PathBuf)>> {
    dir.chain_best(at, |v, m| v < m)
}

fn read_u64(path: &Path) -> Result<u64> {
    u64_value(path, &read_file(path)?)
}

fn read_v2(dir: &CgroupDir) -> Result<MemoryStats> {
    if !super::held::exists(&dir.path) {
        return Err(Error::io(&dir.path, std::io::ErrorKind::NotFound.into()));
    }
    // A cgroup without the memory controller enabled is charged to the nearest ancestor
    // that has it; the top of the hierarchy has no memory files and means "no limit".
    let Some(eff) = dir.chain().find(|d| d.join("memory.current").exists()) else {
        return Ok(MemoryStats::default());
    };
    let dir = &CgroupDir { path: eff.to_path_buf(), ..dir.clone() };
    let stat_path = dir.file("memory.stat");
    let stat = MemStat::parse_v2(&read_file(&stat_path)?);
    let usage = read_u64(&dir.file("memory.current"))?;
    // Swap files exist only with swap accounting; their absence is not an error.
    let swap_limit = min_chain(dir, "memory.swap.max")?;
    let swap_usage = match super::held::read(dir.file("memory.swap.current")) {
        Ok(t) => Some(u64_value(&dir.file("memory.swap.current"), &t)?),
        Err(_) => None,
    };
    Ok(MemoryStats { limit: min_chain(dir, "memory.max")?, usage, swap_limit, swap_usage, stat })
}

fn read_v1(dir: &CgroupDir) -> Result<MemoryStats> {
    let stat_path = dir.file("memory.stat");
    let text = read_file(&stat_path)?;
    let stat = MemStat::parse_v1(&text);
    let key = |k: &str| flat_keyed(&text).find(|(x, _)| *x == k).map(|(_, v)| v);
    // The kernel already folds the ancestors into the hierarchical limits.
    let mem_limit =
        key("hierarchical_memory_limit").ok_or_else(|| Error::malformed(&stat_path, "no hierarchical_memory_limit"))?;
    let limit = (mem_limit < super::parse::V1_UNLIMITED).then_some(mem_limit);
    let usage = read_u64(&dir.file("memory.usage_in_bytes"))?;
    let memsw_limit = key("hierarchical_memsw_limit");
    let swap_limit = match (memsw_limit, limit) {
        (Some(sw), Some(m)) if sw < super::parse::V1_UNLIMITED => Some(sw.saturating_sub(m)),
        (Some(sw), None) if sw < super::parse::V1_UNLIMITED => Some(sw),
        _ => None,
    };
    let swap_usage = match key("total_swap") {
        Some(s) => Some(s),
        None => super::held::read(dir.file("memory.memsw.usage_in_bytes"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map(|sw| sw.saturating_sub(usage)),
    };
    Ok(MemoryStats { limit, usage, swap_limit, swap_usage, stat })
}
