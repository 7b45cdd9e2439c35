//! Incoming trace context from request headers: W3C Trace Context, B3
//! (single and multi header), Jaeger `uber-trace-id`, and a user-named
//! header holding a hex trace id with an optional span id. Pure functions
//! of header values; the propagator order is the precedence order.

use thiserror::Error;

use super::traceparent;

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
    TraceParent(#[from] traceparent::TraceparentError),
    #[error("{0}: malformed value")]
    Malformed(&'static str),
    #[error("{0}: id is not hex or too long")]
    BadId(&'static str),
    #[error("{0}: all-zero id")]
    ZeroId(&'static str),
}

/// Decodes 1..=2N hex digits into N bytes, right-aligned (left zero pad):
/// B3 and Jaeger allow 64-bit trace ids and dropped leading zeros.
fn hex_id<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], ContextError> {
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

fn sampled_flag(on: bool) -> u8 {
    u8::from(on)
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`, or just the
/// sampling state (`0`, `1`, `d`), which carries no ids.
pub fn parse_b3_single(v: &str) -> Result<Option<RemoteContext>, ContextError> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    if parts.len() == 1 {
        return match parts[0] {
            "0" | "1" | "d" => Ok(None),
            _ => Err(ContextError::Malformed("b3")),
        };
    }
    if parts.len() > 4 {
        return Err(ContextError::Malformed("b3"));
    }
    let trace_id = hex_id::<16>(parts[0], "b3")?;
    if parts[1].len() != 16 {
        return Err(ContextError::BadId("b3"));
    }
    let span = hex_id::<8>(parts[1], "b3")?;
    let flags = match parts.get(2).copied() {
        None => 1, // deferred: follow the caller, which propagated ids
        Some("1") | Some("d") => 1,
        Some("0") => 0,
        Some(_) => return Err(ContextError::Malformed("b3")),
    };
    Ok(Some(RemoteContext {
        trace_id,
        parent_id: Some(span),
        flags,
        tracestate: None,
    }))
}

/// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags`.
pub fn parse_b3_multi(
    trace: &str,
    span: Option<&str>,
    sampled: Option<&str>,
    debug: Option<&str>,
) -> Result<RemoteContext, ContextError> {
    let trace_id = hex_id::<16>(trace, "x-b3-traceid")?;
    let parent_id = match span {
        Some(s) if s.trim().len() == 16 => Some(hex_id::<8>(s, "x-b3-spanid")?),
        Some(_) => return Err(ContextError::BadId("x-b3-spanid")),
        None => return Err(ContextError::Malformed("x-b3-spanid")),
    };
    let on = debug.is_some_and(|d| d.trim() == "1")
        || match sampled.map(str::trim) {
            Some("1") | Some("true") | None => true,
            Some("0") | Some("false") => false,
            Some(_) => return Err(ContextError::Malformed("x-b3-sampled")),
        };
    Ok(RemoteContext {
        trace_id,
        parent_id,
        flags: sampled_flag(on),
        tracestate: None,
    })
}

/// `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}` (the
/// colons may arrive URL-encoded as `%3A`).
pub fn parse_jaeger(v: &str) -> Result<RemoteContext, ContextError> {
    let v = v.trim().replace("%3A", ":").replace("%3a", ":");
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() != 4 {
        return Err(ContextError::Malformed("uber-trace-id"));
    }
    let trace_id = hex_id::<16>(parts[0], "uber-trace-id")?;
    let span = hex_id::<8>(parts[1], "uber-trace-id")?;
    let flags = u8::from_str_radix(parts[3].trim(), 16)
        .map_err(|_| ContextError::Malformed("uber-trace-id"))?;
    Ok(RemoteContext {
        trace_id,
        parent_id: Some(span),
        flags: sampled_flag(flags & 1 == 1),
        tracestate: None,
    })
}

/// A user-named header (e.g. `JD-Trace-ID`): a hex trace id, optionally
/// followed by `-`, `:`, `/` or `,` and a hex span id.
pub fn parse_custom(v: &str) -> Result<RemoteContext, ContextError> {
    let v = v.trim();
    let (t, s) = match v.find(['-', ':', '/', ',']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let trace_id = hex_id::<16>(t, "custom trace header")?;
    let parent_id = match s {
        Some(s) => Some(hex_id::<8>(s, "custom trace header")?),
        None => None,
    };
    Ok(RemoteContext {
        trace_id,
        parent_id,
        flags: 1,
        tracestate: None,
    })
}

/// Header lookup by lower-case name.
pub trait HeaderLookup {
    fn get(&self, lower_name: &str) -> Option<&str>;
}

/// Tries each propagator in order; the first valid context wins. Invalid
/// headers met on the way are returned for counting (they never win).
pub fn extract(
    headers: &impl HeaderLookup,
    order: &[Propagator],
) -> (Option<RemoteContext>, Vec<ContextError>) {
    let mut errors = Vec::new();
    for p in order {
        let r = match p {
            Propagator::TraceContext => headers.get("traceparent").map(|v| {
                traceparent::parse(v)
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct H(HashMap<&'static str, &'static str>);
    impl HeaderLookup for H {
        fn get(&self, n: &str) -> Option<&str> {
            self.0.get(n).copied()
        }
    }

    const T32: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const S16: &str = "00f067aa0ba902b7";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn b3_single() {
        let c = parse_b3_single(&format!("{T32}-{S16}-1"))
            .expect("valid")
            .expect("ids");
        assert_eq!(hex(&c.trace_id), T32);
        assert_eq!(c.parent_id.map(|p| hex(&p)).as_deref(), Some(S16));
        assert_eq!(c.flags, 1);
        let c = parse_b3_single(&format!("a3ce929d0e0e4736-{S16}-0-{S16}"))
            .expect("valid")
            .expect("ids");
        assert_eq!(hex(&c.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(c.flags, 0);
        assert_eq!(parse_b3_single("0"), Ok(None));
        assert_eq!(parse_b3_single("d"), Ok(None));
        for bad in [
            "x".to_owned(),
            format!("{T32}-123"),
            format!("{T32}-{S16}-7"),
            format!("zz-{S16}"),
            format!("00000000000000000000000000000000-{S16}"),
            format!("{T32}0-{S16}"),
        ] {
            assert!(parse_b3_single(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn b3_multi() {
        let c = parse_b3_multi(T32, Some(S16), Some("0"), None).expect("valid");
        assert_eq!(c.flags, 0);
        let c = parse_b3_multi(T32, Some(S16), Some("0"), Some("1")).expect("valid");
        assert_eq!(c.flags, 1, "debug implies sampled");
        assert!(parse_b3_multi(T32, None, None, None).is_err());
        assert!(parse_b3_multi(T32, Some("12"), None, None).is_err());
        assert!(parse_b3_multi(T32, Some(S16), Some("maybe"), None).is_err());
    }

    #[test]
    fn jaeger() {
        let c = parse_jaeger(&format!("{T32}:{S16}:0:1")).expect("valid");
        assert_eq!(hex(&c.trace_id), T32);
        assert_eq!(c.flags, 1);
        let c = parse_jaeger(&format!("abc%3A{S16}%3A0%3A0")).expect("encoded");
        assert_eq!(hex(&c.trace_id), "00000000000000000000000000000abc");
        assert_eq!(c.flags, 0);
        assert!(parse_jaeger(&format!("{T32}:{S16}:0")).is_err());
        assert!(parse_jaeger(&format!("{T32}:0:0:1")).is_err());
        assert!(parse_jaeger(&format!("{T32}:{S16}:0:zz")).is_err());
    }

    #[test]
    fn custom() {
        let c = parse_custom(T32).expect("trace only");
        assert_eq!(c.parent_id, None);
        let c = parse_custom(&format!("{T32}:{S16}")).expect("with span");
        assert_eq!(c.parent_id.map(|p| hex(&p)).as_deref(), Some(S16));
        assert!(parse_custom("not-hex").is_err());
        assert!(parse_custom("0").is_err());
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
}
