//! The rootless data path's per-frame cost, all in memory but the last hop: a guest TCP
//! segment is parsed (`stack::frame::classify`), fed to the flow's smoltcp socket
//! (`Network::handle_frame`), and its payload written to the flow's host socket
//! (`Network::service_dirty`), which is a real TCP connection to a sink on 127.0.0.1 drained by
//! a thread. The guest side is hand-made frames, as in event_loop.rs's tests: no TAP, no
//! namespace, no root.
//!
//! Cases: classifying one frame alone, then whole segments at MSS 1448 (what MTU 1500 gives
//! without offload) and 65,000 bytes (a TSO-sized segment, what MTU 65520 or TSO gives), with
//! criterion's throughput in bytes. The segments go out in sequence on one connection whose
//! window the sink keeps open; at the end the bench checks the sink received every byte sent,
//! so a figure never comes from segments the stack dropped.
//!
//! Run: `cargo bench --bench frame_path`.

use std::hint::black_box;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mio::{Events, Poll};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use tapir::config::{AddressPlan, Limits};
use tapir::event_loop::{Network, NetworkConfig};
use tapir::flow::policy::Policy;
use tapir::stack::frame;

const GUEST_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x64]);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// 10.0.2.2 is the host's loopback in the default plan.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const GUEST_PORT: u16 = 40000;
const GUEST_ISN: u32 = 1000;

/// A guest TCP segment to the sink, as the guest's kernel would put it on the TAP.
fn segment(port: u16, control: TcpControl, seq: u32, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: GUEST_PORT,
        dst_port: port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: (control == TcpControl::Syn).then_some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(65000),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST,
        dst_addr: GATEWAY,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = vec![0; 14 + 20 + tcp.buffer_len()];
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress(AddressPlan::virtual_mac(AddressPlan::default().gateway)),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut f[34..]),
        &ip.src_addr.into(),
        &ip.dst_addr.into(),
        &caps,
    );
    f
}

/// A sink on 127.0.0.1 that reads and counts everything it is sent.
fn sink() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a listener on 127.0.0.1");
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let received = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&received);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        for mut stream in listener.incoming().flatten() {
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    (port, received)
}

/// The network and the mio poll its host sockets are registered with, as the event loop has.
struct Harness {
    poll: Poll,
    events: Events,
    net: Network,
    isn: Option<u32>,
    scale: u8,
    window_end: u32,
}

impl Harness {
    fn new() -> Harness {
        let poll = Poll::new().expect("a mio poll");
        let config = NetworkConfig {
            plan: AddressPlan::default(),
            mtu: 65520,
            limits: Limits::default(),
            forwards: vec![],
            vnet_hdr: false,
            nameservers: vec![],
            resolv_conf: None,
            host_addrs: vec![],
            outbound: (None, None),
            pcap: None,
            ipv6: false,
            policy: Policy::default(),
            busy_poll: std::time::Duration::ZERO,
        };
        let registry = poll.registry().try_clone().expect("a registry");
        let net = Network::new(&config, registry, Instant::now()).expect("a network");
        Harness {
            poll,
            events: Events::with_capacity(256),
            net,
            isn: None,
            scale: 0,
            window_end: 0,
        }
    }

    /// One event-loop turn without the TAP: host socket readiness, then the flows.
    fn turn(&mut self, wait: Duration) {
        let _ = self.poll.poll(&mut self.events, Some(wait));
        let now = Instant::now();
        for event in self.events.iter() {
            self.net.handle_event(now, event);
        }
        self.net.service_dirty(now);
        self.net.handle_timers(now);
        self.net.service_dirty(now);
        self.net.resume_starved();
    }

