//! Reading spans for the checker. One JSON document per line, in either
//! of two shapes, told apart per line:
//!
//! - a span of `tracer --output json`: `trace_id`, `span_id`,
//!   `parent_span_id` (null for a root), `start_time_unix_nano`,
//!   `end_time_unix_nano`, `name`, `resource."service.name"`;
//! - an OTLP/JSON `ExportTraceServiceRequest` (what the Collector's file
//!   exporter writes, one per line): `resourceSpans[].scopeSpans[].spans[]`
//!   with hex `traceId`/`spanId`/`parentSpanId` and the times as decimal
//!   strings or numbers; `service.name` from the resource's attributes.
//!
//! Lines that are neither are counted as unreadable; spans without a
//! usable trace or span id are counted as skipped.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
};

use serde_json::Value;
use thiserror::Error;

use super::CheckedSpan;

/// Longest line read; a longer one is counted as unreadable.
pub const MAX_LINE: u64 = 64 << 20;

#[derive(Debug, Error)]
pub enum CheckError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the files held.
#[derive(Debug, Default)]
pub struct Input {
    pub spans: Vec<CheckedSpan>,
    /// Lines that were not JSON of either shape.
    pub unreadable_lines: u64,
    /// Spans without a trace or span id of the right form.
    pub skipped_spans: u64,
}

/// Reads every span of every file (`-` is stdin).
pub fn read_spans(paths: &[PathBuf]) -> Result<Input, CheckError> {
    let mut input = Input::default();
    for path in paths {
        let err = |source| CheckError::Read {
            path: path.clone(),
            source,
        };
        let reader: Box<dyn std::io::Read> = if path == Path::new("-") {
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(path).map_err(err)?)
        };
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .map_err(err)?;
            if n == 0 {
                break;
            }
            if n as u64 == MAX_LINE && line.last() != Some(&b'\n') {
                // Skip the rest of an over-long line.
                input.unreadable_lines += 1;
                let mut rest = Vec::new();
                reader.read_until(b'\n', &mut rest).map_err(err)?;
                continue;
            }
            parse_line(&line, &mut input);
        }
    }
    Ok(input)
}

/// Adds the spans of one line.
pub fn parse_line(line: &[u8], input: &mut Input) {
    let text = line.trim_ascii();
    if text.is_empty() {
        return;
    }
    let Ok(doc) = serde_json::from_slice::<Value>(text) else {
        input.unreadable_lines += 1;
        return;
    };
    if let Some(rs) = doc.get("resourceSpans").and_then(Value::as_array) {
        for r in rs {
            otlp_resource_spans(r, input);
        }
    } else if doc.get("span_id").is_some() {
        match own_span(&doc) {
            Some(s) => input.spans.push(s),
            None => input.skipped_spans += 1,
        }
    } else {
        input.unreadable_lines += 1;
    }
}

/// A hex id of `len` hex digits that is not all zeros, lowercased.
fn hex_id(v: Option<&Value>, len: usize) -> Option<String> {
    let s = v?.as_str()?;
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0'))
        .then(|| s.to_ascii_lowercase())
}

/// A parent id: absent, null, empty or all zeros mean none.
fn parent_id(v: Option<&Value>) -> Option<String> {
    hex_id(v, 16)
}

/// A time in ns given as a number or a decimal string (OTLP/JSON).
fn time_ns(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Where each shape keeps a span's fields.
struct Keys {
    trace: &'static str,
    span: &'static str,
    parent: &'static str,
    start: &'static str,
    end: &'static str,
}

const OWN: Keys = Keys {
    trace: "trace_id",
    span: "span_id",
    parent: "parent_span_id",
    start: "start_time_unix_nano",
    end: "end_time_unix_nano",
};

const OTLP: Keys = Keys {
    trace: "traceId",
    span: "spanId",
    parent: "parentSpanId",
    start: "startTimeUnixNano",
    end: "endTimeUnixNano",
};

fn span_of(doc: &Value, k: &Keys, service: String) -> Option<CheckedSpan> {
    Some(CheckedSpan {
        trace_id: hex_id(doc.get(k.trace), 32)?,
        span_id: hex_id(doc.get(k.span), 16)?,
        parent_id: parent_id(doc.get(k.parent)),
        name: doc
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        service,
        start_ns: time_ns(doc.get(k.start))?,
        end_ns: time_ns(doc.get(k.end))?,
    })
}

fn own_span(doc: &Value) -> Option<CheckedSpan> {
    let service = doc
        .get("resource")
        .and_then(|r| r.get("service.name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    span_of(doc, &OWN, service)
}

/// `service.name` among OTLP/JSON `KeyValue`s.
fn otlp_service(resource: Option<&Value>) -> String {
    resource
        .and_then(|r| r.get("attributes"))
        .and_then(Value::as_array)
        .and_then(|attrs| {
            attrs
                .iter()
                .find(|kv| kv.get("key").and_then(Value::as_str) == Some("service.name"))
        })
        .and_then(|kv| kv.get("value"))
        .and_then(|v| v.get("stringValue"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn otlp_resource_spans(r: &Value, input: &mut Input) {
    let service = otlp_service(r.get("resource"));
    let Some(scopes) = r.get("scopeSpans").and_then(Value::as_array) else {
        return;
    };
    for scope in scopes {
        let Some(spans) = scope.get("spans").and_then(Value::as_array) else {
            continue;
        };
        for s in spans {
            let span = span_of(s, &OTLP, service.clone());
            match span {
                Some(sp) => input.spans.push(sp),
                None => input.skipped_spans += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_and_garbage() {
        let mut i = Input::default();
        parse_line(
            br#"{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","parent_span_id":null,"name":"GET /","start_time_unix_nano":10,"end_time_unix_nano":20,"resource":{"service.name":"web"}}"#,
            &mut i,
        );
        parse_line(
            br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"db"}}]},"scopeSpans":[{"spans":[{"traceId":"0AF7651916CD43DD8448EB211C80319C","spanId":"00f067aa0ba902b7","parentSpanId":"b7ad6b7169203331","name":"q","startTimeUnixNano":"12","endTimeUnixNano":"18"}]}]}]}"#,
            &mut i,
        );
        parse_line(b"not json", &mut i);
        parse_line(br#"{"unrelated":1}"#, &mut i);
        parse_line(br#"{"span_id":"zz","trace_id":"x"}"#, &mut i);
        parse_line(b"   \n", &mut i);
        assert_eq!(i.spans.len(), 2);
        assert_eq!(i.spans[0].service, "web");
        assert_eq!(i.spans[0].parent_id, None);
        assert_eq!(i.spans[1].trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(i.spans[1].parent_id.as_deref(), Some("b7ad6b7169203331"));
        assert_eq!((i.spans[1].start_ns, i.spans[1].end_ns), (12, 18));
        assert_eq!(i.spans[1].service, "db");
        assert_eq!(i.unreadable_lines, 2);
        assert_eq!(i.skipped_spans, 1);
    }

    #[test]
    fn zero_and_empty_parents_are_roots() {
        for p in [r#""""#, r#""0000000000000000""#, "null"] {
            let mut i = Input::default();
            let line = format!(
                r#"{{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","parent_span_id":{p},"start_time_unix_nano":1,"end_time_unix_nano":2}}"#
            );
            parse_line(line.as_bytes(), &mut i);
            assert_eq!(i.spans[0].parent_id, None, "{p}");
        }
    }
}
