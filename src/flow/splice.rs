//! Spliced connections: the host's loopback joined to the guest's own loopback.
//!
//! Theory of operation. A published port's client that connects from the host's loopback is
//! not carried through the TAP and smoltcp (three copies per byte, and frames the guest's
//! kernel must process). Instead tapir opens a socket inside the guest's network namespace
//! (`namespace::factory`), connects it to the guest's own 127.0.0.1 at the forwarded port, and
//! moves the bytes between the two sockets with splice(2), through one pipe per direction, as
//! pasta does: pages go from one socket's receive queue to the other's send queue without being
//! copied into tapir. The guest sees the client come from 127.0.0.1 instead of 10.0.2.2.
//! The other way (`-T`), a client of a listener on the guest's 127.0.0.1 is joined to a
//! connection to the host's, and the relay is the same.
//!
//! This module is the relay's state machine. It never touches an fd: the two sockets and the
//! pipes are behind [`Splicer`], so the edge cases are unit-tested against a fake.
//!
//! Invariants:
//! - Readiness is edge-triggered. A side's readable flag is cleared only when a fill reports
//!   `WouldBlock` with its pipe empty: with bytes in the pipe, `WouldBlock` may mean the pipe
//!   has no free slot (a pipe counts buffers, not bytes), so the side stays "maybe readable"
//!   and is tried again once the pipe drains. Nothing waits for an edge that already passed.
//! - A direction's end of file is passed on (`shutdown(SHUT_WR)` on the other socket) only
//!   after its pipe is empty, so no byte is lost to a half-close.
//! - Any error other than `WouldBlock`/`Interrupted` ends the relay with a reset, which the
//!   caller passes on to both peers.

use std::io;

/// One of the relay's two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The socket in the host's namespace: a `-p` client tapir accepted, or tapir's
    /// connection for a `-T` client.
    Host,
    /// The socket in the guest's namespace: tapir's connection to the guest's loopback for a
    /// `-p` client, or a `-T` client tapir accepted there.
    Guest,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Host => 0,
            Side::Guest => 1,
        }
    }

    pub fn other_side(self) -> Side {
        match self {
            Side::Host => Side::Guest,
            Side::Guest => Side::Host,
        }
    }
}

/// The fd work the relay asks for.
pub trait Splicer {
    /// Moves at most `max` bytes from `from`'s socket into the pipe towards the other side.
    /// `Ok(0)` is end of file.
    fn fill(&mut self, from: Side, max: usize) -> io::Result<usize>;
    /// Moves at most `len` bytes out of `from`'s pipe into the other side's socket.
    fn drain(&mut self, from: Side, len: usize) -> io::Result<usize>;
    /// Half-closes `to`'s socket: no more bytes towards its peer.
    fn shutdown_write(&mut self, to: Side) -> io::Result<()>;
}

/// What the caller must do after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep going; wait for readiness.
    Open,
    /// Both directions ended cleanly: close both sockets.
    Done,
    /// A socket failed: reset both peers.
    Reset,
}

/// One direction: bytes read from its source socket, held in its pipe, written to the other.
#[derive(Debug, Default, Clone, Copy)]
struct Flow {
    in_pipe: usize,
    eof: bool,
    shut: bool,
}

/// The relay between a host client and the guest's loopback.
#[derive(Debug)]
pub struct Relay {
    /// Indexed by the source side.
    flows: [Flow; 2],
    readable: [bool; 2],
    writable: [bool; 2],
    pipe_size: usize,
    /// Bytes written to either socket so far.
    moved: u64,
}

impl Relay {
    /// A relay whose pipes hold at most `pipe_size` bytes each. Both sockets start out
    /// readable and writable (a fresh edge-triggered registration may have missed nothing).
    pub fn new(pipe_size: usize) -> Relay {
        Relay {
            flows: [Flow::default(); 2],
            readable: [true; 2],
            writable: [true; 2],
            pipe_size: pipe_size.max(1),
            moved: 0,
        }
    }

