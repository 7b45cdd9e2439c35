//! HTTP/2 and gRPC peers: a Python `grpcio` greeter (server and client),
//! `nghttpd`, and etcd (grpc-go).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use super::{wait_port, Proc, TempDir};

pub fn tools_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    std::env::var_os("TRACER_TOOLS_DIR").map_or_else(|| home.join(".cache/tracer"), PathBuf::from)
}

/// `@grpc/grpc-js` (installed by `cargo xtask setup`).
pub fn grpc_js() -> PathBuf {
    let p = tools_dir().join("node/node_modules/@grpc/grpc-js");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (it installs @grpc/grpc-js)",
        p.display()
    );
    p
}

/// The service both node scripts use: `helloworld.Greeter/SayHello` on
/// raw bytes.
const NODE_GRPC_SERVICE: &str = r#"
const grpc = require(process.env.GRPC_JS);
const id = (b) => b;
const svc = { SayHello: { path: '/helloworld.Greeter/SayHello', requestStream: false,
  responseStream: false, requestSerialize: id, requestDeserialize: id,
  responseSerialize: id, responseDeserialize: id } };
"#;

/// A grpc-js server over TLS (argv: port, cert, key); "missing" answers
/// NOT_FOUND.
pub fn node_grpc_server_script() -> String {
    format!(
        "{NODE_GRPC_SERVICE}{}",
        r#"
const fs = require('fs');
const [port, cert, key] = process.argv.slice(1);
const server = new grpc.Server();
server.addService(svc, { SayHello: (call, cb) => {
  if (call.request.toString() === 'missing') cb({ code: grpc.status.NOT_FOUND, details: 'no' });
  else cb(null, Buffer.concat([Buffer.from('hello '), call.request]));
} });
const creds = grpc.ServerCredentials.createSsl(null,
  [{ private_key: fs.readFileSync(key), cert_chain: fs.readFileSync(cert) }], false);
server.bindAsync('127.0.0.1:' + port, creds, (err) => { if (err) { console.error(err); process.exit(1); } });
"#
    )
}

/// A grpc-js client over TLS (argv: port, cert, traceparent, names...);
/// prints `name CODE` per call, one channel for all.
pub fn node_grpc_client_script() -> String {
    format!(
        "{NODE_GRPC_SERVICE}{}",
        r#"
const fs = require('fs');
const [port, cert, tp, ...names] = process.argv.slice(1);
const Client = grpc.makeGenericClientConstructor(svc, 'Greeter');
const creds = grpc.credentials.createSsl(fs.readFileSync(cert), null, null,
  { checkServerIdentity: () => undefined });
const c = new Client('127.0.0.1:' + port, creds);
(async () => {
  for (const n of names) {
    const md = new grpc.Metadata();
    md.set('traceparent', tp);
    const code = await new Promise((res) => c.SayHello(Buffer.from(n), md,
      (err) => res(err ? err.code : 0)));
    console.log(n, code);
  }
  c.close();
})();
"#
    )
}

/// The venv Python with `grpcio` (made by `cargo xtask setup`).
pub fn grpc_python() -> PathBuf {
    let p = tools_dir().join("venv/bin/python3");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (it installs grpcio)",
        p.display()
    );
    p
}

/// A gRPC server on 127.0.0.1:PORT with the methods of
/// `helloworld.Greeter` the tests call, on raw bytes (no generated code):
/// `SayHello` (unary; "missing" answers NOT_FOUND), `Big` (a 300 KiB
/// reply), `Stream` (server streaming: five messages, 50 ms apart),
/// `Collect` (client streaming), `Chat` (bidirectional), `Echo1`..`Echo3`
/// (unary echoes).
pub const PY_GRPC_SERVER: &str = r#"
import sys, time, grpc
from concurrent import futures
def say(req, ctx):
    if req == b"missing":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such name")
    return b"hello " + req
def big(req, ctx):
    return b"x" * (300 * 1024)
def stream(req, ctx):
    for i in range(5):
        time.sleep(0.05)
        yield b"part %d" % i
def collect(reqs, ctx):
    return b"%d" % sum(len(r) for r in reqs)
def chat(reqs, ctx):
    for r in reqs:
        yield b"re: " + r
