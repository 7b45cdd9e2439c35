//! Decoding of ring-buffer records. The kernel is trusted to write the
//! layouts in `tracer-common`, but every record is length-checked before a
//! field is read, and an unknown kind is an error, not a panic.

use thiserror::Error;
use tracer_common::{
    ConnCloseEvent, ConnOpenEvent, DataHeader, GoTaskEvent, ProcEvent, TlsSeenEvent, TraceCtxEvent,
    DATA_FLAG_SEGMENTS, EVENT_CONN_CLOSE, EVENT_CONN_OPEN, EVENT_DATA, EVENT_DLOPEN, EVENT_EXEC,
    EVENT_GO_TASK, EVENT_INJECTED, EVENT_PROC_EXIT, EVENT_SERVER_CTX, EVENT_TLS_SEEN, MAX_CAPTURE,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("record of kind {kind} is {len} bytes, needs {need}")]
    Short { kind: u8, len: usize, need: usize },
    #[error("data event claims {claimed} payload bytes, record holds {have}")]
    BadPayloadLength { claimed: usize, have: usize },
}

pub enum Event<'a> {
    Open(ConnOpenEvent),
    Data(DataHeader, &'a [u8]),
    Close(ConnCloseEvent),
    Exit(ProcEvent),
    /// Ids the kernel chose for a SERVER span ([`EVENT_SERVER_CTX`]) or
    /// injected into a CLIENT request ([`EVENT_INJECTED`]).
    Context(TraceCtxEvent),
    /// A process notice: exec or dlopen.
    Proc(ProcEvent),
    /// A TLS handshake on a socket of this process.
    TlsSeen(TlsSeenEvent),
    /// A Go goroutine's request context met a connection.
    GoTask(GoTaskEvent),
}

/// Reads a `T` from the start of `buf` after checking its length.
fn read<T: Copy>(buf: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            kind: buf.first().copied().unwrap_or(0),
            len: buf.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is one of the plain-integer repr(C)
    // wire types for which every bit pattern is valid; the read is unaligned.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

pub fn decode(buf: &[u8]) -> Result<Event<'_>, DecodeError> {
    let kind = *buf.first().ok_or(DecodeError::Empty)?;
    match kind {
        EVENT_CONN_OPEN => Ok(Event::Open(read(buf)?)),
        EVENT_DATA => {
            let hdr: DataHeader = read(buf)?;
            let start = std::mem::size_of::<DataHeader>();
            let claimed = hdr.captured_len as usize;
            let have = buf.len() - start;
            // A segmented payload carries 8-byte segment headers, so it may
            // be longer than the bytes the syscall moved; a plain one not.
            let segmented = hdr.flags & DATA_FLAG_SEGMENTS != 0;
            if claimed > have
                || claimed > MAX_CAPTURE
                || (!segmented && claimed > hdr.total_len as usize)
            {
                return Err(DecodeError::BadPayloadLength { claimed, have });
            }
            Ok(Event::Data(hdr, &buf[start..start + claimed]))
        }
        EVENT_CONN_CLOSE => Ok(Event::Close(read(buf)?)),
        EVENT_PROC_EXIT => Ok(Event::Exit(read(buf)?)),
        EVENT_SERVER_CTX | EVENT_INJECTED => Ok(Event::Context(read(buf)?)),
        EVENT_EXEC | EVENT_DLOPEN => Ok(Event::Proc(read(buf)?)),
        EVENT_TLS_SEEN => Ok(Event::TlsSeen(read(buf)?)),
        EVENT_GO_TASK => Ok(Event::GoTask(read(buf)?)),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn rejects_short_unknown_and_lying_records() {
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(&[99, 0, 0]),
            Err(DecodeError::UnknownKind(99))
        ));
        assert!(matches!(
            decode(&[EVENT_CONN_OPEN, 0, 0]),
            Err(DecodeError::Short { .. })
        ));
        let hdr = DataHeader {
            kind: EVENT_DATA,
            captured_len: 10,
            total_len: 10,
            ..Default::default()
        };
        let mut buf = bytes_of(&hdr);
        buf.extend_from_slice(b"12345");
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::BadPayloadLength { .. })
        ));
        buf.extend_from_slice(b"67890");
        match decode(&buf) {
            Ok(Event::Data(h, p)) => {
                assert_eq!(h.captured_len, 10);
                assert_eq!(p, b"1234567890");
            }
            _ => panic!("valid data event rejected"),
        }
    }

    #[test]
    fn segment_lists_may_be_longer_than_the_syscall_plain_payloads_not() {
        // A 9-byte SETTINGS ack walked by the kernel: an 8-byte segment
        // header and the 9 bytes, 17 in all, for 9 moved.
        let mut hdr = DataHeader {
            kind: EVENT_DATA,
            captured_len: 17,
            total_len: 9,
            ..Default::default()
        };
        let mut buf = bytes_of(&hdr);
        buf.extend_from_slice(&[0; 17]);
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::BadPayloadLength { .. })
        ));
        hdr.flags = tracer_common::DATA_FLAG_SEGMENTS;
        let mut buf = bytes_of(&hdr);
        buf.extend_from_slice(&[0; 17]);
        assert!(matches!(decode(&buf), Ok(Event::Data(_, p)) if p.len() == 17));
    }

    #[test]
    fn context_events_decode_and_are_length_checked() {
        let ev = TraceCtxEvent {
            kind: EVENT_INJECTED,
            flags: 1,
            tid: 9,
            trace_id: [3; 16],
            ..Default::default()
        };
        let buf = bytes_of(&ev);
        match decode(&buf) {
            Ok(Event::Context(got)) => assert_eq!(got, ev),
            _ => panic!("context event rejected"),
        }
        assert!(matches!(decode(&buf[..20]), Err(DecodeError::Short { .. })));
        let server = TraceCtxEvent {
            kind: EVENT_SERVER_CTX,
            ..ev
        };
        assert!(matches!(decode(&bytes_of(&server)), Ok(Event::Context(_))));
    }
}
