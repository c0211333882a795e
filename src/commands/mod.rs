//! The subcommands, each a thin shell over the library.
pub mod bench;
pub mod cni;
pub mod network;
pub mod run;
pub mod run_kernel;
pub mod slirp4netns;
pub mod slirp4netns_args;

use std::net::IpAddr;

/// The host's own interface addresses: with host loopback disabled they are refused too.
/// (Read once at start; addresses added later are not refused.)
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

/// `--outbound-addr[6]`: an address, or an interface name whose first address of the family
/// is taken (as slirp4netns does).
pub fn outbound_address(spec: &str, v6: bool) -> Result<IpAddr, String> {
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return if ip.is_ipv6() == v6 {
            Ok(ip)
        } else {
            Err(format!(
                "outbound address {spec} is not an IPv{} address",
                if v6 { 6 } else { 4 }
            ))
        };
    }
    let found = nix::ifaddrs::getifaddrs().ok().and_then(|mut addrs| {
        addrs.find_map(|a| {
            if a.interface_name != spec {
                return None;
            }
            let addr = a.address?;
            match (v6, addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                (false, Some(v4), _) => Some(IpAddr::V4(v4.ip())),
                (true, _, Some(v6)) if !v6.ip().is_unicast_link_local() => {
                    Some(IpAddr::V6(v6.ip()))
                }
                _ => None,
            }
        })
    });
    found.ok_or_else(|| {
        format!("outbound address {spec}: no such address, nor an interface with one")
    })
}

/// The egress policy from the command line: `--deny`/`--allow` rules in the order given, then
/// the rules of `--policy FILE`, then the `--deny-private` preset (from the flag or the file),
/// so that an explicit allow is an exception to the preset.
pub fn build_policy(
    rules: &[(crate::flow::policy::Action, String)],
    deny_private: bool,
    file: Option<&std::path::Path>,
    host_addrs: &[IpAddr],
) -> Result<crate::flow::policy::Policy, String> {
    use crate::flow::policy::{self, Origin, Policy, Rule};
    let mut list = Vec::new();
    for (action, text) in rules {
        let rule = Rule::parse(text, &Origin::Flag(*action)).map_err(|e| e.to_string())?;
        list.push((*action, rule));
    }
    let mut deny_private = deny_private;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))?;
        let parsed =
            policy::parse_file(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
        list.extend(parsed.rules);
        deny_private |= parsed.deny_private;
    }
    if deny_private {
        list.extend(policy::deny_private(host_addrs));
    }
    Ok(Policy::new(list))
}
