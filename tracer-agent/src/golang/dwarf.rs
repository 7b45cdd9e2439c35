//! Struct field offsets from a Go binary's DWARF (present unless it was
//! built with `-ldflags=-w` or stripped, as distributions do).
//!
//! Go writes one compile unit per package and names each struct type by
//! its package path (`crypto/tls.Conn`), with a `DW_AT_data_member_location`
//! constant on every member. Sections are usually zlib-compressed
//! (`SHF_COMPRESSED`).

use std::{
    borrow::Cow,
    collections::HashMap,
    io::{Read, Seek},
};

use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

use super::offsets::{GrpcOffsets, HttpOffsets, TlsOffsets};

/// Largest DWARF section decompressed (Go's biggest binaries have tens of
/// MiB of `.debug_info`).
const MAX_SECTION: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("not an ELF file we can read: {0}")]
    Elf(#[from] object::Error),
    #[error("malformed DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
    #[error("DWARF section {0} larger than 256 MiB")]
    TooLarge(&'static str),
    #[error("no {0} in the DWARF")]
    Missing(&'static str),
}

/// The (struct, member) pairs looked for.
const WANTED: [(&str, &str); 15] = [
    ("net/http.response", "conn"),
    ("net/http.conn", "rwc"),
    ("net/http.persistConn", "conn"),
    ("crypto/tls.Conn", "conn"),
    ("net.TCPConn", "conn"),
    ("net.conn", "fd"),
    ("net.netFD", "pfd"),
    ("internal/poll.FD", "Sysfd"),
    ("runtime.itab", "fun"),
    ("internal/abi.ITab", "Fun"),
    (GRPC_STREAM, "id"),
    (GRPC_STREAM, "ct"),
    (GRPC_CLIENT, "conn"),
    (GRPC_SERVER, "conn"),
    (GRPC_SYSCALLCONN, "Conn"),
];

const GRPC_STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
const GRPC_CLIENT: &str = "google.golang.org/grpc/internal/transport.http2Client";
const GRPC_SERVER: &str = "google.golang.org/grpc/internal/transport.http2Server";
const GRPC_SYSCALLCONN: &str = "google.golang.org/grpc/internal/credentials.syscallConn";

/// Byte offset of each (struct, member) found.
pub type Members = HashMap<(String, String), u64>;

/// Member offsets of the structs in [`WANTED`], from the ELF file `f`
/// (only its DWARF sections are read). `Ok(None)` when it has no DWARF.
pub fn members<R: Read + Seek>(f: &mut R) -> Result<Option<Members>, DwarfError> {
    let cache = object::ReadCache::new(f);
    let file = object::File::parse(&cache)?;
    if file.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let mut sections: HashMap<&'static str, Cow<'_, [u8]>> = HashMap::new();
    for id in [
        gimli::SectionId::DebugAbbrev,
        gimli::SectionId::DebugInfo,
        gimli::SectionId::DebugStr,
    ] {
        let Some(s) = file.section_by_name(id.name()) else {
            continue;
        };
        // The size a compressed section claims is checked before anything
        // is allocated for it.
        if s.size() > MAX_SECTION || s.compressed_data()?.uncompressed_size > MAX_SECTION {
            return Err(DwarfError::TooLarge(id.name()));
        }
        let bytes = s.uncompressed_data()?;
        if bytes.len() as u64 > MAX_SECTION {
            return Err(DwarfError::TooLarge(id.name()));
        }
        sections.insert(id.name(), bytes);
    }
    let dwarf = gimli::Dwarf::load(|id| -> Result<_, DwarfError> {
        Ok(EndianSlice::new(
            sections.get(id.name()).map(|c| c.as_ref()).unwrap_or(&[]),
            LittleEndian,
        ))
    })?;
    let mut found = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        // Entries only: `Dwarf::unit` would also parse the line program.
        let abbrevs = dwarf.abbreviations(&header)?;
        let mut entries = header.entries(&abbrevs);
        // The struct being read, while its members come.
        let mut current: Option<(isize, &str)> = None;
        let mut depth = 0isize;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            if current.is_some_and(|(d, _)| depth <= d) {
                current = None;
            }
            let name = match entry.attr_value(gimli::DW_AT_name)? {
                Some(AttributeValue::String(s)) => s,
                Some(AttributeValue::DebugStrRef(o)) => dwarf.debug_str.get_str(o)?,
                _ => continue,
            };
            let name = std::str::from_utf8(name.slice()).unwrap_or("");
            match entry.tag() {
                gimli::DW_TAG_structure_type => {
                    current = WANTED
                        .iter()
                        .find(|(s, _)| *s == name)
                        .map(|(s, _)| (depth, *s));
                }
                gimli::DW_TAG_member => {
                    let Some((_, st)) = current else { continue };
                    if !WANTED.iter().any(|(s, m)| *s == st && *m == name) {
                        continue;
                    }
                    if let Some(AttributeValue::Udata(off)) =
                        entry.attr_value(gimli::DW_AT_data_member_location)?
                    {
                        found.insert((st.to_owned(), name.to_owned()), off);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Some(found))
}

/// The TLS path's offsets from the ELF file `f`'s DWARF; `Ok(None)` when
/// it has none.
pub fn tls_offsets<R: Read + Seek>(f: &mut R) -> Result<Option<TlsOffsets>, DwarfError> {
    match members(f)? {
        Some(m) => tls_from(&m).map(Some),
        None => Ok(None),
    }
}

fn getter(m: &Members) -> impl Fn(&str, &'static str) -> Result<u64, DwarfError> + '_ {
    move |s, f| {
        m.get(&(s.to_owned(), f.to_owned()))
            .copied()
            .ok_or(DwarfError::Missing(f))
    }
}

fn narrow(v: u64) -> Result<u16, DwarfError> {
    u16::try_from(v).map_err(|_| DwarfError::Missing("a small offset"))
}

/// net/http's offsets from members read by [`members`].
pub fn http_from(m: &Members) -> Result<HttpOffsets, DwarfError> {
    let get = getter(m);
    Ok(HttpOffsets {
        response_conn: narrow(get("net/http.response", "conn")?)?,
        conn_rwc: narrow(get("net/http.conn", "rwc")?)?,
        pconn_conn: narrow(get("net/http.persistConn", "conn")?)?,
    })
}

/// grpc-go's offsets from members read by [`members`].
pub fn grpc_from(m: &Members) -> Result<GrpcOffsets, DwarfError> {
    let get = getter(m);
    Ok(GrpcOffsets {
        stream_id: narrow(get(GRPC_STREAM, "id")?)?,
        stream_ct: narrow(get(GRPC_STREAM, "ct")?)?,
        client_conn: narrow(get(GRPC_CLIENT, "conn")?)?,
        server_conn: narrow(get(GRPC_SERVER, "conn")?)?,
        // Not linked in without TLS credentials: then it is never met.
        syscallconn_conn: get(GRPC_SYSCALLCONN, "Conn").map_or(Ok(0), narrow)?,
    })
}

/// The TLS path's offsets from members read by [`members`].
pub fn tls_from(m: &Members) -> Result<TlsOffsets, DwarfError> {
    let get = getter(m);
    let fun = get("internal/abi.ITab", "Fun").or_else(|_| get("runtime.itab", "fun"))?;
    Ok(TlsOffsets {
        tls_conn: narrow(get("crypto/tls.Conn", "conn")?)?,
        itab_fun0: narrow(fun)?,
        tcpconn_fd: narrow(get("net.TCPConn", "conn")? + get("net.conn", "fd")?)?,
        netfd_sysfd: narrow(get("net.netFD", "pfd")? + get("internal/poll.FD", "Sysfd")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz seed with DWARF: a C object built by `gcc -c -g
    /// -gz=zlib` (compressed `.debug_info`), behind the target's mode byte.
    fn c_object_with_dwarf() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/golang/seed-5");
        let bytes = std::fs::read(path).expect("seed-5");
        bytes[1..].to_vec()
    }

    #[test]
    fn compressed_dwarf_without_go_types_reads_as_none_of_them() {
        let data = c_object_with_dwarf();
        let m = members(&mut std::io::Cursor::new(&data))
            .expect("reads")
            .expect("has DWARF");
        assert!(m.is_empty(), "{m:?}");
        assert!(matches!(tls_from(&m), Err(DwarfError::Missing(_))));
        assert!(matches!(http_from(&m), Err(DwarfError::Missing(_))));
        assert!(matches!(grpc_from(&m), Err(DwarfError::Missing(_))));
    }

    #[test]
    fn no_dwarf_and_not_elf_are_told_apart() {
        // The same object with its section names garbled: no .debug_info.
        let mut data = c_object_with_dwarf();
        let at = data
            .windows(11)
            .position(|w| w == b".debug_info")
            .expect("name");
        data[at + 1] = b'X';
        assert!(members(&mut std::io::Cursor::new(&data))
            .expect("reads")
            .is_none());
        assert!(matches!(
            members(&mut std::io::Cursor::new(b"not an ELF file")),
            Err(DwarfError::Elf(_))
        ));
    }
}
