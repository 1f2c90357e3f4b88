//! `/proc/meminfo` for a container: the host's lines in the host's order and format, with
//! every field that has a cgroup source taken from the container's memory controller.
//! `docs/formulas.md` lists each field with its v1/v2 source and the kernel code it mirrors.

use crate::cgroup::memory::MemoryStats;
use crate::host::HostMeminfo;

/// Declares [`Field`]: one variant per meminfo line the container has a value for, with the
/// kernel's label.
macro_rules! fields {
    ($($v:ident => $l:literal,)*) => {
        /// A `/proc/meminfo` line the container has its own value for.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Field {
            $(
                #[doc = concat!("`", $l, ":`")]
                $v,
            )*
        }

        impl Field {
            /// The kernel's label of the line (`fs/proc/meminfo.c`), without the colon.
            pub fn label(self) -> &'static str {
                match self {
                    $(Field::$v => $l,)*
                }
            }

            /// The field a host line's label names, if the container has a value for it.
            pub fn of_label(label: &str) -> Option<Field> {
                match label {
                    $($l => Some(Field::$v),)*
                    _ => None,
                }
            }
        }
    };
}

fields! {
    MemTotal => "MemTotal",
    MemFree => "MemFree",
    MemAvailable => "MemAvailable",
    Buffers => "Buffers",
    Cached => "Cached",
    SwapCached => "SwapCached",
    Active => "Active",
    Inactive => "Inactive",
    ActiveAnon => "Active(anon)",
    InactiveAnon => "Inactive(anon)",
    ActiveFile => "Active(file)",
    InactiveFile => "Inactive(file)",
    Unevictable => "Unevictable",
    Mlocked => "Mlocked",
    SwapTotal => "SwapTotal",
    SwapFree => "SwapFree",
    Zswap => "Zswap",
    Zswapped => "Zswapped",
    Dirty => "Dirty",
    Writeback => "Writeback",
    AnonPages => "AnonPages",
    Mapped => "Mapped",
    Shmem => "Shmem",
    KReclaimable => "KReclaimable",
    Slab => "Slab",
    SReclaimable => "SReclaimable",
    SUnreclaim => "SUnreclaim",
    KernelStack => "KernelStack",
    PageTables => "PageTables",
    SecPageTables => "SecPageTables",
    Percpu => "Percpu",
    AnonHugePages => "AnonHugePages",
    ShmemHugePages => "ShmemHugePages",
    ShmemPmdMapped => "ShmemPmdMapped",
    FileHugePages => "FileHugePages",
    FilePmdMapped => "FilePmdMapped",
}

/// The container's values, in KiB, for the fields it has a source for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    /// (field, KiB, where it comes from), substituted for the host's value of the same label.
    pub fields: Vec<(Field, u64, &'static str)>,
}

impl Values {
    /// Value of `field`, if the container has one.
    pub fn get(&self, field: Field) -> Option<u64> {
        self.entry(field).map(|(_, v, _)| *v)
    }

    /// Where the value of `field` comes from, if the container has one (`show --explain`).
    pub fn why(&self, field: Field) -> Option<&'static str> {
        self.entry(field).map(|(_, _, w)| *w)
    }

    /// `field`'s entry: [`compute`] lists the fields in the enum's order, so it is found by
    /// index (render asks once per host line); a search only if that order ever differs.
    fn entry(&self, field: Field) -> Option<&(Field, u64, &'static str)> {
        match self.fields.get(field as usize) {
            Some(e) if e.0 == field => Some(e),
            _ => self.fields.iter().find(|(f, _, _)| *f == field),
        }
    }
}

