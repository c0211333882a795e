//! `tapir cni` / `tapir-cni`: the CNI plugin's shell around `cni::handle`.
//!
//! Reads the `CNI_*` environment and at most `cni::MAX_CONFIG_LEN` (+1, to tell "too long")
//! bytes of stdin, runs the protocol with the kernel path as the backend, prints the reply on
//! stdout and returns the exit status. Logs go to stderr, which runtimes keep; stdout carries
//! nothing but the one JSON document.
//!
//! The backend is `crate::kernel`: a CNI attachment is a kernel-path attachment whose owner id
//! is CNI_CONTAINERID, so the lease is keyed by (container id, interface) as CNI requires, and
//! DEL finds everything by that key even when the namespace is gone. Leases live in
//! `ipam.dataDir`, else the kernel path's default state directory for the namespace the
//! plugin runs in (the runtime's, i.e. the host's).

use std::collections::HashMap;
use std::io::{Read, Write};

use crate::cni::{self, Attached, Backend, CniError, ErrorCode, Invocation, NetConf};
use crate::error::Error;
use crate::forward::spec::PortForward;
use crate::kernel::{self, Attachment, BridgeConfig, Ipv4Subnet, KernelError};
use crate::netlink::Netlink;

/// Runs one CNI operation; returns the process exit status.
pub fn main() -> i32 {
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = Vec::new();
    let limit = u64::try_from(cni::MAX_CONFIG_LEN + 1).unwrap_or(u64::MAX);
    let reply = match std::io::stdin().lock().take(limit).read_to_end(&mut stdin) {
        Ok(_) => cni::handle(&env, &stdin, &mut KernelBackend),
        Err(e) => cni::unreadable_stdin(&e),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(reply.stdout.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return 1;
    }
    reply.exit_code
}

/// The kernel path (`crate::kernel`): veth, bridge, lease, nftables.
pub struct KernelBackend;

impl Backend for KernelBackend {
    fn add(&mut self, conf: &NetConf, call: &Invocation) -> Result<Attached, CniError> {
        let cfg = bridge_config(conf)?;
        let netns = call.netns.as_deref().ok_or_else(no_netns)?;
        let publish: Vec<PortForward> = conf.port_mappings.iter().map(|m| m.to_forward()).collect();
        kernel::attach(&cfg, netns, &call.ifname, &call.container_id, &publish)
            .map(attached)
            .map_err(cni_error)
    }

    fn del(&mut self, conf: &NetConf, call: &Invocation) -> Result<(), CniError> {
        let cfg = bridge_config(conf)?;
        kernel::detach(
            &cfg,
            call.netns.as_deref(),
            &call.ifname,
            &call.container_id,
        )
        .map_err(cni_error)
    }

    fn check(&mut self, conf: &NetConf, call: &Invocation) -> Result<Attached, CniError> {
        let cfg = bridge_config(conf)?;
        let netns = call.netns.as_deref().ok_or_else(no_netns)?;
        kernel::check(&cfg, netns, &call.ifname, &call.container_id)
            .map(attached)
            .map_err(cni_error)
    }
}

fn bridge_config(conf: &NetConf) -> Result<BridgeConfig, CniError> {
    // NetConf has already refused a prefix or host bits the kernel path would refuse.
    let subnet = Ipv4Subnet::new(conf.subnet, conf.prefix_len).ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "ipam subnet {}/{} is not usable",
                conf.subnet, conf.prefix_len
            ),
        )
    })?;
    Ok(BridgeConfig {
        bridge: conf.bridge.clone(),
        subnet,
        gateway: Some(conf.gateway),
        ip_masq: conf.ip_masq,
        mtu: conf.mtu,
        state_dir: conf
            .state_dir
            .clone()
            .unwrap_or_else(kernel::default_state_dir),
    })
}

fn attached(a: Attachment) -> Attached {
    // The host end lives in this (the runtime's) namespace; its MAC only completes the result,
    // as the bridge plugin's has it, so a failed lookup leaves it out rather than failing ADD.
    let host_veth_mac = Netlink::open()
        .ok()
        .and_then(|mut nl| nl.link_get(&a.host_veth).ok().flatten())
        .map(|link| link.mac);
    Attached {
        bridge: a.bridge,
        bridge_mac: a.bridge_mac,
        host_veth: a.host_veth,
        host_veth_mac,
        container_ifname: a.container_ifname,
        container_mac: a.container_mac,
        address: a.address,
        prefix_len: a.prefix_len,
        gateway: a.gateway,
    }
}

fn no_netns() -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is empty")
}

/// The kernel path's error as the runtime sees it: its sentence (with causes, as `tapir`
/// prints it), and the code that tells the runtime what it can do about it.
fn cni_error(e: KernelError) -> CniError {
    let code = match e {
        KernelError::NotAttached { .. } => ErrorCode::UnknownContainer,
        KernelError::Invalid { .. } | KernelError::Ipam(_) => ErrorCode::InvalidConfig,
        _ => ErrorCode::Tapir,
    };
    CniError::new(code, Error::from(e).sentence())
}
