//! The smoltcp `phy::Device` over in-memory frame queues, and the TAP's virtio-net header.
//!
//! smoltcp never sees the TAP fd. The event loop reads a frame, hands exactly that frame to the
//! stack through a short-lived [`Device`] (one receive token), and the stack's output lands in a
//! bounded [`TxQueue`] that the loop later writes to the TAP. Tests and fuzzers drive the same
//! path without any fd.
//!
//! With `IFF_VNET_HDR` every frame on the TAP is preceded by a 10-byte `virtio_net_hdr`. On the
//! way in it may announce a TSO super-frame (up to 64 KiB of TCP payload whatever the MTU) and a
//! partial checksum: smoltcp is told not to verify TCP/UDP checksums, since the guest kernel
//! left them for "hardware" to fill. On the way out, TCP segments leave with `NEEDS_CSUM` and
//! only the pseudo-header sum in the checksum field (the guest kernel completes it), and
//! segments larger than the MSS carry `gso_type`/`gso_size` so the guest accepts them as GSO.
//! Frames tapir builds itself (UDP, ICMP, ARP) carry complete checksums and a zero header.
//! Without a vnet header the queue computes full TCP checksums in software.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
};

/// Size of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
/// Largest frame tapir reads or writes: a 64 KiB IP packet, its Ethernet header and the vnet
/// header, with some slack.
pub const MAX_FRAME: usize = 65535 + 14 + VNET_HDR_LEN + 64;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// `struct virtio_net_hdr` (little-endian on the wire, as the TAP uses by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(bytes: &[u8]) -> Option<VnetHdr> {
        let b = bytes.get(..VNET_HDR_LEN)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    pub fn emit(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// What the stack may assume of the device: Ethernet at `mtu`, no TCP/UDP checksum work (see
/// the module comment), and with a vnet header, TCPv4 segmentation offload up to a full 64 KiB
/// IP packet. (IPv6 TSO stays off: smoltcp 0.14 drops IPv6 super-frames in `dispatch_ip`.)
pub fn capabilities(mtu: usize, vnet_hdr: bool) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = mtu + 14;
    let mut checksum = ChecksumCapabilities::ignored();
    checksum.ipv4 = Checksum::Both;
    checksum.icmpv4 = Checksum::Tx;
    checksum.icmpv6 = Checksum::Tx;
    caps.checksum = checksum;
    if vnet_hdr {
        caps.segmentation.tcpv4 = NonZeroUsize::new(65535 + 14);
    }
    caps
}

/// Frames waiting to be written to the TAP, each with room for the vnet header in front.
/// Bounded: when full, the stack is told the device is busy and retries later.
///
/// Buffers are recycled and never shrink: a frame is the first `len` bytes of its buffer, so
/// a reused buffer is not zeroed again (zeroing 64 KiB per TSO frame cost 12 % of the
/// host→guest path). smoltcp writes every byte of the frames it emits.
#[derive(Debug)]
pub struct TxQueue {
    frames: VecDeque<(Vec<u8>, usize)>,
    spare: Vec<Vec<u8>>,
    limit: usize,
    vnet_hdr: bool,
    /// Frames refused because the queue was full.
    pub refused: u64,
}

impl TxQueue {
    pub fn new(limit: usize, vnet_hdr: bool) -> TxQueue {
        TxQueue {
            frames: VecDeque::new(),
            spare: Vec::new(),
            limit,
            vnet_hdr,
            refused: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.frames.len() >= self.limit
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn header_len(&self) -> usize {
        if self.vnet_hdr { VNET_HDR_LEN } else { 0 }
    }

    /// Appends a frame of `len` bytes filled by `fill`, then finishes its checksum/offload
    /// header. Returns `None` (and counts) when the queue is full.
    pub fn push_with<R>(
        &mut self,
        len: usize,
        meta: PacketMeta,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        if self.is_full() {
            self.refused += 1;
            return None;
        }
        let hl = self.header_len();
        let total = hl + len;
        let mut buf = self.buffer(total);
        let frame = &mut buf[hl..total];
        let r = fill(frame);
        let hdr = finish_tcp(frame, meta, self.vnet_hdr);
        if self.vnet_hdr {
            hdr.emit(&mut buf[..VNET_HDR_LEN]);
        }
        self.frames.push_back((buf, total));
        Some(r)
    }

    /// Appends a frame tapir built itself, with complete checksums.
    pub fn push_frame(&mut self, frame: &[u8]) -> bool {
        if self.is_full() {
            self.refused += 1;
            return false;
        }
        let hl = self.header_len();
        let total = hl + frame.len();
        let mut buf = self.buffer(total);
        buf[..hl].fill(0);
        buf[hl..total].copy_from_slice(frame);
        self.frames.push_back((buf, total));
        true
    }

    /// A buffer of at least `len` bytes, recycled when possible.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    /// The next frame to write, vnet header included.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|(buf, len)| &buf[..*len])
    }

    /// Drops the frame `front` returned, keeping its buffer for reuse.
    pub fn pop_front(&mut self) {
        if let Some((buf, _)) = self.frames.pop_front() {
            // Keep a few buffers; more would only pin memory after a burst.
            if self.spare.len() < 64 {
                self.spare.push(buf);
            }
        }
    }

    /// The Ethernet frame (without vnet header) of a queued buffer, for pcap.
    pub fn strip_header<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.header_len().min(buf.len())..]
    }
}

