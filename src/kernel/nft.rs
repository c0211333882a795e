//! The firewall of the bridge networks: the `inet tapir` table, built as data from the leases,
//! rendered as nftables JSON and applied in one atomic `nft -j -f -` batch.
//!
//! The table is never edited rule by rule. Every change (attach, detach, prune) re-renders the
//! whole table from the lease file and replaces it in one transaction (`add table` so a
//! `delete table` cannot fail, `delete table`, then the new table), so the rules are always
//! exactly what the leases say and no teardown can leave one behind. Existing connections keep
//! their NAT: conntrack entries outlive the rules that made them. With no lease left, the batch
//! only deletes the table. No other table is read, flushed or edited.
//!
//! The table (after netavark and CNI portmap; research/kernel-path-netavark-cni-docker.md §4):
//! ```text
//! chain prerouting  { nat hook prerouting -100; fib daddr type local jump hostports }
//! chain output      { nat hook output -100;     fib daddr type local jump hostports }
//! chain hostports   { per published port, for IPv4 only:
//!                     ip saddr SUBNET    [ip daddr H] tcp dport P  meta mark |= 0x2000  (hairpin)
//!                     ip saddr 127.0.0.0/8 [ip daddr H] tcp dport P  meta mark |= 0x2000  (localhost)
//!                     [ip daddr H] tcp dport P  dnat ip to C:GP }
//! chain postrouting { nat hook postrouting 100; meta mark & 0x2000 == 0x2000 masquerade
//!                     per masquerading bridge: ip saddr SUBNET ip daddr != {SUBNET, 224.0.0.0/4} masquerade }
//! chain forward     { filter hook forward 0; per bridge BR:
//!                     iifname BR ct state invalid drop; oifname BR ct status dnat accept
//!                     iifname BR accept; oifname BR ct state established,related accept
//!                     oifname BR drop }
//! ```
//! Every base chain has policy accept and every drop is scoped to a tapir bridge, so traffic
//! that is not tapir's is never affected. (A drop in someone else's table still wins over our
//! accept: nftables evaluates every base chain on a hook.)

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::ipam::Ipv4Subnet;
use super::state::{Lease, proto_name};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "tapir";
/// The packet-mark bit that asks postrouting to masquerade (bit 13, as CNI portmap and
/// netavark use).
pub const MASQ_MARK: u32 = 0x2000;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (the nftables package): {0}")]
    Spawn(crate::sys::OsError),
    #[error("nft refused tapir's rules for table inet tapir: {0}")]
    Refused(String),
    #[error("cannot list the nftables table inet tapir: {0}")]
    Listing(String),
}

/// One rule of the table: the chain it goes in, its expressions, a comment naming its owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub chain: &'static str,
    pub expr: Vec<Value>,
    pub comment: Option<String>,
}

/// A base chain: name, type, hook and priority.
const BASE_CHAINS: [(&str, &str, &str, i32); 4] = [
    ("prerouting", "nat", "prerouting", -100),
    ("output", "nat", "output", -100),
    ("postrouting", "nat", "postrouting", 100),
    ("forward", "filter", "forward", 0),
];
const REGULAR_CHAINS: [&str; 1] = ["hostports"];

