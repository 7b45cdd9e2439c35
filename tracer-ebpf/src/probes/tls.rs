//! TLS plaintext through the OpenSSL API (also BoringSSL and static
//! OpenSSL builds that export it, such as node):
//! - uprobes on `SSL_write`, `SSL_write_ex`, `SSL_read`, `SSL_read_ex` save
//!   the `SSL*`, the buffer and (for `_ex`) the byte-count pointer;
//! - one uretprobe on all four captures the plaintext with the byte count
//!   the call returned (`SSL_read` fills its buffer only by then);
//! - the socket: a read/write-family syscall the same thread makes inside
//!   the call names it (`inside_tls_call`, from the `sys_exit_*` hook), and
//!   the `SSL*` -> fd pair is remembered for calls that make no syscall
//!   (data already buffered by OpenSSL).
//!
//! The plaintext then goes through the same connection tracking,
//! classification and data events as socket payload (`capture::on_data`),
//! and the socket's ciphertext is never copied.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, LruHashMap, ProgramArray},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use tracer_common::{
    conn_key, EVENT_DLOPEN, EVENT_EXEC, MAX_SSL_FDS, SRC_SSL_READ, SRC_SSL_WRITE, STAT_TLS_CALLS,
    STAT_TLS_NO_FD, TLS_SOCKET,
};

use super::{
    capture::{emit_proc, fill_scratch, on_data, output_scratch},
    context::server_context,
    syscalls::traced,
};
use tracer_common::Config;

use crate::maps::{bump, config, PendingCall, CONNS};

/// A TLS call in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// Owner (0 when free); written last at entry, checked at return.
    pub pid_tgid: u64,
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *` that receives the byte count (`_ex` variants), else 0.
    pub count_ptr: u64,
    pub ts: u64,
    /// Socket seen inside the call, or `u32::MAX`.
    pub fd: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// Indexed by `tid & Config::inflight_mask`, like `INFLIGHT` (sized the
/// same by the agent). Separate from it: the syscalls a TLS call makes use
/// that one.
#[map]
pub static TLS_CALLS: Array<TlsCall> =
    Array::with_max_entries(tracer_common::DEFAULT_MAX_INFLIGHT, 0);

/// Key of [`SSL_FDS`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// The socket fd behind each `SSL*` seen (LRU: `SSL_free` is not probed).
#[map]
pub static SSL_FDS: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(MAX_SSL_FDS, 0);

const NO_FD: u32 = u32::MAX;

/// Tail-call table of the TLS return probe (kprobe-type programs cannot
/// share the tracepoint one).
#[map]
pub static TLS_TAIL_PROGS: ProgramArray = ProgramArray::with_max_entries(4, 0);

/// The last read-family syscall of a thread (outside TLS calls).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastRead {
    pub pid_tgid: u64,
    pub ts: u64,
    pub fd: u32,
    pub _pad: u32,
}

/// Indexed like [`TLS_CALLS`]. For TLS libraries that do their socket I/O
/// outside `SSL_read` (memory BIOs, as node does): the ciphertext a thread
/// read just before `SSL_read` came from the socket behind that `SSL*`.
#[map]
pub static LAST_READ: Array<LastRead> =
    Array::with_max_entries(tracer_common::DEFAULT_MAX_INFLIGHT, 0);

/// How recent that read must be (event loops feed the TLS library right
/// after the read, in the same callback).
const LAST_READ_MAX_AGE_NS: u64 = 5_000_000;

/// Called from the `sys_exit_*` hook for reads that moved bytes outside a
/// TLS call.
#[inline(always)]
pub fn note_read(pid_tgid: u64, fd: u32, cfg: &Config) {
    if let Some(r) = LAST_READ.get_ptr_mut((pid_tgid as u32) & cfg.inflight_mask) {
        // SAFETY: valid map value pointer; a racing thread sharing the slot
        // can only make the owner check below fail.
        unsafe {
            (*r).pid_tgid = pid_tgid;
            (*r).ts = bpf_ktime_get_ns();
            (*r).fd = fd;
        }
    }
}

/// The socket of an `SSL_read` that made no syscall: the thread's read
/// just before the call, if it is recent.
#[inline(always)]
fn recent_read_fd(pid_tgid: u64, call_ts: u64) -> Option<u32> {
    let r = LAST_READ.get_ptr((pid_tgid as u32) & config().inflight_mask)?;
    // SAFETY: valid map value pointer; fields copied out.
    let r = unsafe { *r };
    (r.pid_tgid == pid_tgid && r.ts <= call_ts && call_ts - r.ts < LAST_READ_MAX_AGE_NS)
        .then_some(r.fd)
}

#[inline(always)]
fn slot(pid_tgid: u64, cfg: &Config) -> Option<*mut TlsCall> {
    TLS_CALLS.get_ptr_mut((pid_tgid as u32) & cfg.inflight_mask)
}

#[inline(always)]
fn enter(ctx: &ProbeContext, kind: u8, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cfg = config();
    if !traced((pid_tgid >> 32) as u32, &cfg) {
        return;
    }
    let Some(slot) = slot(pid_tgid, &cfg) else {
        return;
    };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let count_ptr: u64 = if ex { ctx.arg(3).unwrap_or(0) } else { 0 };
    // SAFETY: valid map value pointer; owner cleared first, written last.
    unsafe {
        core::ptr::write_volatile(&mut (*slot).pid_tgid, 0);
        (*slot).ssl = ssl;
        (*slot).buf = buf;
        (*slot).count_ptr = count_ptr;
        (*slot).ts = bpf_ktime_get_ns();
        (*slot).fd = NO_FD;
        (*slot).kind = kind;
        core::ptr::write_volatile(&mut (*slot).pid_tgid, pid_tgid);
    }
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn tracer_ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, SRC_SSL_WRITE, false);
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn tracer_ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, SRC_SSL_WRITE, true);
    0
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`.
#[uprobe]
pub fn tracer_ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, SRC_SSL_READ, false);
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn tracer_ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, SRC_SSL_READ, true);
    0
}

