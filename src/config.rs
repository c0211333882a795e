//! The address plan and resource limits, validated once at start.
//!
//! The plan follows slirp4netns: inside a CIDR (default 10.0.2.0/24) the gateway is network+2,
//! the DNS forwarder network+3 and the guest network+100. The gateway stands for the host's
//! loopback unless host loopback is disabled. Everything here is plain data; nothing touches
//! the system.
//!
//! IPv6 (slirp4netns `-6`) has no flag to choose addresses: the prefix is always fd00::/64, the
//! router fd00::2 (and fe80::2 on the link), the DNS forwarder fd00::3. The guest is not given
//! an address; it forms one by SLAAC from tapir's router advertisements, so [`Ipv6Plan`] only
//! knows the prefix it must lie in.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// A user-supplied `--cidr` that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--cidr {0:?} is not of the form A.B.C.D/N")]
    CidrSyntax(String),
    #[error("--cidr {0:?}: prefix length must be between 1 and 25, so that network+100 is inside")]
    CidrPrefix(String),
    #[error("--cidr {0:?} is not a network address (like 10.0.2.0/24, not 10.0.2.100/24)")]
    CidrNotNetwork(String),
    #[error("--mtu {0} is out of range: it must be between 1280 and 65520")]
    Mtu(u32),
    #[error(
        "--limit tcp-buffer-total={total} is too small: it must hold at least two buffers of tcp-buffer={per_flow} bytes"
    )]
    TcpBufferTotal { total: usize, per_flow: usize },
    #[error(
        "-T {0} reaches the host's loopback, which --disable-host-loopback closes to the guest"
    )]
    ToHostWithoutLoopback(crate::forward::to_host::ToHost),
    #[error("-T names the guest's port {0} twice: each guest port can go to one host port only")]
    ToHostTwice(u16),
    #[error("no command given: tapir run needs one after its options, as in `tapir run -- sh`")]
    NoCommand,
    #[error("--limit {0:?} is not of the form NAME=NUMBER, as in tcp-flows=4096")]
    LimitSyntax(String),
    #[error("--limit {0:?} names no limit: the limits are {names}", names = Limits::NAMES.join(", "))]
    LimitName(String),
    #[error("--limit {spec:?} is out of range: {name} must be between {min} and {max}")]
    LimitRange {
        spec: String,
        name: &'static str,
        min: u64,
        max: u64,
    },
}

/// The guest-visible IPv4 addresses and how the gateway maps to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPlan {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// The virtual router; also the host's loopback when `host_loopback` is true.
    pub gateway: Ipv4Addr,
    /// The DNS forwarder.
    pub dns: Ipv4Addr,
    /// The address the guest is configured with.
    pub guest: Ipv4Addr,
    /// Whether the gateway address (and only it) reaches the host's 127.0.0.1.
    pub host_loopback: bool,
}

impl Default for AddressPlan {
    fn default() -> Self {
        Self::from_cidr("10.0.2.0/24", true).expect("the default CIDR is valid")
    }
}

impl AddressPlan {
    /// Parses `A.B.C.D/N` (slirp4netns rules: prefix 1..=25, a network address).
    pub fn from_cidr(cidr: &str, host_loopback: bool) -> Result<Self, ConfigError> {
        let syntax = || ConfigError::CidrSyntax(cidr.to_string());
        let (addr, len) = cidr.split_once('/').ok_or_else(syntax)?;
        let network: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix_len: u8 = len.parse().map_err(|_| syntax())?;
        if !(1..=25).contains(&prefix_len) {
            return Err(ConfigError::CidrPrefix(cidr.to_string()));
        }
        let mask = prefix_mask(prefix_len);
        let base = u32::from(network);
        if base & !mask != 0 {
            return Err(ConfigError::CidrNotNetwork(cidr.to_string()));
        }
        Ok(AddressPlan {
            network,
            prefix_len,
            gateway: Ipv4Addr::from(base + 2),
            dns: Ipv4Addr::from(base + 3),
            guest: Ipv4Addr::from(base + 100),
            host_loopback,
        })
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }

