//! Automatic degradation: the agent backs off by itself when it costs the
//! node too much, instead of hurting the services it traces.
//!
//! | level | what is kept |
//! |---|---|
//! | L0 | the configured sampling |
//! | L1 | at most 50% of traces (head ratio, in the kernel and the agent) |
//! | L2 | 10% of connections followed at all (the kernel copies nothing of the rest) |
//! | L3 | 1% of connections |
//!
//! Any trigger raises the level by one (at most once per
//! [`SETTLE`], so the last step can take effect): agent CPU over
//! `--max-cpu` cores, ring-buffer drops in the last interval, OTLP export
//! errors above 5% over two minutes, RSS over `--max-memory`. Recovery is
//! one level at a time, after `--degrade-cooldown` without a trigger, and
//! only while the agent sits well under its limits (hysteresis: half the
//! CPU limit, 90% of the memory limit), so it does not oscillate.

pub mod enforce;

pub use enforce::Degrader;

use std::{
    collections::VecDeque,
    fmt,
    time::{Duration, Instant},
};

/// Time a raise is given to take effect before the next one.
pub const SETTLE: Duration = Duration::from_secs(3);
/// Window of the export-error trigger.
const EXPORT_WINDOW: Duration = Duration::from_secs(120);
const EXPORT_ERROR_RATIO: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Level(pub u8);

impl Level {
    pub const MAX: Level = Level(3);

    /// Ceiling on every trace's head ratio.
    pub fn head_cap(self) -> f64 {
        match self.0 {
            0 => 1.0,
            1 => 0.5,
            2 => 0.1,
            _ => 0.01,
        }
    }

    /// Share of connections the kernel follows (1: all).
    pub fn follow(self) -> f64 {
        match self.0 {
            0 | 1 => 1.0,
            2 => 0.1,
            _ => 0.01,
        }
    }

    /// The kernel's `Config::shed_bound` for [`Level::follow`].
    pub fn shed_bound(self) -> u32 {
        let shed = 1.0 - self.follow();
        (shed * f64::from(u32::MAX)) as u32
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Agent CPU, in cores (0: no CPU trigger).
    pub max_cpu: f64,
    /// Agent RSS, in bytes (0: no memory trigger).
    pub max_memory: u64,
    pub cooldown: Duration,
    /// Highest level the controller may reach.
    pub max_level: Level,
}

/// What the controller reads each interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// Agent CPU over the interval, in cores.
    pub cpu: f64,
    pub rss: u64,
    /// Kernel ring-buffer drops in the interval.
    pub ring_drops: u64,
    /// Spans exported and failed in the interval.
    pub exported: u64,
    pub failed: u64,
}

/// A level change and its cause, to be logged once.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Level,
    pub to: Level,
    pub cause: String,
}

pub struct Controller {
    limits: Limits,
    level: Level,
    last_change: Option<Instant>,
    last_trigger: Option<Instant>,
    exports: VecDeque<(Instant, u64, u64)>,
}

