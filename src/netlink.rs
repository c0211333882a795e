//! Typed, synchronous rtnetlink verbs: one method per thing tapir asks of the kernel.
//!
//! A [`Netlink`] owns one NETLINK_ROUTE socket in the network namespace it was opened in
//! (opening it, then entering another namespace, keeps talking to the first). Every request
//! carries NLM_F_ACK and a fresh sequence number, and the call waits for the kernel's answer
//! with that number: an ACK is success, an error code becomes a [`NetlinkError`] naming the
//! verb and the object ("cannot set the MTU of tap0 to 65520: invalid argument").
//!
//! Message building is kept apart from the socket (the `*_message` functions) so that the
//! bytes we send are unit-tested against the layout iproute2 uses. This module never shells
//! out to `ip`, never retries, and does not listen to multicast groups.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::errno::Errno;

use crate::sys::OsError;

/// Large enough for any single reply to the requests below (a link dump entry is ~1.5 KiB).
const RECV_BUFFER: usize = 64 * 1024;

/// A request the kernel refused or that could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Open(OsError),
    #[error("cannot {verb}: {cause}{hint}", hint = hint(.cause))]
    Request { verb: String, cause: OsError },
    #[error("cannot {verb}: the kernel's reply is malformed ({detail})")]
    Reply { verb: String, detail: String },
    #[error("there is no network interface named {0:?} in this network namespace")]
    NoSuchLink(String),
}

impl NetlinkError {
    /// The kernel answered ENODEV: the interface the request named does not exist (now).
    fn is_no_such_device(&self) -> bool {
        matches!(
            self,
            NetlinkError::Request {
                cause: OsError(Errno::ENODEV),
                ..
            }
        )
    }
}

fn hint(cause: &OsError) -> &'static str {
    match cause.0 {
        Errno::EPERM => " (this needs CAP_NET_ADMIN over the network namespace)",
        Errno::EEXIST => " (it already exists)",
        Errno::ENETUNREACH => " (the gateway is not inside a subnet of an interface that is up)",
        _ => "",
    }
}

/// What tapir needs to know about an existing interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The index of the bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
    pub up: bool,
    /// It is a Linux bridge (IFLA_INFO_KIND "bridge").
    pub is_bridge: bool,
}

/// A NETLINK_ROUTE socket bound to the current network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    /// Names learnt by `link_index`, so errors can say "tap0" instead of "link 3".
    names: Vec<(u32, String)>,
}

