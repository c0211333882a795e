//! Reading the guest's frames and writing the ones tapir builds itself.
//!
//! Only TCP goes through smoltcp's state machines. Everything else the guest sends is small
//! and stateless enough to answer directly: ARP for the virtual hosts is handed to smoltcp
//! (which learns the guest's MAC from it), UDP datagrams and ICMP echo requests are taken
//! apart here and re-built on the way back. [`classify`] never panics on any input; what it
//! cannot use it names as a [`DropReason`].
//!
//! DHCP client messages (UDP to port 67) are recognised before the source check, since a
//! client without a lease sends from 0.0.0.0; `service::dhcp` answers them.
//!
//! IPv6 (slirp4netns `-6`) is classified only when the caller passes an [`Ipv6Plan`] to
//! [`classify_with_ipv6`]; [`classify`] counts IPv6 as unsupported. tapir plays the router:
//! it answers router solicitations with a router advertisement for the plan's /64 (the
//! guest then autoconfigures its address), and neighbour solicitations for its own three
//! addresses (fe80::2, fd00::2, fd00::3) with a neighbour advertisement, both built here.
//! Neighbour discovery for any other address, and duplicate-address probes from `::`, are
//! dropped as `ArpNotOurs`, like ARP. The guest's source address cannot be known in advance
//! (SLAAC), so any source in the /64 or in fe80::/64 other than tapir's own is accepted.
//! Extension headers are not followed: a fragment header is a `Fragment` drop, any other
//! (hop-by-hop, which carries the guest's multicast listener reports, routing, ...) is
//! `Unsupported`. Multicast destinations other than neighbour discovery are `Unsupported`
//! (mDNS, LLMNR and the like have nobody to talk to), and unicast ones inside the /64 or on
//! the link that are not tapir's are `Refused`: nobody is there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Duration;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable,
    Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet,
    Ipv6Repr, NdiscNeighborFlags, NdiscOption, NdiscOptionRepr, NdiscPrefixInfoFlags,
    NdiscPrefixInformation, NdiscRepr, NdiscRouterFlags, TcpPacket, UdpPacket, UdpRepr,
};
pub use smoltcp::wire::{
    EthernetAddress, Icmpv4DstUnreachable as Unreachable, Icmpv6DstUnreachable as UnreachableV6,
};

use crate::config::{AddressPlan, IPV6_PREFIX_LEN, Ipv6Plan};
use crate::stats::DropReason;

/// The DHCP server's and client's UDP ports (RFC 2131 section 4.1).
pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;

/// ff02::1, where router advertisements go (RFC 4861 section 6.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet address of ff02::1 (RFC 2464 section 7): the destination of an unsolicited
/// router advertisement, sent before tapir knows the guest's MAC.
pub const ALL_NODES_MAC: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);

/// Router advertisement contents, as libslirp sends them (`ip6_icmp.h`) except where noted.
/// How long the guest may use tapir as its default router without hearing from it again.
pub const ROUTER_LIFETIME: Duration = Duration::from_secs(1800);
/// Lifetimes of the SLAAC address the guest forms in the prefix.
pub const PREFIX_VALID_LIFETIME: Duration = Duration::from_secs(86400);
pub const PREFIX_PREFERRED_LIFETIME: Duration = Duration::from_secs(14400);
/// Lifetime of the DNS server in the RDNSS option. RFC 8106 section 5.1 asks for at least three
/// advertisement intervals; libslirp's value is off by a factor of 1000 (ms taken for s).
pub const RDNSS_LIFETIME: u32 = 1800;
/// The hop limit the guest should use, announced in the advertisement.
const RA_CUR_HOP_LIMIT: u8 = 64;
/// RFC 8106 Recursive DNS Server option type.
const NDISC_OPTION_RDNSS: u8 = 25;
/// Neighbour discovery messages must arrive with this hop limit (RFC 4861 section 6.1).
const NDISC_HOP_LIMIT: u8 = 255;

/// A TCP or UDP flow as the guest sees it: its own endpoint and the one it talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub guest: SocketAddr,
    pub remote: SocketAddr,
}

/// Addresses and ports in two writes for IPv4 (three for IPv6). Every guest segment is looked
/// up by its key, and SipHash costs by the write: the derived impl made ten, a twentieth of
/// the instructions tapir spends on a TCP round trip. (IPv6 flow labels and scopes are left
/// out: keys that are equal still hash alike.)
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        fn bits(ip: IpAddr) -> u128 {
            match ip {
                IpAddr::V4(ip) => u128::from(ip.to_bits()),
                IpAddr::V6(ip) => ip.to_bits(),
            }
        }
        match (self.guest, self.remote) {
            (SocketAddr::V4(g), SocketAddr::V4(r)) => {
                state.write_u64(u64::from(g.ip().to_bits()) << 32 | u64::from(r.ip().to_bits()))
            }
            (g, r) => {
                state.write_u128(bits(g.ip()));
                state.write_u128(bits(r.ip()));
            }
        }
        state.write_u32(u32::from(self.guest.port()) << 16 | u32::from(self.remote.port()));
    }
}

/// What a guest frame is, for the event loop.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestFrame<'a> {
    /// ARP the stack should see: a request for a virtual host, or a reply.
    ArpToStack,
    /// A TCP segment of flow `key`; `syn` is a connection request (SYN without ACK).
    Tcp {
        key: FlowKey,
        syn: bool,
    },
    Udp {
        key: FlowKey,
        payload: &'a [u8],
    },
    EchoRequest {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    /// A DHCP client message (the UDP payload), from `client_mac`, for `service::dhcp`.
    Dhcp {
        client_mac: EthernetAddress,
        payload: &'a [u8],
    },
    /// An ICMPv6 echo request, to one of tapir's addresses or beyond.
    EchoRequestV6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    /// A router solicitation: answer with [`router_advertisement`].
    RouterSolicitation,
    /// A neighbour solicitation from `src` for tapir's `target`: answer with
    /// [`neighbor_advertisement`].
    NeighborSolicitation {
        src: Ipv6Addr,
        target: Ipv6Addr,
    },
    Drop(DropReason),
}

/// Classifies an Ethernet frame from the guest, with IPv6 off. Also returns the frame's
/// source MAC, so the caller can address its replies, when the frame came from the guest's
/// address.
pub fn classify<'a>(
    frame: &'a [u8],
    plan: &AddressPlan,
) -> (Option<EthernetAddress>, GuestFrame<'a>) {
    classify_with_ipv6(frame, plan, None)
}

