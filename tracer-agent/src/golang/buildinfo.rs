//! A Go binary's build info: the `.go.buildinfo` blob the Go linker
//! writes into every executable (`runtime/debug.ReadBuildInfo` reads the
//! same bytes). It survives `strip`, which is why it, and not the symbol
//! table, tells a Go program apart: Debian's Go binaries have no `.symtab`.
//!
//! Layout (Go's `debug/buildinfo`): 16-aligned, the magic
//! `"\xff Go buildinf:"`, a pointer size byte, a flags byte, then
//! - flags bit 1 set (Go ≥ 1.18): two varint-prefixed strings at offset
//!   32, the Go version and the module info;
//! - else (older): two pointers to Go string headers, which we do not
//!   follow: such a binary is Go of an unsupported (too old) version.
//!
//! Everything here reads hostile files: bounded reads, no panics.

use std::io::{Read, Seek, SeekFrom};

use object::{Object, ObjectSection, ObjectSegment};

/// `debug/buildinfo`'s magic.
const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Header: magic, pointer size, flags, and padding to 32 bytes.
const HEADER: usize = 32;
/// Flag bit: version and module info are inline strings.
const FLAG_INLINE: u8 = 2;
/// The most of the section we read: version and module info of real
/// binaries are a few KiB (kubectl's: 6 KiB).
const MAX_READ: u64 = 256 * 1024;
/// When there are no section headers, how much of the first writable
/// segment is searched for the magic.
const MAX_SCAN: u64 = 16 << 20;
/// Modules kept per binary.
const MAX_MODULES: usize = 512;

/// One module a binary was built with (`dep` lines; `mod` is the main).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    pub version: String,
}

/// What the build info says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// As written, e.g. `go1.23.4`; empty for the pre-1.18 format.
    pub go_version: String,
    /// The main module's path (`mod` line), if any.
    pub main: Option<Module>,
    /// Dependencies, in the binary's order (at most [`MAX_MODULES`]).
    pub deps: Vec<Module>,
}

impl BuildInfo {
    /// `(major, minor, patch)` of [`Self::go_version`], if it parses
    /// (`go1.27.3`, `go1.21rc2`, `devel go1.28-…`).
    pub fn version(&self) -> Option<GoVersion> {
        GoVersion::parse(&self.go_version)
    }

    /// The version of a dependency, by module path.
    pub fn dep(&self, path: &str) -> Option<&str> {
        self.deps
            .iter()
            .find(|m| m.path == path)
            .map(|m| m.version.as_str())
    }
}

