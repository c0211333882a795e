//! The socket factory: a small helper process that stays in the guest's network namespace and
//! hands tapir TCP sockets created there, for spliced forwards (`flow::splice`).
//!
//! Theory of operation. A socket belongs to the network namespace it was created in, whatever
//! process later uses it. tapir lives in the host's namespace and, being unprivileged there,
//! cannot `setns` into the guest's. So `spawn`'s child, before it execs the command, forks a
//! helper (twice, so that it is not the command's child and a shell's `wait` never waits for
//! it) that answers each request byte with a fresh non-blocking IPv4 TCP socket (splices go to
//! the guest's 127.0.0.1), passed back with SCM_RIGHTS. It holds nothing else: stdio is /dev/null, every
//! other fd is closed, and it leaves the command's session so that the terminal's signals are
//! not for it. It exits when tapir's end of the socket pair closes.
//!
//! The helper runs in the guest's user namespace, so the guest can kill it, stop it, or answer
//! in its place. [`SocketFactory`] therefore waits at most [`ANSWER_LIMIT`] and accepts only
//! an unbound IPv4 TCP socket; on any failure tapir stops asking and
//! carries forwards through the TAP as before.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::sys::fdpass::{self, Received};

/// How long tapir waits for a socket before giving up on the factory for good.
pub const ANSWER_LIMIT: Duration = Duration::from_millis(200);

/// The helper's loop; returns its exit code. `sock` is its end of the pair.
pub(super) fn serve(sock: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    let Some(sock) = crate::sys::keep_only(sock) else {
        return 1;
    };
    let mut request = [0u8; 1];
    loop {
        match nix::sys::socket::recv(
            sock.as_raw_fd(),
            &mut request,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let sent = match socket(AddressFamily::Inet, SockType::Stream, flags, None) {
            Ok(fd) => fdpass::send_fd(sock.as_fd(), fd.as_fd(), b"tcp"),
            Err(e) => fdpass::send_error(sock.as_fd(), &format!("socket: {e}")),
        };
        if sent.is_err() {
            return 1;
        }
    }
}

/// tapir's end: asks for sockets inside the guest's namespace.
#[derive(Debug)]
pub struct SocketFactory {
    sock: OwnedFd,
}

impl SocketFactory {
    pub(super) fn new(sock: OwnedFd) -> SocketFactory {
        let _ = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, ANSWER_LIMIT.as_micros() as _),
        );
        let _ = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::SendTimeout,
            &nix::sys::time::TimeVal::new(0, ANSWER_LIMIT.as_micros() as _),
        );
        SocketFactory { sock }
    }

    /// A non-blocking IPv4 TCP socket in the guest's namespace.
    pub fn tcp_socket(&self) -> io::Result<OwnedFd> {
        nix::sys::socket::send(
            self.sock.as_raw_fd(),
            b"4",
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )?;
        let fd = match fdpass::recv(self.sock.as_fd()) {
            Ok(Received::Fd { fd, .. }) => fd,
            Ok(Received::Error(e)) => return Err(io::Error::other(e)),
            Ok(Received::Closed) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        check_socket(fd.as_fd())?;
        Ok(fd)
    }
}

/// Whether `fd` is what the factory should have made: an unbound, non-blocking IPv4 TCP
/// socket. The guest controls the factory; anything else is refused.
fn check_socket(fd: BorrowedFd<'_>) -> io::Result<()> {
    let sock = socket2::SockRef::from(&fd);
    let local = sock.local_addr()?.as_socket();
    let fine = sock.domain()? == socket2::Domain::IPV4
        && sock.r#type()? == socket2::Type::STREAM
        && sock.protocol()? == Some(socket2::Protocol::TCP)
        && local.is_some_and(|a| a.port() == 0 && a.ip().is_unspecified())
        && sock.nonblocking()?;
    if fine {
        Ok(())
    } else {
        Err(io::Error::other(
            "the socket factory sent something else than a fresh TCP socket",
        ))
    }
}
