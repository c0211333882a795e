//! A DHCPv4 server for the guest (RFC 2131), sans-I/O: client message in, reply out.
//!
//! The event loop hands over the UDP payload of every datagram a client sends to port 67,
//! with the frame's source MAC, and sends back what [`DhcpServer::handle`] returns: a UDP
//! datagram from the gateway, port 67, to port 68 of [`Reply::to`], in an Ethernet frame to
//! the client's MAC. `to` is the limited broadcast 255.255.255.255, except for a client that
//! already has its address (`ciaddr` set: renewing, or asking by DHCPINFORM) which is
//! answered at that address (RFC 2131 section 4.1): such a client may listen on a socket
//! bound to it, which a broadcast would not reach. libslirp answers everything by broadcast,
//! which every client in INIT accepts whatever its broadcast flag says.
//!
//! Addresses: tapir carries one guest, at the address `--configure` gives it (network+100),
//! and drops any other source (`stack::frame`). So that is the one address this server hands
//! out, to whichever MAC asks, as pasta's does: a guest that comes back with a new MAC gets its
//! address at once, and the DHCP client and the static configuration always agree. (libslirp
//! hands network+15 to network+30 to successive MACs; tapir could not carry their traffic.)
//! There is no lease to remember, so RELEASE changes nothing. A DECLINE says the address is
//! in use on the client's link (a second machine behind the guest's TAP would find the
//! guest there): that MAC is not offered it for ten minutes, its DISCOVERs go unanswered and
//! its REQUESTs are refused, while every other MAC, the guest holding it included, keeps it.
//! The last 16 declining MACs are remembered, no more. There are no timers: a decline is
//! compared with `now` when a message comes. The lease announced is 24 hours, as libslirp's.
//!
//! Options sent: message type (53), server identifier (54) = gateway, subnet mask (1),
//! router (3) = gateway, DNS (6) = the DNS forwarder, lease time (51) and interface MTU (26).
//! Not done: BOOTP clients without a message type, relay agents, option overload, and
//! client identifiers other than an Ethernet address (smoltcp's parser rejects a 7-byte one
//! of another hardware type; longer ones, such as systemd-networkd's DUIDs, are ignored and
//! the MAC is used). Messages the server cannot parse get no answer.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr};

use crate::config::AddressPlan;

/// How long a bound address is the client's (libslirp: 24 hours).
const LEASE_SECS: u32 = 24 * 3600;
/// How long a client that declined the address (found it in use) is not offered it again.
const DECLINE_HOLD: Duration = Duration::from_secs(600);
/// How many declining MACs are remembered (a guest may make up any number).
const DECLINERS: usize = 16;
/// RFC 1542 section 3.3: some BOOTP relays and clients drop messages shorter than this.
const BOOTP_MIN_LEN: usize = 300;
const OPTION_DNS: u8 = 6;
const OPTION_MTU: u8 = 26;
const OPTION_MESSAGE: u8 = 56;
const NAK_MESSAGE: &[u8] = b"requested address not available";

/// A reply to send from the gateway's port 67 to port 68 of `to`, in a frame to the client's
/// MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The UDP payload.
    pub payload: Vec<u8>,
    /// 255.255.255.255, or the client's own address when it already has one.
    pub to: Ipv4Addr,
}

/// The guest's DHCP server: the address plan and the MTU to announce.
#[derive(Debug, Clone)]
pub struct DhcpServer {
    plan: AddressPlan,
    mtu: u16,
    /// Clients that declined the address, and until when they are not offered it.
    declined: Vec<([u8; 6], Instant)>,
    /// The first decline is logged as a warning, the rest at debug level.
    decline_logged: bool,
    /// Messages left unanswered that a server would not expect: unparsable, of a type clients
    /// do not send, or a DISCOVER from a client that declined the address. (DECLINE and
    /// RELEASE get no answer by design and are not counted.) The event loop moves this into
    /// its counters.
    pub unanswered: u64,
}

impl DhcpServer {
    pub fn new(plan: AddressPlan, mtu: u32) -> DhcpServer {
        DhcpServer {
            plan,
            mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
            declined: Vec::new(),
            decline_logged: false,
            unanswered: 0,
        }
    }

