//! The registry as text: the periodic debug line and the exit summary
//! (`name=value` pairs, zero values left out, grouped agent | kernel).

use super::{Group, Sample, SampleKind};

/// `agent: a=1 b=2 | kernel: c=3` from a snapshot; gauges are included
/// when `with_gauges` (the periodic line), left out of the summary (they
/// describe a moment, not the run).
pub fn line(samples: &[Sample], with_gauges: bool) -> String {
    let part = |g: Group| {
        samples
            .iter()
            .filter(|s| s.group == g && s.value > 0)
            .filter(|s| with_gauges || s.kind == SampleKind::Counter)
            .map(|s| format!("{}={}", s.name, s.value))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "agent: {} | kernel: {}",
        part(Group::Agent),
        part(Group::Kernel)
    )
}

/// Warns when the kernel dropped events since the last call (at most once
/// per reporting interval).
#[derive(Debug, Default)]
pub struct DropWatch {
    last: u64,
}

impl DropWatch {
    /// New drops since the last call, if any.
    pub fn new_drops(&mut self, total: u64) -> Option<u64> {
        let new = total.checked_sub(self.last).filter(|n| *n > 0);
        self.last = self.last.max(total);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(group: Group, name: &'static str, kind: SampleKind, value: u64) -> Sample {
        Sample {
            group,
            name,
            help: "h",
            kind,
            value,
        }
    }

    #[test]
    fn line_groups_and_skips_zeros() {
        let v = [
            s(Group::Agent, "spans", SampleKind::Counter, 3),
            s(Group::Agent, "events", SampleKind::Counter, 0),
            s(Group::Agent, "conns", SampleKind::Gauge, 2),
            s(Group::Kernel, "injected", SampleKind::Counter, 1),
        ];
        assert_eq!(
            line(&v, true),
            "agent: spans=3 conns=2 | kernel: injected=1"
        );
        assert_eq!(line(&v, false), "agent: spans=3 | kernel: injected=1");
    }

    #[test]
    fn drops_are_reported_once() {
        let mut w = DropWatch::default();
        assert_eq!(w.new_drops(0), None);
        assert_eq!(w.new_drops(5), Some(5));
        assert_eq!(w.new_drops(5), None);
        assert_eq!(w.new_drops(7), Some(2));
    }
}
