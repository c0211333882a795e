//! The bridge driver: bridge, veth pair, container addressing, lease and firewall, made in the
//! order `mod.rs` describes and rolled back completely if any step fails.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd as _;
use std::path::Path;

use super::state::{Lease, State, StateLock};
use super::{Attachment, BridgeConfig, KernelError, ipam, netns, nft, sysctl, teardown};
use crate::forward::spec::PortForward;
use crate::netlink::Netlink;

/// The host end of the veth for (owner, ifname): `tapir` + 8 hex digits, so detach can find
/// it from the lease or, without one, from the names alone.
pub fn host_veth_name(owner: &str, ifname: &str) -> String {
    let mut bytes = owner.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(ifname.as_bytes());
    format!("tapir{:08x}", fnv1a(&bytes))
}

/// The bridge's pinned MAC: locally administered, derived from its name, so it is stable
/// across re-creation and never changes when ports come and go.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let h = fnv1a(bridge.as_bytes()).to_be_bytes();
    [0x02, 0x74, h[0], h[1], h[2], h[3]]
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Checks an interface name the way the kernel will (1 to 15 bytes, no '/', ':' or space).
pub fn check_ifname(what: &'static str, name: &str) -> Result<(), KernelError> {
    let why = if name.is_empty() || name.len() > 15 {
        "an interface name is 1 to 15 bytes long"
    } else if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        "an interface name cannot be . or .. nor contain '/', ':' or spaces"
    } else {
        return Ok(());
    };
    Err(KernelError::Invalid {
        what,
        value: name.to_string(),
        why,
    })
}

fn check_request(
    cfg: &BridgeConfig,
    ifname: &str,
    owner: &str,
    publish: &[PortForward],
) -> Result<(), KernelError> {
    check_ifname("the bridge name", &cfg.bridge)?;
    check_ifname("the container interface name", ifname)?;
    ipam::check_gateway(cfg.subnet, cfg.gateway())?;
    if owner.is_empty() || owner.chars().any(char::is_control) {
        return Err(KernelError::Invalid {
            what: "the owner id",
            value: owner.to_string(),
            why: "it must be non-empty text without control characters",
        });
    }
    if let Some(p) = publish
        .iter()
        .find(|p| !matches!(p.host.ip(), IpAddr::V4(_)))
    {
        return Err(KernelError::Invalid {
            what: "-p",
            value: p.to_string(),
            why: "the bridge network publishes IPv4 host addresses only",
        });
    }
    Ok(())
}

/// The checks against the other leases: one subnet per bridge, no overlapping subnets, no host
/// port published twice.
fn check_against(
    state: &State,
    cfg: &BridgeConfig,
    publish: &[PortForward],
) -> Result<(), KernelError> {
    for l in &state.leases {
        if l.bridge == cfg.bridge && (l.subnet != cfg.subnet || l.gateway != cfg.gateway()) {
            return Err(KernelError::BridgeInUse {
                bridge: l.bridge.clone(),
                subnet: l.subnet,
                gateway: l.gateway,
                asked_subnet: cfg.subnet,
                asked_gateway: cfg.gateway(),
            });
        }
        if l.bridge != cfg.bridge && l.subnet.overlaps(&cfg.subnet) {
            return Err(KernelError::SubnetOverlaps {
                asked: cfg.subnet,
                bridge: l.bridge.clone(),
                subnet: l.subnet,
            });
        }
    }
    for (i, p) in publish.iter().enumerate() {
        let twice = publish[..i]
            .iter()
            .any(|q| q.proto == p.proto && q.host.port() == p.host.port());
        if let Some(l) = state.port_clash(p) {
            return Err(KernelError::PortTaken {
                port: p.host.port(),
                proto: p.proto,
                owner: l.owner.clone(),
            });
        }
        if twice {
            return Err(KernelError::Invalid {
                what: "-p",
                value: p.to_string(),
                why: "the host port is published twice",
            });
        }
    }
    Ok(())
}

/// The address and host veth name a new lease would get, or why it cannot be had: the owner
/// is attached already, a clash with the other leases (`check_against`), no address left, a
/// veth name taken.
fn plan_lease(
    state: &State,
    cfg: &BridgeConfig,
    owner: &str,
    ifname: &str,
    publish: &[PortForward],
) -> Result<(Ipv4Addr, String), KernelError> {
    if let Some(l) = state.find(owner, ifname) {
        return Err(KernelError::AlreadyAttached {
            owner: owner.to_string(),
            ifname: ifname.to_string(),
            address: l.address,
        });
    }
    check_against(state, cfg, publish)?;
    let taken: Vec<Ipv4Addr> = state
        .leases
        .iter()
        .filter(|l| l.bridge == cfg.bridge)
        .map(|l| l.address)
        .collect();
    let address = ipam::allocate(cfg.subnet, cfg.gateway(), &taken)?;
    let host_veth = host_veth_name(owner, ifname);
    if state.leases.iter().any(|l| l.host_veth == host_veth) {
        return Err(KernelError::Invalid {
            what: "the owner id",
            value: owner.to_string(),
            why: "its veth name collides with another lease's; use another id",
        });
    }
    Ok((address, host_veth))
}

