//! HPACK (RFC 7541) header-block decoding that tolerates joining a
//! connection in the middle.
//!
//! Maintained decoders (`loona-hpack`, `h2`'s) fail a block on an index
//! they do not know, which is every block after a mid-connection join.
//! This one reports such fields as unknown and keeps decoding, so the
//! fields it does know (static entries, literals, entries inserted since
//! the join) stay exact and the table resynchronises by itself. Huffman
//! strings (§5.2, Appendix B) are decoded by `loona-hpack`.

pub mod table;

use std::cell::RefCell;

use loona_hpack::huffman::HuffmanDecoder;
use thiserror::Error;

pub use table::{DynamicTable, Entry, Lookup};

/// Why a block could not be decoded to its end. Fields before the error
/// were reported; the table is then in doubt and forgotten.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer does not fit in 32 bits")]
    IntegerOverflow,
    #[error("invalid Huffman string")]
    Huffman,
    #[error("string of {0} bytes is longer than the block allows")]
    StringTooLong(usize),
    #[error("dynamic table size update after the first field")]
    LateSizeUpdate,
}

/// A decoded field; `None` where the table entry is unknown.
#[derive(Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// What decoding a block found, besides its fields.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockReport {
    /// Fields whose name was unknown (an index from before the join).
    pub unknown: u32,
    /// A size update asked for more than the cap (and was capped).
    pub capped: bool,
    /// The table was fully known after the block.
    pub synced: bool,
}

/// Scratch string capacity kept between blocks.
const SCRATCH_KEEP: usize = 4096;

/// Longest string literal decoded; a header block is capped well below.
const MAX_STRING: usize = 64 * 1024;

thread_local! {
    static HUFFMAN: RefCell<HuffmanDecoder> = RefCell::new(HuffmanDecoder::new());
}

