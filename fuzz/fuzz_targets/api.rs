//! The API socket's request parser and handler with arbitrary requests, against a table that
//! behaves like the running network's without opening sockets: nothing may panic, every
//! reply is one JSON object, and whether a request is complete is decided for every input.
//!
//! Input: records (`tapir_fuzz::records`; the delay byte is unused), one request each,
//! answered in order by the same table, so adds, lists, removes and policy changes interact.
#![no_main]

use std::io;
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tapir::api::proto::{self, PolicyEntry};
use tapir::api::server::{self, ForwardTable};
use tapir::flow::policy::Policy;
use tapir::forward::spec::PortForward;

/// The network's forwards and policy, as data.
#[derive(Default)]
struct Table {
    forwards: Vec<(u64, PortForward, Ipv4Addr)>,
    next_id: u64,
    policy: Policy,
}

impl ForwardTable for Table {
    fn guest(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 2, 100)
    }

    fn add_forward(&mut self, fwd: PortForward, guest: Option<Ipv4Addr>) -> io::Result<u64> {
        // A port already forwarded is in use, as the kernel would say.
        if self
            .forwards
            .iter()
            .any(|(_, f, _)| f.host == fwd.host && f.proto == fwd.proto)
        {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        self.next_id += 1;
        let guest = guest.unwrap_or(Ipv4Addr::new(10, 0, 2, 100));
        self.forwards.push((self.next_id, fwd, guest));
        Ok(self.next_id)
    }

    fn remove_forward(&mut self, id: u64) -> bool {
        let before = self.forwards.len();
        self.forwards.retain(|(i, _, _)| *i != id);
        self.forwards.len() != before
    }

    fn forwards(&self) -> Vec<(u64, PortForward, Ipv4Addr)> {
        self.forwards.clone()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("frames_in", 1), ("tcp_open", self.forwards.len() as u64)]
    }

    fn policy(&self) -> (Vec<PolicyEntry>, u64) {
        PolicyEntry::list(&self.policy)
    }

    /// As the network does it, with one host address for `deny_private`.
    fn set_policy(&mut self, rules: &[String], deny_private: bool) -> Result<(), String> {
        let host: [std::net::IpAddr; 1] = [Ipv4Addr::new(192, 0, 2, 7).into()];
        self.policy = Policy::from_lines(rules, deny_private.then_some(&host[..]))
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut table = Table::default();
    for (_, request) in tapir_fuzz::records(data) {
        let _ = proto::request_is_complete(request);
        let reply = server::respond(&mut table, request);
        let value: serde_json::Value = serde_json::from_slice(&reply).expect("the reply is JSON");
        assert!(value.is_object(), "the reply is an object");
    }
});
