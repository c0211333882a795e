//! What tapir-cni prints: the ADD result, the VERSION answer, the error object; and the
//! previous result CHECK compares against.
//!
//! The ADD result has the shape the `bridge` plugin gives (checked against Debian's
//! containernetworking-plugins 1.1.1 with the same configuration): three interfaces — the
//! bridge, the host end of the veth, the container end with its `sandbox` — one address on
//! interface 2 (the container's) with the bridge as gateway, the default route, and `dns` as
//! configured. For configurations older than 1.0.0 each address also carries `"version": "4"`,
//! as the 0.3.x/0.4.0 result format requires.
//!
//! CHECK compares only what tapir made and can read back: the container interface's MAC and
//! address, the gateway, and the bridge's MAC (tapir pins it, so it must not have moved). A
//! prevResult that lacks a field is not held against the attachment.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Value, json};

use super::config::NetConf;
use super::env::Invocation;
use super::{CURRENT_VERSION, CniError, ErrorCode, SUPPORTED_VERSIONS, version_tuple};

/// What the backend made (ADD) or found (CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub bridge: String,
    pub bridge_mac: [u8; 6],
    /// The host end of the veth, enslaved to the bridge.
    pub host_veth: String,
    /// Its MAC, when the backend reports it (the result then carries it).
    pub host_veth_mac: Option<[u8; 6]>,
    /// The container end (CNI_IFNAME), inside CNI_NETNS.
    pub container_ifname: String,
    pub container_mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// `aa:bb:cc:dd:ee:ff`, lower case, as the reference plugins print MACs.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The ADD result.
pub fn render_add(conf: &NetConf, call: &Invocation, attached: &Attached) -> String {
    let mut host_veth = json!({ "name": attached.host_veth });
    if let Some(mac) = attached.host_veth_mac {
        host_veth["mac"] = json!(mac_text(mac));
    }
    let mut container = json!({
        "name": attached.container_ifname,
        "mac": mac_text(attached.container_mac),
    });
    if let Some(netns) = &call.netns {
        container["sandbox"] = json!(netns.display().to_string());
    }
    let mut ip = json!({
        "interface": 2,
        "address": format!("{}/{}", attached.address, attached.prefix_len),
        "gateway": attached.gateway.to_string(),
    });
    if version_tuple(&conf.cni_version) < Some((1, 0, 0)) {
        ip["version"] = json!("4");
    }
    let result = json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            { "name": attached.bridge, "mac": mac_text(attached.bridge_mac) },
            host_veth,
            container,
        ],
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": attached.gateway.to_string() }],
        "dns": conf.dns,
    });
    pretty(&result)
}

/// The VERSION answer.
pub fn render_version() -> String {
    pretty(&json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    }))
}

/// The error object, in `version` (the request's, or the current one).
pub fn render_error(version: &str, error: &CniError) -> String {
    let mut object = json!({
        "cniVersion": version,
        "code": error.code.number(),
        "msg": error.msg,
    });
    if let Some(details) = &error.details {
        object["details"] = json!(details);
    }
    pretty(&object)
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// The parts of a previous ADD result that CHECK looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevResult {
    pub interfaces: Vec<PrevInterface>,
    pub ips: Vec<PrevIp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevInterface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevIp {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

impl PrevResult {
    pub fn parse(value: &Value) -> Result<PrevResult, CniError> {
        let bad = |what: String| CniError::new(ErrorCode::InvalidConfig, what);
        let Value::Object(obj) = value else {
            return Err(bad(format!("prevResult {value} is not an object")));
        };
        let list = |key: &str| -> Result<Vec<Value>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => Ok(items.clone()),
                Some(other) => Err(bad(format!("prevResult {key} {other} is not a list"))),
            }
        };
        let text = |item: &Value, key: &str| -> Result<Option<String>, CniError> {
            match item.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!("prevResult {key} {other} is not a string"))),
            }
        };
        let mut interfaces = Vec::new();
        for item in list("interfaces")? {
            let name = text(&item, "name")?
                .ok_or_else(|| bad(format!("prevResult interface {item} has no name")))?;
            interfaces.push(PrevInterface {
                name,
                mac: text(&item, "mac")?,
                sandbox: text(&item, "sandbox")?,
            });
        }
        let mut ips = Vec::new();
        for item in list("ips")? {
            let address = text(&item, "address")?
                .ok_or_else(|| bad(format!("prevResult ip {item} has no address")))?;
            let (addr, prefix_len) = address
                .split_once('/')
                .and_then(|(a, p)| Some((a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?)))
                .ok_or_else(|| {
                    bad(format!(
                        "prevResult address {address:?} is not ADDRESS/PREFIX"
                    ))
                })?;
            let gateway =
                match text(&item, "gateway")? {
                    None => None,
                    Some(gw) => Some(gw.parse::<IpAddr>().map_err(|_| {
                        bad(format!("prevResult gateway {gw:?} is not an IP address"))
                    })?),
                };
            let interface = match item.get("interface") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .filter(|i| *i < interfaces.len())
                        .ok_or_else(|| {
                            bad(format!(
                                "prevResult ip {item}: interface {v} is not an index into \
                                 its interfaces"
                            ))
                        })?,
                ),
            };
            ips.push(PrevIp {
                address: addr,
                prefix_len,
                gateway,
                interface,
            });
        }
        Ok(PrevResult { interfaces, ips })
    }
}

