//! Go programs: what the Go toolchain leaves in every binary, stripped
//! or not, and what follows from it for tracing.
//!
//! - [`buildinfo`]: the Go version and modules (`.go.buildinfo`).
pub mod buildinfo;
