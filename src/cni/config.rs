//! The network configuration on stdin, read into a [`NetConf`] the backend can act on.
//!
//! Theory of operation. tapir-cni takes the `bridge` plugin's configuration, so a conflist
//! written for `bridge` + `host-local` works after changing `type`:
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "mynet", "type": "tapir-cni", "bridge": "tapir0",
//!  "isGateway": true, "ipMasq": true, "mtu": 1500,
//!  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]],
//!           "routes": [{"dst": "0.0.0.0/0"}]},
//!  "dns": {"nameservers": ["10.88.0.1"]},
//!  "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
//! ```
//!
//! What tapir does is narrower than what `bridge` can be told, and a configuration asking for
//! something else is refused with code 2 naming the field, rather than half-honoured:
//! - The bridge is always the gateway, and the container always gets a default route through
//!   it: `isGateway` and `isDefaultGateway` may be omitted or true, not false. IPAM `routes`
//!   may only repeat that default route.
//! - One IPv4 subnet (`ipam.subnet`, or one range in `ipam.ranges`), addresses allocated by
//!   tapir itself from a lease file (under `ipam.dataDir`, else the kernel path's state
//!   directory); `ipam.type` is `host-local` (the same semantics) or `tapir`. No `rangeStart`/
//!   `rangeEnd`, no IPv6, no other IPAM plugin.
//! - The host-side veth has hairpin mode on (so a container reaches its own published port):
//!   `hairpinMode: false` is refused. VLANs, promiscuous mode, MAC spoof checks and port
//!   isolation are not done.
//!
//! Fields tapir knows nothing about are ignored, as the spec asks (runtimes add their own).
//! `dns` is passed through to the result as given. `runtimeConfig.portMappings` (the
//! `portMappings` capability) become published ports; those on an IPv6 host address are
//! skipped, as `portmap` skips a family the container has no address of. prevResult is read
//! for CHECK only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::env::{Command, check_ifname};
use super::result::PrevResult;
use super::{CniError, ErrorCode, SUPPORTED_VERSIONS, version_tuple};
use crate::forward::spec::{PortForward, Proto};
use crate::kernel::Ipv4Subnet;

/// The bridge tapir-cni attaches to when the configuration names none.
pub const DEFAULT_BRIDGE: &str = "tapir0";

/// One network configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    /// The network's name (keys nothing in tapir; reported in errors).
    pub name: String,
    /// The plugin type the runtime looked up (`tapir-cni`).
    pub plugin_type: String,
    pub bridge: String,
    /// The subnet's network address (host bits zero) and prefix length.
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    /// The bridge's address and the containers' default route.
    pub gateway: Ipv4Addr,
    /// MASQUERADE what the containers send out of the subnet.
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    /// Where leases live (`ipam.dataDir`); `None` for the kernel path's default.
    pub state_dir: Option<PathBuf>,
    /// The `dns` object, passed through to the result (`{}` when absent).
    pub dns: Value,
    /// `runtimeConfig.portMappings`.
    pub port_mappings: Vec<PortMapping>,
    /// The previous result (CHECK only).
    pub prev_result: Option<PrevResult>,
}

/// One entry of `runtimeConfig.portMappings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl PortMapping {
    /// As tapir's `-p` forward: an absent host IP means every address (0.0.0.0).
    pub fn to_forward(self) -> PortForward {
        let ip = self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        PortForward {
            proto: self.proto,
            host: SocketAddr::new(ip, self.host_port),
            guest_port: self.container_port,
        }
    }
}

