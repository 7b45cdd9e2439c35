//! Span export over OTLP (gRPC or HTTP/protobuf). [`config`] resolves
//! flags and the standard `OTEL_EXPORTER_OTLP_*` variables (pure,
//! unit-tested); [`resource`] builds one OTel Resource per traced process;
//! [`exporter`] is the export task.
pub mod config;
pub mod exporter;
pub mod resource;