impl Netlink {
    /// Opens a socket to the kernel in the current network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let open = || -> std::io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        };
        let socket = open().map_err(|e| NetlinkError::Open(e.into()))?;
        Ok(Netlink {
            socket,
            seq: 0,
            names: Vec::new(),
        })
    }

    /// The index of the interface called `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        match self.link_get(name)? {
            Some(link) => Ok(link.index),
            None => Err(NetlinkError::NoSuchLink(name.to_string())),
        }
    }

    /// The interface called `name`, or `None` if there is none.
    pub fn link_get(&mut self, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        let verb = format!("look up the network interface {name:?}");
        let reply = match self.request(&verb, get_link_message(name), 0) {
            Err(e) if e.is_no_such_device() => return Ok(None),
            other => other?,
        };
        let Some(RouteNetlinkMessage::NewLink(link)) = reply else {
            return Err(NetlinkError::Reply {
                verb,
                detail: "no link message before the ACK".into(),
            });
        };
        let index = link.header.index;
        self.names.retain(|(i, _)| *i != index);
        self.names.push((index, name.to_string()));
        Ok(Some(link_state(&link)))
    }

    /// Creates a bridge (`ip link add NAME type bridge`), down.
    pub fn bridge_add(&mut self, name: &str) -> Result<(), NetlinkError> {
        let verb = format!("create the bridge {name:?}");
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(&verb, new_bridge_message(name), flags)
            .map(drop)
    }

    /// Creates a veth pair in one message: `host` here, `peer` directly inside the network
    /// namespace `peer_netns` (so its name is checked there, never clashing with ours).
    pub fn veth_add(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let verb = format!("create the veth pair {host:?} / {peer:?}");
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        let msg = new_veth_message(host, peer, peer_netns.as_raw_fd(), mtu);
        self.request(&verb, msg, flags).map(drop)
    }

    /// Enslaves the interface to the bridge `master`.
    pub fn link_set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let verb = format!(
            "attach {} to the bridge {}",
            self.label(index),
            self.label(master)
        );
        self.request(
            &verb,
            set_link_attr_message(index, LinkAttribute::Controller(master)),
            0,
        )
        .map(drop)
    }

    /// Turns the bridge port's hairpin mode on or off (`bridge link set dev IF hairpin on`).
    pub fn link_set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let verb = format!("set hairpin mode on the bridge port {}", self.label(index));
        self.request(&verb, set_hairpin_message(index, on), 0)
            .map(drop)
    }

    /// Deletes the interface (`ip link del`); a veth takes its peer with it. An interface
    /// that is already gone counts as deleted: a veth vanishes by itself, a moment after the
    /// network namespace holding its peer dies, so it can go between a lookup and this call.
    pub fn link_delete(&mut self, index: u32) -> Result<(), NetlinkError> {
        let verb = format!("delete {}", self.label(index));
        match self.request(&verb, del_link_message(index), 0) {
            Err(e) if e.is_no_such_device() => Ok(()),
            other => other.map(drop),
        }
    }

    /// The IPv4 addresses (with prefix lengths) on interface `index`.
    pub fn addrs_v4(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let verb = format!("list the addresses of {}", self.label(index));
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.dump(&verb, RouteNetlinkMessage::GetAddress(msg))?;
        let mut found = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(a) = reply else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            for attr in &a.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                    found.push((*ip, a.header.prefix_len));
                }
            }
        }
        Ok(found)
    }

    /// Brings the interface up (`ip link set IF up`).
    pub fn link_set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let verb = format!("bring {} up", self.label(index));
        self.request(&verb, set_link_up_message(index), 0).map(drop)
    }

    /// Sets the interface's MTU.
    pub fn link_set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let verb = format!("set the MTU of {} to {mtu}", self.label(index));
        self.request(
            &verb,
            set_link_attr_message(index, LinkAttribute::Mtu(mtu)),
            0,
        )
        .map(drop)
    }

    /// Sets the interface's Ethernet address.
    pub fn link_set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let m = mac;
        let verb = format!(
            "set the MAC address of {} to {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            self.label(index),
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5]
        );
        self.request(
            &verb,
            set_link_attr_message(index, LinkAttribute::Address(mac.to_vec())),
            0,
        )
        .map(drop)
    }

    /// Sets the interface's transmit queue length (for a TAP: frames the guest may queue
    /// towards tapir before the kernel drops).
    pub fn link_set_txqueuelen(&mut self, index: u32, len: u32) -> Result<(), NetlinkError> {
        let verb = format!(
            "set the transmit queue length of {} to {len}",
            self.label(index)
        );
        self.request(
            &verb,
            set_link_attr_message(index, LinkAttribute::TxQueueLen(len)),
            0,
        )
        .map(drop)
    }

    /// Adds `addr/prefix_len` (with the subnet's broadcast address) to the interface.
    pub fn addr_add_v4(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let verb = format!(
            "add the address {addr}/{prefix_len} to {}",
            self.label(index)
        );
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(
            &verb,
            add_address_v4_message(index, addr, prefix_len),
            flags,
        )
        .map(drop)
    }

    /// Adds a default route via `gateway` to the main table.
    pub fn route_add_default_v4(&mut self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let verb = format!("add a default route via {gateway}");
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(&verb, add_default_route_v4_message(gateway), flags)
            .map(drop)
    }

    /// The gateways of the IPv4 default routes in the main table.
    pub fn default_gateways_v4(&mut self) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let replies = self.dump("list the routes", RouteNetlinkMessage::GetRoute(msg))?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.destination_prefix_length == 0
                        && r.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Sends one dump request and collects every reply until NLMSG_DONE.
    fn dump(
        &mut self,
        verb: &str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut replies = Vec::new();
        let bytes = encode_with(message, NLM_F_REQUEST | NLM_F_DUMP, self.next_seq());
        self.exchange(verb, &bytes, |m| replies.push(m))?;
        Ok(replies)
    }

    fn label(&self, index: u32) -> String {
        match self.names.iter().find(|(i, _)| *i == index) {
            Some((_, name)) => name.clone(),
            None => format!("interface #{index}"),
        }
    }

    /// Sends one request and waits for its ACK; returns the reply message that came before
    /// the ACK, if any.
    fn request(
        &mut self,
        verb: &str,
        message: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<Option<RouteNetlinkMessage>, NetlinkError> {
        let mut reply = None;
        let bytes = encode(message, extra_flags, self.next_seq());
        self.exchange(verb, &bytes, |m| reply = Some(m))?;
        Ok(reply)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends the request `bytes` (whose sequence number is `self.seq`) and hands each reply
    /// message with that number to `on_reply`, until NLMSG_DONE or the ACK; an error code
    /// in the ACK is the request's failure.
    fn exchange(
        &mut self,
        verb: &str,
        bytes: &[u8],
        mut on_reply: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), NetlinkError> {
        let seq = self.seq;
        let io_error = |e: std::io::Error| NetlinkError::Request {
            verb: verb.to_string(),
            cause: e.into(),
        };
        let malformed = |detail: String| NetlinkError::Reply {
            verb: verb.to_string(),
            detail,
        };
        self.socket.send(bytes, 0).map_err(io_error)?;
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let len = loop {
                match self.socket.recv(&mut &mut buf[..], 0) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other.map_err(io_error)?,
                }
            };
            if len > buf.len() {
                return Err(malformed(format!(
                    "a {len}-byte reply does not fit the buffer"
                )));
            }
            let mut offset = 0;
            while offset < len {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..len])
                    .map_err(|e| malformed(e.to_string()))?;
                let msg_len = usize::try_from(msg.header.length).unwrap_or(usize::MAX);
                if msg_len == 0 {
                    return Err(malformed("a zero-length message".into()));
                }
                offset = offset.saturating_add(msg_len.next_multiple_of(4));
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(NetlinkError::Request {
                                verb: verb.to_string(),
                                cause: OsError(Errno::from_raw(-code.get())),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => on_reply(m),
                    _ => {}
                }
            }
        }
    }
}