impl NetConf {
    /// Reads stdin for `command` (anything but VERSION).
    pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                format!("the network configuration on stdin is not JSON: {e}"),
            )
        })?;
        let Value::Object(root) = value else {
            return Err(CniError::new(
                ErrorCode::Decode,
                "the network configuration on stdin is not a JSON object",
            ));
        };
        let cni_version = check_version(&root, command)?;
        let name = string(&root, "name")?.unwrap_or_default();
        check_network_name(&name)?;
        let plugin_type = string(&root, "type")?.unwrap_or_default();
        let bridge = string(&root, "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        check_ifname("bridge", &bridge).map_err(invalid)?;
        require_true_or_absent(&root, "isGateway", "the bridge is always the gateway")?;
        require_true_or_absent(
            &root,
            "isDefaultGateway",
            "containers always get a default route through the bridge",
        )?;
        require_true_or_absent(
            &root,
            "hairpinMode",
            "hairpin mode is always on, so a container reaches its own published ports",
        )?;
        for key in ["promiscMode", "macspoofchk", "portIsolation", "enabledad"] {
            if boolean(&root, key)? == Some(true) {
                return Err(unsupported(key, "true", "tapir-cni does not do it"));
            }
        }
        for key in ["vlan", "vlanTrunk", "preserveDefaultVlan", "ipMasqBackend"] {
            if let Some(v) = root.get(key).filter(|v| !v.is_null()) {
                return Err(unsupported(key, &v.to_string(), "tapir-cni does not do it"));
            }
        }
        let ip_masq = boolean(&root, "ipMasq")?.unwrap_or(false);
        let mtu = mtu(&root)?;
        let ipam = Ipam::parse(&root)?;
        let dns = match root.get("dns") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(other) => {
                return Err(invalid(format!("dns {other} is not an object")));
            }
        };
        let port_mappings = port_mappings(&root)?;
        let prev_result = match (command, root.get("prevResult")) {
            (Command::Check, Some(v)) if !v.is_null() => Some(PrevResult::parse(v)?),
            _ => None,
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            bridge,
            subnet: ipam.subnet,
            prefix_len: ipam.prefix_len,
            gateway: ipam.gateway,
            ip_masq,
            mtu,
            state_dir: ipam.data_dir,
            dns,
            port_mappings,
            prev_result,
        })
    }
}

fn check_version(root: &Map<String, Value>, command: Command) -> Result<String, CniError> {
    let supported = || format!("{SUPPORTED_VERSIONS:?}");
    let version = match root.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        None | Some(Value::Null) => {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                "the network configuration has no cniVersion (read as 0.1.0, which tapir-cni \
                 does not speak)",
            )
            .with_details(format!("plugin supports {}", supported())));
        }
        Some(other) => return Err(invalid(format!("cniVersion {other} is not a string"))),
    };
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("cniVersion {version:?} is not one tapir-cni speaks"),
        )
        .with_details(format!(
            "config is {version:?}, plugin supports {}",
            supported()
        )));
    }
    if command == Command::Check && version_tuple(&version) < Some((0, 4, 0)) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("CHECK needs cniVersion 0.4.0 or later, and the configuration is {version:?}"),
        ));
    }
    Ok(version)
}

/// libcni's `ValidateNetworkName`: a letter or digit, then letters, digits, `_`, `.`, `-`.
fn check_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "network name {name:?} is not a network name (letters, digits, `_`, `.`, `-`, \
             starting with a letter or digit)"
        )))
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

fn unsupported(key: &str, value: &str, why: &str) -> CniError {
    CniError::new(
        ErrorCode::UnsupportedField,
        format!("{key} = {value} is not supported: {why}"),
    )
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!("{key} {other} is not a string"))),
    }
}

fn boolean(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(format!("{key} {other} is not true or false"))),
    }
}

fn require_true_or_absent(obj: &Map<String, Value>, key: &str, why: &str) -> Result<(), CniError> {
    match boolean(obj, key)? {
        Some(false) => Err(unsupported(key, "false", why)),
        _ => Ok(()),
    }
}

/// A whole number in `range`, or an error naming the field.
fn integer(
    obj: &Map<String, Value>,
    key: &str,
    what: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().filter(|n| range.contains(n)) {
            Some(n) => Ok(Some(n)),
            None => Err(invalid(format!(
                "{what} {v} is not a whole number between {} and {}",
                range.start(),
                range.end()
            ))),
        },
    }
}

fn mtu(root: &Map<String, Value>) -> Result<Option<u32>, CniError> {
    // 0 is what the bridge plugin reads as "unset"; 68 is IPv4's minimum (RFC 791).
    match integer(root, "mtu", "mtu", 0..=65535)? {
        None | Some(0) => Ok(None),
        Some(n) if n < 68 => Err(invalid(format!(
            "mtu {n} is below 68, the smallest an IPv4 link may have"
        ))),
        Some(n) => Ok(u32::try_from(n).ok()),
    }
}

/// The `ipam` section, narrowed to what tapir allocates from.
struct Ipam {
    subnet: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    data_dir: Option<PathBuf>,
}

