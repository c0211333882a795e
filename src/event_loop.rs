//! The one place that knows about file descriptors and readiness.
//!
//! A single mio `Poll` (edge-triggered) watches the TAP, a signalfd (the guest command's exit
//! and termination signals), the DNS forwarder's upstream socket, port-forward listeners and
//! every flow's host socket. Each wake-up runs in three phases:
//!
//! 1. events: TAP frames are read until `EAGAIN` and classified; a TCP segment is fed to its
//!    flow's own smoltcp `SocketSet` (`poll_ingress_single`) and the flow is marked dirty;
//!    host sockets set their flow's readiness flags and mark it dirty;
//! 2. dirty flows are pumped once (host bytes ⇄ smoltcp rings) and their segments emitted;
//!    expired smoltcp timers are serviced from an ordered set holding each flow's `poll_at`;
//! 3. the frame queue is written to the TAP until it is empty or the TAP would block.
//!
//! Nothing here scans every flow per packet: lookups are hash maps keyed by 4-tuple, timers an
//! ordered set, and idle UDP/ICMP flows are swept once a second.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use slab::Slab;
use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::phy::DeviceCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, Icmpv4DstUnreachable, IpAddress, IpCidr, IpListenEndpoint,
};

use crate::api::server::ApiServer;
use crate::busy_poll::BusyPoll;
use crate::config::{AddressPlan, Ipv6Plan, Limits};
use crate::flow::addr::{AddressMap, Route};
use crate::flow::icmp::{self, EchoFlow, EchoKey, EchoRate};
use crate::flow::policy::{self, Policy};
use crate::flow::splice::{Outcome, Relay, Side};
use crate::flow::tcp::{
    BufferBudget, ConnectFailure, HostSide, Verdict, is_resource_exhaustion, new_socket, pump,
    single_set,
};
use crate::flow::udp::{self, UdpFlow, UdpKind};
use crate::forward::spec::{PortForward, Proto};
use crate::forward::to_host::ToHost;
use crate::namespace::factory::SocketFactory;
use crate::service::dhcp::DhcpServer;
use crate::service::dns::DnsRelay;
use crate::service::ra::RaSchedule;
use crate::stack::device::{self, Device, MAX_FRAME, TxQueue, VNET_HDR_LEN};
use crate::stack::frame::{self, FlowKey, GuestFrame, Link};
use crate::stack::pcap::PcapSink;
use crate::stats::{DropReason, Stats};
use crate::sys::resolv::ResolvWatch;
use crate::sys::splice::SplicedSockets;

/// Errors that stop the network before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot set up the event loop: {0}")]
    Poll(#[source] io::Error),
    #[error("cannot listen on {addr} for -p {spec}: {source}")]
    Listen {
        spec: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot watch the guest's loopback listener for -T: {0}")]
    ToHost(#[source] io::Error),
    #[error("cannot open the DNS forwarder's socket: {0}")]
    DnsSocket(#[source] io::Error),
    #[error("reading the TAP device failed: {0}")]
    Tap(#[source] io::Error),
    #[error("cannot write the capture: {0}")]
    Pcap(String),
    #[error("{0}")]
    Ready(String),
}

/// Everything the network needs to know, validated by the caller.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub plan: AddressPlan,
    pub mtu: u32,
    pub limits: Limits,
    pub forwards: Vec<PortForward>,
    pub vnet_hdr: bool,
    /// The host's resolvers (from its resolv.conf), for the DNS forwarder.
    pub nameservers: Vec<IpAddr>,
    /// The resolv.conf they came from, followed while tapir runs (`sys::resolv`); `None`:
    /// they stay as given.
    pub resolv_conf: Option<PathBuf>,
    /// The host's own interface addresses (refused when host loopback is disabled).
    pub host_addrs: Vec<IpAddr>,
    /// Source addresses for host sockets (`--outbound-addr`, `--outbound-addr6`).
    pub outbound: (Option<Ipv4Addr>, Option<std::net::Ipv6Addr>),
    pub pcap: Option<PathBuf>,
    /// IPv6 (slirp4netns `-6`): the fd00::/64 plan, router advertisements, v6 flows.
    pub ipv6: bool,
    /// Where new guest flows may go (default: anywhere).
    pub policy: Policy,
    /// The longest the loop spins before it sleeps (`busy_poll`; zero: never).
    pub busy_poll: Duration,
}

/// The longest guest SYN (IP packet) kept to be quoted in an ICMP error.
const MAX_QUOTED_SYN: usize = 128;

/// Well within smoltcp's 60 s neighbour-cache lifetime.
const STACK_ARP_REFRESH: Duration = Duration::from_secs(20);

const TAP: Token = Token(0);
const SIGNAL: Token = Token(1);
const DNS: Token = Token(2);
const EXIT_FD: Token = Token(3);
const API: Token = Token(4);
const TARGET: Token = Token(5);
const KIND_SHIFT: u32 = 32;
const KIND_TCP: usize = 1;
const KIND_UDP: usize = 2;
const KIND_ICMP: usize = 3;
const KIND_LISTENER: usize = 4;
const KIND_API: usize = 5;
/// The host client's socket of a spliced forward.
const KIND_SPLICE_HOST: usize = 6;
/// The socket inside the guest's namespace of a spliced forward.
const KIND_SPLICE_GUEST: usize = 7;
/// A `-T` listener on the guest's loopback.
const KIND_TO_HOST: usize = 8;

fn token(kind: usize, index: usize) -> Token {
    Token((kind << KIND_SHIFT) | index)
}

fn untoken(t: Token) -> (usize, usize) {
    (t.0 >> KIND_SHIFT, t.0 & ((1 << KIND_SHIFT) - 1))
}

/// A guest TCP connection and its host stream.
struct TcpConn {
    key: FlowKey,
    set: SocketSet<'static>,
    handle: smoltcp::iface::SocketHandle,
    host: mio::net::TcpStream,
    side: HostSide,
    /// Bytes of each of its two rings, granted by the buffer budget.
    ring: usize,
    /// The host `connect()` has not finished; the guest's SYN-ACK is held back.
    connecting: bool,
    /// While connecting: the guest's SYN (from its IP header), quoted by the ICMP error
    /// that answers a host connect failing as unreachable.
    syn: Option<Box<[u8]>>,
    dirty: bool,
    /// This flow's entry in `Network::timers`: when smoltcp last said it wants the flow
    /// polled (its `poll_at`).
    timer: Option<smoltcp::time::Instant>,
}

/// A connection between the host's loopback and the guest's, spliced (`flow::splice`).
struct SplicedConn {
    io: SplicedSockets<mio::net::TcpStream>,
    relay: Relay,
    /// The side whose connect has not finished: the guest's for a `-p` client, the host's
    /// for a `-T` one. Until it finishes, nothing moves.
    connecting: Option<Side>,
    origin: SpliceOrigin,
}

/// Who opened a spliced connection.
#[derive(Debug, Clone, Copy)]
enum SpliceOrigin {
    /// A `-p` client on the host's loopback, and where the TAP path would deliver it should
    /// the guest's loopback refuse it.
    Forward {
        client: SocketAddr,
        guest: Ipv4Addr,
        guest_port: u16,
    },
    /// A `-T` client on the guest's loopback, for the host's 127.0.0.1:`host_port`.
    ToHost { client: SocketAddr, host_port: u16 },
}

impl std::fmt::Display for SpliceOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpliceOrigin::Forward {
                client, guest_port, ..
            } => write!(f, "forward {client} -> guest 127.0.0.1:{guest_port}"),
            SpliceOrigin::ToHost { client, host_port } => {
                write!(f, "-T guest {client} -> host 127.0.0.1:{host_port}")
            }
        }
    }
}

/// A `-T` forward: a listener on the guest's 127.0.0.1 (made there before the command ran).
struct ToHostListener {
    socket: mio::net::TcpListener,
    fwd: ToHost,
}

/// What the guest's namespace handed over besides the TAP (`tapir run` only).
#[derive(Default)]
pub struct GuestSockets {
    /// Makes sockets in the guest's namespace, for spliced `-p` forwards.
    pub factory: Option<SocketFactory>,
    /// Listeners on the guest's 127.0.0.1, each with the `-T` forward it serves.
    pub to_host: Vec<(OwnedFd, ToHost)>,
}

enum ListenerSocket {
    Tcp(mio::net::TcpListener),
    Udp(mio::net::UdpSocket),
}

/// A host port forwarded into the guest.
struct Listener {
    socket: ListenerSocket,
    fwd: PortForward,
    /// The guest address connections are delivered to.
    guest: Ipv4Addr,
    /// The number the API knows it by (slirp4netns: from 1, never reused).
    id: u64,
}

/// The rootless network: one smoltcp interface, the flows, and the virtual services.
pub struct Network {
    registry: Registry,
    start: Instant,
    /// The last clock reading turned into smoltcp's time: a turn asks for it half a dozen
    /// times with the same reading, and the subtraction costs more than the comparison.
    smol_clock: std::cell::Cell<(Instant, smoltcp::time::Instant)>,
    iface: Interface,
    caps: DeviceCapabilities,
    pub tx: TxQueue,
    map: AddressMap,
    limits: Limits,
    ours: EthernetAddress,
    guest_mac: Option<EthernetAddress>,
    /// The guest MAC smoltcp was last told, and when.
    stack_knows_guest: Option<(EthernetAddress, Instant)>,
    /// The same for the guest's IPv6 addresses.
    stack_knows_v6: HashMap<std::net::Ipv6Addr, (EthernetAddress, Instant)>,
    v6: Option<Ipv6Plan>,
    mtu: u32,
    policy: Policy,
    /// The host's own addresses, for `--deny-private` in a policy replaced at run time.
    host_addrs: Vec<IpAddr>,
    dhcp: DhcpServer,
    ra: Option<RaSchedule>,
    tcp: Slab<TcpConn>,
    tcp_index: HashMap<FlowKey, usize>,
    tcp_pending: usize,
    buffers: BufferBudget,
    dirty: Vec<usize>,
    starved: Vec<usize>,
    /// Forwarded connections opened before the guest's MAC was known.
    awaiting_mac: Vec<usize>,
    /// One entry per TCP flow that has a deadline, moved whenever smoltcp moves it. (A heap
    /// can only add: a request/response flow's moot delayed-ACK deadlines were then serviced
    /// for nothing once a millisecond, or, skipped lazily, piled up by the round trip.)
    timers: BTreeSet<(smoltcp::time::Instant, usize)>,
    udp: Slab<UdpFlow>,
    udp_index: HashMap<FlowKey, usize>,
    /// Inbound UDP flows by (listener, host client).
    udp_inbound: HashMap<(usize, SocketAddr), usize>,
    icmp: Slab<EchoFlow>,
    icmp_index: HashMap<EchoKey, usize>,
    echo_rate: EchoRate,
    listeners: Slab<Listener>,
    next_forward_id: u64,
    /// Forwards from host loopback clients, spliced to the guest's loopback.
    splices: Slab<SplicedConn>,
    /// Makes sockets in the guest's namespace; `None` when splicing is off or failed.
    factory: Option<SocketFactory>,
    to_host: Vec<ToHostListener>,
    dns: DnsRelay,
    dns_socket: mio::net::UdpSocket,
    resolv: Option<ResolvWatch>,
    next_sweep: Instant,
    /// Source ports for forwarded connections whose client port is taken.
    next_port: u16,
    pcap: Option<PcapSink>,
    outbound: (Option<Ipv4Addr>, Option<std::net::Ipv6Addr>),
    scratch: Vec<u8>,
    buf: Vec<u8>,
    pub stats: Stats,
}