/// Classifies an Ethernet frame from the guest like [`classify`], and its IPv6 frames too when
/// `ipv6` is given (without it they are `Unsupported`).
pub fn classify_with_ipv6<'a>(
    frame: &'a [u8],
    plan: &AddressPlan,
    ipv6: Option<&Ipv6Plan>,
) -> (Option<EthernetAddress>, GuestFrame<'a>) {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return (None, GuestFrame::Drop(DropReason::Malformed));
    };
    let src_mac = eth.src_addr();
    let kind = match (eth.ethertype(), ipv6) {
        (EthernetProtocol::Arp, _) => return (None, classify_arp(&frame[14..], plan)),
        (EthernetProtocol::Ipv4, _) => classify_ipv4(&frame[14..], plan, src_mac),
        // Every IPv6 answer goes to the frame's source MAC.
        (EthernetProtocol::Ipv6, Some(_)) if !src_mac.is_unicast() => {
            GuestFrame::Drop(DropReason::Malformed)
        }
        (EthernetProtocol::Ipv6, Some(v6)) => classify_ipv6(&frame[14..], v6),
        _ => GuestFrame::Drop(DropReason::Unsupported),
    };
    let learned = match kind {
        GuestFrame::Drop(_) => None,
        _ if src_mac.is_unicast() => Some(src_mac),
        _ => None,
    };
    (learned, kind)
}

fn classify_arp<'a>(bytes: &[u8], plan: &AddressPlan) -> GuestFrame<'a> {
    let Ok(packet) = ArpPacket::new_checked(bytes) else {
        return GuestFrame::Drop(DropReason::Malformed);
    };
    let Ok(ArpRepr::EthernetIpv4 {
        operation,
        source_protocol_addr,
        target_protocol_addr,
        ..
    }) = ArpRepr::parse(&packet)
    else {
        return GuestFrame::Drop(DropReason::Malformed);
    };
    if source_protocol_addr != plan.guest {
        // Probes (0.0.0.0) and gratuitous ARP: smoltcp (any-IP) would answer them all.
        return GuestFrame::Drop(DropReason::ArpNotOurs);
    }
    match operation {
        ArpOperation::Request
            if target_protocol_addr == plan.gateway || target_protocol_addr == plan.dns =>
        {
            GuestFrame::ArpToStack
        }
        ArpOperation::Reply => GuestFrame::ArpToStack,
        _ => GuestFrame::Drop(DropReason::ArpNotOurs),
    }
}

fn classify_ipv4<'a>(
    bytes: &'a [u8],
    plan: &AddressPlan,
    src_mac: EthernetAddress,
) -> GuestFrame<'a> {
    let Ok(ip) = Ipv4Packet::new_checked(bytes) else {
        return GuestFrame::Drop(DropReason::Malformed);
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return GuestFrame::Drop(DropReason::Fragment);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let ihl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    // new_checked guarantees ihl <= total <= bytes.len().
    let l4 = &bytes[ihl..total];
    if ip.next_header() == IpProtocol::Udp
        && let Some(payload) = dhcp_request(src, dst, l4, plan)
        && src_mac.is_unicast()
    {
        return GuestFrame::Dhcp {
            client_mac: src_mac,
            payload,
        };
    }
    if src != plan.guest {
        return GuestFrame::Drop(DropReason::Spoofed);
    }
    match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(l4) else {
                return GuestFrame::Drop(DropReason::Malformed);
            };
            let key = FlowKey {
                guest: SocketAddr::V4(SocketAddrV4::new(src, tcp.src_port())),
                remote: SocketAddr::V4(SocketAddrV4::new(dst, tcp.dst_port())),
            };
            let syn = tcp.syn() && !tcp.ack() && !tcp.rst();
            GuestFrame::Tcp { key, syn }
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(l4) else {
                return GuestFrame::Drop(DropReason::Malformed);
            };
            if udp.src_port() == 0 || udp.dst_port() == 0 {
                return GuestFrame::Drop(DropReason::Malformed);
            }
            let key = FlowKey {
                guest: SocketAddr::V4(SocketAddrV4::new(src, udp.src_port())),
                remote: SocketAddr::V4(SocketAddrV4::new(dst, udp.dst_port())),
            };
            let len = usize::from(udp.len());
            GuestFrame::Udp {
                key,
                payload: &l4[8..len],
            }
        }
        IpProtocol::Icmp => {
            let Ok(icmp) = Icmpv4Packet::new_checked(l4) else {
                return GuestFrame::Drop(DropReason::Malformed);
            };
            if icmp.msg_type() != Icmpv4Message::EchoRequest || icmp.msg_code() != 0 {
                return GuestFrame::Drop(DropReason::Unsupported);
            }
            GuestFrame::EchoRequest {
                src,
                dst,
                ident: icmp.echo_ident(),
                seq_no: icmp.echo_seq_no(),
                data: icmp.data(),
            }
        }
        _ => GuestFrame::Drop(DropReason::Unsupported),
    }
}

/// The payload of a DHCP client message: UDP 68 → 67, to the limited broadcast or the
/// gateway, from 0.0.0.0 (no lease yet) or an address in the subnet (renewing a lease,
/// perhaps one other than the configured guest address).
fn dhcp_request<'a>(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    l4: &'a [u8],
    plan: &AddressPlan,
) -> Option<&'a [u8]> {
    let udp = UdpPacket::new_checked(l4).ok()?;
    if udp.src_port() != DHCP_CLIENT_PORT || udp.dst_port() != DHCP_SERVER_PORT {
        return None;
    }
    if dst != Ipv4Addr::BROADCAST && dst != plan.gateway {
        return None;
    }
    if !src.is_unspecified() && !plan.contains(src) {
        return None;
    }
    Some(&l4[8..usize::from(udp.len())])
}

fn classify_ipv6<'a>(bytes: &'a [u8], plan: &Ipv6Plan) -> GuestFrame<'a> {
    let Ok(ip) = Ipv6Packet::new_checked(bytes) else {
        return GuestFrame::Drop(DropReason::Malformed);
    };
    if ip.version() != 6 {
        return GuestFrame::Drop(DropReason::Malformed);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    // new_checked guarantees the header and payload_len bytes are there.
    let l4 = &bytes[ip.header_len()..ip.total_len()];
    match ip.next_header() {
        IpProtocol::Icmpv6 => return classify_icmpv6(src, dst, ip.hop_limit(), l4, plan),
        IpProtocol::Tcp | IpProtocol::Udp => {}
        IpProtocol::Ipv6Frag => return GuestFrame::Drop(DropReason::Fragment),
        _ => return GuestFrame::Drop(DropReason::Unsupported),
    }
    if !plan.is_guest_source(src) {
        return GuestFrame::Drop(DropReason::Spoofed);
    }
    if let Err(reason) = check_remote_v6(dst, plan) {
        return GuestFrame::Drop(reason);
    }
    if ip.next_header() == IpProtocol::Tcp {
        let Ok(tcp) = TcpPacket::new_checked(l4) else {
            return GuestFrame::Drop(DropReason::Malformed);
        };
        let key = FlowKey {
            guest: SocketAddr::V6(SocketAddrV6::new(src, tcp.src_port(), 0, 0)),
            remote: SocketAddr::V6(SocketAddrV6::new(dst, tcp.dst_port(), 0, 0)),
        };
        let syn = tcp.syn() && !tcp.ack() && !tcp.rst();
        return GuestFrame::Tcp { key, syn };
    }
    let Ok(udp) = UdpPacket::new_checked(l4) else {
        return GuestFrame::Drop(DropReason::Malformed);
    };
    if udp.src_port() == 0 || udp.dst_port() == 0 {
        return GuestFrame::Drop(DropReason::Malformed);
    }
    let key = FlowKey {
        guest: SocketAddr::V6(SocketAddrV6::new(src, udp.src_port(), 0, 0)),
        remote: SocketAddr::V6(SocketAddrV6::new(dst, udp.dst_port(), 0, 0)),
    };
    GuestFrame::Udp {
        key,
        payload: &l4[8..usize::from(udp.len())],
    }
}

