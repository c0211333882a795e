//! The privileged (kernel) path: the single-host container network of "Container Networking Is
//! Simple", built by tapir through netlink and nftables and torn down as completely.
//!
//! Theory of operation. For every attachment (one container interface, keyed by an owner id
//! such as a container id, and the interface name) tapir creates, in this order:
//!   1. the bridge, if it is missing: a Linux bridge with a pinned MAC (so it neither churns nor
//!      turns all-zero when its last port leaves), the gateway address, up; `ip_forward=1` (the
//!      old value is recorded and restored when the last bridge goes) and `route_localnet=1` on
//!      the bridge only, so 127.0.0.1 may be DNATed to a container;
//!   2. a veth pair in one netlink message, its peer created directly inside the container's
//!      network namespace under its final name; the host end named `tapir` + 8 hex digits of a
//!      hash of (owner, ifname), enslaved to the bridge with `hairpin on` (needed for a container
//!      to reach its own published port while br_netfilter is active), up;
//!   3. inside the container: the address from IPAM, lo and the interface up, a default route via
//!      the gateway;
//!   4. the lease (owner, ifname, address, bridge, published ports) in the state directory;
//!   5. nftables: the whole `inet tapir` table is re-rendered from the leases and replaced in one
//!      atomic `nft -j -f -` batch (see `nft.rs`), so the firewall is always exactly what the
//!      leases say, and a teardown or a prune cannot leave a rule behind.
//!
//! Detach undoes it in reverse: lease removed, table re-rendered (or deleted when no lease is
//! left), host veth deleted (which deletes its peer), bridge deleted when no lease names it,
//! `ip_forward` restored when no bridge is left. Detach is idempotent and keeps going after an
//! error, reporting all of them (`teardown.rs`).
//!
//! Invariants:
//! - Every attach, detach, check and prune holds an exclusive flock on the state directory for
//!   its whole duration, so concurrent runs never share an address and never interleave their
//!   kernel changes.
//! - A lease whose host veth is gone (its network namespace died) or whose recorded process is
//!   dead is stale: the next attach or `tapir network prune` reclaims it.
//! - One state directory owns the `inet tapir` table and `ip_forward` of the network namespace
//!   it is used in. The default (`/run/tapir/netns-INODE`) is keyed by the network namespace, so
//!   namespaces never share state; `--state-dir` / `TAPIR_STATE_DIR` / `ipam.dataDir` override
//!   it, and `/run/tapir/netns-INODE.owner` names the directory in charge
//!   ([`state::Manager`]): while it holds leases, an attach with another is refused, and a
//!   detach or prune with another leaves the table and `ip_forward` alone.
//! - Nothing outside the bridge, the veths, the `inet tapir` table and the two sysctls is
//!   touched: no other table is flushed or edited.
//!
//! Non-goals: IPv6, port ranges, network isolation between bridges, flushing conntrack entries
//! of a published UDP port, reserving (binding) published host ports, re-applying rules after
//! someone else flushes the ruleset (a `tapir network prune` re-renders the table, though). A
//! bridge that existed before tapir is used but never deleted.

pub mod bridge;
pub mod ipam;
pub mod netns;
pub mod nft;
pub mod state;
pub mod sysctl;
pub mod teardown;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use ipam::Ipv4Subnet;

use crate::forward::spec::PortForward;

/// The default bridge name (`--bridge`).
pub const DEFAULT_BRIDGE: &str = "tapir0";
/// The default subnet (`--subnet`).
pub const DEFAULT_SUBNET: &str = "172.30.0.0/16";

/// One bridge network: what `attach` builds and `detach` takes down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The Linux bridge's name (at most 15 bytes).
    pub bridge: String,
    /// The subnet containers get addresses from.
    pub subnet: Ipv4Subnet,
    /// The bridge's address and the containers' default gateway; `None` = the subnet's first
    /// host address.
    pub gateway: Option<Ipv4Addr>,
    /// MASQUERADE traffic leaving the subnet (on by default, as docker and CNI's ipMasq).
    pub ip_masq: bool,
    /// MTU of the bridge and both veth ends; `None` = the kernel's default (1500).
    pub mtu: Option<u32>,
    /// Where leases live (see [`default_state_dir`]).
    pub state_dir: PathBuf,
}

impl BridgeConfig {
    /// The gateway actually used: the configured one or the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| self.subnet.first_host())
    }
}

