//! Connections: [`session`] (one connection's protocol state),
//! [`segments`] (a data event's captured pieces and gaps) and [`table`]
//! (all of them, bounded). What is known about a
//! connection ([`crate::metadata::conn`]) sits lower, with the other
//! metadata, since protocols, trace and spans read it too.
pub mod segments;
pub mod session;
pub mod table;
