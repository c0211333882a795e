//! Where a guest's destination really is: the address map from the guest's view to the host's.
//!
//! - the gateway (10.0.2.2) is the host's 127.0.0.1, unless host loopback is disabled;
//! - the DNS address (10.0.2.3) port 53 is tapir's forwarder for UDP, and the host's first
//!   nameserver for TCP (a resolver retrying a truncated answer);
//! - other addresses in the guest's subnet have nobody behind them;
//! - loopback, unspecified, multicast and broadcast destinations are never carried, and with
//!   host loopback disabled neither are the host's own interface addresses (which would reach
//!   the host's services just like loopback does);
//! - everything else is carried to the same address on the host's side.
//!
//! Pure: the host's addresses and nameservers are read by the caller and passed in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{AddressPlan, Ipv6Plan};

/// What to do with a new flow to a guest-chosen destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Carry it on a host socket to this address.
    Host(SocketAddr),
    /// UDP to the DNS address: tapir's forwarder answers.
    DnsRelay,
    /// Answered by tapir itself (ping to a virtual host).
    Local,
    /// Refused: the guest gets a RST or an ICMP unreachable.
    Refuse,
}

#[derive(Debug, Clone)]
pub struct AddressMap {
    plan: AddressPlan,
    v6: Option<Ipv6Plan>,
    host_addrs: Vec<IpAddr>,
    dns_tcp: Option<SocketAddr>,
}

impl AddressMap {
    /// `host_addrs`: the host's own interface addresses; `nameservers`: the host's resolvers.
    pub fn new(plan: AddressPlan, host_addrs: Vec<IpAddr>, nameservers: &[IpAddr]) -> Self {
        AddressMap {
            plan,
            v6: None,
            host_addrs,
            dns_tcp: nameservers.first().map(|ip| SocketAddr::new(*ip, 53)),
        }
    }

    /// With IPv6 on, its gateway is the host's ::1 (under the same loopback policy) and its
    /// DNS address is the forwarder.
    pub fn with_ipv6(mut self, v6: Ipv6Plan) -> Self {
        self.v6 = Some(v6);
        self
    }

    /// The host's resolvers changed: TCP to the DNS address goes to the first.
    pub fn set_nameservers(&mut self, nameservers: &[IpAddr]) {
        self.dns_tcp = nameservers.first().map(|ip| SocketAddr::new(*ip, 53));
    }

    pub fn plan(&self) -> &AddressPlan {
        &self.plan
    }

    pub fn tcp(&self, dst: SocketAddr) -> Route {
        self.transport(dst, false)
    }

    pub fn udp(&self, dst: SocketAddr) -> Route {
        self.transport(dst, true)
    }

