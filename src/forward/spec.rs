//! The `-p` port-forward option: `[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`.
//!
//! The grammar is docker's and podman's single-port form. The host IP defaults to `0.0.0.0`
//! (every IPv4 address, as docker, podman and slirp4netns's `add_hostfwd` do) and the protocol to
//! tcp. An IPv6 host IP must be in brackets (`[::1]:8080:80`), because without them the colons
//! of the address and of the ports cannot be told apart by a reader, even where a parser could.
//!
//! Port 0 is rejected on both sides: on the host it would mean "any free port", which nobody
//! could then connect to without asking tapir, and slirp4netns rejects it too (slirp4netns#354).
//!
//! `Display` prints the full form (`0.0.0.0:8080:80/tcp`, `[::1]:53:53/udp`), which parses back
//! to the same value.
//!
//! Not supported: port ranges (`8000-8010:80-90`), a guest IP, scope ids in IPv6 host IPs.
//! Each is rejected with an error naming the text rather than guessed at.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The transport a forward carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One host port forwarded to one guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub proto: Proto,
    /// Where tapir listens on the host.
    pub host: SocketAddr,
    /// The port connections are delivered to on the guest's address.
    pub guest_port: u16,
}

/// A `-p` value that cannot be used; each message names the whole value and the bad part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("-p {0:?}: expected [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]")]
    Syntax(String),
    #[error("-p {spec:?}: host IP {ip:?} is not an IPv4 address or an IPv6 address in brackets")]
    HostIp { spec: String, ip: String },
    #[error("-p {spec:?}: host port {port} is not between 1 and 65535")]
    HostPort { spec: String, port: String },
    #[error("-p {spec:?}: guest port {port} is not between 1 and 65535")]
    GuestPort { spec: String, port: String },
    #[error("-p {spec:?}: protocol {proto:?} is not tcp or udp")]
    Proto { spec: String, proto: String },
}

impl FromStr for PortForward {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let syntax = || SpecError::Syntax(spec.to_string());

        let (addr_ports, proto) = match spec.rsplit_once('/') {
            None => (spec, Proto::Tcp),
            Some((rest, "tcp")) => (rest, Proto::Tcp),
            Some((rest, "udp")) => (rest, Proto::Udp),
            Some((_, other)) => {
                return Err(SpecError::Proto {
                    spec: spec.to_string(),
                    proto: other.to_string(),
                });
            }
        };

        let (ip, ports) = split_host_ip(spec, addr_ports)?;
        let (host_port, guest_port) = ports.split_once(':').ok_or_else(syntax)?;
        // After a bracketed IP the remainder may still hold a stray field: `[::1]:1:2:3`.
        if host_port.is_empty() || guest_port.is_empty() || guest_port.contains(':') {
            return Err(syntax());
        }
        let host_port = parse_port(host_port).ok_or_else(|| SpecError::HostPort {
            spec: spec.to_string(),
            port: host_port.to_string(),
        })?;
        let guest_port = parse_port(guest_port).ok_or_else(|| SpecError::GuestPort {
            spec: spec.to_string(),
            port: guest_port.to_string(),
        })?;

        Ok(PortForward {
            proto,
            host: SocketAddr::new(ip, host_port),
            guest_port,
        })
    }
}

/// Splits an optional leading host IP off `HOST_IP:HOST_PORT:GUEST_PORT`, returning the IP
/// (0.0.0.0 when absent) and the `HOST_PORT:GUEST_PORT` remainder.
fn split_host_ip<'a>(spec: &str, text: &'a str) -> Result<(IpAddr, &'a str), SpecError> {
    let bad_ip = |ip: &str| SpecError::HostIp {
        spec: spec.to_string(),
        ip: ip.to_string(),
    };

    if let Some(bracketed) = text.strip_prefix('[') {
        let (ip, rest) = bracketed
            .split_once(']')
            .ok_or_else(|| SpecError::Syntax(spec.to_string()))?;
        let ports = rest
            .strip_prefix(':')
            .ok_or_else(|| SpecError::Syntax(spec.to_string()))?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| bad_ip(ip))?;
        return Ok((IpAddr::V6(ip), ports));
    }

    // The last colon separates the ports; a colon before that ends the IP.
    let (before_guest, _) = text
        .rsplit_once(':')
        .ok_or_else(|| SpecError::Syntax(spec.to_string()))?;
    match before_guest.rsplit_once(':') {
        None => Ok((IpAddr::V4(Ipv4Addr::UNSPECIFIED), text)),
        Some((ip, _)) => {
            let parsed: Ipv4Addr = ip.parse().map_err(|_| bad_ip(ip))?;
            Ok((IpAddr::V4(parsed), &text[ip.len() + 1..]))
        }
    }
}

