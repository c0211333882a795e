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
//! Files. `--policy policy.toml` holds the same rules as `allow|deny DESTINATION` strings, and
//! optionally `deny-private = true` (`parse_file`); errors name the file and line.
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use toml::de::DeValue;

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

impl Proto {
    const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Icmp];

    fn index(self) -> usize {
        match self {
            Proto::Tcp => 0,
            Proto::Udp => 1,
            Proto::Icmp => 2,
        }
    }
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
        match (*self, ip.to_canonical()) {
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

    /// The first and last address covered in `family`, as numbers; `None` if it covers none.
    fn span(&self, family: Family) -> Option<(u128, u128)> {
        match (*self, family) {
            (Cidr::All, _) => Some((0, family.last())),
            (Cidr::V4 { addr, len }, Family::V4) => {
                let lo = u32::from(addr) & mask_v4(len);
                Some((lo.into(), (lo | !mask_v4(len)).into()))
            }
            (Cidr::V6 { addr, len }, Family::V6) => {
                let lo = u128::from(addr) & mask_v6(len);
                Some((lo, lo | !mask_v6(len)))
            }
            _ => None,
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

    /// The addresses and ports this rule covers for one protocol and family, if any; the same
    /// meaning as `matches`, in the form the compiled tables are built from.
    fn coverage(&self, proto: Proto, family: Family) -> Option<((u128, u128), PortRange)> {
        if self.proto.is_some_and(|p| p != proto) {
            return None;
        }
        let ports = match (self.ports, proto) {
            (None, _) => EVERY_PORT,
            (Some(_), Proto::Icmp) => return None,
            (Some(range), _) if range.lo > range.hi => return None,
            (Some(range), _) => range,
        };
        Some((self.dst.span(family)?, ports))
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
    #[error("{at} {message}")]
    Toml { at: Origin, message: String },
    #[error("{at} unknown key {key:?}; a policy file has only rules and deny-private")]
    UnknownKey { at: Origin, key: String },
    #[error("{at} rules must be a list of strings, each like \"deny 10.0.0.0/8\"")]
    NotRuleList { at: Origin },
    #[error("{at} deny-private must be true or false")]
    NotBool { at: Origin },
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

/// A policy file, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyFile {
    /// In file order.
    pub rules: Vec<(Action, Rule)>,
    /// `deny-private = true`: the caller appends `deny_private(host addresses)` after `rules`,
    /// as for the flag.
    pub deny_private: bool,
}

/// Parses a policy file's text; `file` names it in errors, which carry the line number.
///
/// The file is TOML with two keys, both optional; any other key is an error, so that a typo
/// cannot quietly leave a policy empty:
///
/// ```toml
/// deny-private = true
/// rules = [
///     "allow 10.1.2.3:5432/tcp",   # the database stays reachable
///     "deny 10.0.0.0/8:22/tcp",
/// ]
/// ```
///
/// Each rule is a string in the `allow|deny DESTINATION` form of `parse_line`, rather than a
/// table of fields, so that the file and the flags share one grammar and one set of messages.
pub fn parse_file(file: &str, text: &str) -> Result<PolicyFile, PolicyError> {
    let at = |offset: usize| Origin::Line {
        file: file.to_string(),
        line: line_of(text, offset),
    };
    let document = toml::de::DeTable::parse(text).map_err(|e| PolicyError::Toml {
        at: at(e.span().map_or(0, |span| span.start)),
        message: e.message().trim().replace('\n', "; "),
    })?;
    // Keys come sorted by name; report the first problem in file order instead.
    let mut entries: Vec<_> = document.get_ref().iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);

    let mut policy = PolicyFile::default();
    for (key, value) in entries {
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("rules", DeValue::Array(items)) => {
                for item in items.iter() {
                    let DeValue::String(line) = item.get_ref() else {
                        return Err(PolicyError::NotRuleList {
                            at: at(item.span().start),
                        });
                    };
                    policy.rules.push(parse_line(line, &at(item.span().start))?);
                }
            }
            ("rules", _) => {
                return Err(PolicyError::NotRuleList {
                    at: at(value.span().start),
                });
            }
            ("deny-private", DeValue::Boolean(yes)) => policy.deny_private = *yes,
            ("deny-private", _) => {
                return Err(PolicyError::NotBool {
                    at: at(value.span().start),
                });
            }
            (other, _) => {
                return Err(PolicyError::UnknownKey {
                    at: at(key.span().start),
                    key: other.to_string(),
                });
            }
        }
    }
    Ok(policy)
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// The IPv4 networks of `--deny-private`: RFC 1918, link-local (with the cloud metadata service
/// at 169.254.169.254), CGNAT (RFC 6598), "this network" (RFC 791 0/8), multicast, broadcast.
const PRIVATE_V4: [(Ipv4Addr, u8); 8] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::BROADCAST, 32),
];

