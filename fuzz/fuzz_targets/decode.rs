//! Ring-record decoding on arbitrary bytes: never panics, and a decoded
//! data event's payload is exactly what its header claims, inside the
//! record and under the capture cap (and, unless it is a segment list,
//! whose segment headers add bytes, no longer than the syscall moved).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_agent::pipeline::decode::{decode, DecodeError, Event};
use tracer_common::{DataHeader, DATA_FLAG_SEGMENTS, MAX_CAPTURE};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Event::Data(hdr, payload)) => {
            let start = std::mem::size_of::<DataHeader>();
            assert_eq!(payload.len(), hdr.captured_len as usize);
            assert!(payload.len() <= MAX_CAPTURE);
            if hdr.flags & DATA_FLAG_SEGMENTS == 0 {
                assert!(payload.len() <= hdr.total_len as usize);
            }
            assert!(start + payload.len() <= data.len());
            assert_eq!(payload, &data[start..start + payload.len()]);
        }
        Ok(_) => assert!(!data.is_empty()),
        Err(DecodeError::Empty) => assert!(data.is_empty()),
        Err(DecodeError::Short { kind, len, need }) => {
            assert_eq!(kind, data[0]);
            assert_eq!(len, data.len());
            assert!(len < need);
        }
        Err(DecodeError::UnknownKind(k)) => assert_eq!(k, data[0]),
        Err(DecodeError::BadPayloadLength { .. }) => {}
    }
});
