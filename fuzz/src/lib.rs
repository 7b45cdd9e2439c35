//! Helpers shared by the fuzz targets: a cursor over the fuzz input that
//! never fails (it yields zeros once the input is used up, so every input
//! decodes to some deterministic sequence of operations), the raw bytes of
//! the wire structs, and HTTP fragments that structured targets splice into
//! payloads so that the parsers get past their first line often.

/// Reads the fuzz input front to back.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte, 0 once the input is used up.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// `N` bytes, zero-padded at the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }
}

/// The bytes of a plain-integer `repr(C)` wire struct, as the kernel
/// writes it into the ring.
pub fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: `T` is one of tracer-common's wire types: `repr(C)`, integer
    // and byte-array fields only, with every padding byte an explicit
    // field, so all `size_of::<T>()` bytes are initialised; the slice lives
    // only while `v` is borrowed and is copied out at once.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// HTTP/1 pieces that structured targets splice into payloads.
pub const HTTP_FRAGMENTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"POST /p?q=1 HTTP/1.1\r\n",
    b"HEAD /h HTTP/1.0\r\n",
    b"CONNECT h:443 HTTP/1.1\r\n",
    b"PUT /u HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"HTTP/1.1 100 Continue\r\n",
    b"HTTP/1.0 204 No Content\r\n",
    b"HTTP/1.1 304 Not Modified\r\n",
    b"HTTP/1.1 500 Oops\r\n",
    b"Host: example:8080\r\n",
    b"User-Agent: fuzz/1\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 18446744073709551615\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
    b"tracestate: congo=t61rcWkgMzE\r\n",
    b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n",
    b"x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124\r\nx-b3-spanid: a2fb4a1d1a96d312\r\n",
    b"uber-trace-id: 4bf92f3577b34da6:00f067aa0ba902b7:0:1\r\n",
    b"x-custom: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7\r\n",
    b"\r\n",
    b"5\r\nhello\r\n",
    b"5;ext=1\r\nhello\r\n",
    b"0\r\n\r\n",
    b"0\r\nX-Trailer: 1\r\n\r\n",
    b"hello",
];

/// A payload: `1..=8` pieces, each an HTTP fragment or raw input bytes.
pub fn payload(input: &mut Input<'_>, out: &mut Vec<u8>) {
    let pieces = (input.u8() & 7) + 1;
    for _ in 0..pieces {
        let sel = input.u8();
        if sel & 0x80 != 0 {
            let f = HTTP_FRAGMENTS[usize::from(sel & 0x7f) % HTTP_FRAGMENTS.len()];
            out.extend_from_slice(f);
        } else {
            out.extend_from_slice(input.take(usize::from(sel)));
        }
    }
}