pub(super) fn attach(
    cfg: &BridgeConfig,
    netns_path: &Path,
    ifname: &str,
    owner: &str,
    publish: &[PortForward],
    pid: Option<u32>,
) -> Result<Attachment, KernelError> {
    check_request(cfg, ifname, owner, publish)?;
    // Both held to the end: the manager lock so that no other state directory takes over
    // before the lease is saved.
    let (lock, manager) = StateLock::acquire_managed(&cfg.state_dir)?;
    let mut state = lock.load()?;
    let mut nl = Netlink::open()?;
    let mut stale_errors = Vec::new();
    let stale = teardown::remove_stale(&mut nl, &mut state, &mut stale_errors);
    for e in &stale_errors {
        log::warn!("reclaiming a stale lease: {e}");
    }
    let planned = match manager.rival(&cfg.state_dir) {
        Ok(Some((dir, leases))) => Err(KernelError::ManagedElsewhere { dir, leases }),
        Ok(None) => plan_lease(&state, cfg, owner, ifname, publish),
        Err(e) => Err(e.into()),
    };
    let (address, host_veth) = match planned {
        Ok(planned) => planned,
        Err(e) => {
            // Refused, but what dead runs left (their leases, rules, a bridge) goes now
            // rather than waiting for the next success or a prune.
            if !stale.is_empty() {
                let mut errors = Vec::new();
                teardown::reconcile(&mut nl, &lock, &manager, &mut state, &mut errors);
                for e in errors {
                    log::warn!("cleaning up after a stale lease: {e}");
                }
            }
            return Err(e);
        }
    };
    let gateway = cfg.gateway();
    if state.leases.is_empty() && state.ip_forward_before.is_none() {
        state.ip_forward_before = Some(sysctl::read(sysctl::IP_FORWARD)?);
    }
    let lease = Lease {
        owner: owner.to_string(),
        ifname: ifname.to_string(),
        bridge: cfg.bridge.clone(),
        subnet: cfg.subnet,
        gateway,
        address,
        host_veth,
        ip_masq: cfg.ip_masq,
        pid,
        publish: publish.to_vec(),
    };
    // The lease goes to disk first: should this process die half-way, the next attach or a
    // prune finds the lease (stale: its process is dead or its veth missing) and removes what
    // was made.
    manager.record(&cfg.state_dir)?;
    state.leases.push(lease.clone());
    lock.save(&state)?;
    let made = build(&mut nl, cfg, netns_path, &lease, &lock, &mut state).and_then(|att| {
        nft::apply(&nft::batch(&state.leases))
            .map(|()| att)
            .map_err(Into::into)
    });
    let attachment = match made {
        Ok(att) => att,
        Err(e) => {
            let mut errors = vec![e];
            state.leases.retain(|l| l != &lease);
            teardown::remove_lease_objects(&mut nl, &lease, &mut errors);
            teardown::reconcile(&mut nl, &lock, &manager, &mut state, &mut errors);
            return Err(teardown::collapse(errors));
        }
    };
    if !stale.is_empty() {
        let mut errors = Vec::new();
        teardown::reconcile(&mut nl, &lock, &manager, &mut state, &mut errors);
        for e in errors {
            log::warn!("cleaning up after a stale lease: {e}");
        }
    }
    log::info!(
        "attached {owner} {ifname} at {address}/{} on {}",
        cfg.subnet.prefix_len(),
        cfg.bridge
    );
    Ok(attachment)
}

