//! The egress policy's parsers (`--policy` files, `--allow`/`--deny` and API rule lines)
//! with arbitrary text: nothing may panic, every rule parsed prints back to text that parses
//! to the same rule, and a policy built from them answers lookups.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use tapir::flow::policy::{self, Action, Origin, Policy, Proto, Rule};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut rules = Vec::new();
    if let Ok(file) = policy::parse_file("fuzz.toml", text) {
        rules.extend(file.rules);
    }
    for (line, text) in text.lines().enumerate() {
        let at = Origin::Line {
            file: "fuzz".into(),
            line: line + 1,
        };
        if let Ok(rule) = policy::parse_line(text, &at) {
            rules.push(rule);
        }
        if let Ok(rule) = Rule::parse(text, &Origin::Flag(Action::Deny)) {
            rules.push((Action::Deny, rule));
        }
    }
    for (_, rule) in &rules {
        let printed = rule.to_string();
        let again = Rule::parse(&printed, &Origin::Flag(Action::Allow))
            .unwrap_or_else(|e| panic!("{printed:?} (printed from {rule:?}) does not parse: {e}"));
        assert_eq!(&again, rule, "{printed:?} parses to another rule");
    }
    let mut policy = Policy::new(rules);
    let probes: [IpAddr; 4] = [
        Ipv4Addr::new(10, 1, 2, 3).into(),
        Ipv4Addr::new(192, 168, 0, 1).into(),
        Ipv6Addr::LOCALHOST.into(),
        "fd00::1".parse::<Ipv6Addr>().unwrap().into(),
    ];
    for ip in probes {
        for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
            let dst = SocketAddr::new(ip, 22);
            assert_eq!(policy.lookup(proto, dst), policy.decide(proto, dst));
        }
    }
});
