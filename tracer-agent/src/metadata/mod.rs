//! What the agent learns about traced processes and sockets from the host
//! (`/proc`, borrowed fds), as opposed to what the kernel programs report.
pub mod conn;
pub mod container;
pub mod kubernetes;
pub mod process;
pub mod resource;
pub mod runtime;
pub mod sockets;

/// Whether the host may be asked about the processes and sockets that
/// events name. Live tracing asks; replaying a recording must not (its
/// pids and fds belong to processes long gone, or to unrelated ones that
/// reuse the numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostView {
    #[default]
    Live,
    Offline,
}
