//! Address management for the bridge networks: the subnet type and a pure allocator.
//!
//! The allocator takes the subnet, the gateway and the addresses already leased, and returns
//! the lowest free host address: never the network address, the broadcast address or the
//! gateway. It holds no state; the leases it is given come from the lease file (`state.rs`),
//! which the caller has locked, so two runs never get the same address.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: address with the host bits zero, and a prefix length of 1 to 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// A subnet or an allocation that cannot be had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("--subnet {0:?} is not of the form A.B.C.D/N")]
    Syntax(String),
    #[error("--subnet {0:?}: the prefix length must be between 1 and 30")]
    Prefix(String),
    #[error("--subnet {0:?} is not a network address (host bits are set)")]
    NotNetwork(String),
    #[error("the gateway {gateway} is not a host address of the subnet {subnet}")]
    GatewayOutside {
        gateway: Ipv4Addr,
        subnet: Ipv4Subnet,
    },
    #[error("the subnet {0} has no free address left")]
    Exhausted(Ipv4Subnet),
}

impl Ipv4Subnet {
    /// A subnet from its parts; `None` if the prefix is out of range or host bits are set.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if !(1..=30).contains(&prefix_len) {
            return None;
        }
        let subnet = Ipv4Subnet {
            network,
            prefix_len,
        };
        (u32::from(network) & !subnet.mask() == 0).then_some(subnet)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    /// Inside the subnet and neither its network nor its broadcast address.
    pub fn is_host(&self, addr: Ipv4Addr) -> bool {
        self.contains(addr) && addr != self.network && addr != self.broadcast()
    }

    /// True if the two subnets share any address.
    pub fn overlaps(&self, other: &Ipv4Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = IpamError;

    fn from_str(text: &str) -> Result<Self, IpamError> {
        let syntax = || IpamError::Syntax(text.to_string());
        let (addr, len) = text.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let len: u8 = len.parse().map_err(|_| syntax())?;
        if !(1..=30).contains(&len) {
            return Err(IpamError::Prefix(text.to_string()));
        }
        Ipv4Subnet::new(addr, len).ok_or_else(|| IpamError::NotNetwork(text.to_string()))
    }
}

/// Checks that `gateway` can be the bridge's address in `subnet`.
pub fn check_gateway(subnet: Ipv4Subnet, gateway: Ipv4Addr) -> Result<(), IpamError> {
    if subnet.is_host(gateway) {
        Ok(())
    } else {
        Err(IpamError::GatewayOutside { gateway, subnet })
    }
}

/// The lowest host address of `subnet` that is neither `gateway` nor in `taken`.
pub fn allocate(
    subnet: Ipv4Subnet,
    gateway: Ipv4Addr,
    taken: &[Ipv4Addr],
) -> Result<Ipv4Addr, IpamError> {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast());
    (first..last)
        .map(Ipv4Addr::from)
        .find(|a| *a != gateway && !taken.contains(a))
        .ok_or(IpamError::Exhausted(subnet))
}

#[cfg(test)]
mod test {
    use super::*;

    fn net(s: &str) -> Ipv4Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_rejects_subnets_naming_the_text() {
        let s = net("172.18.0.0/16");
        assert_eq!(s.to_string(), "172.18.0.0/16");
        assert_eq!(s.first_host(), Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(172, 18, 255, 255));
        assert_eq!(
            "172.18.0.1/16"
                .parse::<Ipv4Subnet>()
                .unwrap_err()
                .to_string(),
            "--subnet \"172.18.0.1/16\" is not a network address (host bits are set)"
        );
        assert_eq!(
            "10.0.0.0/31".parse::<Ipv4Subnet>(),
            Err(IpamError::Prefix("10.0.0.0/31".into()))
        );
        assert_eq!(
            "10.0.0/8".parse::<Ipv4Subnet>(),
            Err(IpamError::Syntax("10.0.0/8".into()))
        );
        assert_eq!(
            "10.0.0.0".parse::<Ipv4Subnet>(),
            Err(IpamError::Syntax("10.0.0.0".into()))
        );
    }

    #[test]
    fn allocates_lowest_free_skipping_gateway_and_leases() {
        let s = net("10.9.0.0/29");
        let gw = s.first_host();
        assert_eq!(allocate(s, gw, &[]), Ok(Ipv4Addr::new(10, 9, 0, 2)));
        let taken = [Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 4)];
        assert_eq!(allocate(s, gw, &taken), Ok(Ipv4Addr::new(10, 9, 0, 3)));
        // A gateway in the middle is skipped too.
        assert_eq!(
            allocate(
                s,
                Ipv4Addr::new(10, 9, 0, 5),
                &[1, 2, 3, 4].map(|h| Ipv4Addr::new(10, 9, 0, h))
            ),
            Ok(Ipv4Addr::new(10, 9, 0, 6))
        );
    }

    #[test]
    fn exhaustion_never_hands_out_network_or_broadcast() {
        let s = net("10.9.0.0/30");
        let gw = s.first_host();
        assert_eq!(allocate(s, gw, &[]), Ok(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(
            allocate(s, gw, &[Ipv4Addr::new(10, 9, 0, 2)]),
            Err(IpamError::Exhausted(s))
        );
    }

    #[test]
    fn gateway_must_be_a_host_of_the_subnet() {
        let s = net("10.9.0.0/24");
        assert!(check_gateway(s, Ipv4Addr::new(10, 9, 0, 254)).is_ok());
        assert!(check_gateway(s, Ipv4Addr::new(10, 9, 0, 255)).is_err());
        assert!(check_gateway(s, Ipv4Addr::new(10, 9, 0, 0)).is_err());
        assert!(check_gateway(s, Ipv4Addr::new(10, 9, 1, 1)).is_err());
    }

    #[test]
    fn overlap() {
        assert!(net("10.0.0.0/8").overlaps(&net("10.9.0.0/16")));
        assert!(net("10.9.0.0/16").overlaps(&net("10.0.0.0/8")));
        assert!(!net("10.9.0.0/16").overlaps(&net("10.10.0.0/16")));
    }
}