impl Ipam {
    fn parse(root: &Map<String, Value>) -> Result<Ipam, CniError> {
        let ipam = match root.get("ipam") {
            Some(Value::Object(ipam)) => ipam,
            None | Some(Value::Null) => {
                return Err(invalid(
                    "the configuration has no ipam section; tapir-cni needs ipam.subnet or \
                     ipam.ranges",
                ));
            }
            Some(other) => return Err(invalid(format!("ipam {other} is not an object"))),
        };
        match string(ipam, "type")?.as_deref() {
            Some("host-local" | "tapir") => {}
            Some(other) => {
                return Err(unsupported(
                    "ipam.type",
                    &format!("{other:?}"),
                    "tapir-cni allocates addresses itself (ipam.type host-local or tapir)",
                ));
            }
            None => return Err(invalid("ipam has no type (host-local or tapir)")),
        }
        let mut ranges = Vec::new();
        if let Some(subnet) = string(ipam, "subnet")? {
            let mut range = Map::new();
            range.insert("subnet".into(), Value::String(subnet));
            if let Some(gw) = ipam.get("gateway") {
                range.insert("gateway".into(), gw.clone());
            }
            ranges.push(range);
        }
        match ipam.get("ranges") {
            None | Some(Value::Null) => {}
            Some(Value::Array(sets)) => {
                for set in sets {
                    let Value::Array(set) = set else {
                        return Err(invalid(format!(
                            "ipam.ranges entry {set} is not a list of ranges"
                        )));
                    };
                    for range in set {
                        let Value::Object(range) = range else {
                            return Err(invalid(format!("ipam range {range} is not an object")));
                        };
                        ranges.push(range.clone());
                    }
                }
            }
            Some(other) => return Err(invalid(format!("ipam.ranges {other} is not a list"))),
        }
        let range = match ranges.as_slice() {
            [one] => one,
            [] => return Err(invalid("ipam gives no subnet (ipam.subnet or ipam.ranges)")),
            many => {
                return Err(CniError::new(
                    ErrorCode::UnsupportedField,
                    format!(
                        "ipam gives {} ranges, and tapir-cni serves exactly one IPv4 subnet",
                        many.len()
                    ),
                ));
            }
        };
        let (subnet, prefix_len, gateway) = Ipam::range(range)?;
        check_routes(ipam, gateway)?;
        let data_dir = string(ipam, "dataDir")?.map(PathBuf::from);
        if let Some(dir) = data_dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(invalid(format!(
                "ipam.dataDir {:?} is not an absolute path",
                dir.display()
            )));
        }
        Ok(Ipam {
            subnet,
            prefix_len,
            gateway,
            data_dir,
        })
    }

    fn range(range: &Map<String, Value>) -> Result<(Ipv4Addr, u8, Ipv4Addr), CniError> {
        for key in ["rangeStart", "rangeEnd"] {
            if let Some(v) = range.get(key).filter(|v| !v.is_null()) {
                return Err(unsupported(
                    &format!("ipam {key}"),
                    &v.to_string(),
                    "tapir-cni allocates from the whole subnet",
                ));
            }
        }
        let text =
            string(range, "subnet")?.ok_or_else(|| invalid("an ipam range has no subnet"))?;
        let (subnet, prefix_len) = parse_subnet(&text)?;
        let gateway = match string(range, "gateway")? {
            None => Ipv4Addr::from(u32::from(subnet) + 1),
            Some(gw) => {
                let gw: Ipv4Addr = gw
                    .parse()
                    .map_err(|_| invalid(format!("ipam gateway {gw:?} is not an IPv4 address")))?;
                let is_host = Ipv4Subnet::new(subnet, prefix_len).is_some_and(|s| s.is_host(gw));
                if !is_host {
                    return Err(invalid(format!(
                        "ipam gateway {gw} is not a host address of the subnet {text}"
                    )));
                }
                gw
            }
        };
        Ok((subnet, prefix_len, gateway))
    }
}

/// `A.B.C.D/N` with N in 1..=30 (room for a gateway and a container) and no host bits set.
fn parse_subnet(text: &str) -> Result<(Ipv4Addr, u8), CniError> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err(invalid(format!(
            "ipam subnet {text:?} is not ADDRESS/PREFIX"
        )));
    };
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(unsupported(
            "ipam subnet",
            &format!("{text:?}"),
            "tapir-cni serves IPv4 only",
        ));
    }
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| invalid(format!("ipam subnet {text:?} is not an IPv4 subnet")))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (1..=30).contains(l))
        .ok_or_else(|| {
            invalid(format!(
                "ipam subnet {text:?} needs a prefix length between 1 and 30"
            ))
        })?;
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        return Err(invalid(format!(
            "ipam subnet {text:?} has host bits set (the network is {}/{len})",
            Ipv4Addr::from(u32::from(addr) & mask)
        )));
    }
    Ok((addr, len))
}

