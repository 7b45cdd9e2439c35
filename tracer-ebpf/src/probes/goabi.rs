//! What Go's probes share: the amd64 register ABI (Go >= 1.17: arguments
//! and results in RAX, RBX, RCX, RDI, ...; the current goroutine's `g` in
//! R14), and following a `net.Conn` to its socket fd.
use aya_ebpf::{helpers::bpf_probe_read_user, programs::ProbeContext};
use tracer_common::GoTlsLayout;

/// Largest fd taken from a Go `poll.FD` (anything beyond is not an fd).
const MAX_FD: i64 = 1 << 24;

#[inline(always)]
pub fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the user address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
pub fn read_u32(addr: u64) -> Option<u32> {
    // SAFETY: bpf_probe_read_user checks the user address.
    unsafe { bpf_probe_read_user(addr as *const u32) }.ok()
}

/// The registers Go's probes read (x86-64 `pt_regs`).
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdi: u64,
    pub r14: u64,
}

#[inline(always)]
pub fn regs(ctx: &ProbeContext) -> Regs {
    // SAFETY: `ctx.regs` is the probe's `pt_regs`, readable directly by a
    // kprobe-type program.
    unsafe {
        let r = &*ctx.regs;
        Regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdi: r.rdi,
            r14: r.r14,
        }
    }
}

/// The first method slot of the itab of the interface at `iface`, and its
/// data pointer.
#[inline(always)]
pub fn iface(iface: u64, l: &GoTlsLayout) -> Option<(u64, u64)> {
    let tab = read_u64(iface)?;
    let data = read_u64(iface.checked_add(8)?)?;
    if tab == 0 || data == 0 {
        return None;
    }
    Some((read_u64(tab.checked_add(u64::from(l.itab_fun0))?)?, data))
}

/// The fd of a `*net.TCPConn`.
#[inline(always)]
fn tcpconn_fd(tcpconn: u64, l: &GoTlsLayout) -> Option<u32> {
    let netfd = read_u64(tcpconn.checked_add(u64::from(l.tcpconn_fd))?)?;
    let sysfd = read_u64(netfd.checked_add(u64::from(l.netfd_sysfd))?)? as i64;
    (0..MAX_FD).contains(&sysfd).then_some(sysfd as u32)
}

/// The socket behind `*tls.Conn` `c`, when its `net.Conn` is a
/// `*net.TCPConn` (known by the itab's first method).
#[inline(always)]
pub fn tls_conn_fd(c: u64, l: &GoTlsLayout) -> Option<u32> {
    let (fun0, data) = iface(c.checked_add(u64::from(l.tls_conn))?, l)?;
    if fun0 != l.tcpconn_close {
        return None;
    }
    tcpconn_fd(data, l)
}

/// The socket behind the `net.Conn` interface at `at`: a `*net.TCPConn`,
/// or a `*tls.Conn` over one, or grpc-go's TLS wrapper (`syscallConn`)
/// around such a `*tls.Conn`. Anything else is not followed.
#[inline(always)]
pub fn net_conn_fd(at: u64, l: &GoTlsLayout) -> Option<u32> {
    let (fun0, data) = iface(at, l)?;
    if fun0 == l.tcpconn_close {
        tcpconn_fd(data, l)
    } else if fun0 == l.tlsconn_close && l.tlsconn_close != 0 {
        tls_conn_fd(data, l)
    } else if fun0 == l.grpc_syscallconn_close && l.grpc_syscallconn_close != 0 {
        // One level only: the embedded conn must be the `*tls.Conn`.
        let (inner, tls) = iface(data.checked_add(u64::from(l.grpc_syscallconn_conn))?, l)?;
        if inner != l.tlsconn_close || l.tlsconn_close == 0 {
            return None;
        }
        tls_conn_fd(tls, l)
    } else {
        None
    }
}