    /// Handles one client message (the UDP payload sent to port 67 from `client_mac`) and
    /// returns the reply, if one is due.
    pub fn handle(&mut self, now: Instant, client_mac: [u8; 6], request: &[u8]) -> Option<Reply> {
        let Ok(packet) = DhcpPacket::new_checked(request) else {
            log::debug!("dhcp: {} bytes, too short", request.len());
            self.unanswered += 1;
            return None;
        };
        let Ok(repr) = DhcpRepr::parse(&packet) else {
            log::debug!("dhcp: unparsable message from {}", mac_str(client_mac));
            self.unanswered += 1;
            return None;
        };
        match repr.message_type {
            DhcpMessageType::Discover => self.discover(now, client_mac, &repr),
            DhcpMessageType::Request => self.request(now, client_mac, &repr),
            DhcpMessageType::Decline => {
                self.decline(now, client_mac, &repr);
                None
            }
            DhcpMessageType::Release => {
                self.release(client_mac, &repr);
                None
            }
            DhcpMessageType::Inform => self.inform(&repr),
            _ => {
                self.unanswered += 1;
                None
            }
        }
    }

    /// Whether the guest's address may be handed to `mac` at `now` (it did not decline it
    /// lately).
    fn available_to(&self, mac: [u8; 6], now: Instant) -> bool {
        !self
            .declined
            .iter()
            .any(|&(m, until)| m == mac && now < until)
    }

    /// Whether `req` is meant for this server: it names no server, or the gateway.
    fn for_us(&self, req: &DhcpRepr) -> bool {
        req.server_identifier
            .is_none_or(|id| id == self.plan.gateway)
    }

    /// DHCPDISCOVER: offer the guest's address, whatever the client asked for.
    fn discover(&mut self, now: Instant, mac: [u8; 6], req: &DhcpRepr) -> Option<Reply> {
        if !self.available_to(mac, now) {
            log::debug!(
                "dhcp: nothing to offer {}: it declined the address",
                mac_str(mac)
            );
            self.unanswered += 1;
            return None;
        }
        let addr = self.plan.guest;
        log::debug!("dhcp: offering {addr} to {}", mac_str(mac));
        self.reply(req, DhcpMessageType::Offer, addr, Ipv4Addr::BROADCAST)
    }

    /// DHCPREQUEST: acknowledge the guest's address (selected from an offer, asked for again
    /// after a reboot, or renewed), refuse any other.
    fn request(&mut self, now: Instant, mac: [u8; 6], req: &DhcpRepr) -> Option<Reply> {
        if !self.for_us(req) {
            // The client took another server's offer.
            return None;
        }
        let renewing = !req.client_ip.is_unspecified();
        let asked = req.requested_ip.or(renewing.then_some(req.client_ip))?;
        if asked != self.plan.guest || !self.available_to(mac, now) {
            log::debug!("dhcp: refusing {asked} to {}", mac_str(mac));
            return self.nak(req);
        }
        log::debug!("dhcp: leased {asked} to {}", mac_str(mac));
        // A client renewing listens at its address; one that names another address in ciaddr
        // than the one it asks for is confused (RFC 2131 section 4.3.2 forbids both at once)
        // and is answered by broadcast, not at an address it may not have.
        let to = if renewing && req.client_ip == asked {
            req.client_ip
        } else {
            Ipv4Addr::BROADCAST
        };
        self.reply(req, DhcpMessageType::Ack, asked, to)
    }

    /// DHCPDECLINE: the client found the guest's address in use; do not offer it to that
    /// client for a while.
    fn decline(&mut self, now: Instant, mac: [u8; 6], req: &DhcpRepr) {
        if !self.for_us(req) || req.requested_ip != Some(self.plan.guest) {
            return;
        }
        let addr = self.plan.guest;
        if std::mem::replace(&mut self.decline_logged, true) {
            log::debug!("dhcp: {} found {addr} in use on its link", mac_str(mac));
        } else {
            log::warn!(
                "dhcp: {} found {addr}, the guest's address, in use on its link; it is not \
                 offered to that MAC for ten minutes (further declines are logged at debug level)",
                mac_str(mac)
            );
        }
        self.declined.retain(|&(m, until)| m != mac && now < until);
        if self.declined.len() >= DECLINERS {
            // The one that would be free soonest makes room.
            self.declined.remove(0);
        }
        self.declined.push((mac, now + DECLINE_HOLD));
    }

    /// DHCPRELEASE: nothing to forget, since no lease is kept.
    fn release(&self, mac: [u8; 6], req: &DhcpRepr) {
        log::debug!("dhcp: {} released {}", mac_str(mac), req.client_ip);
    }