/// Return of any of the four: `SSL_read`/`SSL_write` return the byte count
/// (<= 0: nothing moved); the `_ex` forms return 1 and store the count.
#[uretprobe]
pub fn tracer_ssl_ret(ctx: RetProbeContext) -> u32 {
    let _ = on_return(&ctx);
    0
}

#[inline(always)]
fn on_return(ctx: &RetProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = slot(pid_tgid, &config())?;
    // SAFETY: valid map value pointer; the owner check brackets the copy.
    let call = unsafe {
        if core::ptr::read_volatile(&(*slot).pid_tgid) != pid_tgid {
            return None;
        }
        let call = core::ptr::read_volatile(slot);
        core::ptr::write_volatile(&mut (*slot).pid_tgid, 0);
        call
    };
    if call.pid_tgid != pid_tgid {
        return None;
    }
    let ret: i64 = ctx.ret::<i64>() as i32 as i64;
    let bytes = if call.count_ptr != 0 {
        if ret != 1 {
            return None;
        }
        // SAFETY: bpf_probe_read_user checks the user pointer.
        unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.ok()?
    } else if ret > 0 {
        ret as u64
    } else {
        return None;
    };
    if bytes == 0 {
        return None;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let fd = if call.fd != NO_FD {
        let _ = SSL_FDS.insert(key, call.fd, 0);
        call.fd
    } else {
        // SAFETY: plain value copy.
        match unsafe { SSL_FDS.get(key) } {
            Some(fd) => *fd,
            None => {
                let recent = if call.kind == SRC_SSL_READ {
                    recent_read_fd(pid_tgid, call.ts)
                } else {
                    None
                };
                let Some(fd) = recent else {
                    bump(STAT_TLS_NO_FD);
                    return None;
                };
                let _ = SSL_FDS.insert(key, fd, 0);
                fd
            }
        }
    };
    bump(STAT_TLS_CALLS);
    let pending = PendingCall {
        pid_tgid,
        ts: call.ts,
        ptr: call.buf,
        len: bytes,
        fd,
        nr: 0,
        kind: call.kind,
        _pad: [0; 7],
    };
    let target = on_data(ctx, pid_tgid, &pending, bytes)?;
    let scratch = fill_scratch(pid_tgid, &pending, bytes, &target)?;
    server_context(ctx, &TLS_TAIL_PROGS, pid_tgid, &target, scratch);
    output_scratch(scratch);
    Some(())
}

/// Called from the `sys_exit_*` hook for every read/write-family syscall
/// that moved bytes: inside a TLS call of the same thread, the fd is that
/// call's socket and the bytes are ciphertext (not to be captured).
#[inline(always)]
pub fn inside_tls_call(pid_tgid: u64, fd: u32, cfg: &Config) -> bool {
    let Some(slot) = slot(pid_tgid, cfg) else {
        return false;
    };
    // SAFETY: valid map value pointer; racing writers only replace the fd.
    unsafe {
        if core::ptr::read_volatile(&(*slot).pid_tgid) != pid_tgid {
            return false;
        }
        if (*slot).fd == NO_FD {
            (*slot).fd = fd;
            // Later ciphertext outside TLS calls (e.g. written by an event
            // loop after the call) is skipped too.
            let key = conn_key((pid_tgid >> 32) as u32, fd);
            if let Some(st) = CONNS.get_ptr_mut(key) {
                if (*st).tls == 0 {
                    (*st).tls = TLS_SOCKET;
                }
            }
        }
    }
    true
}

/// `sched:sched_process_exec`: a new program; the agent looks for TLS
/// libraries in it.
#[tracepoint]
pub fn tracer_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if traced(tgid, &config()) {
        emit_proc(EVENT_EXEC, tgid);
    }
    0
}

/// Return of `dlopen` (libc): the process may have loaded a TLS library.
#[uretprobe]
pub fn tracer_dlopen_ret(ctx: RetProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if ctx.ret::<u64>() != 0 && traced(tgid, &config()) {
        emit_proc(EVENT_DLOPEN, tgid);
    }
    0
}
