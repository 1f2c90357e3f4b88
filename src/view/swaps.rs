//! `/proc/swaps` for a container: the kernel's header (`mm/swapfile.c`, 6.x tab layout) and,
//! when its swap is limited, one `none ... virtual` line with the same SwapTotal/SwapFree as its
//! meminfo.

/// The header the kernel prints.
pub const HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

/// Renders the file for a swap of `total_kib` with `free_kib` free.
pub fn render(total_kib: u64, free_kib: u64) -> String {
    let mut out = HEADER.to_string();
    if total_kib > 0 {
        let used = total_kib - free_kib.min(total_kib);
        let tab = |v: u64| if v < 10_000_000 { "\t" } else { "" };
        // "%*s%s\t%lu\t%s%lu\t%s%d\n": name padded to 40, type, size, used, priority.
        out.push_str(&format!(
            "{:<40}{}\t{}\t{}{}\t{}{}\n",
            "none",
            "virtual",
            total_kib,
            tab(total_kib),
            used,
            tab(used),
            0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_only_without_swap() {
        assert_eq!(super::render(0, 0), super::HEADER);
        let s = super::render(1024, 256);
        assert!(s.ends_with("none                                    virtual\t1024\t\t768\t\t0\n"), "{s:?}");
    }
}