impl Network {
    pub fn new(
        config: &NetworkConfig,
        registry: Registry,
        now: Instant,
    ) -> Result<Network, LoopError> {
        let plan = config.plan;
        let caps = device::capabilities(config.mtu as usize, config.vnet_hdr);
        let mut tx = TxQueue::new(config.limits.max_tx_frames, config.vnet_hdr);
        let ours = EthernetAddress(AddressPlan::virtual_mac(plan.gateway));
        let mut iface_config = Config::new(HardwareAddress::Ethernet(ours));
        iface_config.random_seed = seed();
        let mut iface = Interface::new(
            iface_config,
            &mut Device::new(None, &mut tx, &caps),
            smoltcp::time::Instant::from_micros(0),
        );
        iface.set_any_ip(true);
        // tapir answers neighbour discovery itself, with the same MAC smoltcp accepts.
        let v6 = config.ipv6.then(|| Ipv6Plan {
            mac: ours.0,
            ..Ipv6Plan::default()
        });
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(plan.gateway), plan.prefix_len));
            if let Some(v6) = &v6 {
                let _ = addrs.push(IpCidr::new(
                    IpAddress::Ipv6(v6.gateway),
                    crate::config::IPV6_PREFIX_LEN,
                ));
            }
        });

        let dns = DnsRelay::new(upstreams(&config.nameservers), 256, Duration::from_secs(2));
        let mut dns_socket = mio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0).into())
            .map_err(LoopError::DnsSocket)?;
        registry
            .register(&mut dns_socket, DNS, Interest::READABLE)
            .map_err(LoopError::Poll)?;

        let pcap = match &config.pcap {
            Some(path) => Some(PcapSink::create(path).map_err(|e| LoopError::Pcap(e.to_string()))?),
            None => None,
        };

        let mut net = Network {
            registry,
            start: now,
            smol_clock: std::cell::Cell::new((now, smoltcp::time::Instant::from_micros(0))),
            iface,
            caps,
            tx,
            map: {
                let map = AddressMap::new(plan, config.host_addrs.clone(), &config.nameservers);
                match v6 {
                    Some(v6) => map.with_ipv6(v6),
                    None => map,
                }
            },
            limits: config.limits,
            ours,
            guest_mac: None,
            stack_knows_guest: None,
            stack_knows_v6: HashMap::new(),
            v6,
            mtu: config.mtu,
            policy: config.policy.clone(),
            host_addrs: config.host_addrs.clone(),
            dhcp: DhcpServer::new(plan, config.mtu),
            ra: v6.map(|_| RaSchedule::new(now)),
            tcp: Slab::new(),
            tcp_index: HashMap::new(),
            tcp_pending: 0,
            buffers: BufferBudget::new(
                config.limits.tcp_buffer,
                config.limits.tcp_buffer_total,
                config.limits.max_tcp_flows,
            ),
            dirty: Vec::new(),
            starved: Vec::new(),
            awaiting_mac: Vec::new(),
            timers: BTreeSet::new(),
            udp: Slab::new(),
            udp_index: HashMap::new(),
            udp_inbound: HashMap::new(),
            icmp: Slab::new(),
            icmp_index: HashMap::new(),
            echo_rate: EchoRate::new(config.limits.icmp_rate),
            listeners: Slab::new(),
            next_forward_id: 1,
            splices: Slab::new(),
            factory: None,
            to_host: Vec::new(),
            dns,
            dns_socket,
            resolv: config.resolv_conf.as_ref().map(ResolvWatch::new),
            next_sweep: now + Duration::from_secs(1),
            next_port: 49152,
            pcap,
            outbound: config.outbound,
            scratch: Vec::with_capacity(2048),
            buf: vec![0; 65536],
            stats: Stats::default(),
        };
        for fwd in &config.forwards {
            net.add_forward(*fwd, None)
                .map_err(|source| LoopError::Listen {
                    spec: fwd.to_string(),
                    addr: fwd.host,
                    source,
                })?;
        }
        Ok(net)
    }

    /// Starts forwarding `fwd.host` to `guest` (default: the guest's address) port
    /// `fwd.guest_port`. Returns the forward's id.
    pub fn add_forward(&mut self, fwd: PortForward, guest: Option<Ipv4Addr>) -> io::Result<u64> {
        let entry = self.listeners.vacant_entry();
        let t = token(KIND_LISTENER, entry.key());
        let socket = match fwd.proto {
            Proto::Tcp => {
                let mut l = mio::net::TcpListener::bind(fwd.host)?;
                self.registry.register(&mut l, t, Interest::READABLE)?;
                ListenerSocket::Tcp(l)
            }
            Proto::Udp => {
                let mut u = mio::net::UdpSocket::bind(fwd.host)?;
                self.registry.register(&mut u, t, Interest::READABLE)?;
                ListenerSocket::Udp(u)
            }
        };
        let id = self.next_forward_id;
        self.next_forward_id += 1;
        entry.insert(Listener {
            socket,
            fwd,
            guest: guest.unwrap_or(self.map.plan().guest),
            id,
        });
        log::info!("forwarding {fwd}");
        Ok(id)
    }

    /// Stops the forward `id`: its listener closes and its UDP flows end; TCP connections
    /// already made go on. False when there is no such forward.
    pub fn remove_forward(&mut self, id: u64) -> bool {
        let Some(key) = self
            .listeners
            .iter()
            .find(|(_, l)| l.id == id)
            .map(|(k, _)| k)
        else {
            return false;
        };
        let mut listener = self.listeners.remove(key);
        let _ = match &mut listener.socket {
            ListenerSocket::Tcp(l) => self.registry.deregister(l),
            ListenerSocket::Udp(u) => self.registry.deregister(u),
        };
        let stale: Vec<usize> = self
            .udp
            .iter()
            .filter(|(_, f)| matches!(f.kind, UdpKind::Inbound { listener, .. } if listener == key))
            .map(|(id, _)| id)
            .collect();
        for flow in stale {
            self.remove_udp(flow);
        }
        log::info!("no longer forwarding {}", listener.fwd);
        true
    }

    /// The forwards in place: (id, what, guest address).
    pub fn forwards(&self) -> Vec<(u64, PortForward, Ipv4Addr)> {
        let mut v: Vec<_> = self
            .listeners
            .iter()
            .map(|(_, l)| (l.id, l.fwd, l.guest))
            .collect();
        v.sort_by_key(|f| f.0);
        v
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let (last, t) = self.smol_clock.get();
        if now == last {
            return t;
        }
        let t = smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.start).as_micros() as i64,
        );
        self.smol_clock.set((now, t));
        t
    }

    /// The source address for a host socket towards `dst` (`--outbound-addr[6]`). Loopback
    /// destinations keep the kernel's choice: an outbound address cannot reach them.
    fn outbound(&self, dst: SocketAddr) -> Option<IpAddr> {
        if dst.ip().is_loopback() {
            return None;
        }
        match dst {
            SocketAddr::V4(_) => self.outbound.0.map(IpAddr::V4),
            SocketAddr::V6(_) => self.outbound.1.map(IpAddr::V6),
        }
    }

    fn plan(&self) -> AddressPlan {
        *self.map.plan()
    }

    fn link(&self) -> Option<Link> {
        self.guest_mac.map(|guest| Link {
            ours: self.ours,
            guest,
        })
    }

    /// Records a frame in the capture, if any.
    pub fn capture(&mut self, frame: &[u8]) {
        if let Some(pcap) = &mut self.pcap {
            pcap.write(wall_clock(), frame);
        }
    }

    pub fn flush_capture(&mut self) {
        if let Some(pcap) = &mut self.pcap {
            pcap.flush();
        }
    }

    /// Queues a frame tapir built (in `self.scratch`) towards the guest; a full queue
    /// refuses it, and the refusal is counted with smoltcp's (see `count_refused_frames`).
    fn send_scratch(&mut self) {
        self.tx.push_frame(&self.scratch);
    }

    /// Moves the queue's count of frames it refused for want of room, those tapir built and
    /// those smoltcp built (replies to the guest produced while the queue was full), into
    /// `limit_tx_queue`. Called once a turn.
    pub fn count_refused_frames(&mut self) {
        let refused = std::mem::take(&mut self.tx.refused);
        self.stats.drop_many(DropReason::TxQueueFull, refused);
    }

    /// One Ethernet frame from the guest (vnet header already removed).
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        self.capture(frame);
        if let Ok(eth) = EthernetFrame::new_checked(frame)
            && eth.src_addr().is_unicast()
            && eth.src_addr() != self.ours
        {
            self.guest_mac = Some(eth.src_addr());
        }
        let plan = self.plan();
        match frame::classify_with_ipv6(frame, &plan, self.v6.as_ref()).1 {
            GuestFrame::Drop(reason) => self.stats.drop(reason),
            GuestFrame::ArpToStack => self.arp(now, frame),
            GuestFrame::Tcp { key, syn } => {
                self.teach_stack_guest_mac(now, key.guest.ip());
                self.guest_tcp(now, frame, key, syn)
            }
            GuestFrame::Udp { key, payload } => self.guest_udp(now, frame, key, payload),
            GuestFrame::EchoRequest {
                src,
                dst,
                ident,
                seq_no,
                data,
            } => self.guest_echo(now, frame, src.into(), dst.into(), ident, seq_no, data),
            GuestFrame::EchoRequestV6 {
                src,
                dst,
                ident,
                seq_no,
                data,
            } => self.guest_echo(now, frame, src.into(), dst.into(), ident, seq_no, data),
            GuestFrame::Dhcp {
                client_mac,
                payload,
            } => self.dhcp(now, client_mac, payload),
            GuestFrame::RouterSolicitation => {
                if let Some(ra) = &mut self.ra {
                    ra.handle_solicitation(now);
                }
            }
            GuestFrame::NeighborSolicitation { src, target } => {
                if let (Some(link), Some(v6)) = (self.link(), &self.v6) {
                    frame::neighbor_advertisement(&mut self.scratch, link, v6, target, src);
                    self.send_scratch();
                }
            }
        }
    }

    /// Asks the egress policy about a new flow from `guest` to `remote` (as the guest named
    /// it), now mapped to the host address `addr`. The host's loopback (reached through the
    /// gateway) is governed by the loopback switch alone, and tapir's own DNS forwarding is
    /// exempt, so neither is asked. Denials are counted and logged (rate-limited).
    fn allowed(
        &mut self,
        proto: policy::Proto,
        guest: SocketAddr,
        remote: SocketAddr,
        addr: SocketAddr,
    ) -> bool {
        let dns = match remote.ip() {
            IpAddr::V4(ip) => ip == self.plan().dns,
            IpAddr::V6(ip) => self.v6.is_some_and(|v6| v6.dns == ip),
        };
        if addr.ip().is_loopback() || dns {
            return true;
        }
        let decision = self.policy.decide(proto, addr);
        if decision.allowed() {
            return true;
        }
        self.stats.drop(DropReason::Denied);
        let n = self.stats.drops(DropReason::Denied);
        if n <= 10 || n.is_power_of_two() {
            let rule = match decision.rule.and_then(|i| self.policy.rules().get(i)) {
                Some((action, rule)) => format!("{action} {rule}"),
                None => "the default".into(),
            };
            log::warn!("denied {proto} {guest} -> {addr} by rule {rule} ({n} denials so far)");
        }
        false
    }

    fn dhcp(&mut self, now: Instant, client_mac: EthernetAddress, payload: &[u8]) {
        let reply = self.dhcp.handle(now, client_mac.0, payload);
        let unanswered = std::mem::take(&mut self.dhcp.unanswered);
        self.stats.drop_many(DropReason::Dhcp, unanswered);
        let Some(reply) = reply else {
            return;
        };
        let plan = self.plan();
        let link = Link {
            ours: self.ours,
            guest: client_mac,
        };
        let from = SocketAddrV4::new(plan.gateway, frame::DHCP_SERVER_PORT);
        let to = SocketAddrV4::new(reply.to, frame::DHCP_CLIENT_PORT);
        frame::udp_v4(&mut self.scratch, link, from, to, &reply.payload);
        self.send_scratch();
    }

    /// Sends the periodic router advertisement when due.
    fn advertise(&mut self, now: Instant) {
        let (Some(ra), Some(v6)) = (&mut self.ra, &self.v6) else {
            return;
        };
        if !ra.poll_transmit(now) {
            return;
        }
        let link = Link {
            ours: self.ours,
            guest: self.guest_mac.unwrap_or(frame::ALL_NODES_MAC),
        };
        frame::router_advertisement(&mut self.scratch, link, v6, self.mtu);
        self.send_scratch();
    }

    /// smoltcp learns neighbours from ARP only, and forgets them after a minute; the guest,
    /// whose ARP entry for the gateway is still fresh, would then wait for smoltcp's own ARP
    /// round (and its 1 s back-off). So tapir tells the stack the guest's MAC, as an ARP
    /// reply, whenever it may have been forgotten.
    fn teach_stack_guest_mac(&mut self, now: Instant, guest: IpAddr) {
        let Some(mac) = self.guest_mac else { return };
        if let IpAddr::V6(addr) = guest {
            return self.teach_stack_guest_v6(now, mac, addr);
        }
        let fresh = self.stack_knows_guest.is_some_and(|(known, at)| {
            known == mac && now.saturating_duration_since(at) < STACK_ARP_REFRESH
        });
        if fresh {
            return;
        }
        let plan = self.plan();
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: mac,
            source_protocol_addr: plan.guest,
            target_hardware_addr: self.ours,
            target_protocol_addr: plan.gateway,
        };
        let mut f = vec![0; 14 + repr.buffer_len()];
        EthernetRepr {
            src_addr: mac,
            dst_addr: self.ours,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
        self.arp(now, &f);
    }

    /// The IPv6 twin of the ARP lesson: smoltcp learns from a neighbour advertisement, as if
    /// the guest had sent one for `addr` (its SLAAC and link-local addresses are not known in
    /// advance, so each is taught when first seen).
    fn teach_stack_guest_v6(
        &mut self,
        now: Instant,
        mac: EthernetAddress,
        addr: std::net::Ipv6Addr,
    ) {
        let Some(v6) = self.v6 else { return };
        let fresh = self.stack_knows_v6.get(&addr).is_some_and(|(known, at)| {
            *known == mac && now.saturating_duration_since(*at) < STACK_ARP_REFRESH
        });
        if fresh {
            return;
        }
        if self.stack_knows_v6.len() >= 16 {
            self.stack_knows_v6.clear();
        }
        let link = Link {
            ours: mac,
            guest: self.ours,
        };
        let mut f = Vec::new();
        let as_guest = crate::config::Ipv6Plan { mac: mac.0, ..v6 };
        frame::neighbor_advertisement(&mut f, link, &as_guest, addr, v6.gateway);
        self.feed_stack(now, &f);
        self.stack_knows_v6.insert(addr, (mac, now));
    }

    /// Hands `frame` to the stack with no socket to receive it: for ARP and neighbour
    /// discovery, and for segments of unknown connections (smoltcp answers those with a RST).
    fn feed_stack(&mut self, now: Instant, frame: &[u8]) {
        let t = self.smol_now(now);
        let mut empty = SocketSet::new(Vec::new());
        let mut dev = Device::new(Some(frame), &mut self.tx, &self.caps);
        self.iface.poll_ingress_single(t, &mut dev, &mut empty);
    }

    /// Queues flow `id` for a pump and an egress pass in this turn (once, however often
    /// it is touched).
    fn mark_dirty(&mut self, id: usize) {
        if let Some(conn) = self.tcp.get_mut(id)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(id);
        }
    }

    fn arp(&mut self, now: Instant, frame: &[u8]) {
        self.feed_stack(now, frame);
        if let Some(mac) = self.guest_mac {
            self.stack_knows_guest = Some((mac, now));
        }
        // Connections towards the guest may wait for its MAC: let them go now.
        for id in std::mem::take(&mut self.awaiting_mac) {
            self.mark_dirty(id);
        }
    }

    fn guest_tcp(&mut self, now: Instant, frame: &[u8], key: FlowKey, syn: bool) {
        let t = self.smol_now(now);
        if let Some(&id) = self.tcp_index.get(&key) {
            let conn = &mut self.tcp[id];
            let mut dev = Device::new(Some(frame), &mut self.tx, &self.caps);
            self.iface.poll_ingress_single(t, &mut dev, &mut conn.set);
            return self.mark_dirty(id);
        }
        if !syn {
            // Not a connection we know: smoltcp answers with a RST from an empty set.
            self.stats.drop(DropReason::NoFlow);
            return self.feed_stack(now, frame);
        }
        if self.tcp_flows_full() {
            return;
        }
        // A new connection may be DNS over TCP, which goes to the first nameserver.
        self.follow_resolv_conf(now);
        if self.tcp_pending >= self.limits.max_tcp_pending {
            return self.stats.drop(DropReason::TcpPendingLimit);
        }
        let addr = match self.map.tcp(key.remote) {
            Route::Host(addr) if !self.allowed(policy::Proto::Tcp, key.guest, key.remote, addr) => {
                return self.prohibit(frame, key.remote.ip());
            }
            Route::Host(addr) => addr,
            // Nothing there (or not allowed): "network unreachable" at once, as slirp4netns
            // answers a SYN to the gateway with host loopback disabled.
            _ => {
                log::debug!("tcp {} -> {}: unreachable", key.guest, key.remote);
                self.stats.drop(DropReason::Refused);
                return self.reject(frame, key.remote.ip());
            }
        };
        // Buffers before the host hears of it: a refused flow leaves no trace there.
        let Some(ring) = self.buffers.grant(self.tcp.len()) else {
            self.stats.drop(DropReason::TcpBufferLimit);
            return self.refuse_syn(t, frame, key);
        };
        let host = match connect_tcp(addr, self.outbound(addr)) {
            Ok(host) => host,
            Err(e) => {
                log::debug!("tcp {} -> {}: {e}", key.guest, key.remote);
                self.buffers.release(ring);
                return self.answer_failed_connect(t, frame, key, &e);
            }
        };
        let mut socket = new_socket(ring);
        if socket.listen(listen_endpoint(key.remote)).is_err() {
            self.buffers.release(ring);
            return self.stats.drop(DropReason::Malformed);
        }
        socket.pause_synack(true);
        let Some(id) = self.insert_tcp(key, socket, ring, host, HostSide::default(), true) else {
            self.buffers.release(ring);
            return self.stats.drop(DropReason::HostSocket);
        };
        let conn = &mut self.tcp[id];
        // A plain SYN is well under 128 bytes; one carrying data gets a RST rather than
        // having tapir hold its payload while the connect is under way.
        conn.syn = (frame.len() <= 14 + MAX_QUOTED_SYN).then(|| frame[14..].into());
        let mut dev = Device::new(Some(frame), &mut self.tx, &self.caps);
        self.iface.poll_ingress_single(t, &mut dev, &mut conn.set);
        self.tcp_pending += 1;
        log::debug!("tcp {} -> {}: connecting", key.guest, key.remote);
    }

    /// Adds a TCP flow (the guest-side socket alone in its own set) with its host stream
    /// registered under the flow's token; `None` when the registration fails.
    fn insert_tcp(
        &mut self,
        key: FlowKey,
        socket: tcp::Socket<'static>,
        ring: usize,
        mut host: mio::net::TcpStream,
        side: HostSide,
        connecting: bool,
    ) -> Option<usize> {
        let entry = self.tcp.vacant_entry();
        let id = entry.key();
        self.registry
            .register(
                &mut host,
                token(KIND_TCP, id),
                // PRIORITY: urgent data stops a read short (see `HostSide::closing`).
                Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY,
            )
            .ok()?;
        let (set, handle) = single_set(socket);
        entry.insert(TcpConn {
            key,
            set,
            handle,
            host,
            side,
            ring,
            connecting,
            syn: None,
            dirty: false,
            timer: None,
        });
        self.tcp_index.insert(key, id);
        self.stats.tcp_opened += 1;
        if self.buffers.is_reduced(ring) {
            self.stats.tcp_small_buffers += 1;
        }
        Some(id)
    }

    /// Tells the guest that the host connect for its SYN (`frame`) failed at once: a RST, or
    /// ICMP unreachable when the host had no route (see [`ConnectFailure`]). Running out of
    /// descriptors is counted as a limit (and logged once); the loop goes on either way.
    fn answer_failed_connect(
        &mut self,
        t: smoltcp::time::Instant,
        frame: &[u8],
        key: FlowKey,
        e: &io::Error,
    ) {
        if is_resource_exhaustion(e.raw_os_error()) {
            self.stats.drop(DropReason::HostSocket);
        } else {
            self.stats.drop(DropReason::Refused);
        }
        match ConnectFailure::from_errno(e.raw_os_error()) {
            ConnectFailure::Reset => self.refuse_syn(t, frame, key),
            why => self.unreachable(&frame[14..], key.remote.ip(), why),
        }
    }

    /// Answers a SYN with a RST: a throwaway socket takes the SYN and is aborted at once.
    fn refuse_syn(&mut self, t: smoltcp::time::Instant, frame: &[u8], key: FlowKey) {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1]),
            tcp::SocketBuffer::new(vec![0; 1]),
        );
        if socket.listen(listen_endpoint(key.remote)).is_err() {
            return;
        }
        let (mut set, handle) = single_set(socket);
        let mut dev = Device::new(Some(frame), &mut self.tx, &self.caps);
        self.iface.poll_ingress_single(t, &mut dev, &mut set);
        set.get_mut::<tcp::Socket>(handle).abort();
        let mut dev = Device::new(None, &mut self.tx, &self.caps);
        self.iface.poll_egress(t, &mut dev, &mut set);
    }

    fn guest_udp(&mut self, now: Instant, frame: &[u8], key: FlowKey, payload: &[u8]) {
        if let Some(&id) = self.udp_index.get(&key) {
            let flow = &mut self.udp[id];
            flow.last_active = now;
            let sent = match &flow.kind {
                UdpKind::Outbound(socket) => socket.send(payload),
                UdpKind::Inbound { listener, client } => match self.listeners.get(*listener) {
                    Some(Listener {
                        socket: ListenerSocket::Udp(socket),
                        ..
                    }) => socket.send_to(payload, *client),
                    _ => Ok(0),
                },
            };
            if let Err(e) = sent {
                log::debug!("udp {} -> {}: {e}", key.guest, key.remote);
                self.stats.drop(DropReason::HostSend);
            }
            return;
        }
        let route = self.map.udp(key.remote);
        match route {
            Route::DnsRelay => self.dns_query(now, key, payload),
            Route::Host(addr) if !self.allowed(policy::Proto::Udp, key.guest, key.remote, addr) => {
                self.prohibit(frame, key.remote.ip())
            }
            Route::Host(addr) => self.open_udp(now, key, addr, payload),
            Route::Local | Route::Refuse => {
                self.stats.drop(DropReason::Refused);
                self.reject(frame, key.remote.ip());
            }
        }
    }

    fn open_udp(&mut self, now: Instant, key: FlowKey, addr: SocketAddr, payload: &[u8]) {
        if self.udp.len() >= self.limits.max_udp_flows {
            return self.stats.drop(DropReason::UdpFlowLimit);
        }
        let source = self.outbound(addr);
        let entry = self.udp.vacant_entry();
        let id = entry.key();
        let socket = udp::connect(addr, source).and_then(|mut s| {
            self.registry
                .register(&mut s, token(KIND_UDP, id), Interest::READABLE)
                .map(|()| s)
        });
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                log::debug!("udp {} -> {addr}: {e}", key.guest);
                return self.stats.drop(DropReason::HostSocket);
            }
        };
        if let Err(e) = socket.send(payload) {
            log::debug!("udp {} -> {addr}: {e}", key.guest);
            self.stats.drop(DropReason::HostSend);
        }
        entry.insert(UdpFlow {
            key,
            kind: UdpKind::Outbound(socket),
            last_active: now,
        });
        self.udp_index.insert(key, id);
        self.stats.udp_opened += 1;
    }

    /// ICMP "network unreachable" back to the guest for a refused segment, datagram or ping
    /// (the guest's connect or send fails at once with ENETUNREACH).
    fn reject(&mut self, frame: &[u8], from: IpAddr) {
        self.reject_with(frame, from, false);
    }

    /// ICMP "administratively prohibited": the egress policy refused the flow (the guest's
    /// connect fails at once with EHOSTUNREACH).
    fn prohibit(&mut self, frame: &[u8], from: IpAddr) {
        self.reject_with(frame, from, true);
    }

    fn reject_with(&mut self, frame: &[u8], from: IpAddr, prohibited: bool) {
        let why = if prohibited {
            ConnectFailure::Prohibited
        } else {
            ConnectFailure::NetUnreachable
        };
        self.unreachable(&frame[14..], from, why);
    }

    /// ICMP destination unreachable (of the kind `why` names) from `from` about `packet`, an
    /// IP packet the guest sent. `ConnectFailure::Reset` is not an ICMP error: nothing is sent.
    ///
    /// These need no rate of their own: each answers one packet of the guest's (a refused
    /// segment, datagram or ping, or a SYN whose host connect failed), goes only to the guest,
    /// never to the host, and waits in the bounded queue towards it (`tx-frames`, counted as
    /// `limit_tx_queue` when full). A guest flooding refused addresses gets at most one error
    /// per packet it sent, quoting at most [`MAX_QUOTED_SYN`] or the IPv4 header and 8 bytes.
    fn unreachable(&mut self, packet: &[u8], from: IpAddr, why: ConnectFailure) {
        let Some(link) = self.link() else { return };
        let (v4, v6) = match why {
            ConnectFailure::Reset => return,
            ConnectFailure::NetUnreachable => (
                Icmpv4DstUnreachable::NetUnreachable,
                frame::UnreachableV6::NoRoute,
            ),
            ConnectFailure::HostUnreachable => (
                Icmpv4DstUnreachable::HostUnreachable,
                frame::UnreachableV6::AddrUnreachable,
            ),
            ConnectFailure::Prohibited => (
                Icmpv4DstUnreachable::CommProhibited,
                frame::UnreachableV6::AdminProhibit,
            ),
        };
        let built = match from {
            IpAddr::V4(from) => frame::unreachable_v4(&mut self.scratch, link, from, v4, packet),
            IpAddr::V6(from) => frame::unreachable_v6(&mut self.scratch, link, from, v6, packet),
        };
        if built {
            self.send_scratch();
        }
    }

    /// Takes up the host's new nameservers if its resolv.conf changed (see `sys::resolv`). A
    /// file that names none keeps the old ones: a rewrite caught half-way, or a network gone
    /// for a moment, should not leave the guest without DNS.
    fn follow_resolv_conf(&mut self, now: Instant) {
        let Some(nameservers) = self.resolv.as_mut().and_then(|w| w.poll(now)) else {
            return;
        };
        if nameservers.is_empty() {
            log::warn!("resolv.conf now names no nameserver: DNS keeps the previous ones");
            return;
        }
        log::info!("resolv.conf changed: DNS now goes to {nameservers:?}");
        let upstreams = upstreams(&nameservers);
        self.dns.set_upstreams(upstreams);
        self.map.set_nameservers(&nameservers);
    }

    fn dns_query(&mut self, now: Instant, key: FlowKey, payload: &[u8]) {
        self.follow_resolv_conf(now);
        match self.dns.handle_query(now, key.guest, payload) {
            Some(q) => {
                if let Err(e) = self.dns_socket.send_to(&q.bytes, q.upstream) {
                    log::debug!("dns query to {}: {e}", q.upstream);
                }
            }
            None => self.stats.drop(DropReason::Dns),
        }
    }

    /// An echo request (ICMP or ICMPv6) from the guest.
    #[allow(clippy::too_many_arguments)]
    fn guest_echo(
        &mut self,
        now: Instant,
        frame: &[u8],
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq_no: u16,
        data: &[u8],
    ) {
        let addr = match self.map.icmp(dst) {
            Route::Local => {
                if let Some(link) = self.link()
                    && echo_frame(&mut self.scratch, link, dst, src, ident, seq_no, data)
                {
                    self.send_scratch();
                }
                return;
            }
            Route::Host(addr) => addr,
            Route::Refuse | Route::DnsRelay => {
                self.stats.drop(DropReason::Refused);
                return self.reject(frame, dst);
            }
        };
        let key = EchoKey { ident, src, dst };
        let existing = self.icmp_index.get(&key).copied();
        let previous = existing.map(|id| {
            let flow = &mut self.icmp[id];
            std::mem::replace(&mut flow.last_request, now)
        });
        if existing.is_none() {
            if !self.allowed(
                policy::Proto::Icmp,
                SocketAddr::new(src, 0),
                SocketAddr::new(dst, 0),
                addr,
            ) {
                return self.prohibit(frame, dst);
            }
            // Before the rate: a request no flow can carry must not take a token.
            if self.icmp.len() >= self.limits.max_icmp_flows {
                return self.stats.drop(DropReason::IcmpFlowLimit);
            }
        }
        if !self.echo_rate.admit(now, previous) {
            return self.stats.drop(DropReason::IcmpRateLimit);
        }
        let id = match existing {
            Some(id) => id,
            None => {
                let entry = self.icmp.vacant_entry();
                let id = entry.key();
                let socket = icmp::connect(addr.ip()).and_then(|mut s| {
                    self.registry
                        .register(&mut s, token(KIND_ICMP, id), Interest::READABLE)
                        .map(|()| s)
                });
                match socket {
                    Ok(socket) => {
                        entry.insert(EchoFlow {
                            key,
                            socket,
                            last_active: now,
                            last_request: now,
                        });
                    }
                    Err(e) => {
                        log::debug!("ping {dst}: cannot open a ping socket: {e}");
                        return self.stats.drop(DropReason::HostSocket);
                    }
                }
                self.icmp_index.insert(key, id);
                self.stats.icmp_opened += 1;
                id
            }
        };
        let flow = &mut self.icmp[id];
        flow.last_active = now;
        icmp::echo_request(dst.is_ipv6(), seq_no, data, &mut self.scratch);
        if let Err(e) = flow.socket.send(&self.scratch) {
            log::debug!("ping {dst}: {e}");
            self.stats.drop(DropReason::HostSend);
        }
    }

    /// Readiness of a host-side socket.
    pub fn handle_event(&mut self, now: Instant, event: &mio::event::Event) {
        let t = event.token();
        if t == DNS {
            return self.dns_answers(now);
        }
        let (readable, writable) = (event.is_readable(), event.is_writable());
        let (kind, index) = untoken(t);
        match kind {
            KIND_TCP => {
                let closing = event.is_read_closed() || event.is_error() || event.is_priority();
                self.tcp_ready(index, readable, writable, closing)
            }
            KIND_UDP => self.udp_ready(now, index),
            KIND_ICMP => self.icmp_ready(now, index),
            KIND_LISTENER => self.listener_ready(now, index),
            KIND_SPLICE_HOST => self.splice_ready(index, Side::Host, readable, writable),
            KIND_SPLICE_GUEST => self.splice_ready(index, Side::Guest, readable, writable),
            KIND_TO_HOST => self.accept_to_host(index),
            _ => {}
        }
    }

    fn tcp_ready(&mut self, id: usize, readable: bool, writable: bool, closing: bool) {
        let Some(conn) = self.tcp.get_mut(id) else {
            return;
        };
        if conn.connecting && writable {
            match connect_outcome(&conn.host) {
                Some(Ok(())) => {
                    conn.connecting = false;
                    conn.syn = None;
                    self.tcp_pending -= 1;
                    conn.set
                        .get_mut::<tcp::Socket>(conn.handle)
                        .pause_synack(false);
                    log::debug!("tcp {} -> {}: connected", conn.key.guest, conn.key.remote);
                }
                Some(Err(e)) => self.connect_failed(id, e),
                None => {}
            }
        }
        let Some(conn) = self.tcp.get_mut(id) else {
            return;
        };
        conn.side.readable |= readable;
        conn.side.writable |= writable;
        conn.side.closing |= closing;
        self.mark_dirty(id);
    }

    fn connect_failed(&mut self, id: usize, e: io::Error) {
        let conn = &mut self.tcp[id];
        log::debug!("tcp {} -> {}: {e}", conn.key.guest, conn.key.remote);
        conn.connecting = false;
        self.tcp_pending -= 1;
        let why = ConnectFailure::from_errno(e.raw_os_error());
        if why != ConnectFailure::Reset
            && let Some(syn) = conn.syn.take()
        {
            // The ICMP error ends the guest's connect; its socket goes without a RST.
            let from = conn.key.remote.ip();
            self.unreachable(&syn, from, why);
            return self.close_tcp(id, false);
        }
        // Abort: the guest's connection is refused with a RST, then the flow goes.
        conn.set.get_mut::<tcp::Socket>(conn.handle).abort();
        self.mark_dirty(id);
    }

    /// Pumps and flushes every flow touched since the last call.
    pub fn service_dirty(&mut self, now: Instant) {
        while let Some(id) = self.dirty.pop() {
            self.service(now, id);
        }
    }

    fn service(&mut self, now: Instant, id: usize) {
        let t = self.smol_now(now);
        let Some(conn) = self.tcp.get_mut(id) else {
            return;
        };
        conn.dirty = false;
        let socket = conn.set.get_mut::<tcp::Socket>(conn.handle);
        // A connection the guest never accepted is over: aborted before ESTABLISHED (Closed),
        // or reset by the guest in SYN-RECEIVED, which smoltcp answers by going back to
        // LISTEN, where it would wait forever with no timer.
        let unaccepted =
            |s: &tcp::Socket| matches!(s.state(), tcp::State::Closed | tcp::State::Listen);
        let verdict = if conn.connecting {
            if unaccepted(socket) {
                Verdict::Reset
            } else {
                Verdict::Open
            }
        } else {
            let before = conn.side.moved;
            let v = pump(socket, &mut conn.host, &mut conn.side);
            self.stats.bytes_tcp_host += conn.side.moved - before;
            if v == Verdict::Open && unaccepted(socket) {
                Verdict::Reset
            } else {
                v
            }
        };
        // Emit until smoltcp has nothing due now. Its `poll_at`, wanted anyway for the flow's
        // timer, says so for less than the egress pass that would find nothing (a round
        // trip's response is one segment: one pass, not two).
        let mut dev = Device::new(None, &mut self.tx, &self.caps);
        let next = loop {
            let emitted = self.iface.poll_egress(t, &mut dev, &mut conn.set) != PollResult::None;
            let next = self.iface.poll_at(t, &conn.set);
            if !emitted || next.is_none_or(|at| at > t) {
                break next;
            }
        };
        if self.tx.is_full() {
            self.starved.push(id);
        }
        match verdict {
            // A flow whose host connect is under way has no timer to keep: its paused SYN-ACK
            // makes smoltcp ask to be polled "now" until the connect ends (a timer for it
            // would fire again at once, forever), and the connect's end wakes the flow anyway.
            Verdict::Open if self.tcp[id].connecting => {}
            Verdict::Open => self.schedule(next, id),
            Verdict::Done => self.close_tcp(id, false),
            Verdict::Reset => self.close_tcp(id, true),
        }
    }

    /// Sets flow `id`'s timer to `next`, what smoltcp's `poll_at` said of it.
    fn schedule(&mut self, next: Option<smoltcp::time::Instant>, id: usize) {
        let conn = &mut self.tcp[id];
        if conn.timer == next {
            return;
        }
        if let Some(old) = std::mem::replace(&mut conn.timer, next) {
            self.timers.remove(&(old, id));
        }
        if let Some(at) = next {
            self.timers.insert((at, id));
        }
    }

    fn close_tcp(&mut self, id: usize, reset: bool) {
        let conn = self.tcp.remove(id);
        if let Some(at) = conn.timer {
            self.timers.remove(&(at, id));
        }
        self.tcp_index.remove(&conn.key);
        self.buffers.release(conn.ring);
        if conn.connecting {
            self.tcp_pending -= 1;
        }
        let mut host = conn.host;
        let _ = self.registry.deregister(&mut host);
        if reset {
            // The host peer learns the guest reset.
            reset_on_close(&host);
        }
        self.stats.tcp_closed += 1;
        log::debug!(
            "tcp {} -> {}: closed{}",
            conn.key.guest,
            conn.key.remote,
            if reset { " (reset)" } else { "" }
        );
    }

    fn udp_ready(&mut self, now: Instant, id: usize) {
        let Some(link) = self.link() else { return };
        loop {
            let Some(flow) = self.udp.get_mut(id) else {
                return;
            };
            let UdpKind::Outbound(socket) = &flow.kind else {
                return;
            };
            let n = match socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("udp {} -> {}: {e}", flow.key.guest, flow.key.remote);
                    continue;
                }
            };
            flow.last_active = now;
            let key = flow.key;
            if udp_frame(
                &mut self.scratch,
                link,
                key.remote,
                key.guest,
                &self.buf[..n],
            ) {
                self.send_scratch();
            }
        }
    }

    fn icmp_ready(&mut self, now: Instant, id: usize) {
        let Some(link) = self.link() else { return };
        loop {
            let Some(flow) = self.icmp.get_mut(id) else {
                return;
            };
            let n = match flow.socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            flow.last_active = now;
            let key = flow.key;
            let reply = if key.dst.is_ipv6() {
                frame::parse_echo_reply_v6(&self.buf[..n])
            } else {
                frame::parse_echo_reply(&self.buf[..n])
            };
            let Some((seq_no, data)) = reply else {
                continue;
            };
            if echo_frame(
                &mut self.scratch,
                link,
                key.dst,
                key.src,
                key.ident,
                seq_no,
                data,
            ) {
                self.send_scratch();
            }
        }
    }

    fn dns_answers(&mut self, now: Instant) {
        let Some(link) = self.link() else { return };
        let dns = self.plan().dns;
        loop {
            let (n, from) = match self.dns_socket.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let Some((client, answer)) = self.dns.handle_answer(now, from, &self.buf[..n]) else {
                continue;
            };
            let server = match (client, &self.v6) {
                (SocketAddr::V6(_), Some(v6)) => SocketAddr::new(v6.dns.into(), 53),
                _ => SocketAddr::new(dns.into(), 53),
            };
            if udp_frame(&mut self.scratch, link, server, client, &answer) {
                self.send_scratch();
            }
        }
    }

    fn listener_ready(&mut self, now: Instant, index: usize) {
        match self.listeners.get(index).map(|l| &l.socket) {
            Some(ListenerSocket::Tcp(_)) => self.accept_tcp(index),
            Some(ListenerSocket::Udp(_)) => self.forward_udp(now, index),
            None => {}
        }
    }

    /// The address a host client appears from inside the guest: loopback clients come from
    /// the gateway (as with slirp4netns), others keep their own address.
    fn guest_visible(&self, client: SocketAddr) -> SocketAddr {
        let ip = match client.ip().to_canonical() {
            IpAddr::V4(v4) if !v4.is_loopback() => IpAddr::V4(v4),
            _ => IpAddr::V4(self.plan().gateway),
        };
        SocketAddr::new(ip, client.port())
    }

    /// A guest-side key for a forwarded client, with another source port if that one is taken.
    fn inbound_key(
        &mut self,
        guest_ip: Ipv4Addr,
        guest_port: u16,
        client: SocketAddr,
        udp: bool,
    ) -> FlowKey {
        let guest = SocketAddr::new(guest_ip.into(), guest_port);
        let mut remote = self.guest_visible(client);
        for _ in 0..16384 {
            let key = FlowKey { guest, remote };
            let taken = if udp {
                self.udp_index.contains_key(&key)
            } else {
                self.tcp_index.contains_key(&key)
            };
            if !taken {
                break;
            }
            remote.set_port(self.next_port);
            self.next_port = if self.next_port == u16::MAX {
                49152
            } else {
                self.next_port + 1
            };
        }
        FlowKey { guest, remote }
    }

    fn accept_tcp(&mut self, index: usize) {
        loop {
            let Some(Listener {
                socket: ListenerSocket::Tcp(listener),
                fwd,
                guest,
                ..
            }) = self.listeners.get(index)
            else {
                return;
            };
            let (guest_ip, guest_port) = (*guest, fwd.guest_port);
            let (host, client) = match listener.accept() {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // Out of descriptors, most likely: counted and warned about once, not per
                // client (the client waits in the backlog until a descriptor is free).
                Err(e) => {
                    log::debug!("accept on {}: {e}", fwd.host);
                    self.stats.drop(DropReason::HostSocket);
                    return;
                }
            };
            if self.tcp_flows_full() {
                continue;
            }
            let _ = host.set_nodelay(true);
            unpaced_on_loopback((&host).into(), client.ip());
            let host = match self.splice_forward(host, client, guest_ip, guest_port) {
                Ok(()) => continue,
                Err(host) => host,
            };
            self.forward_through_stack(host, client, guest_ip, guest_port);
        }
    }

    /// Whether a new TCP connection finds `tcp-flows` reached: flows through the TAP and
    /// splices count together. Counted as a limit hit when it does.
    fn tcp_flows_full(&mut self) -> bool {
        let full = self.tcp.len() + self.splices.len() >= self.limits.max_tcp_flows;
        if full {
            self.stats.drop(DropReason::TcpFlowLimit);
        }
        full
    }

    /// Carries an accepted forward through smoltcp and the TAP: the guest sees `client` (or
    /// the gateway, for a loopback client) connect to `guest_ip:guest_port`.
    fn forward_through_stack(
        &mut self,
        host: mio::net::TcpStream,
        client: SocketAddr,
        guest_ip: Ipv4Addr,
        guest_port: u16,
    ) {
        let Some(ring) = self.buffers.grant(self.tcp.len()) else {
            self.stats.drop(DropReason::TcpBufferLimit);
            return;
        };
        let key = self.inbound_key(guest_ip, guest_port, client, false);
        let mut socket = new_socket(ring);
        let local = (IpAddress::from(key.remote.ip()), key.remote.port());
        let remote = (IpAddress::from(key.guest.ip()), key.guest.port());
        if socket.connect(self.iface.context(), remote, local).is_err() {
            self.buffers.release(ring);
            return;
        }
        let side = HostSide {
            readable: true,
            writable: true,
            ..HostSide::default()
        };
        let Some(id) = self.insert_tcp(key, socket, ring, host, side, false) else {
            self.buffers.release(ring);
            return;
        };
        self.mark_dirty(id);
        // smoltcp may have to ask for the guest's MAC (its cache expires): the ARP reply
        // should release the SYN at once rather than after smoltcp's 1 s back-off.
        if self.awaiting_mac.len() >= 4096 {
            self.awaiting_mac.drain(..2048);
        }
        self.awaiting_mac.push(id);
        log::debug!(
            "forward {client} -> guest port {guest_port} as {}",
            key.remote
        );
    }

    /// Joins a loopback client straight to the guest's 127.0.0.1 (see `flow::splice`), or
    /// gives the host socket back when that is not for this client or cannot be done.
    fn splice_forward(
        &mut self,
        host: mio::net::TcpStream,
        client: SocketAddr,
        guest_ip: Ipv4Addr,
        guest_port: u16,
    ) -> Result<(), mio::net::TcpStream> {
        let loopback = client.ip().to_canonical().is_loopback();
        let Some(factory) = self.factory.as_ref().filter(|_| loopback) else {
            return Err(host);
        };
        let fd = match factory.tcp_socket() {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!(
                    "forwards from the host's loopback go through the TAP from now on: the \
                     socket factory in the guest's namespace failed ({e})"
                );
                self.factory = None;
                return Err(host);
            }
        };
        let guest = mio::net::TcpStream::from_std(std::net::TcpStream::from(fd));
        let _ = guest.set_nodelay(true);
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, guest_port));
        unpaced_on_loopback((&guest).into(), target.ip());
        let connecting = match socket2::SockRef::from(&guest).connect(&target.into()) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => {
                log::debug!("forward {client} -> guest {target}: {e}; through the TAP instead");
                return Err(host);
            }
        };
        let io = SplicedSockets::new(host, guest).map_err(|(e, host, _)| {
            log::debug!("forward {client}: no pipes for a splice ({e})");
            host
        })?;
        let origin = SpliceOrigin::Forward {
            client,
            guest: guest_ip,
            guest_port,
        };
        let id = self
            .keep_splice(io, connecting.then_some(Side::Guest), origin)
            .map_err(SplicedSockets::into_host)?;
        if !connecting {
            self.splice_ready(id, Side::Guest, false, false);
        }
        Ok(())
    }

    /// Watches both sockets of a new splice and keeps it, its relay waiting for `connecting`
    /// if a connect is under way. If they cannot be watched, they come back unwatched.
    fn keep_splice(
        &mut self,
        mut io: SplicedSockets<mio::net::TcpStream>,
        connecting: Option<Side>,
        origin: SpliceOrigin,
    ) -> Result<usize, SplicedSockets<mio::net::TcpStream>> {
        let entry = self.splices.vacant_entry();
        let id = entry.key();
        let both = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .registry
            .register(&mut io.host, token(KIND_SPLICE_HOST, id), both)
            .and_then(|()| {
                self.registry
                    .register(&mut io.guest, token(KIND_SPLICE_GUEST, id), both)
            })
        {
            log::debug!("{origin}: cannot watch the spliced sockets ({e})");
            unwatch_splice(&self.registry, &mut io);
            return Err(io);
        }
        let relay = Relay::new(io.pipe_size());
        entry.insert(SplicedConn {
            io,
            relay,
            connecting,
            origin,
        });
        self.stats.tcp_spliced += 1;
        log::debug!("{origin}: spliced");
        Ok(id)
    }

    fn splice_ready(&mut self, id: usize, side: Side, readable: bool, writable: bool) {
        let Some(conn) = self.splices.get_mut(id) else {
            return;
        };
        conn.relay.ready(side, readable, writable);
        if let Some(pending) = conn.connecting {
            if side != pending {
                return;
            }
            match connect_outcome(conn.io.socket(pending)) {
                Some(Ok(())) => conn.connecting = None,
                Some(Err(_)) => return self.splice_refused(id),
                None => return,
            }
        }
        let before = conn.relay.bytes_moved();
        let outcome = conn.relay.pump(&mut conn.io);
        self.stats.bytes_spliced += conn.relay.bytes_moved() - before;
        match outcome {
            Outcome::Open => {}
            Outcome::Done => self.close_splice(id, false),
            Outcome::Reset => self.close_splice(id, true),
        }
    }

    /// The connect failed. For a `-p` client, the guest's loopback refused (its server
    /// listens on its TAP address only, say): the client goes through the TAP after all.
    /// Nothing was read from it yet. For a `-T` client, the host refused: the guest's
    /// client is reset, as it would be by a refusing server.
    fn splice_refused(&mut self, id: usize) {
        let origin = self.splices[id].origin;
        log::debug!("{origin}: refused");
        match origin {
            SpliceOrigin::Forward {
                client,
                guest,
                guest_port,
            } => {
                let mut io = self.splices.remove(id).io;
                unwatch_splice(&self.registry, &mut io);
                self.forward_through_stack(io.into_host(), client, guest, guest_port);
            }
            SpliceOrigin::ToHost { .. } => self.close_splice(id, true),
        }
    }

    fn close_splice(&mut self, id: usize, reset: bool) {
        let mut conn = self.splices.remove(id);
        unwatch_splice(&self.registry, &mut conn.io);
        if reset {
            reset_on_close(&conn.io.host);
            reset_on_close(&conn.io.guest);
        }
        log::debug!(
            "{} spliced: closed{}",
            conn.origin,
            if reset { " (reset)" } else { "" }
        );
    }

    /// Serves a `-T` forward on `fd`, a listener the guest's namespace made on its loopback.
    fn add_to_host(&mut self, fd: OwnedFd, fwd: ToHost) -> io::Result<()> {
        let mut socket = mio::net::TcpListener::from_std(std::net::TcpListener::from(fd));
        let t = token(KIND_TO_HOST, self.to_host.len());
        self.registry.register(&mut socket, t, Interest::READABLE)?;
        self.to_host.push(ToHostListener { socket, fwd });
        Ok(())
    }

    /// Takes the guest's clients of a `-T` port to the host's loopback, spliced.
    fn accept_to_host(&mut self, index: usize) {
        let Some(fwd) = self.to_host.get(index).map(|l| l.fwd) else {
            return;
        };
        loop {
            let (guest, client) = match self.to_host[index].socket.accept() {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("accept on the guest's 127.0.0.1:{}: {e}", fwd.guest_port);
                    self.stats.drop(DropReason::HostSocket);
                    return;
                }
            };
            if self.tcp_flows_full() {
                reset_on_close(&guest);
                continue;
            }
            self.splice_to_host(guest, client, fwd);
        }
    }

    /// Connects to the host's 127.0.0.1 for a `-T` client and splices the two; the relay
    /// starts once the connect is done.
    fn splice_to_host(&mut self, guest: mio::net::TcpStream, client: SocketAddr, fwd: ToHost) {
        let origin = SpliceOrigin::ToHost {
            client,
            host_port: fwd.host_port,
        };
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, fwd.host_port));
        let host = match connect_tcp(target, None) {
            Ok(host) => host,
            Err(e) => {
                log::debug!("{origin}: {e}");
                self.stats.drop(DropReason::HostSocket);
                return reset_on_close(&guest);
            }
        };
        let _ = guest.set_nodelay(true);
        unpaced_on_loopback((&guest).into(), client.ip());
        let io = match SplicedSockets::new(host, guest) {
            Ok(io) => io,
            Err((e, _, guest)) => {
                log::debug!("{origin}: no pipes for a splice ({e})");
                self.stats.drop(DropReason::HostSocket);
                return reset_on_close(&guest);
            }
        };
        if let Err(io) = self.keep_splice(io, Some(Side::Host), origin) {
            reset_on_close(&io.guest);
        }
    }

    fn forward_udp(&mut self, now: Instant, index: usize) {
        loop {
            let Some(Listener {
                socket: ListenerSocket::Udp(socket),
                fwd,
                guest,
                ..
            }) = self.listeners.get(index)
            else {
                return;
            };
            let (guest_ip, guest_port) = (*guest, fwd.guest_port);
            let (n, client) = match socket.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let existing = self.udp_inbound.get(&(index, client)).copied();
            let key = match existing {
                Some(id) => {
                    self.udp[id].last_active = now;
                    self.udp[id].key
                }
                None => {
                    if self.udp.len() >= self.limits.max_udp_flows {
                        self.stats.drop(DropReason::UdpFlowLimit);
                        continue;
                    }
                    let key = self.inbound_key(guest_ip, guest_port, client, true);
                    let id = self.udp.insert(UdpFlow {
                        key,
                        kind: UdpKind::Inbound {
                            listener: index,
                            client,
                        },
                        last_active: now,
                    });
                    self.udp_index.insert(key, id);
                    self.udp_inbound.insert((index, client), id);
                    key
                }
            };
            if let Some(link) = self.link()
                && udp_frame(
                    &mut self.scratch,
                    link,
                    key.remote,
                    key.guest,
                    &self.buf[..n],
                )
            {
                self.send_scratch();
            }
        }
    }

    /// Services smoltcp timers that are due, the DNS forwarder's, and the idle sweep.
    pub fn handle_timers(&mut self, now: Instant) {
        let t = self.smol_now(now);
        // Take what is due first, then service it: a flow that cannot emit (the queue towards
        // the guest is full) asks to be polled "now" again, and servicing it from the set
        // directly would take and put it back forever, the loop stuck and `starved` growing.
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.timers.first() {
            if at > t {
                break;
            }
            self.timers.pop_first();
            self.tcp[id].timer = None;
            due.push(id);
        }
        for id in due {
            self.service(now, id);
        }
        if self.dns.poll_at().is_some_and(|at| at <= now) {
            for q in self.dns.handle_timeout(now) {
                let _ = self.dns_socket.send_to(&q.bytes, q.upstream);
            }
        }
        self.advertise(now);
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + Duration::from_secs(1);
        }
    }

    fn remove_udp(&mut self, id: usize) {
        let mut flow = self.udp.remove(id);
        self.udp_index.remove(&flow.key);
        match &mut flow.kind {
            UdpKind::Outbound(socket) => {
                let _ = self.registry.deregister(socket);
            }
            UdpKind::Inbound { listener, client } => {
                self.udp_inbound.remove(&(*listener, *client));
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let idle = self.limits.udp_idle;
        let expired: Vec<usize> = self
            .udp
            .iter()
            .filter(|(_, f)| f.is_idle(now, idle))
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            self.remove_udp(id);
        }
        let idle = self.limits.icmp_idle;
        let expired: Vec<usize> = self
            .icmp
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.last_active) >= idle)
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            let mut flow = self.icmp.remove(id);
            self.icmp_index.remove(&flow.key);
            let _ = self.registry.deregister(&mut flow.socket);
        }
    }

    /// When the loop should wake up at the latest.
    pub fn poll_at(&self) -> Instant {
        let mut at = self.next_sweep;
        if let Some(&(t, _)) = self.timers.first() {
            let t = self.start + Duration::from_micros(t.total_micros().max(0) as u64);
            at = at.min(t);
        }
        if let Some(t) = self.dns.poll_at() {
            at = at.min(t);
        }
        if let Some(ra) = &self.ra {
            at = at.min(ra.poll_at());
        }
        if !self.dirty.is_empty() {
            at = self.start;
        }
        at
    }

    /// Bytes carried so far: frames to and from the guest, what TCP flows wrote to and read
    /// from their host sockets, and what splices moved. The loop tells bulk turns from small
    /// exchanges by it (`busy_poll`).
    pub fn bytes_carried(&self) -> u64 {
        let s = &self.stats;
        s.bytes_in + s.bytes_out + s.bytes_spliced + s.bytes_tcp_host
    }

    /// Whether every byte the guest sent has reached its host socket (the guest's FIN
    /// included): what must be true before tapir may exit after the guest.
    pub fn is_drained(&self) -> bool {
        self.tcp.iter().all(|(_, conn)| {
            let socket = conn.set.get::<tcp::Socket>(conn.handle);
            let fin_pending = matches!(
                socket.state(),
                tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing
            ) && !conn.side.shut_wr;
            conn.connecting || (socket.recv_queue() == 0 && !fin_pending)
        })
    }

    /// The TAP took frames: flows that could not emit for lack of room may go on.
    pub fn resume_starved(&mut self) {
        for id in std::mem::take(&mut self.starved) {
            self.mark_dirty(id);
        }
    }
}