    /// DHCPINFORM: the client has an address and wants the rest of the configuration.
    fn inform(&self, req: &DhcpRepr) -> Option<Reply> {
        let to = if req.client_ip.is_unspecified() {
            Ipv4Addr::BROADCAST
        } else {
            req.client_ip
        };
        self.reply(req, DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED, to)
    }

    /// DHCPOFFER or DHCPACK with the whole configuration; `addr` is unspecified for the
    /// answer to DHCPINFORM, which carries no lease.
    fn reply(
        &self,
        req: &DhcpRepr,
        message_type: DhcpMessageType,
        addr: Ipv4Addr,
        to: Ipv4Addr,
    ) -> Option<Reply> {
        let dns = self.plan.dns.octets();
        let mtu = self.mtu.to_be_bytes();
        let options = [
            DhcpOption {
                kind: OPTION_DNS,
                data: &dns,
            },
            DhcpOption {
                kind: OPTION_MTU,
                data: &mtu,
            },
        ];
        let leased = !addr.is_unspecified();
        let repr = DhcpRepr {
            your_ip: addr,
            router: Some(self.plan.gateway),
            subnet_mask: Some(self.plan.netmask()),
            lease_duration: leased.then_some(LEASE_SECS),
            additional_options: &options,
            ..self.reply_header(req, message_type)
        };
        emit(&repr, to)
    }

    /// DHCPNAK: no address and no configuration, by broadcast (RFC 2131 section 4.3.2).
    fn nak(&self, req: &DhcpRepr) -> Option<Reply> {
        let options = [DhcpOption {
            kind: OPTION_MESSAGE,
            data: NAK_MESSAGE,
        }];
        let repr = DhcpRepr {
            additional_options: &options,
            ..self.reply_header(req, DhcpMessageType::Nak)
        };
        emit(&repr, Ipv4Addr::BROADCAST)
    }

    /// The fields every reply copies from the request (RFC 2131 table 3), and the server
    /// identifier.
    fn reply_header<'a>(&self, req: &DhcpRepr<'a>, message_type: DhcpMessageType) -> DhcpRepr<'a> {
        DhcpRepr {
            message_type,
            transaction_id: req.transaction_id,
            secs: 0,
            client_hardware_address: req.client_hardware_address,
            client_ip: if message_type == DhcpMessageType::Nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                req.client_ip
            },
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: req.relay_agent_ip,
            broadcast: req.broadcast,
            requested_ip: None,
            // RFC 6842: the client identifier comes back.
            client_identifier: req.client_identifier,
            server_identifier: Some(self.plan.gateway),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        }
    }
}

fn emit(repr: &DhcpRepr, to: Ipv4Addr) -> Option<Reply> {
    let mut payload = vec![0; repr.buffer_len().max(BOOTP_MIN_LEN)];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
        .ok()?;
    Some(Reply { payload, to })
}

fn mac_str(mac: [u8; 6]) -> String {
    smoltcp::wire::EthernetAddress(mac).to_string()
}

#[cfg(test)]
mod test {
    use super::*;

