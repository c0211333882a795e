//! The fd side of a spliced forward (see `flow::splice`): two sockets and a pipe per direction.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};

use crate::flow::splice::{Side, Splicer};

/// Bytes asked for each pipe: 16 TCP segments of 64 KiB at loopback's MTU. The kernel may
/// give less (an unprivileged user's pipes shrink to one page past `pipe-user-pages-soft`);
/// the relay works with whatever it got.
const PIPE_SIZE: i32 = 1 << 20;

/// A non-blocking, close-on-exec pipe and its capacity in bytes.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A smaller pipe is slower, not wrong.
        let _ = fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        let size = fcntl(write.as_fd(), FcntlArg::F_GETPIPE_SZ)?;
        Ok(Pipe {
            read,
            write,
            size: usize::try_from(size).unwrap_or(4096),
        })
    }
}

/// The two sockets of a spliced forward and their pipes (`pipes[0]` carries host to guest).
#[derive(Debug)]
pub struct SplicedSockets<S> {
    pub host: S,
    pub guest: S,
    pipes: [Pipe; 2],
}

impl<S: AsFd> SplicedSockets<S> {
    /// Joins `host` and `guest` with two new pipes. If the pipes cannot be made (out of
    /// descriptors), both sockets come back with the error, to be carried another way or
    /// reset.
    pub fn new(host: S, guest: S) -> Result<SplicedSockets<S>, (io::Error, S, S)> {
        match Pipe::new().and_then(|a| Ok([a, Pipe::new()?])) {
            Ok(pipes) => Ok(SplicedSockets { host, guest, pipes }),
            Err(e) => Err((e, host, guest)),
        }
    }

    /// Gives the host socket back (for the TAP path when the guest's loopback refuses).
    pub fn into_host(self) -> S {
        self.host
    }

    /// The smaller pipe's capacity: what the relay may hold per direction.
    pub fn pipe_size(&self) -> usize {
        self.pipes[0].size.min(self.pipes[1].size)
    }

    /// The socket on `side`.
    pub fn socket(&self, side: Side) -> &S {
        match side {
            Side::Host => &self.host,
            Side::Guest => &self.guest,
        }
    }

    fn pipe(&self, from: Side) -> &Pipe {
        match from {
            Side::Host => &self.pipes[0],
            Side::Guest => &self.pipes[1],
        }
    }
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

impl<S: AsFd> Splicer for SplicedSockets<S> {
    fn fill(&mut self, from: Side, max: usize) -> io::Result<usize> {
        let pipe = self.pipe(from);
        Ok(splice(
            self.socket(from).as_fd(),
            None,
            pipe.write.as_fd(),
            None,
            max,
            FLAGS,
        )?)
    }

    fn drain(&mut self, from: Side, len: usize) -> io::Result<usize> {
        let pipe = self.pipe(from);
        let to = self.socket(from.other_side());
        Ok(splice(
            pipe.read.as_fd(),
            None,
            to.as_fd(),
            None,
            len,
            FLAGS,
        )?)
    }

    fn shutdown_write(&mut self, to: Side) -> io::Result<()> {
        let fd = self.socket(to).as_fd();
        match nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            nix::sys::socket::Shutdown::Write,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
