//! OTLP exporter configuration: flags first, then the signal-specific
//! `OTEL_EXPORTER_OTLP_TRACES_*` variables, then the general
//! `OTEL_EXPORTER_OTLP_*` ones, then defaults (the OTel precedence rules).

use std::{path::PathBuf, time::Duration};

use thiserror::Error;

use crate::cli::Args;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// Full URL: for HTTP it includes the `/v1/traces` path.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub queue_size: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unsupported OTLP protocol {0:?} (use grpc or http/protobuf)")]
    Protocol(String),
    #[error("invalid OTLP timeout {0:?} (examples: 10s, 500ms, 10000)")]
    Timeout(String),
    #[error("unsupported OTLP compression {0:?} (use gzip or none)")]
    Compression(String),
    #[error("invalid OTLP header {0:?} (expected KEY=VALUE)")]
    Header(String),
    #[error("a client certificate needs a client key, and the other way round")]
    ClientIdentity,
    #[error("OTLP/HTTP over TLS is not supported yet ({0}); use --otlp-protocol grpc for TLS")]
    HttpsUnsupported(String),
}

pub fn parse_protocol(s: &str) -> Result<Protocol, ConfigError> {
    match s.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
        other => Err(ConfigError::Protocol(other.to_owned())),
    }
}

/// `10s`, `500ms`, `2m`, or a bare number of milliseconds (the env format).
pub fn parse_timeout(s: &str) -> Result<Duration, ConfigError> {
    let t = s.trim();
    let err = || ConfigError::Timeout(s.to_owned());
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "ms"),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(err()),
    }
}