/// A Go release, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub fn parse(s: &str) -> Option<Self> {
        let at = s.find("go1")?;
        let rest = &s[at + 2..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let mut it = rest[..end].split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildInfoError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ELF file we can read: {0}")]
    Elf(#[from] object::Error),
    #[error("malformed Go build info: {0}")]
    Malformed(&'static str),
}

/// The build info of the ELF file `f`: `Ok(None)` when it is not a Go
/// binary.
pub fn read<R: Read + Seek>(f: &mut R) -> Result<Option<BuildInfo>, BuildInfoError> {
    let Some(blob) = find_blob(f)? else {
        return Ok(None);
    };
    parse(&blob).map(Some)
}

/// The bytes from the magic on (at most [`MAX_READ`]).
fn find_blob<R: Read + Seek>(f: &mut R) -> Result<Option<Vec<u8>>, BuildInfoError> {
    let cache = object::ReadCache::new(&mut *f);
    let file = object::File::parse(&cache)?;
    if let Some(s) = file.section_by_name(".go.buildinfo") {
        if let Some((off, size)) = s.file_range() {
            drop(file);
            drop(cache);
            return read_at(f, off, size.min(MAX_READ)).map(Some);
        }
    }
    // A file with section headers but no such section is not Go: most
    // executables the agent sees, so no further reading. With no section
    // headers at all (some packers drop them), the blob is found by its
    // magic in a writable segment, 16-aligned.
    if file.sections().next().is_some() {
        return Ok(None);
    }
    let ranges: Vec<(u64, u64)> = file
        .segments()
        .filter(|s| {
            matches!(
                s.flags(),
                object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_W != 0
            )
        })
        .map(|s| s.file_range())
        .collect();
    drop(file);
    drop(cache);
    for (off, size) in ranges {
        let data = read_at(f, off, size.min(MAX_SCAN))?;
        if let Some(at) = (0..data.len().saturating_sub(HEADER))
            .step_by(16)
            .find(|&i| data[i..].starts_with(MAGIC))
        {
            let end = data.len().min(at + MAX_READ as usize);
            return Ok(Some(data[at..end].to_vec()));
        }
    }
    Ok(None)
}

fn read_at<R: Read + Seek>(f: &mut R, off: u64, len: u64) -> Result<Vec<u8>, BuildInfoError> {
    f.seek(SeekFrom::Start(off))?;
    let mut buf = Vec::new();
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Parses the blob (magic first).
pub fn parse(blob: &[u8]) -> Result<BuildInfo, BuildInfoError> {
    if blob.len() < HEADER || !blob.starts_with(MAGIC) {
        return Err(BuildInfoError::Malformed("no magic"));
    }
    let flags = blob[15];
    if flags & FLAG_INLINE == 0 {
        // Go < 1.18: pointers into the data segment. Still Go.
        return Ok(BuildInfo {
            go_version: String::new(),
            main: None,
            deps: Vec::new(),
        });
    }
    let mut rest = &blob[HEADER..];
    let version = varint_string(&mut rest).ok_or(BuildInfoError::Malformed("version"))?;
    let modinfo = varint_string(&mut rest).unwrap_or_default();
    let mut info = BuildInfo {
        go_version: String::from_utf8_lossy(version).into_owned(),
        main: None,
        deps: Vec::new(),
    };
    // The module info is framed by 16-byte sentinels.
    let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        modinfo
    };
    for line in modinfo.split(|b| *b == b'\n') {
        let mut cols = line.split(|b| *b == b'\t');
        let kind = cols.next().unwrap_or_default();
        let (Some(path), version) = (cols.next(), cols.next()) else {
            continue;
        };
        let m = Module {
            path: String::from_utf8_lossy(path).into_owned(),
            version: String::from_utf8_lossy(version.unwrap_or_default()).into_owned(),
        };
        match kind {
            b"mod" => info.main = Some(m),
            b"dep" if info.deps.len() < MAX_MODULES => info.deps.push(m),
            // A replaced module: the replacement's version is the real one.
            b"=>" => {
                if let Some(last) = info.deps.last_mut() {
                    last.version = m.version;
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// A uvarint-prefixed string, advancing `b`.
fn varint_string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len = 0u64;
    let mut shift = 0;
    let mut used = 0usize;
    for &byte in b.iter().take(10) {
        used += 1;
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let len = usize::try_from(len).ok()?;
            let s = b.get(used..used.checked_add(len)?)?;
            *b = &b[used + len..];
            return Some(s);
        }
        shift += 7;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(version: &str, modinfo: &str) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(8);
        b.push(FLAG_INLINE);
        b.resize(HEADER, 0);
        for s in [version, modinfo] {
            let mut n = s.len();
            while n >= 0x80 {
                b.push((n as u8) | 0x80);
                n >>= 7;
            }
            b.push(n as u8);
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    #[test]
    fn reads_version_and_modules() {
        let sentinel = "0123456789abcdef";
        let mi = format!(
            "{sentinel}path\tgo.etcd.io/etcd/v3\nmod\tgo.etcd.io/etcd/v3\t(devel)\t\n\
             dep\tgoogle.golang.org/grpc\tv1.58.3\th1:x=\n\
             dep\tgolang.org/x/net\tv0.1.0\th1:y=\n=>\t../net\tv0.2.0\t\n\
             build\tGOOS=linux\n{sentinel}"
        );
        // Longer than one varint byte.
        assert!(mi.len() > 128);
        let info = parse(&blob("go1.21.13", &mi)).expect("parses");
        assert_eq!(info.go_version, "go1.21.13");
        assert_eq!(
            info.version(),
            Some(GoVersion {
                major: 1,
                minor: 21,
                patch: 13
            })
        );
        assert_eq!(
            info.main.as_ref().map(|m| m.path.as_str()),
            Some("go.etcd.io/etcd/v3")
        );
        assert_eq!(info.dep("google.golang.org/grpc"), Some("v1.58.3"));
        assert_eq!(info.dep("golang.org/x/net"), Some("v0.2.0"));
    }

    #[test]
    fn versions_parse_and_order() {
        let v = |s| GoVersion::parse(s);
        assert!(v("go1.27.3") > v("go1.21.13"));
        assert_eq!(v("go1.22rc1").map(|g| (g.minor, g.patch)), Some((22, 0)));
        assert_eq!(v("devel go1.28-abcdef").map(|g| g.minor), Some(28));
        assert_eq!(v("gcc"), None);
    }

    #[test]
    fn hostile_blobs_are_errors_not_panics() {
        assert!(parse(b"").is_err());
        assert!(parse(&[0xff; 64]).is_err());
        let mut b = blob("go1.21", "");
        b.truncate(HEADER + 2);
        assert!(parse(&b).is_err());
        // A length running past the end, and a 10-byte varint.
        let mut b = blob("", "");
        b.truncate(HEADER);
        b.extend_from_slice(&[0xff; 12]);
        assert!(parse(&b).is_err());
        // Old format: Go, version unknown.
        let mut b = blob("", "");
        b[15] = 0;
        assert_eq!(parse(&b).expect("old").go_version, "");
    }

    #[test]
    fn the_test_binary_is_not_go() {
        let exe = std::env::current_exe().expect("exe");
        let mut f = std::fs::File::open(exe).expect("open");
        assert_eq!(read(&mut f).expect("reads"), None);
    }
}
