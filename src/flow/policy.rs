//! Egress policy: which destinations a guest may connect to (issue #8).
//!
//! A policy is an ordered list of rules, each `allow` or `deny` of a destination
//! `CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp]`. The first rule that matches a new flow decides it; when
//! none matches the flow is allowed. The policy sits after the address map (`flow::addr`), so it
//! sees the real destination (10.0.2.2 is already the host's 127.0.0.1), and it is asked once per
//! flow, at connect time, never per packet.
//!
//! Rule syntax, and the choices made where the issue leaves room:
//! - `all` is every IPv4 and every IPv6 address; a bare address is a /32 or a /128.
//! - An IPv6 destination with a port goes in brackets, `[fd00::/8]:443/tcp`, as in `-p`: without
//!   them `fd00::1:443` is a valid IPv6 address, so it is read as one. `fd00::/8:443` (a port
//!   after an unbracketed prefix) is refused with a sentence saying so. Brackets hold IPv6 only.
//! - A network with host bits set (`10.0.0.1/8`) is an error, not silently masked, as for
//!   `--cidr`: in a security policy a typo must not quietly widen or narrow what a rule covers.
//! - An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it names,
//!   because IPv4-mapped destinations are matched as IPv4. Other IPv6 rules (`::/0` included)
//!   never match an IPv4 destination, and IPv4 rules never match an IPv6 one.
//! - A rule without a protocol applies to TCP, UDP and ICMP. A rule with ports applies to TCP
//!   and UDP only: ICMP echo has no port, so `10.0.0.0/8:22` does not stop a ping. `/icmp` with
//!   a port is an error.
//! - Ports are 1..=65535; a rule without ports matches any port, 0 included.
//!
//! Matching. Every CIDR is a prefix, so any two rule networks are either nested or disjoint. For
//! each protocol and address family `Policy::new` compiles the rules into a `Table`: one node per
//! distinct network, holding a step function from port to the lowest-numbered of its rules that
//! covers that port; and the address line cut into disjoint segments, each listing the nodes
//! that cover it (at most 33 for IPv4, 129 for IPv6, plus `all`), sorted by their lowest rule
//! number and cut off after the first node with a rule for every port. A lookup is a binary
//! search for the segment, then a binary search in each listed node's steps, stopping once no
//! later node can hold a lower rule number. The tests check it against the plain first-match
//! scan (`Rule::matches`) on random policies.
//!
//! Counting. `decide` counts each decision against the rule that made it (or the default), so
//! `rules_with_counters` can answer the API. The policy is a plain value: replacing it is the
//! caller's assignment, and nothing here holds a socket, reads a file or looks at the clock.
//!
//! Not here: reading the policy file or the host's addresses (the caller passes them in), the
//! `--deny-private` flag's position among the others (the caller appends `deny_private` after
//! the explicit rules, so that an explicit `--allow` can make an exception to the preset),
//! logging denials, and exempting tapir's own DNS forwarder, whose upstream is the host's
//! resolver rather than a destination the guest chose.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What a rule does with the flows it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// The protocol of a guest flow (ICMP: echo requests, IPv4 or IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// The destination network of a rule. A prefix longer than the family allows is read as the
/// longest one, and host bits are ignored, so a hand-built value cannot make matching fail;
/// the parser refuses both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cidr {
    /// Every IPv4 and every IPv6 address.
    All,
    V4 {
        addr: Ipv4Addr,
        len: u8,
    },
    V6 {
        addr: Ipv6Addr,
        len: u8,
    },
}

