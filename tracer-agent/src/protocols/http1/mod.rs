//! HTTP/1.x: [`reader`] frames one direction's bytes into message heads
//! and ends; [`stitch`] pairs requests with responses in order (what
//! HTTP/1.1 pipelining guarantees) into records.
pub mod reader;
pub mod stitch;

pub use stitch::Http1;
