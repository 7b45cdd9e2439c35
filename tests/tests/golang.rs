//! Go services: their runtime is recognised from the build info (stripped
//! binaries included), and a Go process's OS threads never key a parent
//! link, in the agent or in the kernel's injection context: goroutines
//! move between threads, so a thread-keyed link there is a guess.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    thread,
};

use tracer_agent::golang::buildinfo;
use tracer_tests::{golang::*, *};

/// Go's own reading (`go version -m`) and ours agree: the Go version and
/// every dependency with its version.
fn assert_buildinfo_matches_go(binary: &std::path::Path) {
    let mut f = File::open(binary).expect("open binary");
    let ours = buildinfo::read(&mut f)
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()))
        .unwrap_or_else(|| panic!("{}: not recognised as Go", binary.display()));
    let theirs = go_version_m(NEWEST, binary);
    let version = theirs
        .lines()
        .next()
        .and_then(|l| l.split_once(": "))
        .map(|(_, v)| v.trim())
        .unwrap_or("");
    assert_eq!(ours.go_version, version, "{}", binary.display());
    let deps: Vec<(String, String)> = theirs
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("dep")).then(|| {
                let path = w.next().unwrap_or("").to_owned();
                let version = w.next().unwrap_or("").to_owned();
                (path, version)
            })
        })
        .collect();
    assert_eq!(ours.deps.len(), deps.len(), "{}", binary.display());
    for (path, version) in &deps {
        assert_eq!(
            ours.dep(path),
            Some(version.as_str()),
            "{}: {path}",
            binary.display()
        );
    }
}

#[test]
fn build_info_is_read_from_built_stripped_and_distro_binaries() {
    for v in [OLDEST, NEWEST] {
        for strip in [false, true] {
            let bin = build("fanout", v, strip);
            let mut f = File::open(&bin).expect("open");
            let info = buildinfo::read(&mut f).expect("reads").expect("is Go");
            assert_eq!(info.go_version, format!("go{v}"));
            assert_buildinfo_matches_go(&bin);
        }
    }
    // Debian's Go programs: stripped, built with Debian's Go, many modules.
    for bin in ["/usr/bin/etcd", "/usr/bin/hey"] {
        assert_buildinfo_matches_go(std::path::Path::new(bin));
    }
    // Not Go.
    for bin in ["/usr/sbin/nginx", "/usr/bin/curl"] {
        let mut f = File::open(bin).expect("open");
        assert_eq!(buildinfo::read(&mut f).expect("reads"), None, "{bin}");
    }
}

const SHAPES: [(&str, usize); 3] = [("direct", 1), ("spawned", 1), ("fanout", 3)];
const CONCURRENT: usize = 8;

/// 8 concurrent requests of each shape to the Go service, and what the
/// agent made of them: (Go SERVER spans by path, Go CLIENT spans,
/// downstream SERVER spans by path).
fn fan_out(agent: &Agent, go_port: u16, down_port: u16) -> Spans {
    fan_out_over(agent, "http", go_port, down_port)
}

/// [`fan_out`] with the Go service served over `scheme` (http or https).
fn fan_out_over(agent: &Agent, scheme: &'static str, go_port: u16, down_port: u16) -> Spans {
    for (shape, _) in SHAPES {
        let workers: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let url = format!("{scheme}://127.0.0.1:{go_port}/{shape}/p{go_port}t{i}");
                // HTTP/1.1 over TLS too (curl would ask for h2, whose
                // handlers' calls are not linked yet).
                thread::spawn(move || curl(&["-k", "--http1.1", "-o", "/dev/null", "-f", &url]))
            })
            .collect();
        for w in workers {
            w.join().expect("curl thread");
        }
    }
    let calls: usize = SHAPES.iter().map(|(_, n)| n * CONCURRENT).sum();
    // The downstream serves every Go service of the test: the tag names
    // this one's calls.
    let ours = format!("/p{go_port}t");
    let go = |sp: &Value| exe(sp).starts_with("fanout");
    let servers = agent.wait_for(SHAPES.len() * CONCURRENT, |sp| {
        go(sp) && s(sp, "kind") == "SERVER" && attr_i(sp, "server.port") == i64::from(go_port)
    });
    let clients = agent.wait_for(calls, |sp| {
        go(sp)
            && s(sp, "kind") == "CLIENT"
            && attr_i(sp, "server.port") == i64::from(down_port)
            && attr(sp, "url.path").as_str().unwrap_or("").contains(&ours)
    });
    let downstream = agent.wait_for(calls, |sp| {
        exe(sp).starts_with("python3")
            && s(sp, "kind") == "SERVER"
            && attr_i(sp, "server.port") == i64::from(down_port)
            && attr(sp, "url.path").as_str().unwrap_or("").contains(&ours)
    });
    let by_path = |v: Vec<Value>| -> HashMap<String, Value> {
        v.into_iter()
            .map(|sp| (attr(&sp, "url.path").as_str().unwrap_or("").to_owned(), sp))
            .collect()
    };
    Spans {
        servers: by_path(servers),
        clients,
        downstream: by_path(downstream),
    }
}

