//! One OTel Resource per traced process.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::metadata::process::Process;

/// The host's name (`gethostname`), read once.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer and length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A stable id for one run of one process on this host: host, pid and the
/// process start time (so a reused pid is a new instance), formatted as a
/// UUID.
pub fn instance_id(host: &str, pid: u32, start_ticks: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut a = std::collections::hash_map::DefaultHasher::new();
    (host, pid, start_ticks, "a").hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (host, pid, start_ticks, "b").hash(&mut b);
    let (x, y) = (a.finish(), b.finish());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xffff,
        y >> 48,
        y & 0xffff_ffff_ffff
    )
}

/// The Resource of a process. Command lines are not included: they can
/// carry secrets.
pub fn resource_for(p: &Process, host: &str) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.name", p.service_name.clone()),
        KeyValue::new(
            "service.instance.id",
            instance_id(host, p.pid, p.start_ticks),
        ),
        KeyValue::new("process.pid", i64::from(p.pid)),
        KeyValue::new("process.executable.name", p.exe_name.clone()),
        KeyValue::new("host.name", host.to_owned()),
        KeyValue::new("telemetry.distro.name", "tracer"),
        KeyValue::new("telemetry.distro.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(path) = &p.exe_path {
        attrs.push(KeyValue::new(
            "process.executable.path",
            path.display().to_string(),
        ));
    }
    if let Some(id) = &p.container_id {
        attrs.push(KeyValue::new("container.id", id.clone()));
    }
    Resource::builder_empty().with_attributes(attrs).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_uuid_shaped_and_distinct() {
        let a = instance_id("h", 1, 100);
        assert_eq!(a.len(), 36);
        assert_ne!(a, instance_id("h", 1, 101));
        assert_eq!(a, instance_id("h", 1, 100));
    }
}