/// The rules for these leases, in table order.
pub fn rules(leases: &[Lease]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for chain in ["prerouting", "output"] {
        rules.push(Rule {
            chain,
            expr: vec![
                matches(
                    json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                    json!("local"),
                ),
                json!({"jump": {"target": "hostports"}}),
            ],
            comment: None,
        });
    }
    for lease in leases {
        rules.extend(hostport_rules(lease));
    }
    rules.push(Rule {
        chain: "postrouting",
        expr: vec![
            matches(
                json!({"&": [{"meta": {"key": "mark"}}, MASQ_MARK]}),
                json!(MASQ_MARK),
            ),
            json!({"masquerade": null}),
        ],
        comment: Some("published port reached from a container or from 127.0.0.0/8".into()),
    });
    for (bridge, subnet, masq) in bridges(leases) {
        if masq {
            rules.push(Rule {
                chain: "postrouting",
                expr: vec![
                    matches(payload("ip", "saddr"), prefix(subnet)),
                    json!({"match": {"op": "!=", "left": payload("ip", "daddr"),
                        "right": {"set": [prefix(subnet), {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}),
                    json!({"masquerade": null}),
                ],
                comment: Some(format!("bridge {bridge}: containers going out")),
            });
        }
        rules.extend(forward_rules(&bridge));
    }
    rules
}

/// The distinct bridges of the leases with their subnets and masquerade flags, in lease order.
fn bridges(leases: &[Lease]) -> Vec<(String, Ipv4Subnet, bool)> {
    let mut seen: Vec<(String, Ipv4Subnet, bool)> = Vec::new();
    for l in leases {
        if !seen.iter().any(|(b, _, _)| *b == l.bridge) {
            seen.push((l.bridge.clone(), l.subnet, l.ip_masq));
        }
    }
    seen
}

fn hostport_rules(lease: &Lease) -> Vec<Rule> {
    let mut rules = Vec::new();
    for p in &lease.publish {
        let IpAddr::V4(host_ip) = p.host.ip() else {
            // Refused before a lease is written (bridge.rs); never rendered.
            continue;
        };
        let proto = proto_name(p.proto);
        let mut dst = vec![matches(json!({"meta": {"key": "nfproto"}}), json!("ipv4"))];
        if !host_ip.is_unspecified() {
            dst.push(matches(payload("ip", "daddr"), json!(host_ip.to_string())));
        }
        dst.push(matches(payload(proto, "dport"), json!(p.host.port())));
        let comment = Some(format!("{} {}", lease.owner, p));
        for source in [
            prefix(lease.subnet),
            json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
        ] {
            let mut expr = vec![matches(payload("ip", "saddr"), source)];
            expr.extend(dst.iter().cloned());
            expr.push(json!({"mangle": {"key": {"meta": {"key": "mark"}},
                "value": {"|": [{"meta": {"key": "mark"}}, MASQ_MARK]}}}));
            rules.push(Rule {
                chain: "hostports",
                expr,
                comment: comment.clone(),
            });
        }
        let mut expr = dst;
        expr.push(
            json!({"dnat": {"family": "ip", "addr": lease.address.to_string(),
            "port": p.guest_port}}),
        );
        rules.push(Rule {
            chain: "hostports",
            expr,
            comment,
        });
    }
    rules
}

fn forward_rules(bridge: &str) -> Vec<Rule> {
    let iif = || matches(json!({"meta": {"key": "iifname"}}), json!(bridge));
    let oif = || matches(json!({"meta": {"key": "oifname"}}), json!(bridge));
    let ct = |key: &str, value: Value| json!({"match": {"op": "in", "left": {"ct": {"key": key}}, "right": value}});
    let comment = Some(format!("bridge {bridge}"));
    let rule = |expr: Vec<Value>| Rule {
        chain: "forward",
        expr,
        comment: comment.clone(),
    };
    vec![
        rule(vec![
            iif(),
            ct("state", json!("invalid")),
            json!({"drop": null}),
        ]),
        rule(vec![
            oif(),
            ct("status", json!("dnat")),
            json!({"accept": null}),
        ]),
        rule(vec![iif(), json!({"accept": null})]),
        rule(vec![
            oif(),
            ct("state", json!(["established", "related"])),
            json!({"accept": null}),
        ]),
        rule(vec![oif(), json!({"drop": null})]),
    ]
}

fn matches(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn prefix(subnet: Ipv4Subnet) -> Value {
    json!({"prefix": {"addr": subnet.network().to_string(), "len": subnet.prefix_len()}})
}

/// The batch that replaces the table with one made of `rules`; with no lease, the batch that
/// deletes it (and succeeds when there is none).
pub fn batch(leases: &[Lease]) -> Value {
    let table = json!({"table": {"family": FAMILY, "name": TABLE}});
    let mut cmds = vec![json!({"add": table}), json!({"delete": table})];
    if !leases.is_empty() {
        cmds.push(json!({"add": table}));
        for (name, kind, hook, prio) in BASE_CHAINS {
            cmds.push(
                json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name,
                "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}}),
            );
        }
        for name in REGULAR_CHAINS {
            cmds.push(json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}}));
        }
        for rule in rules(leases) {
            let mut r = json!({"family": FAMILY, "table": TABLE, "chain": rule.chain,
                "expr": rule.expr});
            if let Some(c) = rule.comment {
                r["comment"] = json!(c);
            }
            cmds.push(json!({"add": {"rule": r}}));
        }
    }
    json!({"nftables": cmds})
}

/// A rule of the live table as [`first_missing`] compares it: its chain and its comment.
pub type LiveRule = (String, Option<String>);

/// The rules of the live table, or `None` when there is no table (`nft -j list table inet
/// tapir` in the current network namespace).
pub fn live_rules() -> Result<Option<Vec<LiveRule>>, NftError> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", FAMILY, TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NftError::Spawn(e.into()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        if text.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(NftError::Listing(first_line(&text)));
    }
    rules_listed(&out.stdout)
        .map(Some)
        .map_err(|e| NftError::Listing(format!("unreadable output: {e}")))
}