impl crate::api::server::ForwardTable for Network {
    fn guest(&self) -> Ipv4Addr {
        self.map.plan().guest
    }

    fn add_forward(&mut self, fwd: PortForward, guest: Option<Ipv4Addr>) -> io::Result<u64> {
        Network::add_forward(self, fwd, guest)
    }

    fn remove_forward(&mut self, id: u64) -> bool {
        Network::remove_forward(self, id)
    }

    fn forwards(&self) -> Vec<(u64, PortForward, Ipv4Addr)> {
        Network::forwards(self)
    }

    fn policy(&self) -> (Vec<crate::api::proto::PolicyEntry>, u64) {
        crate::api::proto::PolicyEntry::list(&self.policy)
    }

    fn set_policy(&mut self, rules: &[String], deny_private: bool) -> Result<(), String> {
        let host_addrs = deny_private.then_some(&self.host_addrs[..]);
        let policy = Policy::from_lines(rules, host_addrs).map_err(|e| e.to_string())?;
        // Flows already open keep going: the policy is asked only when a flow opens.
        self.policy = policy;
        log::info!(
            "egress policy replaced: {} rules",
            self.policy.rules().len()
        );
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let mut v = vec![
            ("frames_in", s.frames_in),
            ("frames_out", s.frames_out),
            ("bytes_in", s.bytes_in),
            ("bytes_out", s.bytes_out),
            ("tcp_open", self.tcp.len() as u64),
            ("tcp_opened", s.tcp_opened),
            ("tcp_closed", s.tcp_closed),
            ("tcp_small_buffers", s.tcp_small_buffers),
            ("tcp_buffer_bytes", self.buffers.committed() as u64),
            ("tcp_spliced_open", self.splices.len() as u64),
            ("tcp_spliced", s.tcp_spliced),
            ("udp_open", self.udp.len() as u64),
            ("udp_opened", s.udp_opened),
            ("icmp_open", self.icmp.len() as u64),
            ("icmp_opened", s.icmp_opened),
        ];
        v.extend(DropReason::ALL.iter().map(|r| {
            let pending = if *r == DropReason::TxQueueFull {
                self.tx.refused
            } else {
                0
            };
            (r.name(), s.drops(*r) + pending)
        }));
        v
    }
}