/// Serializes `message` as a request with NLM_F_ACK and `seq`.
fn encode(message: RouteNetlinkMessage, extra_flags: u16, seq: u32) -> Vec<u8> {
    encode_with(message, NLM_F_REQUEST | NLM_F_ACK | extra_flags, seq)
}

/// Serializes `message` with exactly these header `flags` and `seq`.
fn encode_with(message: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
    msg.finalize();
    let mut bytes = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut bytes);
    bytes
}

fn get_link_message(name: &str) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    RouteNetlinkMessage::GetLink(link)
}

fn link_state(link: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: link.header.index,
        mac: [0; 6],
        mtu: 0,
        master: None,
        up: link.header.flags.contains(LinkFlags::Up),
        is_bridge: false,
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Address(a) if a.len() == 6 => state.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => state.mtu = *m,
            LinkAttribute::Controller(m) => state.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                state.is_bridge = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    state
}

fn new_bridge_message(name: &str) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    link.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    RouteNetlinkMessage::NewLink(link)
}

fn new_veth_message(
    host: &str,
    peer: &str,
    peer_netns: i32,
    mtu: Option<u32>,
) -> RouteNetlinkMessage {
    let mut peer_msg = LinkMessage::default();
    peer_msg
        .attributes
        .push(LinkAttribute::IfName(peer.to_string()));
    peer_msg.attributes.push(LinkAttribute::NetNsFd(peer_netns));
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(host.to_string()));
    if let Some(mtu) = mtu {
        link.attributes.push(LinkAttribute::Mtu(mtu));
        peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
    ]));
    RouteNetlinkMessage::NewLink(link)
}

fn set_hairpin_message(index: u32, on: bool) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            on,
        )])),
    ]));
    // RTM_NEWLINK on an existing link, as `ip link set IF type bridge_slave hairpin on` does:
    // the kernel applies port (slave) data only there, not in RTM_SETLINK.
    RouteNetlinkMessage::NewLink(link)
}

fn del_link_message(index: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    RouteNetlinkMessage::DelLink(link)
}

fn set_link_up_message(index: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(link)
}

fn set_link_attr_message(index: u32, attr: LinkAttribute) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes.push(attr);
    RouteNetlinkMessage::SetLink(link)
}

fn add_address_v4_message(index: u32, addr: Ipv4Addr, prefix_len: u8) -> RouteNetlinkMessage {
    let host_mask = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
    let broadcast = Ipv4Addr::from(u32::from(addr) | host_mask);
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.into()));
    msg.attributes.push(AddressAttribute::Address(addr.into()));
    // /31 and /32 have no broadcast address (RFC 3021).
    if prefix_len < 31 {
        msg.attributes.push(AddressAttribute::Broadcast(broadcast));
    }
    RouteNetlinkMessage::NewAddress(msg)
}

fn add_default_route_v4_message(gateway: Ipv4Addr) -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    RouteNetlinkMessage::NewRoute(msg)
}

#[cfg(test)]
mod test {
    use super::*;

