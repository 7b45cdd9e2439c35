//! HTTP/2 framing (RFC 9113 §4, §6) of one direction's byte stream, across
//! syscalls and gaps.
//!
//! DATA payloads are never held: the kernel sends them as length-only gaps
//! and the reader skips them by the frame header's length. Every other
//! frame is held whole (up to [`MAX_FRAME_HELD`]). A gap anywhere but in a
//! DATA payload loses the framing; the reader then waits for a syscall
//! whose bytes parse as a plausible chain of frames.

/// The connection preface a client sends first (§3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

pub const HEADER_LEN: usize = 9;

/// Largest non-DATA frame payload held. Header blocks beyond it are
/// dropped (and counted) rather than buffered.
pub const MAX_FRAME_HELD: usize = 64 * 1024;

/// Largest frame size a peer can negotiate (§6.5.2, 2^24 - 1).
const MAX_FRAME_LEN: u32 = (1 << 24) - 1;

/// A frame header (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Could this be a real frame header? Used to find the framing again
    /// after a loss, and by the kernel's classifier in spirit: known type,
    /// only that type's flags, the stream id rule and fixed lengths.
    pub fn plausible(&self) -> bool {
        let on_conn = self.stream == 0;
        match self.kind {
            DATA => !on_conn && self.flags & !(FLAG_END_STREAM | FLAG_PADDED) == 0,
            HEADERS => {
                !on_conn
                    && self.len > 0
                    && (self.len as usize) <= MAX_FRAME_HELD
                    && self.flags
                        & !(FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY)
                        == 0
            }
            PRIORITY => !on_conn && self.len == 5 && self.flags == 0,
            RST_STREAM => !on_conn && self.len == 4 && self.flags == 0,
            SETTINGS => {
                on_conn
                    && self.len.is_multiple_of(6)
                    && self.flags & !FLAG_ACK == 0
                    && (self.flags == 0 || self.len == 0)
                    && self.len <= 6 * 16
            }
            PUSH_PROMISE => !on_conn && self.len >= 4 && (self.len as usize) <= MAX_FRAME_HELD,
            PING => on_conn && self.len == 8 && self.flags & !FLAG_ACK == 0,
            GOAWAY => on_conn && self.len >= 8 && self.len <= 8 + 1024 && self.flags == 0,
            WINDOW_UPDATE => self.len == 4 && self.flags == 0,
            CONTINUATION => {
                !on_conn && self.flags & !FLAG_END_HEADERS == 0 && self.len <= MAX_FRAME_LEN
            }
            _ => false,
        }
    }
}

/// What the reader found in one call.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A non-DATA frame with its whole payload.
    Frame(FrameHeader, &'a [u8]),
    /// A DATA frame's header (its payload is skipped).
    Data(FrameHeader),
    /// A non-DATA frame too large to hold, or cut by a gap: skipped.
    Dropped(FrameHeader),
    /// The framing was lost (a gap outside a DATA payload): frames in
    /// between were missed.
    Lost,
    /// A client preface: the connection starts here (fresh HPACK tables).
    Preface,
}

#[derive(Debug)]
enum State {
    /// At the stream's start: the client preface may come first.
    Start,
    /// Reading a frame header (`have` bytes of it so far).
    Header { buf: [u8; HEADER_LEN], have: usize },
    /// Holding a non-DATA frame's payload.
    Payload { hdr: FrameHeader },
    /// Skipping `left` payload bytes (DATA, or a frame too large).
    Skip { left: u64 },
    /// Framing lost: waiting for a syscall that starts with frames.
    Lost,
}

/// One direction's framing.
#[derive(Debug)]
pub struct FrameReader {
    state: State,
    held: Vec<u8>,
    preface_seen: usize,
}

impl FrameReader {
    /// `at_start`: the stream is read from its first byte (else the
    /// reader waits for a syscall starting with a preface or frames).
    pub fn new(at_start: bool) -> Self {
        Self {
            state: if at_start { State::Start } else { State::Lost },
            held: Vec::new(),
            preface_seen: 0,
        }
    }

    /// Bytes held for a partial frame.
    pub fn buffered(&self) -> usize {
        self.held.capacity()
    }