/// Where the DNS forwarder sends: port 53 of each IPv4 nameserver.
fn upstreams(nameservers: &[IpAddr]) -> Vec<SocketAddr> {
    nameservers
        .iter()
        .filter(|ip| ip.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, 53))
        .collect()
}

/// Builds an echo reply `from` → `to` into `out`; false when the families differ.
fn echo_frame(
    out: &mut Vec<u8>,
    link: Link,
    from: IpAddr,
    to: IpAddr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> bool {
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            frame::echo_reply_v4(out, link, f, t, ident, seq_no, data)
        }
        (IpAddr::V6(f), IpAddr::V6(t)) => {
            frame::echo_reply_v6(out, link, f, t, ident, seq_no, data)
        }
        _ => return false,
    }
    true
}

/// Builds a UDP datagram `from` → `to` into `out`; false when the families differ.
fn udp_frame(
    out: &mut Vec<u8>,
    link: Link,
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) -> bool {
    match (from, to) {
        (SocketAddr::V4(f), SocketAddr::V4(t)) => frame::udp_v4(out, link, f, t, payload),
        (SocketAddr::V6(f), SocketAddr::V6(t)) => frame::udp_v6(out, link, f, t, payload),
        _ => return false,
    }
    true
}

/// Linger 0: closing `stream` sends a RST rather than a FIN.
fn reset_on_close(stream: &mio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Turns pacing off on a TCP socket whose peer is on this machine's loopback, by giving it
/// Reno. BBR, a common default, paces every send with a timer unless an `fq` qdisc does it;
/// loopback has no bottleneck to pace for, and the timers cost CPU the stream's two ends
/// need (measured on a 2-vCPU VM with BBR as default, alternating 6 s runs: a spliced
/// host→guest stream went from 11.5–17.0 to 15.7–19.9 Gbit/s). Reno is the one algorithm
/// every user may set, and without loss it moves loopback bytes as fast as any. Sockets
/// towards other hosts keep the default.
fn unpaced_on_loopback(socket: socket2::SockRef<'_>, peer: IpAddr) {
    if peer.to_canonical().is_loopback() {
        let _ = socket.set_tcp_congestion(b"reno");
    }
}

/// Where a non-blocking connect stands: done (`Some(Ok)`), failed (`Some(Err)`, with the
/// reason), or still under way (`None`).
fn connect_outcome(stream: &mio::net::TcpStream) -> Option<io::Result<()>> {
    match stream.take_error() {
        Ok(None) => match stream.peer_addr() {
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind() == ErrorKind::NotConnected => None,
            Err(e) => Some(Err(e)),
        },
        Ok(Some(e)) | Err(e) => Some(Err(e)),
    }
}

/// Stops watching both sockets of a spliced pair.
fn unwatch_splice(registry: &Registry, io: &mut SplicedSockets<mio::net::TcpStream>) {
    let _ = registry.deregister(&mut io.guest);
    let _ = registry.deregister(&mut io.host);
}

fn listen_endpoint(addr: SocketAddr) -> IpListenEndpoint {
    IpListenEndpoint {
        addr: Some(IpAddress::from(addr.ip())),
        port: addr.port(),
    }
}

/// A non-blocking connect towards `addr`, from `source` when given; completion is signalled
/// by writability.
fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<mio::net::TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    unpaced_on_loopback((&socket).into(), addr.ip());
    if let Some(source) = source {
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

fn seed() -> u64 {
    // A fuzzer replays an input and must see the same stack behaviour each time.
    if cfg!(fuzzing) {
        return 1;
    }
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
}

/// How long tapir goes on after the command exits, to hand the host what the guest sent and
/// tapir already acknowledged.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How long the TAP must stay silent before the drain may end.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// What keeps the network running.
pub enum Lifetime {
    /// `tapir run`: until the guest command exits; termination signals are passed on to it.
    Child(Pid),
    /// slirp4netns mode: until the exit fd (the first, if any) hangs up or is invalid, the
    /// target process (the second: a pidfd, with `--netns-type=pid`) exits, or a termination
    /// signal arrives. (The TAP alone would not tell: tapir's TAP fd holds the namespace.)
    ExitFd(Option<OwnedFd>, Option<OwnedFd>),
}

/// Why the network stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Child(WaitStatus),
    ExitFd,
    Signal(Signal),
    /// The TAP failed: the guest's namespace is gone.
    GuestGone,
}

/// Runs the network until `lifetime` ends. `api` (the slirp4netns JSON socket) is served from
/// the same loop; `ready` is called once everything is open and listens, before the first
/// wait (the place to confine the process and then tell the caller); its error stops tapir.
/// With a socket `factory` in the guest's namespace, loopback clients of TCP forwards are
/// spliced (`flow::splice`).
///
/// With [`Lifetime::Child`], when the command exits the loop goes on (for at most
/// [`DRAIN_LIMIT`]) until every byte the guest sent has been written to its host socket: tapir
/// acknowledged those bytes, so the guest believes them delivered.
pub fn serve(
    tap: OwnedFd,
    config: &NetworkConfig,
    lifetime: Lifetime,
    api: Option<ApiServer>,
    guest: GuestSockets,
    ready: impl FnOnce() -> Result<(), String>,
) -> Result<Ending, LoopError> {
    let mut driver = Driver::new(tap, config, lifetime, api)?;
    driver.net.factory = guest.factory;
    for (fd, fwd) in guest.to_host {
        driver.net.add_to_host(fd, fwd).map_err(LoopError::ToHost)?;
    }
    ready().map_err(LoopError::Ready)?;
    let mut ending = driver.initial_ending();
    while ending.is_none() {
        ending = driver.turn(None)?;
    }
    if matches!(ending, Some(Ending::Child(_))) {
        driver.drain()?;
    }
    flush(&driver.tap, &mut driver.net, true);
    driver.net.flush_capture();
    log::info!("stopping ({ending:?}); {}", driver.net.stats);
    Ok(ending.unwrap_or(Ending::ExitFd))
}

/// The poll, the TAP, the signalfd and the API socket around a [`Network`].
struct Driver {
    lifetime: Lifetime,
    api: Option<ApiServer>,
    poll: Poll,
    events: Events,
    tap: OwnedFd,
    signals: SignalFd,
    net: Network,
    frame: Vec<u8>,
    header: usize,
    tap_readable: bool,
    tap_writable: bool,
    /// The TAP failed (its namespace is gone): nothing more is read from or written to it.
    tap_gone: bool,
    /// The guest command has exited: TAP errors are expected now.
    exiting: bool,
    /// When the last frame came from the guest.
    last_frame: Instant,
    /// The clock as read when the last poll returned. The next poll's timeout is reckoned
    /// from it: one clock read per turn, not two. (A read costs up to 0.2 µs here, a tenth
    /// of what tapir adds to a request's round trip; the timeout it stretches by a turn's
    /// few µs of work is rounded up to whole milliseconds by epoll anyway.) Busy polling
    /// reads the clock once more, where a wait starts, to time it.
    now: Instant,
    /// How long to spin before the next wait, from how the last waits went.
    busy: BusyPoll,
    /// `Network::bytes_carried` as of the last wait.
    carried: u64,
}

impl Driver {
    fn new(
        tap: OwnedFd,
        config: &NetworkConfig,
        lifetime: Lifetime,
        mut api: Option<ApiServer>,
    ) -> Result<Driver, LoopError> {
        let poll = Poll::new().map_err(LoopError::Poll)?;
        if let Lifetime::ExitFd(Some(fd), _) = &lifetime {
            let raw = fd.as_raw_fd();
            // An fd that is not open cannot be registered: that is the POLLNVAL case, seen
            // by `initial_ending`.
            let _ = poll
                .registry()
                .register(&mut SourceFd(&raw), EXIT_FD, Interest::READABLE);
        }
        if let Lifetime::ExitFd(_, Some(pidfd)) = &lifetime {
            // Readable once the process has exited (at once, if it already has).
            poll.registry()
                .register(
                    &mut SourceFd(&pidfd.as_raw_fd()),
                    TARGET,
                    Interest::READABLE,
                )
                .map_err(LoopError::Poll)?;
        }
        if let Some(api) = &mut api {
            api.register(poll.registry(), API, |i| token(KIND_API, i))
                .map_err(LoopError::Poll)?;
        }
        let registry = poll.registry().try_clone().map_err(LoopError::Poll)?;
        let net = Network::new(config, registry, Instant::now())?;
        let tap_fd = tap.as_raw_fd();
        poll.registry()
            .register(
                &mut SourceFd(&tap_fd),
                TAP,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(LoopError::Poll)?;

        // The command's exit and the signals meant for tapir arrive on a signalfd.
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGINT,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(|e| LoopError::Poll(e.into()))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| LoopError::Poll(e.into()))?;
        let sig_fd = signals.as_fd().as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&sig_fd), SIGNAL, Interest::READABLE)
            .map_err(LoopError::Poll)?;
        Ok(Driver {
            lifetime,
            api,
            poll,
            events: Events::with_capacity(1024),
            tap,
            signals,
            net,
            frame: vec![0u8; MAX_FRAME],
            header: if config.vnet_hdr { VNET_HDR_LEN } else { 0 },
            tap_readable: true,
            tap_writable: true,
            tap_gone: false,
            exiting: false,
            last_frame: Instant::now(),
            now: Instant::now(),
            busy: BusyPoll::new(config.busy_poll),
            carried: 0,
        })
    }

    /// Whether the loop must end before it starts: the child already exited, or the exit fd
    /// is not open (slirp4netns exits on POLLNVAL too).
    fn initial_ending(&mut self) -> Option<Ending> {
        match &self.lifetime {
            Lifetime::Child(pid) => reap(*pid).map(Ending::Child),
            Lifetime::ExitFd(Some(fd), _) => {
                let open = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFD).is_ok();
                (!open).then_some(Ending::ExitFd)
            }
            Lifetime::ExitFd(None, _) => None,
        }
    }

    /// After the guest command exited: carry on until what the guest sent has reached the
    /// host, the TAP has been quiet for [`DRAIN_QUIET`], or [`DRAIN_LIMIT`] passed.
    fn drain(&mut self) -> Result<(), LoopError> {
        self.exiting = true;
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            let now = Instant::now();
            // The guest's kernel goes on sending what a closed socket still held.
            let quiet = now.saturating_duration_since(self.last_frame) >= DRAIN_QUIET;
            if now >= deadline || (quiet && self.net.is_drained()) {
                return Ok(());
            }
            self.turn(Some(Duration::from_millis(10)))?;
        }
    }

    /// One wake-up: events, a bounded batch of TAP frames, dirty flows, timers, TAP writes.
    /// Waits at most `max_wait` (or until the network's next deadline).
    fn turn(&mut self, max_wait: Option<Duration>) -> Result<Option<Ending>, LoopError> {
        let mut ending = None;
        let mut timeout = if self.tap_readable && !self.tap_gone {
            Duration::ZERO
        } else {
            self.net.poll_at().saturating_duration_since(self.now)
        };
        if let Some(api) = &self.api {
            if let Some(at) = api.poll_at() {
                timeout = timeout.min(at.saturating_duration_since(self.now));
            }
        }
        if let Some(max) = max_wait {
            timeout = timeout.min(max);
        }
        let carried = self.net.bytes_carried();
        let spin = self.busy.poll_window(carried - self.carried);
        self.carried = carried;
        if !self.busy.is_enabled() {
            self.wait(timeout)?;
            self.now = Instant::now();
        } else {
            let started = Instant::now();
            self.spin_then_wait(spin.min(timeout), timeout, started)?;
            self.now = Instant::now();
            let waited = self.now.saturating_duration_since(started);
            self.busy.handle_wait(waited, !self.events.is_empty());
        }
        let now = self.now;
        let mut api_ready = Vec::new();
        let mut signalled = false;
        for event in self.events.iter() {
            match event.token() {
                TAP => {
                    self.tap_readable |= event.is_readable();
                    self.tap_writable |= event.is_writable();
                }
                SIGNAL => signalled = true,
                EXIT_FD => ending = ending.or(Some(Ending::ExitFd)),
                TARGET => ending = ending.or(Some(Ending::GuestGone)),
                API => api_ready.push(None),
                t if untoken(t).0 == KIND_API => api_ready.push(Some(untoken(t).1)),
                _ => self.net.handle_event(now, event),
            }
        }
        if signalled {
            ending = ending.or(self.signals_arrived());
        }
        if let Some(api) = &mut self.api {
            let registry = self.poll.registry();
            for which in api_ready {
                api.ready(registry, which, now, &mut self.net, |i| token(KIND_API, i));
            }
            api.expire(registry, now, |i| token(KIND_API, i));
        }
        if self.tap_readable && !self.tap_gone {
            let exiting = matches!(ending, Some(Ending::Child(_)));
            if self.read_tap(now, exiting)? && matches!(self.lifetime, Lifetime::ExitFd(..)) {
                ending = ending.or(Some(Ending::GuestGone));
            }
        }
        self.net.service_dirty(now);
        self.net.handle_timers(now);
        self.net.service_dirty(now);
        if !self.tap_gone {
            self.tap_writable = flush(&self.tap, &mut self.net, self.tap_writable);
        }
        self.net.resume_starved();
        self.net.count_refused_frames();
        Ok(ending)
    }

    /// Blocks until an fd is ready or `timeout` passes.
    fn wait(&mut self, timeout: Duration) -> Result<(), LoopError> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Err(e) if e.kind() != ErrorKind::Interrupted => Err(LoopError::Poll(e)),
            _ => Ok(()),
        }
    }

    /// Polls without blocking for up to `spin` from `started` (see `busy_poll`), then blocks
    /// for what is left of `timeout`.
    fn spin_then_wait(
        &mut self,
        spin: Duration,
        timeout: Duration,
        started: Instant,
    ) -> Result<(), LoopError> {
        let mut spun = Duration::ZERO;
        while spun < spin {
            self.wait(Duration::ZERO)?;
            if !self.events.is_empty() {
                return Ok(());
            }
            std::hint::spin_loop();
            spun = started.elapsed();
        }
        self.wait(timeout.saturating_sub(spun))
    }

    fn signals_arrived(&mut self) -> Option<Ending> {
        let mut ending = None;
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match (&self.lifetime, sig) {
                (Lifetime::Child(pid), Signal::SIGCHLD) => {
                    ending = ending.or_else(|| reap(*pid).map(Ending::Child));
                }
                // The terminal sends SIGINT to the command too; wait for it to exit.
                (Lifetime::Child(_), Signal::SIGINT) => {}
                (Lifetime::Child(pid), sig) => {
                    let _ = nix::sys::signal::kill(*pid, sig);
                }
                (Lifetime::ExitFd(..), Signal::SIGCHLD) => {}
                (Lifetime::ExitFd(..), sig) => ending = ending.or(Some(Ending::Signal(sig))),
            }
        }
        ending
    }

    /// Reads a bounded batch of frames, so host sockets get their turn under a guest flood.
    /// Returns whether the TAP is gone.
    ///
    /// What the batch's first frame gave the flows goes on to the host at once: a lone frame
    /// is most often a request, and its round trip should not wait for the read that finds
    /// the TAP empty.
    fn read_tap(&mut self, now: Instant, exiting: bool) -> Result<bool, LoopError> {
        for i in 0..256 {
            match nix::unistd::read(self.tap.as_fd(), &mut self.frame) {
                Ok(n) if n > self.header => {
                    self.last_frame = now;
                    self.net.handle_frame(now, &self.frame[self.header..n]);
                    if i == 0 {
                        self.net.service_dirty(now);
                    }
                }
                Ok(_) => self.net.stats.drop(DropReason::Malformed),
                Err(nix::errno::Errno::EAGAIN) => {
                    self.tap_readable = false;
                    return Ok(false);
                }
                Err(nix::errno::Errno::EINTR) => {}
                // Once the guest is gone its namespace, and the TAP with it, may go too.
                Err(e)
                    if exiting || self.exiting || matches!(self.lifetime, Lifetime::ExitFd(..)) =>
                {
                    log::debug!("the TAP is gone: {e}");
                    self.tap_gone = true;
                    return Ok(true);
                }
                Err(e) => return Err(LoopError::Tap(e.into())),
            }
        }
        Ok(false)
    }
}