/// `ipam.routes` may only name the default route tapir installs anyway.
fn check_routes(ipam: &Map<String, Value>, gateway: Ipv4Addr) -> Result<(), CniError> {
    let routes = match ipam.get("routes") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(routes)) => routes,
        Some(other) => return Err(invalid(format!("ipam.routes {other} is not a list"))),
    };
    for route in routes {
        let Value::Object(obj) = route else {
            return Err(invalid(format!("ipam route {route} is not an object")));
        };
        let dst = string(obj, "dst")?;
        let gw = string(obj, "gw")?;
        let default_dst = dst.as_deref() == Some("0.0.0.0/0");
        let via_gateway = gw.as_deref().is_none_or(|g| g.parse() == Ok(gateway));
        if !(default_dst && via_gateway) {
            return Err(unsupported(
                "ipam route",
                &route.to_string(),
                "tapir-cni installs only the default route through the bridge",
            ));
        }
    }
    Ok(())
}

fn port_mappings(root: &Map<String, Value>) -> Result<Vec<PortMapping>, CniError> {
    let Some(Value::Object(runtime)) = root.get("runtimeConfig") else {
        return Ok(Vec::new());
    };
    let list = match runtime.get("portMappings") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(invalid(format!(
                "runtimeConfig.portMappings {other} is not a list"
            )));
        }
    };
    // An IPv6 host address cannot reach an IPv4-only container: skipped, as the portmap plugin
    // skips mappings of a family the container has no address of (runtimes on dual-stack hosts
    // send each port for `0.0.0.0` and `::`).
    let mut mappings = Vec::new();
    for entry in list {
        let mapping = port_mapping(entry)?;
        if !mapping.host_ip.is_some_and(|ip| ip.is_ipv6()) {
            mappings.push(mapping);
        }
    }
    Ok(mappings)
}

fn port_mapping(entry: &Value) -> Result<PortMapping, CniError> {
    let Value::Object(obj) = entry else {
        return Err(invalid(format!("port mapping {entry} is not an object")));
    };
    let port = |key: &str| -> Result<u16, CniError> {
        integer(obj, key, &format!("port mapping {entry}: {key}"), 1..=65535)?
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| invalid(format!("port mapping {entry} has no {key}")))
    };
    let host_port = port("hostPort")?;
    let container_port = port("containerPort")?;
    let proto = match string(obj, "protocol")?
        .as_deref()
        .map(str::to_ascii_lowercase)
    {
        None => Proto::Tcp,
        Some(p) if p == "tcp" => Proto::Tcp,
        Some(p) if p == "udp" => Proto::Udp,
        Some(p) => {
            return Err(unsupported(
                "port mapping protocol",
                &format!("{p:?}"),
                "tapir publishes tcp and udp ports",
            ));
        }
    };
    let host_ip = match string(obj, "hostIP")?.as_deref() {
        None | Some("") => None,
        Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| {
            invalid(format!(
                "port mapping {entry}: hostIP {ip:?} is not an IP address"
            ))
        })?),
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        proto,
    })
}

#[cfg(test)]
mod test {
    use super::*;

