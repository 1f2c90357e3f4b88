//! `/proc/uptime` for a container (`fs/proc/uptime.c` format, both fields truncated to 1/100 s):
//! the age of the container's init, and the idle time of its vCPUs, the same sum as the idle
//! field of the `cpu` line of its `/proc/stat`.

/// Renders the file from the container's age and total idle time, in ns.
pub fn render(age_ns: u64, idle_ns: u64) -> String {
    let f = |ns: u64| format!("{}.{:02}", ns / 1_000_000_000, ns % 1_000_000_000 / 10_000_000);
    format!("{} {}\n", f(age_ns), f(idle_ns))
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncates_to_centiseconds() {
        assert_eq!(super::render(12_349_999_999, 0), "12.34 0.00\n");
        assert_eq!(super::render(5_000_000, 3_010_000_000), "0.00 3.01\n");
    }
}
