//! Setting up context injection: the SERVER-context reader in the capture
//! path's tail-call table, the `sk_msg` injector on the client-socket
//! sockhash, and the `sock_ops` program on a cgroup v2 directory that fills
//! that sockhash.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    maps::SockHash,
    programs::{CgroupAttachMode, SkMsg, SockOps},
    Ebpf,
};
use tracer_common::{
    SockKey, MAP_SOCKS, MAP_TAIL_PROGS, MAP_TLS_TAIL_PROGS, PROG_INJECT, PROG_SERVER_CTX,
    PROG_SOCK_OPS, PROG_TLS_SERVER_CTX, TAIL_SERVER_CTX,
};

use super::{program, tails, BpfError};

/// The first cgroup v2 mount point in a mountinfo text (field 5 is the
/// mount point; the filesystem type follows the ` - ` separator).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = pre.split_whitespace().nth(4)?;
        // mountinfo escapes spaces and the like as octal (\040).
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// Undoes mountinfo's `\ooo` escapes; anything else (not octal, above
/// 255, cut short) is kept as it is.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let digit = |i: usize| {
        b.get(i)
            .filter(|c| (b'0'..=b'7').contains(c))
            .map(|c| u32::from(c - b'0'))
    };
    let escape = |i: usize| -> Option<u8> {
        if b[i] != b'\\' {
            return None;
        }
        u8::try_from(digit(i + 1)? * 64 + digit(i + 2)? * 8 + digit(i + 3)?).ok()
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match escape(i) {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which cgroup directory to attach to: the one given, else the cgroup v2
/// mount.
pub fn cgroup_dir(given: Option<&Path>) -> Result<PathBuf, BpfError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| BpfError::Cgroup("/proc/self/mountinfo".into(), e))?;
    cgroup2_mount(&info).ok_or(BpfError::NoCgroup2)
}

/// Whether this kernel can run the injection programs at all, and if not,
/// why.
pub fn supported() -> Result<(), BpfError> {
    tails::bpf_loop_supported()
}

/// Loads and attaches the injection programs; their links live as long as
/// `ebpf`. Every program is loaded (verified) before anything is
/// attached, and a failure part-way detaches what was attached, so the
/// kernel is left as it was.
pub fn attach(ebpf: &mut Ebpf, cgroup: &Path) -> Result<(), BpfError> {
    supported()?;
    for name in [PROG_SERVER_CTX, PROG_TLS_SERVER_CTX] {
        tails::load(ebpf, name)?;
    }
    let inject: &mut SkMsg = program(ebpf, PROG_INJECT)?;
    inject.load().map_err(BpfError::program(PROG_INJECT))?;
    let ops: &mut SockOps = program(ebpf, PROG_SOCK_OPS)?;
    ops.load().map_err(BpfError::program(PROG_SOCK_OPS))?;
    let dir = File::open(cgroup).map_err(|e| BpfError::Cgroup(cgroup.to_path_buf(), e))?;

    let res = attach_loaded(ebpf, dir);
    if res.is_err() {
        // Nothing may stay half-attached: the tail calls would produce
        // SERVER contexts for an injector that is not there.
        for map in [MAP_TAIL_PROGS, MAP_TLS_TAIL_PROGS] {
            tails::clear(ebpf, map, TAIL_SERVER_CTX);
        }
    }
    res
}

fn attach_loaded(ebpf: &mut Ebpf, cgroup: File) -> Result<(), BpfError> {
    // 1. The SERVER-context reader, tail-called by the capture hook, and
    // its kprobe-type twin for the TLS return probe.
    tails::set(ebpf, PROG_SERVER_CTX, MAP_TAIL_PROGS, TAIL_SERVER_CTX)?;
    tails::set(
        ebpf,
        PROG_TLS_SERVER_CTX,
        MAP_TLS_TAIL_PROGS,
        TAIL_SERVER_CTX,
    )?;

    // 2. The injector on the sockhash (before sockets can enter it).
    let socks: SockHash<_, SockKey> =
        SockHash::try_from(ebpf.map(MAP_SOCKS).ok_or(BpfError::MissingMap(MAP_SOCKS))?)
            .map_err(BpfError::map(MAP_SOCKS))?;
    let socks_fd = socks.fd().try_clone().map_err(BpfError::Fd)?;
    let inject: &mut SkMsg = program(ebpf, PROG_INJECT)?;
    inject
        .attach(&socks_fd)
        .map_err(BpfError::program(PROG_INJECT))?;

    // 3. sock_ops on the cgroup: client sockets enter the sockhash. A BPF
    // link (kernel >= 5.7) coexists with other programs on the cgroup.
    let ops: &mut SockOps = program(ebpf, PROG_SOCK_OPS)?;
    ops.attach(cgroup, CgroupAttachMode::Single)
        .map_err(BpfError::program(PROG_SOCK_OPS))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
35 30 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
36 30 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let escaped = "35 30 0:30 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(escaped), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            cgroup2_mount("22 1 0:21 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        assert_eq!(cgroup2_mount("garbage"), None);
        // Not octal, out of range, cut short: kept as they are.
        assert_eq!(unescape_octal("a\\999b\\777\\04"), "a\\999b\\777\\04");
    }
}
