//! B3 propagation (openzipkin/b3-propagation): the single `b3` header and
//! the multi-header `X-B3-*` form.

use super::{hex_id, ContextError, RemoteContext};

pub(super) fn sampled_flag(on: bool) -> u8 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::test_ids::{hex, S16, T32};

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
}
