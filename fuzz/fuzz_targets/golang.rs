//! The Go binary readers on hostile files: `.go.buildinfo`, `.gopclntab`,
//! the RET finder and the DWARF struct-offset reader, each alone (DWARF
//! only behind the ELF parser) and as the agent reads a real executable.
//!
//! Checked: no panic, no unbounded allocation; every function found has
//! its entry at or before its end; every RET offset lies inside its
//! function's bytes.
//!
//! Input: one byte (the reader: 0 ELF file, 1 build info blob, 2 pclntab
//! blob, 3 machine code), then its bytes.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tracer_agent::golang::{buildinfo, dwarf, pclntab::Pclntab, rets};

/// Functions followed per input.
const MAX_FUNCS: usize = 64;

fn check_rets(code: &[u8], ip: u64) {
    if let Ok(r) = rets::rets_in(code, ip) {
        for at in r {
            assert!(at >= ip && at < ip + code.len() as u64);
        }
    }
}

fn check_table(t: &Pclntab, code: &[u8]) {
    let names: Vec<String> = t.funcs().take(MAX_FUNCS).map(|f| f.name).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for f in t.find(&refs) {
        assert!(f.entry <= f.end, "{f:?}");
    }
    for f in t.funcs().take(MAX_FUNCS) {
        assert!(f.entry <= f.end, "{f:?}");
        // Its code, where the input has it.
        // (The table may place functions anywhere, below the input too.)
        let (Some(Ok(a)), Some(Ok(b))) = (
            f.entry.checked_sub(0x1000).map(usize::try_from),
            f.end.checked_sub(0x1000).map(usize::try_from),
        ) else {
            continue;
        };
        if let Some(c) = code.get(a..b.min(a + 4096)) {
            check_rets(c, f.entry);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode & 3 {
        0 => {
            let mut f = Cursor::new(rest);
            let _ = buildinfo::read(&mut f);
            let _ = dwarf::tls_offsets(&mut f);
            if let Ok(t) = Pclntab::read(&mut f) {
                let layout = rets::Layout::read(&mut f);
                for func in t.funcs().take(MAX_FUNCS) {
                    assert!(func.entry <= func.end);
                    if let Ok(l) = &layout {
                        if let Ok(offsets) = rets::ret_offsets(&mut f, l, &func) {
                            let base = l.file_offset(func.entry, 1).unwrap_or(0);
                            for o in offsets {
                                assert!(o >= base && o < base + (func.end - func.entry));
                            }
                        }
                    }
                }
            }
        }
        1 => {
            if let Ok(info) = buildinfo::parse(rest) {
                let _ = info.version();
            }
        }
        2 => {
            if let Ok(t) = Pclntab::parse(rest.to_vec(), Some(0x1000)) {
                check_table(&t, rest);
            }
        }
        _ => check_rets(rest, 0x1000),
    }
});