/// Computes the container's meminfo values; `None` when no limit applies anywhere in its
/// chain, in which case the host's file is served unchanged.
pub fn compute(host: &HostMeminfo, m: &MemoryStats) -> Option<Values> {
    let limit = m.limit?;
    let kb = |b: Option<u64>| b.unwrap_or(0) / 1024;
    let s = &m.stat;

    // MemTotal: the tightest limit of the chain, never above the host's memory.
    let total = (limit / 1024).min(host.mem_total());
    // usage can exceed the limit for a moment (charges race reclaim): clamp so MemFree >= 0.
    let free = total - (m.usage / 1024).min(total);
    // MemAvailable follows the kernel's si_mem_available() without the watermark terms, which
    // have no per-cgroup counterpart: free + the page cache and reclaimable slab it could drop.
    let reclaimable = kb(s.active_file) + kb(s.inactive_file) + kb(s.slab_reclaimable);
    let available = free.saturating_add(reclaimable).min(total);
    // Kernel: Cached = NR_FILE_PAGES - swapcache - buffers; memcg's `file` counts swapcache.
    let cached = kb(s.file).saturating_sub(kb(s.swapcached));

    // Swap: the chain's swap limit, capped at the host's swap; no limit -> the host's swap.
    let host_swap = host.swap_total();
    let swap_total = m.swap_limit.map_or(host_swap, |l| (l / 1024).min(host_swap));
    let swap_free = match m.swap_usage {
        Some(u) => swap_total - (u / 1024).min(swap_total),
        None => host.swap_free().min(swap_total),
    };

    let anon = (kb(s.active_anon), kb(s.inactive_anon));
    let file = (kb(s.active_file), kb(s.inactive_file));
    let slab_r = kb(s.slab_reclaimable);
    let slab_u = kb(s.slab_unreclaimable);
    let slab = s.slab.map_or(slab_r + slab_u, |v| v / 1024);
    Some(Values {
        fields: vec![
            (Field::MemTotal, total, "min(memory limit of the cgroup chain, host MemTotal)"),
            (Field::MemFree, free, "MemTotal - usage, at least 0"),
            (
                Field::MemAvailable,
                available,
                "MemFree + active_file + inactive_file + slab_reclaimable, at most MemTotal",
            ),
            // Buffer pages are inside memcg's `file`; the kernel has no separate counter.
            (Field::Buffers, 0, "0: buffer pages are counted in memory.stat file"),
            (Field::Cached, cached, "memory.stat file - swapcached"),
            (Field::SwapCached, kb(s.swapcached), "memory.stat swapcached"),
            (Field::Active, anon.0 + file.0, "memory.stat active_anon + active_file"),
            (Field::Inactive, anon.1 + file.1, "memory.stat inactive_anon + inactive_file"),
            (Field::ActiveAnon, anon.0, "memory.stat active_anon"),
            (Field::InactiveAnon, anon.1, "memory.stat inactive_anon"),
            (Field::ActiveFile, file.0, "memory.stat active_file"),
            (Field::InactiveFile, file.1, "memory.stat inactive_file"),
            (Field::Unevictable, kb(s.unevictable), "memory.stat unevictable"),
            // NR_MLOCK is a zone counter with no memcg equivalent.
            (Field::Mlocked, 0, "0: no per-cgroup counter"),
            (
                Field::SwapTotal,
                swap_total,
                "min(swap limit of the chain, host SwapTotal); no swap limit: host SwapTotal",
            ),
            (Field::SwapFree, swap_free, "SwapTotal - swap usage; no swap counter: min(host SwapFree, SwapTotal)"),
            (Field::Zswap, kb(s.zswap), "memory.stat zswap"),
            (Field::Zswapped, kb(s.zswapped), "memory.stat zswapped"),
            (Field::Dirty, kb(s.file_dirty), "memory.stat file_dirty"),
            (Field::Writeback, kb(s.file_writeback), "memory.stat file_writeback"),
            (Field::AnonPages, kb(s.anon), "memory.stat anon"),
            (Field::Mapped, kb(s.file_mapped), "memory.stat file_mapped"),
            (Field::Shmem, kb(s.shmem), "memory.stat shmem"),
            (Field::KReclaimable, slab_r, "memory.stat slab_reclaimable"),
            (Field::Slab, slab, "memory.stat slab (v1: slab_reclaimable + slab_unreclaimable)"),
            (Field::SReclaimable, slab_r, "memory.stat slab_reclaimable"),
            (Field::SUnreclaim, slab_u, "memory.stat slab_unreclaimable"),
            (Field::KernelStack, kb(s.kernel_stack), "memory.stat kernel_stack"),
            (Field::PageTables, kb(s.pagetables), "memory.stat pagetables"),
            (Field::SecPageTables, kb(s.sec_pagetables), "memory.stat sec_pagetables"),
            (Field::Percpu, kb(s.percpu), "memory.stat percpu"),
            (Field::AnonHugePages, kb(s.anon_thp), "memory.stat anon_thp"),
            (Field::ShmemHugePages, kb(s.shmem_thp), "memory.stat shmem_thp"),
            (Field::ShmemPmdMapped, 0, "0: no per-cgroup counter"),
            (Field::FileHugePages, kb(s.file_thp), "memory.stat file_thp"),
            (Field::FilePmdMapped, 0, "0: no per-cgroup counter"),
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
        match Field::of_label(&line.label).and_then(|f| values.get(f)) {
            Some(v) => push_kb_line(&mut out, &line.label, v),
            None => {
                out.push_str(&line.raw);
                out.push('\n');
            }
        }
    }
    out
}

/// Where each line of `rendered` (this file as [`render`] made it) comes from: the formula of
/// a container value, or the host's line passed through (`show --explain`).
pub fn explain(host: &HostMeminfo, m: &MemoryStats, rendered: &str) -> Vec<&'static str> {
    let values = compute(host, m);
    rendered
        .lines()
        .map(|l| {
            let label = l.split(':').next().unwrap_or("");
            match &values {
                None => "the host's: no memory limit anywhere in the cgroup chain",
                Some(v) => {
                    Field::of_label(label).and_then(|f| v.why(f)).unwrap_or("the host's line (no per-cgroup source)")
                }
            }
        })
        .collect()
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
    fn values_are_listed_in_the_order_of_their_fields() {
        let host = HostMeminfo::parse("MemTotal:        1000 kB\n").unwrap();
        let m = MemoryStats { limit: Some(1 << 20), ..Default::default() };
        let v = compute(&host, &m).unwrap();
        for (i, (f, _, _)) in v.fields.iter().enumerate() {
            assert_eq!(*f as usize, i, "{f:?} out of place: Values::get would search");
            assert_eq!(Field::of_label(f.label()), Some(*f));
        }
    }

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
