//! `struct sysinfo` (sysinfo(2)) for a container, answered through seccomp user notification
//! (`crate::seccomp`). The same numbers as its meminfo, uptime and loadavg; the kernel fills
//! it in `kernel/sys.c:do_sysinfo()`.

/// Size of `struct sysinfo` on 64-bit Linux (`include/uapi/linux/sysinfo.h`).
pub const SIZE: usize = 112;

/// `SI_LOAD_SHIFT`: the loads are fixed point with 16 fraction bits (avenrun has 11).
pub const SI_LOAD_SHIFT: u32 = 16;

/// The fields of `struct sysinfo`; memory in bytes (`mem_unit` 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sysinfo {
    /// Seconds since boot (the container's age), rounded up like the kernel.
    pub uptime: i64,
    /// 1, 5 and 15 minute loads, fixed point with [`SI_LOAD_SHIFT`] fraction bits.
    pub loads: [u64; 3],
    /// MemTotal.
    pub totalram: u64,
    /// MemFree.
    pub freeram: u64,
    /// Shmem.
    pub sharedram: u64,
    /// Buffers.
    pub bufferram: u64,
    /// SwapTotal.
    pub totalswap: u64,
    /// SwapFree.
    pub freeswap: u64,
    /// Threads (the kernel's nr_threads), saturated at 65535.
    pub procs: u16,
    /// Bytes per unit of the memory fields.
    pub mem_unit: u32,
}

impl Sysinfo {
    /// The values of the kernel's struct (the host's, from `crate::host::sysinfo`), scaled
    /// to bytes.
    // c_ulong and c_long are 64-bit only on 64-bit targets: the casts are not no-ops everywhere.
    #[allow(clippy::unnecessary_cast)]
    pub fn from_kernel(s: &libc::sysinfo) -> Sysinfo {
        let unit = u64::from(s.mem_unit.max(1));
        Sysinfo {
            uptime: s.uptime as i64,
            loads: s.loads.map(|l| l as u64),
            totalram: s.totalram as u64 * unit,
            freeram: s.freeram as u64 * unit,
            sharedram: s.sharedram as u64 * unit,
            bufferram: s.bufferram as u64 * unit,
            totalswap: s.totalswap as u64 * unit,
            freeswap: s.freeswap as u64 * unit,
            procs: s.procs,
            mem_unit: 1,
        }
    }

    /// Sets the loads from avenrun values (fixed point with `FSHIFT` = 11 fraction bits), as
    /// `do_sysinfo` does: `avenrun[i] << (SI_LOAD_SHIFT - FSHIFT)`.
    pub fn set_loads(&mut self, avenrun: [u64; 3]) {
        let shift = SI_LOAD_SHIFT - crate::state::load::FSHIFT;
        self.loads = avenrun.map(|a| a << shift);
    }

    /// Sets the uptime from nanoseconds: whole seconds, plus one if any remain (the kernel's
    /// `tp.tv_sec + (tp.tv_nsec ? 1 : 0)`).
    pub fn set_uptime_ns(&mut self, ns: u64) {
        self.uptime = (ns.div_ceil(1_000_000_000)).min(i64::MAX as u64) as i64;
    }

    /// The bytes of `struct sysinfo` as a 64-bit process sees it (native byte order).
    pub fn encode(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(0, &self.uptime.to_ne_bytes());
        for (i, l) in self.loads.iter().enumerate() {
            put(8 + 8 * i, &l.to_ne_bytes());
        }
        put(32, &self.totalram.to_ne_bytes());
        put(40, &self.freeram.to_ne_bytes());
        put(48, &self.sharedram.to_ne_bytes());
        put(56, &self.bufferram.to_ne_bytes());
        put(64, &self.totalswap.to_ne_bytes());
        put(72, &self.freeswap.to_ne_bytes());
        put(80, &self.procs.to_ne_bytes());
        // 82: pad; 88: totalhigh, 96: freehigh (0: no highmem on 64-bit).
        put(104, &self.mem_unit.to_ne_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_libc() {
        assert_eq!(std::mem::size_of::<libc::sysinfo>(), SIZE);
        assert_eq!(std::mem::offset_of!(libc::sysinfo, loads), 8);
        assert_eq!(std::mem::offset_of!(libc::sysinfo, totalram), 32);
        assert_eq!(std::mem::offset_of!(libc::sysinfo, freeswap), 72);
        assert_eq!(std::mem::offset_of!(libc::sysinfo, procs), 80);
        assert_eq!(std::mem::offset_of!(libc::sysinfo, totalhigh), 88);
        assert_eq!(std::mem::offset_of!(libc::sysinfo, mem_unit), 104);
    }

    #[test]
    fn encoded_bytes_read_back_as_libc_struct() {
        let mut s = Sysinfo {
            totalram: 256 << 20,
            freeram: 200 << 20,
            sharedram: 1 << 20,
            bufferram: 0,
            totalswap: 64 << 20,
            freeswap: 60 << 20,
            procs: 7,
            mem_unit: 1,
            ..Default::default()
        };
        s.set_uptime_ns(90_000_000_001);
        // Loads 1.00, 0.50, 2.25 in avenrun's 11-bit fixed point.
        s.set_loads([2048, 1024, 4608]);
        let b = s.encode();
        // SAFETY: SIZE bytes, the exact size of libc::sysinfo (checked above); read_unaligned
        // copes with the byte array's alignment.
        let back: libc::sysinfo = unsafe { std::ptr::read_unaligned(b.as_ptr() as *const libc::sysinfo) };
        assert_eq!(back.uptime, 91, "rounded up like the kernel");
        assert_eq!(back.loads, [65536, 32768, 147456], "scaled to SI_LOAD_SHIFT");
        assert_eq!(back.totalram, 256 << 20);
        assert_eq!(back.freeram, 200 << 20);
        assert_eq!(back.sharedram, 1 << 20);
        assert_eq!(back.totalswap, 64 << 20);
        assert_eq!(back.freeswap, 60 << 20);
        assert_eq!(back.procs, 7);
        assert_eq!(back.mem_unit, 1);
        assert_eq!((back.totalhigh, back.freehigh), (0, 0));
    }

    #[test]
    fn host_values_are_bytes() {
        let h = Sysinfo::from_kernel(&crate::host::sysinfo().expect("sysinfo"));
        assert_eq!(h.mem_unit, 1);
        assert!(h.totalram >= h.freeram && h.totalram > 0);
    }
}
