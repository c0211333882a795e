//! `tapir run --network bridge|host|none -- CMD`: the command on the kernel's own network
//! stack, as root, like `docker run --network ...`.
//!
//! bridge: the command gets a fresh network namespace, attached to the bridge by
//! `kernel::attach_for_process` (veth, address, default route, NAT, published ports) before it
//! runs, and detached when it exits. host: the command shares tapir's network namespace. none:
//! a fresh namespace with only loopback, up.
//!
//! While the command runs, tapir forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to it and waits;
//! it does not die of them itself, so the teardown always runs. If tapir is killed (SIGKILL),
//! the command dies with it (PR_SET_PDEATHSIG), its namespace and veth go with it, and the
//! lease is stale: the next run or `tapir network prune` removes the rest.

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cli::{NetworkMode, RunArgs};
use crate::config::{ConfigError, check_mtu};
use crate::error::Error;
use crate::kernel::{self, BridgeConfig, netns};
use crate::namespace::wait_status_code;

const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

fn mode_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Userspace => "userspace",
        NetworkMode::Bridge => "bridge",
        NetworkMode::Host => "host",
        NetworkMode::None => "none",
    }
}

/// Refuses the rootless path's options, which would otherwise be silently ignored.
fn check_options(args: &RunArgs) -> Result<(), Error> {
    let mode = mode_name(args.network);
    let unused = [
        ("--pcap", args.pcap.is_some()),
        ("--enable-ipv6", args.enable_ipv6),
        ("--disable-host-loopback", args.disable_host_loopback),
        ("--deny/--allow", !args.rules.is_empty()),
        ("--deny-private", args.deny_private),
        ("--policy", args.policy.is_some()),
        ("--limit", !args.limits.is_empty()),
        ("--no-sandbox", args.no_sandbox),
        ("--no-splice", args.no_splice),
        ("--busy-poll", args.busy_poll.is_some()),
        ("-T", !args.to_host.is_empty()),
        (
            "--mtu",
            args.network != NetworkMode::Bridge && args.mtu.is_some(),
        ),
        (
            "-p",
            args.network != NetworkMode::Bridge && !args.publish.is_empty(),
        ),
    ];
    if let Some((option, _)) = unused.iter().find(|(_, used)| *used) {
        return Err(Error::NotForMode {
            option: (*option).to_string(),
            mode,
        });
    }
    Ok(())
}

pub fn run(args: RunArgs) -> Result<i32, Error> {
    let mode = mode_name(args.network);
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NeedsRoot(format!(
            "--network {mode} needs root; the default rootless path (without --network) doesn't"
        )));
    }
    check_options(&args)?;
    if args.command.is_empty() {
        return Err(ConfigError::NoCommand.into());
    }
    let mut signals = SigSet::empty();
    for s in FORWARDED {
        signals.add(s);
    }
    signals.add(Signal::SIGCHLD);
    // Blocked before the fork, so no signal slips between it and the wait (the child starts
    // with an empty mask: sys::fork_child).
    signals.thread_block().map_err(|e| {
        Error::Kernel(kernel::KernelError::Netns(netns::NetnsError::Spawn(
            e.into(),
        )))
    })?;
    match args.network {
        NetworkMode::Bridge => run_bridge(&args, &signals),
        NetworkMode::None => {
            let child = netns::spawn(&args.command, true).map_err(kernel::KernelError::from)?;
            let lo_up = netns::netlink_in(&child.netns_path())
                .map_err(kernel::KernelError::from)
                .and_then(|mut nl| {
                    let lo = nl.link_index("lo")?;
                    nl.link_set_up(lo).map_err(kernel::KernelError::from)
                });
            if let Err(e) = lo_up {
                child.abandon();
                return Err(e.into());
            }
            let pid = child.pid;
            child.go().map_err(kernel::KernelError::from)?;
            Ok(wait_status_code(wait_forwarding(pid, &signals)))
        }
        NetworkMode::Host | NetworkMode::Userspace => {
            let child = netns::spawn(&args.command, false).map_err(kernel::KernelError::from)?;
            let pid = child.pid;
            child.go().map_err(kernel::KernelError::from)?;
            Ok(wait_status_code(wait_forwarding(pid, &signals)))
        }
    }
}

fn run_bridge(args: &RunArgs, signals: &SigSet) -> Result<i32, Error> {
    let cfg = BridgeConfig {
        bridge: args.bridge.clone(),
        subnet: args.subnet.parse().map_err(kernel::KernelError::from)?,
        gateway: None,
        ip_masq: true,
        mtu: args.mtu.map(check_mtu).transpose()?,
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(kernel::default_state_dir),
    };
    let me = std::process::id();
    let owner = format!("run-{me}");
    let ifname = "eth0";
    let child = netns::spawn(&args.command, true).map_err(kernel::KernelError::from)?;
    let attached =
        kernel::attach_for_process(&cfg, &child.netns_path(), ifname, &owner, &args.publish, me);
    let attachment = match attached {
        Ok(a) => a,
        Err(e) => {
            child.abandon();
            return Err(e.into());
        }
    };
    log::info!(
        "{owner}: {ifname} {}/{} via {} on {}",
        attachment.address,
        attachment.prefix_len,
        attachment.gateway,
        attachment.bridge
    );
    let pid = child.pid;
    let status = match child.go() {
        Ok(()) => Some(wait_forwarding(pid, signals)),
        Err(e) => {
            log::warn!("{e}");
            None
        }
    };
    let detached = kernel::detach(&cfg, None, ifname, &owner);
    if let Err(e) = detached {
        eprintln!("tapir: cannot remove everything made for the command: {e}");
        return Ok(125);
    }
    Ok(status.map_or(125, wait_status_code))
}

/// Waits for `pid` to end, passing it the signals tapir receives meanwhile.
fn wait_forwarding(pid: Pid, signals: &SigSet) -> WaitStatus {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return status,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return WaitStatus::Exited(pid, 125),
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = kill(pid, sig);
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use clap::Parser;

    fn run_args(args: &[&str]) -> RunArgs {
        let argv = ["tapir", "run"].iter().chain(args).chain(&["--", "true"]);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(run) => *run,
            _ => unreachable!("a run command"),
        }
    }

    #[test]
    fn userspace_only_options_are_named_when_refused() {
        for (args, option) in [
            (&["--network", "bridge", "-T", "5432"][..], "-T"),
            (&["--network", "bridge", "--no-splice"], "--no-splice"),
            (&["--network", "host", "--busy-poll", "0"], "--busy-poll"),
            (&["--network", "none", "-p", "8080:80"], "-p"),
            (&["--network", "host", "--pcap", "x.pcap"], "--pcap"),
        ] {
            let message = check_options(&run_args(args)).unwrap_err().to_string();
            let mode = args[1];
            assert_eq!(
                message,
                format!("{option} does not apply to --network {mode}")
            );
        }
        assert!(check_options(&run_args(&["--network", "bridge", "-p", "8080:80"])).is_ok());
    }
}