/// Completes the TCP checksum of a frame smoltcp emitted (it leaves the field zero because
/// `caps.checksum.tcp` is off) and says how the guest kernel must treat it.
fn finish_tcp(frame: &mut [u8], meta: PacketMeta, vnet_hdr: bool) -> VnetHdr {
    let none = VnetHdr::default();
    let Some((l4, src, dst, l4_len, gso_type)) = tcp_layout(frame) else {
        return none;
    };
    let Ok(mut tcp) = TcpPacket::new_checked(&mut frame[l4..]) else {
        return none;
    };
    if !vnet_hdr {
        tcp.fill_checksum(&src, &dst);
        return none;
    }
    let pseudo = match (src, dst) {
        (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
            pseudo_header_sum(&s.octets(), &d.octets(), l4_len)
        }
        (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
            pseudo_header_sum(&s.octets(), &d.octets(), l4_len)
        }
        _ => return none,
    };
    tcp.set_checksum(pseudo);
    let header_len = usize::from(tcp.header_len());
    let payload_len = l4_len.saturating_sub(header_len);
    let mut hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: (l4 + header_len) as u16,
        gso_size: 0,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    if let Some(mss) = meta.segmentation_offload_size
        && payload_len > usize::from(mss.get())
    {
        hdr.gso_type = gso_type;
        hdr.gso_size = mss.get();
    }
    hdr
}

/// The folded (not inverted) one's-complement sum of the TCP pseudo-header: what a
/// `CHECKSUM_PARTIAL` packet carries in its checksum field (RFC 793 §3.1, RFC 8200 §8.1).
fn pseudo_header_sum(src: &[u8], dst: &[u8], l4_len: usize) -> u16 {
    let words = src.chunks(2).chain(dst.chunks(2));
    let mut sum: u64 = words
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    sum += u64::from(u8::from(IpProtocol::Tcp)) + l4_len as u64;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// For an Ethernet frame carrying TCP: (offset of the TCP header, source, destination,
/// TCP length, GSO type). IPv6 is only handled without extension headers, which is all
/// smoltcp emits.
fn tcp_layout(frame: &[u8]) -> Option<(usize, IpAddress, IpAddress, usize, u8)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let l3 = EthernetFrame::<&[u8]>::header_len();
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let ihl = usize::from(ip.header_len());
            let l4_len = usize::from(ip.total_len()).checked_sub(ihl)?;
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            Some((
                l3 + ihl,
                s.into(),
                d.into(),
                l4_len,
                VIRTIO_NET_HDR_GSO_TCPV4,
            ))
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            let l4_len = usize::from(ip.payload_len());
            Some((
                l3 + 40,
                s.into(),
                d.into(),
                l4_len,
                VIRTIO_NET_HDR_GSO_TCPV6,
            ))
        }
        _ => None,
    }
}

/// A one-frame view for smoltcp: at most one receive token (the frame being ingested), and
/// transmit tokens that append to the queue.
pub struct Device<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut TxQueue,
    caps: &'a DeviceCapabilities,
}

