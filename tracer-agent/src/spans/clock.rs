//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall clock.

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, refreshed by
/// [`Clock::resync`] so that NTP steps are followed.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        let mut c = Self { offset_ns: 0 };
        c.resync();
        c
    }

    pub fn resync(&mut self) {
        let mono = now_ns(libc::CLOCK_MONOTONIC);
        let real = now_ns(libc::CLOCK_REALTIME);
        self.offset_ns = real - mono;
    }

    /// Unix time in ns of a kernel monotonic timestamp.
    pub fn to_unix_ns(self, mono_ns: u64) -> u64 {
        let v = mono_ns as i128 + self.offset_ns;
        v.clamp(0, u64::MAX as i128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_now() {
        let c = Clock::new();
        let unix = c.to_unix_ns(now_ns(libc::CLOCK_MONOTONIC) as u64);
        let real = now_ns(libc::CLOCK_REALTIME) as u64;
        assert!(real.abs_diff(unix) < 1_000_000_000);
    }
}