impl Cidr {
    /// Whether `ip` lies inside; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, canonical(ip)) {
            (Cidr::All, _) => true,
            (Cidr::V4 { addr, len }, IpAddr::V4(ip)) => {
                (u32::from(addr) ^ u32::from(ip)) & mask_v4(len) == 0
            }
            (Cidr::V6 { addr, len }, IpAddr::V6(ip)) => {
                (u128::from(addr) ^ u128::from(ip)) & mask_v6(len) == 0
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::All => f.write_str("all"),
            Cidr::V4 { addr, len: 32 } => write!(f, "{addr}"),
            Cidr::V4 { addr, len } => write!(f, "{addr}/{len}"),
            Cidr::V6 { addr, len: 128 } => write!(f, "{addr}"),
            Cidr::V6 { addr, len } => write!(f, "{addr}/{len}"),
        }
    }
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// IPv4-mapped IPv6 addresses are the IPv4 address they carry (as in `flow::addr`).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Inclusive destination ports; a range with `lo > hi` matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Which flows a rule matches: a destination network, optionally ports and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub dst: Cidr,
    /// `None`: every port.
    pub ports: Option<PortRange>,
    /// `None`: TCP, UDP and ICMP (ICMP only when `ports` is `None` too).
    pub proto: Option<Proto>,
}

impl Rule {
    /// Every protocol, every port, to `dst`.
    pub fn to(dst: Cidr) -> Rule {
        Rule {
            dst,
            ports: None,
            proto: None,
        }
    }

    /// The definition of a match; the compiled `Policy` answers as a first-match scan of this.
    pub fn matches(&self, proto: Proto, dst: SocketAddr) -> bool {
        if self.proto.is_some_and(|p| p != proto) {
            return false;
        }
        let port_ok = match (self.ports, proto) {
            (None, _) => true,
            (Some(_), Proto::Icmp) => false,
            (Some(range), _) => range.contains(dst.port()),
        };
        port_ok && self.dst.contains(dst.ip())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.dst, self.ports) {
            (Cidr::V6 { .. }, Some(ports)) => write!(f, "[{}]:{ports}", self.dst)?,
            (dst, Some(ports)) => write!(f, "{dst}:{ports}")?,
            (dst, None) => write!(f, "{dst}")?,
        }
        match self.proto {
            Some(proto) => write!(f, "/{proto}"),
            None => Ok(()),
        }
    }
}

/// Where a rule's text came from, for the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--allow TEXT` or `--deny TEXT`: the text is the destination alone.
    Flag(Action),
    /// A policy file, or any other list of `allow|deny DESTINATION` lines: line numbers from 1.
    Line { file: String, line: usize },
}

impl Origin {
    fn grammar(&self) -> &'static str {
        match self {
            Origin::Flag(_) => "CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp]",
            Origin::Line { .. } => "allow or deny, then CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp]",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(action) => write!(f, "--{action}"),
            Origin::Line { file, line } => write!(f, "{file}:{line}:"),
        }
    }
}

/// A rule or policy file that cannot be used. Each message is one sentence that starts with
/// where the text came from (`--deny`, `policy.toml:3:`) and names the text and its bad part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{at} {text}: expected {}", .at.grammar())]
    Syntax { at: Origin, text: String },
    #[error("{at} {text}: a rule starts with allow or deny, not {word:?}")]
    Action {
        at: Origin,
        text: String,
        word: String,
    },
    #[error("{at} {text}: {addr:?} is not an IPv4 address, an IPv6 address or all")]
    Address {
        at: Origin,
        text: String,
        addr: String,
    },
    #[error("{at} {text}: brackets hold an IPv6 address, and {addr:?} is not one")]
    Bracketed {
        at: Origin,
        text: String,
        addr: String,
    },
    #[error("{at} {text}: prefix length {len:?} is not a number")]
    PrefixSyntax {
        at: Origin,
        text: String,
        len: String,
    },
    #[error("{at} {text}: prefix length must be at most {max}")]
    Prefix { at: Origin, text: String, max: u8 },
    #[error("{at} {text}: {cidr} has host bits set; its network is {network}")]
    HostBits {
        at: Origin,
        text: String,
        cidr: String,
        network: String,
    },
    #[error("{at} {text}: an IPv6 network with a port must be in brackets, as in [fd00::/8]:443")]
    Unbracketed { at: Origin, text: String },
    #[error("{at} {text}: port {port} is not between 1 and 65535")]
    Port {
        at: Origin,
        text: String,
        port: String,
    },
    #[error("{at} {text}: port range {range} is empty")]
    PortRange {
        at: Origin,
        text: String,
        range: String,
    },
    #[error("{at} {text}: protocol {proto:?} is not tcp, udp or icmp")]
    Proto {
        at: Origin,
        text: String,
        proto: String,
    },
    #[error("{at} {text}: icmp has no ports, so a rule for it cannot name one")]
    IcmpPort { at: Origin, text: String },
}

