//! Function addresses of a Go binary from its `.gopclntab`, the table the
//! Go runtime itself uses for stack traces. Unlike `.symtab` it is never
//! stripped, so it is how stripped binaries (every Go program Debian
//! ships) are probed.
//!
//! Layout for Go ≥ 1.18 (`runtime/symtab.go`, `pcHeader`): magic
//! (`0xfffffff0` for 1.18–1.19, `0xfffffff1` from 1.20), two zero bytes,
//! the instruction quantum, the pointer size, then pointer-sized `nfunc`,
//! `nfiles`, `textStart`, and the offsets of the function-name table, the
//! compilation units, the file table, the pc tables and the function
//! table. The function table is `nfunc + 1` pairs of u32 (entry offset
//! from `textStart`, offset of the `_func` record); the last entry is the
//! end of the last function. A `_func` starts with its entry offset and
//! the offset of its name in the name table.
//!
//! Older layouts (Go ≤ 1.17) are refused: outside the supported range.

use std::io::{Read, Seek, SeekFrom};

use object::{Object, ObjectSection};

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
/// The largest table read (kubectl's, one of the biggest Go programs
/// around, is 20 MiB).
const MAX_TABLE: u64 = 256 << 20;
/// Longest function name read.
const MAX_NAME: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PclntabError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ELF file we can read: {0}")]
    Elf(#[from] object::Error),
    #[error("no .gopclntab section")]
    Missing,
    #[error("unsupported pclntab (magic {0:#x}: Go older than 1.18?)")]
    Unsupported(u32),
    #[error("malformed pclntab: {0}")]
    Malformed(&'static str),
}

/// One function: its name and its code as virtual addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Func {
    pub name: String,
    pub entry: u64,
    /// Where the next function starts (padding included).
    pub end: u64,
}

