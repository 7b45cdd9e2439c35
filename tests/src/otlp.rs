//! A real OTLP trace receiver for the tests, over gRPC (tonic server from
//! the official protobuf definitions) and HTTP/protobuf (`POST /v1/traces`).
//! It records every request, and can refuse the first N exports with a
//! retryable error to exercise the exporter's retries.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value as AnyValue, KeyValue},
    trace::v1::Span,
};
use prost::Message as _;

/// One received span with its resource attributes.
#[derive(Debug, Clone)]
pub struct Received {
    pub resource: HashMap<String, String>,
    pub span: Span,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<String> {
        kv_get(&self.span.attributes, key)
    }
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value_str(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn kv_get(kvs: &[KeyValue], key: &str) -> Option<String> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .map(|kv| value_str(&kv.value))
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<ExportTraceServiceRequest>>,
    /// Exports still to refuse (UNAVAILABLE / 503).
    refuse: AtomicUsize,
    refused: AtomicUsize,
    stop: AtomicBool,
}

impl State {
    fn take(&self, req: ExportTraceServiceRequest) -> bool {
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        self.requests.lock().expect("lock").push(req);
        true
    }
}

struct Grpc(Arc<State>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.0.take(request.into_inner()) {
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        } else {
            Err(tonic::Status::unavailable("test receiver: try again"))
        }
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    state: Arc<State>,
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// gRPC receiver on 127.0.0.1:`port` (0: any free port).
    pub fn grpc(port: u16, refuse_first: usize) -> Self {
        let state = Arc::new(State::default());
        state.refuse.store(refuse_first, Ordering::SeqCst);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind gRPC receiver");
        let port = listener.local_addr().expect("addr").port();
        let svc = TraceServiceServer::new(Grpc(state.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        rt.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            state,
            port,
            runtime: Some(rt),
        }
    }

    /// HTTP/protobuf receiver on 127.0.0.1:`port` (0: any free port).
    pub fn http(port: u16, refuse_first: usize) -> Self {
        let state = Arc::new(State::default());
        state.refuse.store(refuse_first, Ordering::SeqCst);
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind HTTP receiver");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let st = state.clone();
        thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        let st = st.clone();
                        thread::spawn(move || serve_http(s, &st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            state,
            port,
            runtime: None,
        }
    }

    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// Every span received so far, with its resource.
    pub fn spans(&self) -> Vec<Received> {
        let reqs = self.state.requests.lock().expect("lock");
        let mut out = Vec::new();
        for r in reqs.iter() {
            for rs in &r.resource_spans {
                let resource: HashMap<String, String> = rs
                    .resource
                    .as_ref()
                    .map(|res| {
                        res.attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value_str(&kv.value)))
                            .collect()
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for sp in &ss.spans {
                        out.push(Received {
                            resource: resource.clone(),
                            span: sp.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits (20 s at most) until `want` received spans match `pred`.
    pub fn wait_for(&self, want: usize, pred: impl Fn(&Received) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<Received> = self.spans().into_iter().filter(|s| pred(s)).collect();
            if got.len() >= want {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} matching spans, wanted {want}; all: {:#?}",
                got.len(),
                self.spans()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Minimal HTTP/1.1 handling of `POST /v1/traces` (keep-alive).
fn serve_http(stream: TcpStream, st: &State) {
    let _ = stream.set_nonblocking(false);
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path_ok = line.starts_with("POST /v1/traces ");
        let mut len = 0usize;
        let mut gzip = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if gzip {
            let mut d = Vec::new();
            if flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut d)
                .is_err()
            {
                return;
            }
            body = d;
        }
        let (status, payload) = match (path_ok, ExportTraceServiceRequest::decode(&body[..])) {
            (true, Ok(req)) => {
                if st.take(req) {
                    (
                        "200 OK",
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                } else {
                    ("503 Service Unavailable", Vec::new())
                }
            }
            _ => ("400 Bad Request", Vec::new()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&payload).is_err() {
            return;
        }
    }
}
