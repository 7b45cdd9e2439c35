//! A user-named trace header (`--trace-header NAME`).

use super::{hex_id, ContextError, RemoteContext};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::test_ids::{hex, S16, T32};

    #[test]
    fn custom() {
        let c = parse_custom(T32).expect("trace only");
        assert_eq!(c.parent_id, None);
        let c = parse_custom(&format!("{T32}:{S16}")).expect("with span");
        assert_eq!(c.parent_id.map(|p| hex(&p)).as_deref(), Some(S16));
        assert!(parse_custom("not-hex").is_err());
        assert!(parse_custom("0").is_err());
    }
}
