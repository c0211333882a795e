//! The CNI plugin's protocol layer with an arbitrary network configuration on stdin, under each
//! command, against a backend that always succeeds (so ADD renders and CHECK compares).
#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tapir::cni::{self, Attached, Backend, CniError, Invocation, NetConf};

struct Always;

impl Backend for Always {
    fn add(&mut self, conf: &NetConf, call: &Invocation) -> Result<Attached, CniError> {
        Ok(Attached {
            bridge: conf.bridge.clone(),
            bridge_mac: [2, 0, 0, 0, 0, 1],
            host_veth: "tapir00000000".into(),
            host_veth_mac: None,
            container_ifname: call.ifname.clone(),
            container_mac: [2, 0, 0, 0, 0, 2],
            address: Ipv4Addr::from(u32::from(conf.gateway) + 1),
            prefix_len: conf.prefix_len,
            gateway: conf.gateway,
        })
    }
    fn del(&mut self, _conf: &NetConf, _call: &Invocation) -> Result<(), CniError> {
        Ok(())
    }
    fn check(&mut self, conf: &NetConf, call: &Invocation) -> Result<Attached, CniError> {
        self.add(conf, call)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stdin)) = data.split_first() else {
        return;
    };
    let command = ["ADD", "DEL", "CHECK", "VERSION"][usize::from(selector % 4)];
    let env: HashMap<String, String> = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "ctr1"),
        ("CNI_NETNS", "/run/netns/ct1"),
        ("CNI_IFNAME", "eth0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let reply = cni::handle(&env, stdin, &mut Always);
    // Whatever happened, stdout is one JSON object (or nothing, for DEL and CHECK), and an
    // error carries its code. (The unit tests parse these; here it is about not panicking.)
    let out = reply.stdout.trim_end();
    if reply.exit_code == 0 {
        assert!(
            out.is_empty() || (out.starts_with('{') && out.ends_with('}')),
            "{out}"
        );
    } else {
        assert!(out.starts_with('{') && out.contains("\"code\": "), "{out}");
    }
});