/// The IPv6 networks of `--deny-private`: unique local (RFC 4193), link-local, multicast.
const PRIVATE_V6: [(Ipv6Addr, u8); 3] = [
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// The rules `--deny-private` stands for: deny the private, link-local, CGNAT, multicast and
/// broadcast networks, then each of `host_addrs` (the host's own addresses, read by the caller
/// at start) that those do not already cover, for every protocol and port.
///
/// Loopback is left out, host addresses included: it is `--disable-host-loopback`'s to govern,
/// and the gateway (10.0.2.2) reaches the policy as 127.0.0.1, so denying loopback here would
/// take the gateway away too. Append these after the explicit rules, so that an explicit
/// `--allow` can make an exception to the preset.
pub fn deny_private(host_addrs: &[IpAddr]) -> Vec<(Action, Rule)> {
    let networks = PRIVATE_V4
        .iter()
        .map(|&(addr, len)| Cidr::V4 { addr, len })
        .chain(PRIVATE_V6.iter().map(|&(addr, len)| Cidr::V6 { addr, len }));
    let mut denied: Vec<Cidr> = networks.collect();
    for &ip in host_addrs {
        let ip = ip.to_canonical();
        if ip.is_loopback() || ip.is_unspecified() || denied.iter().any(|c| c.contains(ip)) {
            continue;
        }
        denied.push(match ip {
            IpAddr::V4(addr) => Cidr::V4 { addr, len: 32 },
            IpAddr::V6(addr) => Cidr::V6 { addr, len: 128 },
        });
    }
    denied
        .into_iter()
        .map(|dst| (Action::Deny, Rule::to(dst)))
        .collect()
}

/// Every port, 0 included: what a rule without ports covers.
const EVERY_PORT: PortRange = PortRange {
    lo: 0,
    hi: u16::MAX,
};

/// An address family: each has its own address line and its own tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The highest address, as a number.
    fn last(self) -> u128 {
        match self {
            Family::V4 => u32::MAX.into(),
            Family::V6 => u128::MAX,
        }
    }
}

/// A destination's family and position on that family's address line (IPv4-mapped as IPv4).
fn address_key(ip: IpAddr) -> (Family, u128) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (Family::V4, u32::from(v4).into()),
        IpAddr::V6(v6) => (Family::V6, u128::from(v6)),
    }
}

/// The outcome for one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The index of the rule that matched; `None` when none did and the default (allow) applied.
    pub rule: Option<usize>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.action == Action::Allow
    }
}

/// An ordered rule list, compiled for lookups, with a hit counter per rule.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<(Action, Rule)>,
    hits: Vec<u64>,
    default_hits: u64,
    /// Indexed by `Proto::index` and then `Family::index`.
    tables: [[Table; 2]; 3],
}

impl Policy {
    /// The policy an API `set_policy` asks for: each text is a policy-file line ("allow RULE"
    /// or "deny RULE"), in order, then with `deny_private_of` the `--deny-private` rules for
    /// those host addresses.
    pub fn from_lines(
        texts: &[String],
        deny_private_of: Option<&[IpAddr]>,
    ) -> Result<Policy, PolicyError> {
        let mut list = Vec::with_capacity(texts.len());
        for text in texts {
            let at = Origin::Line {
                file: "rules".into(),
                line: list.len() + 1,
            };
            list.push(parse_line(text, &at)?);
        }
        if let Some(host_addrs) = deny_private_of {
            list.extend(deny_private(host_addrs));
        }
        Ok(Policy::new(list))
    }

    /// Compiles `rules`: the first that matches a flow decides it, and none matching allows it.
    pub fn new(rules: Vec<(Action, Rule)>) -> Policy {
        let tables = Proto::ALL.map(|proto| {
            Family::ALL.map(|family| {
                let entries = rules.iter().enumerate().filter_map(|(index, (_, rule))| {
                    let (span, ports) = rule.coverage(proto, family)?;
                    Some((span, ports, index))
                });
                Table::new(entries, family.last())
            })
        });
        Policy {
            hits: vec![0; rules.len()],
            rules,
            default_hits: 0,
            tables,
        }
    }

    pub fn rules(&self) -> &[(Action, Rule)] {
        &self.rules
    }

