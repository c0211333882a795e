//! One guest TCP connection spliced to one host stream.
//!
//! The guest side is a smoltcp socket alone in its own `SocketSet` (smoltcp walks a set
//! linearly per packet, so one set per flow keeps every packet O(1) whatever the number of
//! flows). The host side is any [`HostStream`]: a non-blocking `TcpStream` in the event loop,
//! an in-memory pipe in tests.
//!
//! Bytes move without an intermediate buffer: `recv` hands smoltcp's receive ring straight to
//! `write(2)` and `send` hands its transmit ring straight to `read(2)`. Back-pressure is the
//! rings themselves: when the host does not take data the receive ring fills and the guest's
//! window closes; when the guest does not ACK the transmit ring fills and tapir stops reading
//! the host socket, so the kernel's window closes. Nothing grows without bound.
//!
//! Closing follows TCP both ways: the guest's FIN becomes `shutdown(SHUT_WR)` on the host once
//! every byte before it was written; the host's EOF becomes a FIN after the queued bytes; a
//! reset on either side resets the other.
//!
//! Buffers are budgeted ([`BufferBudget`]): each flow's two rings are fixed when it opens
//! (smoltcp cannot resize them, and the window scale follows the receive ring), so the budget
//! counts their capacity, not their contents. A guest that fills every ring it is given can
//! make tapir hold at most `Limits::tcp_buffer_total` bytes of ring.
//!
//! Guest-initiated flows start with a paused SYN-ACK: the guest's SYN is held in SYN-RECEIVED
//! until the host `connect()` finishes, and then either the SYN-ACK goes out or the socket is
//! aborted (RST), so a refused host connection is a refused guest connection.

use std::io::{self, Read, Write};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Duration;

use crate::config::TCP_BUFFER_MIN;
use crate::sys::alloc;

/// The host end of a spliced connection.
pub trait HostStream: Read + Write {
    /// Half-close: no more data towards the host.
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl HostStream for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// What the splice has seen of the host side. Readiness flags are edge-triggered: set by the
/// event loop on an event, cleared here on `WouldBlock`, or on a short read (see `closing`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostSide {
    pub readable: bool,
    pub writable: bool,
    /// An event said the host closed, failed or sent urgent data. Until then a read shorter
    /// than the room offered means the kernel's queue is empty, and the data that arrives
    /// next brings a new edge, so tapir stops there rather than making a read that can only
    /// say `WouldBlock`: on a request/response flow that read sat between the response and
    /// the guest. An EOF, an error or an urgent mark already queued brings no new edge (and
    /// a read stops short at an urgent mark), so from then on the host is read to the end.
    pub closing: bool,
    /// The host sent EOF; a FIN is queued towards the guest.
    pub eof: bool,
    /// The guest's FIN was passed on as `shutdown(SHUT_WR)`.
    pub shut_wr: bool,
    /// Bytes written to and read from the host socket so far.
    pub moved: u64,
}

/// What the event loop must do after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep going.
    Open,
    /// Both directions are finished cleanly: drop the flow.
    Done,
    /// The guest reset or the host failed: drop the flow and reset the host connection.
    Reset,
}

/// The byte budget of all TCP flows' rings.
///
/// A flow asks for `per_flow` bytes each way. It gets them while that leaves a reserve of
/// `total`: [`TCP_BUFFER_MIN`] each way for every flow that may still open (up to the flow
/// limit), but never more than half the total. Otherwise it gets the largest halving of
/// `per_flow` that leaves the reserve, and at worst the minimum while the total still has room
/// for it; past that it is refused. With the defaults the reserve covers every flow up to the
/// limit, so the flow limit, not the budget, refuses connections; a small total still gives
/// its first half to large windows. Sans-I/O: the event loop asks and gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferBudget {
    per_flow: usize,
    total: usize,
    max_flows: usize,
    /// Capacity of the rings of open flows, both directions.
    committed: usize,
}