/// The (chain, comment) of every rule in `nft -j list` output.
fn rules_listed(json_text: &[u8]) -> Result<Vec<LiveRule>, String> {
    let doc: Value = serde_json::from_slice(json_text).map_err(|e| e.to_string())?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    Ok(items
        .iter()
        .filter_map(|item| item.get("rule"))
        .map(|rule| {
            let text = |key| rule.get(key).and_then(Value::as_str).map(str::to_string);
            (text("chain").unwrap_or_default(), text("comment"))
        })
        .collect())
}

/// The first of `wanted` that `live` (as [`live_rules`] lists them) lacks, matched by chain and
/// comment: a rule's owner and port are in its comment, so a deleted rule shows, though one
/// edited in place does not.
pub fn first_missing<'a>(wanted: &'a [Rule], live: &[LiveRule]) -> Option<&'a Rule> {
    let mut left: Vec<&LiveRule> = live.iter().collect();
    wanted.iter().find(|rule| {
        let found = left
            .iter()
            .position(|(chain, comment)| chain == rule.chain && *comment == rule.comment);
        found.map(|i| left.swap_remove(i)).is_none()
    })
}

/// Applies a batch with `nft -j -f -` in the current network namespace.
pub fn apply(batch: &Value) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftError::Spawn(e.into()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error shows up as nft's own failure below.
        let _ = stdin.write_all(batch.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NftError::Spawn(e.into()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(NftError::Refused(first_line(&String::from_utf8_lossy(
        &out.stderr,
    ))))
}

/// The first line of nft's error output that says anything.
fn first_line(text: &str) -> String {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    first.trim().to_string()
}

#[cfg(test)]
mod test {
    use std::net::Ipv4Addr;

    use super::*;

    fn lease(owner: &str, host: u8, publish: &[&str]) -> Lease {
        Lease {
            owner: owner.into(),
            ifname: "eth0".into(),
            bridge: "br0".into(),
            subnet: "172.18.0.0/16".parse().unwrap(),
            gateway: Ipv4Addr::new(172, 18, 0, 1),
            address: Ipv4Addr::new(172, 18, 0, host),
            host_veth: format!("tapir{owner}"),
            ip_masq: true,
            pid: None,
            publish: publish.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn no_lease_deletes_the_table_and_nothing_else() {
        assert_eq!(
            batch(&[]),
            json!({"nftables": [
                {"add": {"table": {"family": "inet", "name": "tapir"}}},
                {"delete": {"table": {"family": "inet", "name": "tapir"}}},
            ]})
        );
    }

    #[test]
    fn published_port_dnats_and_marks_hairpin_and_localhost() {
        let rules = rules(&[lease("ct1", 14, &["8080:80"])]);
        let hostports: Vec<_> = rules.iter().filter(|r| r.chain == "hostports").collect();
        assert_eq!(hostports.len(), 3);
        assert_eq!(
            Value::Array(hostports[2].expr.clone()),
            json!([
                {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
                {"dnat": {"family": "ip", "addr": "172.18.0.14", "port": 80}},
            ])
        );
        assert_eq!(
            hostports[0].expr[0],
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": "172.18.0.0", "len": 16}}}})
        );
        assert_eq!(
            hostports[1].expr[0]["match"]["right"],
            json!({"prefix": {"addr": "127.0.0.0", "len": 8}})
        );
        assert_eq!(
            hostports[1].expr[3]["mangle"]["value"],
            json!({"|": [{"meta": {"key": "mark"}}, 0x2000]})
        );
        assert_eq!(
            hostports[2].comment.as_deref(),
            Some("ct1 0.0.0.0:8080:80/tcp")
        );
    }

    #[test]
    fn host_ip_and_udp_narrow_the_match() {
        let rules = rules(&[lease("ct1", 2, &["127.0.0.1:5353:53/udp"])]);
        let dnat = rules.iter().rfind(|r| r.chain == "hostports").unwrap();
        assert_eq!(dnat.expr[1]["match"]["left"], payload("ip", "daddr"));
        assert_eq!(dnat.expr[1]["match"]["right"], json!("127.0.0.1"));
        assert_eq!(dnat.expr[2]["match"]["left"], payload("udp", "dport"));
        assert_eq!(dnat.expr[3]["dnat"]["port"], json!(53));
    }

    #[test]
    fn one_masquerade_and_one_forward_policy_per_bridge() {
        let mut other = lease("ct3", 2, &[]);
        other.bridge = "br1".into();
        other.subnet = "10.77.0.0/24".parse().unwrap();
        other.ip_masq = false;
        let rules = rules(&[lease("ct1", 2, &[]), lease("ct2", 3, &[]), other]);
        let masq: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == "postrouting" && r.expr.len() == 3)
            .collect();
        assert_eq!(masq.len(), 1, "br1 has ip_masq off");
        assert_eq!(
            masq[0].expr[1]["match"]["right"]["set"],
            json!([{"prefix": {"addr": "172.18.0.0", "len": 16}}, {"prefix": {"addr": "224.0.0.0", "len": 4}}])
        );
        let forward: Vec<_> = rules.iter().filter(|r| r.chain == "forward").collect();
        assert_eq!(forward.len(), 10);
        // Every drop in the forward chain is scoped to a tapir bridge.
        for r in forward
            .iter()
            .filter(|r| r.expr.last() == Some(&json!({"drop": null})))
        {
            let iface = &r.expr[0]["match"]["left"]["meta"]["key"];
            assert!(iface == "iifname" || iface == "oifname", "{r:?}");
        }
    }

    #[test]
    fn batch_replaces_the_whole_table_with_accepting_base_chains() {
        let b = batch(&[lease("ct1", 2, &["8080:80"])]);
        let cmds = b["nftables"].as_array().unwrap();
        assert_eq!(
            cmds[1],
            json!({"delete": {"table": {"family": "inet", "name": "tapir"}}})
        );
        let base: Vec<_> = cmds
            .iter()
            .filter_map(|c| c["add"]["chain"].as_object())
            .filter(|c| c.contains_key("hook"))
            .collect();
        assert_eq!(base.len(), 4);
        assert!(base.iter().all(|c| c["policy"] == "accept"));
        assert!(
            cmds.iter()
                .filter_map(|c| c["add"]["rule"].as_object())
                .all(|r| r["family"] == "inet" && r["table"] == "tapir")
        );
    }

    #[test]
    fn a_rule_missing_from_the_live_table_is_named() {
        let listing = br#"{"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "tapir", "handle": 3}},
            {"chain": {"family": "inet", "table": "tapir", "name": "postrouting", "handle": 1}},
            {"rule": {"family": "inet", "table": "tapir", "chain": "prerouting", "handle": 6,
                      "expr": []}},
            {"rule": {"family": "inet", "table": "tapir", "chain": "postrouting", "handle": 7,
                      "comment": "bridge br0: containers going out", "expr": []}}
        ]}"#;
        let live = rules_listed(listing).unwrap();
        assert_eq!(
            live,
            [
                ("prerouting".to_string(), None),
                (
                    "postrouting".to_string(),
                    Some("bridge br0: containers going out".to_string())
                ),
            ]
        );
        let rule = |chain, comment: Option<&str>| Rule {
            chain,
            expr: vec![],
            comment: comment.map(str::to_string),
        };
        let wanted = [
            rule("prerouting", None),
            rule("postrouting", Some("bridge br0: containers going out")),
        ];
        assert_eq!(first_missing(&wanted, &live), None);
        // Each live rule stands for one wanted rule only.
        let twice = [rule("prerouting", None), rule("prerouting", None)];
        assert_eq!(first_missing(&twice, &live), Some(&twice[1]));
        let other = [rule("forward", Some("bridge br0"))];
        assert_eq!(first_missing(&other, &live), Some(&other[0]));
        assert!(rules_listed(b"not json").is_err());
    }
}