    /// What the policy says about a new flow to `dst` (the destination after address mapping;
    /// for ICMP the port is ignored), without counting it.
    pub fn lookup(&self, proto: Proto, dst: SocketAddr) -> Decision {
        let (family, addr) = address_key(dst.ip());
        let table = &self.tables[proto.index()][family.index()];
        match table.lookup(addr, dst.port()) {
            Some(index) => Decision {
                action: self
                    .rules
                    .get(index)
                    .map_or(Action::Allow, |(action, _)| *action),
                rule: Some(index),
            },
            None => Decision {
                action: Action::Allow,
                rule: None,
            },
        }
    }

    /// Decides a new flow, as `lookup`, and counts the decision against its rule.
    pub fn decide(&mut self, proto: Proto, dst: SocketAddr) -> Decision {
        let decision = self.lookup(proto, dst);
        let counter = match decision.rule {
            Some(index) => self.hits.get_mut(index),
            None => Some(&mut self.default_hits),
        };
        if let Some(counter) = counter {
            *counter = counter.saturating_add(1);
        }
        decision
    }

    /// Each rule, in order, with the number of flows it decided.
    pub fn rules_with_counters(&self) -> impl ExactSizeIterator<Item = (Action, &Rule, u64)> + '_ {
        self.rules
            .iter()
            .zip(&self.hits)
            .map(|((action, rule), hits)| (*action, rule, *hits))
    }

    /// The number of flows no rule matched, which the default allowed.
    pub fn default_hits(&self) -> u64 {
        self.default_hits
    }
}

/// The rules of one protocol and family that share one network, as a step function from port
/// to the lowest rule number covering it.
#[derive(Debug, Clone)]
struct Node {
    /// Ascending; each step runs up to the next one's first port, and the first starts at 0.
    steps: Vec<Step>,
    /// The lowest rule number in this node.
    first_rule: usize,
    /// The lowest rule number here that covers every port: no node with only higher rule
    /// numbers can decide anything under this one.
    first_full: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    first_port: u16,
    rule: Option<usize>,
}

impl Node {
    /// `rules`: (ports, rule number), in ascending rule number, at least one.
    fn new(rules: &[(PortRange, usize)]) -> Node {
        let mut steps: Vec<Step> = Vec::new();
        let intervals = rules
            .iter()
            .map(|&(ports, rule)| (u128::from(ports.lo), u128::from(ports.hi), rule));
        sweep(intervals, u16::MAX.into(), |port, live| {
            let rule = live.first().copied();
            if steps.last().is_some_and(|last| last.rule == rule) {
                return;
            }
            // `sweep` stops at u16::MAX, so the port always fits.
            let first_port = u16::try_from(port).unwrap_or(u16::MAX);
            steps.push(Step { first_port, rule });
        });
        Node {
            steps,
            first_rule: rules.first().map_or(usize::MAX, |&(_, rule)| rule),
            first_full: rules
                .iter()
                .find(|(ports, _)| *ports == EVERY_PORT)
                .map(|&(_, rule)| rule),
        }
    }

    fn rule_for(&self, port: u16) -> Option<usize> {
        let step = self
            .steps
            .partition_point(|s| s.first_port <= port)
            .checked_sub(1)?;
        self.steps.get(step)?.rule
    }
}

/// One protocol and family, compiled: the address line cut into segments, each with the nodes
/// (networks) that cover it, sorted by their lowest rule number and cut off after the first
/// node that has a rule for every port.
#[derive(Debug, Clone, Default)]
struct Table {
    nodes: Vec<Node>,
    /// Ascending first addresses; each segment runs up to the next one's first address, and
    /// the first starts at 0. Empty when the table has no rules.
    segments: Vec<u128>,
    /// Segment `i` is covered by `chains[chain_at[i]..chain_at[i + 1]]`.
    chain_at: Vec<usize>,
    chains: Vec<usize>,
}

impl Table {
    /// `entries`: (first and last address, ports, rule number), in ascending rule number.
    fn new(entries: impl Iterator<Item = ((u128, u128), PortRange, usize)>, last: u128) -> Table {
        let mut networks: BTreeMap<(u128, u128), Vec<(PortRange, usize)>> = BTreeMap::new();
        for (span, ports, rule) in entries {
            networks.entry(span).or_default().push((ports, rule));
        }
        if networks.is_empty() {
            return Table::default();
        }
        let mut table = Table {
            nodes: networks.values().map(|rules| Node::new(rules)).collect(),
            ..Table::default()
        };
        let intervals = networks
            .keys()
            .enumerate()
            .map(|(id, &(lo, hi))| (lo, hi, id));
        sweep(intervals, last, |addr, live| table.push_segment(addr, live));
        table.chain_at.push(table.chains.len());
        table
    }