/// CHECK: does the attachment as it is `now` still match `prev`? The first difference found
/// is the error, naming both values.
pub fn compare(
    conf: &NetConf,
    call: &Invocation,
    prev: &PrevResult,
    now: &Attached,
) -> Result<(), CniError> {
    let mismatch = |msg: String| CniError::new(ErrorCode::Tapir, msg);
    let sandbox = call.netns.as_ref().map(|p| p.display().to_string());
    let Some(index) = prev
        .interfaces
        .iter()
        .position(|i| i.name == call.ifname && i.sandbox == sandbox)
    else {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "prevResult has no interface {:?} in sandbox {:?}, so there is nothing to check",
                call.ifname,
                sandbox.unwrap_or_default()
            ),
        ));
    };
    let iface = &prev.interfaces[index];
    if let Some(mac) = &iface.mac
        && !mac.eq_ignore_ascii_case(&mac_text(now.container_mac))
    {
        return Err(mismatch(format!(
            "{} in {} has MAC {}, and prevResult says {mac}",
            call.ifname,
            iface.sandbox.as_deref().unwrap_or_default(),
            mac_text(now.container_mac)
        )));
    }
    let ours: Vec<&PrevIp> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == index) && ip.address.is_ipv4())
        .collect();
    if ours.is_empty() {
        return Err(mismatch(format!(
            "prevResult has no IPv4 address for {}",
            call.ifname
        )));
    }
    for ip in ours {
        if ip.address != IpAddr::V4(now.address) || ip.prefix_len != now.prefix_len {
            return Err(mismatch(format!(
                "{} has address {}/{}, and prevResult says {}/{}",
                call.ifname, now.address, now.prefix_len, ip.address, ip.prefix_len
            )));
        }
        if let Some(gw) = ip.gateway
            && gw != IpAddr::V4(now.gateway)
        {
            return Err(mismatch(format!(
                "{}'s gateway is {}, and prevResult says {gw}",
                call.ifname, now.gateway
            )));
        }
    }
    let bridge_mac = prev
        .interfaces
        .iter()
        .find(|i| i.name == conf.bridge && i.sandbox.is_none())
        .and_then(|i| i.mac.as_deref());
    if let Some(mac) = bridge_mac
        && !mac.eq_ignore_ascii_case(&mac_text(now.bridge_mac))
    {
        return Err(mismatch(format!(
            "bridge {} has MAC {}, and prevResult says {mac}",
            conf.bridge,
            mac_text(now.bridge_mac)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use std::path::PathBuf;

    use super::*;
    use crate::cni::env::Command;

    fn conf(version: &str) -> NetConf {
        let text = format!(
            r#"{{"cniVersion":"{version}","name":"tapirtest","type":"tapir-cni","bridge":"br0",
                "ipam":{{"type":"host-local","subnet":"172.18.0.0/16"}},
                "dns":{{"nameservers":["172.18.0.1"]}}}}"#
        );
        NetConf::parse(text.as_bytes(), Command::Add).unwrap()
    }

    fn call() -> Invocation {
        Invocation {
            command: Command::Add,
            container_id: "ctr1".into(),
            netns: Some(PathBuf::from("/run/netns/ct1")),
            ifname: "eth0".into(),
            args: Vec::new(),
            path: Vec::new(),
        }
    }

    fn attached() -> Attached {
        Attached {
            bridge: "br0".into(),
            bridge_mac: [0xe6, 0x7c, 0xf4, 0xfa, 0x15, 0xb1],
            host_veth: "veth3f2a1c9e".into(),
            host_veth_mac: Some([0x92, 0x54, 0x9e, 0xdc, 0x4e, 0x56]),
            container_ifname: "eth0".into(),
            container_mac: [0x02, 0xd3, 0x1b, 0xd8, 0xd4, 0xbd],
            address: Ipv4Addr::new(172, 18, 0, 2),
            prefix_len: 16,
            gateway: Ipv4Addr::new(172, 18, 0, 1),
        }
    }

    /// What Debian's `bridge` plugin (containernetworking-plugins 1.1.1) printed for the same
    /// configuration, with the same names and MACs: tapir's result must have the same shape.
    const BRIDGE_PLUGIN_RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "br0", "mac": "e6:7c:f4:fa:15:b1"},
            {"name": "veth3f2a1c9e", "mac": "92:54:9e:dc:4e:56"},
            {"name": "eth0", "mac": "02:d3:1b:d8:d4:bd", "sandbox": "/run/netns/ct1"}
        ],
        "ips": [{"interface": 2, "address": "172.18.0.2/16", "gateway": "172.18.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "172.18.0.1"}],
        "dns": {"nameservers": ["172.18.0.1"]}
    }"#;

    #[test]
    fn add_result_matches_the_bridge_plugin() {
        let text = render_add(&conf("1.0.0"), &call(), &attached());
        let ours: Value = serde_json::from_str(&text).unwrap();
        let theirs: Value = serde_json::from_str(BRIDGE_PLUGIN_RESULT).unwrap();
        assert_eq!(ours, theirs);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn pre_1_0_results_carry_the_ip_version() {
        let text = render_add(&conf("0.4.0"), &call(), &attached());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        let text = render_add(&conf("1.0.0"), &call(), &attached());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ips"][0].get("version"), None);
    }

    #[test]
    fn a_veth_without_a_known_mac_is_listed_by_name() {
        let mut a = attached();
        a.host_veth_mac = None;
        let v: Value = serde_json::from_str(&render_add(&conf("1.0.0"), &call(), &a)).unwrap();
        assert_eq!(v["interfaces"][1], json!({"name": "veth3f2a1c9e"}));
    }

    #[test]
    fn version_and_error_objects() {
        let v: Value = serde_json::from_str(&render_version()).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "1.0.0",
                   "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
        );
        let e = CniError::new(ErrorCode::InvalidConfig, "mtu 40 is below 68").with_details("more");
        let v: Value = serde_json::from_str(&render_error("0.4.0", &e)).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "0.4.0", "code": 7, "msg": "mtu 40 is below 68",
                   "details": "more"})
        );
        let e = CniError::new(ErrorCode::Tapir, "x");
        let v: Value = serde_json::from_str(&render_error("1.0.0", &e)).unwrap();
        assert_eq!(v["code"], 999);
        assert_eq!(v.get("details"), None);
    }

    fn prev() -> PrevResult {
        PrevResult::parse(&serde_json::from_str(BRIDGE_PLUGIN_RESULT).unwrap()).unwrap()
    }

    #[test]
    fn an_unchanged_attachment_checks_out() {
        assert_eq!(
            compare(&conf("1.0.0"), &call(), &prev(), &attached()),
            Ok(())
        );
        // Upper-case MACs in prevResult are the same MACs.
        let mut p = prev();
        p.interfaces[2].mac = Some("02:D3:1B:D8:D4:BD".into());
        assert_eq!(compare(&conf("1.0.0"), &call(), &p, &attached()), Ok(()));
    }

    /// A change to an attachment, and the value the CHECK error must name.
    type Drift = (fn(&mut Attached), &'static str);

    #[test]
    fn each_difference_fails_check_naming_both_values() {
        let cases: [Drift; 4] = [
            (|a| a.container_mac[5] = 0xbe, "02:d3:1b:d8:d4:be"),
            (
                |a| a.address = Ipv4Addr::new(172, 18, 0, 9),
                "172.18.0.9/16",
            ),
            (
                |a| a.gateway = Ipv4Addr::new(172, 18, 0, 254),
                "172.18.0.254",
            ),
            (|a| a.bridge_mac = [0; 6], "00:00:00:00:00:00"),
        ];
        for (change, named) in cases {
            let mut now = attached();
            change(&mut now);
            let e = compare(&conf("1.0.0"), &call(), &prev(), &now).unwrap_err();
            assert_eq!(e.code, ErrorCode::Tapir);
            assert!(e.msg.contains(named), "{} should name {named}", e.msg);
        }
    }

    #[test]
    fn a_prev_result_for_another_interface_or_sandbox_is_refused() {
        let mut other = call();
        other.ifname = "net1".into();
        let e = compare(&conf("1.0.0"), &other, &prev(), &attached()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("\"net1\""), "{}", e.msg);
        let mut other = call();
        other.netns = Some(PathBuf::from("/run/netns/ct2"));
        assert!(compare(&conf("1.0.0"), &other, &prev(), &attached()).is_err());
    }

    #[test]
    fn malformed_prev_results_are_code_7() {
        for bad in [
            json!([]),
            json!({"interfaces": {}}),
            json!({"interfaces": [{"mac": "aa"}]}),
            json!({"ips": [{"address": "172.18.0.2"}]}),
            json!({"ips": [{"address": "172.18.0.2/16", "gateway": "x"}]}),
            json!({"interfaces": [{"name": "eth0"}],
                   "ips": [{"address": "172.18.0.2/16", "interface": 1}]}),
        ] {
            let e = PrevResult::parse(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig, "{bad}");
        }
    }
}
