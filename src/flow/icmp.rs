//! Guest ICMP echo ("ping") through unprivileged ICMP datagram sockets.
//!
//! A ping socket (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`) lets an unprivileged user send
//! echo requests when `net.ipv4.ping_group_range` covers the user's group. The kernel owns
//! the echo identifier (it is the socket's "port"), so each flow remembers the guest's own
//! identifier and restores it in the replies. One flow per (guest identifier, destination);
//! it expires after `Limits::icmp_idle`. When the host refuses ping sockets the request is
//! dropped and counted, as slirp4netns does.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};

/// An echo flow: the guest's identifier, its source address and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EchoKey {
    pub ident: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
}

#[derive(Debug)]
pub struct EchoFlow {
    pub key: EchoKey,
    pub socket: mio::net::UdpSocket,
    pub last_active: Instant,
}

/// A non-blocking ping socket (ICMP or ICMPv6) connected to `dst`.
pub fn connect(dst: IpAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = match dst {
        IpAddr::V4(_) => Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))?,
        IpAddr::V6(_) => Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::ICMPV6))?,
    };
    socket.set_nonblocking(true)?;
    socket.connect(&SocketAddr::new(dst, 0).into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

/// The echo request a ping socket expects: type 8 (ICMPv6: 128), code 0; the kernel fills
/// the identifier and the checksum.
pub fn echo_request(v6: bool, seq_no: u16, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&seq_no.to_be_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn request_layout() {
        let mut out = Vec::new();
        echo_request(false, 0x0102, b"abc", &mut out);
        assert_eq!(out, [8, 0, 0, 0, 0, 0, 1, 2, b'a', b'b', b'c']);
        echo_request(true, 7, b"", &mut out);
        assert_eq!(out, [128, 0, 0, 0, 0, 0, 0, 7]);
    }
}
