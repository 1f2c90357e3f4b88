//! `/sys/devices/system/cpu/{online,possible,present}`: the container's CPUs renumbered
//! `0..N-1` (`drivers/base/cpu.c`, printed with `%*pbl`).

use crate::cgroup::cpuset::format_list;

/// Renders the file for a container that sees `n` CPUs.
pub fn render(n: usize) -> String {
    let cpus: Vec<u32> = (0..n.max(1) as u32).collect();
    format_list(&cpus)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::render(1), "0\n");
        assert_eq!(super::render(4), "0-3\n");
        assert_eq!(super::render(0), "0\n");
    }
}