/// Whether the guest may send a flow or a ping to `dst`: not to a multicast group (nobody
/// listens), and on the link or in the prefix only to tapir's own addresses.
fn check_remote_v6(dst: Ipv6Addr, plan: &Ipv6Plan) -> Result<(), DropReason> {
    if dst.is_multicast() || dst.is_unspecified() {
        return Err(DropReason::Unsupported);
    }
    let local = plan.contains(dst) || Ipv6Plan::is_link_local(dst);
    if local && !plan.is_virtual_host(dst) {
        return Err(DropReason::Refused);
    }
    Ok(())
}

fn classify_icmpv6<'a>(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    l4: &'a [u8],
    plan: &Ipv6Plan,
) -> GuestFrame<'a> {
    let Ok(icmp) = Icmpv6Packet::new_checked(l4) else {
        return GuestFrame::Drop(DropReason::Malformed);
    };
    match icmp.msg_type() {
        Icmpv6Message::EchoRequest => {
            if icmp.msg_code() != 0 {
                return GuestFrame::Drop(DropReason::Malformed);
            }
            if !plan.is_guest_source(src) {
                return GuestFrame::Drop(DropReason::Spoofed);
            }
            if let Err(reason) = check_remote_v6(dst, plan) {
                return GuestFrame::Drop(reason);
            }
            GuestFrame::EchoRequestV6 {
                src,
                dst,
                ident: icmp.echo_ident(),
                seq_no: icmp.echo_seq_no(),
                data: icmp.payload(),
            }
        }
        Icmpv6Message::RouterSolicit | Icmpv6Message::NeighborSolicit => {
            classify_ndisc(src, hop_limit, &icmp, plan)
        }
        // Replies to nothing tapir asked, the guest's own router or redirect messages, errors
        // about tapir's datagrams (which have no one to tell): nothing to do.
        _ => GuestFrame::Drop(DropReason::Unsupported),
    }
}

/// Router and neighbour solicitations, checked as RFC 4861 sections 6.1.1 and 7.1.1 ask
/// (hop limit 255 proves they were not forwarded, code 0, options of non-zero length).
fn classify_ndisc<'a>(
    src: Ipv6Addr,
    hop_limit: u8,
    icmp: &Icmpv6Packet<&'a [u8]>,
    plan: &Ipv6Plan,
) -> GuestFrame<'a> {
    if hop_limit != NDISC_HOP_LIMIT || icmp.msg_code() != 0 {
        return GuestFrame::Drop(DropReason::Malformed);
    }
    let Ok(ndisc) = NdiscRepr::parse(icmp) else {
        return GuestFrame::Drop(DropReason::Malformed);
    };
    match ndisc {
        // A host may solicit before it has any address (section 6.3.7).
        NdiscRepr::RouterSolicit { .. } if src.is_unspecified() || plan.is_guest_source(src) => {
            GuestFrame::RouterSolicitation
        }
        NdiscRepr::NeighborSolicit { target_addr, .. } => {
            if target_addr.is_multicast() {
                return GuestFrame::Drop(DropReason::Malformed);
            }
            // Duplicate address detection (from ::) is not answered, like ARP probes: tapir's
            // own addresses are never ones a guest autoconfigures.
            if src.is_unspecified() || !plan.is_virtual_host(target_addr) {
                return GuestFrame::Drop(DropReason::ArpNotOurs);
            }
            if !plan.is_guest_source(src) {
                return GuestFrame::Drop(DropReason::Spoofed);
            }
            GuestFrame::NeighborSolicitation {
                src,
                target: target_addr,
            }
        }
        _ => GuestFrame::Drop(DropReason::Spoofed),
    }
}

/// Addresses of a frame tapir sends to the guest.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub ours: EthernetAddress,
    pub guest: EthernetAddress,
}

fn emit_ipv4(
    out: &mut Vec<u8>,
    link: Link,
    ip: Ipv4Repr,
    emit_l4: impl FnOnce(&mut [u8], &ChecksumCapabilities),
) {
    let caps = ChecksumCapabilities::default();
    out.clear();
    out.resize(14 + 20 + ip.payload_len, 0);
    let mut eth = EthernetFrame::new_unchecked(&mut out[..]);
    EthernetRepr {
        src_addr: link.ours,
        dst_addr: link.guest,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(&mut out[14..]);
    ip.emit(&mut packet, &caps);
    emit_l4(&mut out[34..], &caps);
}

/// A UDP datagram `src` → `dst` with complete checksums.
pub fn udp_v4(out: &mut Vec<u8>, link: Link, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    emit_ipv4(out, link, ip, |l4, caps| {
        let mut packet = UdpPacket::new_unchecked(l4);
        udp.emit(
            &mut packet,
            &IpAddr::V4(*src.ip()).into(),
            &IpAddr::V4(*dst.ip()).into(),
            payload.len(),
            |p| p.copy_from_slice(payload),
            caps,
        );
    });
}

/// An ICMP echo reply from `src` to `dst`.
pub fn echo_reply_v4(
    out: &mut Vec<u8>,
    link: Link,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) {
    let icmp = Icmpv4Repr::EchoReply {
        ident,
        seq_no,
        data,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    emit_ipv4(out, link, ip, |l4, caps| {
        icmp.emit(&mut Icmpv4Packet::new_unchecked(l4), caps);
    });
}

/// An ICMP destination-unreachable from `from` about the guest's `original` IPv4 packet
/// (its header and first 8 payload bytes are quoted, RFC 792).
pub fn unreachable_v4(
    out: &mut Vec<u8>,
    link: Link,
    from: Ipv4Addr,
    reason: Icmpv4DstUnreachable,
    original: &[u8],
) -> bool {
    let Ok(orig) = Ipv4Packet::new_checked(original) else {
        return false;
    };
    let Ok(header) = Ipv4Repr::parse(&orig, &ChecksumCapabilities::ignored()) else {
        return false;
    };
    let ihl = usize::from(orig.header_len());
    let quoted_end = (ihl + 8).min(original.len());
    let icmp = Icmpv4Repr::DstUnreachable {
        reason,
        header,
        data: &original[ihl..quoted_end],
    };
    let ip = Ipv4Repr {
        src_addr: from,
        dst_addr: header.src_addr,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    emit_ipv4(out, link, ip, |l4, caps| {
        icmp.emit(&mut Icmpv4Packet::new_unchecked(l4), caps);
    });
    true
}

/// The sequence number and data of an ICMP echo reply as a ping socket returns it (the
/// socket owns the identifier, so the caller restores the guest's). `None` unless `icmp` is a
/// well-formed echo reply.
pub fn parse_echo_reply(icmp: &[u8]) -> Option<(u16, &[u8])> {
    let packet = Icmpv4Packet::new_checked(icmp).ok()?;
    if packet.msg_type() != Icmpv4Message::EchoReply {
        return None;
    }
    Some((packet.echo_seq_no(), &icmp[8..]))
}

fn emit_ipv6(out: &mut Vec<u8>, link: Link, ip: Ipv6Repr, emit_l4: impl FnOnce(&mut [u8])) {
    out.clear();
    out.resize(14 + 40 + ip.payload_len, 0);
    let mut eth = EthernetFrame::new_unchecked(&mut out[..]);
    EthernetRepr {
        src_addr: link.ours,
        dst_addr: link.guest,
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut eth);
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut out[14..]));
    emit_l4(&mut out[54..]);
}

/// An ICMPv6 message with a complete checksum, inside IPv6 and Ethernet headers.
fn emit_icmpv6(
    out: &mut Vec<u8>,
    link: Link,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    icmp: &Icmpv6Repr,
) {
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit,
    };
    emit_ipv6(out, link, ip, |l4| {
        icmp.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(l4),
            &ChecksumCapabilities::default(),
        );
    });
}