    /// Whether `ip` lies inside the guest's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix_len);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// The MAC address tapir answers with for a virtual host inside the subnet (slirp4netns's
    /// `52:55:` followed by the IPv4 address).
    pub fn virtual_mac(ip: Ipv4Addr) -> [u8; 6] {
        let o = ip.octets();
        [0x52, 0x55, o[0], o[1], o[2], o[3]]
    }
}

/// Length of the IPv6 prefix: SLAAC (RFC 4862 section 5.5.3) needs exactly 64 bits.
pub const IPV6_PREFIX_LEN: u8 = 64;

/// The guest-visible IPv6 addresses, fixed as in slirp4netns `-6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Plan {
    /// The /64 the guest autoconfigures its address in (`fd00::`).
    pub prefix: Ipv6Addr,
    /// The router, inside the prefix (`fd00::2`).
    pub gateway: Ipv6Addr,
    /// The router's link-local address (`fe80::2`): router advertisements come from it, and
    /// the guest's default route points at it.
    pub gateway_link_local: Ipv6Addr,
    /// The DNS forwarder (`fd00::3`).
    pub dns: Ipv6Addr,
    /// The MAC tapir answers neighbour solicitations for all three addresses with, and sends
    /// its IPv6 frames from (slirp4netns: `52:56:00:00:00:02`).
    pub mac: [u8; 6],
}

impl Default for Ipv6Plan {
    fn default() -> Self {
        let gateway_link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
        Ipv6Plan {
            prefix: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
            gateway: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
            gateway_link_local,
            dns: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3),
            mac: Ipv6Plan::virtual_mac(gateway_link_local),
        }
    }
}

impl Ipv6Plan {
    /// Whether `ip` lies inside the guest's /64.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        ip.segments()[..4] == self.prefix.segments()[..4]
    }

    /// Whether `ip` is in fe80::/64, where the guest's link-local address lives.
    pub fn is_link_local(ip: Ipv6Addr) -> bool {
        ip.segments()[..4] == [0xfe80, 0, 0, 0]
    }

    /// Whether `ip` is a source address the guest may use: one in the prefix or on the link,
    /// but none of tapir's own.
    pub fn is_guest_source(&self, ip: Ipv6Addr) -> bool {
        (self.contains(ip) || Ipv6Plan::is_link_local(ip)) && !self.is_virtual_host(ip)
    }

    /// Whether tapir answers for `ip` on the link (neighbour discovery, ping).
    pub fn is_virtual_host(&self, ip: Ipv6Addr) -> bool {
        ip == self.gateway || ip == self.gateway_link_local || ip == self.dns
    }

    /// Whether `ip` is one of the router's two addresses.
    pub fn is_gateway(&self, ip: Ipv6Addr) -> bool {
        ip == self.gateway || ip == self.gateway_link_local
    }

    /// slirp4netns's MAC for a virtual IPv6 host: `52:56` followed by the address's last four
    /// bytes (libslirp `in6_compute_ethaddr`).
    pub fn virtual_mac(ip: Ipv6Addr) -> [u8; 6] {
        let o = ip.octets();
        [0x52, 0x56, o[12], o[13], o[14], o[15]]
    }
}

fn prefix_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// Validates an MTU for the guest's TAP.
pub fn check_mtu(mtu: u32) -> Result<u32, ConfigError> {
    if (1280..=65520).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(ConfigError::Mtu(mtu))
    }
}

/// The smallest buffer (each direction) a TCP flow gets; less and it is refused.
pub const TCP_BUFFER_MIN: usize = 4096;
/// The largest per-flow buffer: smoltcp cannot scale a window past 1 GiB.
pub const TCP_BUFFER_MAX: usize = 1 << 30;

