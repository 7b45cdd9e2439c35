//! A data event's payload as pieces of the syscall's data: the captured
//! bytes and the uncaptured gap after each. A plain event is one piece;
//! a segmented one (`DATA_FLAG_SEGMENTS`, the kernel's HTTP/2 frame walk)
//! is a list checked here, since the kernel's layout is input like any
//! other: a segment out of order or out of bounds ends the list, and the
//! rest of the syscall is a gap.

use tracer_common::{DataHeader, SegmentHeader, DATA_FLAG_SEGMENTS, SEG_FRAME_START};

/// One piece: bytes, then `gap` bytes not captured.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    pub bytes: &'a [u8],
    pub gap: u64,
    /// The kernel saw a frame header start at `bytes` (a point where a
    /// parser that lost its framing may pick it up again).
    pub frame_start: bool,
}

const SEG_LEN: usize = core::mem::size_of::<SegmentHeader>();

fn segment(payload: &[u8], at: usize) -> Option<(SegmentHeader, &[u8])> {
    let h = payload.get(at..at + SEG_LEN)?;
    let offset = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
    let len = u16::from_ne_bytes([h[4], h[5]]);
    let flags = u16::from_ne_bytes([h[6], h[7]]);
    let bytes = payload.get(at + SEG_LEN..at + SEG_LEN + usize::from(len))?;
    Some((SegmentHeader { offset, len, flags }, bytes))
}

/// Calls `f` for each piece in order; returns false if the segment list
/// was malformed (what followed the fault is reported as a gap).
pub fn for_each_piece(hdr: &DataHeader, payload: &[u8], mut f: impl FnMut(Piece<'_>)) -> bool {
    let total = u64::from(hdr.total_len);
    if hdr.flags & DATA_FLAG_SEGMENTS == 0 {
        f(Piece {
            bytes: payload,
            gap: total.saturating_sub(payload.len() as u64),
            frame_start: false,
        });
        return true;
    }
    // `pos`: bytes of the syscall accounted for; `held`: the piece whose
    // gap is not known until the next segment's offset is.
    let mut pos = 0u64;
    let mut at = 0usize;
    let mut held: Option<(&[u8], bool)> = None;
    let mut ok = true;
    while at < payload.len() {
        let Some((seg, bytes)) = segment(payload, at) else {
            ok = false;
            break;
        };
        let start = u64::from(seg.offset);
        let end = start + u64::from(seg.len);
        if start < pos || end > total {
            ok = false;
            break;
        }
        let gap = start - pos;
        match held.take() {
            Some((prev, frame_start)) => f(Piece {
                bytes: prev,
                gap,
                frame_start,
            }),
            None if gap > 0 => f(Piece {
                bytes: &[],
                gap,
                frame_start: false,
            }),
            None => {}
        }
        held = Some((bytes, seg.flags & SEG_FRAME_START != 0));
        pos = end;
        at += SEG_LEN + bytes.len();
    }
    let rest = total - pos;
    match held {
        Some((prev, frame_start)) => f(Piece {
            bytes: prev,
            gap: rest,
            frame_start,
        }),
        None if rest > 0 => f(Piece {
            bytes: &[],
            gap: rest,
            frame_start: false,
        }),
        None => {}
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u32, bytes: &[u8]) -> Vec<u8> {
        let mut v = offset.to_ne_bytes().to_vec();
        v.extend_from_slice(&(bytes.len() as u16).to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(bytes);
        v
    }

    fn pieces(total: u32, payload: &[u8]) -> (Vec<(Vec<u8>, u64)>, bool) {
        let hdr = DataHeader {
            flags: DATA_FLAG_SEGMENTS,
            total_len: total,
            captured_len: payload.len() as u32,
            ..Default::default()
        };
        let mut out = Vec::new();
        let ok = for_each_piece(&hdr, payload, |p| out.push((p.bytes.to_vec(), p.gap)));
        (out, ok)
    }

    #[test]
    fn segments_and_gaps() {
        // 9-byte DATA header, 100-byte payload skipped, 9-byte HEADERS
        // frame header and 3 bytes; the syscall moved 130 bytes.
        let mut p = seg(0, b"123456789");
        p.extend(seg(109, b"abcdefghijkl"));
        let (out, ok) = pieces(130, &p);
        assert!(ok);
        assert_eq!(
            out,
            vec![(b"123456789".to_vec(), 100), (b"abcdefghijkl".to_vec(), 9)]
        );
    }

    #[test]
    fn leading_gap_and_empty() {
        let (out, _) = pieces(50, &seg(20, b"xy"));
        assert_eq!(out, vec![(vec![], 20), (b"xy".to_vec(), 28)]);
        let (out, ok) = pieces(7, &[]);
        assert!(ok);
        assert_eq!(out, vec![(vec![], 7)]);
    }

    #[test]
    fn hostile_lists_end_in_a_gap() {
        let mut p = seg(10, b"ab");
        p.extend(seg(5, b"cd")); // goes backwards
        let (out, ok) = pieces(40, &p);
        assert!(!ok);
        assert_eq!(out, vec![(vec![], 10), (b"ab".to_vec(), 28)]);
        let (out, ok) = pieces(4, &seg(3, b"abc")); // past the end
        assert!(!ok);
        assert_eq!(out, vec![(vec![], 4)]);
        let mut p = seg(0, b"ab");
        p.extend_from_slice(&[1, 2, 3]); // cut header
        let (out, ok) = pieces(9, &p);
        assert!(!ok);
        assert_eq!(out, vec![(b"ab".to_vec(), 7)]);
    }
}