impl BufferBudget {
    pub fn new(per_flow: usize, total: usize, max_flows: usize) -> BufferBudget {
        BufferBudget {
            per_flow: per_flow.max(TCP_BUFFER_MIN),
            total,
            max_flows,
            committed: 0,
        }
    }

    /// The ring size (each direction) for a new flow when `open` flows exist, now counted as
    /// committed; `None` when not even the minimum fits.
    pub fn grant(&mut self, open: usize) -> Option<usize> {
        let later = self.max_flows.saturating_sub(open + 1);
        let reserve = later.saturating_mul(2 * TCP_BUFFER_MIN).min(self.total / 2);
        let room = self.total.saturating_sub(self.committed);
        let mut size = self.per_flow;
        while size > TCP_BUFFER_MIN && 2 * size > room.saturating_sub(reserve) {
            size = (size / 2).max(TCP_BUFFER_MIN);
        }
        if 2 * size > room {
            return None;
        }
        self.committed += 2 * size;
        Some(size)
    }

    /// Gives back the rings of a closed flow that was granted `size`.
    pub fn release(&mut self, size: usize) {
        self.committed = self.committed.saturating_sub(2 * size);
    }

    /// Bytes of ring capacity held by open flows.
    pub fn committed(&self) -> usize {
        self.committed
    }

    /// Whether `size` is less than a flow asks for.
    pub fn is_reduced(&self, size: usize) -> bool {
        size < self.per_flow
    }
}

/// Guest-side options: no Nagle, and a timeout so a guest that stops answering cannot pin a flow.
/// smoltcp counts that timeout from the guest's last segment even when nothing is outstanding, so
/// an idle connection (an SSH session, a pooled database connection) would be reset after two
/// minutes of quiet; a keep-alive probe every 45 s, which any live guest kernel answers, keeps such
/// a connection open as the kernel and slirp4netns do, and still ends the flows of a guest that is
/// gone. ACKs wait up to 1 ms for data to ride on: a request's ACK then leaves with its response
/// instead of costing a TAP write (and a pass through the guest's TCP) of its own, which is what
/// made tapir's TCP round trip slower than its UDP one. smoltcp still ACKs at once every second
/// full segment and for a window update, so bulk transfers do not wait, and a guest sending with
/// Nagle waits at most 1 ms for an ACK (40 ms between two Linux hosts).
pub fn new_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(ring(buffer)),
        tcp::SocketBuffer::new(ring(buffer)),
    );
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(Some(Duration::from_millis(1)));
    socket.set_timeout(Some(GUEST_TIMEOUT));
    socket.set_keep_alive(Some(KEEP_ALIVE));
    socket
}

/// How long a flow waits for a guest that has stopped answering.
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How often an idle flow asks the guest whether it is still there (well inside
/// [`GUEST_TIMEOUT`], so that one lost probe is not fatal).
const KEEP_ALIVE: Duration = Duration::from_secs(45);

/// A zeroed ring of `len` bytes whose allocation is at least [`alloc::LARGE`], so that the
/// tapir binary's allocator gives it pages of its own that stay untouched until data flows.
/// (A 4 KiB ring from the heap would share pages with its neighbours' headers: 10 000 small
/// rings cost 80 MiB resident, idle, and stayed in the heap after the flows closed.) The
/// capacity beyond `len` is address space only.
fn ring(len: usize) -> Vec<u8> {
    let mut v = vec![0; len.max(alloc::LARGE)];
    v.truncate(len);
    v
}

/// What the guest is told when tapir's host `connect()` fails, so that the guest's own
/// `connect()` fails with the error the host saw: a refusal (or anything tapir cannot say
/// better) is a RST, ECONNREFUSED in the guest; routing failures are ICMP destination
/// unreachable, which a guest in SYN-SENT takes as fatal (Linux `tcp_v4_err`), so its connect
/// fails with ENETUNREACH or EHOSTUNREACH as it would through a kernel router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Reset,
    /// No route to the network (ICMP net unreachable, ICMPv6 no route).
    NetUnreachable,
    /// A route, but the host does not answer: neighbour resolution failed, or an
    /// `unreachable` route (ICMP host unreachable, ICMPv6 address unreachable).
    HostUnreachable,
    /// A `prohibit` route or a firewall reject (ICMP communication administratively
    /// prohibited, ICMPv6 administratively prohibited).
    Prohibited,
}

