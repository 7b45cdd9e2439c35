//! Edits to the BPF object before it is loaded.
//!
//! aya creates every map of the object at load, used or not. Since Linux
//! 5.19, creating a sockhash needs CAP_NET_ADMIN (`map_create()` checks it
//! for the socket map types), so the one sockhash context injection uses
//! (`SOCKS`) would demand NET_ADMIN of every deployment. With injection
//! off no program that uses it is loaded, so its definition is turned
//! into a plain hash of the same shape, which CAP_BPF may create.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// `bpf_map_type` values (uapi/linux/bpf.h).
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;

/// An object image with the alignment the ELF reader needs (what
/// `include_bytes_aligned!` gives the original).
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes, and u8
        // has no alignment requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the unique borrow of `words`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of `obj` in which the sockhash `map` (a legacy `maps` section
/// `bpf_map_def`, whose first field is the type) is a hash. `None` when
/// the object does not have that shape.
pub fn sockhash_as_hash(obj: &[u8], map: &str) -> Option<AlignedObject> {
    let offset = {
        let file = object::File::parse(obj).ok()?;
        let sym = file.symbols().find(|s| s.name() == Ok(map))?;
        let section = file.section_by_index(sym.section_index()?).ok()?;
        if section.name() != Ok("maps") {
            return None;
        }
        let (start, size) = section.file_range()?;
        let at = sym.address();
        (at + 4 <= size).then_some(usize::try_from(start + at).ok()?)?
    };
    let mut out = AlignedObject {
        words: vec![0u64; obj.len().div_ceil(8)],
        len: obj.len(),
    };
    out.bytes_mut().copy_from_slice(obj);
    let field = out.bytes_mut().get_mut(offset..offset + 4)?;
    if u32::from_le_bytes(field.try_into().ok()?) != BPF_MAP_TYPE_SOCKHASH {
        return None;
    }
    field.copy_from_slice(&BPF_MAP_TYPE_HASH.to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_an_object_is_left_alone() {
        assert!(sockhash_as_hash(b"not an ELF file", "SOCKS").is_none());
        assert!(sockhash_as_hash(&[], "SOCKS").is_none());
    }
}
