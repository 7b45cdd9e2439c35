//! Where a Go function returns: the file offset of every RET instruction
//! in it, found by decoding its machine code (x86-64).
//!
//! uretprobes replace the return address on the stack; when the Go runtime
//! grows a goroutine stack it copies frames and finds the foreign address,
//! and the program crashes. A uprobe on each RET sees the same moment (the
//! results are in registers under Go's register ABI) without touching the
//! stack.
//!
//! A function whose code does not decode cleanly gets no probe at all: a
//! probe in the middle of an instruction would corrupt the program.

use std::io::{Read, Seek, SeekFrom};

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSegment};

use super::pclntab::Func;

/// Largest function decoded (Go's biggest functions are tens of KiB).
const MAX_FUNC: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RetError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ELF file we can read: {0}")]
    Elf(#[from] object::Error),
    #[error("{0:#x} is in no loaded segment of the file")]
    Unmapped(u64),
    #[error("function of {0} bytes: too large to decode")]
    TooLarge(u64),
    #[error("undecodable instruction at {0:#x}")]
    Invalid(u64),
    #[error("no RET instruction")]
    NoRet,
}

/// How the file's loaded segments map virtual addresses to file offsets.
#[derive(Debug, Clone)]
pub struct Layout {
    /// (vaddr, file offset, file size) of each loaded segment.
    segments: Vec<(u64, u64, u64)>,
}

impl Layout {
    pub fn read<R: Read + Seek>(f: &mut R) -> Result<Self, RetError> {
        let cache = object::ReadCache::new(&mut *f);
        let file = object::File::parse(&cache)?;
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (s.address(), off, size)
            })
            .collect();
        Ok(Self { segments })
    }

    /// The page-aligned virtual address of the segment that maps file
    /// offset 0 (with where a process mapped it: the load bias of a PIE).
    pub fn base_vaddr(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(_, off, _)| off == 0)
            .map(|&(addr, _, _)| addr & !0xfff)
    }

    /// The file offset of virtual address `va` (what a uprobe is placed
    /// by), when `va..va+len` is all in one segment's file data.
    pub fn file_offset(&self, va: u64, len: u64) -> Option<u64> {
        self.segments.iter().find_map(|&(addr, off, size)| {
            let rel = va.checked_sub(addr)?;
            (rel.checked_add(len)? <= size).then(|| off + rel)
        })
    }
}

/// The file offsets of `func`'s RET instructions.
pub fn ret_offsets<R: Read + Seek>(
    f: &mut R,
    layout: &Layout,
    func: &Func,
) -> Result<Vec<u64>, RetError> {
    let len = func.end.saturating_sub(func.entry);
    if len > MAX_FUNC {
        return Err(RetError::TooLarge(len));
    }
    let off = layout
        .file_offset(func.entry, len)
        .ok_or(RetError::Unmapped(func.entry))?;
    f.seek(SeekFrom::Start(off))?;
    let mut code = Vec::new();
    f.take(len).read_to_end(&mut code)?;
    let rets = rets_in(&code, func.entry)?;
    Ok(rets.into_iter().map(|va| va - func.entry + off).collect())
}

/// The addresses of the RET instructions in `code`, which starts at `ip`.
pub fn rets_in(code: &[u8], ip: u64) -> Result<Vec<u64>, RetError> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut rets = Vec::new();
    while d.can_decode() {
        let at = d.ip();
        let insn = d.decode();
        if insn.is_invalid() {
            // The padding Go puts after a function is INT3s, which decode;
            // anything else undecodable means we do not understand the code.
            return Err(RetError::Invalid(at));
        }
        if insn.mnemonic() == Mnemonic::Ret {
            rets.push(at);
        }
    }
    if rets.is_empty() {
        return Err(RetError::NoRet);
    }
    Ok(rets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_ret_and_not_ret_bytes_inside_instructions() {
        // mov eax, 0xc3c3c3c3 (C3 bytes inside an immediate); test; jz +1;
        // ret; ret imm16 (c2 08 00); int3 padding.
        let code = [
            0xb8, 0xc3, 0xc3, 0xc3, 0xc3, // mov eax, imm32
            0x48, 0x85, 0xc0, // test rax, rax
            0x74, 0x01, // jz +1
            0xc3, // ret
            0xc2, 0x08, 0x00, // ret 8
            0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(
            rets_in(&code, 0x1000).expect("decodes"),
            vec![0x100a, 0x100b]
        );
    }

    #[test]
    fn undecodable_code_or_no_ret_is_an_error() {
        // A truncated instruction at the end.
        assert!(matches!(
            rets_in(&[0xc3, 0x48, 0x8b], 0),
            Err(RetError::Invalid(1))
        ));
        assert!(matches!(rets_in(&[0x90, 0x90], 0), Err(RetError::NoRet)));
        assert!(matches!(rets_in(&[], 0), Err(RetError::NoRet)));
    }

    #[test]
    fn layout_maps_whole_ranges_only() {
        let l = Layout {
            segments: vec![(0x400000, 0, 0x1000), (0x601000, 0x1000, 0x200)],
        };
        assert_eq!(l.file_offset(0x400010, 0x10), Some(0x10));
        assert_eq!(l.file_offset(0x601100, 0x100), Some(0x1100));
        assert_eq!(l.file_offset(0x601100, 0x101), None);
        assert_eq!(l.file_offset(0x300000, 1), None);
        assert_eq!(l.file_offset(u64::MAX, 2), None);
        assert_eq!(l.base_vaddr(), Some(0x400000));
        assert_eq!(Layout { segments: vec![] }.base_vaddr(), None);
    }
}
