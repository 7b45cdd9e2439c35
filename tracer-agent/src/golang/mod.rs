//! Go programs: what the Go toolchain leaves in every binary, stripped
//! or not, and what follows from it for tracing.
//!
//! - [`buildinfo`]: the Go version and modules (`.go.buildinfo`);
//! - [`pclntab`]: function addresses by name (`.gopclntab`);
//! - [`rets`]: the RET instructions of a function, where return probes
//!   go (uretprobes crash Go programs).
pub mod buildinfo;
pub mod pclntab;
pub mod rets;