    const MAC_A: [u8; 6] = [0x00, 0x0b, 0x82, 0x01, 0xfc, 0x42];
    const MAC_B: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A BOOTP request: the 28 fixed bytes before chaddr (op 1, htype 1, hlen 6, hops, xid,
    /// secs, flags, ciaddr, yiaddr, siaddr, giaddr), chaddr, empty sname and file, the magic
    /// cookie and the options.
    fn bootp(head: [u8; 28], chaddr: [u8; 6], options: &[u8]) -> Vec<u8> {
        let mut m = head.to_vec();
        m.extend(chaddr);
        m.extend([0; 10 + 64 + 128]);
        m.extend([0x63, 0x82, 0x53, 0x63]);
        m.extend(options);
        m
    }

    /// The DHCPDISCOVER of Wireshark's `dhcp.pcap` sample capture: xid 0x00003d1d, client
    /// identifier, "requested" 0.0.0.0, parameter request list 1, 3, 6, 42; padded to 272.
    fn discover() -> Vec<u8> {
        let mut m = bootp(
            [
                1, 1, 6, 0, 0x00, 0x00, 0x3d, 0x1d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0,
            ],
            MAC_A,
            &[
                0x35, 0x01, 0x01, 0x3d, 0x07, 0x01, 0x00, 0x0b, 0x82, 0x01, 0xfc, 0x42, 0x32, 0x04,
                0x00, 0x00, 0x00, 0x00, 0x37, 0x04, 0x01, 0x03, 0x06, 0x2a, 0xff, 0x00,
            ],
        );
        m.resize(272, 0);
        m
    }

    /// The capture's DHCPREQUEST (xid 0x00003d1e) in SELECTING state, for `addr` from server
    /// `server`.
    fn request_selecting(chaddr: [u8; 6], addr: [u8; 4], server: [u8; 4]) -> Vec<u8> {
        let mut options = vec![0x35, 0x01, 0x03, 0x3d, 0x07, 0x01];
        options.extend(chaddr);
        options.extend([0x32, 0x04]);
        options.extend(addr);
        options.extend([0x36, 0x04]);
        options.extend(server);
        options.extend([0x37, 0x04, 0x01, 0x03, 0x06, 0x2a, 0xff]);
        bootp(
            [
                1, 1, 6, 0, 0x00, 0x00, 0x3d, 0x1e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0,
            ],
            chaddr,
            &options,
        )
    }

    /// DHCPREQUEST without a server identifier: INIT-REBOOT (requested address option) when
    /// `ciaddr` is zero, RENEWING otherwise.
    fn request_again(chaddr: [u8; 6], ciaddr: [u8; 4], requested: Option<[u8; 4]>) -> Vec<u8> {
        let mut head = [
            1, 1, 6, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ];
        head[12..16].copy_from_slice(&ciaddr);
        let mut options = vec![0x35, 0x01, 0x03];
        if let Some(addr) = requested {
            options.extend([0x32, 0x04]);
            options.extend(addr);
        }
        options.push(0xff);
        bootp(head, chaddr, &options)
    }

    /// A message of `kind` (DECLINE, RELEASE, INFORM) with `ciaddr` and maybe a requested
    /// address.
    fn message(kind: u8, chaddr: [u8; 6], ciaddr: [u8; 4], requested: Option<[u8; 4]>) -> Vec<u8> {
        let mut m = request_again(chaddr, ciaddr, requested);
        m[242] = kind;
        m
    }

    /// What a client sees in a reply.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        message_type: DhcpMessageType,
        transaction_id: u32,
        chaddr: [u8; 6],
        client_ip: Ipv4Addr,
        your_ip: Ipv4Addr,
        server_identifier: Option<Ipv4Addr>,
        router: Option<Ipv4Addr>,
        subnet_mask: Option<Ipv4Addr>,
        lease_duration: Option<u32>,
        dns_servers: Option<Vec<Ipv4Addr>>,
        client_identifier: Option<[u8; 6]>,
    }

    /// Parses a reply back with smoltcp, which also checks that its op code is 2 (a reply
    /// message type under a request op code does not parse).
    fn parse(reply: &Reply) -> Seen {
        let packet = DhcpPacket::new_checked(&reply.payload[..]).unwrap();
        let r = DhcpRepr::parse(&packet).unwrap();
        Seen {
            message_type: r.message_type,
            transaction_id: r.transaction_id,
            chaddr: r.client_hardware_address.0,
            client_ip: r.client_ip,
            your_ip: r.your_ip,
            server_identifier: r.server_identifier,
            router: r.router,
            subnet_mask: r.subnet_mask,
            lease_duration: r.lease_duration,
            dns_servers: r.dns_servers.map(|d| d.to_vec()),
            client_identifier: r.client_identifier.map(|c| c.0),
        }
    }

    fn options(reply: &Reply) -> Vec<(u8, Vec<u8>)> {
        let packet = DhcpPacket::new_checked(&reply.payload[..]).unwrap();
        packet
            .options()
            .map(|o| (o.kind, o.data.to_vec()))
            .collect()
    }

    fn server() -> DhcpServer {
        DhcpServer::new(AddressPlan::default(), 1500)
    }

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
    const GATEWAY: [u8; 4] = [10, 0, 2, 2];

