//! Incoming trace context from request headers: W3C Trace Context, B3
//! (single and multi header), Jaeger `uber-trace-id`, and a user-named
//! header holding a hex trace id with an optional span id. Pure functions
//! of header values; the propagator order is the precedence order.

use thiserror::Error;

pub mod b3;
pub mod custom;
pub mod jaeger;
pub mod w3c;

pub use b3::{parse_b3_multi, parse_b3_single};
pub use custom::parse_custom;
pub use jaeger::parse_jaeger;

/// A header that can carry trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Propagator {
    TraceContext,
    B3,
    Jaeger,
    /// `--trace-header NAME` (lower-cased).
    Custom(String),
}

impl Propagator {
    /// Parses a `--propagators` entry.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tracecontext" | "w3c" => Ok(Self::TraceContext),
            "b3" | "b3multi" => Ok(Self::B3),
            "jaeger" => Ok(Self::Jaeger),
            other => Err(format!(
                "unknown propagator {other:?} (tracecontext, b3, jaeger, custom)"
            )),
        }
    }

    /// The format's wire code for the kernel's SERVER-context reader;
    /// custom headers are read by the agent alone.
    pub fn kernel_code(&self) -> Option<u32> {
        match self {
            Self::TraceContext => Some(tracer_common::PROPAGATOR_TRACECONTEXT),
            Self::B3 => Some(tracer_common::PROPAGATOR_B3),
            Self::Jaeger => Some(tracer_common::PROPAGATOR_JAEGER),
            Self::Custom(_) => None,
        }
    }
}

/// The propagator order as the kernel reads it (`Config::propagators`).
pub fn kernel_order(order: &[Propagator]) -> u32 {
    tracer_common::pack_propagators(order.iter().filter_map(Propagator::kernel_code))
}

