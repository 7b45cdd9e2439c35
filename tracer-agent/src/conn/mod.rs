//! Connections: [`session`] (one connection's sequence check and protocol
//! state) and [`table`] (all of them, bounded). What is known about a
//! connection ([`crate::metadata::conn`]) sits lower, with the other
//! metadata, since protocols, trace and spans read it too.
pub mod session;
pub mod table;
