//! Span export over OTLP. `config` resolves flags and the standard
//! `OTEL_EXPORTER_OTLP_*` variables (pure, unit-tested); `resource` builds
//! one OTel Resource per traced process; `otlp` is the exporter task.
pub mod config;
pub mod otlp;
pub mod resource;