/// Builds the errors for one piece of text, naming it the same way in each.
struct Context<'a> {
    at: &'a Origin,
    /// The text as shown: control characters escaped, so a message stays one line.
    text: String,
}

impl<'a> Context<'a> {
    fn new(at: &'a Origin, text: &str) -> Self {
        Context {
            at,
            text: text.escape_debug().to_string(),
        }
    }

    fn at(&self) -> Origin {
        self.at.clone()
    }

    fn syntax(&self) -> PolicyError {
        PolicyError::Syntax {
            at: self.at(),
            text: self.text.clone(),
        }
    }
}

impl Rule {
    /// Parses a destination, `CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp]`, as given to `--allow` or
    /// `--deny`; `at` says where it came from, for the error.
    pub fn parse(text: &str, at: &Origin) -> Result<Rule, PolicyError> {
        parse_destination(text, &Context::new(at, text))
    }
}

/// Parses one `allow|deny DESTINATION` line (surrounding whitespace ignored).
pub fn parse_line(text: &str, at: &Origin) -> Result<(Action, Rule), PolicyError> {
    let cx = Context::new(at, text);
    let trimmed = text.trim();
    let (word, dst) = trimmed
        .split_once(char::is_whitespace)
        .ok_or_else(|| match trimmed {
            "allow" | "deny" | "" => cx.syntax(),
            word => PolicyError::Action {
                at: cx.at(),
                text: cx.text.clone(),
                word: word.to_string(),
            },
        })?;
    let action = match word {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        _ => {
            return Err(PolicyError::Action {
                at: cx.at(),
                text: cx.text.clone(),
                word: word.to_string(),
            });
        }
    };
    Ok((action, parse_destination(dst.trim_start(), &cx)?))
}

fn parse_destination(text: &str, cx: &Context<'_>) -> Result<Rule, PolicyError> {
    if text.is_empty() || text.contains(char::is_whitespace) {
        return Err(cx.syntax());
    }
    let (rest, proto) = split_proto(text, cx)?;
    let (host, ports, bracketed) = split_ports(rest, cx)?;
    let dst = parse_cidr(host, bracketed, cx)?;
    let ports = match ports {
        None => None,
        Some(ports) => Some(parse_ports(ports, cx)?),
    };
    if proto == Some(Proto::Icmp) && ports.is_some() {
        return Err(PolicyError::IcmpPort {
            at: cx.at(),
            text: cx.text.clone(),
        });
    }
    Ok(Rule { dst, ports, proto })
}

/// Splits a trailing `/tcp`, `/udp` or `/icmp` off. The text after the last slash is a
/// protocol when it starts with a letter; otherwise it is a prefix length, or a prefix length
/// and ports (`10.0.0.0/8:22`). Inside brackets a slash is always a prefix.
fn split_proto<'t>(
    text: &'t str,
    cx: &Context<'_>,
) -> Result<(&'t str, Option<Proto>), PolicyError> {
    let after_brackets = match text.strip_prefix('[') {
        Some(_) => text.find(']').map_or(text.len(), |close| close + 1),
        None => 0,
    };
    let Some(slash) = text[after_brackets..].rfind('/') else {
        return Ok((text, None));
    };
    let slash = after_brackets + slash;
    let (rest, word) = (&text[..slash], &text[slash + 1..]);
    if word.is_empty() {
        return Err(cx.syntax());
    }
    if !word.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Ok((text, None));
    }
    let proto = match word {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        _ => {
            return Err(PolicyError::Proto {
                at: cx.at(),
                text: cx.text.clone(),
                proto: word.to_string(),
            });
        }
    };
    Ok((rest, Some(proto)))
}

