//! Reading the guest's frames and writing the ones tapir builds itself.
//!
//! Only TCP goes through smoltcp's state machines. Everything else the guest sends is small
//! and stateless enough to answer directly: ARP for the virtual hosts is handed to smoltcp
//! (which learns the guest's MAC from it), UDP datagrams and ICMP echo requests are taken
//! apart here and re-built on the way back. [`classify`] never panics on any input; what it
//! cannot use it names as a [`DropReason`].
//!
//! IPv4 only for now: IPv6 frames are counted as unsupported.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};
pub use smoltcp::wire::{EthernetAddress, Icmpv4DstUnreachable as Unreachable};

use crate::config::AddressPlan;
use crate::stats::DropReason;

/// A TCP or UDP flow as the guest sees it: its own endpoint and the one it talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: SocketAddr,
    pub remote: SocketAddr,
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
    Drop(DropReason),
}

/// Classifies an Ethernet frame from the guest. Also returns the frame's source MAC, so the
/// caller can address its replies, when the frame came from the guest's address.
pub fn classify<'a>(
    frame: &'a [u8],
    plan: &AddressPlan,
) -> (Option<EthernetAddress>, GuestFrame<'a>) {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return (None, GuestFrame::Drop(DropReason::Malformed));
    };
    let src_mac = eth.src_addr();
    match eth.ethertype() {
        EthernetProtocol::Arp => (None, classify_arp(&frame[14..], plan)),
        EthernetProtocol::Ipv4 => {
            let kind = classify_ipv4(&frame[14..], plan);
            let learned = match kind {
                GuestFrame::Drop(_) => None,
                _ if src_mac.is_unicast() => Some(src_mac),
                _ => None,
            };
            (learned, kind)
        }
        _ => (None, GuestFrame::Drop(DropReason::Unsupported)),
    }
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

fn classify_ipv4<'a>(bytes: &'a [u8], plan: &AddressPlan) -> GuestFrame<'a> {
    let Ok(ip) = Ipv4Packet::new_checked(bytes) else {
        return GuestFrame::Drop(DropReason::Malformed);
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return GuestFrame::Drop(DropReason::Fragment);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if src != plan.guest {
        return GuestFrame::Drop(DropReason::Spoofed);
    }
    let ihl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    // new_checked guarantees ihl <= total <= bytes.len().
    let l4 = &bytes[ihl..total];
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
}
