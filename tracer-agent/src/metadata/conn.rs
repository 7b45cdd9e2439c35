//! Static facts about a connection, from the kernel's open event and the
//! socket itself.

use std::{net::SocketAddr, sync::Arc};

use tracer_common::ROLE_SERVER;

/// Which end of the connection the traced process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    /// The role encoded in the kernel's wire types.
    pub fn from_wire(role: u8) -> Self {
        if role == ROLE_SERVER {
            Self::Server
        } else {
            Self::Client
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// The kernel's id of this connection (its open time), unique while it
    /// lives.
    pub conn_id: u64,
    pub tgid: u32,
    pub fd: u32,
    pub role: Role,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// `peer`'s IP as text, formatted once per connection.
    pub peer_ip: Option<Arc<str>>,
    /// Plaintext from a TLS library (HTTPS).
    pub tls: bool,
    /// The socket's inode, when the agent could look: fds that share it
    /// (dup'ed, inherited) are one connection.
    pub socket: Option<u64>,
    /// First seen by its bytes rather than at accept/connect: it was
    /// already running when the agent joined it.
    pub joined: bool,
    /// Whether the process serves one request per OS thread at a time, so
    /// the thread names the task (false for Go: see `metadata::runtime`).
    pub thread_tasks: bool,
}

impl ConnMeta {
    pub fn new(
        conn_id: u64,
        tgid: u32,
        fd: u32,
        role: Role,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> Self {
        Self {
            conn_id,
            tgid,
            fd,
            role,
            local,
            peer,
            peer_ip: peer.map(|p| Arc::from(p.ip().to_string())),
            tls: false,
            socket: None,
            joined: false,
            thread_tasks: true,
        }
    }
}