h = grpc.method_handlers_generic_handler("helloworld.Greeter", {
    "SayHello": grpc.unary_unary_rpc_method_handler(say),
    "Big": grpc.unary_unary_rpc_method_handler(big),
    "Stream": grpc.unary_stream_rpc_method_handler(stream),
    "Collect": grpc.stream_unary_rpc_method_handler(collect),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Echo1": grpc.unary_unary_rpc_method_handler(lambda r, c: r),
    "Echo2": grpc.unary_unary_rpc_method_handler(lambda r, c: r),
    "Echo3": grpc.unary_unary_rpc_method_handler(lambda r, c: r),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((h,))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"#;

/// A gRPC client (argv: port, traceparent or "-", then `Method:arg`...)
/// making each call on one channel (`sleep:S` pauses); prints
/// `Method CODE` per call.
pub const PY_GRPC_CLIENT: &str = r#"
import sys, time, grpc
port, tp = sys.argv[1], sys.argv[2]
md = [("traceparent", tp)] if tp != "-" else None
ch = grpc.insecure_channel("127.0.0.1:" + port)
for call in sys.argv[3:]:
    method, _, arg = call.partition(":")
    if method == "sleep":
        time.sleep(float(arg))
        continue
    path = "/helloworld.Greeter/" + method
    try:
        msgs = lambda: iter([arg.encode()] * 3)
        if method == "Stream":
            n = sum(1 for _ in ch.unary_stream(path)(arg.encode(), metadata=md, timeout=10))
        elif method == "Collect":
            n = len(ch.stream_unary(path)(msgs(), metadata=md, timeout=10))
        elif method == "Chat":
            n = sum(1 for _ in ch.stream_stream(path)(msgs(), metadata=md, timeout=10))
        else:
            n = len(ch.unary_unary(path)(arg.encode(), metadata=md, timeout=10))
        print(method, "OK", n, flush=True)
    except grpc.RpcError as e:
        print(method, e.code().name, flush=True)
ch.close()
"#;

pub fn grpc_server(port: u16) -> Proc {
    let p = Proc::spawn(
        "grpc server",
        Command::new(grpc_python())
            .arg("-c")
            .arg(PY_GRPC_SERVER)
            .arg(port.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    p
}

/// Runs the client to completion; returns its pid and output lines.
pub fn grpc_client(port: u16, traceparent: Option<&str>, calls: &[&str]) -> (u32, Vec<String>) {
    let child = Command::new(grpc_python())
        .arg("-c")
        .arg(PY_GRPC_CLIENT)
        .arg(port.to_string())
        .arg(traceparent.unwrap_or("-"))
        .args(calls)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("grpc client");
    let pid = child.id();
    let out = child.wait_with_output().expect("grpc client output");
    assert!(out.status.success(), "grpc client failed");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (pid, lines)
}

/// `nghttpd` serving `dir` over h2c (prior knowledge or `Upgrade: h2c`).
pub fn nghttpd(port: u16, dir: &TempDir) -> Proc {
    let p = Proc::spawn(
        "nghttpd",
        Command::new("nghttpd")
            .args(["--no-tls", "--address=127.0.0.1", "-d"])
            .arg(&dir.0)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    p
}

/// `nghttpx` on 127.0.0.1:`port` (cleartext: HTTP/1.1, h2c with prior
/// knowledge or by `Upgrade: h2c`), proxying to an h2c `backend`.
pub fn nghttpx(port: u16, backend: u16) -> Proc {
    let p = Proc::spawn(
        "nghttpx",
        Command::new("nghttpx")
            .arg(format!("--frontend=127.0.0.1,{port};no-tls"))
            .arg(format!("--backend=127.0.0.1,{backend};;proto=h2"))
            .args([
                "--workers=1",
                "--log-level=ERROR",
                "--conf=/dev/null",
                "--no-ocsp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    p
}

/// etcd (grpc-go 1.33) with its client API on 127.0.0.1:`port` (plaintext
/// h2c) and its peer API on `peer_port`, data in `dir`.
pub fn etcd(port: u16, peer_port: u16, dir: &TempDir) -> Proc {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let p = Proc::spawn(
        "etcd",
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.0.join("etcd"))
            .args(["--name", "t", "--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    p
}

/// Runs `etcdctl` (v3 API, gRPC) against 127.0.0.1:`port`.
pub fn etcdctl(port: u16, args: &[&str]) -> (u32, std::process::Output) {
    let child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    let pid = child.id();
    (pid, child.wait_with_output().expect("etcdctl output"))
}
