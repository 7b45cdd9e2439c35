//! The parsers of kernel-provided text and of recordings, on arbitrary
//! bytes: `/proc/PID/maps`, `/proc/PID/cgroup`, `/proc/self/mountinfo`
//! and the `--record` file format.
//!
//! Checked: no panic, and what each returns is consistent with its input
//! (bounded by it, and of the promised shape).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_agent::{
    bpf::{injection::cgroup2_mount, recording},
    metadata::container::container_id_from_cgroup,
    uprobes::discover::parse_maps,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let maps = parse_maps(&text);
    assert!(maps.len() <= text.lines().count());
    for (i, m) in maps.iter().enumerate() {
        assert!(m.path.starts_with('/'));
        assert!(!m.path.ends_with(" (deleted)"));
        assert!(m.path.len() <= text.len());
        assert!(
            maps[..i].iter().all(|o| o.key != m.key),
            "file listed twice"
        );
    }

    if let Some(id) = container_id_from_cgroup(&text) {
        assert_eq!(id.len(), 64);
        assert!(id
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }

    if let Some(mount) = cgroup2_mount(&text) {
        // Unescaping only ever shortens (`\ooo` is one byte), though an
        // invalid UTF-8 result is widened by replacement characters.
        assert!(mount.as_os_str().len() <= 3 * text.len());
    }

    if let Ok(recs) = recording::parse(data) {
        let total: usize = recs.iter().map(|r| 12 + r.bytes.len()).sum();
        assert_eq!(total + recording::MAGIC.len(), data.len());
        assert!(recs.iter().all(|r| r.bytes.len() <= recording::MAX_RECORD));
    }
});