/// A parsed table (kept as the bytes plus the offsets into them).
#[derive(Debug)]
pub struct Pclntab {
    data: Vec<u8>,
    ptr: usize,
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    functab: usize,
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn uptr_at(d: &[u8], at: usize, ptr: usize) -> Option<u64> {
    if ptr == 4 {
        return u32_at(d, at).map(u64::from);
    }
    let b = d.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

impl Pclntab {
    /// Reads the table of the ELF file `f`.
    pub fn read<R: Read + Seek>(f: &mut R) -> Result<Self, PclntabError> {
        let (off, size, text) = {
            let cache = object::ReadCache::new(&mut *f);
            let file = object::File::parse(&cache)?;
            // PIE builds put it in .data.rel.ro.
            let s = file
                .section_by_name(".gopclntab")
                .or_else(|| file.section_by_name(".data.rel.ro.gopclntab"))
                .ok_or(PclntabError::Missing)?;
            let (off, size) = s.file_range().ok_or(PclntabError::Missing)?;
            // The header's textStart may be left unrelocated (Go 1.27
            // writes 0): then the text section's address stands in. Not
            // always: with external linking C code comes first in .text.
            let text = file.section_by_name(".text").map(|t| t.address());
            (off, size, text)
        };
        if size > MAX_TABLE {
            return Err(PclntabError::Malformed("larger than 256 MiB"));
        }
        f.seek(SeekFrom::Start(off))?;
        let mut data = Vec::new();
        f.take(size).read_to_end(&mut data)?;
        Self::parse(data, text)
    }

    /// Parses a table (little-endian, as on x86-64). `text` is where the
    /// text section starts, used when the header's `textStart` is 0.
    pub fn parse(data: Vec<u8>, text: Option<u64>) -> Result<Self, PclntabError> {
        let magic = u32_at(&data, 0).ok_or(PclntabError::Malformed("short header"))?;
        if magic != MAGIC_118 && magic != MAGIC_120 {
            return Err(PclntabError::Unsupported(magic));
        }
        if data.get(4..6) != Some(&[0, 0]) {
            return Err(PclntabError::Malformed("header padding"));
        }
        let ptr = usize::from(data.get(7).copied().unwrap_or(0));
        if ptr != 4 && ptr != 8 {
            return Err(PclntabError::Malformed("pointer size"));
        }
        let field = |i: usize| {
            uptr_at(&data, 8 + i * ptr, ptr).ok_or(PclntabError::Malformed("short header"))
        };
        let in_table = |v: u64| {
            usize::try_from(v)
                .ok()
                .filter(|v| *v < data.len())
                .ok_or(PclntabError::Malformed("offset outside the table"))
        };
        let nfunc = usize::try_from(field(0)?).map_err(|_| PclntabError::Malformed("nfunc"))?;
        let text_start = match (field(2)?, text) {
            (0, Some(t)) => t,
            (0, None) => return Err(PclntabError::Malformed("no text address")),
            (t, _) => t,
        };
        let funcnames = in_table(field(3)?)?;
        let functab = in_table(field(7)?)?;
        // nfunc + 1 entries of 8 bytes must fit.
        let need = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(functab))
            .ok_or(PclntabError::Malformed("nfunc"))?;
        if need > data.len() {
            return Err(PclntabError::Malformed("function table past the end"));
        }
        Ok(Self {
            data,
            ptr,
            nfunc,
            text_start,
            funcnames,
            functab,
        })
    }

    /// Functions in the table.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// Pointer size of the binary (8 on x86-64).
    pub fn ptr_size(&self) -> usize {
        self.ptr
    }

    fn entry(&self, i: usize) -> Option<(u32, u32)> {
        let at = self.functab + i * 8;
        Some((u32_at(&self.data, at)?, u32_at(&self.data, at + 4)?))
    }

    /// The name of function `i` (bytes, as stored).
    fn name(&self, i: usize) -> Option<&[u8]> {
        let (_, func_off) = self.entry(i)?;
        let rec = self.functab.checked_add(usize::try_from(func_off).ok()?)?;
        let name_off = u32_at(&self.data, rec.checked_add(4)?)?;
        let at = self
            .funcnames
            .checked_add(usize::try_from(name_off).ok()?)?;
        let rest = self.data.get(at..)?;
        let end = rest.iter().take(MAX_NAME).position(|b| *b == 0)?;
        Some(&rest[..end])
    }

    fn func(&self, i: usize, name: &[u8]) -> Option<Func> {
        let (entry, _) = self.entry(i)?;
        let (end, _) = self.entry(i + 1)?;
        if end < entry {
            return None;
        }
        Some(Func {
            name: String::from_utf8_lossy(name).into_owned(),
            entry: self.text_start.checked_add(u64::from(entry))?,
            end: self.text_start.checked_add(u64::from(end))?,
        })
    }

    /// Every function whose name is one of `names`, in one pass over the
    /// table (names are looked for as whole names).
    pub fn find(&self, names: &[&str]) -> Vec<Func> {
        let mut out = Vec::new();
        for i in 0..self.nfunc {
            let Some(n) = self.name(i) else { continue };
            if names.iter().any(|w| w.as_bytes() == n) {
                if let Some(f) = self.func(i, n) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// Every function (for tests and diagnostics).
    pub fn funcs(&self) -> impl Iterator<Item = Func> + '_ {
        (0..self.nfunc).filter_map(|i| self.func(i, self.name(i)?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table with `funcs` (name, entry offset) and the end offset, laid
    /// out as Go 1.20+ does (pointer size 8).
    pub(crate) fn table(text_start: u64, funcs: &[(&str, u32)], end: u32) -> Vec<u8> {
        let header = 8 + 8 * 8;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let funcnames = header;
        let functab = funcnames + names.len();
        let records = functab + (funcs.len() + 1) * 8;
        let mut d = Vec::new();
        d.extend_from_slice(&MAGIC_120.to_le_bytes());
        d.extend_from_slice(&[0, 0, 1, 8]);
        for v in [
            funcs.len() as u64,
            0,
            text_start,
            funcnames as u64,
            0,
            0,
            0,
            functab as u64,
        ] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(&names);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            d.extend_from_slice(&entry.to_le_bytes());
            d.extend_from_slice(&((records - functab + i * 8) as u32).to_le_bytes());
        }
        d.extend_from_slice(&end.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        for (i, (_, entry)) in funcs.iter().enumerate() {
            d.extend_from_slice(&entry.to_le_bytes());
            d.extend_from_slice(&name_offs[i].to_le_bytes());
        }
        d
    }

    #[test]
    fn finds_functions_by_name() {
        let t = Pclntab::parse(
            table(
                0x401000,
                &[
                    ("main.main", 0),
                    ("crypto/tls.(*Conn).Write", 0x40),
                    ("crypto/tls.(*Conn).Read", 0x100),
                ],
                0x180,
            ),
            None,
        )
        .expect("parses");
        assert_eq!(t.len(), 3);
        let f = t.find(&["crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write", "x"]);
        assert_eq!(
            f,
            vec![
                Func {
                    name: "crypto/tls.(*Conn).Write".into(),
                    entry: 0x401040,
                    end: 0x401100
                },
                Func {
                    name: "crypto/tls.(*Conn).Read".into(),
                    entry: 0x401100,
                    end: 0x401180
                },
            ]
        );
        assert_eq!(t.funcs().count(), 3);
    }

    #[test]
    fn hostile_tables_are_errors_not_panics() {
        assert!(Pclntab::parse(Vec::new(), None).is_err());
        assert!(matches!(
            Pclntab::parse(vec![0xfa, 0xff, 0xff, 0xff, 0, 0, 1, 8], None),
            Err(PclntabError::Unsupported(0xffff_fffa))
        ));
        let good = table(0x1000, &[("a", 0), ("b", 8)], 16);
        // Every truncation fails or parses; none panics, and lookups on
        // what parses stay in bounds.
        for n in 0..good.len() {
            if let Ok(t) = Pclntab::parse(good[..n].to_vec(), None) {
                let _ = t.find(&["a", "b"]);
                let _ = t.funcs().count();
            }
        }
        // nfunc far beyond the data.
        let mut bad = good.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Pclntab::parse(bad, None).is_err());
        // A name offset past the end, and an end before the entry.
        let mut bad = good.clone();
        let last = bad.len() - 4;
        bad[last..].copy_from_slice(&u32::MAX.to_le_bytes());
        let t = Pclntab::parse(bad, Some(0x2000)).expect("header fine");
        assert_eq!(t.find(&["a"])[0].entry, 0x1000);
        assert_eq!(t.find(&["b"]), vec![]);
        // An unrelocated textStart: the text section's address is used.
        let mut zero = good.clone();
        zero[24..32].copy_from_slice(&0u64.to_le_bytes());
        let t = Pclntab::parse(zero.clone(), Some(0x2000)).expect("parses");
        assert_eq!(t.find(&["b"])[0].entry, 0x2008);
        assert!(Pclntab::parse(zero, None).is_err());
    }
}
