//! The HPACK header tables (RFC 7541 §2.3): the static table, and a
//! dynamic table that may have been joined mid-connection.
//!
//! After a join, the entries inserted before it are unknown. Positions
//! count from the newest entry (§2.3.3), so an entry inserted after the
//! join is found at the same index the encoder uses for as long as the
//! encoder keeps it, whatever the unknown entries behind it were. An
//! index past the entries seen is unknown, never guessed.

use std::collections::VecDeque;

/// RFC 7541 Appendix A.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Per-entry overhead in the table's size accounting (§4.1).
pub const ENTRY_OVERHEAD: usize = 32;

/// A header field as far as it is known. `None` parts came from an entry
/// inserted before the join (or from a block that was not seen whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Option<Box<[u8]>>,
    pub value: Option<Box<[u8]>>,
}

impl Entry {
    /// §4.1 size; an unknown part counts as empty (an underestimate, so
    /// this table never evicts an entry the encoder still holds).
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, |n| n.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + ENTRY_OVERHEAD
    }
}

/// What an index resolved to.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Known {
        name: &'a [u8],
        value: &'a [u8],
    },
    /// The entry exists but its name is unknown (value may be known).
    Partial(&'a Entry),
    /// Before the join, or past the end: unknowable.
    Unknown,
}

#[derive(Debug)]
pub struct DynamicTable {
    /// Newest first, each with the size it was counted at.
    entries: VecDeque<(Entry, usize)>,
    size: usize,
    /// The encoder's current maximum (the last size update, or the
    /// protocol's default), capped by `cap`.
    max: usize,
    /// Most this table holds, whatever a peer asks for.
    cap: usize,
    /// Entries inserted before the join may still be in the encoder's
    /// table behind the ones seen here.
    unknown_tail: bool,
    /// The encoder was allowed more than `cap`: entries this table evicts
    /// may still be in the encoder's.
    over_cap: bool,
}

impl DynamicTable {
    /// A table at the start of a connection (`joined`: false) or joined
    /// at an unknown point of it.
    pub fn new(max: usize, cap: usize, joined: bool) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max: max.min(cap),
            cap,
            unknown_tail: joined,
            over_cap: max > cap,
        }
    }

    /// Everything seen so far is in doubt (a header block was missed):
    /// start over as if joined now.
    pub fn forget(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.unknown_tail = true;
    }

    /// The table's content is fully known (not joined, or resynchronised).
    pub fn synced(&self) -> bool {
        !self.unknown_tail
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (the §4.1 size of the known entries).
    pub fn size(&self) -> usize {
        self.size
    }

    /// A dynamic table size update (§6.3). Returns whether the size asked
    /// for was above the cap (and capped).
    pub fn set_max(&mut self, max: usize) -> bool {
        let capped = max > self.cap;
        self.over_cap = capped;
        self.max = max.min(self.cap);
        if max == 0 {
            // The encoder's table is empty now: known exactly.
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = false;
        }
        self.evict_to(self.max);
        capped
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some((_, size)) => {
                    self.size -= size;
                    // Evicting a seen entry means every older (unknown)
                    // one went first (unless this table is smaller than
                    // the encoder's).
                    self.unknown_tail = self.over_cap;
                }
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    /// Inserts an entry (§4.4). Returns whether it was too large to keep.
    pub fn insert(&mut self, e: Entry) -> bool {
        let s = e.size();
        self.insert_of_size(e, s)
    }

    /// Inserts an entry whose value is not kept, `value_len` standing for
    /// it in the size (a lower bound: an underestimate only keeps the
    /// entry here longer than in the encoder's table, which the encoder
    /// then never refers to).
    pub fn insert_sized(&mut self, e: Entry, value_len: usize) -> bool {
        let s = e.size() + value_len;
        self.insert_of_size(e, s)
    }

    fn insert_of_size(&mut self, e: Entry, s: usize) -> bool {
        if s > self.max {
            // §4.4: an entry larger than the table empties it.
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = self.over_cap;
            return true;
        }
        self.evict_to(self.max - s);
        if self.max - self.size - s < ENTRY_OVERHEAD && !self.over_cap {
            // No unknown entry (each is at least 32 bytes) fits beside
            // the seen ones any more.
            self.unknown_tail = false;
        }
        self.size += s;
        self.entries.push_front((e, s));
        false
    }

    /// Index `i` of the combined index space (§2.3.3), 1-based.
    pub fn get(&self, i: usize) -> Lookup<'_> {
        if i == 0 {
            return Lookup::Unknown;
        }
        if let Some((n, v)) = STATIC.get(i - 1) {
            return Lookup::Known {
                name: n.as_bytes(),
                value: v.as_bytes(),
            };
        }
        match self.entries.get(i - 1 - STATIC.len()) {
            Some((
                Entry {
                    name: Some(n),
                    value: Some(v),
                },
                _,
            )) => Lookup::Known { name: n, value: v },
            Some((e, _)) => Lookup::Partial(e),
            None => Lookup::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: &str, v: &str) -> Entry {
        Entry {
            name: Some(n.as_bytes().into()),
            value: Some(v.as_bytes().into()),
        }
    }

    #[test]
    fn joined_table_knows_only_what_it_saw() {
        let mut t = DynamicTable::new(4096, 65536, true);
        assert_eq!(t.get(62), Lookup::Unknown);
        t.insert(entry("a", "1"));
        t.insert(entry("b", "2"));
        assert_eq!(
            t.get(62),
            Lookup::Known {
                name: b"b",
                value: b"2"
            }
        );
        assert!(matches!(t.get(63), Lookup::Known { name: b"a", .. }));
        assert_eq!(t.get(64), Lookup::Unknown);
        assert!(!t.synced());
        t.set_max(0);
        assert!(t.synced());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn eviction_of_a_seen_entry_resynchronises() {
        // 100-byte table: two 34-byte entries fit, a third evicts one.
        let mut t = DynamicTable::new(100, 65536, true);
        t.insert(entry("a", "1"));
        t.insert(entry("b", "2"));
        assert!(!t.synced());
        t.insert(entry("c", "3"));
        assert!(t.synced());
        assert_eq!(t.len(), 2);
        assert!(matches!(t.get(63), Lookup::Known { name: b"b", .. }));
    }

    #[test]
    fn peer_cannot_grow_the_table_past_the_cap() {
        let mut t = DynamicTable::new(4096, 1024, false);
        assert!(t.set_max(1 << 30));
        for i in 0..1000 {
            t.insert(entry("k", &format!("{i:0100}")));
        }
        assert!(t.size() <= 1024);
        assert!(t.insert(entry("k", &"x".repeat(2000))));
        assert_eq!(t.len(), 0);
    }
}