/// §5.1: an integer with an `n`-bit prefix at `buf[*pos]`.
fn integer(buf: &[u8], pos: &mut usize, n: u8) -> Result<u32, HpackError> {
    let first = *buf.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mask = ((1u16 << n) - 1) as u8;
    let mut v = u64::from(first & mask);
    if v < u64::from(mask) {
        return Ok(v as u32);
    }
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        v += u64::from(b & 0x7f) << shift;
        if v > u64::from(u32::MAX) {
            return Err(HpackError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            return Ok(v as u32);
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// §5.2: skips a string literal without decoding it; returns a lower
/// bound of its decoded length (a Huffman code is at most 30 bits, so
/// `n` bytes decode to at least `8n / 30`; counting the raw length
/// instead would overstate it), for the table's size accounting, where
/// an underestimate only makes this table keep an entry longer than the
/// encoder does.
fn skip_string(buf: &[u8], pos: &mut usize) -> Result<usize, HpackError> {
    let huffman = buf.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(buf, pos, 7)? as usize;
    if len > MAX_STRING {
        return Err(HpackError::StringTooLong(len));
    }
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    if end > buf.len() {
        return Err(HpackError::Truncated);
    }
    *pos = end;
    Ok(if huffman { len * 8 / 30 } else { len })
}

/// §5.2: a string literal, decoded into `out` (cleared first).
fn string(buf: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = buf.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(buf, pos, 7)? as usize;
    if len > MAX_STRING {
        return Err(HpackError::StringTooLong(len));
    }
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = buf.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    out.clear();
    if huffman {
        let decoded = HUFFMAN
            .with(|h| h.borrow_mut().decode(raw))
            .map_err(|_| HpackError::Huffman)?;
        out.extend_from_slice(&decoded);
    } else {
        out.extend_from_slice(raw);
    }
    Ok(())
}

/// One direction's decoder: its dynamic table.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    name: Vec<u8>,
    value: Vec<u8>,
}

/// The protocol's initial table size (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

impl Decoder {
    /// `cap`: most bytes this table holds whatever the peer asks;
    /// `joined`: the connection was already running.
    pub fn new(cap: usize, joined: bool) -> Self {
        Self {
            table: DynamicTable::new(DEFAULT_TABLE_SIZE, cap, joined),
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    pub fn table(&self) -> &DynamicTable {
        &self.table
    }

    /// A block was missed or cut: the table can no longer be trusted.
    pub fn forget(&mut self) {
        self.table.forget();
    }

    /// Decodes one whole header block, calling `f` for each field.
    pub fn decode(
        &mut self,
        block: &[u8],
        f: impl FnMut(Field<'_>),
    ) -> Result<BlockReport, HpackError> {
        self.decode_wanted(block, &|_| true, f)
    }

    /// Like [`Decoder::decode`], but the values of fields whose name
    /// `want` refuses are not decoded (Huffman decoding is most of the
    /// cost, and spans need a handful of fields): `f` gets them with no
    /// value, and the table keeps their names only.
    pub fn decode_wanted(
        &mut self,
        block: &[u8],
        want: &dyn Fn(&[u8]) -> bool,
        mut f: impl FnMut(Field<'_>),
    ) -> Result<BlockReport, HpackError> {
        let mut report = BlockReport::default();
        let r = self.decode_fields(block, want, &mut f, &mut report);
        // The scratch strings can reach 64 KiB on one hostile field; do
        // not keep that per connection and direction.
        for v in [&mut self.name, &mut self.value] {
            if v.capacity() > SCRATCH_KEEP {
                *v = Vec::new();
            }
        }
        if r.is_err() {
            // Inserts after the error were not seen.
            self.table.forget();
        }
        report.synced = self.table.synced();
        r.map(|()| report)
    }

    fn decode_fields(
        &mut self,
        block: &[u8],
        want: &dyn Fn(&[u8]) -> bool,
        f: &mut impl FnMut(Field<'_>),
        report: &mut BlockReport,
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields = 0u32;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                // §6.1 indexed field.
                let i = integer(block, &mut pos, 7)? as usize;
                match self.table.get(i) {
                    Lookup::Known { name, value } => f(Field {
                        name: Some(name),
                        value: Some(value),
                    }),
                    Lookup::Partial(e) => {
                        if e.name.is_none() {
                            report.unknown += 1;
                        }
                        f(Field {
                            name: e.name.as_deref(),
                            value: e.value.as_deref(),
                        })
                    }
                    Lookup::Unknown => {
                        report.unknown += 1;
                        f(Field {
                            name: None,
                            value: None,
                        })
                    }
                }
                fields += 1;
                continue;
            }
            if b & 0xe0 == 0x20 {
                // §6.3 dynamic table size update: only before the fields.
                if fields > 0 {
                    return Err(HpackError::LateSizeUpdate);
                }
                let max = integer(block, &mut pos, 5)? as usize;
                report.capped |= self.table.set_max(max);
                continue;
            }
            // §6.2 literals: with incremental indexing (01), without
            // indexing (0000) or never indexed (0001).
            let (prefix, index) = if b & 0xc0 == 0x40 {
                (6, true)
            } else {
                (4, false)
            };
            let name_index = integer(block, &mut pos, prefix)? as usize;
            let name_known = if name_index == 0 {
                string(block, &mut pos, &mut self.name)?;
                true
            } else {
                match self.table.get(name_index) {
                    Lookup::Known { name, .. } => {
                        self.name.clear();
                        self.name.extend_from_slice(name);
                        true
                    }
                    Lookup::Partial(Entry { name: Some(n), .. }) => {
                        self.name.clear();
                        self.name.extend_from_slice(n);
                        true
                    }
                    Lookup::Partial(_) | Lookup::Unknown => false,
                }
            };
            if name_known && !want(&self.name) {
                // Nobody reads this value: skip it undecoded. A table
                // entry keeps the name and a lower bound of its size.
                let len = skip_string(block, &mut pos)?;
                f(Field {
                    name: Some(&self.name[..]),
                    value: None,
                });
                if index {
                    self.table.insert_sized(
                        Entry {
                            name: Some(self.name.as_slice().into()),
                            value: None,
                        },
                        len,
                    );
                }
                fields += 1;
                continue;
            }
            string(block, &mut pos, &mut self.value)?;
            if !name_known {
                report.unknown += 1;
            }
            f(Field {
                name: name_known.then_some(&self.name[..]),
                value: Some(&self.value),
            });
            if index {
                self.table.insert(Entry {
                    name: name_known.then(|| self.name.as_slice().into()),
                    value: Some(self.value.as_slice().into()),
                });
            }
            fields += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn decode(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(&hex(block), |f| {
            out.push((
                String::from_utf8_lossy(f.name.unwrap_or(b"?")).into_owned(),
                String::from_utf8_lossy(f.value.unwrap_or(b"?")).into_owned(),
            ))
        })
        .expect("decodes");
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn rfc_c1_integers() {
        let mut p = 0;
        assert_eq!(integer(&[0b0000_1010], &mut p, 5), Ok(10));
        let mut p = 0;
        assert_eq!(integer(&[0b0001_1111, 0x9a, 0x0a], &mut p, 5), Ok(1337));
        assert_eq!(p, 3);
        let mut p = 0;
        assert_eq!(integer(&[42], &mut p, 8), Ok(42));
        let mut p = 0;
        assert_eq!(
            integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut p, 5),
            Err(HpackError::IntegerOverflow)
        );
        let mut p = 0;
        assert_eq!(
            integer(&[0x1f, 0x80], &mut p, 5),
            Err(HpackError::Truncated)
        );
    }

    #[test]
    fn rfc_c2_field_representations() {
        let mut d = Decoder::new(65536, false);
        // C.2.1 literal with indexing.
        let f = decode(
            &mut d,
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        );
        assert_eq!(f, pairs(&[("custom-key", "custom-header")]));
        assert_eq!(d.table().size(), 55);
        // C.2.2 literal without indexing.
        let f = decode(&mut d, "040c 2f73 616d 706c 652f 7061 7468");
        assert_eq!(f, pairs(&[(":path", "/sample/path")]));
        // C.2.3 never indexed.
        let f = decode(&mut d, "1008 7061 7373 776f 7264 0673 6563 7265 74");
        assert_eq!(f, pairs(&[("password", "secret")]));
        assert_eq!(d.table().len(), 1);
        // C.2.4 indexed.
        let f = decode(&mut d, "82");
        assert_eq!(f, pairs(&[(":method", "GET")]));
    }

    fn requests(d: &mut Decoder, blocks: [&str; 3]) {
        let first = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        assert_eq!(decode(d, blocks[0]), pairs(&first));
        assert_eq!(d.table().size(), 57);
        let mut second = first.to_vec();
        second.push(("cache-control", "no-cache"));
        assert_eq!(decode(d, blocks[1]), pairs(&second));
        assert_eq!(d.table().size(), 110);
        let third = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ];
        assert_eq!(decode(d, blocks[2]), pairs(&third));
        assert_eq!(d.table().size(), 164);
    }

    #[test]
    fn rfc_c3_requests_without_huffman() {
        requests(
            &mut Decoder::new(65536, false),
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
        );
    }

    #[test]
    fn rfc_c4_requests_with_huffman() {
        requests(
            &mut Decoder::new(65536, false),
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        );
    }

    #[test]
    fn rfc_c5_responses_with_eviction() {
        let mut d = Decoder::new(65536, false);
        // The encoder's table is 256 bytes (sent as a size update here).
        d.table.set_max(256);
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let f = decode(
            &mut d,
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        );
        assert_eq!(
            f,
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", date1),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.table().size(), 222);
        let f = decode(&mut d, "4803 3330 37c1 c0bf");
        assert_eq!(f[0], (":status".into(), "307".into()));
        assert_eq!(f[3], ("location".into(), "https://www.example.com".into()));
        // ":status: 302" was evicted to make room.
        assert_eq!(d.table().size(), 222);
        assert_eq!(d.table().len(), 4);
    }

    #[test]
    fn joined_mid_connection_never_names_wrongly() {
        let mut d = Decoder::new(65536, true);
        // 0xbe = dynamic index 62: inserted before the join.
        let mut names = Vec::new();
        let r = d
            .decode(
                &hex("82 be 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
                |f| names.push(f.name.map(|n| String::from_utf8_lossy(n).into_owned())),
            )
            .expect("decodes");
        assert_eq!(r.unknown, 1);
        assert!(!r.synced);
        assert_eq!(
            names,
            vec![Some(":method".into()), None, Some("custom-key".into())]
        );
        // The entry inserted after the join is now exact at index 62.
        assert_eq!(
            decode(&mut d, "be"),
            pairs(&[("custom-key", "custom-value")])
        );
        // A literal whose name is an unknown index: value known, name not;
        // inserted, so later indexes keep their positions.
        let mut got = Vec::new();
        d.decode(&hex("7f 03 03 6162 63 be"), |f| {
            got.push((f.name.is_some(), f.value.map(<[u8]>::to_vec)))
        })
        .expect("decodes");
        assert_eq!(got[0], (false, Some(b"abc".to_vec())));
        // Index 62 is now that partial entry: name still unknown.
        assert_eq!(got[1], (false, Some(b"abc".to_vec())));
        // A size update to 0 makes the table fully known.
        let r = d.decode(&hex("20 82"), |_| {}).expect("decodes");
        assert!(r.synced);
    }

    #[test]
    fn unwanted_values_are_skipped_but_keep_their_place() {
        let mut d = Decoder::new(65536, false);
        let want = |n: &[u8]| n != b"date";
        let mut got = Vec::new();
        // C.5.1's date is a literal with indexing; then index 62 (date)
        // and 63 (the :status literal before it... here: cache-control).
        let block = hex("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 54");
        d.decode_wanted(&block, &want, |f| {
            got.push((f.name.map(<[u8]>::to_vec), f.value.map(<[u8]>::to_vec)))
        })
        .expect("decodes");
        assert_eq!(got[2], (Some(b"date".to_vec()), None));
        assert_eq!(
            got[1],
            (Some(b"cache-control".to_vec()), Some(b"private".to_vec()))
        );
        got.clear();
        d.decode_wanted(&hex("be bf"), &want, |f| {
            got.push((f.name.map(<[u8]>::to_vec), f.value.map(<[u8]>::to_vec)))
        })
        .expect("decodes");
        // The date entry has its name, not its value; positions hold.
        assert_eq!(got[0], (Some(b"date".to_vec()), None));
        assert_eq!(
            got[1],
            (Some(b"cache-control".to_vec()), Some(b"private".to_vec()))
        );
    }

    #[test]
    fn errors_forget_the_table() {
        let mut d = Decoder::new(65536, false);
        decode(
            &mut d,
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        );
        assert_eq!(
            d.decode(&hex("40 0a 63"), |_| {}),
            Err(HpackError::Truncated)
        );
        assert!(!d.table().synced());
        assert_eq!(
            d.decode(&hex("82 3f e1 1f"), |_| {}),
            Err(HpackError::LateSizeUpdate)
        );
        // Huffman padding of the EOS prefix only: 0x80|1 then 0x00 is bad.
        assert_eq!(
            d.decode(&hex("40 81 00 00"), |_| {}),
            Err(HpackError::Huffman)
        );
    }

    #[test]
    fn agrees_with_loona_hpack_on_a_synced_connection() {
        let mut enc = loona_hpack::Encoder::new();
        let mut ours = Decoder::new(65536, false);
        for i in 0..200 {
            let path = format!("/svc.Greeter/Say{}", i % 7);
            let tp = format!("00-{:032x}-{:016x}-01", i, i + 1);
            let headers: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":path", path.as_bytes()),
                (b"content-type", b"application/grpc"),
                (b"traceparent", tp.as_bytes()),
                (b"te", b"trailers"),
            ];
            let block = enc.encode(headers.iter().copied());
            let mut got = Vec::new();
            ours.decode(&block, |f| {
                got.push((f.name.map(<[u8]>::to_vec), f.value.map(<[u8]>::to_vec)))
            })
            .expect("decodes");
            let want: Vec<_> = headers
                .iter()
                .map(|(n, v)| (Some(n.to_vec()), Some(v.to_vec())))
                .collect();
            assert_eq!(got, want, "block {i}");
        }
    }
}
