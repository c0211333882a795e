//! Arbitrary guest frames through classification and, for what would be answered, the frame
//! builders: nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapir::config::{AddressPlan, Ipv6Plan};
use tapir::stack::frame::{self, GuestFrame, Link};

fuzz_target!(|data: &[u8]| {
    let plan = AddressPlan::default();
    let link = Link {
        ours: smoltcp_mac([0x52, 0x55, 10, 0, 2, 2]),
        guest: smoltcp_mac([2, 0, 0, 0, 0, 1]),
    };
    let mut out = Vec::new();
    match frame::classify(data, &plan).1 {
        GuestFrame::EchoRequest {
            src,
            dst,
            ident,
            seq_no,
            data: payload,
        } => {
            frame::echo_reply_v4(&mut out, link, dst, src, ident, seq_no, payload);
        }
        GuestFrame::Udp { .. } | GuestFrame::Tcp { .. } if data.len() > 14 => {
            frame::unreachable_v4(
                &mut out,
                link,
                plan.gateway,
                tapir::stack::frame::Unreachable::CommProhibited,
                &data[14..],
            );
        }
        _ => {}
    }
    let _ = frame::parse_echo_reply(data);
    // The same frame with IPv6 on: neighbour and router solicitations, ICMPv6, v6 flows.
    let _ = frame::classify_with_ipv6(data, &plan, Some(&Ipv6Plan::default()));
    let _ = frame::parse_echo_reply_v6(data);
});

fn smoltcp_mac(b: [u8; 6]) -> tapir::stack::frame::EthernetAddress {
    tapir::stack::frame::EthernetAddress(b)
}