    fn transport(&self, dst: SocketAddr, udp: bool) -> Route {
        let ip = match dst.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => return self.transport_v6(ip, dst, udp),
        };
        if ip == self.plan.gateway {
            return if self.plan.host_loopback {
                Route::Host(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port()))
            } else {
                Route::Refuse
            };
        }
        if ip == self.plan.dns {
            return match (dst.port(), udp, self.dns_tcp) {
                (53, true, _) => Route::DnsRelay,
                (53, false, Some(upstream)) => Route::Host(upstream),
                _ => Route::Refuse,
            };
        }
        if self.plan.contains(ip) {
            return Route::Refuse;
        }
        self.remote(dst)
    }

    fn transport_v6(&self, ip: Ipv6Addr, dst: SocketAddr, udp: bool) -> Route {
        let Some(v6) = &self.v6 else {
            return self.remote(dst);
        };
        if v6.is_gateway(ip) {
            return if self.plan.host_loopback {
                Route::Host(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), dst.port()))
            } else {
                Route::Refuse
            };
        }
        if ip == v6.dns {
            return match (dst.port(), udp, self.dns_tcp) {
                (53, true, _) => Route::DnsRelay,
                (53, false, Some(upstream)) => Route::Host(upstream),
                _ => Route::Refuse,
            };
        }
        if v6.contains(ip) || Ipv6Plan::is_link_local(ip) {
            return Route::Refuse;
        }
        self.remote(dst)
    }

    /// Ping: virtual hosts answer themselves; others as for TCP and UDP.
    pub fn icmp(&self, dst: IpAddr) -> Route {
        let local = match (dst, &self.v6) {
            (IpAddr::V4(v4), _) => v4 == self.plan.gateway || v4 == self.plan.dns,
            (IpAddr::V6(v6), Some(plan)) => plan.is_virtual_host(v6),
            (IpAddr::V6(_), None) => false,
        };
        if local {
            return Route::Local;
        }
        let inside = match (dst, &self.v6) {
            (IpAddr::V4(v4), _) => self.plan.contains(v4),
            (IpAddr::V6(v6), Some(plan)) => plan.contains(v6) || Ipv6Plan::is_link_local(v6),
            (IpAddr::V6(_), None) => false,
        };
        if inside {
            return Route::Refuse;
        }
        self.remote(SocketAddr::new(dst, 0))
    }

    fn remote(&self, dst: SocketAddr) -> Route {
        if never_carried(dst.ip()) {
            return Route::Refuse;
        }
        if !self.plan.host_loopback && self.host_addrs.contains(&dst.ip().to_canonical()) {
            return Route::Refuse;
        }
        Route::Host(dst)
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn never_carried(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.octets()[0] == 0 || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || v6.is_multicast(),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn map(host_loopback: bool) -> AddressMap {
        let plan = AddressPlan::from_cidr("10.0.2.0/24", host_loopback).unwrap();
        AddressMap::new(
            plan,
            vec!["198.51.100.1".parse().unwrap()],
            &["127.0.0.53".parse().unwrap()],
        )
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn gateway_is_host_loopback() {
        assert_eq!(
            map(true).tcp(sa("10.0.2.2:8080")),
            Route::Host(sa("127.0.0.1:8080"))
        );
        assert_eq!(
            map(true).udp(sa("10.0.2.2:9")),
            Route::Host(sa("127.0.0.1:9"))
        );
    }

    #[test]
    fn disabled_host_loopback_refuses_every_way_to_the_host() {
        let m = map(false);
        assert_eq!(m.tcp(sa("10.0.2.2:8080")), Route::Refuse);
        assert_eq!(m.tcp(sa("127.0.0.1:8080")), Route::Refuse);
        assert_eq!(m.tcp(sa("0.0.0.0:8080")), Route::Refuse);
        assert_eq!(m.tcp(sa("198.51.100.1:8080")), Route::Refuse);
        assert_eq!(m.tcp(sa("[::1]:8080")), Route::Refuse);
        assert_eq!(m.tcp(sa("[::ffff:198.51.100.1]:8080")), Route::Refuse);
        assert_eq!(m.icmp("198.51.100.1".parse().unwrap()), Route::Refuse);
        // Ping to the gateway is still answered, as slirp4netns does.
        assert_eq!(m.icmp("10.0.2.2".parse().unwrap()), Route::Local);
        let m = m.with_ipv6(Ipv6Plan::default());
        assert_eq!(m.tcp(sa("[fd00::2]:8080")), Route::Refuse);
        assert_eq!(m.icmp("fd00::2".parse().unwrap()), Route::Local);
        // Other hosts stay reachable.
        assert_eq!(
            m.tcp(sa("198.51.100.10:80")),
            Route::Host(sa("198.51.100.10:80"))
        );
    }

    #[test]
    fn host_addresses_are_reachable_when_loopback_is_allowed() {
        assert_eq!(
            map(true).tcp(sa("198.51.100.1:80")),
            Route::Host(sa("198.51.100.1:80"))
        );
    }

    #[test]
    fn dns_address() {
        let m = map(false);
        assert_eq!(m.udp(sa("10.0.2.3:53")), Route::DnsRelay);
        // TCP goes to the first nameserver even when it is on the host's loopback.
        assert_eq!(m.tcp(sa("10.0.2.3:53")), Route::Host(sa("127.0.0.53:53")));
        assert_eq!(m.tcp(sa("10.0.2.3:80")), Route::Refuse);
        assert_eq!(m.udp(sa("10.0.2.3:54")), Route::Refuse);
        let none = AddressMap::new(AddressPlan::default(), vec![], &[]);
        assert_eq!(none.tcp(sa("10.0.2.3:53")), Route::Refuse);
    }

    #[test]
    fn ipv6_plan() {
        let m = map(true).with_ipv6(Ipv6Plan::default());
        assert_eq!(m.tcp(sa("[fd00::2]:8080")), Route::Host(sa("[::1]:8080")));
        assert_eq!(m.udp(sa("[fd00::3]:53")), Route::DnsRelay);
        assert_eq!(m.tcp(sa("[fd00::3]:53")), Route::Host(sa("127.0.0.53:53")));
        assert_eq!(m.tcp(sa("[fd00::77]:80")), Route::Refuse);
        assert_eq!(m.tcp(sa("[fe80::1]:80")), Route::Refuse);
        assert_eq!(
            m.tcp(sa("[2001:db8::1]:80")),
            Route::Host(sa("[2001:db8::1]:80"))
        );
        assert_eq!(m.icmp("fe80::2".parse().unwrap()), Route::Local);
        assert_eq!(m.icmp("fd00::3".parse().unwrap()), Route::Local);
        assert_eq!(m.icmp("fd00::9".parse().unwrap()), Route::Refuse);
    }

    #[test]
    fn nothing_else_lives_in_the_subnet() {
        let m = map(true);
        assert_eq!(m.tcp(sa("10.0.2.50:80")), Route::Refuse);
        assert_eq!(m.udp(sa("10.0.2.255:67")), Route::Refuse);
        assert_eq!(m.icmp("10.0.2.3".parse().unwrap()), Route::Local);
        assert_eq!(m.udp(sa("224.0.0.251:5353")), Route::Refuse);
        assert_eq!(m.udp(sa("255.255.255.255:67")), Route::Refuse);
    }
}
