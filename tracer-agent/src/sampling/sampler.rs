//! Head sampling: the OpenTelemetry samplers by their standard names
//! (`OTEL_TRACES_SAMPLER`), plus per-route ratios. The decision is taken
//! once, where a local trace's ids are chosen, and written into the W3C
//! sampled flag, so every span of the local trace and every request it
//! causes carries the same decision.

use std::fmt;

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum SamplerError {
    #[error(
        "unknown sampler {0:?} (known: always_on, always_off, traceidratio, \
         parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
    )]
    Unknown(String),
    #[error("sampler argument {0:?} is not a ratio between 0 and 1")]
    BadRatio(String),
    #[error(
        "--sample-route {0:?} is not ROUTE=RATIO with ROUTE starting with '/' and RATIO in 0..=1"
    )]
    BadRoute(String),
}

/// What the sampler does for a trace this node starts (no remote parent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootRule {
    AlwaysOn,
    AlwaysOff,
    /// Keep the traces whose id falls under the ratio.
    Ratio(f64),
}

/// A configured head sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    /// Follow the incoming remote parent's sampled flag when there is one.
    pub parent_based: bool,
    pub root: RootRule,
    /// `ROUTE=RATIO` rules, first match wins; they replace `root` for the
    /// requests they match.
    pub routes: Vec<RouteRule>,
    /// The degradation level's ceiling (1: none): a trace is kept only if
    /// it also passes the ratio test at this ratio, incoming flag or not.
    pub cap: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteRule {
    pub route: String,
    pub ratio: f64,
}

impl Default for Sampler {
    /// `parentbased_always_on`, the OpenTelemetry default.
    fn default() -> Self {
        Self {
            parent_based: true,
            root: RootRule::AlwaysOn,
            routes: Vec::new(),
            cap: 1.0,
        }
    }
}

fn ratio(arg: Option<&str>) -> Result<f64, SamplerError> {
    // The OpenTelemetry default argument of the ratio samplers.
    let Some(a) = arg else { return Ok(1.0) };
    match a.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(SamplerError::BadRatio(a.to_owned())),
    }
}

impl Sampler {
    /// From OpenTelemetry's sampler name and argument.
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, SamplerError> {
        let (parent_based, root) = match name.trim() {
            "always_on" => (false, RootRule::AlwaysOn),
            "always_off" => (false, RootRule::AlwaysOff),
            "traceidratio" => (false, RootRule::Ratio(ratio(arg)?)),
            "parentbased_always_on" => (true, RootRule::AlwaysOn),
            "parentbased_always_off" => (true, RootRule::AlwaysOff),
            "parentbased_traceidratio" => (true, RootRule::Ratio(ratio(arg)?)),
            other => return Err(SamplerError::Unknown(other.to_owned())),
        };
        Ok(Self {
            parent_based,
            root,
            routes: Vec::new(),
            cap: 1.0,
        })
    }

    /// Adds `ROUTE=RATIO` rules in order.
    pub fn with_routes(mut self, rules: &[String]) -> Result<Self, SamplerError> {
        for r in rules {
            let bad = || SamplerError::BadRoute(r.clone());
            let (route, ratio) = r.rsplit_once('=').ok_or_else(bad)?;
            let ratio: f64 = ratio.trim().parse().map_err(|_| bad())?;
            if !route.starts_with('/') || !(0.0..=1.0).contains(&ratio) {
                return Err(bad());
            }
            self.routes.push(RouteRule {
                route: route.to_owned(),
                ratio,
            });
        }
        Ok(self)
    }

    /// Whether this sampler keeps every trace (no decision to make).
    pub fn keeps_all(&self) -> bool {
        self.cap >= 1.0
            && !self.parent_based
            && self.root == RootRule::AlwaysOn
            && self.routes.iter().all(|r| r.ratio >= 1.0)
    }

    /// Whether route rules are configured (the route must be known).
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// The decision for a local trace: `remote` is the incoming remote
    /// parent's sampled flag (None for a trace this node starts), `route`
    /// the request's route template (empty when unknown).
    pub fn sample(&self, trace_id: &[u8; 16], remote: Option<bool>, route: &str) -> bool {
        self.decide(trace_id, remote, route) && ratio_keeps(trace_id, self.cap)
    }

    fn decide(&self, trace_id: &[u8; 16], remote: Option<bool>, route: &str) -> bool {
        if self.parent_based {
            if let Some(sampled) = remote {
                return sampled;
            }
        }
        if let Some(rule) = self.routes.iter().find(|r| route_matches(&r.route, route)) {
            return ratio_keeps(trace_id, rule.ratio);
        }
        match self.root {
            RootRule::AlwaysOn => true,
            RootRule::AlwaysOff => false,
            RootRule::Ratio(r) => ratio_keeps(trace_id, r),
        }
    }
}