fn parse_compression(s: &str) -> Result<bool, ConfigError> {
    match s.trim() {
        "gzip" => Ok(true),
        "none" | "" => Ok(false),
        other => Err(ConfigError::Compression(other.to_owned())),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k1=v1,k2=v2` with percent-encoded values (the env format).
fn parse_env_headers(s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ConfigError::Header(kv.to_owned()))?;
            Ok((percent_decode(k.trim()), percent_decode(v.trim())))
        })
        .collect()
}

pub fn parse_flag_header(s: &str) -> Result<(String, String), ConfigError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| ConfigError::Header(s.to_owned()))?;
    if k.trim().is_empty() {
        return Err(ConfigError::Header(s.to_owned()));
    }
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

fn with_scheme(endpoint: &str, insecure: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    }
}

/// A base URL gets the traces path for OTLP/HTTP (`http://c:4318` ->
/// `http://c:4318/v1/traces`); a URL that already ends in it is kept.
fn http_traces_url(base: &str) -> String {
    let b = base.trim_end_matches('/');
    if b.ends_with("/v1/traces") {
        b.to_owned()
    } else {
        format!("{b}/v1/traces")
    }
}

/// Resolves the exporter configuration; `None` when OTLP export is off
/// (no endpoint and no protocol given anywhere).
pub fn resolve(
    args: &Args,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let var = |signal: &str, general: &str| env(signal).or_else(|| env(general));
    let traces_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|s| !s.is_empty());
    let general_endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|s| !s.is_empty());
    let protocol_src = args.otlp_protocol.clone().or_else(|| {
        var(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        )
    });
    if args.otlp_endpoint.is_none()
        && traces_endpoint.is_none()
        && general_endpoint.is_none()
        && args.otlp_protocol.is_none()
    {
        return Ok(None);
    }
    let protocol = match protocol_src {
        Some(p) => parse_protocol(&p)?,
        None => Protocol::Grpc,
    };
    let insecure = args.otlp_insecure
        || var(
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
            "OTEL_EXPORTER_OTLP_INSECURE",
        )
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = match (&args.otlp_endpoint, traces_endpoint, general_endpoint) {
        (Some(flag), _, _) => {
            let url = with_scheme(flag, insecure || protocol == Protocol::HttpProtobuf);
            match protocol {
                Protocol::HttpProtobuf => http_traces_url(&url),
                Protocol::Grpc => url,
            }
        }
        // The signal-specific variable is used as-is.
        (None, Some(t), _) => with_scheme(&t, true),
        (None, None, Some(g)) => {
            let url = with_scheme(&g, true);
            match protocol {
                Protocol::HttpProtobuf => http_traces_url(&url),
                Protocol::Grpc => url,
            }
        }
        (None, None, None) => match protocol {
            Protocol::Grpc => "http://localhost:4317".to_owned(),
            Protocol::HttpProtobuf => "http://localhost:4318/v1/traces".to_owned(),
        },
    };
    let mut headers = match var(
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ) {
        Some(h) => parse_env_headers(&h)?,
        None => Vec::new(),
    };
    for h in &args.otlp_headers {
        let (k, v) = parse_flag_header(h)?;
        // A flag overrides the same header from the environment.
        headers.retain(|(ek, _)| !ek.eq_ignore_ascii_case(&k));
        headers.push((k, v));
    }
    let timeout = match &args.otlp_timeout {
        Some(t) => parse_timeout(t)?,
        None => match var(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            Some(t) => parse_timeout(&t)?,
            None => Duration::from_secs(10),
        },
    };
    let gzip = match &args.otlp_compression {
        Some(c) => parse_compression(c)?,
        None => match var(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) {
            Some(c) => parse_compression(&c)?,
            None => false,
        },
    };
    let path = |flag: &Option<PathBuf>, signal: &str, general: &str| {
        flag.clone()
            .or_else(|| var(signal, general).map(PathBuf::from))
    };
    let ca_file = path(
        &args.otlp_ca_file,
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    );
    let client_cert = path(
        &args.otlp_client_cert,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    let client_key = path(
        &args.otlp_client_key,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    );
    if client_cert.is_some() != client_key.is_some() {
        return Err(ConfigError::ClientIdentity);
    }
    if protocol == Protocol::HttpProtobuf && endpoint.starts_with("https://") {
        return Err(ConfigError::HttpsUnsupported(endpoint));
    }
    Ok(Some(OtlpConfig {
        protocol,
        endpoint,
        headers,
        timeout,
        gzip,
        ca_file,
        client_cert,
        client_key,
        batch_size: args.otlp_batch_size.max(1),
        batch_timeout: parse_timeout(&args.otlp_batch_timeout)?,
        queue_size: args.otlp_queue_size.max(1),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser as _;

    use super::*;

    fn resolve_with(
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Option<OtlpConfig>, ConfigError> {
        let mut argv = vec!["tracer"];
        argv.extend_from_slice(flags);
        let args = Args::try_parse_from(argv).expect("flags");
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve(&args, |k| env.get(k).cloned())
    }

    #[test]
    fn off_without_endpoint_or_protocol() {
        assert_eq!(resolve_with(&[], &[]), Ok(None));
    }

    #[test]
    fn general_env_alone_configures_http() {
        let c = resolve_with(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .expect("valid")
        .expect("enabled");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://127.0.0.1:4318/v1/traces");
    }

    #[test]
    fn precedence_flag_over_traces_env_over_general_env() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ];
        let c = resolve_with(&[], &env).expect("valid").expect("on");
        assert_eq!(c.endpoint, "http://traces:4317");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert!(c.gzip);
        assert_eq!(
            c.headers,
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x y".to_owned())
            ]
        );
        let c = resolve_with(
            &[
                "--otlp-endpoint",
                "http://flag:4317",
                "--otlp-header",
                "a=2",
                "--otlp-timeout",
                "3s",
                "--otlp-compression",
                "none",
            ],
            &env,
        )
        .expect("valid")
        .expect("on");
        assert_eq!(c.endpoint, "http://flag:4317");
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert!(!c.gzip);
        assert!(c.headers.contains(&("a".to_owned(), "2".to_owned())));
        assert!(!c.headers.contains(&("a".to_owned(), "1".to_owned())));
    }

    #[test]
    fn protocol_alone_uses_default_endpoints() {
        let g = resolve_with(&["--otlp-protocol", "grpc"], &[])
            .expect("ok")
            .expect("on");
        assert_eq!(g.endpoint, "http://localhost:4317");
        let h = resolve_with(&["--otlp-protocol", "http/protobuf"], &[])
            .expect("ok")
            .expect("on");
        assert_eq!(h.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(matches!(
            resolve_with(&["--otlp-protocol", "http/json"], &[]),
            Err(ConfigError::Protocol(_))
        ));
        assert!(matches!(
            resolve_with(&["--otlp-endpoint", "x:1", "--otlp-timeout", "soon"], &[]),
            Err(ConfigError::Timeout(_))
        ));
        assert!(matches!(
            resolve_with(&["--otlp-endpoint", "x:1", "--otlp-client-cert", "/c"], &[]),
            Err(ConfigError::ClientIdentity)
        ));
        assert!(matches!(
            resolve_with(
                &[
                    "--otlp-protocol",
                    "http/protobuf",
                    "--otlp-endpoint",
                    "https://c:4318"
                ],
                &[]
            ),
            Err(ConfigError::HttpsUnsupported(_))
        ));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn scheme_defaults() {
        let c = resolve_with(&["--otlp-endpoint", "collector:4317"], &[])
            .expect("ok")
            .expect("on");
        assert_eq!(c.endpoint, "https://collector:4317");
        let c = resolve_with(
            &["--otlp-endpoint", "collector:4317", "--otlp-insecure"],
            &[],
        )
        .expect("ok")
        .expect("on");
        assert_eq!(c.endpoint, "http://collector:4317");
    }
}
