//! `/proc/diskstats` for a container (`block/genhd.c` `diskstats_show` format): one line per
//! host device the container did I/O on, from its cgroup's counters. Merges, times, in-flight
//! and flush counters have no cgroup source and read 0.

use crate::cgroup::io::IoStats;
use std::fmt::Write;

/// Renders the file; `names` maps major:minor to the host's device names. Devices the cgroup
/// lists but the host no longer has are skipped, and so are devices with no I/O at all.
pub fn render(io: &IoStats, names: &[((u32, u32), String)]) -> String {
    let mut out = String::new();
    for ((maj, min), name) in names {
        let Some((_, d)) = io.iter().find(|(dev, _)| dev == &(*maj, *min)) else { continue };
        if d.rios + d.wios + d.dios == 0 {
            continue;
        }
        // major minor name, then 17 fields: reads merged sectors ms, writes merged sectors ms,
        // in-flight, io_ticks, weighted, discards merged sectors ms, flushes ms.
        let _ = writeln!(
            out,
            "{maj:4} {min:7} {name} {} 0 {} 0 {} 0 {} 0 0 0 0 {} 0 {} 0 0 0",
            d.rios,
            d.rbytes / 512,
            d.wios,
            d.wbytes / 512,
            d.dios,
            d.dbytes / 512
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::io::DevIo;

    #[test]
    fn kernel_format_and_vanished_devices() {
        let io = vec![
            ((254, 0), DevIo { rbytes: 4096, wbytes: 1024, rios: 2, wios: 1, dbytes: 0, dios: 0 }),
            ((9, 9), DevIo { rios: 5, ..Default::default() }), // gone from the host
            ((7, 0), DevIo::default()),                        // no I/O
        ];
        let names = vec![((7, 0), "loop0".to_string()), ((254, 0), "vda".to_string())];
        assert_eq!(render(&io, &names), " 254       0 vda 2 0 8 0 1 0 2 0 0 0 0 0 0 0 0 0 0\n");
    }
}
