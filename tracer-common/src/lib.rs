//! Wire types shared by the kernel programs (`tracer-ebpf`) and the agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding so that both sides
//! agree on the layout byte for byte; no `bool` or Rust enum ever crosses the
//! boundary (a kernel bug or a stale object must not be able to produce an
//! invalid enum value in userspace). Every event starts with a `kind` byte so
//! the agent can dispatch and length-check before it reads anything else.
#![no_std]

pub mod config;
pub mod conn;
pub mod context;
pub mod event;
pub mod golang;
pub mod maps;
pub mod stats;

pub use config::*;
pub use conn::*;
pub use context::*;
pub use event::*;
pub use golang::*;
pub use maps::*;
pub use stats::*;
