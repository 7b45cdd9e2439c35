//! A small Kubernetes API server for the tests: no kube-apiserver can be
//! installed here, so this one speaks the parts of its protocol that pod
//! clients use, as the real one does:
//!
//! - discovery (`/version`, `/api`, `/apis`, `/api/v1`), enough for kubectl;
//! - `GET /api/v1/pods` and `/api/v1/namespaces/NS/pods`: a PodList with
//!   the current `resourceVersion`, `fieldSelector=spec.nodeName=...`,
//!   `limit` and `continue` pages;
//! - the same with `watch=true`: a chunked stream of ADDED / MODIFIED /
//!   DELETED events after the given `resourceVersion`, BOOKMARK events
//!   when `allowWatchBookmarks=true`, and an ERROR event with a 410 Status
//!   when that version was compacted away;
//! - controls for the test: add, update and delete pods, drop every open
//!   watch, and compact the history (so a resuming watch gets 410 Gone).
//!
//! One request per connection (`connection: close`), one thread each.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// How often an idle watch gets a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct State {
    /// Current resourceVersion (bumped per change).
    rv: u64,
    /// Pods by UID, each with its metadata.resourceVersion set.
    pods: BTreeMap<String, Value>,
    /// Every change: (rv, event type, object).
    log: Vec<(u64, &'static str, Value)>,
    /// Versions at or below this are gone: watching from them is 410.
    compacted: u64,
    /// Bumped to close every open watch.
    drops: u64,
    lists: u64,
    watches: u64,
    gone_sent: u64,
    bookmarks_sent: u64,
}

/// What the server counted, for assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiStats {
    pub lists: u64,
    pub watches: u64,
    pub gone_sent: u64,
    pub bookmarks_sent: u64,
}

pub struct FakeApi {
    pub port: u16,
    shared: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl FakeApi {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new((
            Mutex::new(State {
                rv: 1000,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let shared = shared.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    let stop = stop.clone();
                    thread::spawn(move || {
                        let _ = handle(conn, &shared, &stop);
                    });
                }
            });
        }
        Self { port, shared, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig naming this server (no credentials).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn change(&self, kind: &'static str, mut pod: Value) {
        let (m, cv) = &*self.shared;
        let mut st = m.lock().expect("lock");
        st.rv += 1;
        let rv = st.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if kind == "DELETED" {
            st.pods.remove(&uid);
        } else {
            st.pods.insert(uid, pod.clone());
        }
        st.log.push((rv, kind, pod));
        cv.notify_all();
    }

    pub fn add(&self, pod: Value) {
        self.change("ADDED", pod);
    }

    pub fn update(&self, pod: Value) {
        self.change("MODIFIED", pod);
    }

    pub fn delete(&self, pod: Value) {
        self.change("DELETED", pod);
    }

    /// Closes every open watch (clients resume from their last version).
    pub fn drop_watches(&self) {
        let (m, cv) = &*self.shared;
        m.lock().expect("lock").drops += 1;
        cv.notify_all();
    }

    /// Forgets the history and closes every watch, after applying
    /// `hidden` updates that no watch is told of (as when a client was
    /// away longer than the server keeps history). A client resuming from
    /// any version it has seen gets 410 Gone and must list again to learn
    /// of them.
    pub fn compact_with(&self, hidden: Vec<Value>) {
        let (m, cv) = &*self.shared;
        let mut st = m.lock().expect("lock");
        st.rv += 1;
        let rv = st.rv;
        for mut pod in hidden {
            pod["metadata"]["resourceVersion"] = json!(rv.to_string());
            let uid = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            st.pods.insert(uid, pod);
        }
        st.compacted = rv;
        st.log.clear();
        st.drops += 1;
        cv.notify_all();
    }

    pub fn stats(&self) -> ApiStats {
        let st = self.shared.0.lock().expect("lock");
        ApiStats {
            lists: st.lists,
            watches: st.watches,
            gone_sent: st.gone_sent,
            bookmarks_sent: st.bookmarks_sent,
        }
    }

    /// Waits until `pred` holds for the stats (20 s at most).
    pub fn wait_stats(&self, what: &str, pred: impl Fn(&ApiStats) -> bool) -> ApiStats {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.stats();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "fake API: {what} did not happen: {s:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.drop_watches();
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A pod object as the API returns it. `containers` are (name, 64-hex
/// runtime id); `owner` is a controller reference (kind, name).
pub struct PodSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub node: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub annotations: &'a [(&'a str, &'a str)],
    pub owner: Option<(&'a str, &'a str)>,
    pub containers: &'a [(&'a str, &'a str)],
}

pub fn pod(p: &PodSpec) -> Value {
    let map = |kv: &[(&str, &str)]| -> Value {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let owners: Vec<Value> = p
        .owner
        .iter()
        .map(|(kind, name)| {
            json!({"apiVersion": "apps/v1", "kind": kind, "name": name,
                   "uid": format!("owner-{name}"), "controller": true, "blockOwnerDeletion": true})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "labels": map(p.labels),
            "annotations": map(p.annotations),
            "ownerReferences": owners,
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "spec": {
            "nodeName": p.node,
            "containers": p.containers.iter().map(|(n, _)| json!({"name": n, "image": "example/app:1"})).collect::<Vec<_>>(),
        },
        "status": {
            "phase": "Running",
            "containerStatuses": p.containers.iter().map(|(n, id)| json!({
                "name": n, "containerID": format!("containerd://{id}"), "image": "example/app:1",
                "imageID": "", "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}
            })).collect::<Vec<_>>(),
        },
    })
}

struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(conn: &mut TcpStream) -> Option<Request> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let target = head.lines().next()?.split(' ').nth(1)?.to_owned();
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    Some(Request {
        path: path.to_owned(),
        query,
    })
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
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        410 => "Gone",
        _ => "Error",
    };
    write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// The pods of a namespace path (`None`: all) matching the field selector.
fn selected(pod: &Value, ns: Option<&str>, fields: Option<&str>) -> bool {
    if ns.is_some_and(|n| pod["metadata"]["namespace"] != n) {
        return false;
    }
    match fields.and_then(|f| f.strip_prefix("spec.nodeName=")) {
        Some(node) => pod["spec"]["nodeName"] == node,
        None => true,
    }
}

fn handle(
    mut conn: TcpStream,
    shared: &(Mutex<State>, Condvar),
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut conn) else {
        return Ok(());
    };
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let ns = match segs.as_slice() {
        ["api", "v1", "pods"] => None,
        ["api", "v1", "namespaces", ns, "pods"] => Some((*ns).to_owned()),
        ["version"] => {
            return respond(
                &mut conn,
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                        "platform": "linux/amd64"}),
            )
        }
        ["api"] => {
            return respond(
                &mut conn,
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            )
        }
        ["apis"] => {
            return respond(
                &mut conn,
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            )
        }
        ["api", "v1"] => {
            return respond(
                &mut conn,
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
                        "resources": [{"name": "pods", "singularName": "pod", "namespaced": true,
                                       "kind": "Pod", "shortNames": ["po"],
                                       "verbs": ["get", "list", "watch"]}]}),
            )
        }
        _ => {
            return respond(
                &mut conn,
                404,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            )
        }
    };
    let fields = req.query.get("fieldSelector").cloned();
    if req
        .query
        .get("watch")
        .is_some_and(|w| w == "true" || w == "1")
    {
        watch(conn, shared, stop, &req, ns.as_deref(), fields.as_deref())
    } else {
        list(conn, shared, &req, ns.as_deref(), fields.as_deref())
    }
}

