//! `/proc/meminfo` for a container: the host's lines in the host's order and format, with
//! every field that has a cgroup source taken from the container's memory controller.
//! `docs/formulas.md` lists each field with its v1/v2 source and the kernel code it mirrors.

use crate::cgroup::memory::MemoryStats;
use crate::host::HostMeminfo;

/// The container's values, in KiB, for the labels it has a source for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    /// Pairs of (label, KiB), substituted for the host's value of the same label.
    pub fields: Vec<(&'static str, u64)>,
}

impl Values {
    /// Value of `label`, if the container has one.
    pub fn get(&self, label: &str) -> Option<u64> {
        self.fields.iter().find(|(l, _)| *l == label).map(|(_, v)| *v)
    }
}

/// Computes the container's meminfo values; `None` when no limit applies anywhere in its
/// chain, in which case the host's file is served unchanged.
pub fn compute(host: &HostMeminfo, m: &MemoryStats) -> Option<Values> {
    let limit = m.limit?;
    let kb = |b: Option<u64>| b.unwrap_or(0) / 1024;
    let s = &m.stat;

    // MemTotal: the tightest limit of the chain, never above the host's memory.
    let total = (limit / 1024).min(host.get("MemTotal"));
    // usage can exceed the limit for a moment (charges race reclaim): clamp so MemFree >= 0.
    let free = total - (m.usage / 1024).min(total);
    // MemAvailable follows the kernel's si_mem_available() without the watermark terms, which
    // have no per-cgroup counterpart: free + the page cache and reclaimable slab it could drop.
    let reclaimable = kb(s.active_file) + kb(s.inactive_file) + kb(s.slab_reclaimable);
    let available = free.saturating_add(reclaimable).min(total);
    // Kernel: Cached = NR_FILE_PAGES - swapcache - buffers; memcg's `file` counts swapcache.
    let cached = kb(s.file).saturating_sub(kb(s.swapcached));

    // Swap: the chain's swap limit, capped at the host's swap; no limit -> the host's swap.
    let host_swap = host.get("SwapTotal");
    let swap_total = m.swap_limit.map_or(host_swap, |l| (l / 1024).min(host_swap));
    let swap_free = match m.swap_usage {
        Some(u) => swap_total - (u / 1024).min(swap_total),
        None => host.get("SwapFree").min(swap_total),
    };

    let anon = (kb(s.active_anon), kb(s.inactive_anon));
    let file = (kb(s.active_file), kb(s.inactive_file));
    let slab_r = kb(s.slab_reclaimable);
    let slab_u = kb(s.slab_unreclaimable);
    let slab = s.slab.map_or(slab_r + slab_u, |v| v / 1024);
    Some(Values {
        fields: vec![
            ("MemTotal", total),
            ("MemFree", free),
            ("MemAvailable", available),
            // Buffer pages are inside memcg's `file`; the kernel has no separate counter.
            ("Buffers", 0),
            ("Cached", cached),
            ("SwapCached", kb(s.swapcached)),
            ("Active", anon.0 + file.0),
            ("Inactive", anon.1 + file.1),
            ("Active(anon)", anon.0),
            ("Inactive(anon)", anon.1),
            ("Active(file)", file.0),
            ("Inactive(file)", file.1),
            ("Unevictable", kb(s.unevictable)),
            // NR_MLOCK is a zone counter with no memcg equivalent.
            ("Mlocked", 0),
            ("SwapTotal", swap_total),
            ("SwapFree", swap_free),
            ("Zswap", kb(s.zswap)),
            ("Zswapped", kb(s.zswapped)),
            ("Dirty", kb(s.file_dirty)),
            ("Writeback", kb(s.file_writeback)),
            ("AnonPages", kb(s.anon)),
            ("Mapped", kb(s.file_mapped)),
            ("Shmem", kb(s.shmem)),
            ("KReclaimable", slab_r),
            ("Slab", slab),
            ("SReclaimable", slab_r),
            ("SUnreclaim", slab_u),
            ("KernelStack", kb(s.kernel_stack)),
            ("PageTables", kb(s.pagetables)),
            ("SecPageTables", kb(s.sec_pagetables)),
            ("Percpu", kb(s.percpu)),
            ("AnonHugePages", kb(s.anon_thp)),
            ("ShmemHugePages", kb(s.shmem_thp)),
            ("ShmemPmdMapped", 0),
            ("FileHugePages", kb(s.file_thp)),
            ("FilePmdMapped", 0),
        ],
    })
}

/// Renders the file: host lines in order, container values where it has them, each written
/// with the kernel's `show_val_kb` format (`%-16s%8lu kB`, `fs/proc/meminfo.c`).
pub fn render(host: &HostMeminfo, m: &MemoryStats) -> String {
    let Some(values) = compute(host, m) else {
        return host.raw();
    };
    let mut out = String::with_capacity(host.lines.len() * 28);
    for line in &host.lines {
        match values.get(&line.label) {
            Some(v) => push_kb_line(&mut out, &line.label, v),
            None => {
                out.push_str(&line.raw);
                out.push('\n');
            }
        }
    }
    out
}

/// Appends `format!("{:<16}{:>8} kB\n", label + ":", v)` without the formatting machinery,
/// which costs more than the rest of the render on this hot path.
fn push_kb_line(out: &mut String, label: &str, v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = v;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let num = &digits[i..];
    out.push_str(label);
    out.push(':');
    for _ in label.len() + 1..16 {
        out.push(' ');
    }
    for _ in num.len()..8 {
        out.push(' ');
    }
    // The digits are ASCII.
    out.push_str(std::str::from_utf8(num).unwrap_or("0"));
    out.push_str(" kB\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kb_lines_match_the_kernel_format() {
        for (label, v) in
            [("MemTotal", 0u64), ("Active(anon)", 123), ("Zswap", 12345678), ("SReclaimable", 123456789012)]
        {
            let mut s = String::new();
            push_kb_line(&mut s, label, v);
            assert_eq!(s, format!("{:<16}{:>8} kB\n", format!("{label}:"), v));
        }
    }
}
