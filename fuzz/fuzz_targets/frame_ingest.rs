//! A sequence of arbitrary guest frames through the whole rootless network, in virtual time:
//! classification, ARP/ND, DHCP, router advertisements, the DNS forwarder, smoltcp, the flow
//! table, the egress policy and the host-socket side, with the frame queue drained after
//! every step.
//!
//! The input is a list of records (`tapir_fuzz::records`): a two-byte length, a delay byte
//! and an Ethernet frame. Host sockets are real, in a private network namespace
//! (`tapir_fuzz::enter_private_netns`) where loopback actors play the host's services:
//! 127.0.0.1:8080/tcp answers and keeps reading, 127.0.0.1:5300/udp echoes, 127.0.0.1:53 is
//! the only DNS upstream and answers every query with the query itself, flagged as an
//! answer. The guest reaches them as 10.0.2.2 (host loopback); every other destination
//! fails at once. Two forwards (127.0.0.1:2222/tcp → 22, 127.0.0.1:2223/udp → 53) are
//! exercised by a host client at the start of each input.
//!
//! Cost: what does not depend on the input is made once per process ([`Harness`]): the
//! namespace, the actors and their listening sockets, the parsed configuration (policy
//! rules, forwards, limits) and the epoll instance with its event buffer. Each input still
//! builds its own `Network` from that configuration, which opens its own forward listeners,
//! DNS socket, smoltcp interface and flow tables, and drops it (closing every socket it
//! made, which also removes them from the epoll set) before the next input.
//!
//! Why inputs stay independent: the state carried from one input to the next is the
//! configuration (an immutable value; the network clones the policy, so hit counters start
//! at zero), the actors (stateless services: their sockets are drained by `flush` before
//! each input, and the connections they accepted are closed at its end) and an empty epoll
//! set. What the kernel keeps (TIME_WAIT sockets, which ephemeral port comes next) varies
//! between runs of the old per-input harness too, and nothing in tapir depends on it. So
//! one saved input replays the same way in a fresh process (`frame_ingest CRASH_FILE`),
//! which is how libFuzzer reproduces a crash.
#![no_main]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tapir::config::{AddressPlan, Limits};
use tapir::event_loop::{Network, NetworkConfig};
use tapir::flow::policy::{self, Policy};
use tapir::stack::device::MAX_FRAME;

/// The host services the guest can reach through the gateway address.
///
/// They are served when their sockets are ready (their own epoll instance, polled once per
/// turn), not by trying every socket every turn: an `accept` that finds nothing still makes
/// and frees a socket in the kernel, and that alone was a tenth of an input's cost.
struct Actors {
    web: TcpListener,
    echo: UdpSocket,
    dns: UdpSocket,
    ready: Poll,
    events: Events,
    buf: Vec<u8>,
}

const WEB: Token = Token(0);
const ECHO: Token = Token(1);
const DNS: Token = Token(2);
/// Connections accepted by the web actor: `Token(FIRST_STREAM + i)` is `open[i]`.
const FIRST_STREAM: usize = 3;

impl Actors {
    fn start() -> Actors {
        let web = TcpListener::bind("127.0.0.1:8080").expect("bind the web actor");
        web.set_nonblocking(true).unwrap();
        let echo = UdpSocket::bind("127.0.0.1:5300").expect("bind the echo actor");
        echo.set_nonblocking(true).unwrap();
        let dns = UdpSocket::bind("127.0.0.1:53").expect("bind the DNS actor");
        dns.set_nonblocking(true).unwrap();
        let ready = Poll::new().expect("epoll");
        for (fd, token) in [
            (web.as_raw_fd(), WEB),
            (echo.as_raw_fd(), ECHO),
            (dns.as_raw_fd(), DNS),
        ] {
            ready
                .registry()
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
                .expect("epoll");
        }
        Actors {
            web,
            echo,
            dns,
            ready,
            events: Events::with_capacity(64),
            buf: vec![0; 4096],
        }
    }

    /// One round of service; connections accepted are kept in `open` until the input ends.
    /// Readiness is edge-triggered, so each ready socket is drained.
    fn serve(&mut self, open: &mut Vec<TcpStream>) {
        if self
            .ready
            .poll(&mut self.events, Some(Duration::ZERO))
            .is_err()
        {
            return;
        }
        for event in self.events.iter() {
            match event.token() {
                WEB => accept_all(&self.web, &self.ready, open),
                ECHO => echo_all(&self.echo, &mut self.buf, false),
                DNS => echo_all(&self.dns, &mut self.buf, true),
                Token(i) => {
                    if let Some(stream) = open.get_mut(i - FIRST_STREAM) {
                        while matches!(stream.read(&mut self.buf), Ok(n) if n > 0) {}
                    }
                }
            }
        }
    }

    /// Whatever the previous input left in the sockets is not this input's business: every
    /// socket is drained whether or not it was reported ready (a stale readiness event left
    /// behind finds nothing to read later, which is harmless).
    fn flush(&mut self) {
        let mut open = Vec::new();
        accept_all(&self.web, &self.ready, &mut open);
        echo_all(&self.echo, &mut self.buf, false);
        echo_all(&self.dns, &mut self.buf, true);
    }
}

