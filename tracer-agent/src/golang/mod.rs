//! Go programs: what the Go toolchain leaves in every binary, stripped
//! or not, and what follows from it for tracing.
//!
//! - [`buildinfo`]: the Go version and modules (`.go.buildinfo`);
//! - [`pclntab`]: function addresses by name (`.gopclntab`);
//! - [`rets`]: the RET instructions of a function, where return probes
//!   go (uretprobes crash Go programs);
//! - [`offsets`] and [`dwarf`]: struct field offsets the probes follow,
//!   from DWARF when present, else from a table by Go version.
pub mod buildinfo;
pub mod dwarf;
pub mod offsets;
pub mod pclntab;
pub mod rets;
