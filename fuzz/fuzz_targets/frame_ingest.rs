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
#![no_main]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mio::{Events, Poll};
use tapir::config::{AddressPlan, Limits};
use tapir::event_loop::{Network, NetworkConfig};
use tapir::flow::policy::{self, Policy};
use tapir::stack::device::MAX_FRAME;

/// The host services the guest can reach through the gateway address.
struct Actors {
    web: TcpListener,
    echo: UdpSocket,
    dns: UdpSocket,
}

impl Actors {
    fn start() -> Actors {
        let web = TcpListener::bind("127.0.0.1:8080").expect("bind the web actor");
        web.set_nonblocking(true).unwrap();
        let echo = UdpSocket::bind("127.0.0.1:5300").expect("bind the echo actor");
        echo.set_nonblocking(true).unwrap();
        let dns = UdpSocket::bind("127.0.0.1:53").expect("bind the DNS actor");
        dns.set_nonblocking(true).unwrap();
        Actors { web, echo, dns }
    }

    /// One round of service; connections accepted are kept in `open` until the input ends.
    fn serve(&self, open: &mut Vec<TcpStream>) {
        while let Ok((mut stream, _)) = self.web.accept() {
            stream.set_nonblocking(true).unwrap();
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello");
            open.push(stream);
        }
        let mut buf = [0u8; 4096];
        for stream in open.iter_mut() {
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
        while let Ok((n, from)) = self.echo.recv_from(&mut buf) {
            let _ = self.echo.send_to(&buf[..n], from);
        }
        while let Ok((n, from)) = self.dns.recv_from(&mut buf) {
            if n > 2 {
                buf[2] |= 0x80;
            }
            let _ = self.dns.send_to(&buf[..n], from);
        }
    }

    /// Whatever the previous input left in the sockets is not this input's business.
    fn flush(&self) {
        let mut open = Vec::new();
        self.serve(&mut open);
    }
}

fn actors() -> &'static Actors {
    static ACTORS: OnceLock<Actors> = OnceLock::new();
    ACTORS.get_or_init(|| {
        tapir_fuzz::enter_private_netns();
        Actors::start()
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
        host_addrs: vec![],
        outbound: (None, None),
        pcap: None,
        ipv6: true,
        policy: Policy::new(rules),
    }
}

/// One turn of the event loop, as `Driver::turn` does it, without a TAP: host readiness,
/// dirty flows, timers, then everything queued for the guest is taken (and checked).
fn turn(
    net: &mut Network,
    poll: &mut Poll,
    events: &mut Events,
    now: Instant,
    open: &mut Vec<TcpStream>,
) {
    actors().serve(open);
    if poll.poll(events, Some(Duration::ZERO)).is_ok() {
        for event in events.iter() {
            net.handle_event(now, event.token(), event.is_readable(), event.is_writable());
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
    let actors = actors();
    actors.flush();
    let mut poll = Poll::new().expect("epoll");
    let mut events = Events::with_capacity(256);
    let registry = poll.registry().try_clone().expect("epoll");
    let mut now = Instant::now();
    let mut net = Network::new(&config(), registry, now).expect("the network starts");

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
        turn(&mut net, &mut poll, &mut events, now, &mut open);
    }
    // Let every timer run out: retransmissions, DNS and idle timeouts, RA periods.
    for step in [1, 3, 30, 61, 300] {
        now += Duration::from_secs(step);
        turn(&mut net, &mut poll, &mut events, now, &mut open);
    }
    drop((inbound, client));
});
