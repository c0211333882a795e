//! Counters: what the guest sent that was dropped (and why), limits hit, flows opened.
//!
//! Guest misbehaviour is counted, never an error: a hostile guest must not be able to stop the
//! loop, and an operator wants to see what happened. Logging a limit hit happens once per
//! reason, not per packet (see [`Stats::drop`]).

use std::fmt;

/// Why a frame from the guest (or a flow it asked for) was not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Too short or inconsistent headers.
    Malformed,
    /// An EtherType, IP protocol or ICMP type tapir does not carry (IPv6 for now, IGMP, ...).
    Unsupported,
    /// An IP fragment: tapir does not reassemble.
    Fragment,
    /// An ARP request for an address nobody answers (only the gateway and DNS exist).
    ArpNotOurs,
    /// A source address other than the guest's (spoofing, or a misconfigured guest).
    Spoofed,
    /// A destination the address plan refuses (host loopback disabled, nothing there).
    Refused,
    /// TCP segment for a flow tapir does not know and that is not a SYN.
    NoFlow,
    /// Limit: too many TCP flows.
    TcpFlowLimit,
    /// Limit: too many half-open TCP flows (host connect pending).
    TcpPendingLimit,
    /// Limit: the TCP buffer total left no room for a new flow's buffers.
    TcpBufferLimit,
    /// Limit: too many UDP flows.
    UdpFlowLimit,
    /// Limit: too many ICMP echo flows.
    IcmpFlowLimit,
    /// Limit: echo requests faster than `--limit icmp-rate`.
    IcmpRateLimit,
    /// Limit: the queue towards the guest was full.
    TxQueueFull,
    /// The host refused to open a socket for the flow (e.g. ping sockets not allowed).
    HostSocket,
    /// The host socket of a UDP or ICMP flow refused a datagram: its buffer was full (a
    /// flood), or it reported an earlier error (a port unreachable).
    HostSend,
    /// The DNS forwarder refused the query (malformed, or too many outstanding).
    Dns,
    /// A DHCP message the server does not answer: unparsable, of a type a server is not sent,
    /// or a DISCOVER with no address left to offer.
    Dhcp,
    /// The egress policy denied a new flow.
    Denied,
}

impl DropReason {
    pub const ALL: [DropReason; 19] = [
        DropReason::Malformed,
        DropReason::Unsupported,
        DropReason::Fragment,
        DropReason::ArpNotOurs,
        DropReason::Spoofed,
        DropReason::Refused,
        DropReason::NoFlow,
        DropReason::TcpFlowLimit,
        DropReason::TcpPendingLimit,
        DropReason::TcpBufferLimit,
        DropReason::UdpFlowLimit,
        DropReason::IcmpFlowLimit,
        DropReason::IcmpRateLimit,
        DropReason::TxQueueFull,
        DropReason::HostSocket,
        DropReason::HostSend,
        DropReason::Dns,
        DropReason::Dhcp,
        DropReason::Denied,
    ];

    /// A snake_case name for counters in the API.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "drop_malformed",
            DropReason::Unsupported => "drop_unsupported",
            DropReason::Fragment => "drop_fragment",
            DropReason::ArpNotOurs => "drop_arp_not_ours",
            DropReason::Spoofed => "drop_spoofed",
            DropReason::Refused => "drop_refused",
            DropReason::NoFlow => "drop_no_flow",
            DropReason::TcpFlowLimit => "limit_tcp_flows",
            DropReason::TcpPendingLimit => "limit_tcp_pending",
            DropReason::TcpBufferLimit => "limit_tcp_buffers",
            DropReason::UdpFlowLimit => "limit_udp_flows",
            DropReason::IcmpFlowLimit => "limit_icmp_flows",
            DropReason::IcmpRateLimit => "limit_icmp_rate",
            DropReason::TxQueueFull => "limit_tx_queue",
            DropReason::HostSocket => "drop_host_socket",
            DropReason::HostSend => "drop_host_send",
            DropReason::Dns => "drop_dns",
            DropReason::Dhcp => "drop_dhcp",
            DropReason::Denied => "policy_denied",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// Whether hitting this is an operator-visible limit worth a warning.
    fn is_limit(self) -> bool {
        matches!(
            self,
            DropReason::TcpFlowLimit
                | DropReason::TcpPendingLimit
                | DropReason::TcpBufferLimit
                | DropReason::UdpFlowLimit
                | DropReason::IcmpFlowLimit
                | DropReason::IcmpRateLimit
                | DropReason::TxQueueFull
                | DropReason::HostSocket
        )
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    drops: [u64; DropReason::ALL.len()],
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub tcp_opened: u64,
    pub tcp_closed: u64,
    /// TCP flows opened with buffers smaller than `Limits::tcp_buffer` (the total was near).
    pub tcp_small_buffers: u64,
    /// Forwards from host loopback clients spliced to the guest's loopback (`flow::splice`).
    pub tcp_spliced: u64,
    /// Bytes those spliced connections moved, both directions.
    pub bytes_spliced: u64,
    /// Bytes the other TCP flows moved to and from their host sockets.
    pub bytes_tcp_host: u64,
    pub udp_opened: u64,
    pub icmp_opened: u64,
}

impl Stats {
    /// Counts a drop; the first limit hit of each kind is logged as a warning.
    pub fn drop(&mut self, reason: DropReason) {
        self.drop_many(reason, 1);
    }

    /// `count` drops for one reason at once (none: nothing happens).
    pub fn drop_many(&mut self, reason: DropReason, count: u64) {
        if count == 0 {
            return;
        }
        let n = &mut self.drops[reason.index()];
        let first = *n == 0;
        *n += count;
        if first && reason.is_limit() {
            log::warn!("limit hit: {reason:?} (counted from now on, logged once)");
        } else {
            log::trace!("dropped: {reason:?}");
        }
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frames in {} out {}, tcp flows {} opened {} closed, {} spliced, udp {} opened, icmp {} opened",
            self.frames_in,
            self.frames_out,
            self.tcp_opened,
            self.tcp_closed,
            self.tcp_spliced,
            self.udp_opened,
            self.icmp_opened,
        )?;
        for r in DropReason::ALL {
            let n = self.drops(r);
            if n > 0 {
                write!(f, ", {r:?} {n}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn counts_each_reason_apart() {
        let mut s = Stats::default();
        s.drop(DropReason::Malformed);
        s.drop(DropReason::Malformed);
        s.drop(DropReason::UdpFlowLimit);
        assert_eq!(s.drops(DropReason::Malformed), 2);
        assert_eq!(s.drops(DropReason::UdpFlowLimit), 1);
        assert_eq!(s.drops(DropReason::Dns), 0);
        assert!(s.to_string().contains("Malformed 2"));
    }
}
