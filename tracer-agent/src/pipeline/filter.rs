//! Which connections are followed: the user's filters, and the verdict
//! sent back to the kernel for those that are not (so it stops copying
//! them). The kernel side sits behind [`KernelControl`], which keeps the
//! pipeline free of aya and buildable in a unit test.

use std::net::SocketAddr;

/// Which connections the user asked for (empty = all).
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub exes: Vec<String>,
    pub ports: Vec<u16>,
}

impl Filters {
    /// Whether a process is wanted, by executable name or comm.
    pub fn exe_matches(&self, names: &[&str]) -> bool {
        self.exes.is_empty() || self.exes.iter().any(|e| names.contains(&e.as_str()))
    }

    /// Whether a connection is wanted, by its local or peer port.
    pub fn port_matches(&self, local: Option<SocketAddr>, peer: Option<SocketAddr>) -> bool {
        self.ports.is_empty()
            || [local, peer]
                .iter()
                .flatten()
                .any(|a| self.ports.contains(&a.port()))
    }
}

/// What the pipeline writes back into the kernel.
pub trait KernelControl {
    /// Stop copying connection `conn_id` on (tgid, fd).
    fn ignore_conn(&mut self, tgid: u32, fd: u32, conn_id: u64);
    /// The process exited: its connection entries can go.
    fn forget_conn(&mut self, tgid: u32, fd: u32);
    /// Whether the kernel may key parent links (its injection context) by
    /// the threads of `tgid`: false for Go.
    fn thread_linking(&mut self, tgid: u32, allowed: bool);
}

/// No kernel (replays, tests): what would have been written is remembered.
#[derive(Debug, Default)]
pub struct NoKernel {
    pub ignored: Vec<(u32, u32, u64)>,
    /// Processes whose threads may not key links.
    pub unlinked: Vec<u32>,
}

impl KernelControl for NoKernel {
    fn ignore_conn(&mut self, tgid: u32, fd: u32, conn_id: u64) {
        if self.ignored.len() < 4096 {
            self.ignored.push((tgid, fd, conn_id));
        }
    }

    fn forget_conn(&mut self, _tgid: u32, _fd: u32) {}

    fn thread_linking(&mut self, tgid: u32, allowed: bool) {
        self.unlinked.retain(|t| *t != tgid);
        if !allowed && self.unlinked.len() < 4096 {
            self.unlinked.push(tgid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filters_take_everything() {
        let f = Filters::default();
        assert!(f.exe_matches(&["x"]));
        assert!(f.port_matches(None, None));
        let f = Filters {
            exes: vec!["nginx".into()],
            ports: vec![80],
        };
        assert!(f.exe_matches(&["curl", "nginx"]));
        assert!(!f.exe_matches(&["curl"]));
        let a: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        assert!(f.port_matches(None, Some(a)));
        assert!(!f.port_matches(None, None));
    }
}