/// Makes the kernel objects for `lease`: bridge (if missing), veth pair, container side.
fn build(
    nl: &mut Netlink,
    cfg: &BridgeConfig,
    netns_path: &Path,
    lease: &Lease,
    lock: &StateLock,
    state: &mut State,
) -> Result<Attachment, KernelError> {
    let (bridge, bridge_mac) = ensure_bridge(nl, cfg, lease.gateway, lock, state)?;
    let target = File::open(netns_path).map_err(|e| netns::NetnsError::Open {
        path: netns_path.to_path_buf(),
        cause: e.into(),
    })?;
    nl.veth_add(&lease.host_veth, &lease.ifname, target.as_fd(), cfg.mtu)?;
    let host = nl.link_index(&lease.host_veth)?;
    nl.link_set_master(host, bridge)?;
    nl.link_set_hairpin(host, true)?;
    nl.link_set_up(host)?;

    let mut inside = netns::netlink_in(netns_path)?;
    let lo = inside.link_index("lo")?;
    inside.link_set_up(lo)?;
    let Some(ctr) = inside.link_get(&lease.ifname)? else {
        return Err(crate::netlink::NetlinkError::NoSuchLink(lease.ifname.clone()).into());
    };
    inside.addr_add_v4(ctr.index, lease.address, lease.subnet.prefix_len())?;
    inside.link_set_up(ctr.index)?;
    inside.route_add_default_v4(lease.gateway)?;
    Ok(Attachment {
        bridge: lease.bridge.clone(),
        bridge_mac,
        host_veth: lease.host_veth.clone(),
        container_ifname: lease.ifname.clone(),
        container_mac: ctr.mac,
        address: lease.address,
        prefix_len: lease.subnet.prefix_len(),
        gateway: lease.gateway,
        mtu: ctr.mtu,
    })
}

/// The bridge's index and MAC, creating and configuring it first if it is missing (and
/// recording that tapir made it, before making it, so a rollback or prune deletes it). A bridge
/// that was there keeps its own MAC, which is what a result must report.
fn ensure_bridge(
    nl: &mut Netlink,
    cfg: &BridgeConfig,
    gateway: Ipv4Addr,
    lock: &StateLock,
    state: &mut State,
) -> Result<(u32, [u8; 6]), KernelError> {
    let (index, mac) = match nl.link_get(&cfg.bridge)? {
        Some(link) if link.is_bridge => (link.index, link.mac),
        Some(_) => {
            return Err(KernelError::Invalid {
                what: "--bridge",
                value: cfg.bridge.clone(),
                why: "an interface of that name exists and is not a bridge",
            });
        }
        None => {
            if !state.bridges_created.contains(&cfg.bridge) {
                state.bridges_created.push(cfg.bridge.clone());
                lock.save(state)?;
            }
            nl.bridge_add(&cfg.bridge)?;
            let index = nl.link_index(&cfg.bridge)?;
            let mac = bridge_mac(&cfg.bridge);
            nl.link_set_mac(index, mac)?;
            if let Some(mtu) = cfg.mtu {
                nl.link_set_mtu(index, mtu)?;
            }
            log::info!("created the bridge {}", cfg.bridge);
            (index, mac)
        }
    };
    let prefix = cfg.subnet.prefix_len();
    if !nl.addrs_v4(index)?.contains(&(gateway, prefix)) {
        nl.addr_add_v4(index, gateway, prefix)?;
    }
    nl.link_set_up(index)?;
    sysctl::write(sysctl::IP_FORWARD, "1")?;
    sysctl::write(&sysctl::route_localnet(&cfg.bridge), "1")?;
    Ok((index, mac))
}

