//! Socket addresses of a traced fd, read through `pidfd_getfd(2)`: the agent
//! borrows a duplicate of the process's fd, asks `getsockname`/`getpeername`,
//! and closes the duplicate. Nothing is sent on it, so the traced traffic is
//! not disturbed. Needs Linux >= 5.6 and ptrace access (root).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// What could be learnt about a process's fd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketInfo {
    pub is_socket: bool,
    /// The socket's inode: the same for every fd and process that holds
    /// it (an inetd-style child reading fd 0 and writing fd 1).
    pub inode: Option<u64>,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

fn sys_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

pub fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

fn name_of(
    fd: i32,
    f: unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32,
) -> Option<SocketAddr> {
    // SAFETY: zeroed sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid buffer and length for getsockname/getpeername.
    let rc = unsafe { f(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) };
    if rc != 0 {
        return None;
    }
    sockaddr_to_std(&ss)
}

/// Inspects fd `fd` of process `pid`.
pub fn inspect(pid: u32, fd: u32) -> io::Result<SocketInfo> {
    // SAFETY: plain syscalls with integer arguments.
    let pidfd = sys_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) })?;
    let dup = sys_fd(unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            fd as libc::c_int,
            0,
        )
    })?;
    // SAFETY: zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(dup.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Ok(SocketInfo::default());
    }
    Ok(SocketInfo {
        is_socket: true,
        inode: Some(st.st_ino),
        local: name_of(dup.as_raw_fd(), libc::getsockname),
        peer: name_of(dup.as_raw_fd(), libc::getpeername),
    })
}

/// The kernel's view of a remote address (`raddr`/`rport` of the wire types).
pub fn wire_addr(family: u8, raddr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    match family {
        tracer_common::FAMILY_INET => {
            let ip = Ipv4Addr::new(raddr[0], raddr[1], raddr[2], raddr[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        tracer_common::FAMILY_INET6 => {
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(*raddr)), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn inspects_own_socket_and_rejects_files() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = TcpStream::connect(addr).expect("connect");
        let me = std::process::id();
        match inspect(me, c.as_raw_fd() as u32) {
            Ok(info) => {
                assert!(info.is_socket);
                assert_eq!(info.peer, Some(addr));
            }
            // pidfd_getfd needs ptrace rights over ourselves: always true,
            // but the syscall may be missing on very old kernels.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "{e}"),
        }
        let f = std::fs::File::open("/proc/self/status").expect("open");
        if let Ok(info) = inspect(me, f.as_raw_fd() as u32) {
            assert!(!info.is_socket);
        }
    }

    #[test]
    fn wire_addresses() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            wire_addr(tracer_common::FAMILY_INET, &raw, 80),
            Some("127.0.0.1:80".parse().expect("addr"))
        );
        assert_eq!(wire_addr(0, &raw, 80), None);
    }
}