/// Bounds on what one guest can make tapir hold. Every limit hit is counted in `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open TCP flows, any state.
    pub max_tcp_flows: usize,
    /// TCP flows still waiting for their host connect (half-open).
    pub max_tcp_pending: usize,
    /// Bytes of each direction's buffer of a TCP flow (also its advertised window), when the
    /// total allows it (see [`crate::flow::tcp::BufferBudget`]).
    pub tcp_buffer: usize,
    /// Bytes of all TCP flows' buffers together, both directions: what a guest that fills
    /// every flow (and a host that reads none) can make tapir hold. Flows opened near the cap
    /// get smaller buffers, down to [`TCP_BUFFER_MIN`]; past it they are refused (RST).
    pub tcp_buffer_total: usize,
    /// Open UDP flows (guest 4-tuples with a host socket).
    pub max_udp_flows: usize,
    /// A UDP flow without traffic for this long is closed.
    pub udp_idle: Duration,
    /// Open ICMP echo flows.
    pub max_icmp_flows: usize,
    /// An ICMP echo flow without traffic for this long is closed.
    pub icmp_idle: Duration,
    /// Echo requests a second the guest may send to the host, all flows together (see
    /// [`crate::flow::icmp::EchoRate`]).
    pub icmp_rate: u32,
    /// Frames queued towards the guest before further ones are dropped.
    pub max_tx_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tcp_flows: 16384,
            max_tcp_pending: 1024,
            tcp_buffer: 1024 * 1024,
            // 64 flows at full size, and every other flow up to max_tcp_flows (16384) at
            // least 2 × 4 KiB: 128 MiB + 128 MiB.
            tcp_buffer_total: 256 * 1024 * 1024,
            max_udp_flows: 4096,
            udp_idle: Duration::from_secs(60),
            max_icmp_flows: 256,
            icmp_idle: Duration::from_secs(10),
            // The kernel's own global ICMP rate (net.ipv4.icmp_msgs_per_sec): far above any
            // ping a person runs (`ping -f` waits for each reply), far below a flood.
            icmp_rate: 1000,
            max_tx_frames: 1024,
        }
    }
}

impl Limits {
    /// The names `--limit NAME=N` takes, in the order `--help` lists them.
    pub const NAMES: [&'static str; 10] = [
        "tcp-flows",
        "tcp-pending",
        "tcp-buffer",
        "tcp-buffer-total",
        "udp-flows",
        "udp-idle-secs",
        "icmp-flows",
        "icmp-idle-secs",
        "icmp-rate",
        "tx-frames",
    ];

    /// Applies one `NAME=N` from the command line. The ranges keep each limit meaningful: at
    /// least one flow, a buffer that holds a segment, a queue that holds a burst; at most what
    /// a 64-bit process could plausibly hold.
    pub fn set(&mut self, spec: &str) -> Result<(), ConfigError> {
        let syntax = || ConfigError::LimitSyntax(spec.to_string());
        let (name, value) = spec.split_once('=').ok_or_else(syntax)?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let (name, min, max): (&'static str, u64, u64) = match name {
            "tcp-flows" => ("tcp-flows", 1, 1 << 20),
            "tcp-pending" => ("tcp-pending", 1, 1 << 16),
            "tcp-buffer" => ("tcp-buffer", TCP_BUFFER_MIN as u64, TCP_BUFFER_MAX as u64),
            "tcp-buffer-total" => ("tcp-buffer-total", 2 * TCP_BUFFER_MIN as u64, 1 << 40),
            "udp-flows" => ("udp-flows", 1, 1 << 20),
            "udp-idle-secs" => ("udp-idle-secs", 1, 86400),
            "icmp-flows" => ("icmp-flows", 1, 1 << 16),
            "icmp-idle-secs" => ("icmp-idle-secs", 1, 86400),
            // 0 is refused rather than meaning "off": a rate of 2^20 a second is off in effect.
            "icmp-rate" => ("icmp-rate", 1, 1 << 20),
            "tx-frames" => ("tx-frames", 16, 1 << 16),
            _ => return Err(ConfigError::LimitName(spec.to_string())),
        };
        let n = value
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or(ConfigError::LimitRange {
                spec: spec.to_string(),
                name,
                min,
                max,
            })?;
        // In range, so it fits a usize on any target tapir builds for (64-bit Linux).
        let count = usize::try_from(n).unwrap_or(usize::MAX);
        match name {
            "tcp-flows" => self.max_tcp_flows = count,
            "tcp-pending" => self.max_tcp_pending = count,
            "tcp-buffer" => self.tcp_buffer = count,
            "tcp-buffer-total" => self.tcp_buffer_total = count,
            "udp-flows" => self.max_udp_flows = count,
            "udp-idle-secs" => self.udp_idle = Duration::from_secs(n),
            "icmp-flows" => self.max_icmp_flows = count,
            "icmp-idle-secs" => self.icmp_idle = Duration::from_secs(n),
            "icmp-rate" => self.icmp_rate = u32::try_from(n).unwrap_or(u32::MAX),
            _ => self.max_tx_frames = count,
        }
        Ok(())
    }

