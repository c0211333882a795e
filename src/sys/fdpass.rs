//! Handing a file descriptor, or an error sentence, from a helper process to its parent.
//!
//! The namespace child opens the TAP inside the guest's network namespace and passes the fd
//! back over a unix socketpair with SCM_RIGHTS. Each message is one datagram on a
//! SOCK_SEQPACKET pair (stream pairs work too when each side sends a single message):
//!
//! - `F` + payload, with exactly one fd attached: the fd and a few bytes of context;
//! - `E` + UTF-8 text: the child failed, and the text is the sentence to show the user.
//!
//! End of file (every sender closed its end) is a message too: with a close-on-exec socket it
//! means "the child exec'd". Received fds are close-on-exec. Anything else (a missing fd, an
//! unknown tag, a truncated message) is a protocol error; extra fds are closed.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use super::OsError;

/// The largest message, tag included; error sentences longer than this are cut.
pub const MAX_MESSAGE: usize = 4096;

const TAG_FD: u8 = b'F';
const TAG_ERROR: u8 = b'E';

/// Why a message could not be passed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdPassError {
    #[error("cannot create a socket pair to the helper process: {0}")]
    SocketPair(OsError),
    #[error("cannot send to the parent process: {0}")]
    Send(OsError),
    #[error("cannot receive from the helper process: {0}")]
    Recv(OsError),
    #[error("the helper process sent a malformed message ({0})")]
    Malformed(&'static str),
}

/// One message from the other end.
#[derive(Debug)]
pub enum Received {
    /// A file descriptor and its accompanying bytes.
    Fd { fd: OwnedFd, payload: Vec<u8> },
    /// The sender failed; this is its sentence.
    Error(String),
    /// The other end is closed (for a close-on-exec socket: the helper exec'd or exited).
    Closed,
}

/// A close-on-exec SOCK_SEQPACKET unix socketpair.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), FdPassError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| FdPassError::SocketPair(e.into()))
}

/// Sends `fd` with `payload` (at most `MAX_MESSAGE - 1` bytes).
pub fn send_fd(
    sock: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    payload: &[u8],
) -> Result<(), FdPassError> {
    if payload.len() >= MAX_MESSAGE {
        return Err(FdPassError::Send(OsError(Errno::EMSGSIZE)));
    }
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    send(sock, TAG_FD, payload, &cmsg)
}

/// Sends an error sentence instead of an fd.
pub fn send_error(sock: BorrowedFd<'_>, sentence: &str) -> Result<(), FdPassError> {
    let mut end = sentence.len().min(MAX_MESSAGE - 1);
    while !sentence.is_char_boundary(end) {
        end -= 1;
    }
    send(sock, TAG_ERROR, &sentence.as_bytes()[..end], &[])
}

fn send(
    sock: BorrowedFd<'_>,
    tag: u8,
    body: &[u8],
    cmsg: &[ControlMessage<'_>],
) -> Result<(), FdPassError> {
    let tag = [tag];
    let iov = [IoSlice::new(&tag), IoSlice::new(body)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(FdPassError::Send(e.into())),
        }
    }
}

/// Receives one message, waiting for it (the socket must be blocking).
pub fn recv(sock: BorrowedFd<'_>) -> Result<Received, FdPassError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg_space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let (len, flags, mut fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(FdPassError::Recv(e.into())),
        };
        let mut fds = Vec::new();
        // A truncated control message (ENOBUFS here) would have closed fds we never see.
        let cmsgs = msg
            .cmsgs()
            .map_err(|_| FdPassError::Malformed("control data truncated"))?;
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: SCM_RIGHTS installed `r` as a new fd in this process; nothing
                    // else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        break (msg.bytes, msg.flags, fds);
    };
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(FdPassError::Malformed("message too long"));
    }
    if len == 0 {
        return Ok(Received::Closed);
    }
    match buf[0] {
        TAG_FD => {
            if fds.is_empty() {
                return Err(FdPassError::Malformed("no file descriptor attached"));
            }
            let fd = fds.swap_remove(0);
            Ok(Received::Fd {
                fd,
                payload: buf[1..len].to_vec(),
            })
        }
        TAG_ERROR => Ok(Received::Error(
            String::from_utf8_lossy(&buf[1..len]).into_owned(),
        )),
        _ => Err(FdPassError::Malformed("unknown message tag")),
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn fd_crosses_the_pair() {
        let (a, b) = seqpacket_pair().unwrap();
        // A real file, so that the received fd can be checked for identity.
        let file = tempfile_with(b"hello");
        send_fd(a.as_fd(), file.as_fd(), b"tap0").unwrap();
        let Received::Fd { fd, payload } = recv(b.as_fd()).unwrap() else {
            panic!("expected an fd")
        };
        assert_eq!(payload, b"tap0");
        let mut got = std::fs::File::from(fd);
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn error_then_eof() {
        let (a, b) = seqpacket_pair().unwrap();
        send_error(a.as_fd(), "cannot run nope: no such file or directory").unwrap();
        drop(a);
        match recv(b.as_fd()).unwrap() {
            Received::Error(s) => assert_eq!(s, "cannot run nope: no such file or directory"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(recv(b.as_fd()).unwrap(), Received::Closed));
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let (a, b) = seqpacket_pair().unwrap();
        let long = "é".repeat(MAX_MESSAGE);
        send_error(a.as_fd(), &long).unwrap();
        let Received::Error(s) = recv(b.as_fd()).unwrap() else {
            panic!()
        };
        assert!(s.len() < MAX_MESSAGE && s.chars().all(|c| c == 'é'));
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("tapir-fdpass-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(bytes).unwrap();
        f
    }
}
