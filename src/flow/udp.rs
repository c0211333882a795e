//! Guest UDP flows: one host socket per guest 4-tuple, or a port-forward client.
//!
//! An outbound flow owns a host UDP socket `connect`ed to the real destination, so the kernel
//! only delivers that peer's replies; each reply goes back to the guest with the source the
//! guest originally named (10.0.2.2, not 127.0.0.1). An inbound flow remembers which listener
//! and which host client a guest-side 4-tuple belongs to, so the guest's replies find their
//! way out. Flows expire after `Limits::udp_idle` without traffic in either direction.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use crate::stack::frame::FlowKey;

#[derive(Debug)]
pub enum UdpKind {
    /// Guest → host: a host socket connected to the destination.
    Outbound(mio::net::UdpSocket),
    /// Host client → guest through a `-p …/udp` listener.
    Inbound { listener: usize, client: SocketAddr },
}

#[derive(Debug)]
pub struct UdpFlow {
    pub key: FlowKey,
    pub kind: UdpKind,
    pub last_active: Instant,
}

impl UdpFlow {
    pub fn is_idle(&self, now: Instant, idle: std::time::Duration) -> bool {
        now.saturating_duration_since(self.last_active) >= idle
    }
}

/// A non-blocking UDP socket connected to `dst`, from `source` (`--outbound-addr`) when
/// given and of the same family.
pub fn connect(dst: SocketAddr, source: Option<IpAddr>) -> io::Result<mio::net::UdpSocket> {
    let any: IpAddr = match dst {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let local = source
        .filter(|s| s.is_ipv4() == dst.is_ipv4())
        .unwrap_or(any);
    let socket = mio::net::UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(dst)?;
    Ok(socket)
}