struct Spans {
    servers: HashMap<String, Value>,
    clients: Vec<Value>,
    downstream: HashMap<String, Value>,
}

impl Spans {
    /// Every CLIENT span is a root or the child of exactly the request that
    /// caused it (its path names the request). Returns (exact, roots).
    fn check_links(&self) -> (usize, usize) {
        let (exact, roots, split) = self.check_links_allowing_split_heads();
        assert!(split.is_empty(), "trace ids differ under {split:?}");
        (exact, roots)
    }

    /// [`Self::check_links`], except that a child of exactly its request
    /// may carry another trace id when that request's head reached the
    /// server in two reads (the caller's send split where our injector
    /// inserted its header): the kernel chose the ids at the first read,
    /// which held no `traceparent` yet. Returns the span ids of those
    /// requests too; the agent counts each as `inject_context_mismatch`.
    fn check_links_allowing_split_heads(&self) -> (usize, usize, HashSet<String>) {
        let mut split = HashSet::new();
        assert_eq!(self.servers.len(), SHAPES.len() * CONCURRENT);
        let (mut exact, mut roots) = (0, 0);
        for c in &self.clients {
            let path = attr(c, "url.path").as_str().unwrap_or("");
            // /down/SHAPE/TAG/I was caused by /SHAPE/TAG.
            let parts: Vec<&str> = path.split('/').collect();
            assert_eq!(parts.len(), 5, "{c:#}");
            let cause = &self.servers[&format!("/{}/{}", parts[2], parts[3])];
            if c["parent_span_id"].is_null() {
                roots += 1;
                assert_ne!(s(c, "trace_id"), s(cause, "trace_id"), "{c:#}");
                continue;
            }
            assert_eq!(
                s(c, "parent_span_id"),
                s(cause, "span_id"),
                "CLIENT {path} parented to the wrong request:\n{c:#}\ncause: {cause:#}"
            );
            if s(c, "trace_id") != s(cause, "trace_id") {
                split.insert(s(cause, "span_id").to_owned());
            }
            exact += 1;
        }
        (exact, roots, split)
    }
}