/// Splits `HOST[:PORTS]` into the host (a CIDR, `all`, or a bracketed IPv6 CIDR), the ports
/// text and whether the host was bracketed. IPv4 and `all` have no colon and IPv6 has at least
/// two, so one colon separates ports and two or more mean unbracketed IPv6, which takes none.
fn split_ports<'t>(
    text: &'t str,
    cx: &Context<'_>,
) -> Result<(&'t str, Option<&'t str>, bool), PolicyError> {
    if let Some(inner) = text.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or_else(|| cx.syntax())?;
        return match after {
            "" => Ok((host, None, true)),
            _ => match after.strip_prefix(':') {
                Some(ports) if !ports.is_empty() => Ok((host, Some(ports), true)),
                _ => Err(cx.syntax()),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None, false)),
        1 => match text.split_once(':') {
            Some((host, ports)) if !host.is_empty() && !ports.is_empty() => {
                Ok((host, Some(ports), false))
            }
            _ => Err(cx.syntax()),
        },
        _ => {
            let (addr, len) = text.split_once('/').unwrap_or((text, ""));
            if !addr.contains(':') {
                // `10.0.0.0/8:22:33`: colons only after an IPv4 address.
                return Err(cx.syntax());
            }
            if len.contains(':') {
                return Err(PolicyError::Unbracketed {
                    at: cx.at(),
                    text: cx.text.clone(),
                });
            }
            Ok((text, None, false))
        }
    }
}

fn parse_cidr(host: &str, bracketed: bool, cx: &Context<'_>) -> Result<Cidr, PolicyError> {
    if host == "all" && !bracketed {
        return Ok(Cidr::All);
    }
    let (addr_text, len_text) = match host.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (host, None),
    };
    let addr: IpAddr = match addr_text.parse() {
        Ok(IpAddr::V6(v6)) => IpAddr::V6(v6),
        Ok(IpAddr::V4(_)) | Err(_) if bracketed => {
            return Err(PolicyError::Bracketed {
                at: cx.at(),
                text: cx.text.clone(),
                addr: addr_text.to_string(),
            });
        }
        Ok(v4) => v4,
        Err(_) => {
            return Err(PolicyError::Address {
                at: cx.at(),
                text: cx.text.clone(),
                addr: addr_text.to_string(),
            });
        }
    };
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max,
        Some(len) => parse_prefix_len(len, max, cx)?,
    };
    let cidr = match addr {
        IpAddr::V4(addr) => Cidr::V4 { addr, len },
        IpAddr::V6(addr) => Cidr::V6 { addr, len },
    };
    let network = network_of(cidr);
    if network != cidr {
        return Err(PolicyError::HostBits {
            at: cx.at(),
            text: cx.text.clone(),
            cidr: host.to_string(),
            network: network.to_string(),
        });
    }
    Ok(unmap(cidr))
}

fn parse_prefix_len(text: &str, max: u8, cx: &Context<'_>) -> Result<u8, PolicyError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyError::PrefixSyntax {
            at: cx.at(),
            text: cx.text.clone(),
            len: text.to_string(),
        });
    }
    match text.parse::<u8>() {
        Ok(len) if len <= max => Ok(len),
        _ => Err(PolicyError::Prefix {
            at: cx.at(),
            text: cx.text.clone(),
            max,
        }),
    }
}

/// The same network with its host bits cleared.
fn network_of(cidr: Cidr) -> Cidr {
    match cidr {
        Cidr::All => Cidr::All,
        Cidr::V4 { addr, len } => Cidr::V4 {
            addr: Ipv4Addr::from(u32::from(addr) & mask_v4(len)),
            len,
        },
        Cidr::V6 { addr, len } => Cidr::V6 {
            addr: Ipv6Addr::from(u128::from(addr) & mask_v6(len)),
            len,
        },
    }
}

/// An IPv6 network inside ::ffff:0:0/96 as the IPv4 network it names.
fn unmap(cidr: Cidr) -> Cidr {
    match cidr {
        Cidr::V6 { addr, len } if len >= 96 => match addr.to_ipv4_mapped() {
            Some(v4) => Cidr::V4 {
                addr: v4,
                len: len - 96,
            },
            None => cidr,
        },
        other => other,
    }
}