    /// Frames tapir queued for the guest, drained, noting the SYN-ACK's sequence number and
    /// window scale and how far the latest ACK lets the guest send.
    fn drain(&mut self) {
        while let Some(f) = self.net.tx.front() {
            if let Ok(ip) = Ipv4Packet::new_checked(&f[14..])
                && let Ok(tcp) = TcpPacket::new_checked(ip.payload())
            {
                if tcp.syn() && tcp.ack() {
                    self.isn = Some(tcp.seq_number().0 as u32);
                    let repr = TcpRepr::parse(
                        &tcp,
                        &ip.src_addr().into(),
                        &ip.dst_addr().into(),
                        &ChecksumCapabilities::ignored(),
                    );
                    self.scale = repr.ok().and_then(|r| r.window_scale).unwrap_or(0);
                }
                if tcp.ack() {
                    let ack = tcp.ack_number().0 as u32;
                    let window =
                        u32::from(tcp.window_len()) << if tcp.syn() { 0 } else { self.scale };
                    self.window_end = ack.wrapping_add(window);
                }
            }
            self.net.tx.pop_front();
        }
    }

    /// Whether `len` bytes from `seq` fit in the window tapir last advertised.
    fn fits(&self, seq: u32, len: usize) -> bool {
        (self.window_end.wrapping_sub(seq) as i32) >= len as i32
    }

    /// The guest's handshake with the sink through tapir; returns tapir's ISN + 1.
    fn connect(&mut self, port: u16) -> u32 {
        let syn = segment(port, TcpControl::Syn, GUEST_ISN, None, &[]);
        self.net.handle_frame(Instant::now(), &syn);
        let deadline = Instant::now() + Duration::from_secs(5);
        let isn = loop {
            self.turn(Duration::from_millis(10));
            self.drain();
            if let Some(isn) = self.isn {
                break isn;
            }
            assert!(
                Instant::now() < deadline,
                "no SYN-ACK from tapir within 5 s"
            );
        };
        let ack = isn.wrapping_add(1);
        let frame = segment(port, TcpControl::None, GUEST_ISN + 1, Some(ack), &[]);
        self.net.handle_frame(Instant::now(), &frame);
        self.turn(Duration::ZERO);
        self.drain();
        ack
    }
}

fn frame_path(c: &mut Criterion) {
    let (port, received) = sink();
    let mut h = Harness::new();
    let ack = h.connect(port);
    let mut seq = GUEST_ISN + 1;
    let mut sent = 0u64;

    let mut group = c.benchmark_group("frame_path");
    let sample = segment(port, TcpControl::Psh, seq, Some(ack), &[0x5a; 1448]);
    group.throughput(Throughput::Elements(1));
    group.bench_function("classify", |b| {
        let plan = AddressPlan::default();
        b.iter(|| {
            let kind = frame::classify(black_box(&sample), &plan).1;
            black_box(matches!(kind, frame::GuestFrame::Tcp { .. }))
        })
    });
    for size in [1448usize, 65000] {
        let payload = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("tcp_segment_to_socket/{size}"), |b| {
            // Timed: tapir's part only (parse, stack, socket write, queueing its ACK). Not
            // timed: making the guest's frame, and waiting while the window is closed.
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while !h.fits(seq, size) {
                        h.turn(Duration::from_millis(1));
                        h.drain();
                        assert!(
                            Instant::now() < deadline,
                            "tapir's window stayed closed for 5 s"
                        );
                    }
                    let f = segment(port, TcpControl::Psh, seq, Some(ack), &payload);
                    let start = Instant::now();
                    h.net.handle_frame(Instant::now(), black_box(&f));
                    h.turn(Duration::ZERO);
                    h.drain();
                    spent += start.elapsed();
                    seq = seq.wrapping_add(size as u32);
                    sent += size as u64;
                }
                spent
            })
        });
    }
    group.finish();

    // Every byte must have reached the sink, or the figures measured drops.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        h.turn(Duration::from_millis(5));
        h.drain();
    }
    let got = received.load(Ordering::Relaxed);
    assert_eq!(
        got, sent,
        "the sink received {got} of {sent} bytes: the stack dropped segments"
    );
}

criterion_group!(benches, frame_path);
criterion_main!(benches);
