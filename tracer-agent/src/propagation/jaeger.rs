//! Jaeger's `uber-trace-id` header.

use super::{b3::sampled_flag, hex_id, ContextError, RemoteContext};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::test_ids::{hex, S16, T32};

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
}