fn summary(agent: &mut Agent) -> String {
    agent.stop();
    let log = agent.log();
    log.lines()
        .find(|l| l.contains("summary:"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"))
        .to_owned()
}

/// The concurrent fan-out that once gave 6 CLIENT spans the wrong parent
/// (thread-keyed links): 8 concurrent requests of each shape (a call from
/// the handler's goroutine, from a goroutine it spawned, and fanned out to
/// 3 goroutines), and every call is linked to exactly the request that
/// caused it, through goroutine contexts.
#[test]
fn go_fan_out_links_every_call_to_its_request() {
    if !require_root("go_fan_out_links_every_call_to_its_request") {
        return;
    }
    let down = free_port();
    let _py = python_server(down);
    let base = format!("http://127.0.0.1:{down}");
    // One service running before the agent (unstripped: offsets from its
    // DWARF), one started after (stripped: from the table), of the oldest
    // and the newest Go.
    let early_port = free_port();
    let _early = fanout(&build("fanout", OLDEST, false), early_port, &base, None);
    let mut agent = Agent::start(&[]);
    let late_port = free_port();
    let _late = fanout(&build("fanout", NEWEST, true), late_port, &base, None);
    let mut calls = 0;
    for port in [early_port, late_port] {
        let spans = fan_out(&agent, port, down);
        let (exact, roots) = spans.check_links();
        assert_eq!((exact, roots), (spans.clients.len(), 0), "port {port}");
        calls += spans.clients.len();
    }
    let line = summary(&mut agent);
    assert!(line.contains(&format!("links_goroutine={calls}")), "{line}");
    assert!(!line.contains("links_unfollowable"), "{line}");
    assert!(!line.contains("go_serve_unmatched"), "{line}");
}

/// The same with context injection. The kernel must not link by thread
/// (its thread slots are per OS thread, and goroutines move); it follows
/// the goroutine chain instead, so what it injects into each Go request
/// names exactly the request that caused it, and is what the agent
/// reports for that CLIENT span: the downstream continues exactly that
/// span, in the same trace.
#[test]
fn go_fan_out_with_injection_carries_each_calls_own_parent_downstream() {
    if !require_root("go_fan_out_with_injection_carries_each_calls_own_parent_downstream") {
        return;
    }
    let down = free_port();
    let _py = python_server(down);
    let base = format!("http://127.0.0.1:{down}");
    // One service running before the agent (found by its start-up walk of
    // /proc), one started after (classified from its exec).
    let (early_port, late_port) = (free_port(), free_port());
    let _early = fanout(&build("fanout", OLDEST, false), early_port, &base, None);
    let mut agent = Agent::start(&["--inject-context", "on"]);
    let _late = fanout(&build("fanout", NEWEST, false), late_port, &base, None);
    let mut calls = 0;
    let mut split_heads = 0;
    for port in [early_port, late_port] {
        let spans = fan_out(&agent, port, down);
        let (exact, roots, split) = spans.check_links_allowing_split_heads();
        assert_eq!((exact, roots), (spans.clients.len(), 0), "port {port}");
        // Rare (about one run in ten here), and never most of them.
        assert!(split.len() <= 2, "port {port}: {split:?}");
        split_heads += split.len();
        for c in &spans.clients {
            let path = attr(c, "url.path").as_str().unwrap_or("");
            let d = &spans.downstream[path];
            assert_eq!(s(d, "trace_id"), s(c, "trace_id"), "{path}: {d:#}");
            assert_eq!(s(d, "parent_span_id"), s(c, "span_id"), "{path}: {d:#}");
        }
        calls += spans.clients.len();
    }
    let line = summary(&mut agent);
    // The kernel's counters: SERVER contexts of Go requests kept off the
    // thread table, and every call injected as the child of its request
    // through the goroutine chain (none through a thread).
    let kernel = line.split_once("kernel:").map_or("", |(_, k)| k);
    let requests = 2 * SHAPES.len() * CONCURRENT;
    assert!(
        kernel.contains(&format!("thread_link_off={requests}")),
        "{line}"
    );
    assert!(
        kernel.contains(&format!("go_inject_armed={calls}")),
        "{line}"
    );
    assert!(kernel.contains(&format!("inject_linked={calls}")), "{line}");
    assert!(!kernel.contains("go_server_ctx_missing"), "{line}");
    assert!(line.contains(&format!("links_goroutine={calls}")), "{line}");
    assert!(!line.contains("go_inject_disagreed"), "{line}");
    // Each split head is counted (so are those of the downstream's
    // requests, whose spans take the trace their header names).
    let mismatches: usize = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inject_context_mismatch="))
        .map_or(0, |n| n.parse().unwrap_or(0));
    assert!(mismatches >= split_heads, "{split_heads} split: {line}");
}

const GRPC_SHAPES: [&str; 3] = ["grpc", "grpcfan", "grpcchain"];

/// grpc-go unary calls made inside handlers (issue shape 4), 8 concurrent
/// requests of each shape, all multiplexed as HTTP/2 streams on one
/// connection whose HEADERS grpc's writer goroutine writes: a call from
/// an HTTP handler's goroutine, three from goroutines it spawned, and one
/// from a gRPC handler (the stream's own goroutine), over plaintext and
/// TLS. Every call names its cause in its method path, and every link is
/// exact.
#[test]
fn go_grpc_calls_inside_handlers_link_to_their_request() {
    if !require_root("go_grpc_calls_inside_handlers_link_to_their_request") {
        return;
    }
    // One service running before the agent, one started after, of the
    // oldest and the newest Go; each calls its own gRPC server, the first
    // over TLS (grpc-go's credentials wrap the *tls.Conn).
    let dir = TempDir::new("grpc-tls");
    let cert = self_signed_cert(&dir);
    let (h1, g1, h2, g2) = (free_port(), free_port(), free_port(), free_port());
    let _early = grpcfan(&build_grpc("grpcfan", OLDEST), h1, g1, g1, Some(&cert));
    let mut agent = Agent::start(&[]);
    let _late = grpcfan(&build_grpc("grpcfan", NEWEST), h2, g2, g2, None);
    let mut links = 0;
    for (http, grpc) in [(h1, g1), (h2, g2)] {
        // Each service's gRPC connection was opened before its TLS probes
        // were on (the early one before the agent; the late one dials
        // within milliseconds of its exec): the agent joins it mid-way,
        // and a joined HTTP/2 connection's first write is not trusted as
        // a frame boundary. One warm-up call (not counted) passes that.
        curl(&[
            "-o",
            "/dev/null",
            "-f",
            &format!("http://127.0.0.1:{http}/grpc/warm"),
        ]);
        thread::sleep(std::time::Duration::from_millis(300));
        for shape in GRPC_SHAPES {
            let workers: Vec<_> = (0..CONCURRENT)
                .map(|i| {
                    let url = format!("http://127.0.0.1:{http}/{shape}/p{http}t{i}");
                    thread::spawn(move || curl(&["-o", "/dev/null", "-f", &url]))
                })
                .collect();
            for w in workers {
                w.join().expect("curl thread");
            }
        }
        let ours = |sp: &Value| exe(sp).starts_with("grpcfan");
        let service = |sp: &Value| attr(sp, "rpc.service").as_str().unwrap_or("").to_owned();
        let tagged = format!("p{http}t");
        let http_servers: HashMap<String, Value> = agent
            .wait_for(GRPC_SHAPES.len() * CONCURRENT, |sp| {
                ours(sp)
                    && s(sp, "kind") == "SERVER"
                    && attr_i(sp, "server.port") == i64::from(http)
                    && attr(sp, "url.path")
                        .as_str()
                        .unwrap_or("")
                        .contains(&tagged)
            })
            .into_iter()
            .map(|sp| (attr(&sp, "url.path").as_str().unwrap_or("").to_owned(), sp))
            .collect();
        // grpc + 3 grpcfan + grpcchain + its hop, per request.
        let calls = 6 * CONCURRENT;
        let is_call = |sp: &Value| {
            ours(sp) && attr(sp, "rpc.system") == "grpc" && service(sp).contains(&tagged)
        };
        let clients = agent.wait_for(calls, |sp| is_call(sp) && s(sp, "kind") == "CLIENT");
        let grpc_servers: HashMap<String, Value> = agent
            .wait_for(calls, |sp| {
                is_call(sp)
                    && s(sp, "kind") == "SERVER"
                    && attr_i(sp, "server.port") == i64::from(grpc)
            })
            .into_iter()
            .map(|sp| (service(&sp), sp))
            .collect();
        assert_eq!(http_servers.len(), GRPC_SHAPES.len() * CONCURRENT);
        assert_eq!(grpc_servers.len(), calls);
        assert_eq!(clients.len(), calls);
        for c in &clients {
            let svc = service(c);
            if http == h2 {
                // Over TLS the joined connection's HPACK table was filled
                // partly unseen: the trailers' status may be an entry the
                // agent never saw (`tracer.headers_unknown`).
                assert_eq!(attr_i(c, "rpc.grpc.status_code"), 0, "{c:#}");
            }
            // grpcchain.pPtI.hop was caused by the gRPC stream
            // grpcchain.pPtI; SHAPE.pPtI[.N] by HTTP request /SHAPE/pPtI.
            let parts: Vec<&str> = svc.split('.').collect();
            let cause = match parts.as_slice() {
                [_, _, "hop"] => &grpc_servers[parts[..2].join(".").as_str()],
                [shape, tag, ..] => &http_servers[&format!("/{shape}/{tag}")],
                _ => panic!("unexpected call {svc}"),
            };
            assert_eq!(
                s(c, "parent_span_id"),
                s(cause, "span_id"),
                "CLIENT {svc} parented to the wrong span:\n{c:#}\ncause: {cause:#}"
            );
            assert_eq!(s(c, "trace_id"), s(cause, "trace_id"), "{svc}");
        }
        links += clients.len();
    }
    let line = summary(&mut agent);
    let count = |name: &str| -> usize {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map_or(0, |n| n.parse().unwrap_or(0))
    };
    // The two warm-up calls may link too, or (their streams unseen) leave
    // a serving context unmatched; nothing else may.
    assert!(
        (links..=links + 2).contains(&count("links_goroutine")),
        "{line}"
    );
    assert!(count("go_serve_unmatched") <= 2, "{line}");
    assert!(count("links_unfollowable") <= 2, "{line}");
}

/// `go tool nm -size` of an unstripped binary: name -> (address, size) of
/// its text symbols.
fn go_nm(version: &str, binary: &std::path::Path) -> HashMap<String, (u64, u64)> {
    let out = std::process::Command::new(go_bin(version))
        .args(["tool", "nm", "-size"])
        .arg(binary)
        .output()
        .expect("go tool nm");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let addr = u64::from_str_radix(w.next()?, 16).ok()?;
            let size = w.next()?.parse().ok()?;
            let kind = w.next()?;
            let name = w.collect::<Vec<_>>().join(" ");
            matches!(kind, "T" | "t").then_some((name, (addr, size)))
        })
        .collect()
}