    #[test]
    fn discover_is_offered_the_configured_address() {
        let mut s = server();
        let now = Instant::now();
        let offer = s.handle(now, MAC_A, &discover()).unwrap();
        assert_eq!(offer.to, Ipv4Addr::BROADCAST);
        assert!(offer.payload.len() >= 300);
        let repr = parse(&offer);
        assert_eq!(repr.message_type, DhcpMessageType::Offer);
        assert_eq!(repr.transaction_id, 0x3d1d);
        assert_eq!(repr.chaddr, MAC_A);
        assert_eq!(repr.your_ip, GUEST);
        assert_eq!(repr.server_identifier, Some(Ipv4Addr::from(GATEWAY)));
        assert_eq!(repr.router, Some(Ipv4Addr::from(GATEWAY)));
        assert_eq!(repr.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(repr.lease_duration, Some(86400));
        assert_eq!(repr.dns_servers, Some(vec![Ipv4Addr::new(10, 0, 2, 3)]));
        assert_eq!(repr.client_identifier, Some(MAC_A));
        assert!(options(&offer).contains(&(26, vec![0x05, 0xdc])));
    }

    #[test]
    fn selected_offer_is_acknowledged() {
        let mut s = server();
        let now = Instant::now();
        s.handle(now, MAC_A, &discover()).unwrap();
        let req = request_selecting(MAC_A, [10, 0, 2, 100], GATEWAY);
        let ack = s.handle(now, MAC_A, &req).unwrap();
        assert_eq!(ack.to, Ipv4Addr::BROADCAST);
        let repr = parse(&ack);
        assert_eq!(repr.message_type, DhcpMessageType::Ack);
        assert_eq!(repr.transaction_id, 0x3d1e);
        assert_eq!(repr.your_ip, GUEST);
        assert_eq!(repr.lease_duration, Some(86400));
        // Asking again (a lost ACK) gets the same answer.
        assert_eq!(s.handle(now, MAC_A, &req).unwrap(), ack);
    }

    #[test]
    fn every_mac_is_offered_the_guest_address() {
        let mut s = server();
        let now = Instant::now();
        s.handle(now, MAC_A, &discover()).unwrap();
        s.handle(
            now,
            MAC_A,
            &request_selecting(MAC_A, [10, 0, 2, 100], GATEWAY),
        )
        .unwrap();
        // A second MAC (the guest again, with a new one) gets the same address at once.
        let mut disc_b = discover();
        disc_b[28..34].copy_from_slice(&MAC_B);
        let offer = s.handle(now, MAC_B, &disc_b).unwrap();
        assert_eq!(parse(&offer).your_ip, GUEST);
        let req = request_selecting(MAC_B, [10, 0, 2, 100], GATEWAY);
        let ack = s.handle(now, MAC_B, &req).unwrap();
        assert_eq!(parse(&ack).message_type, DhcpMessageType::Ack);
        assert_eq!(parse(&ack).chaddr, MAC_B);
        // libslirp's range is not handed out: tapir would drop its traffic.
        let req = request_selecting(MAC_B, [10, 0, 2, 15], GATEWAY);
        let nak = s.handle(now, MAC_B, &req).unwrap();
        assert_eq!(nak.to, Ipv4Addr::BROADCAST);
        let repr = parse(&nak);
        assert_eq!(repr.message_type, DhcpMessageType::Nak);
        assert_eq!(repr.your_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(repr.lease_duration, None);
        assert_eq!(repr.router, None);
    }

    #[test]
    fn another_servers_offer_taken_is_not_answered() {
        let mut s = server();
        let now = Instant::now();
        s.handle(now, MAC_A, &discover()).unwrap();
        let req = request_selecting(MAC_A, [192, 168, 0, 10], [192, 168, 0, 1]);
        assert_eq!(s.handle(now, MAC_A, &req), None);
    }

    #[test]
    fn rebooting_client_gets_the_guest_address_and_no_other() {
        let mut s = server();
        let now = Instant::now();
        // After a tapir restart the guest asks for the address it had.
        let req = request_again(MAC_A, [0; 4], Some([10, 0, 2, 100]));
        let ack = s.handle(now, MAC_A, &req).unwrap();
        assert_eq!(parse(&ack).message_type, DhcpMessageType::Ack);
        assert_eq!(ack.to, Ipv4Addr::BROADCAST);
        let req = request_again(MAC_B, [0; 4], Some([10, 0, 2, 100]));
        let ack = s.handle(now, MAC_B, &req).unwrap();
        assert_eq!(parse(&ack).message_type, DhcpMessageType::Ack);
        // An address from another network, or another of this one, is refused.
        for other in [[192, 168, 1, 7], [10, 0, 2, 101]] {
            let req = request_again(MAC_A, [0; 4], Some(other));
            let nak = s.handle(now, MAC_A, &req).unwrap();
            assert_eq!(parse(&nak).message_type, DhcpMessageType::Nak);
        }
    }

    /// Found by fuzz/fuzz_targets/dhcp.rs: a DHCPREQUEST with ciaddr 10.0.0.0 and requested
    /// address 10.0.2.100 was acknowledged at 10.0.0.0, outside the network.
    #[test]
    fn request_naming_another_ciaddr_is_answered_by_broadcast() {
        let mut s = server();
        let now = Instant::now();
        s.handle(now, MAC_A, &discover()).unwrap();
        let req = request_again(MAC_A, [10, 0, 0, 0], Some([10, 0, 2, 100]));
        let ack = s.handle(now, MAC_A, &req).unwrap();
        assert_eq!(parse(&ack).message_type, DhcpMessageType::Ack);
        assert_eq!(parse(&ack).your_ip, GUEST);
        assert_eq!(ack.to, Ipv4Addr::BROADCAST);
    }

    #[test]
    fn renewal_is_answered_at_the_clients_address() {
        let mut s = server();
        let now = Instant::now();
        s.handle(now, MAC_A, &discover()).unwrap();
        let req = request_selecting(MAC_A, [10, 0, 2, 100], GATEWAY);
        s.handle(now, MAC_A, &req).unwrap();
        let later = now + Duration::from_secs(u64::from(LEASE_SECS / 2));
        let renew = request_again(MAC_A, [10, 0, 2, 100], None);
        let ack = s.handle(later, MAC_A, &renew).unwrap();
        assert_eq!(ack.to, GUEST);
        let repr = parse(&ack);
        assert_eq!(repr.message_type, DhcpMessageType::Ack);
        assert_eq!(repr.client_ip, GUEST);
        assert_eq!(repr.your_ip, GUEST);
        assert_eq!(repr.lease_duration, Some(86400));
    }

    #[test]
    fn release_changes_nothing() {
        let mut s = server();
        let now = Instant::now();
        s.handle(now, MAC_A, &discover()).unwrap();
        let req = request_selecting(MAC_A, [10, 0, 2, 100], GATEWAY);
        s.handle(now, MAC_A, &req).unwrap();
        let release = message(7, MAC_A, [10, 0, 2, 100], None);
        assert_eq!(s.handle(now, MAC_A, &release), None);
        assert_eq!(s.unanswered, 0, "a RELEASE gets no answer by design");
        let offer = s.handle(now, MAC_A, &discover()).unwrap();
        assert_eq!(parse(&offer).your_ip, GUEST);
    }

    #[test]
    fn a_decline_keeps_the_address_from_that_mac_only_for_ten_minutes() {
        let mut s = server();
        let now = Instant::now();
        let ack = |s: &mut DhcpServer, mac, t| {
            let req = request_again(mac, [10, 0, 2, 100], None);
            parse(&s.handle(t, mac, &req).unwrap()).message_type
        };
        let mut disc_b = discover();
        disc_b[28..34].copy_from_slice(&MAC_B);
        // Declining another address, or for another server, changes nothing.
        let decline = message(4, MAC_B, [0; 4], Some([10, 0, 2, 15]));
        assert_eq!(s.handle(now, MAC_B, &decline), None);
        let mut elsewhere = message(4, MAC_B, [0; 4], Some([10, 0, 2, 100]));
        elsewhere.truncate(elsewhere.len() - 1);
        elsewhere.extend([0x36, 0x04, 192, 168, 0, 1, 0xff]);
        assert_eq!(s.handle(now, MAC_B, &elsewhere), None);
        assert!(s.handle(now, MAC_B, &disc_b).is_some());
        // B, behind the guest's TAP, finds the guest at .100 and declines it.
        let decline = message(4, MAC_B, [0; 4], Some([10, 0, 2, 100]));
        assert_eq!(s.handle(now, MAC_B, &decline), None);
        assert_eq!(s.handle(now, MAC_B, &disc_b), None);
        assert_eq!(s.unanswered, 1, "a DISCOVER with nothing to offer");
        assert_eq!(ack(&mut s, MAC_B, now), DhcpMessageType::Nak);
        // The guest keeps renewing it.
        assert_eq!(ack(&mut s, MAC_A, now), DhcpMessageType::Ack);
        assert!(s.handle(now, MAC_A, &discover()).is_some());
        let almost = now + DECLINE_HOLD - Duration::from_secs(1);
        assert_eq!(s.handle(almost, MAC_B, &disc_b), None);
        let offer = s.handle(now + DECLINE_HOLD, MAC_B, &disc_b).unwrap();
        assert_eq!(parse(&offer).your_ip, GUEST);
    }

    /// A guest that declines from ever new MACs is remembered for its last few only.
    #[test]
    fn declining_macs_are_bounded() {
        let mut s = server();
        let now = Instant::now();
        for i in 0..1000u16 {
            let [hi, lo] = i.to_be_bytes();
            let mac = [2, 0, 0, 0, hi, lo];
            let decline = message(4, mac, [0; 4], Some([10, 0, 2, 100]));
            assert_eq!(s.handle(now, mac, &decline), None);
        }
        assert_eq!(s.declined.len(), DECLINERS);
        let [hi, lo] = 999u16.to_be_bytes();
        assert!(!s.available_to([2, 0, 0, 0, hi, lo], now));
        assert!(s.available_to([2, 0, 0, 0, 0, 0], now));
    }

    #[test]
    fn inform_gets_the_configuration_without_a_lease() {
        let mut s = server();
        let inform = message(8, MAC_A, [10, 0, 2, 100], None);
        let ack = s.handle(Instant::now(), MAC_A, &inform).unwrap();
        assert_eq!(ack.to, GUEST);
        let repr = parse(&ack);
        assert_eq!(repr.message_type, DhcpMessageType::Ack);
        assert_eq!(repr.your_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(repr.lease_duration, None);
        assert_eq!(repr.router, Some(Ipv4Addr::from(GATEWAY)));
        assert!(options(&ack).contains(&(6, vec![10, 0, 2, 3])));
    }

    #[test]
    fn other_cidr_and_mtu() {
        let plan = AddressPlan::from_cidr("192.168.128.0/17", true).unwrap();
        let mut s = DhcpServer::new(plan, 65520);
        let offer = s.handle(Instant::now(), MAC_A, &discover()).unwrap();
        let repr = parse(&offer);
        assert_eq!(repr.your_ip, Ipv4Addr::new(192, 168, 128, 100));
        assert_eq!(repr.subnet_mask, Some(Ipv4Addr::new(255, 255, 128, 0)));
        assert!(options(&offer).contains(&(26, vec![0xff, 0xf0])));
    }

    #[test]
    fn messages_a_server_does_not_expect_are_counted() {
        let mut s = server();
        let now = Instant::now();
        assert_eq!(s.handle(now, MAC_A, &discover()[..100]), None);
        let mut offer = discover();
        offer[0] = 2;
        offer[242] = 2;
        assert_eq!(s.handle(now, MAC_A, &offer), None);
        assert_eq!(s.unanswered, 2);
        let decline = message(4, MAC_A, [0; 4], Some([10, 0, 2, 100]));
        assert_eq!(s.handle(now, MAC_A, &decline), None);
        assert_eq!(s.unanswered, 2, "a DECLINE gets no answer by design");
    }

    #[test]
    fn hostile_messages_get_no_answer() {
        let mut s = server();
        let now = Instant::now();
        // Every truncation of a DISCOVER (the fixed part needs 240 bytes).
        let d = discover();
        for n in 0..d.len() {
            let _ = s.handle(now, MAC_A, &d[..n]);
        }
        assert_eq!(s.handle(now, MAC_A, &d[..239]), None);
        // BOOTP without a message type; a server's message; a wrong magic cookie; an option
        // running past the end.
        let bootp_only = bootp(
            [
                1, 1, 6, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            MAC_A,
            &[0xff],
        );
        assert_eq!(s.handle(now, MAC_A, &bootp_only), None);
        let mut offer = d.clone();
        offer[0] = 2;
        offer[242] = 2;
        assert_eq!(s.handle(now, MAC_A, &offer), None);
        let mut cookie = d.clone();
        cookie[236] = 0;
        assert_eq!(s.handle(now, MAC_A, &cookie), None);
        let mut long = d[..243].to_vec();
        long.extend([0x37, 0xff, 1, 3]);
        let _ = s.handle(now, MAC_A, &long);
        // A REQUEST that asks for nothing.
        assert_eq!(
            s.handle(now, MAC_A, &request_again(MAC_A, [0; 4], None)),
            None
        );
    }
}