    fn push_segment(&mut self, first_addr: u128, live: &BTreeSet<usize>) {
        let mut chain: Vec<usize> = live.iter().copied().collect();
        chain.sort_by_key(|&id| self.nodes[id].first_rule);
        if let Some(cap) = chain
            .iter()
            .filter_map(|&id| self.nodes[id].first_full)
            .min()
        {
            chain.retain(|&id| self.nodes[id].first_rule <= cap);
        }
        if let Some(&from) = self.chain_at.last() {
            if self.chains[from..] == chain[..] {
                return;
            }
        }
        self.segments.push(first_addr);
        self.chain_at.push(self.chains.len());
        self.chains.extend(chain);
    }

    fn lookup(&self, addr: u128, port: u16) -> Option<usize> {
        let segment = self
            .segments
            .partition_point(|&first| first <= addr)
            .checked_sub(1)?;
        let from = *self.chain_at.get(segment)?;
        let to = *self.chain_at.get(segment + 1)?;
        let mut best: Option<usize> = None;
        for node in self
            .chains
            .get(from..to)?
            .iter()
            .filter_map(|&id| self.nodes.get(id))
        {
            if best.is_some_and(|best| node.first_rule >= best) {
                break;
            }
            if let Some(rule) = node.rule_for(port) {
                best = Some(best.map_or(rule, |best| best.min(rule)));
            }
        }
        best
    }
}