    /// Readiness reported by the event loop for `side`'s socket.
    pub fn ready(&mut self, side: Side, readable: bool, writable: bool) {
        self.readable[side.index()] |= readable;
        self.writable[side.index()] |= writable;
    }

    /// Bytes read from `from` and not yet written to the other side.
    pub fn in_flight(&self, from: Side) -> usize {
        self.flows[from.index()].in_pipe
    }

    /// Bytes written to either socket since the relay began.
    pub fn bytes_moved(&self) -> u64 {
        self.moved
    }

    /// Moves what can move in both directions until both would block.
    pub fn pump(&mut self, io: &mut impl Splicer) -> Outcome {
        for from in [Side::Host, Side::Guest] {
            if self.pump_one(io, from).is_err() {
                return Outcome::Reset;
            }
        }
        if self.flows.iter().all(|f| f.shut) {
            Outcome::Done
        } else {
            Outcome::Open
        }
    }

    fn pump_one(&mut self, io: &mut impl Splicer, from: Side) -> io::Result<()> {
        let (src, dst) = (from.index(), from.other_side().index());
        loop {
            let mut moved = false;
            let flow = &mut self.flows[src];
            if !flow.eof && self.readable[src] && flow.in_pipe < self.pipe_size {
                match io.fill(from, self.pipe_size - flow.in_pipe) {
                    Ok(0) => flow.eof = true,
                    Ok(n) => {
                        flow.in_pipe += n;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // See the module comment: only an empty pipe proves the socket empty.
                        if flow.in_pipe == 0 {
                            self.readable[src] = false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                    Err(e) => return Err(e),
                }
            }
            if flow.in_pipe > 0 && self.writable[dst] {
                match io.drain(from, flow.in_pipe) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        flow.in_pipe -= n.min(flow.in_pipe);
                        self.moved += n as u64;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable[dst] = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                    Err(e) => return Err(e),
                }
            }
            if !moved {
                break;
            }
        }
        let flow = &mut self.flows[src];
        if flow.eof && flow.in_pipe == 0 && !flow.shut {
            flow.shut = true;
            io.shutdown_write(from.other_side())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::collections::VecDeque;

    /// Two in-memory sockets and two pipes. A socket's `input` is what its peer sent (read by
    /// fill); `output` what the relay wrote to it; `room` how much more it accepts before
    /// blocking. A pipe holds at most `slots` fills, like a kernel pipe's buffers.
    #[derive(Default)]
    struct Fake {
        input: [VecDeque<u8>; 2],
        eof: [bool; 2],
        output: [Vec<u8>; 2],
        room: [usize; 2],
        shut: [bool; 2],
        pipe: [VecDeque<Vec<u8>>; 2],
        slots: usize,
        fail_drain: Option<io::ErrorKind>,
        fills: usize,
    }

    impl Fake {
        fn new(slots: usize) -> Fake {
            Fake {
                slots,
                room: [usize::MAX; 2],
                ..Fake::default()
            }
        }
    }

    impl Splicer for Fake {
        fn fill(&mut self, from: Side, max: usize) -> io::Result<usize> {
            self.fills += 1;
            let i = from.index();
            if self.input[i].is_empty() {
                return if self.eof[i] {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            if self.pipe[i].len() >= self.slots {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // Like a TCP receive queue: at most 1000 bytes per buffer.
            let n = max.min(self.input[i].len()).min(1000);
            let chunk: Vec<u8> = self.input[i].drain(..n).collect();
            self.pipe[i].push_back(chunk);
            Ok(n)
        }

        fn drain(&mut self, from: Side, len: usize) -> io::Result<usize> {
            if let Some(kind) = self.fail_drain {
                return Err(kind.into());
            }
            let (i, o) = (from.index(), from.other_side().index());
            assert!(!self.shut[o], "no write after shutdown");
            let mut moved = 0;
            while moved < len && self.room[o] > 0 {
                let Some(mut chunk) = self.pipe[i].pop_front() else {
                    break;
                };
                let n = chunk.len().min(len - moved).min(self.room[o]);
                self.output[o].extend(chunk.drain(..n));
                self.room[o] -= n;
                moved += n;
                if !chunk.is_empty() {
                    self.pipe[i].push_front(chunk);
                }
            }
            if moved == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(moved)
        }

        fn shutdown_write(&mut self, to: Side) -> io::Result<()> {
            self.shut[to.index()] = true;
            Ok(())
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn both_directions_arrive_whole_and_end_with_both_half_closes() {
        let mut io = Fake::new(16);
        let (up, down) = (bytes(100_000, 1), bytes(70_000, 2));
        io.input[0].extend(&up);
        io.input[1].extend(&down);
        io.eof = [true, true];
        let mut relay = Relay::new(65536);
        assert_eq!(relay.pump(&mut io), Outcome::Done);
        assert_eq!(io.output[1], up, "host to guest");
        assert_eq!(io.output[0], down, "guest to host");
        assert_eq!(io.shut, [true, true]);
        assert_eq!(relay.bytes_moved(), 170_000);
    }

    #[test]
    fn a_full_pipe_is_not_taken_for_an_empty_socket() {
        // Two slots of at most 1000 bytes: the pipe fills long before its byte size.
        let mut io = Fake::new(2);
        io.input[0].extend(&bytes(10_000, 3));
        io.room[1] = 0;
        let mut relay = Relay::new(65536);
        assert_eq!(relay.pump(&mut io), Outcome::Open);
        assert_eq!(relay.in_flight(Side::Host), 2000);
        // The guest side drains; no new readable edge comes for the host socket, whose
        // remaining bytes arrived long ago: the relay must still fetch them.
        io.room[1] = usize::MAX;
        relay.ready(Side::Guest, false, true);
        assert_eq!(relay.pump(&mut io), Outcome::Open);
        assert_eq!(io.output[1].len(), 10_000);
        assert_eq!(relay.in_flight(Side::Host), 0);
    }

    #[test]
    fn an_empty_socket_waits_for_its_edge() {
        let mut io = Fake::new(16);
        let mut relay = Relay::new(65536);
        assert_eq!(relay.pump(&mut io), Outcome::Open);
        let fills = io.fills;
        // No event: no syscall either.
        assert_eq!(relay.pump(&mut io), Outcome::Open);
        assert_eq!(io.fills, fills);
        io.input[1].extend(b"hello");
        relay.ready(Side::Guest, true, false);
        assert_eq!(relay.pump(&mut io), Outcome::Open);
        assert_eq!(io.output[0], b"hello");
    }

    #[test]
    fn end_of_file_waits_for_the_pipe_to_empty() {
        let mut io = Fake::new(16);
        io.input[1].extend(&bytes(5000, 4));
        io.eof[1] = true;
        io.room[0] = 1500;
        let mut relay = Relay::new(65536);
        assert_eq!(relay.pump(&mut io), Outcome::Open);
        assert!(!io.shut[0], "shut with 3500 bytes still in the pipe");
        io.room[0] = usize::MAX;
        relay.ready(Side::Host, false, true);
        assert_eq!(relay.pump(&mut io), Outcome::Open);
        assert_eq!(io.output[0].len(), 5000);
        assert!(io.shut[0]);
        // The other direction still works after the half-close.
        io.input[0].extend(b"more");
        relay.ready(Side::Host, true, false);
        relay.pump(&mut io);
        assert_eq!(io.output[1], b"more");
    }

    #[test]
    fn a_failed_write_resets() {
        let mut io = Fake::new(16);
        io.input[0].extend(b"x");
        io.fail_drain = Some(io::ErrorKind::BrokenPipe);
        assert_eq!(Relay::new(4096).pump(&mut io), Outcome::Reset);
    }
}
