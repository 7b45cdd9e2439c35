//! The agent's HTTP endpoint for orchestrators (`--health-listen`,
//! `--metrics-listen`): `/healthz` (liveness: the event loop is turning),
//! `/readyz` (readiness: the probes are attached and the loop is turning)
//! and, with metrics on, `/metrics` (Prometheus). The Kubernetes manifest
//! points its probes and its scrape annotation here.
//!
//! It is reachable from the network, so it reads little: one request head
//! of at most [`MAX_HEAD`] bytes per connection, within [`READ_TIMEOUT`],
//! and at most [`MAX_CONNS`] connections at once.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::metrics::{Exposition, CLASSIC_CONTENT_TYPE, CONTENT_TYPE};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

const MAX_HEAD: usize = 4096;
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CONNS: usize = 16;
/// The loop is alive if it turned within this long (it turns at least
/// every ring drain interval, tens of milliseconds).
const STALE_AFTER: Duration = Duration::from_secs(30);

/// What the endpoint reports; the run loop updates it.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Milliseconds since the epoch of the loop's last turn.
    heartbeat_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn new() -> Arc<Self> {
        let h = Self::default();
        h.beat();
        Arc::new(h)
    }

    /// The event loop turned.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
            <= STALE_AFTER.as_millis() as u64
    }

    /// Status line and body for a path.
    fn answer(&self, path: &str) -> (&'static str, &'static str) {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/healthz" | "/livez" if self.alive() => ("200 OK", "ok\n"),
            "/healthz" | "/livez" => ("503 Service Unavailable", "event loop stalled\n"),
            "/readyz" if self.alive() && self.ready.load(Ordering::Relaxed) => {
                ("200 OK", "ready\n")
            }
            "/readyz" => ("503 Service Unavailable", "not ready\n"),
            _ => ("404 Not Found", "not found\n"),
        }
    }
}

/// Binds `addr` (an error here is a configuration error) and serves until
/// the task is dropped.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Option<Arc<Exposition>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and the like: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Over the limit the connection is closed at once.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(READ_TIMEOUT, one(stream, &health, metrics.as_deref())).await;
            drop(permit);
        });
    }
}

async fn one(
    mut stream: TcpStream,
    health: &Health,
    metrics: Option<&Exposition>,
) -> std::io::Result<()> {
    let mut buf = [0u8; MAX_HEAD];
    let mut len = 0;
    let (path, openmetrics) = loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                // Prometheus asks for OpenMetrics; anything else gets the
                // classic text format.
                let open = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("accept")
                        && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
                });
                break (req.path.unwrap_or("/").to_owned(), open);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                let r =
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                return stream.write_all(r).await;
            }
        }
    };
    let bare = path.split('?').next().unwrap_or(&path);
    let (status, content_type, body) = match metrics {
        Some(m) if bare == "/metrics" && openmetrics => ("200 OK", CONTENT_TYPE, m.render()),
        Some(m) if bare == "/metrics" => ("200 OK", CLASSIC_CONTENT_TYPE, m.render_classic()),
        _ => {
            let (status, body) = health.answer(&path);
            (status, "text/plain", body.to_owned())
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_flag_and_liveness_the_heartbeat() {
        let h = Health::new();
        assert_eq!(h.answer("/healthz").0, "200 OK");
        assert_eq!(h.answer("/readyz").0, "503 Service Unavailable");
        h.set_ready(true);
        assert_eq!(h.answer("/readyz?verbose").0, "200 OK");
        h.heartbeat_ms.store(0, Ordering::Relaxed);
        assert_eq!(h.answer("/healthz").0, "503 Service Unavailable");
        assert_eq!(h.answer("/readyz").0, "503 Service Unavailable");
        assert_eq!(h.answer("/metrics").0, "404 Not Found");
    }

    #[tokio::test]
    async fn serves_over_tcp_and_refuses_garbage() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let h = Health::new();
        h.set_ready(true);
        let server = tokio::spawn(serve(listener, h, None));
        let ask = |req: &'static [u8]| async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(req).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = ask(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("ready\n"),
            "{ok}"
        );
        let bad = ask(b"\x16\x03\x01 not http\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        server.abort();
    }
}