/// The RET addresses `go tool objdump` shows for one function.
fn go_objdump_rets(version: &str, binary: &std::path::Path, func: &str) -> Vec<u64> {
    let pattern = format!(
        "^{}$",
        func.replace('.', r"\.")
            .replace('(', r"\(")
            .replace(')', r"\)")
            .replace('*', r"\*")
    );
    let out = std::process::Command::new(go_bin(version))
        .args(["tool", "objdump", "-s", &pattern])
        .arg(binary)
        .output()
        .expect("go tool objdump");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("RET"))
        .filter_map(|l| {
            let a = l.split_whitespace().nth(1)?;
            u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

/// The functions the Go probes need, as each supported version spells
/// them.
const PROBED: [&str; 4] = [
    "crypto/tls.(*Conn).Write",
    "crypto/tls.(*Conn).Read",
    "net/http.(*Transport).roundTrip",
    "main.main",
];

#[test]
fn pclntab_and_ret_finder_agree_with_go_tools_on_stripped_binaries() {
    use tracer_agent::golang::{pclntab::Pclntab, rets};
    for v in [OLDEST, NEWEST] {
        let full = build("fanout", v, false);
        let stripped = build("fanout", v, true);
        let nm = go_nm(v, &full);
        // The stripped binary has no symbols: everything comes from its
        // pclntab, and must be what the symbol table of the same build says.
        let mut f = File::open(&stripped).expect("open");
        let table = Pclntab::read(&mut f).unwrap_or_else(|e| panic!("Go {v}: {e}"));
        let mut seen: HashMap<String, usize> = HashMap::new();
        for func in table.funcs() {
            *seen.entry(func.name).or_default() += 1;
        }
        let mut matched = 0;
        // A name twice in the table is an assembly function and its ABI
        // wrapper: the symbol table names one of them.
        for func in table.funcs().filter(|f| seen[&f.name] == 1) {
            if let Some((addr, _)) = nm.get(&func.name) {
                assert_eq!(func.entry, *addr, "Go {v}: {}", func.name);
                matched += 1;
            }
        }
        assert!(matched > 1000, "Go {v}: only {matched} functions matched");
        let layout = rets::Layout::read(&mut f).expect("layout");
        let found = table.find(&PROBED);
        assert_eq!(found.len(), PROBED.len(), "Go {v}: {found:?}");
        for func in &found {
            let (addr, size) = nm[&func.name];
            assert_eq!(func.entry, addr, "Go {v}: {}", func.name);
            assert!(func.end >= addr + size, "Go {v}: {}", func.name);
            let offsets = rets::ret_offsets(&mut f, &layout, func)
                .unwrap_or_else(|e| panic!("Go {v}: {}: {e}", func.name));
            let base = layout.file_offset(func.entry, 1).expect("mapped");
            let ours: Vec<u64> = offsets.iter().map(|o| o - base + func.entry).collect();
            assert_eq!(
                ours,
                go_objdump_rets(v, &full, &func.name),
                "Go {v}: RETs of {}",
                func.name
            );
        }
    }
    // Debian's stripped Go programs (other Go versions, other linkers'
    // choices): the TLS functions are found and decode.
    for bin in ["/usr/bin/etcd", "/usr/bin/kubectl"] {
        let mut f = File::open(bin).expect("open");
        let table = Pclntab::read(&mut f).unwrap_or_else(|e| panic!("{bin}: {e}"));
        let layout = rets::Layout::read(&mut f).expect("layout");
        let found = table.find(&PROBED[..2]);
        assert_eq!(found.len(), 2, "{bin}: {found:?}");
        for func in &found {
            let r = rets::ret_offsets(&mut f, &layout, func)
                .unwrap_or_else(|e| panic!("{bin}: {}: {e}", func.name));
            assert!(!r.is_empty());
        }
    }
}

/// Waits `settle`, then checks that exactly `want` spans match: a second
/// span for the same bytes (or spans made up of ciphertext) would show.
fn assert_exactly(agent: &Agent, want: usize, what: &str, pred: impl Fn(&Value) -> bool) {
    thread::sleep(std::time::Duration::from_millis(700));
    let got: Vec<Value> = agent.spans().into_iter().filter(|sp| pred(sp)).collect();
    assert_eq!(got.len(), want, "{what}: {got:#?}");
}

/// Go's crypto/tls in stripped binaries of the oldest and the newest Go
/// (no symbols, no DWARF: pclntab and the offsets table): a Go service
/// served over HTTPS to curl, calling a Python TLS server over HTTPS,
/// gives a SERVER span for every request and a CLIENT span for every call,
/// each matching the other side's span, for a service started before the
/// agent and one started after.
#[test]
fn go_tls_gives_server_and_client_spans_from_stripped_binaries() {
    if !require_root("go_tls_gives_server_and_client_spans_from_stripped_binaries") {
        return;
    }
    let dir = TempDir::new("go-tls");
    let cert = self_signed_cert(&dir);
    let down = free_port();
    let _py = python_server_tls(down, &cert);
    let base = format!("https://127.0.0.1:{down}");
    let (early_port, late_port) = (free_port(), free_port());
    let _early = fanout(
        &build("fanout", OLDEST, true),
        early_port,
        &base,
        Some(&cert),
    );
    let mut agent = Agent::start(&[]);
    let _late = fanout(
        &build("fanout", NEWEST, true),
        late_port,
        &base,
        Some(&cert),
    );
    let calls: usize = SHAPES.iter().map(|(_, n)| n * CONCURRENT).sum();
    for port in [early_port, late_port] {
        let spans = fan_out_over(&agent, "https", port, down);
        for (path, sp) in &spans.servers {
            assert_eq!(attr(sp, "url.scheme"), "https", "{sp:#}");
            assert_eq!(attr(sp, "http.request.method"), "GET", "{sp:#}");
            assert_eq!(attr_i(sp, "http.response.status_code"), 200, "{sp:#}");
            assert!(path.contains(&format!("/p{port}t")), "{sp:#}");
        }
        assert_eq!(spans.clients.len(), calls);
        assert_eq!(spans.downstream.len(), calls);
        for c in &spans.clients {
            let path = attr(c, "url.path").as_str().unwrap_or("");
            assert_eq!(attr(c, "url.scheme"), "https", "{c:#}");
            assert_eq!(attr_i(c, "http.response.status_code"), 200, "{c:#}");
            // The Python side saw the same request.
            assert!(spans.downstream.contains_key(path), "{path}");
        }
        // Every call is the child of exactly its request, over TLS too.
        assert_eq!(spans.check_links(), (calls, 0));
        let ours = format!("/p{port}t");
        assert_exactly(&agent, SHAPES.len() * CONCURRENT, "Go SERVER spans", |sp| {
            exe(sp).starts_with("fanout")
                && s(sp, "kind") == "SERVER"
                && attr_i(sp, "server.port") == i64::from(port)
        });
        assert_exactly(&agent, calls, "Go CLIENT spans", |sp| {
            exe(sp).starts_with("fanout")
                && s(sp, "kind") == "CLIENT"
                && attr(sp, "url.path").as_str().unwrap_or("").contains(&ours)
        });
    }
    // HTTP/2 over Go's TLS (ALPN h2, as curl asks): SERVER spans; the
    // calls its handlers make are counted roots (HTTP/2 serving is not
    // followed by the goroutine probes yet).
    for i in 0..4 {
        let (_, code) = curl(&[
            "-k",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &format!("https://127.0.0.1:{late_port}/direct/h2t{i}"),
        ]);
        assert_eq!(code, "2");
    }
    let h2 = |sp: &Value| {
        exe(sp).starts_with("fanout")
            && s(sp, "kind") == "SERVER"
            && attr(sp, "url.path")
                .as_str()
                .unwrap_or("")
                .starts_with("/direct/h2t")
    };
    for sp in agent.wait_for(4, h2) {
        assert_eq!(attr(&sp, "network.protocol.version"), "2", "{sp:#}");
        assert_eq!(attr_i(&sp, "http.response.status_code"), 200, "{sp:#}");
    }
    assert_exactly(&agent, 4, "HTTP/2 SERVER spans", h2);
    let line = summary(&mut agent);
    let kernel = line.split_once("kernel:").map_or("", |(_, k)| k);
    // Every probed call found its socket, and every Read its entry.
    for bad in ["go_tls_no_conn", "go_tls_read_lost", "go_tls_no_layout"] {
        assert!(!kernel.contains(bad), "{line}");
    }
    assert!(kernel.contains("tls_calls="), "{line}");
    assert!(!agent.log().contains("not visible"), "{}", agent.log());
}

/// Struct offsets: what the DWARF of each test toolchain's build says is
/// what the versioned table says (how the table is checked), and a
/// stripped build is probed at the same places as its unstripped twin,
/// with offsets from the table instead of DWARF.
#[test]
fn go_tls_offsets_table_matches_dwarf_of_every_toolchain() {
    use tracer_agent::{
        golang::{dwarf, offsets},
        uprobes::golang::analyse,
    };
    for v in [OLDEST, NEWEST] {
        let full = build("fanout", v, false);
        let mut f = File::open(&full).expect("open");
        let from_dwarf = dwarf::tls_offsets(&mut f)
            .unwrap_or_else(|e| panic!("Go {v}: {e}"))
            .unwrap_or_else(|| panic!("Go {v}: no DWARF"));
        let version = buildinfo::GoVersion::parse(&format!("go{v}")).expect("version");
        assert_eq!(Some(from_dwarf), offsets::for_version(version), "Go {v}");
        let mut f = File::open(&full).expect("open");
        let members = dwarf::members(&mut f).expect("reads").expect("has DWARF");
        assert_eq!(
            dwarf::http_from(&members).ok(),
            offsets::http_for_version(version),
            "Go {v}: net/http"
        );
        let stripped = build("fanout", v, true);
        let mut f = File::open(&stripped).expect("open");
        assert!(dwarf::tls_offsets(&mut f).expect("reads").is_none());
        let a = analyse(&full).unwrap_or_else(|e| panic!("Go {v}: {e}"));
        let b = analyse(&stripped).unwrap_or_else(|e| panic!("Go {v} stripped: {e}"));
        assert_eq!((a.offsets_from, b.offsets_from), ("DWARF", "table"));
        assert_eq!(a.offsets, b.offsets);
        // -s -w changes no code: same entry points and RETs, two entries
        // (Write, Read) and at least one RET of Read.
        assert_eq!(a.points.len(), b.points.len(), "Go {v}");
        assert!(a.points.len() >= 3, "Go {v}: {:?}", a.points);
        assert_eq!(a.tcpconn_close, b.tcpconn_close);
        // Goroutine links: the same probes either way.
        let (la, lb) = (a.links.expect("links"), b.links.expect("links"));
        assert_eq!(la.http, lb.http);
        assert_eq!(la.points, lb.points);
        assert!(la.points.len() >= 4, "{:?}", la.points);
        // grpc-go (Debian's 1.33 sources, GOPATH mode: no module version,
        // so DWARF only): the table's row for 1.33 is what DWARF says.
        let grpc = build_grpc("grpcfan", v);
        let mut f = File::open(&grpc).expect("open");
        let members = dwarf::members(&mut f).expect("reads").expect("has DWARF");
        assert_eq!(
            dwarf::grpc_from(&members).ok(),
            offsets::grpc_for_version("v1.33.3"),
            "Go {v}: grpc-go"
        );
        let links = analyse(&grpc)
            .unwrap_or_else(|e| panic!("Go {v} grpcfan: {e}"))
            .links
            .unwrap_or_else(|e| panic!("Go {v} grpcfan: {e}"));
        assert_eq!(
            links.sites,
            ["net/http serving", "grpc-go serving", "grpc-go client"],
            "Go {v}"
        );
    }
    // Debian's stripped Go programs: inside the table's range.
    for bin in [
        "/usr/bin/etcd",
        "/usr/bin/hey",
        "/usr/bin/kubectl",
        "/usr/bin/caddy",
    ] {
        let a = analyse(std::path::Path::new(bin)).unwrap_or_else(|e| panic!("{bin}: {e}"));
        assert_eq!(a.offsets_from, "table", "{bin}");
        // Servers have goroutine links from net/http; hey is a client
        // only (no request starts a context in it, so its calls stay
        // roots).
        let sites = a.links.unwrap_or_else(|e| panic!("{bin}: {e}")).sites;
        if bin.ends_with("hey") {
            assert_eq!(sites, ["net/http client"], "{bin}");
        } else {
            assert!(sites.contains(&"net/http serving"), "{bin}: {sites:?}");
        }
    }
    // Not Go, and Go without crypto/tls, are told apart from failures.
    let nginx = analyse(std::path::Path::new("/usr/sbin/nginx")).expect_err("not Go");
    assert!(nginx.is_silent(), "{nginx}");
}

/// A goroutine-heavy Go program under the probes runs its own workload to
/// completion: 512 HTTPS requests, each on a fresh connection (new reader
/// and writer goroutines with small stacks), after deep recursion, with
/// bodies up to 64 KiB checked by hash; and every request and response is
/// captured.
#[test]
fn go_program_under_tls_probes_runs_to_completion() {
    if !require_root("go_program_under_tls_probes_runs_to_completion") {
        return;
    }
    let (workers, requests) = (64, 8);
    for v in [OLDEST, NEWEST] {
        let bin = build("tlsload", v, true);
        let agent = Agent::start(&[]);
        let out = std::process::Command::new(&bin)
            .args(["-workers", &workers.to_string()])
            .args(["-requests", &requests.to_string()])
            // Probes go on at its exec: requests start once they are.
            .args(["-delay", "1s"])
            .output()
            .expect("tlsload");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "Go {v}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = workers * requests;
        assert_eq!(stdout.trim(), format!("ok {n}"));
        for kind in ["SERVER", "CLIENT"] {
            let spans = agent.wait_for(n, |sp| {
                exe(sp).starts_with("tlsload")
                    && s(sp, "kind") == kind
                    && attr(sp, "url.path")
                        .as_str()
                        .unwrap_or("")
                        .starts_with("/load/")
            });
            for sp in &spans {
                assert_eq!(attr_i(sp, "http.response.status_code"), 200, "{sp:#}");
                assert_eq!(attr(sp, "url.scheme"), "https", "{sp:#}");
            }
            assert_exactly(&agent, n, kind, |sp| {
                exe(sp).starts_with("tlsload") && s(sp, "kind") == kind
            });
        }
    }
}

/// Debian's caddy (stripped Go 1.19, its own HTTP/2 server over Go's
/// crypto/tls) serving HTTPS to curl: a SERVER span for every request,
/// over HTTP/2 and HTTP/1.1.
#[test]
fn caddy_over_https_gives_server_spans() {
    if !require_root("caddy_over_https_gives_server_spans") {
        return;
    }
    let dir = TempDir::new("caddy");
    let port = free_port();
    let conf = dir.0.join("Caddyfile");
    std::fs::write(
        &conf,
        format!(
            "{{\n\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n\
             \tstorage file_system {}\n}}\n\
             https://127.0.0.1:{port} {{\n\ttls internal\n\trespond /hello/* \"hi\" 200\n}}\n",
            dir.0.join("data").display()
        ),
    )
    .expect("Caddyfile");
    let mut agent = Agent::start(&[]);
    // Started after the agent: found at its exec.
    let _caddy = Proc::spawn(
        "caddy",
        std::process::Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf)
            .env("HOME", &dir.0)
            .env("XDG_DATA_HOME", dir.0.join("xdg-data"))
            .env("XDG_CONFIG_HOME", dir.0.join("xdg-config"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_port(port);
    for (flag, version, n) in [("--http2", "2", 4), ("--http1.1", "1.1", 3)] {
        for i in 0..n {
            let (_, got) = curl(&[
                "-k",
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                &format!("https://127.0.0.1:{port}/hello/{version}-{i}"),
            ]);
            assert_eq!(got, format!("200 {version}"));
        }
        let prefix = format!("/hello/{version}-");
        let ours = |sp: &Value| {
            is_span(sp, "SERVER", "caddy", port)
                && attr(sp, "url.path")
                    .as_str()
                    .unwrap_or("")
                    .starts_with(&prefix)
        };
        for sp in agent.wait_for(n, ours) {
            assert_eq!(attr(&sp, "network.protocol.version"), version, "{sp:#}");
            assert_eq!(attr(&sp, "url.scheme"), "https", "{sp:#}");
            assert_eq!(attr_i(&sp, "http.response.status_code"), 200, "{sp:#}");
        }
        assert_exactly(&agent, n, "caddy SERVER spans", ours);
    }
    let line = summary(&mut agent);
    assert!(!line.contains("go_tls_no_conn"), "{line}");
}

/// kubectl (stripped Go 1.23, client-go) against a local TLS server: a
/// CLIENT span for each request, matching the server's.
#[test]
fn kubectl_over_https_gives_client_spans() {
    if !require_root("kubectl_over_https_gives_client_spans") {
        return;
    }
    let dir = TempDir::new("kubectl");
    let cert = self_signed_cert(&dir);
    let port = free_port();
    let _py = python_server_tls(port, &cert);
    let agent = Agent::start(&[]);
    let n = 3;
    // The first run of an executable the agent has not seen is probed
    // some milliseconds after its exec (its first request may precede
    // that); later runs find the probes still on, and are seen whole.
    for i in (0..=n).rev() {
        let out = std::process::Command::new("kubectl")
            .arg(format!("--server=https://127.0.0.1:{port}"))
            .args(["--insecure-skip-tls-verify", "--token", "test"])
            .args(["get", "--raw", &format!("/api/tlsprobe/{i}")])
            .env("HOME", &dir.0)
            .env("KUBECONFIG", "/dev/null")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
        if i == n {
            // The warm-up run (path /api/tlsprobe/3) is not counted.
            thread::sleep(std::time::Duration::from_millis(300));
        }
    }
    let probe = |kind: &'static str, who: &'static str| {
        move |sp: &Value| {
            s(sp, "kind") == kind
                && exe(sp).starts_with(who)
                && attr_i(sp, "server.port") == i64::from(port)
                && attr(sp, "url.path")
                    .as_str()
                    .unwrap_or("")
                    .starts_with("/api/tlsprobe/")
                && attr(sp, "url.path") != "/api/tlsprobe/3"
        }
    };
    let servers = agent.wait_for(n, probe("SERVER", "python3"));
    let clients = agent.wait_for(n, probe("CLIENT", "kubectl"));
    for c in &clients {
        assert_eq!(attr(c, "url.scheme"), "https", "{c:#}");
        assert_eq!(attr_i(c, "http.response.status_code"), 200, "{c:#}");
        assert_eq!(attr(c, "http.request.method"), "GET", "{c:#}");
        let path = attr(c, "url.path");
        assert!(
            servers.iter().any(|sp| attr(sp, "url.path") == path),
            "{c:#}"
        );
    }
    assert_exactly(
        &agent,
        n,
        "kubectl CLIENT spans",
        probe("CLIENT", "kubectl"),
    );
}
