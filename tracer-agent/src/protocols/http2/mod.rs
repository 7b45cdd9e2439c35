//! HTTP/2 (RFC 9113) and gRPC over it: [`frame`] frames each direction
//! across syscalls and gaps, [`hpack`] decodes header blocks (tolerating
//! a mid-connection join), [`headers`] keeps the fields spans need, and
//! [`stitch`] pairs each stream's request and response by stream id.
pub mod frame;
pub mod headers;
pub mod hpack;
pub mod stitch;

pub use stitch::Http2;
