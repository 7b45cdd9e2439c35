//! Trace-context extraction from hostile header values.
//!
//! The input is lines of `<selector byte><value>`: the selector picks the
//! header name (the W3C, B3, Jaeger and a custom propagator's names). The
//! whole input is also parsed as one `traceparent`.
//!
//! Checked: no panic; a context that is returned has non-zero ids and
//! carries `tracestate` unchanged; errors are bounded by the propagators
//! tried; a valid `traceparent` re-encodes to one that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_agent::propagation::{extract, w3c, HeaderLookup, Propagator};

const NAMES: [&str; 9] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
    "x-custom",
];
/// Headers per input, as an HTTP parser would keep at most a few.
const MAX_HEADERS: usize = 16;

struct Headers(Vec<(&'static str, String)>);

impl HeaderLookup for Headers {
    fn get(&self, lower_name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == lower_name)
            .map(|(_, v)| v.as_str())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut headers = Headers(Vec::new());
    for line in data.split(|b| *b == b'\n').take(MAX_HEADERS) {
        let Some((sel, value)) = line.split_first() else {
            continue;
        };
        let name = NAMES[usize::from(*sel) % NAMES.len()];
        headers
            .0
            .push((name, String::from_utf8_lossy(value).into_owned()));
    }
    let order = [
        Propagator::TraceContext,
        Propagator::B3,
        Propagator::Jaeger,
        Propagator::Custom("x-custom".into()),
    ];
    let (ctx, errors) = extract(&headers, &order);
    assert!(errors.len() <= order.len());
    if let Some(c) = &ctx {
        assert_ne!(c.trace_id, [0; 16]);
        if let Some(p) = c.parent_id {
            assert_ne!(p, [0; 8]);
        }
        if let Some(ts) = &c.tracestate {
            assert_eq!(Some(ts.as_str()), headers.get("tracestate"));
        }
    }

    let raw = String::from_utf8_lossy(data);
    if let Ok(tp) = w3c::parse(&raw) {
        assert_ne!(tp.trace_id, [0; 16]);
        assert_ne!(tp.parent_id, [0; 8]);
        let again = format!(
            "00-{}-{}-{:02x}",
            hex(&tp.trace_id),
            hex(&tp.parent_id),
            tp.flags
        );
        assert_eq!(w3c::parse(&again), Ok(tp));
    }
});