    /// The 16-byte nlmsghdr: length, type, flags, seq, port 0.
    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&seq.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    }

    const REQ_ACK: u16 = 0x0001 | 0x0004;
    const CREATE_EXCL: u16 = 0x0400 | 0x0200;

    #[test]
    fn get_link_by_name() {
        let mut want = header(40, 18, REQ_ACK, 1);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // IFLA_IFNAME "lo\0", padded to 4 bytes.
        want.extend_from_slice(&[7, 0, 3, 0, b'l', b'o', 0, 0]);
        assert_eq!(encode(get_link_message("lo"), 0, 1), want);
    }

    #[test]
    fn set_link_up() {
        let mut want = header(32, 19, REQ_ACK, 2);
        // family, pad, type; index 3; flags IFF_UP; change IFF_UP.
        want.extend_from_slice(&[0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(encode(set_link_up_message(3), 0, 2), want);
    }

    #[test]
    fn set_link_mtu_and_mac() {
        let mut want = header(40, 19, REQ_ACK, 3);
        want.extend_from_slice(&[0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // IFLA_MTU 65520.
        want.extend_from_slice(&[8, 0, 4, 0, 0xf0, 0xff, 0, 0]);
        assert_eq!(
            encode(set_link_attr_message(3, LinkAttribute::Mtu(65520)), 0, 3),
            want
        );

        let mac = vec![0x52, 0x55, 10, 0, 2, 100];
        let mut want = header(44, 19, REQ_ACK, 4);
        want.extend_from_slice(&[0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // IFLA_ADDRESS, 6 bytes padded to 8.
        want.extend_from_slice(&[10, 0, 1, 0, 0x52, 0x55, 10, 0, 2, 100, 0, 0]);
        assert_eq!(
            encode(set_link_attr_message(3, LinkAttribute::Address(mac)), 0, 4),
            want
        );
    }

    #[test]
    fn add_address_like_ip_addr_add() {
        let msg = add_address_v4_message(3, Ipv4Addr::new(10, 0, 2, 100), 24);
        let mut want = header(48, 20, REQ_ACK | CREATE_EXCL, 5);
        // ifaddrmsg: AF_INET, /24, flags 0, scope universe, index 3.
        want.extend_from_slice(&[2, 24, 0, 0, 3, 0, 0, 0]);
        want.extend_from_slice(&[8, 0, 2, 0, 10, 0, 2, 100]); // IFA_LOCAL
        want.extend_from_slice(&[8, 0, 1, 0, 10, 0, 2, 100]); // IFA_ADDRESS
        want.extend_from_slice(&[8, 0, 4, 0, 10, 0, 2, 255]); // IFA_BROADCAST
        assert_eq!(encode(msg, CREATE_EXCL, 5), want);
    }

    #[test]
    fn point_to_point_prefixes_have_no_broadcast() {
        let RouteNetlinkMessage::NewAddress(m) =
            add_address_v4_message(1, Ipv4Addr::new(10, 0, 0, 1), 31)
        else {
            panic!()
        };
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Broadcast(_)))
        );
    }

    #[test]
    fn add_default_route_like_ip_route_add() {
        let msg = add_default_route_v4_message(Ipv4Addr::new(10, 0, 2, 2));
        let mut want = header(36, 24, REQ_ACK | CREATE_EXCL, 6);
        // rtmsg: AF_INET, dst/0, src/0, tos 0, main table, proto boot, scope universe,
        // unicast, flags 0.
        want.extend_from_slice(&[2, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0]);
        want.extend_from_slice(&[8, 0, 5, 0, 10, 0, 2, 2]); // RTA_GATEWAY
        assert_eq!(encode(msg, CREATE_EXCL, 6), want);
    }

    #[test]
    fn errors_name_the_verb_and_the_object() {
        let e = NetlinkError::Request {
            verb: "add the address 10.0.2.100/24 to tap0".into(),
            cause: OsError(Errno::EEXIST),
        };
        assert_eq!(
            e.to_string(),
            "cannot add the address 10.0.2.100/24 to tap0: file exists (it already exists)"
        );
    }

    /// A link that vanished between lookup and delete (a veth whose peer's namespace just
    /// died) is deleted, not an error. Run in a thread of its own network namespace, which
    /// is why it needs root, as all of the tests do.
    #[test]
    fn deleting_a_link_already_gone_counts_as_deleted() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("the tests run as root, so a thread can have its own netns");
            let mut nl = Netlink::open().unwrap();
            nl.bridge_add("gone0").unwrap();
            let index = nl.link_index("gone0").unwrap();
            nl.link_delete(index).unwrap();
            nl.link_delete(index)
                .expect("deleting it again finds it gone, which is what was asked");
            assert_eq!(nl.link_get("gone0").unwrap(), None);
        })
        .join()
        .unwrap();
    }
}
