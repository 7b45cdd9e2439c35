//! Draining the kernel's ring buffer. The kernel side never wakes the agent
//! (a wakeup per event would cost more than the probe itself), so the ring
//! is drained on a timer: every 2 ms while events flow (the default 8 MiB
//! ring absorbs ~4 GB/s at that rate), backing off to 50 ms when idle.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};

use super::recording::Recorder;
use crate::pipeline::Pipeline;

/// How often the ring buffer is drained while events flow.
pub const DRAIN_BUSY: Duration = Duration::from_millis(2);
/// Longest pause between drains once the ring has been found empty: an idle
/// node costs ~20 wakeups a second instead of 500.
pub const DRAIN_IDLE: Duration = Duration::from_millis(50);

/// Records read per drain at most: a backlog (the agent starved of CPU
/// for seconds, then catching up) is read in slices, so the loop still
/// serves process notices and ticks in between.
pub const DRAIN_BUDGET: usize = 16_384;
/// Spans handed to the sinks at least this often within a drain. The
/// sinks' queues bound what is in flight; a backlog drained as one batch
/// would overflow them and drop its tail (the spans of the requests that
/// came last) even with the consumers idle.
pub const FLUSH_EVERY: usize = 256;

/// Reads queued records into the pipeline (and the recording, if any), at
/// most [`DRAIN_BUDGET`]; returns how many there were. Fewer than the
/// budget means the ring is empty.
pub fn drain(
    ring: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    mut recorder: Option<&mut Recorder>,
) -> usize {
    let mut n = 0;
    while n < DRAIN_BUDGET {
        let Some(item) = ring.next() else { break };
        if let Some(r) = recorder.as_deref_mut() {
            r.record(&item);
        }
        pipeline.handle(&item);
        drop(item);
        n += 1;
        if pipeline.pending_spans() >= FLUSH_EVERY {
            pipeline.flush();
        }
    }
    if let Some(r) = recorder {
        if n > 0 {
            r.flush();
        }
    }
    pipeline.flush();
    n
}

/// The next drain delay: back to the busy rate as soon as anything was
/// read, otherwise doubling towards the idle rate.
pub fn next_delay(current: Duration, read: usize) -> Duration {
    if read >= DRAIN_BUDGET {
        // More is waiting: read on after the loop's other work.
        Duration::ZERO
    } else if read > 0 {
        DRAIN_BUSY
    } else {
        (current * 2).min(DRAIN_IDLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_backs_off_when_idle_and_snaps_back_under_load() {
        let mut d = DRAIN_BUSY;
        for _ in 0..10 {
            d = next_delay(d, 0);
        }
        assert_eq!(d, DRAIN_IDLE);
        assert_eq!(next_delay(d, 1), DRAIN_BUSY);
        assert_eq!(next_delay(DRAIN_BUSY, 0), DRAIN_BUSY * 2);
        assert_eq!(next_delay(DRAIN_BUSY, DRAIN_BUDGET), Duration::ZERO);
    }
}