/// A valid remote parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteContext {
    pub trace_id: [u8; 16],
    /// The caller's span; `None` when the format carried only a trace id.
    pub parent_id: Option<[u8; 8]>,
    /// W3C trace flags (bit 0: sampled), from whichever format it came.
    pub flags: u8,
    /// `tracestate`, carried unchanged (Trace Context only).
    pub tracestate: Option<String>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ContextError {
    #[error("traceparent: {0}")]
    TraceParent(#[from] w3c::TraceparentError),
    #[error("{0}: malformed value")]
    Malformed(&'static str),
    #[error("{0}: id is not hex or too long")]
    BadId(&'static str),
    #[error("{0}: all-zero id")]
    ZeroId(&'static str),
}

/// Decodes 1..=2N hex digits into N bytes, right-aligned (left zero pad):
/// B3 and Jaeger allow 64-bit trace ids and dropped leading zeros.
pub(crate) fn hex_id<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], ContextError> {
    let s = s.trim();
    if s.is_empty() || s.len() > 2 * N || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(ContextError::BadId(what));
    }
    let mut out = [0u8; N];
    // Right-align: the last digit is the low nibble of the last byte.
    let pad = 2 * N - s.len();
    for (pos, c) in (pad..).zip(s.bytes()) {
        let d = (c as char).to_digit(16).unwrap_or(0) as u8;
        out[pos / 2] |= if pos.is_multiple_of(2) { d << 4 } else { d };
    }
    if out.iter().all(|b| *b == 0) {
        return Err(ContextError::ZeroId(what));
    }
    Ok(out)
}

/// Header lookup by lower-case name.
pub trait HeaderLookup {
    fn get(&self, lower_name: &str) -> Option<&str>;
}

/// Tries each propagator in order; the first valid context wins. Invalid
/// headers met on the way are returned for counting (they never win).
pub fn extract(
    headers: &(impl HeaderLookup + ?Sized),
    order: &[Propagator],
) -> (Option<RemoteContext>, Vec<ContextError>) {
    let mut errors = Vec::new();
    for p in order {
        let r = match p {
            Propagator::TraceContext => headers.get("traceparent").map(|v| {
                w3c::parse(v)
                    .map(|tp| {
                        Some(RemoteContext {
                            trace_id: tp.trace_id,
                            parent_id: Some(tp.parent_id),
                            flags: tp.flags,
                            tracestate: headers.get("tracestate").map(str::to_owned),
                        })
                    })
                    .map_err(ContextError::from)
            }),
            Propagator::B3 => match (headers.get("b3"), headers.get("x-b3-traceid")) {
                (Some(single), _) => Some(parse_b3_single(single)),
                (None, Some(trace)) => Some(
                    parse_b3_multi(
                        trace,
                        headers.get("x-b3-spanid"),
                        headers.get("x-b3-sampled"),
                        headers.get("x-b3-flags"),
                    )
                    .map(Some),
                ),
                (None, None) => None,
            },
            Propagator::Jaeger => headers
                .get("uber-trace-id")
                .map(|v| parse_jaeger(v).map(Some)),
            Propagator::Custom(name) => headers.get(name).map(|v| parse_custom(v).map(Some)),
        };
        match r {
            Some(Ok(Some(ctx))) => return (Some(ctx), errors),
            Some(Ok(None)) | None => {}
            Some(Err(e)) => errors.push(e),
        }
    }
    (None, errors)
}

/// Header names (lower case) the propagators read; the HTTP parser keeps
/// only these.
pub fn header_names(order: &[Propagator]) -> Vec<String> {
    let mut names = Vec::new();
    for p in order {
        let add: &[&str] = match p {
            Propagator::TraceContext => &["traceparent", "tracestate"],
            Propagator::B3 => &[
                "b3",
                "x-b3-traceid",
                "x-b3-spanid",
                "x-b3-sampled",
                "x-b3-flags",
            ],
            Propagator::Jaeger => &["uber-trace-id"],
            Propagator::Custom(n) => {
                names.push(n.clone());
                &[]
            }
        };
        names.extend(add.iter().map(|s| (*s).to_owned()));
    }
    names
}

/// Ids the parsers' tests share.
#[cfg(test)]
pub(crate) mod test_ids {
    pub const T32: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    pub const S16: &str = "00f067aa0ba902b7";

    pub fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{test_ids::*, *};

    struct H(HashMap<&'static str, &'static str>);
    impl HeaderLookup for H {
        fn get(&self, n: &str) -> Option<&str> {
            self.0.get(n).copied()
        }
    }

    #[test]
    fn precedence_and_invalid_headers() {
        let tp = Box::leak(format!("00-{T32}-{S16}-01").into_boxed_str());
        let b3 = Box::leak(format!("{}-{S16}-1", "1".repeat(32)).into_boxed_str());
        let h = H(HashMap::from([
            ("traceparent", &*tp),
            ("b3", &*b3),
            ("tracestate", "a=b"),
        ]));
        let all = [Propagator::TraceContext, Propagator::B3, Propagator::Jaeger];
        let (c, errs) = extract(&h, &all);
        let c = c.expect("context");
        assert_eq!(hex(&c.trace_id), T32, "tracecontext first");
        assert_eq!(c.tracestate.as_deref(), Some("a=b"));
        assert!(errs.is_empty());
        let (c, _) = extract(&h, &[Propagator::B3, Propagator::TraceContext]);
        assert_eq!(hex(&c.expect("b3").trace_id), "1".repeat(32), "b3 first");
        // An invalid traceparent is counted and the next propagator used.
        let bad = H(HashMap::from([("traceparent", "00-zz"), ("b3", &*b3)]));
        let (c, errs) = extract(&bad, &all);
        assert!(c.is_some());
        assert_eq!(errs.len(), 1);
        // A propagator not in the list is ignored.
        let (c, _) = extract(&h, &[Propagator::Jaeger]);
        assert!(c.is_none());
        let names = header_names(&[Propagator::B3, Propagator::Custom("jd-trace-id".into())]);
        assert!(names.contains(&"x-b3-traceid".to_owned()));
        assert!(names.contains(&"jd-trace-id".to_owned()));
    }

    #[test]
    fn propagator_order_for_the_kernel() {
        use Propagator as P;
        assert_eq!(kernel_order(&[P::TraceContext, P::B3, P::Jaeger]), 0x321);
        assert_eq!(
            kernel_order(&[P::Custom("x".into()), P::B3, P::TraceContext]),
            0x12
        );
        assert_eq!(kernel_order(&[]), 0);
    }
}
