//! Raw ring records on disk (`--record FILE`), for replaying real captures
//! through the pipeline without a kernel (tests, bug reports).
//!
//! Format: the 8-byte magic [`MAGIC`], then per record a little-endian
//! `u64` capture time (CLOCK_MONOTONIC ns when the agent read it), a
//! little-endian `u32` length, and the record's bytes exactly as the
//! kernel wrote them.

use std::{
    fs::File,
    io::{self, BufWriter, Write as _},
    path::Path,
    sync::Arc,
};

use thiserror::Error;

use crate::telemetry::Counters;

pub const MAGIC: &[u8; 8] = b"TRCREC01";
/// Longest record accepted when reading (ring records are at most a data
/// header plus `tracer_common::MAX_CAPTURE` bytes).
pub const MAX_RECORD: usize = 1 << 20;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RecordingError {
    #[error("not a tracer recording (bad magic)")]
    BadMagic,
    #[error("record {index} is cut short at byte {offset}")]
    Truncated { index: usize, offset: usize },
    #[error("record {index} claims {len} bytes (more than {MAX_RECORD})")]
    TooLong { index: usize, len: usize },
}

/// One recorded ring record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded<'a> {
    pub time_ns: u64,
    pub bytes: &'a [u8],
}

/// Parses a whole recording.
pub fn parse(data: &[u8]) -> Result<Vec<Recorded<'_>>, RecordingError> {
    let rest = data.strip_prefix(MAGIC).ok_or(RecordingError::BadMagic)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < rest.len() {
        let index = out.len();
        let truncated = RecordingError::Truncated {
            index,
            offset: at + MAGIC.len(),
        };
        let head = rest.get(at..at + 12).ok_or(truncated.clone())?;
        let mut t = [0u8; 8];
        t.copy_from_slice(&head[..8]);
        let mut l = [0u8; 4];
        l.copy_from_slice(&head[8..12]);
        let len = u32::from_le_bytes(l) as usize;
        if len > MAX_RECORD {
            return Err(RecordingError::TooLong { index, len });
        }
        let bytes = rest.get(at + 12..at + 12 + len).ok_or(truncated)?;
        out.push(Recorded {
            time_ns: u64::from_le_bytes(t),
            bytes,
        });
        at += 12 + len;
    }
    Ok(out)
}

/// Appends ring records to a file, up to a size cap; what does not fit
/// (or fails to write) is counted, never waited for.
pub struct Recorder {
    out: BufWriter<File>,
    written: u64,
    max_bytes: u64,
    failed: bool,
    counters: Arc<Counters>,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

impl Recorder {
    pub fn create(path: &Path, max_bytes: u64, counters: Arc<Counters>) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        out.write_all(MAGIC)?;
        Ok(Self {
            out,
            written: MAGIC.len() as u64,
            max_bytes,
            failed: false,
            counters,
        })
    }

    pub fn record(&mut self, raw: &[u8]) {
        let size = 12 + raw.len() as u64;
        if self.failed || self.written + size > self.max_bytes {
            Counters::inc(&self.counters.record_dropped);
            return;
        }
        let res = self
            .out
            .write_all(&monotonic_ns().to_le_bytes())
            .and_then(|()| self.out.write_all(&(raw.len() as u32).to_le_bytes()))
            .and_then(|()| self.out.write_all(raw));
        match res {
            Ok(()) => self.written += size,
            Err(e) => {
                self.failed = true;
                Counters::inc(&self.counters.record_dropped);
                tracing::warn!("recording stopped: {e}");
            }
        }
    }

    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            if !self.failed {
                tracing::warn!("recording stopped: {e}");
            }
            self.failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_files() {
        let dir = std::env::temp_dir().join(format!("tracer-rec-{}", std::process::id()));
        let c = Arc::new(Counters::default());
        let mut r = Recorder::create(&dir, 1 << 20, c.clone()).expect("create");
        r.record(b"abc");
        r.record(b"");
        r.record(&[7; 100]);
        r.flush();
        let data = std::fs::read(&dir).expect("read");
        let _ = std::fs::remove_file(&dir);
        let recs = parse(&data).expect("parse");
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].bytes, b"abc");
        assert!(recs[0].time_ns <= recs[2].time_ns);
        assert_eq!(recs[2].bytes.len(), 100);
        // Cut anywhere: an error naming the record, never a panic.
        for cut in MAGIC.len() + 1..data.len() {
            if let Err(e) = parse(&data[..cut]) {
                assert!(matches!(e, RecordingError::Truncated { .. }), "{e}");
            }
        }
        assert_eq!(parse(b"nope"), Err(RecordingError::BadMagic));
        let mut long = MAGIC.to_vec();
        long.extend_from_slice(&0u64.to_le_bytes());
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&long), Err(RecordingError::TooLong { .. })));
    }

    #[test]
    fn size_cap_is_counted() {
        let path = std::env::temp_dir().join(format!("tracer-cap-{}", std::process::id()));
        let c = Arc::new(Counters::default());
        let mut r = Recorder::create(&path, 8 + 12 + 10, c.clone()).expect("create");
        r.record(&[1; 10]);
        r.record(&[1; 10]);
        r.flush();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            c.record_dropped.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
