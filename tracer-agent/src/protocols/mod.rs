//! Protocol parsers: pure functions of bytes, no aya or I/O in here, so they
//! can be unit-tested on split, truncated and malformed input.
pub mod http1;
pub mod propagation;
pub mod traceparent;