fn list(
    mut conn: TcpStream,
    shared: &(Mutex<State>, Condvar),
    req: &Request,
    ns: Option<&str>,
    fields: Option<&str>,
) -> std::io::Result<()> {
    let (items, rv, next) = {
        let mut st = shared.0.lock().expect("lock");
        st.lists += u64::from(!req.query.contains_key("continue"));
        let all: Vec<Value> = st
            .pods
            .values()
            .filter(|p| selected(p, ns, fields))
            .cloned()
            .collect();
        let from: usize = req
            .query
            .get("continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let limit: usize = req
            .query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let page: Vec<Value> = all.iter().skip(from).take(limit).cloned().collect();
        let next = (from + page.len() < all.len()).then(|| (from + page.len()).to_string());
        (page, st.rv, next)
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = next {
        meta["continue"] = json!(c);
    }
    respond(
        &mut conn,
        200,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}),
    )
}

fn chunk(conn: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    write!(conn, "{:x}\r\n{line}\r\n", line.len())?;
    conn.flush()
}

fn watch(
    mut conn: TcpStream,
    shared: &(Mutex<State>, Condvar),
    stop: &AtomicBool,
    req: &Request,
    ns: Option<&str>,
    fields: Option<&str>,
) -> std::io::Result<()> {
    let bookmarks = req
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let (m, cv) = shared;
    let (mut sent, drops) = {
        let mut st = m.lock().expect("lock");
        st.watches += 1;
        // No version (or "0"): start from now, as "any" does.
        let from = req
            .query
            .get("resourceVersion")
            .and_then(|r| r.parse::<u64>().ok())
            .filter(|r| *r > 0)
            .unwrap_or(st.rv);
        (from, st.drops)
    };
    write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )?;
    let started = Instant::now();
    let mut last_bookmark = Instant::now();
    let mut st = m.lock().expect("lock");
    if sent < st.compacted {
        st.gone_sent += 1;
        drop(st);
        let msg = format!("too old resource version: {sent} ({})", sent + 1);
        chunk(
            &mut conn,
            &json!({"type": "ERROR", "object": status(410, "Expired", &msg)}),
        )?;
        return conn.write_all(b"0\r\n\r\n");
    }
    loop {
        if stop.load(Ordering::Relaxed) || st.drops != drops || started.elapsed() >= timeout {
            // A dropped watch ends with no final chunk, as a broken
            // connection does; a timed-out one ends cleanly.
            if started.elapsed() >= timeout {
                drop(st);
                return conn.write_all(b"0\r\n\r\n");
            }
            return Ok(());
        }
        let events: Vec<(u64, &'static str, Value)> = st
            .log
            .iter()
            .filter(|(rv, _, p)| *rv > sent && selected(p, ns, fields))
            .cloned()
            .collect();
        let latest = st.rv;
        let bookmark_due = bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY;
        if bookmark_due {
            st.bookmarks_sent += 1;
        }
        drop(st);
        for (rv, kind, obj) in events {
            chunk(&mut conn, &json!({"type": kind, "object": obj}))?;
            sent = rv;
        }
        if bookmark_due {
            last_bookmark = Instant::now();
            chunk(
                &mut conn,
                &json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                        "metadata": {"resourceVersion": latest.to_string()}}}),
            )?;
            sent = sent.max(latest);
        }
        st = m.lock().expect("lock");
        st = cv
            .wait_timeout(st, Duration::from_millis(100))
            .expect("lock")
            .0;
    }
}

/// Sends one raw GET and returns the whole response (headers and body)
/// read until the server closes or `within` passes.
pub fn raw_get(port: u16, target: &str, within: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the fake API");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nhost: fake\r\naccept: application/json\r\n\r\n"
    )
    .expect("write");
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