/// `PORT` or `LO-HI`, decimal, each in 1..=65535, `LO <= HI`.
fn parse_ports(text: &str, cx: &Context<'_>) -> Result<PortRange, PolicyError> {
    let (lo_text, hi_text) = text.split_once('-').unwrap_or((text, text));
    if lo_text.is_empty() || hi_text.is_empty() {
        return Err(cx.syntax());
    }
    let port = |p: &str| {
        parse_port(p).ok_or_else(|| PolicyError::Port {
            at: cx.at(),
            text: cx.text.clone(),
            port: p.to_string(),
        })
    };
    let range = PortRange {
        lo: port(lo_text)?,
        hi: port(hi_text)?,
    };
    if range.lo > range.hi {
        return Err(PolicyError::PortRange {
            at: cx.at(),
            text: cx.text.clone(),
            range: text.to_string(),
        });
    }
    Ok(range)
}

/// A port in 1..=65535 written as plain decimal digits (`u16::from_str` would also take `+80`).
fn parse_port(text: &str) -> Option<u16> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod test {
    use super::*;

    fn deny(text: &str) -> Result<Rule, PolicyError> {
        Rule::parse(text, &Origin::Flag(Action::Deny))
    }

    fn msg(text: &str) -> String {
        deny(text).unwrap_err().to_string()
    }

    fn v4(addr: &str, len: u8) -> Cidr {
        Cidr::V4 {
            addr: addr.parse().unwrap(),
            len,
        }
    }

    fn v6(addr: &str, len: u8) -> Cidr {
        Cidr::V6 {
            addr: addr.parse().unwrap(),
            len,
        }
    }

    fn ports(lo: u16, hi: u16) -> Option<PortRange> {
        Some(PortRange { lo, hi })
    }

    #[test]
    fn destinations() {
        assert_eq!(deny("10.0.0.0/8"), Ok(Rule::to(v4("10.0.0.0", 8))));
        assert_eq!(deny("198.51.100.7"), Ok(Rule::to(v4("198.51.100.7", 32))));
        assert_eq!(deny("all"), Ok(Rule::to(Cidr::All)));
        assert_eq!(deny("0.0.0.0/0"), Ok(Rule::to(v4("0.0.0.0", 0))));
        assert_eq!(deny("fd00::/8"), Ok(Rule::to(v6("fd00::", 8))));
        assert_eq!(deny("fd00::1"), Ok(Rule::to(v6("fd00::1", 128))));
        assert_eq!(deny("[fd00::/8]"), Ok(Rule::to(v6("fd00::", 8))));
        assert_eq!(
            deny("10.0.0.0/8:22/tcp"),
            Ok(Rule {
                dst: v4("10.0.0.0", 8),
                ports: ports(22, 22),
                proto: Some(Proto::Tcp),
            })
        );
        assert_eq!(
            deny("192.0.2.1:8000-8080"),
            Ok(Rule {
                dst: v4("192.0.2.1", 32),
                ports: ports(8000, 8080),
                proto: None,
            })
        );
        assert_eq!(
            deny("all:25/tcp"),
            Ok(Rule {
                dst: Cidr::All,
                ports: ports(25, 25),
                proto: Some(Proto::Tcp),
            })
        );
        assert_eq!(
            deny("all/icmp"),
            Ok(Rule {
                dst: Cidr::All,
                ports: None,
                proto: Some(Proto::Icmp),
            })
        );
        assert_eq!(
            deny("169.254.169.254/udp"),
            Ok(Rule {
                dst: v4("169.254.169.254", 32),
                ports: None,
                proto: Some(Proto::Udp),
            })
        );
    }

    #[test]
    fn ipv6_ports_need_brackets() {
        assert_eq!(
            deny("[fd00::/8]:443/tcp"),
            Ok(Rule {
                dst: v6("fd00::", 8),
                ports: ports(443, 443),
                proto: Some(Proto::Tcp),
            })
        );
        assert_eq!(
            deny("[2001:db8::1]:1-1024"),
            Ok(Rule {
                dst: v6("2001:db8::1", 128),
                ports: ports(1, 1024),
                proto: None,
            })
        );
        assert_eq!(
            deny("fd00::/8/udp"),
            Ok(Rule {
                dst: v6("fd00::", 8),
                ports: None,
                proto: Some(Proto::Udp),
            })
        );
        // Without brackets the last group is part of the address, as it is for any reader.
        assert_eq!(deny("fd00::1:443"), Ok(Rule::to(v6("fd00::1:443", 128))));
        assert_eq!(
            msg("fd00::/8:443"),
            "--deny fd00::/8:443: an IPv6 network with a port must be in brackets, as in [fd00::/8]:443"
        );
        assert_eq!(
            msg("[10.0.0.0/8]:22"),
            r#"--deny [10.0.0.0/8]:22: brackets hold an IPv6 address, and "10.0.0.0" is not one"#
        );
    }

    #[test]
    fn ipv4_mapped_networks_are_ipv4() {
        assert_eq!(
            deny("::ffff:169.254.169.254"),
            Ok(Rule::to(v4("169.254.169.254", 32)))
        );
        assert_eq!(
            deny("[::ffff:10.0.0.0/104]:22"),
            Ok(Rule {
                dst: v4("10.0.0.0", 8),
                ports: ports(22, 22),
                proto: None,
            })
        );
        assert_eq!(deny("::ffff:0:0/96"), Ok(Rule::to(v4("0.0.0.0", 0))));
        // Wider than the mapped block: stays IPv6.
        assert_eq!(deny("::/0"), Ok(Rule::to(v6("::", 0))));
    }

    #[test]
    fn messages_name_the_text_and_the_bad_part() {
        assert_eq!(
            msg("10.0.0.0/33"),
            "--deny 10.0.0.0/33: prefix length must be at most 32"
        );
        assert_eq!(
            msg("fd00::/129"),
            "--deny fd00::/129: prefix length must be at most 128"
        );
        assert_eq!(
            Rule::parse("10.0.0.0/8:70000", &Origin::Flag(Action::Allow))
                .unwrap_err()
                .to_string(),
            "--allow 10.0.0.0/8:70000: port 70000 is not between 1 and 65535"
        );
        assert_eq!(
            msg("10.0.0.0/8:90-80"),
            "--deny 10.0.0.0/8:90-80: port range 90-80 is empty"
        );
        assert_eq!(
            msg("10.0.0.0/8:22/sctp"),
            r#"--deny 10.0.0.0/8:22/sctp: protocol "sctp" is not tcp, udp or icmp"#
        );
        assert_eq!(
            msg("10.0.0.1/8"),
            "--deny 10.0.0.1/8: 10.0.0.1/8 has host bits set; its network is 10.0.0.0/8"
        );
        assert_eq!(
            msg("fd00::1/8"),
            "--deny fd00::1/8: fd00::1/8 has host bits set; its network is fd00::/8"
        );
        assert_eq!(
            msg("10.0.0.0/8:22/icmp"),
            "--deny 10.0.0.0/8:22/icmp: icmp has no ports, so a rule for it cannot name one"
        );
        assert_eq!(
            msg("localhost"),
            r#"--deny localhost: "localhost" is not an IPv4 address, an IPv6 address or all"#
        );
        assert_eq!(
            msg("10.0.0.0/x8"),
            r#"--deny 10.0.0.0/x8: protocol "x8" is not tcp, udp or icmp"#
        );
        assert_eq!(
            msg("10.0.0.0/8x"),
            r#"--deny 10.0.0.0/8x: prefix length "8x" is not a number"#
        );
        assert_eq!(
            msg("10.0.0.0:"),
            "--deny 10.0.0.0:: expected CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp]"
        );
        assert_eq!(
            msg("10.0.0.0/8:0"),
            "--deny 10.0.0.0/8:0: port 0 is not between 1 and 65535"
        );
        // Control characters are escaped, so the message stays on one line.
        assert_eq!(
            msg("10.0.0.0/8\n"),
            r"--deny 10.0.0.0/8\n: expected CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp]"
        );
    }

    #[test]
    fn rejects_malformed_destinations() {
        for bad in [
            "",
            " ",
            "/",
            ":",
            "/tcp",
            ":22",
            "10.0.0.0/",
            "10.0.0.0/8:",
            "10.0.0.0/8:22/",
            "10.0.0.0/8:22:33",
            "10.0.0.0/8:-",
            "10.0.0.0/8:1-",
            "10.0.0.0/8:-1",
            "10.0.0.0/8:1-2-3",
            "10.0.0.0/8:+80",
            "10.0.0.0/8:22/TCP",
            "10.0.0.0/8/8",
            "10.0.0.0/8 /tcp",
            "010.0.0.0/8",
            "10.0.0/8",
            "[fd00::/8",
            "[fd00::/8]443",
            "[fd00::/8]:",
            "[all]",
            "[fe80::1%eth0]",
            "all/0",
            "all/8",
            "10.0.0.0/99999999999999999999",
            "10.0.0.0/-1",
        ] {
            assert!(deny(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn lines_carry_an_action() {
        let at = Origin::Line {
            file: "policy.toml".into(),
            line: 3,
        };
        assert_eq!(
            parse_line("deny 10.0.0.0/8:22/tcp", &at),
            Ok((Action::Deny, deny("10.0.0.0/8:22/tcp").unwrap()))
        );
        assert_eq!(
            parse_line("  allow \t all ", &at),
            Ok((Action::Allow, Rule::to(Cidr::All)))
        );
        let msg = |s: &str| parse_line(s, &at).unwrap_err().to_string();
        assert_eq!(
            msg("deny 10.0.0.0/33"),
            "policy.toml:3: deny 10.0.0.0/33: prefix length must be at most 32"
        );
        assert_eq!(
            msg("block 10.0.0.0/8"),
            r#"policy.toml:3: block 10.0.0.0/8: a rule starts with allow or deny, not "block""#
        );
        assert_eq!(
            msg("10.0.0.0/8"),
            r#"policy.toml:3: 10.0.0.0/8: a rule starts with allow or deny, not "10.0.0.0/8""#
        );
        assert_eq!(
            msg("deny"),
            "policy.toml:3: deny: expected allow or deny, then CIDR[:PORT|:LO-HI][/tcp|/udp|/icmp]"
        );
        assert!(parse_line("deny 10.0.0.0/8 22", &at).is_err());
        assert!(parse_line("", &at).is_err());
        assert!(parse_line("Deny all", &at).is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "all",
            "all:25/tcp",
            "10.0.0.0/8",
            "10.0.0.0/8:22/tcp",
            "198.51.100.7",
            "198.51.100.7:1-1024/udp",
            "169.254.0.0/16/icmp",
            "fd00::/8",
            "fd00::1",
            "[fd00::/8]:443/tcp",
            "[2001:db8::1]:53/udp",
            "::/0",
        ] {
            let rule = deny(text).unwrap();
            assert_eq!(rule.to_string(), text);
        }
        assert_eq!(deny("[fd00::/8]").unwrap().to_string(), "fd00::/8");
        assert_eq!(
            deny("10.0.0.0/8:22-22").unwrap().to_string(),
            "10.0.0.0/8:22"
        );
        assert_eq!(
            deny("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn never_panics_on_odd_text() {
        for text in [
            "[",
            "]",
            "[]",
            "[]:",
            "[]:1",
            "[]/tcp",
            "[:",
            "]:1",
            "::",
            ":::",
            "//",
            "/:/",
            "all:",
            "all:/tcp",
            "[::]:1/",
            "é",
            "é/é",
            "[é]:é/é",
            "1:2\0",
            "[::1]]:1",
            "[[::1]:1",
            "1.2.3.4/32/32/tcp",
            "-",
            "1-2",
            "::/",
            "::/:1",
        ] {
            let _ = deny(text);
            let _ = parse_line(text, &Origin::Flag(Action::Allow));
            let _ = parse_line(&format!("deny {text}"), &Origin::Flag(Action::Allow));
        }
    }
}