    /// The research notes' recipe, with `type` changed (what a user of `bridge` would write).
    const BRIDGE_STYLE: &str = r#"{"cniVersion":"1.0.0","name":"tapirtest","type":"tapir-cni",
        "bridge":"br0","isGateway":true,"isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,
        "ipam":{"type":"host-local","dataDir":"/run/cni-ipam",
                "ranges":[[{"subnet":"172.18.0.0/16","gateway":"172.18.0.1"}]],
                "routes":[{"dst":"0.0.0.0/0"}]},
        "dns":{"nameservers":["172.18.0.1"]},
        "capabilities":{"portMappings":true},
        "runtimeConfig":{"portMappings":[
            {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
            {"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}]}}"#;

    fn parse(text: &str) -> Result<NetConf, CniError> {
        NetConf::parse(text.as_bytes(), Command::Add)
    }

    /// `BRIDGE_STYLE` with one top-level key replaced (or removed, for `null`).
    fn with(key: &str, value: Value) -> String {
        let mut v: Value = serde_json::from_str(BRIDGE_STYLE).unwrap();
        v[key] = value;
        v.to_string()
    }

    fn with_ipam(ipam: Value) -> String {
        with("ipam", ipam)
    }

    fn code_of(text: &str) -> (ErrorCode, String) {
        let e = parse(text).unwrap_err();
        (e.code, e.msg)
    }

    #[test]
    fn a_bridge_plugin_configuration_is_read_whole() {
        let conf = parse(BRIDGE_STYLE).unwrap();
        assert_eq!(conf.cni_version, "1.0.0");
        assert_eq!(conf.name, "tapirtest");
        assert_eq!(conf.plugin_type, "tapir-cni");
        assert_eq!(conf.bridge, "br0");
        assert_eq!(conf.subnet, Ipv4Addr::new(172, 18, 0, 0));
        assert_eq!(conf.prefix_len, 16);
        assert_eq!(conf.gateway, Ipv4Addr::new(172, 18, 0, 1));
        assert!(conf.ip_masq);
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.state_dir, Some(PathBuf::from("/run/cni-ipam")));
        assert_eq!(conf.dns, serde_json::json!({"nameservers": ["172.18.0.1"]}));
        assert_eq!(
            conf.port_mappings,
            vec![
                PortMapping {
                    host_ip: None,
                    host_port: 8080,
                    container_port: 80,
                    proto: Proto::Tcp
                },
                PortMapping {
                    host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    host_port: 5353,
                    container_port: 53,
                    proto: Proto::Udp
                },
            ]
        );
        assert_eq!(
            conf.port_mappings[0].to_forward(),
            PortForward {
                proto: Proto::Tcp,
                host: "0.0.0.0:8080".parse().unwrap(),
                guest_port: 80
            }
        );
        assert_eq!(conf.prev_result, None);
    }

    #[test]
    fn the_smallest_configuration_takes_defaults() {
        let conf = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"tapir-cni",
                "ipam":{"type":"tapir","subnet":"10.89.0.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(conf.bridge, DEFAULT_BRIDGE);
        assert_eq!(conf.gateway, Ipv4Addr::new(10, 89, 0, 1));
        assert!(!conf.ip_masq);
        assert_eq!(conf.state_dir, None);
        assert_eq!(conf.dns, serde_json::json!({}));
        assert!(conf.port_mappings.is_empty());
    }

    #[test]
    fn not_json_or_not_an_object_is_a_decode_error() {
        for text in [
            "",
            "{\"cniVersion\":\"1.0.0\"",
            "[1,2]",
            "\"1.0.0\"",
            "\u{0}",
        ] {
            assert_eq!(code_of(text).0, ErrorCode::Decode, "{text:?}");
        }
    }

    #[test]
    fn versions_tapir_does_not_speak_are_code_1() {
        for v in ["0.1.0", "0.2.0", "1.1.0", "9.0.0", "1.0"] {
            let (code, msg) = code_of(&with("cniVersion", Value::String(v.into())));
            assert_eq!(code, ErrorCode::IncompatibleVersion, "{v}");
            assert!(msg.contains(&format!("{v:?}")), "{msg}");
        }
        let e = parse(&with("cniVersion", Value::Null)).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        assert!(e.details.unwrap().contains("1.0.0"));
        assert_eq!(
            code_of(&with("cniVersion", serde_json::json!(1))).0,
            ErrorCode::InvalidConfig
        );
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            assert!(parse(&with("cniVersion", Value::String(v.into()))).is_ok());
        }
    }

    #[test]
    fn check_needs_0_4_0() {
        let text = with("cniVersion", Value::String("0.3.1".into()));
        let e = NetConf::parse(text.as_bytes(), Command::Check).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        assert!(e.msg.contains("0.4.0"), "{}", e.msg);
        assert!(NetConf::parse(text.as_bytes(), Command::Del).is_ok());
    }

    #[test]
    fn bad_values_are_code_7_naming_the_value() {
        let cases = [
            with("name", Value::String("../x".into())),
            with("name", Value::Null),
            with("bridge", Value::String("a-bridge-name-too-long".into())),
            with("ipMasq", Value::String("yes".into())),
            with("mtu", serde_json::json!(40)),
            with("mtu", serde_json::json!(70000)),
            with("mtu", serde_json::json!("1500")),
            with("dns", serde_json::json!(["192.0.2.53"])),
            with("ipam", Value::Null),
            with_ipam(serde_json::json!({"subnet": "10.0.0.0/24"})),
            with_ipam(serde_json::json!({"type": "host-local"})),
            with_ipam(serde_json::json!({"type": "host-local", "subnet": "10.0.0.0"})),
            with_ipam(serde_json::json!({"type": "host-local", "subnet": "10.0.0.1/24"})),
            with_ipam(serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/31"})),
            with_ipam(serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/0"})),
            with_ipam(serde_json::json!({"type": "host-local", "subnet": "10.0.0.256/24"})),
            with_ipam(
                serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}),
            ),
            with_ipam(
                serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/24", "gateway": "10.0.0.255"}),
            ),
            with_ipam(
                serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/24", "dataDir": "rel"}),
            ),
            with(
                "runtimeConfig",
                serde_json::json!({"portMappings": [{"hostPort": 0, "containerPort": 80}]}),
            ),
            with(
                "runtimeConfig",
                serde_json::json!({"portMappings": [{"hostPort": 80}]}),
            ),
            with(
                "runtimeConfig",
                serde_json::json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "x"}]}),
            ),
        ];
        for text in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig, "{text}: {}", e.msg);
        }
        let (_, msg) = code_of(&with("mtu", serde_json::json!(40)));
        assert!(msg.contains("mtu 40"), "{msg}");
        let (_, msg) = code_of(&with_ipam(
            serde_json::json!({"type": "host-local", "subnet": "10.0.0.1/24"}),
        ));
        assert!(
            msg.contains("\"10.0.0.1/24\"") && msg.contains("10.0.0.0/24"),
            "{msg}"
        );
    }

    #[test]
    fn what_tapir_does_not_do_is_code_2_naming_the_field() {
        let cases = [
            (with("isGateway", Value::Bool(false)), "isGateway"),
            (
                with("isDefaultGateway", Value::Bool(false)),
                "isDefaultGateway",
            ),
            (with("hairpinMode", Value::Bool(false)), "hairpinMode"),
            (with("promiscMode", Value::Bool(true)), "promiscMode"),
            (with("vlan", serde_json::json!(100)), "vlan"),
            (with_ipam(serde_json::json!({"type": "dhcp"})), "ipam.type"),
            (
                with_ipam(serde_json::json!({"type": "host-local", "subnet": "fd00::/64"})),
                "fd00::/64",
            ),
            (
                with_ipam(serde_json::json!({"type": "host-local",
                    "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]})),
                "2 ranges",
            ),
            (
                with_ipam(serde_json::json!({"type": "host-local",
                    "ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10"}]]})),
                "rangeStart",
            ),
            (
                with_ipam(
                    serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/24",
                    "routes": [{"dst": "192.168.0.0/16"}]}),
                ),
                "192.168.0.0/16",
            ),
            (
                with_ipam(
                    serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/24",
                    "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.254"}]}),
                ),
                "10.0.0.254",
            ),
            (
                with(
                    "runtimeConfig",
                    serde_json::json!({"portMappings": [
                        {"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]}),
                ),
                "sctp",
            ),
        ];
        for (text, named) in cases {
            let (code, msg) = code_of(&text);
            assert_eq!(code, ErrorCode::UnsupportedField, "{text}: {msg}");
            assert!(msg.contains(named), "{msg} should name {named}");
        }
    }

    #[test]
    fn ipam_subnet_and_gateway_may_be_given_flat() {
        let conf = parse(&with_ipam(serde_json::json!({"type": "host-local",
            "subnet": "192.168.7.0/25", "gateway": "192.168.7.126",
            "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.7.126"}]})))
        .unwrap();
        assert_eq!(
            (conf.subnet, conf.prefix_len, conf.gateway),
            (
                Ipv4Addr::new(192, 168, 7, 0),
                25,
                Ipv4Addr::new(192, 168, 7, 126)
            )
        );
    }

    #[test]
    fn ipv6_host_addresses_are_skipped_as_portmap_does() {
        let conf = parse(&with(
            "runtimeConfig",
            serde_json::json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "0.0.0.0"},
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "::"}]}),
        ))
        .unwrap();
        assert_eq!(
            conf.port_mappings,
            vec![PortMapping {
                host_ip: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                host_port: 8080,
                container_port: 80,
                proto: Proto::Tcp
            }]
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_mtu_zero_is_unset() {
        let mut v: Value = serde_json::from_str(BRIDGE_STYLE).unwrap();
        v["somethingNew"] = serde_json::json!({"a": 1});
        v["args"] = serde_json::json!({"cni": {"ips": []}});
        v["mtu"] = serde_json::json!(0);
        assert_eq!(parse(&v.to_string()).unwrap().mtu, None);
        v["mtu"] = serde_json::json!(9000);
        assert_eq!(parse(&v.to_string()).unwrap().mtu, Some(9000));
    }
}
