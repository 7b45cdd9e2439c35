//! Finding the files to probe: which files a process maps
//! (`/proc/PID/maps`, reached through `/proc/PID/root` for other mount
//! namespaces), the system library directories, and the re-scans an exec
//! calls for while the dynamic loader maps libraries.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use super::registry::FileKey;

/// Where distributions keep the system libraries.
pub const SYSTEM_LIB_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
];

/// After an exec, when to look at the process's libraries again (the
/// dynamic loader maps them right after the exec returns).
/// Two are enough: libraries loaded later come through `dlopen`, which is
/// hooked, and each re-scan costs a maps read (hosts that exec thousands
/// of processes a second pay it per exec).
pub const EXEC_RESCANS: [Duration; 2] = [Duration::from_millis(5), Duration::from_millis(100)];
/// Pending re-scans kept at once; beyond it new ones are dropped (counted).
pub const MAX_PENDING_SCANS: usize = 4096;

/// A file mapped by a process, from `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub key: FileKey,
    pub path: String,
}

/// Parses `/proc/PID/maps` text: file-backed mappings, once per file.
pub fn parse_maps(text: &str) -> Vec<Mapped> {
    let mut out: Vec<Mapped> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_range), Some(_perms), Some(_off), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path: String = f.collect::<Vec<_>>().join(" ");
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
        ) else {
            continue;
        };
        if inode == 0 {
            continue;
        }
        let key = (libc::makedev(major, minor), inode);
        if !out.iter().any(|m| m.key == key) {
            out.push(Mapped { key, path });
        }
    }
    out
}

/// What "once per executable" is keyed by: the file name cut to the
/// kernel's command-name length, so a path read from /proc and the command
/// name of a process already gone name the same program.
pub fn exe_key(exe: &str) -> String {
    basename(exe).chars().take(15).collect()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// An OpenSSL (or BoringSSL) shared library by its file name.
pub fn is_libssl(path: &str) -> bool {
    basename(path).starts_with("libssl.so")
}

pub fn is_libc(path: &str) -> bool {
    basename(path).starts_with("libc.so")
}

pub fn file_key(path: &Path) -> Option<FileKey> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.dev(), md.ino()))
}

/// Processes to scan again, by when.
#[derive(Debug, Default)]
pub struct RescanQueue {
    pending: BTreeMap<Instant, Vec<u32>>,
    len: usize,
}

impl RescanQueue {
    /// Schedules a scan of `pid` at `at`; false when the queue is full.
    pub fn schedule(&mut self, pid: u32, at: Instant) -> bool {
        if self.len >= MAX_PENDING_SCANS {
            return false;
        }
        self.pending.entry(at).or_default().push(pid);
        self.len += 1;
        true
    }

    /// Takes the processes whose scan is due.
    pub fn take_due(&mut self, now: Instant, out: &mut Vec<u32>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > now {
                break;
            }
            let pids = entry.remove();
            self.len = self.len.saturating_sub(pids.len());
            out.extend(pids);
        }
    }

    /// When the next scan is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_each_file_once_with_its_device() {
        let text = "\
7f00-7f10 r--p 00000000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10-7f20 r-xp 00010000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f20-7f30 rw-p 00000000 00:00 0 [heap]
7f30-7f40 r-xp 00000000 08:02 99 /opt/my app/bin (deleted)
7f40-7f50 r-xp 00000000 08:02 77 /opt/my app/lib/libc.so.6
garbage line
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].key, (libc::makedev(0xfd, 1), 1234));
        assert!(is_libssl(&m[0].path));
        assert_eq!(m[1].path, "/opt/my app/lib/libc.so.6");
        assert!(is_libc(&m[1].path));
        assert!(!is_libssl("/usr/lib/libssl3.so"));
        assert!(is_libssl("/usr/lib/libssl.so.1.1"));
    }

    #[test]
    fn rescans_come_due_in_order_and_are_bounded() {
        let mut q = RescanQueue::default();
        let t0 = Instant::now();
        assert!(q.schedule(1, t0 + Duration::from_millis(10)));
        assert!(q.schedule(2, t0));
        let mut out = Vec::new();
        q.take_due(t0, &mut out);
        assert_eq!(out, [2]);
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(10)));
        for i in 0..MAX_PENDING_SCANS {
            q.schedule(i as u32, t0);
        }
        assert!(!q.schedule(9, t0));
    }

    #[test]
    fn an_executable_is_the_same_by_path_or_command_name() {
        assert_eq!(exe_key("/usr/bin/hey"), exe_key("hey"));
        assert_eq!(
            exe_key("/opt/app/bin/a-very-long-program-name"),
            exe_key("a-very-long-pro")
        );
    }
}
