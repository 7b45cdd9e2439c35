//! Where spans go: a bounded [`sink`] per consumer, the local [`stdout`]
//! output (lines, JSON, or [`tree`] waterfalls), and [`otlp`] export.
pub mod otlp;
pub mod sink;
pub mod stdout;
pub mod tree;