/// A router advertisement from the plan's link-local router address to all nodes (ff02::1),
/// announcing `plan.prefix`/64 as on-link and for autoconfiguration, tapir as the default
/// router, the link MTU and (RFC 8106 RDNSS) the DNS forwarder. `link.ours` is the router's
/// MAC (`plan.mac`) and goes into the source link-layer option too; `link.guest` may be the
/// guest's MAC or [`ALL_NODES_MAC`].
pub fn router_advertisement(out: &mut Vec<u8>, link: Link, plan: &Ipv6Plan, mtu: u32) {
    let ndisc = NdiscRepr::RouterAdvert {
        hop_limit: RA_CUR_HOP_LIMIT,
        // No DHCPv6: addresses by SLAAC, DNS by RDNSS.
        flags: NdiscRouterFlags::empty(),
        router_lifetime: ROUTER_LIFETIME,
        // Zero: unspecified, the guest keeps its defaults.
        reachable_time: Duration::ZERO,
        retrans_time: Duration::ZERO,
        lladdr: Some(link.ours.into()),
        mtu: Some(mtu),
        prefix_info: Some(NdiscPrefixInformation {
            prefix_len: IPV6_PREFIX_LEN,
            flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
            valid_lifetime: PREFIX_VALID_LIFETIME,
            preferred_lifetime: PREFIX_PREFERRED_LIFETIME,
            prefix: plan.prefix,
        }),
    };
    let icmp = Icmpv6Repr::Ndisc(ndisc);
    // smoltcp's RA has no RDNSS field: its option goes after the others as an "unknown" one,
    // and the checksum is computed again over the whole message.
    let mut rdnss_data = [0u8; 22];
    rdnss_data[2..6].copy_from_slice(&RDNSS_LIFETIME.to_be_bytes());
    rdnss_data[6..].copy_from_slice(&plan.dns.octets());
    let rdnss = NdiscOptionRepr::Unknown {
        type_: NDISC_OPTION_RDNSS,
        length: 3,
        data: &rdnss_data,
    };
    let ra_len = icmp.buffer_len();
    let (src, dst) = (plan.gateway_link_local, ALL_NODES);
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: ra_len + rdnss.buffer_len(),
        hop_limit: NDISC_HOP_LIMIT,
    };
    emit_ipv6(out, link, ip, |l4| {
        let caps = ChecksumCapabilities::default();
        icmp.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(&mut *l4),
            &caps,
        );
        rdnss.emit(&mut NdiscOption::new_unchecked(&mut l4[ra_len..]));
        Icmpv6Packet::new_unchecked(l4).fill_checksum(&src, &dst);
    });
}

/// A solicited neighbour advertisement from `target` to `to`: `target` is at `link.ours`
/// (`plan.mac` for tapir's addresses), and is a router if it is one of the gateway's
/// addresses. The override flag makes the guest replace whatever it had cached.
pub fn neighbor_advertisement(
    out: &mut Vec<u8>,
    link: Link,
    plan: &Ipv6Plan,
    target: Ipv6Addr,
    to: Ipv6Addr,
) {
    let mut flags = NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE;
    if plan.is_gateway(target) {
        flags |= NdiscNeighborFlags::ROUTER;
    }
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags,
        target_addr: target,
        lladdr: Some(link.ours.into()),
    });
    emit_icmpv6(out, link, target, to, NDISC_HOP_LIMIT, &icmp);
}

