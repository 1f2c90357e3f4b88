//! `/proc/loadavg` for a container (`fs/proc/loadavg.c` format): its own 1/5/15-minute load
//! averages, `running/total` of its threads, and the last pid of its pid namespace.

use crate::cgroup::tasks::TaskCounts;
use crate::state::load::LoadAvg;

/// Renders the file; `last_pid` is the value for the last field.
pub fn render(load: &LoadAvg, tasks: &TaskCounts, last_pid: u64) -> String {
    let [a, b, c] = load.formatted();
    // The reader itself is running; the kernel counts it.
    let running = tasks.running.max(1);
    format!("{a} {b} {c} {running}/{} {last_pid}\n", tasks.total.max(running))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format() {
        let l = LoadAvg { avenrun: [2048, 0, 1024], at_ns: 0 };
        let t = TaskCounts { running: 0, blocked: 0, total: 7, last_pid: Some(42) };
        assert_eq!(render(&l, &t, 42), "1.00 0.00 0.50 1/7 42\n");
    }
}