pub(super) fn check(
    cfg: &BridgeConfig,
    netns_path: &Path,
    ifname: &str,
    owner: &str,
) -> Result<Attachment, KernelError> {
    let lock = StateLock::acquire(&cfg.state_dir)?;
    let state = lock.load()?;
    let lease = state
        .find(owner, ifname)
        .ok_or_else(|| KernelError::NotAttached {
            owner: owner.to_string(),
            ifname: ifname.to_string(),
        })?;
    let drifted = |detail: String| KernelError::Drifted {
        owner: owner.to_string(),
        detail,
    };
    if lease.bridge != cfg.bridge || lease.subnet != cfg.subnet {
        return Err(drifted(format!(
            "its lease is on {} {}, not {} {}",
            lease.bridge, lease.subnet, cfg.bridge, cfg.subnet
        )));
    }
    let mut nl = Netlink::open()?;
    let bridge = nl
        .link_get(&lease.bridge)?
        .ok_or_else(|| drifted(format!("the bridge {} is gone", lease.bridge)))?;
    let host = nl
        .link_get(&lease.host_veth)?
        .ok_or_else(|| drifted(format!("the host veth {} is gone", lease.host_veth)))?;
    if host.master != Some(bridge.index) {
        return Err(drifted(format!(
            "the host veth {} is not on the bridge {}",
            lease.host_veth, lease.bridge
        )));
    }
    let mut inside = netns::netlink_in(netns_path)?;
    let ctr = inside
        .link_get(ifname)?
        .ok_or_else(|| drifted(format!("{ifname} is gone from {}", netns_path.display())))?;
    let prefix = lease.subnet.prefix_len();
    if !inside
        .addrs_v4(ctr.index)?
        .contains(&(lease.address, prefix))
    {
        return Err(drifted(format!(
            "{ifname} no longer has the address {}/{prefix}",
            lease.address
        )));
    }
    if !inside.default_gateways_v4()?.contains(&lease.gateway) {
        return Err(drifted(format!(
            "{} has no default route via {}",
            netns_path.display(),
            lease.gateway
        )));
    }
    let forwarding = sysctl::read(sysctl::IP_FORWARD)?;
    if forwarding != "1" {
        return Err(drifted(format!(
            "net.ipv4.ip_forward is {forwarding}, so no container traffic leaves the bridge"
        )));
    }
    let live = nft::live_rules()?
        .ok_or_else(|| drifted("the nftables table inet tapir is gone".into()))?;
    // This lease's own rules: its ports, its bridge's, and the shared ones.
    if let Some(rule) = nft::first_missing(&nft::rules(std::slice::from_ref(lease)), &live) {
        return Err(drifted(format!(
            "the rule {:?} is missing from chain {} of the nftables table inet tapir",
            rule.comment.as_deref().unwrap_or("(no comment)"),
            rule.chain
        )));
    }
    Ok(Attachment {
        bridge: lease.bridge.clone(),
        bridge_mac: bridge.mac,
        host_veth: lease.host_veth.clone(),
        container_ifname: ifname.to_string(),
        container_mac: ctr.mac,
        address: lease.address,
        prefix_len: prefix,
        gateway: lease.gateway,
        mtu: ctr.mtu,
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn host_veth_names_fit_ifnamsiz_and_differ_per_owner_and_ifname() {
        let a = host_veth_name("run-1234", "eth0");
        assert_eq!(a.len(), 13);
        assert!(check_ifname("x", &a).is_ok());
        assert_ne!(a, host_veth_name("run-1235", "eth0"));
        assert_ne!(a, host_veth_name("run-1234", "eth1"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
        assert_eq!(a, host_veth_name("run-1234", "eth0"));
    }

    #[test]
    fn bridge_mac_is_local_unicast_and_stable() {
        let mac = bridge_mac("tapir0");
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered, unicast");
        assert_eq!(mac, bridge_mac("tapir0"));
        assert_ne!(mac, bridge_mac("tapir1"));
    }

    #[test]
    fn bad_names_are_refused_with_the_name() {
        let e = check_ifname("the bridge name", "a-very-long-bridge-name").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the bridge name \"a-very-long-bridge-name\" is not usable: an interface name is 1 to 15 bytes long"
        );
        assert!(check_ifname("x", "br/0").is_err());
        assert!(check_ifname("x", "").is_err());
    }

    fn cfg() -> BridgeConfig {
        BridgeConfig {
            bridge: "br0".into(),
            subnet: "172.18.0.0/16".parse().unwrap(),
            gateway: None,
            ip_masq: true,
            mtu: None,
            state_dir: "/nonexistent".into(),
        }
    }

    #[test]
    fn ipv6_host_ips_and_double_publishing_are_refused() {
        let v6: PortForward = "[::1]:8080:80".parse().unwrap();
        assert!(matches!(
            check_request(&cfg(), "eth0", "o", &[v6]),
            Err(KernelError::Invalid { what: "-p", .. })
        ));
        let p: PortForward = "8080:80".parse().unwrap();
        let q: PortForward = "127.0.0.1:8080:81".parse().unwrap();
        assert!(check_against(&State::default(), &cfg(), &[p, q]).is_err());
        let u: PortForward = "8080:80/udp".parse().unwrap();
        assert!(check_against(&State::default(), &cfg(), &[p, u]).is_ok());
    }

    #[test]
    fn a_subnet_clash_names_the_bridge_and_what_it_uses() {
        let lease = |bridge: &str, subnet: &str, gateway: [u8; 4]| Lease {
            owner: "other".into(),
            ifname: "eth0".into(),
            bridge: bridge.into(),
            subnet: subnet.parse().unwrap(),
            gateway: gateway.into(),
            address: [10, 0, 0, 2].into(),
            host_veth: "tapir0000".into(),
            ip_masq: true,
            pid: None,
            publish: vec![],
        };
        let state = |l: Lease| State {
            leases: vec![l],
            ..State::default()
        };
        let used = state(lease("br0", "10.88.0.0/16", [10, 88, 0, 1]));
        assert_eq!(
            check_against(&used, &cfg(), &[]).unwrap_err().to_string(),
            "the bridge \"br0\" is already in use with subnet 10.88.0.0/16 and gateway 10.88.0.1, \
             not 172.18.0.0/16 with gateway 172.18.0.1"
        );
        let other = state(lease("br1", "172.18.5.0/24", [172, 18, 5, 1]));
        assert_eq!(
            check_against(&other, &cfg(), &[]).unwrap_err().to_string(),
            "the subnet 172.18.0.0/16 overlaps 172.18.5.0/24, which the bridge \"br1\" uses"
        );
    }
}