/// A port in 1..=65535 written as plain decimal digits (`u16::from_str` would also take `+80`).
pub(super) fn parse_port(text: &str) -> Option<u16> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand rather than through SocketAddr's Display, which would print an IPv6
        // scope id (`%2`) that the parser does not accept.
        match self.host.ip() {
            IpAddr::V4(ip) => write!(f, "{ip}")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]")?,
        }
        write!(
            f,
            ":{}:{}/{}",
            self.host.port(),
            self.guest_port,
            self.proto
        )
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn parse(s: &str) -> Result<PortForward, SpecError> {
        s.parse()
    }

    fn fwd(proto: Proto, host: &str, guest_port: u16) -> PortForward {
        PortForward {
            proto,
            host: host.parse().unwrap(),
            guest_port,
        }
    }

    #[test]
    fn defaults_to_all_ipv4_addresses_and_tcp() {
        assert_eq!(parse("8080:80"), Ok(fwd(Proto::Tcp, "0.0.0.0:8080", 80)));
    }

    #[test]
    fn host_ip_and_protocol() {
        assert_eq!(
            parse("127.0.0.1:8080:80/udp"),
            Ok(fwd(Proto::Udp, "127.0.0.1:8080", 80))
        );
        assert_eq!(parse("53:53/udp"), Ok(fwd(Proto::Udp, "0.0.0.0:53", 53)));
        assert_eq!(
            parse("10.1.2.3:1:65535/tcp"),
            Ok(fwd(Proto::Tcp, "10.1.2.3:1", 65535))
        );
    }

    #[test]
    fn ipv6_host_in_brackets() {
        assert_eq!(
            parse("[::1]:8080:80"),
            Ok(fwd(Proto::Tcp, "[::1]:8080", 80))
        );
        assert_eq!(
            parse("[::]:53:5353/udp"),
            Ok(fwd(Proto::Udp, "[::]:53", 5353))
        );
        assert_eq!(
            parse("[::1]8080:80"),
            Err(SpecError::Syntax("[::1]8080:80".into())),
            "a colon must follow the bracket"
        );
        assert!(matches!(parse("[::1:8080:80"), Err(SpecError::Syntax(_))));
    }

    #[test]
    fn unbracketed_ipv6_is_refused_with_the_ip_named() {
        let e = parse("::1:8080:80").unwrap_err();
        assert_eq!(
            e,
            SpecError::HostIp {
                spec: "::1:8080:80".into(),
                ip: "::1".into()
            }
        );
        assert!(matches!(
            parse("fe80::1:8080:80"),
            Err(SpecError::HostIp { .. })
        ));
        // Brackets hold IPv6 only.
        assert!(matches!(
            parse("[127.0.0.1]:8080:80"),
            Err(SpecError::HostIp { .. })
        ));
        assert!(matches!(
            parse("[fe80::1%eth0]:8080:80"),
            Err(SpecError::HostIp { .. })
        ));
    }

    #[test]
    fn messages_are_one_sentence_naming_the_text() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("8080"),
            r#"-p "8080": expected [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]"#
        );
        assert_eq!(
            msg("70000:80"),
            r#"-p "70000:80": host port 70000 is not between 1 and 65535"#
        );
        assert_eq!(
            msg("8080:0"),
            r#"-p "8080:0": guest port 0 is not between 1 and 65535"#
        );
        assert_eq!(
            msg("8080:80/sctp"),
            r#"-p "8080:80/sctp": protocol "sctp" is not tcp or udp"#
        );
        assert_eq!(
            msg("localhost:8080:80"),
            r#"-p "localhost:8080:80": host IP "localhost" is not an IPv4 address or an IPv6 address in brackets"#
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            ":",
            "8080:",
            ":80",
            "/tcp",
            "1.2.3.4:5:6:7",
            "[::1]:1:2:3",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(parse("0:80"), Err(SpecError::HostPort { .. })));
        assert!(matches!(parse("+80:80"), Err(SpecError::HostPort { .. })));
        assert!(matches!(
            parse("8000-8010:80"),
            Err(SpecError::HostPort { .. })
        ));
        assert!(matches!(parse("80: 80"), Err(SpecError::GuestPort { .. })));
        assert!(matches!(
            parse("80:99999999999999999999999"),
            Err(SpecError::GuestPort { .. })
        ));
        assert!(matches!(parse("8080:80/TCP"), Err(SpecError::Proto { .. })));
        assert!(matches!(parse("8080:80/"), Err(SpecError::Proto { .. })));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "0.0.0.0:8080:80/tcp",
            "127.0.0.1:53:53/udp",
            "[::1]:8080:80/tcp",
            "[fd00::2]:1:2/udp",
        ] {
            let spec = parse(text).unwrap();
            assert_eq!(spec.to_string(), text);
            assert_eq!(parse(&spec.to_string()), Ok(spec));
        }
        assert_eq!(parse("8080:80").unwrap().to_string(), "0.0.0.0:8080:80/tcp");
        assert_eq!(Proto::Udp.to_string(), "udp");
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        for text in [
            "[",
            "]",
            "[]",
            "[]:",
            "[]:1:2",
            "::",
            ":::",
            "/",
            "//",
            "1:2/udp/udp",
            "é:1:2",
            "1:2\0",
        ] {
            let _ = parse(text);
        }
    }
}
