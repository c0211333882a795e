//! `tapir run -- CMD`: the command gets new user+network+mount namespaces with a TAP, and
//! this process (still in the caller's network namespace) carries the TAP's traffic until the
//! command exits, then exits with its status.
//!
//! Once the command runs and everything the network needs is open (the TAP, the DNS socket,
//! the `-p` listeners, the capture file; resolv.conf and the policy file already read), this
//! process confines itself as pasta does: an empty filesystem in a user and mount namespace
//! of its own, no_new_privs, and a seccomp allow-list (`sys::sandbox`). `--no-sandbox` skips
//! that, for debugging. If confining fails, or the network cannot start, the command is
//! killed and reaped before the error is reported: nothing runs without its network.

use crate::cli::RunArgs;
use crate::config::{AddressPlan, ConfigError, Limits, check_mtu};
use crate::error::Error;
use crate::event_loop::{self, Ending, GuestSockets, Lifetime, NetworkConfig};
use crate::namespace::{self, GuestCommand, TapConfig};
use crate::sys::resolv::{self, RESOLV_CONF};
use crate::sys::sandbox::{self, SandboxError};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};

pub fn run(args: RunArgs) -> Result<i32, Error> {
    if args.network != crate::cli::NetworkMode::Userspace {
        return super::run_kernel::run(args);
    }
    let plan = AddressPlan::from_cidr(&args.cidr, !args.disable_host_loopback)?;
    let mtu = check_mtu(args.mtu.unwrap_or(65520))?;
    let limits = Limits::from_specs(&args.limits)?;
    if args.command.is_empty() {
        return Err(ConfigError::NoCommand.into());
    }
    check_to_host(&args)?;
    // Read before the guest exists: this is the host's view, not the guest's.
    let nameservers =
        resolv::read_nameservers(std::path::Path::new(RESOLV_CONF)).unwrap_or_default();
    if nameservers.is_empty() {
        log::warn!(
            "no nameserver in /etc/resolv.conf: DNS through {} will not answer",
            plan.dns
        );
    }
    let host_addrs = super::host_addresses();
    let policy = super::build_policy(
        &args.rules,
        args.deny_private,
        args.policy.as_deref(),
        &host_addrs,
    )
    .map_err(Error::Policy)?;
    let config = NetworkConfig {
        plan,
        mtu,
        limits,
        forwards: args.publish,
        vnet_hdr: true,
        nameservers,
        resolv_conf: Some(RESOLV_CONF.into()),
        host_addrs,
        outbound: (None, None),
        pcap: args.pcap,
        ipv6: args.enable_ipv6,
        policy,
        busy_poll: args.busy_poll.map_or(
            crate::busy_poll::DEFAULT_MAX,
            std::time::Duration::from_micros,
        ),
    };
    // Large flow buffers come from mmap, so an idle flow costs only the pages it touched.
    crate::sys::set_malloc_mmap_threshold(128 * 1024);
    let command = GuestCommand {
        argv: args.command,
        resolv_conf: format!("nameserver {}\n", plan.dns),
        // Only published TCP ports use it.
        socket_factory: !args.no_splice
            && config
                .forwards
                .iter()
                .any(|f| f.proto == crate::forward::spec::Proto::Tcp),
        loopback_ports: args.to_host.iter().map(|t| t.guest_port).collect(),
    };
    let tap = TapConfig {
        mac: None,
        name: "tap0".into(),
        mtu,
        plan,
        vnet_hdr: config.vnet_hdr,
    };
    let guest = namespace::spawn(&command, &tap)?;
    // After the spawn: the command keeps the limits it was given.
    crate::sys::raise_fd_limit();
    let to_host = guest
        .loopback_listeners
        .into_iter()
        .zip(args.to_host)
        .collect();
    let sandbox = !args.no_sandbox;
    let confine = || {
        if !sandbox {
            return Ok(());
        }
        let hint = |e: SandboxError| format!("{e} (--no-sandbox runs tapir without it)");
        sandbox::isolate_filesystem(config.resolv_conf.as_deref()).map_err(hint)?;
        sandbox::confine().map_err(hint)
    };
    match event_loop::serve(
        guest.tap,
        &config,
        Lifetime::Child(guest.pid),
        None,
        GuestSockets {
            factory: guest.factory,
            to_host,
        },
        confine,
    ) {
        Ok(Ending::Child(status)) => Ok(namespace::wait_status_code(status)),
        Ok(ending) => {
            log::warn!("the network stopped before the command exited: {ending:?}");
            Ok(namespace::wait_status_code(WaitStatus::StillAlive))
        }
        Err(e) => {
            let _ = kill(guest.pid, Signal::SIGKILL);
            let _ = waitpid(guest.pid, None);
            Err(e.into())
        }
    }
}

/// `-T` needs the host's loopback open to the guest, and one host port per guest port.
fn check_to_host(args: &RunArgs) -> Result<(), ConfigError> {
    if let Some(first) = args.to_host.first().filter(|_| args.disable_host_loopback) {
        return Err(ConfigError::ToHostWithoutLoopback(*first));
    }
    let mut seen = std::collections::HashSet::new();
    match args.to_host.iter().find(|t| !seen.insert(t.guest_port)) {
        Some(twice) => Err(ConfigError::ToHostTwice(twice.guest_port)),
        None => Ok(()),
    }
}