    /// Events were lost: nothing in flight can be trusted.
    pub fn lose(&mut self) {
        self.state = State::Lost;
        self.held = Vec::new();
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// Feeds one piece of a syscall: `bytes`, then `gap` bytes not
    /// captured; `syscall_start`: `bytes` begin a syscall's data (where
    /// a lost reader may find the framing again). Calls `f` per item.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        gap: u64,
        syscall_start: bool,
        f: &mut dyn FnMut(Item<'_>),
    ) {
        let mut b = bytes;
        if matches!(self.state, State::Lost) {
            if syscall_start
                && !b.is_empty()
                && PREFACE.starts_with(&b[..b.len().min(PREFACE.len())])
            {
                self.state = State::Start;
            } else if syscall_start && starts_with_frames(b) {
                self.state = header_state();
            } else {
                return;
            }
        }
        while !b.is_empty() {
            b = self.step(b, f);
        }
        if gap > 0 {
            self.gap(gap, f);
        }
    }

    fn gap(&mut self, gap: u64, f: &mut dyn FnMut(Item<'_>)) {
        match &mut self.state {
            State::Skip { left } if gap <= *left => {
                *left -= gap;
                if *left == 0 {
                    self.state = header_state();
                }
            }
            State::Lost => {}
            State::Payload { hdr } => {
                f(Item::Dropped(*hdr));
                f(Item::Lost);
                self.lose();
            }
            _ => {
                f(Item::Lost);
                self.lose();
            }
        }
    }

    /// Consumes a prefix of `b`; returns the rest.
    fn step<'b>(&mut self, b: &'b [u8], f: &mut dyn FnMut(Item<'_>)) -> &'b [u8] {
        match &mut self.state {
            State::Start => {
                // Compare against the preface as far as it goes.
                let want = &PREFACE[self.preface_seen..];
                let n = want.len().min(b.len());
                if b[..n] == want[..n] {
                    self.preface_seen += n;
                    if self.preface_seen == PREFACE.len() {
                        self.preface_seen = 0;
                        self.state = header_state();
                        f(Item::Preface);
                    }
                    &b[n..]
                } else if self.preface_seen == 0 && b[0] != PREFACE[0] {
                    // No preface (the server's direction): frames. (A
                    // frame cannot start with 'P': that is a 5 MiB length.)
                    self.state = header_state();
                    b
                } else {
                    f(Item::Lost);
                    self.lose();
                    &[]
                }
            }
            State::Header { buf, have } => {
                let n = (HEADER_LEN - *have).min(b.len());
                buf[*have..*have + n].copy_from_slice(&b[..n]);
                *have += n;
                if *have < HEADER_LEN {
                    return &b[n..];
                }
                let hdr = FrameHeader::parse(buf);
                self.start_frame(hdr, f);
                &b[n..]
            }
            State::Payload { hdr } => {
                let hdr = *hdr;
                let need = hdr.len as usize - self.held.len();
                let n = need.min(b.len());
                self.held.extend_from_slice(&b[..n]);
                if self.held.len() == hdr.len as usize {
                    f(Item::Frame(hdr, &self.held));
                    self.held.clear();
                    if self.held.capacity() > 16 * 1024 {
                        self.held = Vec::new();
                    }
                    self.state = header_state();
                }
                &b[n..]
            }
            State::Skip { left } => {
                let n = (*left).min(b.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.state = header_state();
                }
                &b[n as usize..]
            }
            State::Lost => &[],
        }
    }

    fn start_frame(&mut self, hdr: FrameHeader, f: &mut dyn FnMut(Item<'_>)) {
        if hdr.kind == DATA {
            f(Item::Data(hdr));
            self.state = skip_or_header(hdr.len);
        } else if hdr.len as usize > MAX_FRAME_HELD {
            f(Item::Dropped(hdr));
            self.state = skip_or_header(hdr.len);
        } else if hdr.len == 0 {
            f(Item::Frame(hdr, &[]));
            self.state = header_state();
        } else {
            self.held.clear();
            // Exactly: growing piece by piece could hold twice the cap.
            self.held.reserve_exact(hdr.len as usize);
            self.state = State::Payload { hdr };
        }
    }
}

fn header_state() -> State {
    State::Header {
        buf: [0; HEADER_LEN],
        have: 0,
    }
}

fn skip_or_header(len: u32) -> State {
    if len == 0 {
        header_state()
    } else {
        State::Skip {
            left: u64::from(len),
        }
    }
}

/// Do these bytes (a syscall's start) parse as whole frames, or frames
/// and the start of one? At least one full plausible header is required.
pub fn starts_with_frames(b: &[u8]) -> bool {
    let mut pos = 0usize;
    let mut headers = 0;
    while pos + HEADER_LEN <= b.len() {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&b[pos..pos + HEADER_LEN]);
        let hdr = FrameHeader::parse(&h);
        if !hdr.plausible() {
            return false;
        }
        headers += 1;
        pos += HEADER_LEN + hdr.len as usize;
        if headers >= 8 {
            break;
        }
    }
    headers > 0
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A frame's bytes.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Frame(u8, u32, Vec<u8>),
        Data(u32, u32),
        Dropped(u8),
        Lost,
        Preface,
    }

    fn collect(r: &mut FrameReader, pieces: &[(&[u8], u64, bool)]) -> Vec<Seen> {
        let mut out = Vec::new();
        for (b, gap, start) in pieces {
            r.feed(b, *gap, *start, &mut |it| {
                out.push(match it {
                    Item::Frame(h, p) => Seen::Frame(h.kind, h.stream, p.to_vec()),
                    Item::Data(h) => Seen::Data(h.stream, h.len),
                    Item::Dropped(h) => Seen::Dropped(h.kind),
                    Item::Lost => Seen::Lost,
                    Item::Preface => Seen::Preface,
                })
            });
        }
        out
    }

    fn sample() -> (Vec<u8>, Vec<Seen>) {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
        wire.extend(frame(HEADERS, FLAG_END_HEADERS, 1, b"\x82\x84"));
        wire.extend(frame(DATA, FLAG_END_STREAM, 1, b"hello"));
        wire.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        let want = vec![
            Seen::Preface,
            Seen::Frame(SETTINGS, 0, vec![0, 1, 0, 0, 0x10, 0]),
            Seen::Frame(HEADERS, 1, b"\x82\x84".to_vec()),
            Seen::Data(1, 5),
            Seen::Frame(RST_STREAM, 3, vec![0, 0, 0, 8]),
        ];
        (wire, want)
    }

    #[test]
    fn split_at_every_offset() {
        let (wire, want) = sample();
        for cut in 0..=wire.len() {
            let mut r = FrameReader::new(true);
            let got = collect(&mut r, &[(&wire[..cut], 0, true), (&wire[cut..], 0, true)]);
            assert_eq!(got, want, "cut at {cut}");
        }
        // And one byte at a time.
        let mut r = FrameReader::new(true);
        let pieces: Vec<(&[u8], u64, bool)> = wire.chunks(1).map(|c| (c, 0u64, false)).collect();
        assert_eq!(collect(&mut r, &pieces), want);
    }

    #[test]
    fn data_payload_may_be_a_gap() {
        let mut wire = frame(DATA, 0, 1, &[]);
        wire[2] = 200; // 200-byte DATA payload, not captured
        let trailers = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, b"\x88");
        let mut r = FrameReader::new(false);
        let got = collect(
            &mut r,
            &[(&wire, 150, true), (&[], 50, false), (&trailers, 0, false)],
        );
        assert_eq!(
            got,
            vec![
                Seen::Data(1, 200),
                Seen::Frame(HEADERS, 1, b"\x88".to_vec())
            ]
        );
    }

    #[test]
    fn gap_outside_data_loses_and_a_frame_start_resyncs() {
        let h = frame(HEADERS, FLAG_END_HEADERS, 1, b"\x82\x84\x86");
        let mut r = FrameReader::new(true);
        let got = collect(
            &mut r,
            &[
                (&h[..5], 0, true),
                (&[], 7, false),
                (b"garbage that is not frames", 0, true),
                (&h, 0, true),
            ],
        );
        assert_eq!(
            got,
            vec![
                Seen::Lost,
                Seen::Frame(HEADERS, 1, b"\x82\x84\x86".to_vec())
            ]
        );
    }

    #[test]
    fn oversized_frames_are_dropped_not_held() {
        let mut big = frame(HEADERS, 0, 1, &[]);
        let len = MAX_FRAME_HELD as u32 + 1;
        big[..3].copy_from_slice(&len.to_be_bytes()[1..]);
        let mut r = FrameReader::new(true);
        let got = collect(&mut r, &[(&big, u64::from(len), true)]);
        assert_eq!(got, vec![Seen::Dropped(HEADERS)]);
        assert!(r.buffered() == 0);
        let ping = frame(PING, 0, 0, &[0; 8]);
        assert_eq!(collect(&mut r, &[(&ping, 0, false)]).len(), 1);
    }

    #[test]
    fn a_frame_in_pieces_holds_no_more_than_its_length() {
        let payload = vec![0x82; MAX_FRAME_HELD];
        let f = frame(HEADERS, FLAG_END_HEADERS, 1, &payload);
        let mut r = FrameReader::new(false);
        // 40000 bytes then 25000: amortised growth would reserve 80000.
        assert!(collect(&mut r, &[(&f[..HEADER_LEN + 40_000], 0, true)]).is_empty());
        assert!(collect(&mut r, &[(&f[HEADER_LEN + 40_000..f.len() - 1], 0, false)]).is_empty());
        assert!(r.buffered() <= MAX_FRAME_HELD, "{}", r.buffered());
        let got = collect(&mut r, &[(&f[f.len() - 1..], 0, false)]);
        assert_eq!(got, vec![Seen::Frame(HEADERS, 1, payload)]);
        // A large frame's capacity is not kept.
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn wrong_preface_is_lost() {
        let mut r = FrameReader::new(true);
        let got = collect(&mut r, &[(b"PRI * HTTP/9", 0, true)]);
        assert_eq!(got, vec![Seen::Lost]);
    }
}