/// Walks a line from 0 to `last` past inclusive intervals (`lo`, `hi`, id), calling `at` at 0
/// and at every point where the set of covering intervals changes, with that set.
fn sweep(
    intervals: impl Iterator<Item = (u128, u128, usize)>,
    last: u128,
    mut at: impl FnMut(u128, &BTreeSet<usize>),
) {
    // (point, starts, id): an interval starts at `lo` and ends before `hi + 1`.
    let mut events: Vec<(u128, bool, usize)> = Vec::new();
    for (lo, hi, id) in intervals {
        events.push((lo, true, id));
        if hi < last {
            events.push((hi + 1, false, id));
        }
    }
    events.sort_unstable();
    let mut live = BTreeSet::new();
    let mut next = 0;
    let mut point = 0;
    loop {
        while let Some(&(_, starts, id)) = events.get(next).filter(|e| e.0 == point) {
            if starts {
                live.insert(id);
            } else {
                live.remove(&id);
            }
            next += 1;
        }
        at(point, &live);
        match events.get(next) {
            Some(&(p, _, _)) => point = p,
            None => return,
        }
    }
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

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn policy(lines: &[&str]) -> Policy {
        let at = Origin::Line {
            file: "test".into(),
            line: 1,
        };
        Policy::new(lines.iter().map(|l| parse_line(l, &at).unwrap()).collect())
    }

    fn verdict(policy: &Policy, proto: Proto, dst: &str) -> (Action, Option<usize>) {
        let d = policy.lookup(proto, sa(dst));
        (d.action, d.rule)
    }

    #[test]
    fn no_rules_allow_everything() {
        let p = Policy::default();
        assert_eq!(
            verdict(&p, Proto::Tcp, "169.254.169.254:80"),
            (Action::Allow, None)
        );
        assert_eq!(
            verdict(&p, Proto::Icmp, "[fd00::1]:0"),
            (Action::Allow, None)
        );
        assert_eq!(
            verdict(&Policy::new(vec![]), Proto::Udp, "10.0.0.1:53"),
            (Action::Allow, None)
        );
    }

    #[test]
    fn first_match_wins() {
        let p = policy(&[
            "allow 10.1.2.3:5432/tcp",
            "deny 10.0.0.0/8",
            "allow 10.0.0.0/8",
        ]);
        assert_eq!(
            verdict(&p, Proto::Tcp, "10.1.2.3:5432"),
            (Action::Allow, Some(0))
        );
        assert_eq!(
            verdict(&p, Proto::Udp, "10.1.2.3:5432"),
            (Action::Deny, Some(1))
        );
        assert_eq!(
            verdict(&p, Proto::Tcp, "10.1.2.3:5433"),
            (Action::Deny, Some(1))
        );
        assert_eq!(
            verdict(&p, Proto::Tcp, "11.0.0.1:80"),
            (Action::Allow, None)
        );
    }

    #[test]
    fn allow_list_ends_in_deny_all() {
        let p = policy(&[
            "allow 192.0.2.0/24:443/tcp",
            "allow 198.51.100.7",
            "deny all",
        ]);
        assert_eq!(
            verdict(&p, Proto::Tcp, "192.0.2.9:443"),
            (Action::Allow, Some(0))
        );
        assert_eq!(
            verdict(&p, Proto::Tcp, "192.0.2.9:80"),
            (Action::Deny, Some(2))
        );
        assert_eq!(
            verdict(&p, Proto::Udp, "192.0.2.9:443"),
            (Action::Deny, Some(2))
        );
        assert_eq!(
            verdict(&p, Proto::Icmp, "198.51.100.7:0"),
            (Action::Allow, Some(1))
        );
        assert_eq!(
            verdict(&p, Proto::Tcp, "[2001:db8::1]:443"),
            (Action::Deny, Some(2))
        );
    }

    #[test]
    fn ports_and_protocols_qualify() {
        let p = policy(&[
            "deny 10.0.0.0/8:22/tcp",
            "deny 10.0.0.0/8:50-60",
            "deny all/icmp",
        ]);
        assert_eq!(verdict(&p, Proto::Tcp, "10.9.9.9:22").1, Some(0));
        assert_eq!(verdict(&p, Proto::Udp, "10.9.9.9:22").1, None);
        assert_eq!(verdict(&p, Proto::Udp, "10.9.9.9:50").1, Some(1));
        assert_eq!(verdict(&p, Proto::Tcp, "10.9.9.9:60").1, Some(1));
        assert_eq!(verdict(&p, Proto::Tcp, "10.9.9.9:61").1, None);
        assert_eq!(verdict(&p, Proto::Tcp, "10.9.9.9:49").1, None);
        // A rule with ports does not stop a ping; `/icmp` does, for every address.
        assert_eq!(verdict(&p, Proto::Icmp, "10.9.9.9:22").1, Some(2));
        assert_eq!(verdict(&p, Proto::Icmp, "[fd00::1]:0").1, Some(2));
        let ping = policy(&["deny 10.0.0.0/8:22"]);
        assert_eq!(verdict(&ping, Proto::Icmp, "10.9.9.9:22").1, None);
        assert_eq!(verdict(&ping, Proto::Tcp, "10.9.9.9:0").1, None);
    }

    #[test]
    fn families_are_apart_and_mapped_addresses_are_ipv4() {
        let p = policy(&["deny 169.254.0.0/16", "deny ::/0/udp", "deny fd00::/8"]);
        assert_eq!(verdict(&p, Proto::Tcp, "169.254.169.254:80").1, Some(0));
        assert_eq!(
            verdict(&p, Proto::Tcp, "[::ffff:169.254.169.254]:80").1,
            Some(0)
        );
        // ::/0 is IPv6 only, and a mapped destination is IPv4.
        assert_eq!(verdict(&p, Proto::Udp, "[::ffff:192.0.2.1]:53").1, None);
        assert_eq!(verdict(&p, Proto::Udp, "[2001:db8::1]:53").1, Some(1));
        assert_eq!(verdict(&p, Proto::Tcp, "[fdff:ffff::1]:80").1, Some(2));
        assert_eq!(verdict(&p, Proto::Tcp, "[fe00::1]:80").1, None);
    }

    #[test]
    fn address_line_edges() {
        let p = policy(&[
            "deny 0.0.0.0/8",
            "deny 255.255.255.255",
            "deny ::/128",
            "deny ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "deny 10.0.0.0/31:1-1",
            "deny 10.0.0.0/31:65535",
        ]);
        assert_eq!(verdict(&p, Proto::Tcp, "0.0.0.0:1").1, Some(0));
        assert_eq!(verdict(&p, Proto::Tcp, "0.255.255.255:1").1, Some(0));
        assert_eq!(verdict(&p, Proto::Tcp, "1.0.0.0:1").1, None);
        assert_eq!(verdict(&p, Proto::Tcp, "255.255.255.254:1").1, None);
        assert_eq!(verdict(&p, Proto::Tcp, "255.255.255.255:1").1, Some(1));
        assert_eq!(verdict(&p, Proto::Tcp, "[::]:1").1, Some(2));
        assert_eq!(verdict(&p, Proto::Tcp, "[::1]:1").1, None);
        assert_eq!(
            verdict(
                &p,
                Proto::Tcp,
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1"
            )
            .1,
            Some(3)
        );
        assert_eq!(verdict(&p, Proto::Tcp, "10.0.0.1:0").1, None);
        assert_eq!(verdict(&p, Proto::Tcp, "10.0.0.1:1").1, Some(4));
        assert_eq!(verdict(&p, Proto::Tcp, "10.0.0.1:2").1, None);
        assert_eq!(verdict(&p, Proto::Tcp, "10.0.0.1:65535").1, Some(5));
        assert_eq!(verdict(&p, Proto::Tcp, "10.0.0.2:65535").1, None);
    }

    #[test]
    fn hand_built_rules_do_not_break_matching() {
        // Values the parser refuses but a caller could build: an empty port range, ports on an
        // ICMP rule, an overlong prefix, host bits.
        let rules = vec![
            (
                Action::Deny,
                Rule {
                    dst: Cidr::All,
                    ports: Some(PortRange { lo: 9, hi: 1 }),
                    proto: None,
                },
            ),
            (
                Action::Deny,
                Rule {
                    dst: Cidr::All,
                    ports: Some(PortRange { lo: 1, hi: 9 }),
                    proto: Some(Proto::Icmp),
                },
            ),
            (Action::Deny, Rule::to(v4("10.0.0.7", 200))),
            (Action::Deny, Rule::to(v6("fd00::7", 4))),
        ];
        let p = Policy::new(rules.clone());
        for (proto, dst) in [
            (Proto::Tcp, "1.2.3.4:5"),
            (Proto::Icmp, "1.2.3.4:5"),
            (Proto::Tcp, "10.0.0.7:5"),
            (Proto::Tcp, "10.0.0.8:5"),
            (Proto::Udp, "[f123::1]:5"),
            (Proto::Udp, "[e123::1]:5"),
        ] {
            let naive = rules.iter().position(|(_, r)| r.matches(proto, sa(dst)));
            assert_eq!(p.lookup(proto, sa(dst)).rule, naive, "{proto} {dst}");
        }
        assert_eq!(p.lookup(Proto::Tcp, sa("10.0.0.7:5")).rule, Some(2));
        assert_eq!(p.lookup(Proto::Tcp, sa("[f123::1]:5")).rule, Some(3));
    }

    #[test]
    fn decisions_are_counted_per_rule() {
        let mut p = policy(&["deny 169.254.0.0/16", "allow 10.0.0.0/8", "deny all/udp"]);
        for dst in [
            "169.254.169.254:80",
            "169.254.1.1:443",
            "10.1.1.1:22",
            "203.0.113.1:80",
        ] {
            p.decide(Proto::Tcp, sa(dst));
        }
        let d = p.decide(Proto::Udp, sa("203.0.113.1:53"));
        assert_eq!(
            d,
            Decision {
                action: Action::Deny,
                rule: Some(2)
            }
        );
        assert!(!d.allowed());
        // `lookup` only looks.
        p.lookup(Proto::Udp, sa("203.0.113.1:53"));
        let counted: Vec<(Action, String, u64)> = p
            .rules_with_counters()
            .map(|(action, rule, hits)| (action, rule.to_string(), hits))
            .collect();
        assert_eq!(
            counted,
            vec![
                (Action::Deny, "169.254.0.0/16".to_string(), 2),
                (Action::Allow, "10.0.0.0/8".to_string(), 1),
                (Action::Deny, "all/udp".to_string(), 1),
            ]
        );
        assert_eq!(p.default_hits(), 1);
        assert_eq!(p.rules().len(), 3);
    }

    #[test]
    fn deny_private_preset() {
        let host: Vec<IpAddr> = [
            "192.168.1.20",
            "203.0.113.5",
            "127.0.0.1",
            "::1",
            "2001:db8::5",
            "::ffff:203.0.113.6",
            "203.0.113.5",
            "0.0.0.0",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let rules = deny_private(&host);
        let texts: Vec<String> = rules
            .iter()
            .map(|(action, rule)| format!("{action} {rule}"))
            .collect();
        assert_eq!(
            texts,
            [
                "deny 10.0.0.0/8",
                "deny 172.16.0.0/12",
                "deny 192.168.0.0/16",
                "deny 169.254.0.0/16",
                "deny 100.64.0.0/10",
                "deny 0.0.0.0/8",
                "deny 224.0.0.0/4",
                "deny 255.255.255.255",
                "deny fc00::/7",
                "deny fe80::/10",
                "deny ff00::/8",
                // 192.168.1.20 is already covered; loopback and duplicates are left out.
                "deny 203.0.113.5",
                "deny 2001:db8::5",
                "deny 203.0.113.6",
            ]
        );
        let p = Policy::new(rules);
        let denied = |dst: &str| !p.lookup(Proto::Tcp, sa(dst)).allowed();
        for dst in [
            "169.254.169.254:80",
            "10.1.2.3:22",
            "172.31.255.255:1",
            "192.168.0.1:80",
            "100.127.0.1:80",
            "0.0.0.1:80",
            "239.255.255.250:1900",
            "255.255.255.255:67",
            "[fd12::1]:80",
            "[fe80::1]:80",
            "[ff02::fb]:5353",
            "203.0.113.5:8080",
            "[2001:db8::5]:8080",
            "[::ffff:10.0.0.1]:80",
        ] {
            assert!(denied(dst), "{dst} should be denied");
        }
        for dst in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "198.51.100.10:443",
            "172.32.0.1:80",
            "100.128.0.1:80",
            "[2001:db8::6]:443",
            "203.0.113.7:443",
        ] {
            assert!(!denied(dst), "{dst} should be allowed");
        }
    }

    #[test]
    fn explicit_allow_before_the_preset_is_an_exception() {
        let at = Origin::Flag(Action::Allow);
        let mut rules = vec![(
            Action::Allow,
            Rule::parse("10.1.2.3:5432/tcp", &at).unwrap(),
        )];
        rules.extend(deny_private(&[]));
        let p = Policy::new(rules);
        assert!(p.lookup(Proto::Tcp, sa("10.1.2.3:5432")).allowed());
        assert!(!p.lookup(Proto::Tcp, sa("10.1.2.3:22")).allowed());
    }

    fn file(text: &str) -> Result<PolicyFile, PolicyError> {
        parse_file("policy.toml", text)
    }

    #[test]
    fn policy_file() {
        let text = r#"
# Egress for CI jobs.
deny-private = true
rules = [
    "allow 10.1.2.3:5432/tcp",   # the database
    'deny [fd00::/8]:443/tcp',
    "deny all/icmp",
]
"#;
        let parsed = file(text).unwrap();
        assert!(parsed.deny_private);
        let texts: Vec<String> = parsed
            .rules
            .iter()
            .map(|(action, rule)| format!("{action} {rule}"))
            .collect();
        assert_eq!(
            texts,
            [
                "allow 10.1.2.3:5432/tcp",
                "deny [fd00::/8]:443/tcp",
                "deny all/icmp"
            ]
        );
        assert_eq!(file(""), Ok(PolicyFile::default()));
        assert_eq!(
            file("rules = []\ndeny-private = false"),
            Ok(PolicyFile::default())
        );
    }

    #[test]
    fn policy_file_errors_name_file_and_line() {
        let msg = |text: &str| file(text).unwrap_err().to_string();
        assert_eq!(
            msg("rules = [\n  \"deny 10.0.0.0/8\",\n  \"deny 10.0.0.0/33\",\n]"),
            "policy.toml:3: deny 10.0.0.0/33: prefix length must be at most 32"
        );
        assert_eq!(
            msg("rules = [\"allow 10.0.0.0/8:70000\"]"),
            "policy.toml:1: allow 10.0.0.0/8:70000: port 70000 is not between 1 and 65535"
        );
        assert_eq!(
            msg("\nrule = [\"deny all\"]"),
            r#"policy.toml:2: unknown key "rule"; a policy file has only rules and deny-private"#
        );
        assert_eq!(
            msg("rules = \"deny all\""),
            r#"policy.toml:1: rules must be a list of strings, each like "deny 10.0.0.0/8""#
        );
        assert_eq!(
            msg("rules = [\n\"deny all\",\n42]"),
            r#"policy.toml:3: rules must be a list of strings, each like "deny 10.0.0.0/8""#
        );
        assert_eq!(
            msg("deny-private = \"yes\""),
            "policy.toml:1: deny-private must be true or false"
        );
        // The first problem in file order, although keys come sorted.
        assert_eq!(
            msg("zzz = 1\ndeny-private = 2"),
            r#"policy.toml:1: unknown key "zzz"; a policy file has only rules and deny-private"#
        );
        let toml_error = msg("deny-private = true\nrules = [\"deny all\"\n");
        assert!(toml_error.starts_with("policy.toml:"), "{toml_error}");
        assert!(!toml_error.contains('\n'), "{toml_error}");
        let duplicate = msg("rules = []\nrules = []");
        assert!(duplicate.starts_with("policy.toml:2: "), "{duplicate}");
    }

    /// splitmix64: a fixed sequence, so a failure reproduces.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }

    // Few anchors and ports, so random rules nest, overlap and share edges.
    const ANCHORS_V4: [u32; 6] = [
        0,
        0x0a00_0000,
        0x0a01_0203,
        0xa9fe_a9fe,
        0xc000_0201,
        u32::MAX,
    ];
    const ANCHORS_V6: [u128; 5] = [
        0,
        0xfd00 << 112,
        (0xfd00 << 112) | 0x1_0000_0000,
        0xfe80 << 112 | 1,
        u128::MAX,
    ];
    const PORTS: [u16; 8] = [0, 1, 21, 22, 23, 443, 65534, 65535];

    fn random_rule(rng: &mut Random) -> (Action, Rule) {
        let dst = match rng.below(7) {
            0 => Cidr::All,
            1..=3 => {
                let len = rng.below(33) as u8;
                let addr = Ipv4Addr::from(rng.pick(&ANCHORS_V4) & mask_v4(len));
                Cidr::V4 { addr, len }
            }
            _ => {
                let len = rng.pick(&[0, 1, 7, 8, 16, 64, 96, 127, 128]);
                let addr = Ipv6Addr::from(rng.pick(&ANCHORS_V6) & mask_v6(len));
                Cidr::V6 { addr, len }
            }
        };
        let ports = match rng.below(3) {
            0 => None,
            _ => {
                let (a, b) = (rng.pick(&PORTS[1..]), rng.pick(&PORTS[1..]));
                Some(PortRange {
                    lo: a.min(b),
                    hi: a.max(b),
                })
            }
        };
        let proto = match rng.below(5) {
            0 => Some(Proto::Tcp),
            1 => Some(Proto::Udp),
            2 if ports.is_none() => Some(Proto::Icmp),
            _ => None,
        };
        let action = if rng.below(2) == 0 {
            Action::Allow
        } else {
            Action::Deny
        };
        (action, Rule { dst, ports, proto })
    }

    /// Destinations at and beside every edge of the rules' networks, plus the anchors.
    fn probes(rules: &[(Action, Rule)]) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for &a in &ANCHORS_V4 {
            ips.push(Ipv4Addr::from(a).into());
            ips.push(Ipv4Addr::from(a).to_ipv6_mapped().into());
        }
        ips.extend(ANCHORS_V6.iter().map(|&a| IpAddr::from(Ipv6Addr::from(a))));
        for (_, rule) in rules {
            for family in Family::ALL {
                let Some((lo, hi)) = rule.dst.span(family) else {
                    continue;
                };
                for n in [lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)] {
                    ips.push(match family {
                        Family::V4 => Ipv4Addr::from(n as u32).into(),
                        Family::V6 => Ipv6Addr::from(n).into(),
                    });
                }
            }
        }
        ips
    }

    #[test]
    fn compiled_matcher_agrees_with_the_first_match_scan() {
        let mut rng = Random(8);
        for round in 0..400 {
            let count = rng.below(if round % 10 == 0 { 200 } else { 24 }) as usize;
            let rules: Vec<(Action, Rule)> = (0..count).map(|_| random_rule(&mut rng)).collect();
            let policy = Policy::new(rules.clone());
            for ip in probes(&rules) {
                for port in PORTS.iter().chain(&[2, 20, 24, 442, 444]) {
                    for proto in Proto::ALL {
                        let dst = SocketAddr::new(ip, *port);
                        let naive = rules.iter().position(|(_, r)| r.matches(proto, dst));
                        let decision = policy.lookup(proto, dst);
                        assert_eq!(decision.rule, naive, "round {round}: {proto} {dst}");
                        let action = naive.map_or(Action::Allow, |i| rules[i].0);
                        assert_eq!(decision.action, action);
                    }
                }
            }
        }
    }

    #[test]
    fn random_text_never_panics() {
        // A taste of what the fuzzer will do, from the characters the grammar uses.
        const PIECES: [&str; 24] = [
            "0", "1", "9", "255", "65535", "70000", ".", ":", "::", "/", "-", "[", "]", "f",
            "ffff", "all", "tcp", "icmp", "allow ", "deny ", " ", "\"", "=", "\n",
        ];
        let mut rng = Random(1);
        let at = Origin::Flag(Action::Deny);
        let mut parsed = Vec::new();
        for _ in 0..20_000 {
            let len = rng.below(12);
            let text: String = (0..len).map(|_| rng.pick(&PIECES)).collect();
            if let Ok(rule) = Rule::parse(&text, &at) {
                parsed.push((Action::Deny, rule));
            }
            let _ = parse_line(&text, &at);
            let _ = parse_file("fuzz.toml", &text);
            let _ = parse_file("fuzz.toml", &format!("rules = [\"{text}\"]"));
        }
        let mut policy = Policy::new(parsed);
        for ip in ["10.0.0.1", "::1", "255.255.255.255", "::ffff:1.2.3.4"] {
            for proto in Proto::ALL {
                policy.decide(proto, SocketAddr::new(ip.parse().unwrap(), 80));
            }
        }
        assert!(policy.rules().len() > 10, "some random text should parse");
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
