//! W3C Trace Context `traceparent` parsing (https://www.w3.org/TR/trace-context/).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TraceparentError {
    #[error("traceparent has the wrong shape")]
    Shape,
    #[error("traceparent field is not lowercase hex")]
    NotHex,
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    #[error("traceparent trace id or parent id is all zeros")]
    ZeroId,
}

/// A valid remote parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    #[cfg(test)]
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes lowercase hex into `out`; upper case is invalid per the spec.
fn decode_hex(s: &[u8], out: &mut [u8]) -> Result<(), TraceparentError> {
    if s.len() != out.len() * 2 {
        return Err(TraceparentError::Shape);
    }
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or(TraceparentError::NotHex)?;
        let lo = hex_val(pair[1]).ok_or(TraceparentError::NotHex)?;
        out[i] = hi << 4 | lo;
    }
    Ok(())
}

/// Parses a `traceparent` value. Version 00 must be exactly 55 bytes; a
/// higher version may carry more fields after a `-` (forward compatibility).
pub fn parse(value: &str) -> Result<TraceParent, TraceparentError> {
    let v = value.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
    if v.len() < 55 {
        return Err(TraceparentError::Shape);
    }
    let mut version = [0u8; 1];
    decode_hex(&v[0..2], &mut version)?;
    if version[0] == 0xff {
        return Err(TraceparentError::ForbiddenVersion);
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err(TraceparentError::Shape);
    }
    if version[0] == 0 && v.len() != 55 {
        return Err(TraceparentError::Shape);
    }
    if version[0] != 0 && v.len() > 55 && v[55] != b'-' {
        return Err(TraceparentError::Shape);
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flags = [0u8; 1];
    decode_hex(&v[3..35], &mut trace_id)?;
    decode_hex(&v[36..52], &mut parent_id)?;
    decode_hex(&v[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return Err(TraceparentError::ZeroId);
    }
    Ok(TraceParent {
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn valid() {
        let tp = parse(VALID).expect("valid");
        assert_eq!(tp.trace_id[0], 0x0a);
        assert_eq!(tp.parent_id[7], 0x31);
        assert!(tp.sampled());
        assert!(!parse(&VALID.replace("-01", "-00"))
            .expect("valid")
            .sampled());
    }

    #[test]
    fn invalid() {
        let cases = [
            ("", TraceparentError::Shape),
            (
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
                TraceparentError::NotHex,
            ),
            (
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                TraceparentError::ForbiddenVersion,
            ),
            (
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                TraceparentError::ZeroId,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                TraceparentError::ZeroId,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
                TraceparentError::Shape,
            ),
            (
                "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                TraceparentError::Shape,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
                TraceparentError::NotHex,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(parse(v), Err(want), "{v}");
        }
    }

    #[test]
    fn future_version_may_extend() {
        let v = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-ever";
        assert!(parse(v).is_ok());
        let bad = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01xwhat";
        assert_eq!(parse(bad), Err(TraceparentError::Shape));
    }
}