impl ConnectFailure {
    /// The answer for a host connect that failed with `errno` (`None`: no errno).
    pub fn from_errno(errno: Option<i32>) -> ConnectFailure {
        match errno {
            Some(libc::ENETUNREACH | libc::ENETDOWN) => ConnectFailure::NetUnreachable,
            Some(libc::EHOSTUNREACH | libc::EHOSTDOWN) => ConnectFailure::HostUnreachable,
            Some(libc::EACCES | libc::EPERM) => ConnectFailure::Prohibited,
            _ => ConnectFailure::Reset,
        }
    }
}

/// Whether `errno` says tapir itself ran out of something (descriptors, buffers, memory)
/// rather than the host refusing: an operator-visible limit, not the guest's doing.
pub fn is_resource_exhaustion(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A socket set holding just `socket`.
pub fn single_set(socket: tcp::Socket<'static>) -> (SocketSet<'static>, SocketHandle) {
    let mut set = SocketSet::new(Vec::with_capacity(1));
    let handle = set.add(socket);
    (set, handle)
}

/// Moves what can move between `socket` and `host`, and passes on closes and resets.
pub fn pump<S: HostStream>(socket: &mut tcp::Socket, host: &mut S, side: &mut HostSide) -> Verdict {
    if guest_to_host(socket, host, side).is_err() || host_to_guest(socket, host, side).is_err() {
        socket.abort();
        return Verdict::Reset;
    }
    let guest_closed = matches!(
        socket.state(),
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    );
    if guest_closed && !side.shut_wr && socket.recv_queue() == 0 {
        side.shut_wr = true;
        if host.shutdown_write().is_err() {
            socket.abort();
            return Verdict::Reset;
        }
    }
    match socket.state() {
        State::Closed | State::TimeWait if side.eof && side.shut_wr => Verdict::Done,
        State::Closed => Verdict::Reset,
        _ => Verdict::Open,
    }
}

/// Data the guest sent, written to the host until it would block.
fn guest_to_host<S: HostStream>(
    socket: &mut tcp::Socket,
    host: &mut S,
    side: &mut HostSide,
) -> io::Result<()> {
    while side.writable && socket.can_recv() {
        let written = socket.recv(|buf| match host.write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match written {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => side.moved += n as u64,
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => side.writable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Data from the host, read straight into the guest's transmit ring until either side stops.
fn host_to_guest<S: HostStream>(
    socket: &mut tcp::Socket,
    host: &mut S,
    side: &mut HostSide,
) -> io::Result<()> {
    while side.readable && !side.eof && socket.can_send() {
        let read = socket.send(|buf| {
            let room = buf.len();
            match host.read(buf) {
                Ok(n) => (n, Ok((n, room))),
                Err(e) => (0, Err(e)),
            }
        });
        match read {
            Ok(Ok((0, _))) => {
                side.eof = true;
                socket.close();
            }
            Ok(Ok((n, room))) => {
                side.moved += n as u64;
                side.readable &= n == room || side.closing;
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => side.readable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod test {
    //! The splice against an in-memory host and a smoltcp socket driven to ESTABLISHED by
    //! hand-made guest segments.
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn host_connect_errors_map_to_what_a_kernel_would_answer() {
        let cases = [
            (libc::ECONNREFUSED, ConnectFailure::Reset),
            (libc::ECONNRESET, ConnectFailure::Reset),
            (libc::ETIMEDOUT, ConnectFailure::Reset),
            (libc::EMFILE, ConnectFailure::Reset),
            (libc::EINVAL, ConnectFailure::Reset),
            (libc::ENETUNREACH, ConnectFailure::NetUnreachable),
            (libc::EHOSTUNREACH, ConnectFailure::HostUnreachable),
            (libc::EACCES, ConnectFailure::Prohibited),
            (libc::EPERM, ConnectFailure::Prohibited),
        ];
        for (errno, answer) in cases {
            assert_eq!(
                ConnectFailure::from_errno(Some(errno)),
                answer,
                "errno {errno}"
            );
        }
        assert_eq!(ConnectFailure::from_errno(None), ConnectFailure::Reset);
        assert!(is_resource_exhaustion(Some(libc::EMFILE)));
        assert!(is_resource_exhaustion(Some(libc::ENFILE)));
        assert!(!is_resource_exhaustion(Some(libc::ECONNREFUSED)));
        assert!(!is_resource_exhaustion(None));
    }

    use smoltcp::iface::{Config, Interface};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::time::Instant;
    use smoltcp::wire::{
        EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr,
        TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };

    use crate::stack::device::{Device, TxQueue, capabilities};

    /// A host that accepts `room` bytes before blocking and serves `input` then EOF (or
    /// blocks forever when `eof` is false).
    #[derive(Default)]
    struct FakeHost {
        written: Vec<u8>,
        room: usize,
        input: VecDeque<u8>,
        eof: bool,
        shut: bool,
        reads: usize,
    }

    impl Read for FakeHost {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.input.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.input.len());
            for b in buf.iter_mut().take(n) {
                *b = self.input.pop_front().unwrap();
            }
            Ok(n)
        }
    }

    impl Write for FakeHost {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl HostStream for FakeHost {
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }
    }

    const GUEST: IpAddress = IpAddress::v4(10, 0, 2, 100);
    const REMOTE: IpAddress = IpAddress::v4(198, 51, 100, 10);

    struct Rig {
        iface: Interface,
        caps: smoltcp::phy::DeviceCapabilities,
        tx: TxQueue,
        set: SocketSet<'static>,
        handle: SocketHandle,
        seq: TcpSeqNumber,
        ack: Option<TcpSeqNumber>,
        now: Instant,
    }

    impl Rig {
        fn new(buffer: usize) -> Rig {
            let caps = capabilities(1500, false);
            let mut tx = TxQueue::new(64, false);
            let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress([
                0x52, 0x55, 10, 0, 2, 2,
            ])));
            config.random_seed = 1;
            let now = Instant::from_millis(1000);
            let mut iface = Interface::new(config, &mut Device::new(None, &mut tx, &caps), now);
            iface.set_any_ip(true);
            iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 2), 24)).unwrap());
            let mut socket = new_socket(buffer);
            socket.listen((REMOTE, 80)).unwrap();
            let (set, handle) = single_set(socket);
            let mut rig = Rig {
                iface,
                caps,
                tx,
                set,
                handle,
                seq: TcpSeqNumber(1000),
                ack: None,
                now,
            };
            rig.arp_for_guest();
            rig.segment(TcpControl::Syn, &[]);
            let synack = rig.take_segments();
            rig.ack = Some(synack[0].seq_number + 1);
            rig.segment(TcpControl::None, &[]);
            assert_eq!(rig.socket().state(), State::Established);
            rig
        }

        fn socket(&mut self) -> &mut tcp::Socket<'static> {
            self.set.get_mut::<tcp::Socket>(self.handle)
        }

        fn arp_for_guest(&mut self) {
            // The guest asks for the gateway: smoltcp learns its MAC from the request.
            let mut f = vec![0xff; 6];
            f.extend([2, 0, 0, 0, 0, 0x64, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
            f.extend([
                2, 0, 0, 0, 0, 0x64, 10, 0, 2, 100, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2,
            ]);
            self.feed(&f);
            self.tx = TxQueue::new(64, false);
        }

        fn feed(&mut self, frame: &[u8]) {
            let mut dev = Device::new(Some(frame), &mut self.tx, &self.caps);
            self.iface
                .poll_ingress_single(self.now, &mut dev, &mut self.set);
            self.emit_due();
        }

        /// Everything smoltcp has to send at `self.now`, into `self.tx`.
        fn emit_due(&mut self) {
            let mut dev = Device::new(None, &mut self.tx, &self.caps);
            while self.iface.poll_egress(self.now, &mut dev, &mut self.set)
                != smoltcp::iface::PollResult::None
            {}
        }

        /// A guest segment at the next sequence number, acknowledging what tapir sent.
        fn segment(&mut self, control: TcpControl, payload: &[u8]) {
            let repr = TcpRepr {
                src_port: 40000,
                dst_port: 80,
                control,
                seq_number: self.seq,
                ack_number: self.ack,
                window_len: 65535,
                window_scale: if control == TcpControl::Syn {
                    Some(7)
                } else {
                    None
                },
                max_seg_size: if control == TcpControl::Syn {
                    Some(1460)
                } else {
                    None
                },
                sack_permitted: false,
                sack_ranges: [None; 3],
                timestamp: None,
                payload,
            };
            let ip = Ipv4Repr {
                src_addr: [10, 0, 2, 100].into(),
                dst_addr: [198, 51, 100, 10].into(),
                next_header: IpProtocol::Tcp,
                payload_len: repr.buffer_len(),
                hop_limit: 64,
            };
            let mut f = vec![0x52, 0x55, 10, 0, 2, 2, 2, 0, 0, 0, 0, 0x64, 0x08, 0x00];
            f.resize(14 + 20 + repr.buffer_len(), 0);
            let caps = ChecksumCapabilities::default();
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]), &caps);
            repr.emit(
                &mut TcpPacket::new_unchecked(&mut f[34..]),
                &GUEST,
                &REMOTE,
                &caps,
            );
            self.seq += repr.segment_len();
            self.feed(&f);
        }

        /// Segments tapir sent to the guest since the last call.
        fn take_segments(&mut self) -> Vec<OwnedSegment> {
            let mut out = Vec::new();
            while let Some(f) = self.tx.front() {
                let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
                assert_eq!(ip.next_header(), IpProtocol::Tcp);
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                out.push(OwnedSegment {
                    seq_number: tcp.seq_number(),
                    fin: tcp.fin(),
                    rst: tcp.rst(),
                    payload: tcp.payload().to_vec(),
                    window: tcp.window_len(),
                });
                self.tx.pop_front();
            }
            out
        }
    }

    #[derive(Debug)]
    struct OwnedSegment {
        seq_number: TcpSeqNumber,
        fin: bool,
        rst: bool,
        payload: Vec<u8>,
        window: u16,
    }

    fn ready() -> HostSide {
        HostSide {
            readable: true,
            writable: true,
            ..HostSide::default()
        }
    }

    #[test]
    fn budget_gives_full_rings_then_halves_then_the_minimum_then_refuses() {
        const K: usize = 1024;
        // 4 flows at most; 1 MiB asked; 2 MiB + 3 × 8 KiB of reserve fit in the total.
        let mut b = BufferBudget::new(1024 * K, 2048 * K + 24 * K + 512 * K, 4);
        assert_eq!(b.grant(0), Some(1024 * K));
        // 536 KiB left, 16 KiB of it reserved for the two flows that may still open: the next
        // flow gets 256 KiB each way.
        assert_eq!(b.grant(1), Some(256 * K));
        assert!(b.is_reduced(256 * K));
        // The rest goes down to the reserve, which the last flows still get.
        let third = b.grant(2).unwrap();
        assert!((TCP_BUFFER_MIN..256 * K).contains(&third), "{third}");
        assert!(b.grant(3).is_some());
        assert!(b.committed() <= 2048 * K + 24 * K + 512 * K);
        // Past the flow limit the reserve is gone: a fifth flow only gets what is left.
        let left = 2048 * K + 24 * K + 512 * K - b.committed();
        assert_eq!(b.grant(4).is_some(), left >= 2 * TCP_BUFFER_MIN);
        // Closing the first flow gives its megabyte back.
        b.release(1024 * K);
        assert_eq!(b.grant(3), Some(1024 * K));
    }

    #[test]
    fn small_rings_still_get_a_mapping_of_their_own() {
        let r = ring(TCP_BUFFER_MIN);
        assert_eq!(r.len(), TCP_BUFFER_MIN);
        assert!(r.capacity() >= alloc::LARGE);
        assert!(r.iter().all(|b| *b == 0));
        let socket = new_socket(TCP_BUFFER_MIN);
        assert_eq!(socket.recv_capacity(), TCP_BUFFER_MIN);
        assert_eq!(socket.send_capacity(), TCP_BUFFER_MIN);
    }

    #[test]
    fn budget_never_commits_past_the_total() {
        let total = 100 * TCP_BUFFER_MIN + 1;
        let mut b = BufferBudget::new(1 << 20, total, 10_000);
        let mut sizes = Vec::new();
        while let Some(size) = b.grant(sizes.len()) {
            assert!(size >= TCP_BUFFER_MIN);
            sizes.push(size);
            assert!(b.committed() <= total);
        }
        // The reserve (half the total: the flow limit would need far more) went to the last
        // flows at the minimum; the first half to fewer, larger rings; nothing usable is left.
        assert!(sizes[0] > TCP_BUFFER_MIN, "{sizes:?}");
        assert!(sizes.iter().rev().take(25).all(|s| *s == TCP_BUFFER_MIN));
        assert!(total - b.committed() < 2 * TCP_BUFFER_MIN);
    }

    #[test]
    fn guest_data_reaches_the_host_with_back_pressure() {
        let mut rig = Rig::new(4096);
        let mut host = FakeHost {
            room: 1000,
            ..FakeHost::default()
        };
        let mut side = ready();
        rig.segment(TcpControl::Psh, &[7; 3000]);
        let v = pump(rig.socket(), &mut host, &mut side);
        assert_eq!(v, Verdict::Open);
        // The host took 1000 bytes and would block: the rest waits in smoltcp's ring.
        assert_eq!(host.written.len(), 1000);
        assert_eq!(side.moved, 1000);
        assert!(!side.writable);
        assert_eq!(rig.socket().recv_queue(), 2000);
        // Room again: the remaining bytes go out, in order.
        host.room = usize::MAX;
        side.writable = true;
        pump(rig.socket(), &mut host, &mut side);
        assert_eq!(host.written, vec![7; 3000]);
        assert_eq!(side.moved, 3000);
    }

    #[test]
    fn host_data_and_eof_reach_the_guest() {
        let mut rig = Rig::new(4096);
        let mut host = FakeHost {
            room: usize::MAX,
            input: (0..100u8).collect(),
            eof: true,
            ..FakeHost::default()
        };
        // The data and the EOF came with one event, which says the host closed.
        let mut side = HostSide {
            closing: true,
            ..ready()
        };
        assert_eq!(pump(rig.socket(), &mut host, &mut side), Verdict::Open);
        assert!(side.eof);
        assert_eq!(side.moved, 100);
        rig.feed(&[]);
        let segs = rig.take_segments();
        let data: Vec<u8> = segs.iter().flat_map(|s| s.payload.clone()).collect();
        assert_eq!(data, (0..100u8).collect::<Vec<_>>());
        assert!(segs.iter().any(|s| s.fin), "FIN after the data: {segs:?}");
    }

    #[test]
    fn guest_half_close_shuts_the_host_write_side_after_the_data() {
        let mut rig = Rig::new(4096);
        let mut host = FakeHost {
            room: 10,
            ..FakeHost::default()
        };
        let mut side = ready();
        rig.segment(TcpControl::Fin, b"0123456789abcdef");
        pump(rig.socket(), &mut host, &mut side);
        // 6 bytes still queued: no shutdown yet.
        assert!(!host.shut);
        host.room = usize::MAX;
        side.writable = true;
        pump(rig.socket(), &mut host, &mut side);
        assert_eq!(host.written, b"0123456789abcdef");
        assert!(host.shut);
        // The host can still answer after the guest's FIN.
        host.input.extend(b"reply");
        host.eof = true;
        // The event the host's EOF brings says so.
        side.readable = true;
        side.closing = true;
        assert_eq!(pump(rig.socket(), &mut host, &mut side), Verdict::Open);
        rig.feed(&[]);
        let segs = rig.take_segments();
        let data: Vec<u8> = segs.iter().flat_map(|s| s.payload.clone()).collect();
        assert_eq!(data, b"reply");
    }

    #[test]
    fn guest_reset_resets_the_host() {
        let mut rig = Rig::new(4096);
        let mut host = FakeHost::default();
        let mut side = ready();
        rig.segment(TcpControl::Rst, &[]);
        assert_eq!(pump(rig.socket(), &mut host, &mut side), Verdict::Reset);
    }

    #[test]
    fn host_error_resets_the_guest() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl HostStream for Broken {
            fn shutdown_write(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut rig = Rig::new(4096);
        let mut side = ready();
        assert_eq!(pump(rig.socket(), &mut Broken, &mut side), Verdict::Reset);
        rig.feed(&[]);
        assert!(rig.take_segments().iter().any(|s| s.rst));
    }

    #[test]
    fn a_short_read_waits_for_the_next_event_unless_the_host_is_closing() {
        let mut rig = Rig::new(4096);
        let mut host = FakeHost {
            input: b"response".iter().copied().collect(),
            ..FakeHost::default()
        };
        let mut side = ready();
        assert_eq!(pump(rig.socket(), &mut host, &mut side), Verdict::Open);
        assert_eq!(host.reads, 1, "no read just to hear WouldBlock");
        assert!(!side.readable);
        rig.feed(&[]);
        let data: Vec<u8> = rig
            .take_segments()
            .iter()
            .flat_map(|s| s.payload.clone())
            .collect();
        assert_eq!(data, b"response");

        // The host's last bytes and its EOF came with one event: read on to the EOF.
        host.input.extend(b"bye");
        host.eof = true;
        side.readable = true;
        side.closing = true;
        pump(rig.socket(), &mut host, &mut side);
        assert_eq!(host.reads, 3);
        assert!(side.eof, "the EOF was read");
        rig.feed(&[]);
        let segs = rig.take_segments();
        assert!(segs.iter().any(|s| s.fin), "{segs:?}");
    }

    #[test]
    fn a_full_transmit_ring_stops_reading_the_host() {
        let mut rig = Rig::new(1024);
        let mut host = FakeHost {
            room: usize::MAX,
            input: std::iter::repeat_n(1u8, 5000).collect(),
            ..FakeHost::default()
        };
        let mut side = ready();
        pump(rig.socket(), &mut host, &mut side);
        // Only what fits in the 1 KiB ring was read; the host keeps the rest.
        assert_eq!(host.input.len(), 5000 - 1024);
        assert!(side.readable, "not WouldBlock: the ring was full");
        let _ = rig.take_segments().first().map(|s| s.window);
    }

    #[test]
    fn an_idle_connection_stays_open_while_the_guest_answers_and_ends_when_it_does_not() {
        let mut rig = Rig::new(64 * 1024);
        rig.take_segments();
        // Ten minutes of quiet, but the guest's kernel answers every probe.
        let mut probes = 0;
        for _ in 0..40 {
            rig.arp_for_guest();
            rig.now += smoltcp::time::Duration::from_secs(15);
            rig.emit_due();
            for probe in rig.take_segments() {
                assert!(!probe.rst, "reset after {probes} probes");
                assert_eq!(
                    probe.payload,
                    [0],
                    "a keep-alive probe carries one old octet"
                );
                probes += 1;
                rig.segment(TcpControl::None, &[]);
            }
            assert_eq!(rig.socket().state(), State::Established);
        }
        assert!(
            (10..=14).contains(&probes),
            "{probes} probes in ten minutes"
        );
        // Then the guest goes silent: the flow is reset once the timeout has passed.
        for _ in 0..10 {
            rig.arp_for_guest();
            rig.now += smoltcp::time::Duration::from_secs(15);
            rig.emit_due();
            rig.take_segments();
        }
        assert_eq!(rig.socket().state(), State::Closed);
    }
}