impl Sampler {
    /// What the kernel applies to the ids it chooses (context injection):
    /// the ratio rule of [`Sampler::root`] and whether an incoming flag is
    /// followed. Route rules need the route template, which the kernel
    /// does not build: they are the agent's alone.
    pub fn kernel_config(&self) -> tracer_common::Config {
        let bound = match self.root {
            RootRule::AlwaysOn => 1u64 << 63,
            RootRule::AlwaysOff => 0,
            RootRule::Ratio(r) => ratio_bound(r),
        };
        let uncapped = Sampler {
            cap: 1.0,
            ..self.clone()
        };
        let mode = match (uncapped.keeps_all(), self.parent_based) {
            (true, _) => tracer_common::SAMPLE_OFF,
            (false, true) => tracer_common::SAMPLE_ROOTS,
            (false, false) => tracer_common::SAMPLE_ALL,
        };
        let cap = ratio_bound(self.cap);
        tracer_common::Config {
            sample_mode: mode,
            sample_bound_hi: (bound >> 32) as u32,
            sample_bound_lo: bound as u32,
            cap_on: u32::from(self.cap < 1.0),
            cap_bound_hi: (cap >> 32) as u32,
            cap_bound_lo: cap as u32,
            ..Default::default()
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let root = match self.root {
            RootRule::AlwaysOn => "always_on".to_owned(),
            RootRule::AlwaysOff => "always_off".to_owned(),
            RootRule::Ratio(r) => format!("traceidratio({r})"),
        };
        if self.parent_based {
            write!(f, "parentbased({root})")?;
        } else {
            f.write_str(&root)?;
        }
        for r in &self.routes {
            write!(f, " {}={}", r.route, r.ratio)?;
        }
        Ok(())
    }
}

/// A rule names a route template exactly, or a prefix of it that ends at
/// a segment boundary (`/api` matches `/api/pay`, not `/apix`).
pub fn route_matches(rule: &str, route: &str) -> bool {
    match route.strip_prefix(rule) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rule.ends_with('/'),
        None => false,
    }
}

/// OpenTelemetry's TraceIdRatioBased test as the Go and Java SDKs do it:
/// the trace id's last 8 bytes, big-endian, shifted right by one, below
/// `ratio * 2^63`. Deterministic in the trace id, so every node (and the
/// kernel) that applies the same ratio to a trace agrees.
pub fn ratio_keeps(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 || ratio.is_nan() {
        return false;
    }
    ratio_value(trace_id) < ratio_bound(ratio)
}

/// The part of a trace id the ratio test compares.
pub fn ratio_value(trace_id: &[u8; 16]) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    u64::from_be_bytes(low) >> 1
}

/// The bound a ratio sets on [`ratio_value`].
pub fn ratio_bound(ratio: f64) -> u64 {
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> [u8; 16] {
        let mut t = [0xab; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    }

    #[test]
    fn names_follow_opentelemetry() {
        assert_eq!(
            Sampler::parse("parentbased_always_on", None),
            Ok(Sampler::default())
        );
        let s = Sampler::parse("parentbased_traceidratio", Some("0.25")).expect("ok");
        assert_eq!((s.parent_based, s.root), (true, RootRule::Ratio(0.25)));
        assert_eq!(
            Sampler::parse("traceidratio", None).map(|s| s.root),
            Ok(RootRule::Ratio(1.0))
        );
        assert!(matches!(
            Sampler::parse("jaeger_remote", None),
            Err(SamplerError::Unknown(_))
        ));
        assert!(matches!(
            Sampler::parse("traceidratio", Some("1.5")),
            Err(SamplerError::BadRatio(_))
        ));
    }

    #[test]
    fn parent_based_follows_the_incoming_flag_only() {
        let on = Sampler::default();
        assert!(!on.sample(&id(0), Some(false), "/"));
        assert!(on.sample(&id(u64::MAX), Some(true), "/"));
        assert!(on.sample(&id(u64::MAX), None, "/"));
        let off = Sampler::parse("always_off", None).expect("ok");
        assert!(!off.sample(&id(0), Some(true), "/"));
        let ratio = Sampler::parse("parentbased_traceidratio", Some("0")).expect("ok");
        assert!(ratio.sample(&id(0), Some(true), "/"));
        assert!(!ratio.sample(&id(0), None, "/"));
    }

    #[test]
    fn ratio_is_the_sdk_rule_on_the_low_bytes() {
        // 0.5 keeps exactly the ids whose top low bit is clear.
        assert!(ratio_keeps(&id(0x7fff_ffff_ffff_ffff), 0.5));
        assert!(!ratio_keeps(&id(0x8000_0000_0000_0000), 0.5));
        assert!(ratio_keeps(&id(u64::MAX), 1.0));
        assert!(!ratio_keeps(&id(0), 0.0));
        let kept = (0..10_000u64)
            .filter(|i| ratio_keeps(&id(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 0.1))
            .count();
        assert!((900..1100).contains(&kept), "{kept}");
    }

    #[test]
    fn route_rules_match_templates_and_segment_prefixes_first_wins() {
        let s = Sampler::parse("always_on", None)
            .and_then(|s| {
                s.with_routes(&[
                    "/api/health=0".into(),
                    "/api=1".into(),
                    "/api/health/deep=1".into(),
                ])
            })
            .expect("ok");
        assert!(!s.sample(&id(0), None, "/api/health"));
        assert!(!s.sample(&id(0), None, "/api/health/deep"));
        assert!(s.sample(&id(0), None, "/api/healthz"));
        assert!(s.sample(&id(0), None, "/other"));
        assert!(route_matches("/", "/x"));
        assert!(!route_matches("/api", "/apix"));
        for bad in ["api=1", "/a=2", "/a", "/a=x"] {
            assert!(
                Sampler::default().with_routes(&[bad.into()]).is_err(),
                "{bad}"
            );
        }
    }
}
