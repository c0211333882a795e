//! The `-p` and `--cidr` parsers with arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapir::config::AddressPlan;
use tapir::forward::spec::PortForward;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(fwd) = text.parse::<PortForward>() {
        // What parses prints back to something that parses to the same value.
        let again: PortForward = fwd.to_string().parse().expect("round trip");
        assert_eq!(again, fwd);
    }
    if let Ok(plan) = AddressPlan::from_cidr(text, true) {
        assert!(plan.contains(plan.guest) && plan.contains(plan.gateway));
    }
});