/// A UDP datagram `src` → `dst` over IPv6 with a complete checksum (mandatory in IPv6).
pub fn udp_v6(out: &mut Vec<u8>, link: Link, src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let ip = Ipv6Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    emit_ipv6(out, link, ip, |l4| {
        udp.emit(
            &mut UdpPacket::new_unchecked(l4),
            &IpAddr::V6(*src.ip()).into(),
            &IpAddr::V6(*dst.ip()).into(),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
    });
}

/// An ICMPv6 echo reply from `src` to `dst`.
pub fn echo_reply_v6(
    out: &mut Vec<u8>,
    link: Link,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) {
    let icmp = Icmpv6Repr::EchoReply {
        ident,
        seq_no,
        data,
    };
    emit_icmpv6(out, link, src, dst, 64, &icmp);
}

/// An ICMPv6 destination-unreachable from `from` about the guest's `original` IPv6 packet,
/// quoting as much of it as fits in the minimum MTU (RFC 4443 section 3.1). `false` if
/// `original` is not an IPv6 packet or came from an address no error may be sent to
/// (section 2.4 (e)).
pub fn unreachable_v6(
    out: &mut Vec<u8>,
    link: Link,
    from: Ipv6Addr,
    reason: Icmpv6DstUnreachable,
    original: &[u8],
) -> bool {
    let Ok(orig) = Ipv6Packet::new_checked(original) else {
        return false;
    };
    let Ok(header) = Ipv6Repr::parse(&orig) else {
        return false;
    };
    if header.src_addr.is_unspecified() || header.src_addr.is_multicast() {
        return false;
    }
    let icmp = Icmpv6Repr::DstUnreachable {
        reason,
        header,
        data: &original[orig.header_len()..orig.total_len()],
    };
    emit_icmpv6(out, link, from, header.src_addr, 64, &icmp);
    true
}

/// The sequence number and data of an ICMPv6 echo reply as an IPv6 ping socket returns it
/// (see [`parse_echo_reply`]).
pub fn parse_echo_reply_v6(icmp: &[u8]) -> Option<(u16, &[u8])> {
    let packet = Icmpv6Packet::new_checked(icmp).ok()?;
    if packet.msg_type() != Icmpv6Message::EchoReply {
        return None;
    }
    Some((packet.echo_seq_no(), &icmp[8..]))
}

#[cfg(test)]
mod test {
    use super::*;

    const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];

    fn plan() -> AddressPlan {
        AddressPlan::default()
    }

    /// Ethernet + IPv4 header from the guest around an L4 payload.
    fn ipv4_frame(proto: u8, dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x52, 0x55, 10, 0, 2, 2];
        f.extend(GUEST_MAC);
        f.extend([0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        f.extend([0x45, 0]);
        f.extend(total.to_be_bytes());
        f.extend([0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 2, 100]);
        f.extend(dst);
        f.extend(l4);
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        f
    }

    #[test]
    fn tcp_syn_to_any_address_is_a_connection_request() {
        let syn = [
            0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ];
        let f = ipv4_frame(6, [198, 51, 100, 10], &syn);
        let (mac, kind) = classify(&f, &plan());
        assert_eq!(mac, Some(EthernetAddress(GUEST_MAC)));
        let GuestFrame::Tcp { key, syn } = kind else {
            panic!("{kind:?}")
        };
        assert!(syn);
        assert_eq!(key.guest, "10.0.2.100:40000".parse().unwrap());
        assert_eq!(key.remote, "198.51.100.10:443".parse().unwrap());
    }

    #[test]
    fn udp_payload_is_bounded_by_the_udp_length() {
        // UDP length 10 (2 payload bytes) inside a longer IP packet: the tail is ignored.
        let udp = [0x30, 0x39, 0, 53, 0, 10, 0, 0, b'h', b'i', 0xee, 0xee];
        let f = ipv4_frame(17, [10, 0, 2, 3], &udp);
        let (_, kind) = classify(&f, &plan());
        assert_eq!(
            kind,
            GuestFrame::Udp {
                key: FlowKey {
                    guest: "10.0.2.100:12345".parse().unwrap(),
                    remote: "10.0.2.3:53".parse().unwrap(),
                },
                payload: b"hi",
            }
        );
    }

    #[test]
    fn hostile_frames_are_named_not_panicked_on() {
        let p = plan();
        assert_eq!(classify(&[], &p).1, GuestFrame::Drop(DropReason::Malformed));
        // IPv4 claiming a 60-byte header in a 20-byte packet.
        let mut f = ipv4_frame(17, [10, 0, 2, 3], &[]);
        f[14] = 0x4f;
        assert_eq!(classify(&f, &p).1, GuestFrame::Drop(DropReason::Malformed));
        // UDP length larger than the packet.
        let f = ipv4_frame(17, [10, 0, 2, 3], &[0, 1, 0, 2, 0, 200, 0, 0]);
        assert_eq!(classify(&f, &p).1, GuestFrame::Drop(DropReason::Malformed));
        // A fragment.
        let mut f = ipv4_frame(17, [10, 0, 2, 3], &[0, 1, 0, 2, 0, 8, 0, 0]);
        f[20] = 0x20;
        assert_eq!(classify(&f, &p).1, GuestFrame::Drop(DropReason::Fragment));
        // Someone else's source address.
        let mut f = ipv4_frame(17, [10, 0, 2, 3], &[0, 1, 0, 2, 0, 8, 0, 0]);
        f[29] = 99;
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        assert_eq!(classify(&f, &p).1, GuestFrame::Drop(DropReason::Spoofed));
        // Every truncation of a valid frame.
        let syn = [
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ];
        let f = ipv4_frame(6, [10, 0, 2, 2], &syn);
        for n in 0..f.len() {
            let _ = classify(&f[..n], &p);
        }
    }

    #[test]
    fn arp_only_for_virtual_hosts() {
        let arp = |target: [u8; 4], sender: [u8; 4]| {
            let mut f = vec![0xff; 6];
            f.extend(GUEST_MAC);
            f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
            f.extend(GUEST_MAC);
            f.extend(sender);
            f.extend([0; 6]);
            f.extend(target);
            f
        };
        let p = plan();
        assert_eq!(
            classify(&arp([10, 0, 2, 2], [10, 0, 2, 100]), &p).1,
            GuestFrame::ArpToStack
        );
        assert_eq!(
            classify(&arp([10, 0, 2, 3], [10, 0, 2, 100]), &p).1,
            GuestFrame::ArpToStack
        );
        assert_eq!(
            classify(&arp([10, 0, 2, 50], [10, 0, 2, 100]), &p).1,
            GuestFrame::Drop(DropReason::ArpNotOurs)
        );
        // Gratuitous ARP and DAD probes are not answered.
        assert_eq!(
            classify(&arp([10, 0, 2, 100], [10, 0, 2, 100]), &p).1,
            GuestFrame::Drop(DropReason::ArpNotOurs)
        );
        assert_eq!(
            classify(&arp([10, 0, 2, 2], [0, 0, 0, 0]), &p).1,
            GuestFrame::Drop(DropReason::ArpNotOurs)
        );
    }

    #[test]
    fn echo_request_and_reply() {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7, b'p', b'i', b'n', b'g'];
        Icmpv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
        let f = ipv4_frame(1, [10, 0, 2, 2], &icmp);
        let (_, kind) = classify(&f, &plan());
        let GuestFrame::EchoRequest {
            src,
            dst,
            ident,
            seq_no,
            data,
        } = kind
        else {
            panic!("{kind:?}")
        };
        assert_eq!((ident, seq_no, data), (0x1234, 7, &b"ping"[..]));
        let link = Link {
            ours: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
            guest: EthernetAddress(GUEST_MAC),
        };
        let mut out = Vec::new();
        echo_reply_v4(&mut out, link, dst, src, ident, seq_no, data);
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 0, 2, 100));
        let reply = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(reply.verify_checksum());
        assert_eq!(reply.msg_type(), Icmpv4Message::EchoReply);
        assert_eq!(reply.data(), b"ping");
    }

    #[test]
    fn built_udp_has_valid_checksums() {
        let link = Link {
            ours: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
            guest: EthernetAddress(GUEST_MAC),
        };
        let mut out = Vec::new();
        let src: SocketAddrV4 = "10.0.2.3:53".parse().unwrap();
        let dst: SocketAddrV4 = "10.0.2.100:5000".parse().unwrap();
        udp_v4(&mut out, link, src, dst, b"answer");
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&(*src.ip()).into(), &(*dst.ip()).into()));
        assert_eq!(udp.payload(), b"answer");
        assert_eq!((udp.src_port(), udp.dst_port()), (53, 5000));
    }

    #[test]
    fn unreachable_quotes_the_original() {
        let link = Link {
            ours: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
            guest: EthernetAddress(GUEST_MAC),
        };
        let f = ipv4_frame(17, [10, 0, 2, 2], &[0x30, 0x39, 0, 9, 0, 10, 0, 0, 1, 2]);
        let mut out = Vec::new();
        assert!(unreachable_v4(
            &mut out,
            link,
            Ipv4Addr::new(10, 0, 2, 2),
            Icmpv4DstUnreachable::PortUnreachable,
            &f[14..]
        ));
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
        assert_eq!(icmp.msg_code(), 3);
        // Quoted: the original 20-byte header and 8 bytes of UDP header.
        assert_eq!(&icmp.data()[20..28], &[0x30, 0x39, 0, 9, 0, 10, 0, 0]);
    }

    #[test]
    fn dhcp_is_recognised_before_the_source_check() {
        let p = plan();
        let mut udp = vec![0, 68, 0, 67, 0, 12, 0, 0, 1, 1, 6, 0];
        udp[4..6].copy_from_slice(&12u16.to_be_bytes());
        let from = |src: [u8; 4], dst: [u8; 4], l4: &[u8]| {
            let mut f = ipv4_frame(17, dst, l4);
            f[26..30].copy_from_slice(&src);
            Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
            f
        };
        let dhcp = || GuestFrame::Dhcp {
            client_mac: EthernetAddress(GUEST_MAC),
            payload: &[1, 1, 6, 0],
        };
        // DISCOVER from a client without an address, and a renewal to the server.
        let discover = from([0; 4], [255; 4], &udp);
        let (mac, kind) = classify(&discover, &p);
        assert_eq!((mac, kind), (Some(EthernetAddress(GUEST_MAC)), dhcp()));
        let renew = from([10, 0, 2, 100], [10, 0, 2, 2], &udp);
        assert_eq!(classify(&renew, &p).1, dhcp());
        // A lease other than the configured address renews too.
        let renew = from([10, 0, 2, 15], [255; 4], &udp);
        assert_eq!(classify(&renew, &p).1, dhcp());
        // Not DHCP: another subnet, another port, another destination.
        assert_eq!(
            classify(&from([10, 0, 3, 15], [255; 4], &udp), &p).1,
            GuestFrame::Drop(DropReason::Spoofed)
        );
        let mut dns = udp.clone();
        dns[3] = 53;
        assert_eq!(
            classify(&from([0; 4], [255; 4], &dns), &p).1,
            GuestFrame::Drop(DropReason::Spoofed)
        );
        assert_eq!(
            classify(&from([0; 4], [10, 0, 2, 3], &udp), &p).1,
            GuestFrame::Drop(DropReason::Spoofed)
        );
    }

    const GUEST_MAC_V6: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A Linux guest's router solicitation: fe80::5054:ff:fe12:3456 → ff02::2, hop limit 255,
    /// with its source link-layer address.
    const ROUTER_SOLICITATION: [u8; 70] = [
        0x33, 0x33, 0x00, 0x00, 0x00, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x10, 0x3a, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x85, 0x00, 0x71, 0xb5, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
    ];

    /// Its neighbour solicitation for the router: → ff02::1:ff00:2, target fe80::2.
    const NEIGHBOR_SOLICITATION: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x02, 0x87, 0x00, 0x72, 0x20, 0x00, 0x00,
        0x00, 0x00, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0x01, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
    ];

    /// `ping -c1 -p 70696e67 fd00::2` from the guest's SLAAC address, data "ping".
    const ECHO_REQUEST_V6: [u8; 66] = [
        0x52, 0x56, 0x00, 0x00, 0x00, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x0c, 0x3a, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x80, 0x00, 0x10, 0xf3, 0x12, 0x34,
        0x00, 0x01, 0x70, 0x69, 0x6e, 0x67,
    ];

    const GUEST_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
    const GUEST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);

    fn v6plan() -> Ipv6Plan {
        Ipv6Plan::default()
    }

    fn classify6(frame: &[u8]) -> (Option<EthernetAddress>, GuestFrame<'_>) {
        classify_with_ipv6(frame, &plan(), Some(&Ipv6Plan::default()))
    }

    /// Why `frame` is dropped, if it is.
    fn drop_reason(frame: &[u8]) -> Option<DropReason> {
        match classify6(frame).1 {
            GuestFrame::Drop(reason) => Some(reason),
            _ => None,
        }
    }

    fn link6() -> Link {
        Link {
            ours: EthernetAddress(v6plan().mac),
            guest: EthernetAddress(GUEST_MAC_V6),
        }
    }

    /// Ethernet + IPv6 header from the guest around `payload` (after `next_header`).
    fn ipv6_frame(
        next_header: u8,
        hop_limit: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0x52, 0x56, 0, 0, 0, 2];
        f.extend(GUEST_MAC_V6);
        f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend((payload.len() as u16).to_be_bytes());
        f.extend([next_header, hop_limit]);
        f.extend(src.octets());
        f.extend(dst.octets());
        f.extend(payload);
        f
    }

    /// Parses the IPv6 packet in a frame tapir built and checks its ICMPv6 checksum.
    fn parse_icmpv6(out: &[u8]) -> (Ipv6Repr, Icmpv6Repr<'_>) {
        let ip = Ipv6Packet::new_checked(&out[14..]).unwrap();
        let repr = Ipv6Repr::parse(&ip).unwrap();
        assert_eq!(repr.next_header, IpProtocol::Icmpv6);
        assert_eq!(out.len(), 14 + 40 + repr.payload_len);
        let icmp = Icmpv6Packet::new_checked(&out[54..]).unwrap();
        assert!(icmp.verify_checksum(&repr.src_addr, &repr.dst_addr));
        let parsed = Icmpv6Repr::parse(
            &repr.src_addr,
            &repr.dst_addr,
            &icmp,
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        (repr, parsed)
    }

    #[test]
    fn the_literal_frames_are_valid() {
        for f in [
            &ROUTER_SOLICITATION[..],
            &NEIGHBOR_SOLICITATION,
            &ECHO_REQUEST_V6,
        ] {
            let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
            let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
        }
    }

    #[test]
    fn router_solicitation_is_answered_with_the_prefix() {
        let (mac, kind) = classify6(&ROUTER_SOLICITATION);
        assert_eq!(mac, Some(EthernetAddress(GUEST_MAC_V6)));
        assert_eq!(kind, GuestFrame::RouterSolicitation);
        // Without the IPv6 plan, IPv6 stays unsupported.
        assert_eq!(
            classify(&ROUTER_SOLICITATION, &plan()),
            (None, GuestFrame::Drop(DropReason::Unsupported))
        );

        let p = v6plan();
        let mut out = Vec::new();
        router_advertisement(&mut out, link6(), &p, 1500);
        assert_eq!(
            &out[..12],
            &[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x56, 0, 0, 0, 2]
        );
        let (ip, icmp) = parse_icmpv6(&out);
        assert_eq!(ip.src_addr, p.gateway_link_local);
        assert_eq!(ip.dst_addr, ALL_NODES);
        assert_eq!(ip.hop_limit, 255);
        let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            hop_limit,
            flags,
            router_lifetime,
            lladdr,
            mtu,
            prefix_info: Some(prefix),
            ..
        }) = icmp
        else {
            panic!("{icmp:?}")
        };
        assert_eq!(hop_limit, 64);
        assert_eq!(flags, NdiscRouterFlags::empty());
        assert_eq!(router_lifetime, Duration::from_secs(1800));
        assert_eq!(lladdr, Some(EthernetAddress(p.mac).into()));
        assert_eq!(mtu, Some(1500));
        assert_eq!(prefix.prefix, "fd00::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(prefix.prefix_len, 64);
        assert!(prefix.is_valid_prefix_info());
        assert!(prefix.flags.contains(NdiscPrefixInfoFlags::ON_LINK));
        assert_eq!(prefix.valid_lifetime, Duration::from_secs(86400));
        assert_eq!(prefix.preferred_lifetime, Duration::from_secs(14400));
        // The RDNSS option (RFC 8106) is last: type 25, 3 units, lifetime, fd00::3.
        let rdnss = &out[out.len() - 24..];
        assert_eq!(&rdnss[..8], &[25, 3, 0, 0, 0, 0, 0x07, 0x08]);
        assert_eq!(&rdnss[8..], &p.dns.octets());
    }

    #[test]
    fn unsolicited_router_advertisement_goes_to_all_nodes() {
        // Before tapir knows the guest's MAC: to 33:33:00:00:00:01, any link MTU.
        let mut out = Vec::new();
        let link = Link {
            ours: EthernetAddress(v6plan().mac),
            guest: ALL_NODES_MAC,
        };
        router_advertisement(&mut out, link, &v6plan(), 65520);
        assert_eq!(&out[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        let (_, icmp) = parse_icmpv6(&out);
        assert!(matches!(
            icmp,
            Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
                mtu: Some(65520),
                ..
            })
        ));
    }

    #[test]
    fn neighbor_solicitation_for_tapir_is_answered() {
        let (mac, kind) = classify6(&NEIGHBOR_SOLICITATION);
        assert_eq!(mac, Some(EthernetAddress(GUEST_MAC_V6)));
        let GuestFrame::NeighborSolicitation { src, target } = kind else {
            panic!("{kind:?}")
        };
        assert_eq!((src, target), (GUEST_LL, v6plan().gateway_link_local));

        let mut out = Vec::new();
        neighbor_advertisement(&mut out, link6(), &v6plan(), target, src);
        let (ip, icmp) = parse_icmpv6(&out);
        assert_eq!((ip.src_addr, ip.dst_addr, ip.hop_limit), (target, src, 255));
        assert_eq!(
            icmp,
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::ROUTER
                    | NdiscNeighborFlags::SOLICITED
                    | NdiscNeighborFlags::OVERRIDE,
                target_addr: target,
                lladdr: Some(EthernetAddress([0x52, 0x56, 0, 0, 0, 2]).into()),
            })
        );

        // The DNS forwarder is a neighbour but not a router.
        let dns = v6plan().dns;
        neighbor_advertisement(&mut out, link6(), &v6plan(), dns, GUEST_V6);
        let (_, icmp) = parse_icmpv6(&out);
        let Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { flags, .. }) = icmp else {
            panic!("{icmp:?}")
        };
        assert!(!flags.contains(NdiscNeighborFlags::ROUTER));
    }

    #[test]
    fn neighbor_discovery_for_others_is_not_answered() {
        let ns = |src: Ipv6Addr, target: Ipv6Addr, hop_limit: u8| {
            let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend(target.octets());
            let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
            Icmpv6Packet::new_unchecked(&mut icmp[..]).fill_checksum(&src, &dst);
            ipv6_frame(58, hop_limit, src, dst, &icmp)
        };
        let p = v6plan();
        let others: Ipv6Addr = "fd00::99".parse().unwrap();
        let reason = |src, target, hop_limit| drop_reason(&ns(src, target, hop_limit));
        assert_eq!(reason(GUEST_V6, others, 255), Some(DropReason::ArpNotOurs));
        // Duplicate address detection of the guest's own address.
        assert_eq!(
            reason(Ipv6Addr::UNSPECIFIED, GUEST_V6, 255),
            Some(DropReason::ArpNotOurs)
        );
        // Forwarded (hop limit below 255) or for a multicast target: not valid NDP.
        assert_eq!(reason(GUEST_V6, p.gateway, 64), Some(DropReason::Malformed));
        assert_eq!(
            reason(GUEST_V6, ALL_NODES, 255),
            Some(DropReason::Malformed)
        );
        // From someone else's address.
        let other = "2001:db8::1".parse().unwrap();
        assert_eq!(reason(other, p.gateway, 255), Some(DropReason::Spoofed));
        // The DNS forwarder and the router's global address are answered.
        for target in [p.dns, p.gateway] {
            let f = ns(GUEST_V6, target, 255);
            let kind = classify6(&f).1;
            let expected = GuestFrame::NeighborSolicitation {
                src: GUEST_V6,
                target,
            };
            assert_eq!(kind, expected);
        }
    }

    #[test]
    fn echo_request_v6_and_reply() {
        let (_, kind) = classify6(&ECHO_REQUEST_V6);
        let GuestFrame::EchoRequestV6 {
            src,
            dst,
            ident,
            seq_no,
            data,
        } = kind
        else {
            panic!("{kind:?}")
        };
        assert_eq!((src, dst), (GUEST_V6, v6plan().gateway));
        assert_eq!((ident, seq_no, data), (0x1234, 1, &b"ping"[..]));
        let mut out = Vec::new();
        echo_reply_v6(&mut out, link6(), dst, src, ident, seq_no, data);
        let (ip, icmp) = parse_icmpv6(&out);
        assert_eq!((ip.src_addr, ip.dst_addr), (dst, src));
        assert_eq!(
            icmp,
            Icmpv6Repr::EchoReply {
                ident: 0x1234,
                seq_no: 1,
                data: b"ping"
            }
        );
        assert_eq!(parse_echo_reply_v6(&out[54..]), Some((1, &b"ping"[..])));
        assert_eq!(parse_echo_reply_v6(&ECHO_REQUEST_V6[54..]), None);
    }

    #[test]
    fn tcp_and_udp_over_ipv6_carry_v6_flow_keys() {
        let syn = [
            0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ];
        let remote: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let f = ipv6_frame(6, 64, GUEST_V6, remote, &syn);
        let (mac, kind) = classify6(&f);
        assert_eq!(mac, Some(EthernetAddress(GUEST_MAC_V6)));
        let GuestFrame::Tcp { key, syn } = kind else {
            panic!("{kind:?}")
        };
        assert!(syn);
        assert_eq!(
            key.guest,
            "[fd00::5054:ff:fe12:3456]:40000".parse().unwrap()
        );
        assert_eq!(key.remote, "[2001:db8::1]:443".parse().unwrap());

        // UDP length 10 (2 payload bytes) inside a longer packet: the tail is ignored.
        let udp = [0x30, 0x39, 0, 53, 0, 10, 0, 0, b'h', b'i', 0xee];
        let dns = v6plan().dns;
        let f = ipv6_frame(17, 64, GUEST_LL, dns, &udp);
        assert_eq!(
            classify6(&f).1,
            GuestFrame::Udp {
                key: FlowKey {
                    guest: "[fe80::5054:ff:fe12:3456]:12345".parse().unwrap(),
                    remote: "[fd00::3]:53".parse().unwrap(),
                },
                payload: b"hi",
            }
        );
    }

    #[test]
    fn ipv6_frames_tapir_does_not_carry() {
        let udp = [0x30, 0x39, 0, 53, 0, 8, 0, 0];
        let dns = v6plan().dns;
        let kind = |f: Vec<u8>| drop_reason(&f);
        let drop = Some;
        // Someone else's source, or tapir's own.
        let other: Ipv6Addr = "2001:db8::5".parse().unwrap();
        assert_eq!(
            kind(ipv6_frame(17, 64, other, dns, &udp)),
            drop(DropReason::Spoofed)
        );
        assert_eq!(
            kind(ipv6_frame(17, 64, v6plan().gateway, dns, &udp)),
            drop(DropReason::Spoofed)
        );
        assert_eq!(
            kind(ipv6_frame(17, 64, Ipv6Addr::UNSPECIFIED, dns, &udp)),
            drop(DropReason::Spoofed)
        );
        // Nobody there: others in the prefix or on the link; multicast (mDNS).
        for dst in ["fd00::99", "fe80::7"] {
            assert_eq!(
                kind(ipv6_frame(17, 64, GUEST_V6, dst.parse().unwrap(), &udp)),
                drop(DropReason::Refused)
            );
        }
        let mdns: Ipv6Addr = "ff02::fb".parse().unwrap();
        assert_eq!(
            kind(ipv6_frame(17, 255, GUEST_LL, mdns, &udp)),
            drop(DropReason::Unsupported)
        );
        // An MLDv2 report behind its hop-by-hop header (router alert).
        let mut mld = vec![58, 0, 5, 2, 0, 0, 1, 0];
        mld.extend([143, 0, 0, 0, 0, 0, 0, 0]);
        let mld_routers: Ipv6Addr = "ff02::16".parse().unwrap();
        assert_eq!(
            kind(ipv6_frame(0, 1, GUEST_LL, mld_routers, &mld)),
            drop(DropReason::Unsupported)
        );
        // A fragment header.
        let frag = [17, 0, 0, 1, 0, 0, 0, 7];
        assert_eq!(
            kind(ipv6_frame(44, 64, GUEST_V6, dns, &frag)),
            drop(DropReason::Fragment)
        );
        // Router advertisements and neighbour advertisements from the guest.
        for msg_type in [134, 136] {
            let mut f = NEIGHBOR_SOLICITATION.to_vec();
            f[54] = msg_type;
            assert_eq!(kind(f), drop(DropReason::Unsupported));
        }
        // Version 4 in an IPv6 EtherType; a multicast source MAC.
        let mut f = ECHO_REQUEST_V6.to_vec();
        f[14] = 0x40;
        assert_eq!(kind(f), drop(DropReason::Malformed));
        let mut f = ECHO_REQUEST_V6.to_vec();
        f[6] = 0x33;
        assert_eq!(kind(f), drop(DropReason::Malformed));
    }

    #[test]
    fn hostile_ipv6_frames_are_named_not_panicked_on() {
        // Payload length beyond the frame.
        let mut f = ECHO_REQUEST_V6.to_vec();
        f[19] = 0x40;
        assert_eq!(classify6(&f).1, GuestFrame::Drop(DropReason::Malformed));
        // A zero-length NDP option (RFC 4861 section 6.1.1).
        let mut f = ROUTER_SOLICITATION.to_vec();
        f[63] = 0;
        assert_eq!(classify6(&f).1, GuestFrame::Drop(DropReason::Malformed));
        // UDP length larger than the packet.
        let f = ipv6_frame(17, 64, GUEST_V6, v6plan().dns, &[0, 1, 0, 2, 0, 200, 0, 0]);
        assert_eq!(classify6(&f).1, GuestFrame::Drop(DropReason::Malformed));
        // Every truncation of every valid frame.
        let syn = [
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ];
        let tcp = ipv6_frame(6, 64, GUEST_V6, v6plan().gateway, &syn);
        for f in [
            &ROUTER_SOLICITATION[..],
            &NEIGHBOR_SOLICITATION,
            &ECHO_REQUEST_V6,
            &tcp,
        ] {
            for n in 0..f.len() {
                let _ = classify6(&f[..n]);
            }
        }
    }

    #[test]
    fn built_udp_v6_has_a_valid_checksum() {
        let mut out = Vec::new();
        let src: SocketAddrV6 = "[fd00::3]:53".parse().unwrap();
        let dst: SocketAddrV6 = "[fd00::5054:ff:fe12:3456]:5000".parse().unwrap();
        udp_v6(&mut out, link6(), src, dst, b"answer");
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        let ip = Ipv6Packet::new_checked(&out[14..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (*src.ip(), *dst.ip()));
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&(*src.ip()).into(), &(*dst.ip()).into()));
        assert_eq!(udp.payload(), b"answer");
        assert_eq!((udp.src_port(), udp.dst_port()), (53, 5000));
    }

    #[test]
    fn unreachable_v6_quotes_the_original() {
        let remote: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let f = ipv6_frame(
            17,
            64,
            GUEST_V6,
            remote,
            &[0x30, 0x39, 0, 9, 0, 10, 0, 0, 1, 2],
        );
        let mut out = Vec::new();
        let gw = v6plan().gateway;
        let reason = UnreachableV6::AdminProhibit;
        assert!(unreachable_v6(&mut out, link6(), gw, reason, &f[14..]));
        let (ip, icmp) = parse_icmpv6(&out);
        assert_eq!((ip.src_addr, ip.dst_addr), (gw, GUEST_V6));
        let Icmpv6Repr::DstUnreachable {
            reason,
            header,
            data,
        } = icmp
        else {
            panic!("{icmp:?}")
        };
        assert_eq!(reason, UnreachableV6::AdminProhibit);
        assert_eq!((header.src_addr, header.dst_addr), (GUEST_V6, remote));
        assert_eq!(data, &[0x30, 0x39, 0, 9, 0, 10, 0, 0, 1, 2]);

        // A big datagram is quoted only up to the minimum MTU.
        let mut big = vec![0x30, 0x39, 0, 9, 0x07, 0xd0, 0, 0];
        big.resize(2000, 0xab);
        let f = ipv6_frame(17, 64, GUEST_V6, remote, &big);
        assert!(unreachable_v6(&mut out, link6(), gw, reason, &f[14..]));
        assert_eq!(out.len(), 14 + 1280);
        parse_icmpv6(&out);

        // Never about a packet from the unspecified or a multicast address; never on junk.
        let f = ipv6_frame(17, 64, Ipv6Addr::UNSPECIFIED, remote, &big[..8]);
        assert!(!unreachable_v6(&mut out, link6(), gw, reason, &f[14..]));
        assert!(!unreachable_v6(&mut out, link6(), gw, reason, &f[14..50]));
    }

    fn hash_of(key: &FlowKey) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        h.finish()
    }

    #[test]
    fn flow_keys_hash_alike_when_equal_and_apart_in_every_field() {
        let key = |g: &str, r: &str| FlowKey {
            guest: g.parse().unwrap(),
            remote: r.parse().unwrap(),
        };
        let base = key("10.0.2.100:40000", "10.0.2.2:80");
        assert_eq!(
            hash_of(&base),
            hash_of(&key("10.0.2.100:40000", "10.0.2.2:80"))
        );
        let others = [
            key("10.0.2.101:40000", "10.0.2.2:80"),
            key("10.0.2.100:40001", "10.0.2.2:80"),
            key("10.0.2.100:40000", "10.0.2.3:80"),
            key("10.0.2.100:40000", "10.0.2.2:81"),
            key("10.0.2.2:80", "10.0.2.100:40000"),
            key("[fd00::100]:40000", "[fd00::2]:80"),
        ];
        for other in others {
            assert_ne!(hash_of(&base), hash_of(&other), "{other:?}");
        }
        let v6 = key("[fd00::100]:40000", "[fd00::2]:80");
        assert_eq!(
            hash_of(&v6),
            hash_of(&key("[fd00::100]:40000", "[fd00::2]:80"))
        );
        assert_ne!(
            hash_of(&v6),
            hash_of(&key("[fd00::101]:40000", "[fd00::2]:80"))
        );
    }
}
