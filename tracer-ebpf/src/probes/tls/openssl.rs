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
//! classification and data events as socket payload (`data::on_data`),
//! and the socket's ciphertext is never copied.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{SRC_SSL_READ, SRC_SSL_WRITE, STAT_TLS_NO_FD};

use super::{emit_plaintext, recent_read_fd, slot, NO_FD};
use crate::maps::{bump, config, traced, PendingCall, SslKey, SSL_FDS};

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
    emit_plaintext(
        ctx,
        pid_tgid,
        PendingCall {
            pid_tgid,
            ts: call.ts,
            ptr: call.buf,
            len: bytes,
            fd,
            nr: 0,
            kind: call.kind,
            armed: 0,
            _pad: [0; 6],
        },
        bytes,
    )
}
