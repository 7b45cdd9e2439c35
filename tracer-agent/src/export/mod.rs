//! Where spans go: a bounded [`sink`] per consumer, the local [`stdout`]
//! output, and [`otlp`] export.
pub mod otlp;
pub mod sink;
pub mod stdout;