impl Controller {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            level: Level(0),
            last_change: None,
            last_trigger: None,
            exports: VecDeque::new(),
        }
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// The first trigger that fires on `r`, as a cause.
    fn trigger(&mut self, r: &Reading, now: Instant) -> Option<String> {
        let l = &self.limits;
        if l.max_cpu > 0.0 && r.cpu > l.max_cpu {
            return Some(format!(
                "agent CPU {:.2} cores over --max-cpu {}",
                r.cpu, l.max_cpu
            ));
        }
        if r.ring_drops > 0 {
            return Some(format!(
                "{} kernel events dropped (ring buffer full)",
                r.ring_drops
            ));
        }
        if l.max_memory > 0 && r.rss > l.max_memory {
            return Some(format!(
                "agent RSS {} MiB over --max-memory {} MiB",
                r.rss >> 20,
                l.max_memory >> 20
            ));
        }
        self.exports.push_back((now, r.exported, r.failed));
        while self
            .exports
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > EXPORT_WINDOW)
        {
            self.exports.pop_front();
        }
        let spanned = self
            .exports
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) >= EXPORT_WINDOW - SETTLE);
        let (ok, failed) = self
            .exports
            .iter()
            .fold((0, 0), |(a, b), (_, o, f)| (a + o, b + f));
        let total = ok + failed;
        if spanned && total > 0 && failed as f64 / total as f64 > EXPORT_ERROR_RATIO {
            return Some(format!(
                "{failed} of {total} spans failed to export over the last 2 minutes"
            ));
        }
        None
    }

    /// One interval's reading; a change of level, if any.
    pub fn step(&mut self, r: Reading, now: Instant) -> Option<Transition> {
        let settled = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= SETTLE);
        if let Some(cause) = self.trigger(&r, now) {
            self.last_trigger = Some(now);
            if settled && self.level < self.limits.max_level {
                return Some(self.change(Level(self.level.0 + 1), cause, now));
            }
            return None;
        }
        if self.level.0 == 0 {
            return None;
        }
        let quiet_since = self.last_trigger.max(self.last_change);
        let cooled =
            quiet_since.is_none_or(|t| now.saturating_duration_since(t) >= self.limits.cooldown);
        let l = &self.limits;
        let well_under = (l.max_cpu <= 0.0 || r.cpu < l.max_cpu / 2.0)
            && (l.max_memory == 0 || (r.rss as f64) < l.max_memory as f64 * 0.9);
        if cooled && well_under {
            let cause = format!(
                "no trigger for {}s (agent CPU {:.2} cores)",
                self.limits.cooldown.as_secs(),
                r.cpu
            );
            return Some(self.change(Level(self.level.0 - 1), cause, now));
        }
        None
    }

    fn change(&mut self, to: Level, cause: String, now: Instant) -> Transition {
        let from = std::mem::replace(&mut self.level, to);
        self.last_change = Some(now);
        Transition { from, to, cause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_cpu: 1.0,
            max_memory: 1 << 30,
            cooldown: Duration::from_secs(60),
            max_level: Level::MAX,
        }
    }

    fn cpu(c: f64) -> Reading {
        Reading {
            cpu: c,
            rss: 100 << 20,
            ..Reading::default()
        }
    }

    #[test]
    fn triggers_raise_one_level_per_settle_and_recovery_is_slow() {
        let mut c = Controller::new(limits());
        let t = Instant::now();
        let s = |secs: u64| t + Duration::from_secs(secs);
        let up = c.step(cpu(1.5), s(0)).expect("raise");
        assert_eq!((up.from, up.to), (Level(0), Level(1)));
        assert!(up.cause.contains("--max-cpu"), "{}", up.cause);
        // Within the settle time: no second raise.
        assert_eq!(c.step(cpu(1.5), s(1)), None);
        assert_eq!(c.step(cpu(1.5), s(3)).map(|t| t.to), Some(Level(2)));
        assert_eq!(c.step(cpu(1.5), s(6)).map(|t| t.to), Some(Level(3)));
        assert_eq!(c.step(cpu(1.5), s(9)), None, "L3 is the top");
        // Under the limit but not well under it: no recovery (hysteresis).
        assert_eq!(c.step(cpu(0.8), s(200)), None);
        // Well under, but the cooldown counts from the last trigger.
        assert_eq!(c.step(cpu(0.1), s(201)).map(|t| t.to), Some(Level(2)));
        assert_eq!(c.step(cpu(0.1), s(202)), None, "one level per cooldown");
        assert_eq!(c.step(cpu(0.1), s(261)).map(|t| t.to), Some(Level(1)));
        assert_eq!(c.step(cpu(0.1), s(321)).map(|t| t.to), Some(Level(0)));
        assert_eq!(c.step(cpu(0.1), s(999)), None);
    }

    #[test]
    fn each_trigger_fires() {
        let t = Instant::now();
        let mut c = Controller::new(limits());
        let drops = Reading {
            ring_drops: 3,
            ..cpu(0.1)
        };
        assert!(c.step(drops, t).expect("drops").cause.contains("dropped"));
        let mut c = Controller::new(limits());
        let fat = Reading {
            rss: 2 << 30,
            ..cpu(0.1)
        };
        assert!(c.step(fat, t).expect("rss").cause.contains("--max-memory"));
        // Export errors: over 5%, and only once they span two minutes.
        let mut c = Controller::new(limits());
        let failing = Reading {
            exported: 90,
            failed: 10,
            ..cpu(0.1)
        };
        let mut fired = None;
        for i in 0..=120 {
            if let Some(tr) = c.step(failing, t + Duration::from_secs(i)) {
                fired = Some((i, tr));
                break;
            }
        }
        let (at, tr) = fired.expect("export trigger");
        assert!(at >= 110, "fired after {at}s");
        assert!(tr.cause.contains("failed to export"), "{}", tr.cause);
        // The cap keeps the level.
        let mut c = Controller::new(Limits {
            max_level: Level(2),
            ..limits()
        });
        for i in 0..10 {
            c.step(cpu(5.0), t + Duration::from_secs(i * 4));
        }
        assert_eq!(c.level(), Level(2));
    }

    #[test]
    fn levels_map_to_ratios_and_shedding() {
        assert_eq!(Level(0).shed_bound(), 0);
        assert_eq!(Level(1).shed_bound(), 0);
        assert_eq!(Level(1).head_cap(), 0.5);
        let l2 = f64::from(Level(2).shed_bound()) / f64::from(u32::MAX);
        assert!((l2 - 0.9).abs() < 1e-6);
        assert!(Level(3).shed_bound() > Level(2).shed_bound());
    }
}