    /// The defaults with every `NAME=N` of `specs` applied in order (a later one wins).
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        for spec in specs {
            limits.set(spec.as_ref())?;
        }
        if limits.tcp_buffer_total / 2 < limits.tcp_buffer {
            return Err(ConfigError::TcpBufferTotal {
                total: limits.tcp_buffer_total,
                per_flow: limits.tcp_buffer,
            });
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn limits_from_the_command_line() {
        let l = Limits::from_specs(&[
            "tcp-flows=64",
            "tcp-pending=8",
            "tcp-buffer=65536",
            "udp-flows=32",
            "udp-idle-secs=5",
            "icmp-flows=4",
            "icmp-idle-secs=2",
            "icmp-rate=5",
            "tx-frames=128",
            "tcp-flows=65",
        ])
        .unwrap();
        assert_eq!(l.max_tcp_flows, 65, "a later --limit wins");
        assert_eq!(l.max_tcp_pending, 8);
        assert_eq!(l.tcp_buffer, 65536);
        assert_eq!(l.max_udp_flows, 32);
        assert_eq!(l.udp_idle, Duration::from_secs(5));
        assert_eq!(l.max_icmp_flows, 4);
        assert_eq!(l.icmp_idle, Duration::from_secs(2));
        assert_eq!(l.icmp_rate, 5);
        assert_eq!(l.max_tx_frames, 128);
        assert_eq!(Limits::from_specs::<&str>(&[]).unwrap(), Limits::default());
    }

    #[test]
    fn bad_limits_name_the_value() {
        for bad in [
            "tcp-flows",
            "tcp-flows=",
            "tcp-flows=-1",
            "tcp-flows=1k",
            "=5",
        ] {
            let e = Limits::from_specs(&[bad]).unwrap_err();
            assert_eq!(e, ConfigError::LimitSyntax(bad.into()), "{bad}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let e = Limits::from_specs(&["tcp_flows=5"]).unwrap_err();
        assert_eq!(e, ConfigError::LimitName("tcp_flows=5".into()));
        assert!(e.to_string().contains("tcp-flows, tcp-pending"), "{e}");
        for bad in [
            "tcp-flows=0",
            "tcp-buffer=100",
            "tx-frames=99999999999999999999999",
            "udp-idle-secs=0",
            "icmp-rate=0",
            "icmp-rate=1048577",
        ] {
            let e = Limits::from_specs(&[bad]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::LimitRange { spec, .. } if spec == bad),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains("must be between"), "{e}");
        }
    }

    #[test]
    fn default_plan_matches_slirp4netns() {
        let p = AddressPlan::default();
        assert_eq!(p.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(p.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(p.guest, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(p.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(p.contains(Ipv4Addr::new(10, 0, 2, 200)));
        assert!(!p.contains(Ipv4Addr::new(10, 0, 3, 1)));
    }

    #[test]
    fn other_cidr() {
        let p = AddressPlan::from_cidr("192.168.128.0/17", false).unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(192, 168, 128, 2));
        assert_eq!(p.guest, Ipv4Addr::new(192, 168, 128, 100));
        assert!(!p.host_loopback);
    }

    #[test]
    fn bad_cidrs_name_the_value() {
        let e = AddressPlan::from_cidr("10.0.2.100/24", true).unwrap_err();
        assert_eq!(e, ConfigError::CidrNotNetwork("10.0.2.100/24".into()));
        assert!(e.to_string().contains("10.0.2.100/24"));
        assert!(matches!(
            AddressPlan::from_cidr("10.0.2.0/26", true),
            Err(ConfigError::CidrPrefix(_))
        ));
        assert!(matches!(
            AddressPlan::from_cidr("10.0.2.0/0", true),
            Err(ConfigError::CidrPrefix(_))
        ));
        for bad in [
            "10.0.2.0",
            "10.0.2/24",
            "10.0.2.0/x",
            "10.0.2.0/",
            "300.0.0.0/8",
            "10.0.2.0/024",
        ] {
            assert!(
                matches!(
                    AddressPlan::from_cidr(bad, true),
                    Err(ConfigError::CidrSyntax(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn virtual_mac_embeds_the_address() {
        assert_eq!(
            AddressPlan::virtual_mac(Ipv4Addr::new(10, 0, 2, 2)),
            [0x52, 0x55, 10, 0, 2, 2]
        );
    }

    #[test]
    fn ipv6_plan_matches_slirp4netns() {
        let p = Ipv6Plan::default();
        assert_eq!(p.gateway, "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.gateway_link_local, "fe80::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dns, "fd00::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.mac, [0x52, 0x56, 0, 0, 0, 2]);
        let slaac: Ipv6Addr = "fd00::5054:ff:fe12:3456".parse().unwrap();
        let link_local: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
        assert!(p.is_guest_source(slaac));
        assert!(p.is_guest_source(link_local));
        assert!(!p.is_guest_source("fd00:0:0:1::5".parse().unwrap()));
        assert!(!p.is_guest_source("fe80:1::5".parse().unwrap()));
        assert!(!p.is_guest_source("2001:db8::1".parse().unwrap()));
        assert!(!p.is_guest_source(p.dns));
        assert!(!p.is_guest_source(p.gateway_link_local));
        assert!(!p.is_guest_source(Ipv6Addr::UNSPECIFIED));
        assert!(p.is_virtual_host(p.dns) && !p.is_gateway(p.dns));
    }

    #[test]
    fn tcp_buffer_limits_are_checked() {
        let d = Limits::default();
        assert_eq!(Limits::from_specs::<&str>(&[]), Ok(d));
        let l = Limits::from_specs(&["tcp-buffer=65536", "tcp-buffer-total=1048576"]).unwrap();
        assert_eq!((l.tcp_buffer, l.tcp_buffer_total), (65536, 1 << 20));
        let e = Limits::from_specs(&["tcp-buffer=100"]).unwrap_err();
        assert!(e.to_string().contains("tcp-buffer=100"), "{e}");
        assert!(Limits::from_specs(&["tcp-buffer=1073741825"]).is_err());
        // The default total with a larger per-flow buffer still has to hold two of them.
        let e = Limits::from_specs(&["tcp-buffer=1073741824"]).unwrap_err();
        assert!(e.to_string().contains("268435456"), "{e}");
        assert!(Limits::from_specs(&["tcp-buffer-total=2097152"]).is_ok());
        assert!(Limits::from_specs(&["tcp-buffer-total=2097151"]).is_err());
    }

    #[test]
    fn mtu_range() {
        assert_eq!(check_mtu(1500), Ok(1500));
        assert_eq!(check_mtu(65520), Ok(65520));
        assert_eq!(check_mtu(65521), Err(ConfigError::Mtu(65521)));
        assert_eq!(check_mtu(500), Err(ConfigError::Mtu(500)));
    }
}