impl<'a> Device<'a> {
    pub fn new(rx: Option<&'a [u8]>, tx: &'a mut TxQueue, caps: &'a DeviceCapabilities) -> Self {
        Device { rx, tx, caps }
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

pub struct TxToken<'a> {
    queue: &'a mut TxQueue,
    meta: PacketMeta,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.queue.is_full() {
            // `transmit` checks for room, so this is a reply produced while receiving into
            // a full queue: build it in a scratch buffer and drop it (counted).
            self.queue.refused += 1;
            return f(&mut vec![0; len]);
        }
        let meta = self.meta;
        let mut f = Some(f);
        self.queue
            .push_with(len, meta, |buf| (f.take().expect("called once"))(buf))
            .expect("the queue has room")
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.meta = meta;
    }
}

impl phy::Device for Device<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((
            RxToken { frame },
            TxToken {
                queue: self.tx,
                meta: PacketMeta::default(),
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx.is_full() {
            return None;
        }
        Some(TxToken {
            queue: self.tx,
            meta: PacketMeta::default(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// An IPv4 TCP SYN-ACK 10.0.2.2:80 → 10.0.2.100:40000 with a zero checksum field, as
    /// smoltcp emits it when TCP checksums are offloaded.
    fn syn_ack() -> Vec<u8> {
        let mut f = vec![
            0x02, 0, 0, 0, 0, 0x64, 0x52, 0x55, 10, 0, 2, 2, 0x08, 0x00, // ethernet
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 2, 2, 10, 0, 2, 100, // ipv4
            0, 80, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x12, 0xff, 0xff, 0, 0, 0, 0,
        ];
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.fill_checksum();
        f
    }

    #[test]
    fn vnet_header_round_trip() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.emit(&mut b);
        assert_eq!(b, [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn tcp_leaves_with_partial_checksum_and_needs_csum() {
        let mut q = TxQueue::new(4, true);
        let frame = syn_ack();
        q.push_with(frame.len(), PacketMeta::default(), |b| {
            b.copy_from_slice(&frame)
        });
        let out = q.front().unwrap();
        let hdr = VnetHdr::parse(out).unwrap();
        assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!((hdr.csum_start, hdr.csum_offset, hdr.hdr_len), (34, 16, 54));
        // The field holds the folded pseudo-header sum: 10.0.2.2 + 10.0.2.100 + 6 + 20.
        let sum: u32 = 0x0a00 + 0x0202 + 0x0a00 + 0x0264 + 6 + 20;
        let field = u16::from_be_bytes([out[10 + 50], out[10 + 51]]);
        assert_eq!(u32::from(field), sum);
    }

    #[test]
    fn without_vnet_header_the_checksum_is_complete() {
        let mut q = TxQueue::new(4, false);
        let frame = syn_ack();
        q.push_with(frame.len(), PacketMeta::default(), |b| {
            b.copy_from_slice(&frame)
        });
        let out = q.front().unwrap();
        let tcp = TcpPacket::new_checked(&out[34..]).unwrap();
        let (s, d) = (IpAddress::v4(10, 0, 2, 2), IpAddress::v4(10, 0, 2, 100));
        assert!(tcp.verify_checksum(&s, &d));
    }

    #[test]
    fn super_segment_is_marked_gso() {
        let mut frame = syn_ack();
        // Turn it into an ACK carrying 3000 payload bytes.
        frame[47] = 0x10;
        frame.extend(std::iter::repeat_n(0xab, 3000));
        let total = (frame.len() - 14) as u16;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        let mut meta = PacketMeta::default();
        meta.segmentation_offload_size = std::num::NonZeroU16::new(1460);
        let mut q = TxQueue::new(4, true);
        q.push_with(frame.len(), meta, |b| b.copy_from_slice(&frame));
        let hdr = VnetHdr::parse(q.front().unwrap()).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size),
            (VIRTIO_NET_HDR_GSO_TCPV4, 1460)
        );
    }

    #[test]
    fn queue_is_bounded_and_counts_refusals() {
        let mut q = TxQueue::new(2, true);
        assert!(q.push_frame(&[1; 60]));
        assert!(q.push_frame(&[2; 60]));
        assert!(!q.push_frame(&[3; 60]));
        assert_eq!(q.refused, 1);
        assert_eq!(q.front().unwrap()[VNET_HDR_LEN], 1);
        q.pop_front();
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn non_tcp_frames_get_a_zero_header() {
        let mut q = TxQueue::new(2, true);
        let mut f = syn_ack();
        f[23] = 17; // UDP
        q.push_with(f.len(), PacketMeta::default(), |b| b.copy_from_slice(&f));
        assert_eq!(VnetHdr::parse(q.front().unwrap()), Some(VnetHdr::default()));
    }
}