/// The web actor: answers every connection and keeps reading it.
fn accept_all(web: &TcpListener, ready: &Poll, open: &mut Vec<TcpStream>) {
    while let Ok((mut stream, _)) = web.accept() {
        stream.set_nonblocking(true).unwrap();
        let _ = stream.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello");
        let token = Token(FIRST_STREAM + open.len());
        let fd = stream.as_raw_fd();
        let _ = ready
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE);
        open.push(stream);
    }
}

/// The echo actor, and the DNS actor (which echoes the query flagged as an answer).
fn echo_all(socket: &UdpSocket, buf: &mut [u8], dns: bool) {
    while let Ok((n, from)) = socket.recv_from(buf) {
        if dns && n > 2 {
            buf[2] |= 0x80;
        }
        let _ = socket.send_to(&buf[..n], from);
    }
}

/// Everything that does not depend on the input, made once per process.
struct Harness {
    config: NetworkConfig,
    state: Mutex<Shared>,
}

/// What the inputs use in turn (libFuzzer runs them one at a time, on one thread).
struct Shared {
    actors: Actors,
    /// The loop's epoll instance and event buffer. Between inputs its interest set is empty:
    /// each input's network closes every socket it registered when it is dropped.
    poll: Poll,
    events: Events,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        tapir_fuzz::enter_private_netns();
        Harness {
            config: config(),
            state: Mutex::new(Shared {
                actors: Actors::start(),
                poll: Poll::new().expect("epoll"),
                events: Events::with_capacity(256),
            }),
        }
    })
}

fn config() -> NetworkConfig {
    // Small limits, so that inputs reach them.
    let limits = Limits {
        max_tcp_flows: 8,
        max_tcp_pending: 4,
        tcp_buffer: 16 * 1024,
        // Small enough that a few flows reach the budget: smaller rings, then refusals.
        tcp_buffer_total: 64 * 1024,
        max_udp_flows: 8,
        udp_idle: Duration::from_secs(60),
        max_icmp_flows: 4,
        icmp_idle: Duration::from_secs(10),
        // A bucket of 2, which a few requests empty and the records' waits refill.
        icmp_rate: 10,
        max_tx_frames: 64,
    };
    let rules = [
        "deny 192.0.2.0/24",
        "allow 10.0.2.2:8080/tcp",
        "deny 0.0.0.0/0:9/udp",
    ];
    let at = policy::Origin::Line {
        file: "fuzz".into(),
        line: 1,
    };
    let rules = rules
        .iter()
        .map(|r| policy::parse_line(r, &at).expect("the fuzz policy parses"))
        .collect();
    NetworkConfig {
        plan: AddressPlan::default(),
        mtu: 1500,
        limits,
        forwards: vec![
            "127.0.0.1:2222:22".parse().unwrap(),
            "127.0.0.1:2223:53/udp".parse().unwrap(),
        ],
        vnet_hdr: false,
        // Loopback only: never the machine's resolv.conf.
        nameservers: vec![Ipv4Addr::LOCALHOST.into()],
        resolv_conf: None,
        host_addrs: vec![],
        outbound: (None, None),
        pcap: None,
        ipv6: true,
        policy: Policy::new(rules),
        busy_poll: std::time::Duration::ZERO,
    }
}

/// One turn of the event loop, as `Driver::turn` does it, without a TAP: host readiness,
/// dirty flows, timers, then everything queued for the guest is taken (and checked).
fn turn(net: &mut Network, shared: &mut Shared, now: Instant, open: &mut Vec<TcpStream>) {
    shared.actors.serve(open);
    if shared
        .poll
        .poll(&mut shared.events, Some(Duration::ZERO))
        .is_ok()
    {
        for event in shared.events.iter() {
            net.handle_event(now, event);
        }
    }
    net.service_dirty(now);
    net.handle_timers(now);
    net.service_dirty(now);
    while let Some(frame) = net.tx.front() {
        assert!(
            frame.len() >= 14 && frame.len() <= MAX_FRAME,
            "a {}-byte frame to the guest",
            frame.len()
        );
        net.tx.pop_front();
    }
    net.resume_starved();
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let mut guard = harness.state.lock().unwrap_or_else(|e| e.into_inner());
    let shared = &mut *guard;
    shared.actors.flush();
    let registry = shared.poll.registry().try_clone().expect("epoll");
    let mut now = Instant::now();
    let mut net = Network::new(&harness.config, registry, now).expect("the network starts");

    // A host client of each forward, so inbound flows exist for the guest to answer.
    let inbound = TcpStream::connect("127.0.0.1:2222").ok();
    let client = UdpSocket::bind("127.0.0.1:0").ok();
    if let Some(c) = &client {
        let _ = c.send_to(
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
            "127.0.0.1:2223",
        );
    }

    let mut open = Vec::new();
    for (wait, frame) in tapir_fuzz::records(data) {
        now += wait;
        net.handle_frame(now, frame);
        turn(&mut net, shared, now, &mut open);
    }
    // Let every timer run out: retransmissions, DNS and idle timeouts, RA periods.
    for step in [1, 3, 30, 61, 300] {
        now += Duration::from_secs(step);
        turn(&mut net, shared, now, &mut open);
    }
    drop((inbound, client));
});