/// Writes queued frames to the TAP; returns whether it may still be writable.
fn flush(tap: &OwnedFd, net: &mut Network, writable: bool) -> bool {
    if !writable {
        return false;
    }
    while let Some(buf) = net.tx.front() {
        match nix::unistd::write(tap.as_fd(), buf) {
            Ok(_) => {
                net.stats.frames_out += 1;
                net.stats.bytes_out += buf.len() as u64;
                if let Some(pcap) = &mut net.pcap {
                    pcap.write(wall_clock(), net.tx.strip_header(buf));
                }
                net.tx.pop_front();
            }
            Err(nix::errno::Errno::EAGAIN) => return false,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                log::debug!("writing to the TAP: {e}");
                net.tx.pop_front();
            }
        }
    }
    true
}

/// Capture timestamps: time since the Unix epoch.
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn reap(child: Pid) -> Option<WaitStatus> {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => None,
        Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => Some(status),
        Ok(_) => None,
        Err(_) => Some(WaitStatus::Exited(child, 1)),
    }
}

#[cfg(test)]
mod test {
    //! The network with guest frames made by hand and no TAP: flow table limits, refusals
    //! and the virtual hosts. Host sockets only ever reach 127.0.0.1 (via 10.0.2.2).
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };

    const GUEST_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x64]);

    fn network(limits: Limits) -> (Poll, Network) {
        network_with(limits, Policy::default())
    }

    fn network_with(limits: Limits, policy: Policy) -> (Poll, Network) {
        let poll = Poll::new().unwrap();
        let config = NetworkConfig {
            plan: AddressPlan::default(),
            mtu: 1500,
            limits,
            forwards: vec![],
            vnet_hdr: false,
            nameservers: vec![],
            resolv_conf: None,
            host_addrs: vec![],
            outbound: (None, None),
            pcap: None,
            ipv6: false,
            policy,
            busy_poll: Duration::ZERO,
        };
        let net = Network::new(
            &config,
            poll.registry().try_clone().unwrap(),
            Instant::now(),
        )
        .unwrap();
        (poll, net)
    }

    /// A network (with `limits`) that has just heard the guest ask for the gateway's MAC, so
    /// that it answers the guest at once, and the time it heard it (its clock's start or
    /// later, as every time handed to it must be).
    fn network_heard_guest(limits: Limits) -> (Poll, Network, Instant) {
        let (poll, mut net) = network(limits);
        let t0 = Instant::now();
        net.handle_frame(t0, &arp_request(Ipv4Addr::new(10, 0, 2, 2)));
        (poll, net, t0)
    }

    /// A listener on the host's loopback, and its port.
    fn host_listener() -> (std::net::TcpListener, u16) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    fn ethernet(ethertype: EthernetProtocol, payload_len: usize) -> Vec<u8> {
        let mut f = vec![0; 14 + payload_len];
        EthernetRepr {
            src_addr: GUEST_MAC,
            dst_addr: EthernetAddress(AddressPlan::virtual_mac(AddressPlan::default().gateway)),
            ethertype,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        f
    }

    fn syn(dst: [u8; 4], port: u16) -> Vec<u8> {
        segment(dst, port, TcpControl::Syn, None)
    }

    fn segment(
        dst: [u8; 4],
        port: u16,
        control: TcpControl,
        ack_number: Option<TcpSeqNumber>,
    ) -> Vec<u8> {
        segment_with(dst, port, control, TcpSeqNumber(1), ack_number, &[])
    }

    /// A guest segment from port 40000 + `port` to `dst`:`port`.
    fn segment_with(
        dst: [u8; 4],
        port: u16,
        control: TcpControl,
        seq_number: TcpSeqNumber,
        ack_number: Option<TcpSeqNumber>,
        payload: &[u8],
    ) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000 + port,
            dst_port: port,
            control,
            seq_number,
            ack_number,
            window_len: 64240,
            window_scale: Some(7),
            max_seg_size: Some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 2, 100),
            dst_addr: dst.into(),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut f = ethernet(EthernetProtocol::Ipv4, 20 + tcp.buffer_len());
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

    fn udp(dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        // A frame tapir would send, with the two ends swapped, is a guest frame.
        let link = Link {
            ours: GUEST_MAC,
            guest: EthernetAddress(AddressPlan::virtual_mac(AddressPlan::default().gateway)),
        };
        let mut f = Vec::new();
        frame::udp_v4(
            &mut f,
            link,
            "10.0.2.100:5000".parse().unwrap(),
            dst,
            payload,
        );
        f
    }

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: GUEST_MAC,
            source_protocol_addr: Ipv4Addr::new(10, 0, 2, 100),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let mut f = ethernet(EthernetProtocol::Arp, repr.buffer_len());
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
        f
    }

    /// The frames queued towards the guest, drained.
    fn sent(net: &mut Network) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = net.tx.front() {
            out.push(f.to_vec());
            net.tx.pop_front();
        }
        out
    }

    fn tcp_flags(f: &[u8]) -> Option<(bool, bool)> {
        let ip = Ipv4Packet::new_checked(&f[14..]).ok()?;
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        Some((tcp.syn(), tcp.rst()))
    }

    /// A guest retransmits its SYN while the host connect is still under way (after 1 s,
    /// as Linux does): the flow must not leave a timer that is always due, on which the loop
    /// would spin forever (the hang a SYN flood and any slow host connect exposed).
    #[test]
    fn a_retransmitted_syn_while_connecting_leaves_no_timer_due() {
        let (_poll, mut net, t0) = network_heard_guest(Limits::default());
        // Port 1 of the host's loopback; no event is ever polled here, so the connect stays
        // under way.
        net.handle_frame(t0, &syn([10, 0, 2, 2], 1));
        assert_eq!((net.tcp.len(), net.tcp_pending), (1, 1));
        let t1 = t0 + Duration::from_millis(500);
        net.handle_frame(t1, &syn([10, 0, 2, 2], 1));
        net.service_dirty(t1);
        assert!(net.poll_at() > t1, "a timer is due at once");
        net.handle_timers(t1);
        assert_eq!((net.tcp.len(), net.tcp_pending), (1, 1));
    }

    /// Host sockets towards loopback do not pace (BBR's timers, when it is the default);
    /// towards anywhere else they keep the system's algorithm.
    #[test]
    fn only_loopback_sockets_give_up_pacing() {
        let (_listener, port) = host_listener();
        let stream = connect_tcp(SocketAddr::from(([127, 0, 0, 1], port)), None).unwrap();
        let algorithm = socket2::SockRef::from(&stream).tcp_congestion().unwrap();
        assert_eq!(algorithm.split(|&b| b == 0).next(), Some(&b"reno"[..]));

        let other =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let default = other.tcp_congestion().unwrap();
        unpaced_on_loopback((&other).into(), IpAddr::from([192, 0, 2, 1]));
        assert_eq!(other.tcp_congestion().unwrap(), default);
        unpaced_on_loopback((&other).into(), "::ffff:127.0.0.1".parse().unwrap());
        let algorithm = other.tcp_congestion().unwrap();
        assert_eq!(algorithm.split(|&b| b == 0).next(), Some(&b"reno"[..]));
    }

    /// A flow that cannot emit because the queue towards the guest is full wants to be polled
    /// "now" again and again: servicing its timers must still end (it used to spin forever
    /// under a connect flood, with `starved` growing by the gigabyte).
    #[test]
    fn a_flow_that_cannot_emit_does_not_spin_the_timers() {
        let (listener, port) = host_listener();
        let limits = Limits {
            max_tx_frames: 1,
            ..Limits::default()
        };
        let (_poll, mut net, t0) = network_heard_guest(limits);
        net.handle_frame(t0, &syn([10, 0, 2, 2], port));
        let id = net.tcp_index.values().copied().next().unwrap();
        let _accepted = listener.accept().unwrap();
        // The connect is done; the ARP reply still fills the one-frame queue, so the SYN-ACK
        // cannot go out.
        net.tcp_ready(id, false, true, false);
        assert!(net.tx.is_full());
        net.service_dirty(t0);
        net.handle_timers(t0);
        assert!(
            net.starved.len() <= 2,
            "{} starved entries",
            net.starved.len()
        );
        assert_eq!(net.tcp_pending, 0);
    }

    /// A request's ACK leaves with its response, so the 1 ms delayed-ACK deadline the request
    /// set is moot: it must not stay the flow's timer (it cost a service for nothing once a
    /// millisecond on a busy flow, and a wake-up per request on one that pauses).
    #[test]
    fn a_moot_delayed_ack_deadline_does_not_wake_the_loop() {
        use std::io::{Read, Write};
        let (listener, port) = host_listener();
        let (_poll, mut net, t0) = network_heard_guest(Limits::default());
        net.handle_frame(t0, &syn([10, 0, 2, 2], port));
        let id = net.tcp_index.values().copied().next().unwrap();
        let (mut host, _) = listener.accept().unwrap();
        net.tcp_ready(id, false, true, false);
        net.service_dirty(t0);
        let synack = sent(&mut net)
            .into_iter()
            .find(|f| tcp_flags(f) == Some((true, false)))
            .expect("a SYN-ACK");
        let ip = Ipv4Packet::new_checked(&synack[14..]).unwrap();
        let their_seq = TcpPacket::new_checked(ip.payload()).unwrap().seq_number();

        let request = segment_with(
            [10, 0, 2, 2],
            port,
            TcpControl::Psh,
            TcpSeqNumber(2),
            Some(their_seq + 1),
            b"ping",
        );
        net.handle_frame(t0, &request);
        net.service_dirty(t0);
        let mut got = [0; 4];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let one_ms = t0 + Duration::from_millis(1);
        assert!(
            net.poll_at() <= one_ms,
            "the request's ACK waits for a response"
        );

        host.write_all(b"pong").unwrap();
        net.tcp_ready(id, true, false, false);
        net.service_dirty(t0);
        let response = sent(&mut net);
        assert!(
            response.iter().any(|f| f.ends_with(b"pong")),
            "the response left"
        );
        assert!(
            net.poll_at() > t0 + Duration::from_millis(100),
            "the moot deadline is still the next wake-up"
        );
    }

    /// A guest that gives up on a connection before it is established (a connect timeout,
    /// Happy Eyeballs' losing attempt) resets it, and smoltcp puts the socket back to LISTEN:
    /// the flow must end there, whether tapir's host connect was still under way or its
    /// SYN-ACK had gone out. It used to stay, holding a flow slot, its buffers and a host
    /// connection until tapir exited.
    #[test]
    fn a_connection_the_guest_resets_before_it_is_established_ends() {
        use std::io::Read;
        let (listener, port) = host_listener();
        let (_poll, mut net, t0) = network_heard_guest(Limits::default());
        let rst = |port| {
            segment_with(
                [10, 0, 2, 2],
                port,
                TcpControl::Rst,
                TcpSeqNumber(2),
                None,
                &[],
            )
        };

        // While the connect is under way (port 1: no event is polled, so it stays so).
        net.handle_frame(t0, &syn([10, 0, 2, 2], 1));
        assert_eq!((net.tcp.len(), net.tcp_pending), (1, 1));
        net.handle_frame(t0, &rst(1));
        net.service_dirty(t0);
        assert_eq!(
            (net.tcp.len(), net.tcp_pending),
            (0, 0),
            "reset while connecting"
        );

        // After the SYN-ACK: the host's peer is reset too.
        net.handle_frame(t0, &syn([10, 0, 2, 2], port));
        let id = net.tcp_index.values().copied().next().unwrap();
        let (mut host, _) = listener.accept().unwrap();
        net.tcp_ready(id, false, true, false);
        net.service_dirty(t0);
        assert!(
            sent(&mut net)
                .iter()
                .any(|f| tcp_flags(f) == Some((true, false))),
            "a SYN-ACK"
        );
        net.handle_frame(t0, &rst(port));
        net.service_dirty(t0);
        assert_eq!(
            (net.tcp.len(), net.tcp_pending),
            (0, 0),
            "reset after the SYN-ACK"
        );
        assert!(net.timers.is_empty());
        let mut buf = [0; 1];
        let got = host.read(&mut buf);
        assert!(
            got.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the host's peer read {got:?}"
        );
    }

    /// A host connect that fails as unreachable after a while answers the guest's SYN with ICMP
    /// host unreachable quoting that SYN (so the guest's kernel matches it to its socket), and
    /// the flow goes without a RST.
    #[test]
    fn a_host_connect_failing_unreachable_is_icmp_quoting_the_syn() {
        let (_poll, mut net, t0) = network_heard_guest(Limits::default());
        let _ = sent(&mut net);
        let syn = syn([10, 0, 2, 2], 1);
        net.handle_frame(t0, &syn);
        let id = net.tcp_index.values().copied().next().unwrap();
        net.connect_failed(id, io::Error::from_raw_os_error(libc::EHOSTUNREACH));
        net.service_dirty(t0);
        let out = sent(&mut net);
        assert_eq!(out.len(), 1, "one ICMP error, no RST");
        let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 0, 2, 2));
        let icmp = ip.payload();
        assert_eq!(&icmp[..2], &[3, 1], "host unreachable");
        // The quote: the SYN's IP header and the first 8 bytes of its TCP header.
        assert_eq!(&icmp[8..8 + 28], &syn[14..14 + 28]);
        assert!(net.tcp.is_empty());
        assert_eq!(net.tcp_pending, 0);
    }

    #[test]
    fn syn_to_an_empty_address_is_unreachable() {
        let (_poll, mut net) = network(Limits::default());
        net.handle_frame(Instant::now(), &syn([10, 0, 2, 50], 80));
        let out = sent(&mut net);
        assert_eq!(out.len(), 1);
        let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        assert_eq!(&ip.payload()[..2], &[3, 0]);
        assert_eq!(net.stats.drops(DropReason::Refused), 1);
        assert!(net.tcp.is_empty());
    }

    /// Denied flows never reach a host socket (so this test sends nothing anywhere): the
    /// guest gets "administratively prohibited" and the rule's counter moves.
    #[test]
    fn denied_flows_are_prohibited_and_counted() {
        let rule = policy::Rule::parse(
            "198.51.100.0/24",
            &policy::Origin::Flag(policy::Action::Deny),
        )
        .unwrap();
        let (_poll, mut net) = network_with(
            Limits::default(),
            Policy::new(vec![(policy::Action::Deny, rule)]),
        );
        net.handle_frame(Instant::now(), &syn([198, 51, 100, 10], 443));
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 10), 53);
        net.handle_frame(Instant::now(), &udp(dst, b"q"));
        let out = sent(&mut net);
        assert_eq!(out.len(), 2);
        for f in &out {
            let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
            assert_eq!(&ip.payload()[..2], &[3, 13]);
        }
        assert!(net.tcp.is_empty() && net.udp.is_empty());
        assert_eq!(net.stats.drops(DropReason::Denied), 2);
        let (rules, default_hits) = crate::api::server::ForwardTable::policy(&net);
        assert_eq!((rules[0].hits, default_hits), (2, 0));
        // The host's loopback through the gateway is not the policy's business.
        let mut all =
            crate::api::server::ForwardTable::set_policy(&mut net, &["deny all".into()], false);
        assert_eq!(all, Ok(()));
        net.handle_frame(Instant::now(), &syn([10, 0, 2, 2], 1));
        assert_eq!(net.tcp.len(), 1);
        all = crate::api::server::ForwardTable::set_policy(
            &mut net,
            &["deny 10.0.0.0/33".into()],
            false,
        );
        assert!(all.unwrap_err().contains("10.0.0.0/33"));
    }

    #[test]
    fn stray_segments_are_reset_even_after_the_stack_forgot_the_guest() {
        let (_poll, mut net) = network(Limits::default());
        let t0 = Instant::now();
        net.handle_frame(
            t0,
            &segment([10, 0, 2, 2], 80, TcpControl::None, Some(TcpSeqNumber(9))),
        );
        let out = sent(&mut net);
        assert_eq!(out.len(), 1);
        assert_eq!(tcp_flags(&out[0]), Some((false, true)));
        // Two minutes later smoltcp's neighbour cache has expired; the reset still goes out
        // at once rather than after an ARP round.
        let later = t0 + Duration::from_secs(120);
        net.handle_frame(
            later,
            &segment([10, 0, 2, 2], 81, TcpControl::None, Some(TcpSeqNumber(9))),
        );
        let out = sent(&mut net);
        assert_eq!(out.len(), 1, "an ARP request instead of the reset?");
        assert_eq!(tcp_flags(&out[0]), Some((false, true)));
    }

    /// Replies smoltcp builds while the queue towards the guest is full (here a RST for an
    /// unknown flow) are dropped and counted in `limit_tx_queue`, as tapir's own frames are.
    #[test]
    fn replies_refused_by_a_full_queue_are_counted() {
        use crate::api::server::ForwardTable;
        let limits = Limits {
            max_tx_frames: 1,
            ..Limits::default()
        };
        let (_poll, mut net) = network(limits);
        let t0 = Instant::now();
        let stray = |port| segment([10, 0, 2, 2], port, TcpControl::None, Some(TcpSeqNumber(9)));
        net.handle_frame(t0, &stray(80));
        assert!(net.tx.is_full());
        net.handle_frame(t0, &stray(81));
        net.handle_frame(t0, &arp_request(Ipv4Addr::new(10, 0, 2, 2)));
        let counted = |net: &Network| {
            net.counters()
                .into_iter()
                .find(|(name, _)| *name == "limit_tx_queue")
                .map(|(_, n)| n)
        };
        assert_eq!(counted(&net), Some(2), "a RST and an ARP reply");
        net.count_refused_frames();
        assert_eq!(counted(&net), Some(2));
        assert_eq!(net.stats.drops(DropReason::TxQueueFull), 2);
    }

    /// A datagram the host socket refuses (here ECONNREFUSED: the first one found the port
    /// closed) is dropped and counted, not only logged.
    #[test]
    fn datagrams_the_host_socket_refuses_are_counted() {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (_poll, mut net) = network(Limits::default());
        let t0 = Instant::now();
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), port);
        net.handle_frame(t0, &udp(to, b"one"));
        assert_eq!(net.stats.drops(DropReason::HostSend), 0);
        net.handle_frame(t0, &udp(to, b"two"));
        assert_eq!(net.stats.drops(DropReason::HostSend), 1);
    }

    /// Ring sizes of the open TCP flows, by destination port.
    fn rings(net: &Network) -> Vec<(u16, usize, usize)> {
        let mut v: Vec<_> = net
            .tcp
            .iter()
            .map(|(_, c)| {
                let s = c.set.get::<tcp::Socket>(c.handle);
                (c.key.remote.port(), s.recv_capacity(), s.send_capacity())
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn flows_near_the_buffer_total_get_small_rings_and_are_counted() {
        // Room for one flow at 64 KiB each way plus the minimum for the two that may follow.
        let limits = Limits {
            max_tcp_flows: 3,
            tcp_buffer: 64 * 1024,
            tcp_buffer_total: 128 * 1024 + 2 * 2 * 4096,
            ..Limits::default()
        };
        let (_poll, mut net) = network(limits);
        for port in 1..=3 {
            net.handle_frame(Instant::now(), &syn([10, 0, 2, 2], port));
        }
        assert_eq!(
            rings(&net),
            [(1, 65536, 65536), (2, 4096, 4096), (3, 4096, 4096)]
        );
        assert_eq!(net.stats.tcp_small_buffers, 2);
        assert_eq!(net.buffers.committed(), limits.tcp_buffer_total);
        assert_eq!(net.stats.drops(DropReason::TcpBufferLimit), 0);
        // Closing the large flow gives its bytes back to the next one.
        let first = net
            .tcp
            .iter()
            .find(|(_, c)| c.key.remote.port() == 1)
            .unwrap()
            .0;
        net.close_tcp(first, true);
        net.handle_frame(Instant::now(), &syn([10, 0, 2, 2], 4));
        assert_eq!(rings(&net)[2], (4, 65536, 65536));
    }

    #[test]
    fn flows_past_the_buffer_total_are_reset_and_counted() {
        // A total smaller than the flow limit needs: five flows at the minimum, then no room.
        let limits = Limits {
            max_tcp_flows: 100,
            tcp_buffer: 4096,
            tcp_buffer_total: 5 * 2 * 4096 + 4096,
            ..Limits::default()
        };
        let (_poll, mut net) = network(limits);
        for port in 1..=5 {
            net.handle_frame(Instant::now(), &syn([10, 0, 2, 2], port));
        }
        assert_eq!(net.tcp.len(), 5);
        assert!(
            rings(&net)
                .iter()
                .all(|&(_, rx, tx)| rx == 4096 && tx == 4096)
        );
        let _ = sent(&mut net);
        net.handle_frame(Instant::now(), &syn([10, 0, 2, 2], 6));
        assert_eq!(net.tcp.len(), 5);
        assert_eq!(net.stats.drops(DropReason::TcpBufferLimit), 1);
        let out = sent(&mut net);
        assert_eq!(out.len(), 1);
        assert_eq!(
            tcp_flags(&out[0]),
            Some((false, true)),
            "a RST for the refused SYN"
        );
        assert!(net.buffers.committed() <= limits.tcp_buffer_total);
        // Once a flow closes there is room again.
        let any = net.tcp.iter().next().unwrap().0;
        net.close_tcp(any, true);
        net.handle_frame(Instant::now(), &syn([10, 0, 2, 2], 7));
        assert_eq!(net.tcp.len(), 5);
        assert_eq!(net.stats.drops(DropReason::TcpBufferLimit), 1);
    }

    #[test]
    fn half_open_connections_are_capped_and_counted() {
        let limits = Limits {
            max_tcp_pending: 5,
            ..Limits::default()
        };
        let (_poll, mut net) = network(limits);
        for port in 1..=20 {
            net.handle_frame(Instant::now(), &syn([10, 0, 2, 2], port));
        }
        // Five host connects are under way (no SYN-ACK yet: they are paused); the rest dropped.
        assert_eq!(net.tcp.len(), 5);
        assert_eq!(net.stats.drops(DropReason::TcpPendingLimit), 15);
        assert!(
            sent(&mut net)
                .iter()
                .all(|f| tcp_flags(f) != Some((true, false)))
        );
    }

    #[test]
    fn udp_flows_are_capped_and_counted() {
        let limits = Limits {
            max_udp_flows: 3,
            ..Limits::default()
        };
        let (_poll, mut net) = network(limits);
        for i in 0..10 {
            let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 40000 + i);
            net.handle_frame(Instant::now(), &udp(dst, b"x"));
        }
        assert_eq!(net.udp.len(), 3);
        assert_eq!(net.stats.drops(DropReason::UdpFlowLimit), 7);
        // The same 4-tuple again reuses its flow.
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 40000);
        net.handle_frame(Instant::now(), &udp(dst, b"again"));
        assert_eq!(net.udp.len(), 3);
        assert_eq!(net.stats.drops(DropReason::UdpFlowLimit), 7);
    }

    #[test]
    fn idle_udp_flows_expire() {
        let (_poll, mut net) = network(Limits::default());
        let t0 = Instant::now();
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 40000);
        net.handle_frame(t0, &udp(dst, b"x"));
        assert_eq!(net.udp.len(), 1);
        net.handle_timers(t0 + Duration::from_secs(30));
        assert_eq!(net.udp.len(), 1);
        net.handle_timers(t0 + Duration::from_secs(61));
        assert_eq!(net.udp.len(), 0);
        assert!(net.udp_index.is_empty());
    }

    #[test]
    fn udp_to_a_refused_address_gets_icmp_unreachable() {
        let (_poll, mut net) = network(Limits::default());
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 77), 9);
        net.handle_frame(Instant::now(), &udp(dst, b"x"));
        let out = sent(&mut net);
        assert_eq!(out.len(), 1);
        let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        assert_eq!(&ip.payload()[..2], &[3, 0]);
    }

    #[test]
    fn arp_is_answered_for_virtual_hosts_only() {
        let (_poll, mut net) = network(Limits::default());
        net.handle_frame(Instant::now(), &arp_request(Ipv4Addr::new(10, 0, 2, 50)));
        assert!(sent(&mut net).is_empty());
        net.handle_frame(Instant::now(), &arp_request(Ipv4Addr::new(10, 0, 2, 2)));
        let out = sent(&mut net);
        assert_eq!(out.len(), 1);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(&out[0][14..]).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation,
            source_protocol_addr,
            ..
        } = arp
        else {
            panic!()
        };
        assert_eq!(operation, ArpOperation::Reply);
        assert_eq!(source_protocol_addr, Ipv4Addr::new(10, 0, 2, 2));
    }

    #[test]
    fn runtime_forwards_have_increasing_ids_never_reused() {
        let (_poll, mut net) = network(Limits::default());
        let fwd: PortForward = "127.0.0.1:0:80".parse().unwrap_or_else(|_| PortForward {
            proto: Proto::Tcp,
            host: "127.0.0.1:0".parse().unwrap(),
            guest_port: 80,
        });
        let a = net.add_forward(fwd, None).unwrap();
        let b = net.add_forward(fwd, None).unwrap();
        assert_eq!((a, b), (1, 2));
        assert!(net.remove_forward(1));
        assert!(!net.remove_forward(1));
        let c = net.add_forward(fwd, None).unwrap();
        assert_eq!(c, 3);
        let ids: Vec<u64> = net.forwards().iter().map(|f| f.0).collect();
        assert_eq!(ids, [2, 3]);
    }
}
