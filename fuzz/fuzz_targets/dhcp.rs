//! The DHCPv4 server with a sequence of arbitrary client messages from many MACs, in
//! virtual time: nothing may panic, every reply must be a DHCP message a client parses, and
//! the only address ever given is the guest's.
//!
//! Input: records (`tapir_fuzz::records`) whose first byte picks one of 256 client MACs (more
//! than the server remembers declines for) and whose rest is the UDP payload sent to port 67.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{DhcpPacket, DhcpRepr};
use tapir::config::AddressPlan;
use tapir::service::dhcp::DhcpServer;

fuzz_target!(|data: &[u8]| {
    let plan = AddressPlan::default();
    let mut server = DhcpServer::new(plan, 1500);
    let mut now = Instant::now();
    for (wait, body) in tapir_fuzz::records(data) {
        now += wait;
        let Some((&client, request)) = body.split_first() else {
            continue;
        };
        let mac = [2, 0, 0, 0, 0, client];
        let Some(reply) = server.handle(now, mac, request) else {
            continue;
        };
        let packet = DhcpPacket::new_checked(&reply.payload[..]).expect("a whole DHCP packet");
        let repr = DhcpRepr::parse(&packet).expect("a DHCP message smoltcp parses");
        // RFC 2131 section 4.3.1: chaddr is copied from the client's message.
        let asked = DhcpPacket::new_checked(request).expect("it was answered");
        assert_eq!(
            repr.client_hardware_address,
            asked.client_hardware_address(),
            "the reply names its client"
        );
        // Broadcast, or unicast to the address the client says it has (ciaddr) and, for a
        // lease, is being given.
        assert!(
            repr.your_ip.is_unspecified() || repr.your_ip == plan.guest,
            "gave {}",
            repr.your_ip
        );
        let leased = repr.your_ip.is_unspecified() || repr.your_ip == reply.to;
        assert!(
            reply.to == Ipv4Addr::BROADCAST || (reply.to == asked.client_ip() && leased),
            "reply to {} for a client at {} given {}",
            reply.to,
            asked.client_ip(),
            repr.your_ip
        );
    }
});