/// What an attach created, as a CNI result or `tapir run` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub bridge: String,
    pub bridge_mac: [u8; 6],
    pub host_veth: String,
    pub container_ifname: String,
    pub container_mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Anything the kernel path can fail at; each is one sentence naming the bad value.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error("{owner:?} already has an interface {ifname:?} attached (address {address})")]
    AlreadyAttached {
        owner: String,
        ifname: String,
        address: Ipv4Addr,
    },
    #[error("{owner:?} has no interface {ifname:?} attached")]
    NotAttached { owner: String, ifname: String },
    #[error(
        "the bridge {bridge:?} is already in use with subnet {subnet} and gateway {gateway}, \
         not {asked_subnet} with gateway {asked_gateway}"
    )]
    BridgeInUse {
        bridge: String,
        subnet: Ipv4Subnet,
        gateway: Ipv4Addr,
        asked_subnet: Ipv4Subnet,
        asked_gateway: Ipv4Addr,
    },
    #[error("the subnet {asked} overlaps {subnet}, which the bridge {bridge:?} uses")]
    SubnetOverlaps {
        asked: Ipv4Subnet,
        bridge: String,
        subnet: Ipv4Subnet,
    },
    #[error("{what} {value:?} is not usable: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("host port {port}/{proto} is already published by {owner:?}")]
    PortTaken {
        port: u16,
        proto: crate::forward::spec::Proto,
        owner: String,
    },
    #[error(
        "the `inet tapir` table and ip_forward of this network namespace are managed from the \
         state directory {}, which holds {leases} lease(s): use that directory (--state-dir, \
         TAPIR_STATE_DIR or ipam.dataDir), or end those containers first (`tapir network prune \
         --state-dir {}` reclaims the leases of dead ones)", .dir.display(), .dir.display()
    )]
    ManagedElsewhere { dir: PathBuf, leases: usize },
    #[error("the attachment of {owner:?} is not as it was made: {detail}")]
    Drifted { owner: String, detail: String },
    #[error("{}", teardown::join(.0))]
    Teardown(Vec<KernelError>),
}

/// Attaches the network namespace at `netns` (e.g. `/proc/PID/ns/net` or `/run/netns/NAME`)
/// to the bridge of `cfg` as interface `ifname`, with the host ports in `publish` DNATed to it.
/// On any failure everything made so far is removed again.
pub fn attach(
    cfg: &BridgeConfig,
    netns: &Path,
    ifname: &str,
    owner_id: &str,
    publish: &[PortForward],
) -> Result<Attachment, KernelError> {
    bridge::attach(cfg, netns, ifname, owner_id, publish, None)
}

/// Like [`attach`], recording `pid` as the process whose life the lease is tied to: once it
/// has died, the lease is stale even if the interface still exists. (`tapir run` passes its
/// own pid.)
pub fn attach_for_process(
    cfg: &BridgeConfig,
    netns: &Path,
    ifname: &str,
    owner_id: &str,
    publish: &[PortForward],
    pid: u32,
) -> Result<Attachment, KernelError> {
    bridge::attach(cfg, netns, ifname, owner_id, publish, Some(pid))
}

/// Removes everything `attach` made for (`owner_id`, `ifname`). Idempotent: detaching what is
/// already gone (or never was) is `Ok`, and so is a container network namespace that no longer
/// exists. Without a lease, the host veth derived from (`owner_id`, `ifname`) is still deleted
/// if present (an attach that died half-way). `netns` is accepted for the CNI DEL call shape
/// but not needed: deleting the host end of the veth deletes the container end.
pub fn detach(
    cfg: &BridgeConfig,
    netns: Option<&Path>,
    ifname: &str,
    owner_id: &str,
) -> Result<(), KernelError> {
    teardown::detach(cfg, netns, ifname, owner_id)
}

/// Checks that the attachment of (`owner_id`, `ifname`) is still as `attach` made it (lease,
/// host veth on the bridge, the address inside `netns`) and returns it.
pub fn check(
    cfg: &BridgeConfig,
    netns: &Path,
    ifname: &str,
    owner_id: &str,
) -> Result<Attachment, KernelError> {
    bridge::check(cfg, netns, ifname, owner_id)
}

/// Removes the leftovers of killed runs in `state_dir`: stale leases, their veths, bridges no
/// lease names, and re-renders the `inet tapir` table. Returns the owners whose leases went.
pub fn prune(state_dir: &Path) -> Result<Vec<String>, KernelError> {
    teardown::prune(state_dir)
}

/// The state directory: `TAPIR_STATE_DIR` if set, else `/run/tapir/netns-INODE`, keyed by the
/// current network namespace so that state never outlives or crosses its bridge's namespace.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TAPIR_STATE_DIR") {
        return PathBuf::from(dir);
    }
    state::netns_dir()
}
