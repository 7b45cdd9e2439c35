//! Sampling: which local traces are exported. [`sampler`] decides at the
//! head, where ids are chosen (the OpenTelemetry samplers and route
//! rules), and [`tail`] keeps a dropped trace anyway when one of its spans
//! failed or was slow. RED metrics are computed before either, so they
//! count every request.
pub mod sampler;
pub mod tail;

pub use sampler::{Sampler, SamplerError};
pub use tail::{LocalTraces, TailConfig};
